"""The lean tag tree (scada/opcua/virtual_nodes.py) answers every service as the stored tree did.

``EXPECTED`` was recorded from the previous builder (one asyncua NodeData per variable, commit
a72fcfa) on the alarm rig's configuration, with its alarm conditions and the history marks:
a recursive Browse (both directions, every reference type) from the Objects folder down our
namespace, and a Read of every attribute of every node reached. The lean tree must give the
same answers, in the same order. Regenerate only for an intended change of what clients see:
``python -m tests.unit.test_opcua_lean_tree`` (from the repository root) rewrites the file.

The tests that only look share one built tree (``pristine``: building takes seconds, most of
it asyncua's own nodeset); a test that edits the tree builds its own.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Server, ua

from scada.opcua.address_space import (
    NAMESPACE_URI,
    AddressSpaceBuilder,
    TreeEditor,
    set_variable_attributes,
    subtree,
    tag_values,
)
from scada.opcua.asyncua_private.nodes import AttributeValue, address_space
from scada.opcua.conditions import AlarmConditions
from scada.opcua.history import TagHistory
from scada.opcua.publisher import TagValue
from tests.alarm_rig import AlarmRig, Clock

from .test_alarm_engine import ALARMS

EXPECTED = Path(__file__).with_name("opcua_lean_tree_expected.json.gz")
A = ua.AttributeIds
SC = ua.StatusCodes


async def built(folder: Path):
    """The rig's configuration as HmiServer.start builds it, without listening on a port."""
    rig = AlarmRig(folder, ALARMS, folder / "alarms.sqlite", Clock())
    server = Server()
    await server.init()
    ns = await server.register_namespace(NAMESPACE_URI)
    values = AddressSpaceBuilder(server, ns).build(rig.config)
    conditions = AlarmConditions(server, ns, rig.engine)
    conditions.build()
    TagHistory(server, ns, rig.config, rig.tagdb, None).mark_variables()
    return rig, server, ns, values, conditions


