"""Read and Browse requests decoded directly from their bytes: the objects asyncua's decoder makes.

asyncua decodes a request with its generic dataclass deserializer (a call per field, a
``NodeId.__post_init__`` check per NodeId): ~25-35 µs per ReadValueId or BrowseDescription
here, half of a Read of 1,000 tag values once the values themselves are cheap
(scada/opcua/tag_read.py). This decodes the common shapes (numeric and string NodeIds
without namespace URI or server index) with ``struct.unpack_from`` on the message's bytes
and builds the same objects; for anything else it answers None and asyncua decodes the
request as before, so errors (a null string NodeId, an unknown enum value, a short message)
are asyncua's. tests/unit/test_opcua_request_codec.py compares the objects on random
requests. Installed with ``scada.opcua.asyncua_private.request_decoding.hook_request_decoding``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua

from scada.opcua.asyncua_private.binary import decode_struct, string_encoding

_new = object.__new__
_TWO, _FOUR, _NUMERIC, _STRING = (
    ua.NodeIdType.TwoByte,
    ua.NodeIdType.FourByte,
    ua.NodeIdType.Numeric,
    ua.NodeIdType.String,
)
_u8 = struct.Struct("<B").unpack_from
_u16 = struct.Struct("<H").unpack_from
_i16 = struct.Struct("<h").unpack_from
_i32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_four = struct.Struct("<BH").unpack_from
_numeric = struct.Struct("<HI").unpack_from
_double_i32 = struct.Struct("<di").unpack_from
_browse_tail = struct.Struct("<?II").unpack_from  # IncludeSubtypes, NodeClassMask, ResultMask


class _Unsupported(Exception):
    """A shape this decoder leaves to asyncua (it decodes the whole request)."""


def _string(data: bytes, pos: int, encoding: str) -> tuple[str | None, int]:
    (n,) = _i32(data, pos)
    pos += 4
    if n == -1:
        return None, pos
    if n < 0 or pos + n > len(data):
        raise _Unsupported
    return data[pos : pos + n].decode(encoding, errors="surrogateescape"), pos + n


def _nodeid(data: bytes, pos: int, encoding: str) -> tuple[ua.NodeId, int]:
    kind = data[pos]
    pos += 1
    ident: Any
    if kind == 3:
        (ns,) = _u16(data, pos)
        ident, pos = _string(data, pos + 2, encoding)
        if ident is None:  # asyncua refuses a null string identifier: let it say so
            raise _Unsupported
        t = _STRING
    elif kind == 2:
        ns, ident = _numeric(data, pos)
        pos, t = pos + 6, _NUMERIC
    elif kind == 0:
        ns, ident, t = 0, data[pos], _TWO
        pos += 1
    elif kind == 1:
        ns, ident = _four(data, pos)
        pos, t = pos + 3, _FOUR
    else:  # other kinds, and the URI / server index flags of an expanded NodeId
        raise _Unsupported
    n = _new(ua.NodeId)
    n.Identifier, n.NamespaceIndex, n.NodeIdType = ident, ns, t
    return n, pos


def _read_value_id(data: bytes, pos: int, encoding: str) -> tuple[ua.ReadValueId, int]:
    nid, pos = _nodeid(data, pos, encoding)
    (attr,) = _u32(data, pos)
    index_range, pos = _string(data, pos + 4, encoding)
    (ns,) = _i16(data, pos)
    name, pos = _string(data, pos + 2, encoding)
    return ua.ReadValueId(nid, attr, index_range, ua.QualifiedName(name, ns)), pos


def _browse_description(data: bytes, pos: int, encoding: str) -> tuple[ua.BrowseDescription, int]:
    nid, pos = _nodeid(data, pos, encoding)
    (direction,) = _i32(data, pos)
    reftype, pos = _nodeid(data, pos + 4, encoding)
    subtypes, mask, result_mask = _browse_tail(data, pos)
    try:
        direction = ua.BrowseDirection(direction)
    except ValueError:
        raise _Unsupported from None
    return ua.BrowseDescription(nid, direction, reftype, subtypes, mask, result_mask), pos + 9


def _items(data: bytes, pos: int, item: Callable[[bytes, int, str], tuple[Any, int]]) -> tuple[list[Any], int]:
    encoding = string_encoding()
    (n,) = _i32(data, pos)
    pos += 4
    out = []
    for _ in range(n):  # -1: asyncua reads an empty list too
        obj, pos = item(data, pos, encoding)
        out.append(obj)
    return out, pos


def read_parameters(data: bytes, pos: int) -> tuple[ua.ReadParameters, int] | None:
    """The ReadParameters at ``pos`` and the position after them, or None (asyncua decodes)."""
    try:
        max_age, timestamps = _double_i32(data, pos)
        nodes, end = _items(data, pos + 12, _read_value_id)
        return ua.ReadParameters(max_age, ua.TimestampsToReturn(timestamps), nodes), end
    except (_Unsupported, struct.error, IndexError, ValueError, UnicodeError):
        return None


def browse_parameters(data: bytes, pos: int) -> tuple[ua.BrowseParameters, int] | None:
    """The BrowseParameters at ``pos`` and the position after them, or None (asyncua decodes)."""
    try:
        view, pos = decode_struct(ua.ViewDescription, data, pos)  # once per request: asyncua's
        (max_refs,) = _u32(data, pos)
        nodes, end = _items(data, pos + 4, _browse_description)
        return ua.BrowseParameters(view, max_refs, nodes), end
    except (_Unsupported, struct.error, IndexError, ValueError, UnicodeError):
        return None
