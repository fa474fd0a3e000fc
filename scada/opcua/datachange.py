"""DataChangeNotifications encoded in batches: columns in, OPC UA binary out (Part 6).

The OPC UA front's hot path. asyncua builds a MonitoredItemNotification, a DataValue, a
Variant and two datetimes per value and encodes each through its generic struct encoder:
about 20 µs a value, the ceiling of a Python server's throughput. Here a whole publish of
a subscription is a few numpy scatters: each row's byte length is known from its variant
kind and whether its status is Good, so offsets are one cumsum and every fixed-size field
is written for all rows of its shape at once. Only String variants cost Python work (their
UTF-8 encoding), one call per text row.

Pure: no asyncua import, no I/O. ``tests/unit/test_datachange.py`` checks the bytes against
asyncua's own encoder of the equivalent objects.

Row encoding (a MonitoredItemNotification): ClientHandle UInt32, then a DataValue: its mask
byte, the Variant (type byte + payload), the StatusCode when not Good (a decoder reads a
missing status as Good), SourceTimestamp, ServerTimestamp (DateTime: Int64 100 ns ticks since
1601-01-01 UTC). A timestamp of 0 ns means "none" and is left out, as the Value attribute's
DataValue leaves it out (scada.opcua.publisher.Publisher.current). Timestamps are truncated
to the microsecond, as asyncua's datetime path does, so both paths give the same bytes.
"""

from __future__ import annotations

import numpy as np

# Variant built-in type ids (Part 6 5.1.2) of the tag kinds a SCADA tag can have.
NULL, BOOLEAN, INT32, DOUBLE, STRING = 0, 1, 6, 11, 12

# DataValue encoding mask bits (Part 6 5.2.2.17).
_HAS_VALUE, _HAS_STATUS, _HAS_SOURCE, _HAS_SERVER = 0x01, 0x02, 0x04, 0x08

EPOCH_TICKS = 116_444_736_000_000_000  # 100 ns ticks from 1601-01-01 to 1970-01-01 (UTC)

_PAYLOAD = np.zeros(256, np.int64)  # bytes after the variant's type byte, by type (strings apart)
_PAYLOAD[BOOLEAN], _PAYLOAD[INT32], _PAYLOAD[DOUBLE], _PAYLOAD[STRING] = 1, 4, 8, 4

_EMPTY_DIAGNOSTICS = bytes(4)  # DiagnosticInfos: an empty array (Int32 length 0)


def ticks(ns: np.ndarray) -> np.ndarray:
    """OPC UA DateTime ticks of int64 Unix nanoseconds, truncated to the microsecond."""
    return (np.asarray(ns, np.int64) // 1000) * 10 + EPOCH_TICKS


def _put(out: np.ndarray, pos: np.ndarray, data: np.ndarray) -> None:
    """Write each row of ``data`` (any fixed-size dtype) little-endian at its byte offset in ``out``."""
    if not len(pos):
        return
    raw = np.ascontiguousarray(data, data.dtype.newbyteorder("<")).view(np.uint8).reshape(len(pos), -1)
    out[pos[:, None] + np.arange(raw.shape[1])] = raw


def variant_kinds(vtypes: np.ndarray, values: np.ndarray, texts: np.ndarray | None) -> np.ndarray:
    """Each row's Variant type: its tag's type, or Null for no value (NaN, or a None text)."""
    kinds = np.where(np.isnan(values) & (vtypes != STRING), NULL, vtypes).astype(np.uint8)
    strings = np.flatnonzero(kinds == STRING)
    if len(strings):
        none = np.array([t is None for t in (texts[strings] if texts is not None else [None] * len(strings))], bool)
        kinds[strings[none]] = NULL
    return kinds


def encode_items(
    handles: np.ndarray,
    vtypes: np.ndarray,
    values: np.ndarray,
    status: np.ndarray,
    source_ns: np.ndarray,
    server_ns: np.ndarray,
    texts: np.ndarray | None = None,
) -> bytes:
    """The MonitoredItemNotifications of parallel rows, concatenated (no array length).

    ``vtypes``: each row's tag type (BOOLEAN, INT32, DOUBLE, STRING); ``values`` float64 (NaN:
    no value yet); ``texts``: an object array (the text of STRING rows, None for no text),
    needed only when some row is a STRING. Int32 values are truncated toward zero and
    Booleans are ``value != 0``, as ``int(v)`` and ``bool(v)`` give them.
    """
    n = len(handles)
    if n == 0:
        return b""
    vtypes = np.asarray(vtypes, np.uint8)
    values = np.asarray(values, np.float64)
    status = np.asarray(status, np.uint32)
    source_ns = np.asarray(source_ns, np.int64)
    server_ns = np.broadcast_to(np.asarray(server_ns, np.int64), (n,))
    kinds = variant_kinds(vtypes, values, texts)
    strings = np.flatnonzero(kinds == STRING)
    encoded = [str(t).encode() for t in texts[strings]] if texts is not None and len(strings) else []
    payload = _PAYLOAD[kinds]
    if encoded:
        str_len = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
        payload[strings] += str_len
    has_status = status != 0
    has_source = source_ns != 0
    has_server = server_ns != 0
    row_len = 6 + payload + 4 * has_status + 8 * has_source + 8 * has_server
    ends = np.cumsum(row_len)
    starts = ends - row_len
    out = np.zeros(int(ends[-1]), np.uint8)
    _put(out, starts, np.asarray(handles, np.uint32))
    out[starts + 4] = _HAS_VALUE | _HAS_STATUS * has_status | _HAS_SOURCE * has_source | _HAS_SERVER * has_server
    out[starts + 5] = kinds
    body = starts + 6
    for kind, column in (
        (DOUBLE, values),
        (INT32, np.trunc(np.where(kinds == INT32, values, 0.0)).astype(np.int32)),
        (BOOLEAN, (values != 0).astype(np.uint8)),
    ):
        rows = kinds == kind
        _put(out, body[rows], column[rows])
    if encoded:
        _put(out, body[strings], str_len.astype(np.int32))
        chunk = np.frombuffer(b"".join(encoded), np.uint8)
        # Each text's bytes go after its length: a destination per byte, from the text's start.
        first = np.cumsum(str_len) - str_len
        dest = np.repeat(body[strings] + 4 - first, str_len) + np.arange(len(chunk))
        out[dest] = chunk
    pos = body + payload
    _put(out, pos[has_status], status[has_status])
    pos = pos + 4 * has_status
    _put(out, pos[has_source], ticks(source_ns[has_source]))
    pos = pos + 8 * has_source
    _put(out, pos[has_server], ticks(server_ns[has_server]))
    return out.tobytes()


def notification_body(count: int, items: bytes) -> bytes:
    """A DataChangeNotification's binary body: ``count`` encoded items and no diagnostics."""
    return count.to_bytes(4, "little", signed=True) + items + _EMPTY_DIAGNOSTICS