async def closed(folder: Path):
    """:func:`built`, its conditions detached from the engine (no event task), and its node table."""
    rig, server, ns, values, conditions = await built(folder)
    conditions.close()
    return rig, server, ns, values, conditions, address_space(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pristine(tmp_path_factory):
    """The rig's tree as built, for the tests that never edit it: (server, ns)."""
    _, server, ns, _, conditions = await built(tmp_path_factory.mktemp("lean"))
    try:
        yield server, ns
    finally:
        conditions.close()


looks_only = pytest.mark.asyncio(loop_scope="module")


def _text(v) -> str:
    """A value as a client sees it, stable across runs (no object ids)."""
    return repr(v)


def _ref(r: ua.ReferenceDescription) -> list:
    return [
        r.ReferenceTypeId.to_string(),
        r.IsForward,
        r.NodeId.to_string(),
        _text(r.BrowseName),
        _text(r.DisplayName),
        int(r.NodeClass),
        r.TypeDefinition.to_string(),
    ]


async def dump(server: Server, ns: int) -> dict[str, dict]:
    """NodeId -> its references (Browse, both directions) and its attributes (Read, every id)."""
    session = server.iserver.isession
    start = [ua.NodeId(ua.ObjectIds.ObjectsFolder), ua.NodeId(ua.ObjectIds.Server)]
    seen, todo, out = set(start), list(start), {}
    while todo:
        nid = todo.pop(0)
        desc = ua.BrowseDescription(
            NodeId=nid, BrowseDirection=ua.BrowseDirection.Both, ResultMask=ua.BrowseResultMask.All
        )
        [res] = await session.browse(ua.BrowseParameters(NodesToBrowse=[desc]))
        reads = [ua.ReadValueId(NodeId=nid, AttributeId=a) for a in range(1, 28)]
        dvs = await session.read(ua.ReadParameters(NodesToRead=reads))
        out[nid.to_string()] = {
            "refs": [_ref(r) for r in res.References],
            "attrs": [[dv.StatusCode.value if dv.StatusCode else 0, _text(dv.Value)] for dv in dvs],
        }
        for r in res.References:
            if r.IsForward and r.NodeId.NamespaceIndex == ns and r.NodeId not in seen:
                seen.add(r.NodeId)
                todo.append(r.NodeId)
    return out


@looks_only
async def test_every_node_browses_and_reads_as_the_stored_tree_did(pristine):
    server, ns = pristine
    got = await dump(server, ns)
    expected = json.loads(gzip.decompress(EXPECTED.read_bytes()))
    assert sorted(got) == sorted(expected)
    for nid, node in expected.items():
        assert got[nid]["refs"] == node["refs"], nid
        assert got[nid]["attrs"] == node["attrs"], nid


POWER = "Talant/lighting/LC-1/power"
DEVICE = "Talant/lighting/LC-1"


async def test_variables_are_made_on_access_and_keep_their_state(tmp_path):
    _, server, ns, values, conditions = await built(tmp_path)
    conditions.close()
    aspace = address_space(server)
    table = aspace._nodes
    nid = ua.NodeId(POWER, ns)
    assert nid not in table.stored and nid in aspace
    first = aspace[nid]
    value = first.attributes[A.Value]
    assert isinstance(value, TagValue) and value in values
    # A monitored item's callback lives in the TagValue: found again from a node made anew.
    calls = []

    async def callback(handle, dv):
        calls.append(handle)

    status, handle = aspace.add_datachange_callback(nid, A.Value, callback)
    assert status.is_good() and handle in value.datachange_callbacks
    table.cache.clear()
    again = aspace[nid]
    assert again is not first and again.attributes[A.Value] is value
    aspace.delete_datachange_callback(handle)
    assert not value.datachange_callbacks
    # An attribute set on a made node (the history marks) is kept for its slot, shared.
    historizing = again.attributes[A.Historizing]
    assert historizing.value.Value.Value is True
    table.cache.clear()
    assert aspace[nid].attributes[A.Historizing] is historizing
    marked = AttributeValue(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
    aspace[nid].attributes[A.Historizing] = marked
    table.cache.clear()
    assert aspace[nid].attributes[A.Historizing] is marked
    assert aspace[ua.NodeId("Talant/lighting/LC-1/energy", ns)].attributes[A.Historizing] is historizing
    # Any other edit pins the node: it stays the same object from then on.
    pinned = aspace[nid]
    pinned.references.append(pinned.references[0])
    table.cache.clear()
    assert aspace[nid] is pinned


async def test_attributes_set_on_many_variables_at_once_read_as_set_one_by_one(tmp_path):
    rig, server, ns, _, conditions = await built(tmp_path)
    conditions.close()
    aspace = address_space(server)
    names = [rig.tagdb.names[i] for i in range(len(rig.tagdb.names))]
    pinned = aspace[ua.NodeId(POWER, ns)]
    pinned.references.append(pinned.references[0])
    level = AttributeValue(ua.DataValue(ua.Variant(7, ua.VariantType.Byte)))
    off = AttributeValue(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
    attrs = {A.AccessLevel: level, A.Historizing: off}
    some = names[::3]
    user_levels = {name: aspace[ua.NodeId(name, ns)].attributes[A.UserAccessLevel] for name in names}
    assert set_variable_attributes(aspace, [*some, "no/such/tag"], ns, attrs) == len(some)
    for name in names:
        nd = aspace[ua.NodeId(name, ns)]
        marked = name in some
        assert (nd.attributes[A.AccessLevel] is level) == marked, name
        assert (nd.attributes[A.Historizing] is off) == marked, name
        # What was set before (the history marks) stays where not overwritten.
        assert nd.attributes[A.UserAccessLevel] is user_levels[name], name
    assert (pinned.attributes[A.AccessLevel] is level) == (POWER in some)


@looks_only
async def test_unknown_node_ids_are_unknown_to_every_lookup(pristine):
    server, ns = pristine
    aspace, session = address_space(server), server.iserver.isession
    unknown = [
        ua.NodeId(f"{DEVICE}/no_such_point", ns),
        ua.NodeId("Nowhere/lighting/LC-1/power", ns),
        ua.NodeId(POWER, ns + 1),
        ua.NodeId(POWER.upper(), ns),
        ua.NodeId(12345, ns),
        ua.NodeId(f"{DEVICE}/", ns),
    ]
    for nid in unknown:
        assert nid not in aspace and aspace.get(nid) is None, nid
    reads = [ua.ReadValueId(NodeId=nid, AttributeId=A.Value) for nid in unknown]
    dvs = await session.read(ua.ReadParameters(NodesToRead=reads))
    assert [dv.StatusCode.value for dv in dvs] == [SC.BadNodeIdUnknown] * len(unknown)


@looks_only
async def test_translate_and_register_find_the_variables(pristine):
    server, ns = pristine
    session = server.iserver.isession
    path = ua.BrowsePath(
        StartingNode=ua.NodeId(DEVICE, ns),
        RelativePath=ua.RelativePath(
            Elements=[
                ua.RelativePathElement(
                    ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                    IsInverse=False,
                    IncludeSubtypes=True,
                    TargetName=ua.QualifiedName(name, ns),
                )
                for name in ("Diagnostics", "rtt")
            ]
        ),
    )
    [res] = await session.translate_browsepaths_to_nodeids([path])
    assert [t.TargetId for t in res.Targets] == [ua.NodeId(f"{DEVICE}/Diagnostics/rtt", ns)]
    assert await session.register_nodes([ua.NodeId(POWER, ns)]) == [ua.NodeId(POWER, ns)]


async def test_a_device_reference_list_keeps_its_points_through_edits(tmp_path):
    _, server, ns, _, conditions = await built(tmp_path)
    conditions.close()
    aspace = address_space(server)
    dev = aspace[ua.NodeId(DEVICE, ns)]
    before = list(dev.references)
    points = [r for r in before if r.NodeClass == ua.NodeClass.Variable]
    assert len(points) > 10  # the LC-1 cabinet's points, made when iterated
    # The alarm conditions' and _drop_conditions' rewrite: the point references stay, in place.
    notifier = ua.NodeId(ua.ObjectIds.HasNotifier)
    dev.references[:] = [r for r in dev.references if r.ReferenceTypeId != notifier]
    assert list(dev.references) == [r for r in before if r.ReferenceTypeId != notifier]
    extra = ua.ReferenceDescription(ReferenceTypeId=notifier, IsForward=True, NodeId=ua.NodeId("x", ns))
    dev.references.append(extra)
    kept = [r for r in before if r.ReferenceTypeId != notifier]
    assert list(dev.references) == [*kept, extra] and len(dev.references) == len(kept) + 1
    # A rewrite without one point's reference hides that one only.
    gone = points[3].NodeId
    dev.references[:] = [r for r in dev.references if r.NodeId != gone]
    assert gone not in [r.NodeId for r in dev.references]
    assert [r.NodeId for r in dev.references if r.NodeClass == ua.NodeClass.Variable] == [
        r.NodeId for r in points if r.NodeId != gone
    ]


async def test_a_device_removed_and_added_again_is_found_at_its_new_slots(tmp_path):
    rig, server, ns, values, conditions = await built(tmp_path)
    conditions.close()
    aspace = address_space(server)
    editor = TreeEditor(server, ns)
    lc1 = rig.config.device("LC-1")
    old = aspace[ua.NodeId(POWER, ns)].attributes[A.Value]
    await editor.remove_device(rig.config, lc1)
    assert ua.NodeId(POWER, ns) not in aspace and ua.NodeId(DEVICE, ns) not in aspace
    editor.add_devices(rig.config, [lc1])
    new = aspace[ua.NodeId(POWER, ns)].attributes[A.Value]
    assert isinstance(new, TagValue) and new is not old
    assert subtree(aspace, ua.NodeId(DEVICE, ns), ns)[0] == ua.NodeId(DEVICE, ns)
    names = rig.tagdb.names
    bound = tag_values(aspace, [names[i] for i in range(len(names))], ns)
    assert bound[rig.tag("LC-1", "power")] is new
    assert bound[rig.tag("LC-2", "power")] is values[rig.tag("LC-2", "power")]


def record() -> None:
    """Write EXPECTED from the current tree (see the module docstring)."""
    import tempfile

    async def main() -> dict:
        with tempfile.TemporaryDirectory() as d:
            _, server, ns, _, conditions = await built(Path(d))
            try:
                return await dump(server, ns)
            finally:
                conditions.close()

    data = json.dumps(asyncio.run(main()), indent=0, sort_keys=True).encode()
    EXPECTED.write_bytes(gzip.compress(data, mtime=0))
    print(f"{EXPECTED}: {len(data):,} bytes of JSON", file=sys.stderr)


if __name__ == "__main__":
    record()
