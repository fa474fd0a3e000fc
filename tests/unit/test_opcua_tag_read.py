"""Many nodes per Read or Browse: the tag Values' fast Read (scada/opcua/tag_read.py) and the
Browse's reference type test remembered per request (asyncua_private.browse.hook_browse_reftypes)
answer exactly as asyncua's own path does, on the lean tree test's city."""

from __future__ import annotations

import gzip
import json

import numpy as np
from asyncua import ua

from scada import status as st
from scada.opcua.address_space import variant_type
from scada.opcua.asyncua_private.browse import hook_browse_reftypes
from scada.opcua.asyncua_private.nodes import AttributeValue, address_space
from scada.opcua.asyncua_private.read import hook_read
from scada.opcua.publisher import Publisher
from scada.opcua.tag_read import TagReader
from scada.tagdb import ANALOG, DISCRETE, TEXT

from .test_opcua_lean_tree import DEVICE, EXPECTED, POWER, built, dump

A = ua.AttributeIds
SC = ua.StatusCodes


async def published(tmp_path):
    """The rig's tree with a publisher bound and rows of every kind and state published: values,
    texts, a link loss keeping the last value, tags never reported (no value yet)."""
    rig, server, ns, values, conditions = await built(tmp_path)
    conditions.close()
    db = rig.tagdb
    pub = Publisher(db, values, [variant_type(p) for p in rig.config.point_defs()])
    await pub.apply(db.snapshot())
    kinds = np.asarray(db.kind)
    numeric = np.flatnonzero(kinds != TEXT)[::2]  # every other tag stays without a value
    values_of = np.where(kinds[numeric] == DISCRETE, 1.0, np.arange(len(numeric)) * 1.25 - 3.0)
    batches = [db.update(numeric, values_of, st.GOOD, 1_800_000_000_123_456_789)]
    texts = np.flatnonzero(kinds == TEXT)
    batches.append(db.update_text(texts[::2], ["no answer"] * len(texts[::2]), st.GOOD, 1_800_000_001_000_000_000))
    batches.append(db.set_status(numeric[::3], st.BAD_COMMUNICATION_ERROR))
    for batch in batches:
        assert batch is not None
        await pub.apply(batch)
    assert (kinds[numeric] == ANALOG).any() and (kinds[numeric] == DISCRETE).any() and len(texts)
    return rig, server, ns


async def test_a_read_of_every_attribute_of_every_tag_answers_as_asyncuas_path(tmp_path):
    rig, server, ns = await published(tmp_path)
    aspace = address_space(server)
    table = aspace._nodes
    names = [rig.tagdb.names[i] for i in range(len(rig.tagdb.names))]
    # Pinned variables: one by a reference edit, one whose Value attribute was replaced.
    edited = aspace[ua.NodeId(POWER, ns)]
    edited.references.append(edited.references[0])
    replaced = ua.NodeId(names[-1], ns)
    aspace[replaced].attributes[A.Value] = AttributeValue(ua.DataValue(ua.Variant(99.0)))
    others = [
        ua.NodeId(DEVICE, ns),  # a stored node
        ua.NodeId(f"{DEVICE}/no_such_point", ns),
        ua.NodeId(POWER, ns + 1),
        ua.NodeId(12345, ns),
        ua.NodeId(ua.ObjectIds.Server_ServerStatus_State),
    ]
    nodes = [ua.NodeId(name, ns) for name in names] + others
    reads = [ua.ReadValueId(NodeId=nid, AttributeId=a) for nid in nodes for a in range(0, 28)]
    stock = [aspace.read_attribute_value(rv.NodeId, rv.AttributeId) for rv in reads]
    reader = TagReader(table)
    fast = reader(reads)
    # Every tag's Value but the two pinned ones is answered without asyncua.
    assert sum(dv is not None for dv in fast) == len(names) - 2
    hook_read(server, reader)
    got = await server.iserver.isession.read(ua.ReadParameters(NodesToRead=reads))
    assert len(got) == len(stock)
    for rv, mine, theirs in zip(reads, got, stock, strict=True):
        assert mine == theirs, (rv.NodeId.to_string(), rv.AttributeId)
    assert got[reads.index(ua.ReadValueId(NodeId=replaced, AttributeId=A.Value))].Value.Value == 99.0


async def test_a_read_of_an_unbound_tag_is_asyncuas_answer(tmp_path):
    """Before the publisher exists the TagValue reads as BadWaitingForInitialData (asyncua's path)."""
    _, server, ns, _, conditions = await built(tmp_path)
    conditions.close()
    hook_read(server, TagReader(address_space(server)._nodes))
    read = ua.ReadValueId(NodeId=ua.NodeId(POWER, ns), AttributeId=A.Value)
    [dv] = await server.iserver.isession.read(ua.ReadParameters(NodesToRead=[read]))
    assert dv.StatusCode.value == SC.BadWaitingForInitialData


async def test_hooked_browse_answers_as_the_stored_tree_did(tmp_path):
    """The recorded tree (every reference type, both directions), then every node browsed for
    hierarchical references with and without subtypes: the hooked Browse is asyncua's."""
    _, server, ns, _, conditions = await built(tmp_path)
    try:
        view = server.iserver.view_service
        hook_browse_reftypes(server)
        got = await dump(server, ns)
        expected = json.loads(gzip.decompress(EXPECTED.read_bytes()))
        assert {nid: node["refs"] for nid, node in got.items()} == {nid: node["refs"] for nid, node in expected.items()}
        descs = [
            ua.BrowseDescription(
                NodeId=ua.NodeId.from_string(nid),
                BrowseDirection=direction,
                ReferenceTypeId=ua.NodeId(reftype),
                IncludeSubtypes=subtypes,
                NodeClassMask=mask,
                ResultMask=ua.BrowseResultMask.All,
            )
            for nid in got
            for direction in (ua.BrowseDirection.Forward, ua.BrowseDirection.Inverse)
            for reftype in (ua.ObjectIds.HierarchicalReferences, ua.ObjectIds.HasComponent, ua.ObjectIds.HasProperty)
            for subtypes in (True, False)
            for mask in (0, int(ua.NodeClass.Variable))
        ]
        params = ua.BrowseParameters(NodesToBrowse=descs)
        hooked = await server.iserver.isession.browse(params)
        stock = type(view).browse(view, params)  # the class's method: asyncua's test, per reference
        assert hooked == stock
        assert sum(len(r.References) for r in hooked) > len(got)  # not a tree of leaves
    finally:
        conditions.close()
