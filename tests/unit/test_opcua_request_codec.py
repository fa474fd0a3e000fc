"""Read and Browse requests decoded by scada/opcua/request_codec.py are the objects asyncua's
decoder makes (every field, NodeId kinds included), and every shape it leaves to asyncua (other
NodeId kinds, expanded NodeIds, null identifiers, unknown enum values, short messages) is
answered None so that asyncua decodes it, errors included."""

from __future__ import annotations

import random
import struct
import uuid
from datetime import UTC, datetime

from asyncua import ua
from asyncua.common.utils import Buffer

from scada.opcua.asyncua_private.binary import decode_struct, nodeid_binary, struct_to_binary
from scada.opcua.request_codec import browse_parameters, read_parameters


def _nodeid(rnd: random.Random) -> ua.NodeId:
    kind = rnd.randrange(5)
    if kind == 0:
        return ua.NodeId(rnd.randrange(256), 0, ua.NodeIdType.TwoByte)
    if kind == 1:
        return ua.NodeId(rnd.randrange(65536), rnd.randrange(256), ua.NodeIdType.FourByte)
    if kind == 2:
        return ua.NodeId(rnd.randrange(2**32), rnd.randrange(65536), ua.NodeIdType.Numeric)
    name = rnd.choice(["City/Dijon/lighting/LC-1/power", "", "é/ü/日本", "x" * 300])
    return ua.NodeId(name, rnd.randrange(65536), ua.NodeIdType.String)


def _read(rnd: random.Random, n: int) -> ua.ReadParameters:
    nodes = [
        ua.ReadValueId(
            NodeId=_nodeid(rnd),
            AttributeId=rnd.randrange(2**32),
            IndexRange=rnd.choice([None, "", "1:2"]),
            DataEncoding=ua.QualifiedName(rnd.choice([None, "", "Default Binary", "é"]), rnd.choice([0, 1, 300])),
        )
        for _ in range(n)
    ]
    return ua.ReadParameters(rnd.choice([0.0, 500.0, -1.0]), rnd.choice(list(ua.TimestampsToReturn)), nodes)


def _browse(rnd: random.Random, n: int) -> ua.BrowseParameters:
    nodes = [
        ua.BrowseDescription(
            NodeId=_nodeid(rnd),
            BrowseDirection=rnd.choice(list(ua.BrowseDirection)),
            ReferenceTypeId=_nodeid(rnd),
            IncludeSubtypes=rnd.random() < 0.5,
            NodeClassMask=rnd.randrange(2**32),
            ResultMask=rnd.randrange(64),
        )
        for _ in range(n)
    ]
    view = ua.ViewDescription(ViewId=_nodeid(rnd), Timestamp=datetime(2026, 12, 5, tzinfo=UTC), ViewVersion=3)
    return ua.BrowseParameters(view, rnd.randrange(2**32), nodes)


def _stock(cls: type, body: bytes, pos: int = 0) -> tuple[object, int]:
    return decode_struct(cls, body, pos)


def test_read_and_browse_requests_decode_to_asyncuas_objects():
    rnd = random.Random(5)
    for n in (0, 1, 7, 300):
        for make, cls, decode in (
            (_read, ua.ReadParameters, read_parameters),
            (_browse, ua.BrowseParameters, browse_parameters),
        ):
            params = make(rnd, n)
            body = b"head" + struct_to_binary(params) + b"tail"
            want, end = _stock(cls, body, 4)
            got = decode(body, 4)
            assert got is not None
            assert repr(got[0]) == repr(want) and got[1] == end
            assert [type(x.NodeId) for x in getattr(got[0], "NodesToRead", getattr(got[0], "NodesToBrowse", []))] == [
                ua.NodeId
            ] * n


def _read_body(node: bytes, timestamps: int = 2) -> bytes:
    """A ReadParameters of one item whose NodeId is written as ``node``."""
    item = node + struct.pack("<I", 13) + b"\xff\xff\xff\xff" + struct.pack("<h", 0) + b"\xff\xff\xff\xff"
    return struct.pack("<di", 0.0, timestamps) + struct.pack("<i", 1) + item


def test_shapes_left_to_asyncua_are_answered_none():
    guid = ua.NodeId(uuid.uuid4(), 2, ua.NodeIdType.Guid)
    opaque = ua.NodeId(b"\x01\x02", 2, ua.NodeIdType.ByteString)
    for nid in (guid, opaque):
        body = struct_to_binary(ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=nid, AttributeId=13)]))
        assert read_parameters(body, 0) is None
        assert repr(_stock(ua.ReadParameters, body)[0].NodesToRead[0].NodeId) == repr(nid)  # asyncua decodes it
    string_node = b"\x03" + struct.pack("<H", 2) + struct.pack("<i", 1) + b"a"
    assert read_parameters(_read_body(string_node), 0) is not None
    expanded = bytes([0x03 | 0x80]) + string_node[1:] + struct.pack("<i", 3) + b"urn"
    assert read_parameters(_read_body(expanded), 0) is None  # asyncua makes an ExpandedNodeId
    null_string = b"\x03" + struct.pack("<H", 2) + b"\xff\xff\xff\xff"
    assert read_parameters(_read_body(null_string), 0) is None  # asyncua refuses it
    assert read_parameters(_read_body(string_node, timestamps=9), 0) is None  # no such TimestampsToReturn
    assert read_parameters(_read_body(string_node)[:-3], 0) is None  # short: asyncua says NotEnoughData
    browse = struct_to_binary(_browse(random.Random(1), 2))
    assert browse_parameters(browse[:-1], 0) is None
    assert repr(browse_parameters(browse, 0)[0]) == repr(_stock(ua.BrowseParameters, browse)[0])
    bad_direction = bytearray(browse)
    first = len(struct_to_binary(_browse(random.Random(1), 2).View)) + 8  # View, max refs, list length
    first += len(nodeid_binary(_browse(random.Random(1), 2).NodesToBrowse[0].NodeId))
    bad_direction[first : first + 4] = struct.pack("<i", 7)
    assert browse_parameters(bytes(bad_direction), 0) is None


def test_a_buffer_is_left_where_asyncuas_decoder_leaves_it():
    body = struct_to_binary(_read(random.Random(3), 4)) + b"rest"
    buf = Buffer(body)
    params, end = read_parameters(body, 0)
    stock = ua.ua_binary.struct_from_binary(ua.ReadParameters, buf)
    assert repr(params) == repr(stock) and end == buf.cur_pos == len(body) - 4
