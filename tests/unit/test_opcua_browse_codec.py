"""Browse results written by scada/opcua/browse_codec.py are the bytes asyncua writes, for
references of every shape (every NodeId kind, expanded NodeIds with a URI or server index,
texts with and without locale, non-ASCII names, null strings), continuation points and status."""

from __future__ import annotations

import random
import uuid

from asyncua import ua

from scada.opcua.asyncua_private.binary import struct_to_binary
from scada.opcua.browse_codec import browse_results, nodeid, reference


def _nodeid(rnd: random.Random, expanded: bool) -> ua.NodeId:
    kind = rnd.randrange(7)
    ns = rnd.choice([0, 1, 2, 255, 256, 65535])
    cls = ua.ExpandedNodeId if expanded else ua.NodeId
    if kind == 0:
        n = cls(rnd.randrange(256), 0, ua.NodeIdType.TwoByte)
    elif kind == 1:
        n = cls(rnd.randrange(65536), rnd.randrange(256), ua.NodeIdType.FourByte)
    elif kind == 2:
        n = cls(rnd.randrange(2**32), ns, ua.NodeIdType.Numeric)
    elif kind == 3:
        n = cls(rnd.choice(["City/Dijon/lighting/LC-1/power", "", "é/ü", "x" * 300]), ns, ua.NodeIdType.String)
    elif kind == 4:
        n = cls(uuid.UUID(int=rnd.getrandbits(128)), ns, ua.NodeIdType.Guid)
    elif kind == 5:
        n = cls(bytes(rnd.randrange(256) for _ in range(rnd.randrange(5))), ns, ua.NodeIdType.ByteString)
    else:
        n = cls(f"p{rnd.randrange(10**6)}", ns)
    if expanded and rnd.random() < 0.2:
        n = ua.ExpandedNodeId(n.Identifier, n.NamespaceIndex, n.NodeIdType, NamespaceUri="urn:x", ServerIndex=0)
    if expanded and rnd.random() < 0.2:
        n = ua.ExpandedNodeId(n.Identifier, n.NamespaceIndex, n.NodeIdType, ServerIndex=rnd.randrange(1, 9))
    return n


def _reference(rnd: random.Random) -> ua.ReferenceDescription:
    name = rnd.choice(["power", "", "énergie", None, "a" * 200])
    return ua.ReferenceDescription(
        ReferenceTypeId=_nodeid(rnd, False),
        IsForward=rnd.random() < 0.5,
        NodeId=_nodeid(rnd, True),
        BrowseName=ua.QualifiedName(name, rnd.choice([0, 2, 300])),
        DisplayName=ua.LocalizedText(rnd.choice(["power", None, "énergie", ""]), rnd.choice([None, "en", "fr-FR", ""])),
        NodeClass=rnd.choice(list(ua.NodeClass)),
        TypeDefinition=_nodeid(rnd, True),
    )


def test_nodeids_of_every_kind_are_written_as_asyncua_writes_them():
    rnd = random.Random(13)
    for _ in range(3000):
        n = _nodeid(rnd, rnd.random() < 0.5)
        assert nodeid(n) == struct_to_binary(ua.ReferenceDescription(ReferenceTypeId=n))[: len(nodeid(n))], n


def test_references_and_results_are_written_as_asyncua_writes_them():
    rnd = random.Random(7)
    for _ in range(2000):
        r = _reference(rnd)
        assert reference(r) == struct_to_binary(r), r
    results = [
        ua.BrowseResult(
            StatusCode=ua.StatusCode(rnd.choice([ua.StatusCodes.Good, ua.StatusCodes.BadNodeIdUnknown])),
            ContinuationPoint=rnd.choice([None, b"", b"\x01\x02"]),
            References=[_reference(rnd) for _ in range(rnd.randrange(4))],
        )
        for _ in range(300)
    ]
    results.append(ua.BrowseResult())
    header = ua.ResponseHeader()  # one timestamp for both
    whole = struct_to_binary(ua.BrowseResponse(ResponseHeader=header, Results=results))
    head = struct_to_binary(ua.BrowseResponse(ResponseHeader=header))[:-8]  # TypeId and ResponseHeader
    assert whole == head + browse_results(results) + b"\x00\x00\x00\x00"
    assert browse_results([]) == b"\x00\x00\x00\x00"
