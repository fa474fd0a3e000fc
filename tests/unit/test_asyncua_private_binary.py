"""Contract of scada/opcua/asyncua_private/binary.py (asyncua's binary encoders and decoder of
single values, which our codecs use to stay byte-equal to asyncua's) with the installed asyncua.
"""

from __future__ import annotations

from datetime import UTC, datetime

from asyncua import ua
from asyncua.ua import ua_binary

from scada.opcua.asyncua_private import binary as P
from tests.asyncua_contract import relied_on

relies = relied_on("scada/opcua/asyncua_private/binary.py")


def test_the_encoders_write_what_asyncua_writes():
    for nodeid in (ua.NodeId(85), ua.NodeId("City/Talant", 2), ua.NodeId(70000, 3), ua.NodeId(b"\x01\x02", 1)):
        relies(P.nodeid_binary(nodeid) == ua_binary.nodeid_to_binary(nodeid), f"nodeid_to_binary({nodeid})")
    relies(P.string_binary("Dijon é") == ua_binary.Primitives.String.pack("Dijon é"), "Primitives.String.pack")
    relies(P.string_binary(None) == b"\xff\xff\xff\xff", "Primitives.String.pack(None) is a null String")
    when = datetime(2026, 12, 5, 13, 30, 1, 250000, tzinfo=UTC)
    encoded = P.datetime_binary(when)
    relies(len(encoded) == 8, "Primitives.DateTime.pack writes an Int64")
    relies(ua_binary.Primitives.DateTime.unpack(ua_binary.Buffer(encoded)) == when, "DateTime round trip")
    dv = ua.DataValue(ua.Variant(1.5), SourceTimestamp=when)
    relies(P.struct_to_binary(dv) == ua_binary.struct_to_binary(dv), "ua_binary.struct_to_binary")
    relies(P.string_encoding().lower().replace("-", "") == "utf8", "ua_binary.get_string_encoding() is UTF-8")


def test_decode_struct_reads_one_structure_and_says_where_it_ends():
    params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=ua.NodeId("a", 2), AttributeId=13)])
    body = P.struct_to_binary(params)
    data = b"junk" + body + b"tail"
    obj, end = P.decode_struct(ua.ReadParameters, data, 4)
    relies(obj == params, "struct_from_binary(ReadParameters, Buffer(data, pos))")
    relies(end == 4 + len(body), "Buffer.cur_pos after a structure")
