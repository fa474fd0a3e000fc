"""asyncua internals: requests decoded by us (scada/opcua/request_codec.py); checked by
tests/unit/test_asyncua_private_request_decoding.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from asyncua.common.utils import Buffer as _Buffer
from asyncua.server import uaprocessor as _uaprocessor
from asyncua.ua.ua_binary import struct_from_binary as _stock_struct_from_binary

__all__ = ["StructDecoder", "hook_request_decoding"]


# -- Requests decoded by us -------------------------------------------------------------------
#
# asyncua decodes each request in ``UaProcessor._process_message`` with ``struct_from_binary``
# (the name imported into asyncua.server.uaprocessor), its generic dataclass deserializer: for a
# Read or Browse of many nodes, about half of the service's time. That name is replaced, once
# per process, by one that asks a decoder of ours for the parameter classes given (they make
# the same objects: scada/opcua/request_codec.py) and asyncua's own decoder for everything else
# or when ours answers None (a shape it leaves to asyncua, an error asyncua reports).


class StructDecoder(Protocol):
    """Decode a structure from ``data`` at ``pos``: (the object, the position after it), or None."""

    def __call__(self, data: bytes, pos: int) -> tuple[Any, int] | None: ...


_DECODERS: dict[type, StructDecoder] = {}


def _struct_from_binary(objtype: Any, data: Any) -> Any:
    decode = _DECODERS.get(objtype) if isinstance(objtype, type) else None
    if decode is not None and type(data) is _Buffer and type(data._data) is bytes:
        start, whole = data.cur_pos, data._data
        end = start + len(data)
        try:
            out = decode(whole if end == len(whole) else whole[:end], start)  # never past the buffer's end
        except Exception:  # noqa: BLE001 - a defect of ours must not lose the request: asyncua decodes it
            out = None
        if out is not None:
            obj, end = out
            data.skip(end - start)
            return obj
    return _stock_struct_from_binary(objtype, data)


def hook_request_decoding(decoders: Mapping[type, StructDecoder]) -> None:
    """Decode the requests' parameters of these classes with ``decoders`` (see the section comment)."""
    _DECODERS.update(decoders)
    if _uaprocessor.struct_from_binary is not _struct_from_binary:
        _uaprocessor.struct_from_binary = _struct_from_binary
