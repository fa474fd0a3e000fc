"""Frames between the core and an OPC UA front process (one socketpair per front).

A frame is a 5-byte header (payload length: uint32 little-endian; kind: uint8) and its
payload. Two kinds:

* ``BATCH``: one :class:`~scada.tagdb.ChangeBatch` as raw numpy bytes (seq, server time, row
  count, then the ids, values, statuses and source times columns), and the batch's texts
  pickled when it has some. The hot path: no Python object per row on either side.
* ``MESSAGE``: a pickled tuple ``(tag, *fields)``: the front's INIT, a resync, alarm event
  items, a request and its reply, a reload. Pickle is safe here because both ends are this
  server's own processes on a socketpair that nothing else can reach (never a path or a
  port); it is never used for anything a client sends.

Pure functions of bytes (``encode_*``, ``decode_*``) plus one coroutine that reads a frame
from an asyncio stream, with the size checked before anything is buffered.
"""

from __future__ import annotations

import asyncio
import copyreg
import io
import pickle
import struct
from types import MappingProxyType
from typing import Any

import numpy as np

from scada.tagdb import ChangeBatch

HEADER = struct.Struct("<IB")
BATCH, MESSAGE = 1, 2
_BATCH_HEAD = struct.Struct("<QqIB")  # seq, server time (ns), rows, has texts
# A front's INIT carries the configuration (tens of MiB for a large city); anything larger is a bug.
MAX_FRAME = 1 << 30


def read_only(mapping: dict) -> MappingProxyType:
    """A read-only mapping again, on the receiving side (importable: pickle rebuilds with it)."""
    return MappingProxyType(mapping)


def _mapping_proxy(proxy: MappingProxyType) -> tuple:
    return read_only, (dict(proxy),)


# The configuration's mappings are read-only proxies (frozen objects), which pickle refuses.
_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[MappingProxyType] = _mapping_proxy


def dumps(obj: Any) -> bytes:
    """``pickle.dumps`` that also carries read-only mappings (the frozen configuration's)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(obj)
    return buf.getvalue()


class FrameError(ValueError):
    """A frame that is not one of ours: the channel is closed (nothing partial is applied)."""


def frame(kind: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload), kind) + payload


def encode_batch(batch: ChangeBatch) -> bytes:
    """A change batch as one BATCH frame."""
    n = len(batch.ids)
    texts = b"" if batch.texts is None else dumps(batch.texts)
    parts = [
        _BATCH_HEAD.pack(batch.seq, batch.server_time, n, batch.texts is not None),
        np.ascontiguousarray(batch.ids, np.int64).tobytes(),
        np.ascontiguousarray(batch.values, np.float64).tobytes(),
        np.ascontiguousarray(batch.status, np.uint32).tobytes(),
        np.ascontiguousarray(batch.source_time, np.int64).tobytes(),
        texts,
    ]
    return frame(BATCH, b"".join(parts))


def decode_batch(payload: bytes) -> ChangeBatch:
    """The batch of a BATCH frame's payload (the arrays are copies the caller owns)."""
    if len(payload) < _BATCH_HEAD.size:
        raise FrameError("batch frame shorter than its header")
    seq, server_time, n, has_texts = _BATCH_HEAD.unpack_from(payload)
    off = _BATCH_HEAD.size
    end = off + n * (8 + 8 + 4 + 8)
    if len(payload) < end or (not has_texts and len(payload) != end):
        raise FrameError(f"batch frame of {len(payload)} bytes does not hold {n} rows")
    buf = memoryview(payload)
    ids = np.frombuffer(buf, np.int64, n, off).copy()
    off += 8 * n
    values = np.frombuffer(buf, np.float64, n, off).copy()
    off += 8 * n
    status = np.frombuffer(buf, np.uint32, n, off).copy()
    off += 4 * n
    source = np.frombuffer(buf, np.int64, n, off).copy()
    texts = None
    if has_texts:
        texts = pickle.loads(payload[end:])
        if not isinstance(texts, tuple) or len(texts) != n:
            raise FrameError("batch frame texts do not match its rows")
    return ChangeBatch(seq, ids, values, status, source, server_time, texts)


def encode_message(tag: str, *fields: Any) -> bytes:
    """A MESSAGE frame: ``(tag, *fields)`` pickled."""
    return frame(MESSAGE, dumps((tag, *fields)))


def decode_message(payload: bytes) -> tuple:
    msg = pickle.loads(payload)
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        raise FrameError("message frame is not a (tag, ...) tuple")
    return msg


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> tuple[int, bytes]:
    """The next frame's kind and payload; IncompleteReadError at the end of the stream."""
    size, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > max_size:
        raise FrameError(f"frame of {size} bytes announced, at most {max_size} accepted")
    if kind not in (BATCH, MESSAGE):
        raise FrameError(f"unknown frame kind {kind}")
    return kind, await reader.readexactly(size)
