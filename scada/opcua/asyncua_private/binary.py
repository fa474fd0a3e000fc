"""asyncua internals: its binary encoders and decoder of single values, for our codecs
(scada/opcua/browse_codec.py, read_codec.py, request_codec.py) to stay byte-equal to asyncua's;
checked by tests/unit/test_asyncua_private_binary.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asyncua import ua
from asyncua.common.utils import Buffer as _Buffer
from asyncua.ua.ua_binary import Primitives as _Primitives
from asyncua.ua.ua_binary import get_string_encoding as _get_string_encoding
from asyncua.ua.ua_binary import nodeid_to_binary as _nodeid_to_binary
from asyncua.ua.ua_binary import struct_from_binary as _stock_struct_from_binary
from asyncua.ua.ua_binary import struct_to_binary

__all__ = ["datetime_binary", "decode_struct", "nodeid_binary", "string_binary", "string_encoding", "struct_to_binary"]

nodeid_binary: Callable[[ua.NodeId], bytes] = _nodeid_to_binary
"""asyncua's encoder of a NodeId or ExpandedNodeId (``ua_binary.nodeid_to_binary``)."""

string_binary: Callable[[str | None], bytes] = _Primitives.String.pack
"""asyncua's encoder of a String (its configured string encoding; None: a null String)."""

datetime_binary: Callable[[Any], bytes] = _Primitives.DateTime.pack
"""asyncua's encoder of a DateTime (a datetime as Int64 100 ns ticks since 1601, clamped)."""

T = TypeVar("T")


def decode_struct(objtype: type[T], data: bytes, pos: int) -> tuple[T, int]:
    """asyncua's decoding of one ``objtype`` in ``data`` at ``pos``, and the position after it."""
    buf = _Buffer(data, pos)
    obj = _stock_struct_from_binary(objtype, buf)
    return obj, buf.cur_pos


def string_encoding() -> str:
    """The text encoding asyncua writes and reads Strings in (``ua_binary.get_string_encoding``)."""
    return _get_string_encoding()
