"""A Read's results in OPC UA binary (Part 6), written directly: the bytes of asyncua's encoder.

The tag Values a Read answers from the publisher's columns (scada/opcua/tag_read.py) are
DataValues of one known shape: a scalar Variant (Null, Boolean, Int32, Double or String), a
StatusCode, and timestamps or None. asyncua's generic serializer spends ~10 µs on each; this
writes them with a few ``struct`` calls, and every other DataValue of the response (other
attributes, other nodes, errors) with asyncua's own ``struct_to_binary``, so the bytes are
asyncua's for every input (tests/unit/test_opcua_read_codec.py). Sent through
``scada.opcua.asyncua_private.read.hook_read``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime

from asyncua import ua

from scada.opcua.asyncua_private.binary import datetime_binary, struct_to_binary
from scada.opcua.publisher import PublishedValue

_i32 = struct.Struct("<i").pack
_u32 = struct.Struct("<I").pack
_double = struct.Struct("<Bd").pack  # Variant type byte, value
_int32 = struct.Struct("<Bi").pack
_NULL, _BOOLEAN, _INT32, _DOUBLE, _STRING = (
    ua.VariantType.Null,
    ua.VariantType.Boolean,
    ua.VariantType.Int32,
    ua.VariantType.Double,
    ua.VariantType.String,
)
_VALUE, _STATUS, _SOURCE, _SERVER = 0x01, 0x02, 0x04, 0x08  # DataValue encoding mask bits


def _variant(var: ua.Variant) -> bytes | None:
    """A scalar Variant of the tag types, as asyncua writes it; None for any other."""
    if var.is_array or var.Dimensions is not None:
        return None
    vt, v = var.VariantType, var.Value
    if vt is _DOUBLE and type(v) is float:
        return _double(11, v)
    if vt is _INT32 and type(v) is int and -(2**31) <= v < 2**31:
        return _int32(6, v)
    if vt is _BOOLEAN and type(v) is bool:
        return b"\x01\x01" if v else b"\x01\x00"
    if vt is _STRING and type(v) is str:
        if v.isascii():
            return b"\x0c" + _i32(len(v)) + v.encode()
        return None
    if vt is _NULL and v is None:
        return b"\x00"
    return None


def _value(dv: ua.DataValue, times: dict[datetime, bytes]) -> bytes:
    var = dv.Value
    head = _variant(var) if var is not None and type(dv) is PublishedValue else None
    if head is None or dv.StatusCode is None or dv.SourcePicoseconds is not None or dv.ServerPicoseconds is not None:
        return struct_to_binary(dv)
    parts = [b"", head, _u32(dv.StatusCode.value)]
    mask = _VALUE | _STATUS
    for bit, when in ((_SOURCE, dv.SourceTimestamp), (_SERVER, dv.ServerTimestamp)):
        if when is not None:
            mask |= bit
            packed = times.get(when)
            if packed is None:
                packed = times[when] = datetime_binary(when)
            parts.append(packed)
    parts[0] = bytes((mask,))
    return b"".join(parts)


def data_values(results: Sequence[ua.DataValue]) -> bytes:
    """A ReadResponse's ``Results`` (the list, its length first), as asyncua writes it."""
    times: dict[datetime, bytes] = {}  # a batch's rows share their timestamps
    return _i32(len(results)) + b"".join([_value(dv, times) for dv in results])
