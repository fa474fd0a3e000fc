"""OPC UA HistoryRead of the tags: raw and processed values from the historian's embedded store.

Every historised tag variable (``Config.history_table()['enabled']``) is marked
``Historizing = true`` with the HistoryRead bit in its AccessLevel and UserAccessLevel, and
asyncua's HistoryRead entry point (:func:`scada.opcua.asyncua_private.history.wrap_history_read`) is wrapped:
reads of tag variables are answered here, anything else (event history, nodes historised
by asyncua's own manager) goes on to the previous handler. What is answered (OPC 10000-11
and -13):

**Read raw** (``ReadRawModifiedDetails``, ``IsReadModified`` false). The time domain is
[start, end) forward when start < end, (end, start] backward (newest first) when start >
end, start only + ``NumValuesPerNode`` forward from start, end only + ``NumValuesPerNode``
backward from end (inclusive), start == end the value at that time. ``ReturnBounds`` adds
the bounding values (the last point at or before the start, the first at or after the end;
``Bad_BoundNotFound`` with a null value at the requested time when there is none, Part 11
§4.4). With all three given, at most ``NumValuesPerNode`` values come back with a
continuation point for the rest; a response never holds more than ``max_values`` values
per node either. Both missing, or one missing without ``NumValuesPerNode``:
``Bad_InvalidTimestampArgument``. ``IsReadModified`` true: ``Bad_HistoryOperationUnsupported``
(the historian never modifies a value).

The compressor's held points and the points waiting for the historian's next write are not
in the store yet: raw reads append them (they are always later than the stored ones), so
the newest value a client saw live is also in its history.

**Read processed** (``ReadProcessedDetails``): ``AggregateFunction_Average``,
``_TimeAverage``, ``_Minimum``, ``_Maximum``, ``_Count`` and ``_Interpolative`` per
``ProcessingInterval`` (ms; 0: one interval for the whole range), computed by
:meth:`HistoryStore.read_processed` (see ``scada/historian/store.py`` for their exact
definitions). Timestamps are interval starts (the later edge when time flows backward,
start > end). Status codes carry the historian bits of Part 11 §6.2: Calculated
(Interpolated for Interpolative) and Partial for an interval shorter than the processing
interval; ``Bad_NoData`` intervals carry none. Discrete points are interpolated stepped.
Another aggregate, or any aggregate on a text point: ``Bad_AggregateNotSupported``; a
configuration other than the server's (``UseServerCapabilitiesDefaults`` false with other
values): ``Bad_AggregateConfigurationRejected``; start == end: ``Bad_InvalidArgument``
(Part 13 Table 12). Processed reads do not see the points not yet stored (the newest
interval may miss the last seconds).

**Continuation points are stateless**: the position (the time of the last value returned,
or the next interval), the values still owed, and a digest of the request, in 28 bytes.
The server keeps nothing per session, so there is nothing to release
(``ReleaseContinuationPoints`` answers Good with no data) and no limit on how many a
client holds. A continuation point given with other details than its own:
``Bad_ContinuationPointInvalid``.

**Timestamps**: only source times are recorded. ``TimestampsToReturn`` Source and Both are
answered with source timestamps (Part 11 would refuse Both, but asyncua's
``Node.history_read`` always asks Both); Server: ``Bad_TimestampNotSupported`` per node;
Neither or an invalid value: ``Bad_TimestampsToReturnInvalid`` for the whole request.
Times travel as OPC UA DateTime (100 ns ticks) through Python datetimes: microseconds on
the wire, nanoseconds in the store and in continuation points.

**Where the history comes from** (:class:`HistorySource`): a store to read (by TagDB id) and
the points not in it yet, awaited on the event loop first. In the core's process that is the
running Historian (:class:`LocalHistory`: its own store, its compressor and write queue); in
an OPC UA front process, :class:`scada.front.history.HistoryMirror`: its own read-only
connection to the same SQLite file (it sees each write once committed, rows not merged yet
included) and one request to the core for the unstored points. If that request fails, the
raw reads of the request answer ``Bad_DataUnavailable`` (without the newest points the
answer would be wrong), processed reads go on.

Store reads run in a worker thread (one per request), in the core and in a front alike.
Measured on the 2-core machine (loaded), a ReadRaw of 10 nodes x 10,000 values through a
front's mirror: 2.2-2.5 s in a thread, the loop's longest stall 0.5-0.7 s (the GC pauses of
100,000 DataValues being built); inline 1.9-2.0 s, all of it a stall of the loop that
publishes to every other client. The store serialises the reads with its own writes (in
the core) or with other reads (its lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import structlog
from asyncua import Server, ua

from scada.config import Config
from scada.historian.merge import Part, empty_part, merge_parts
from scada.historian.reader import Point, ProcessedHistory, RawHistory
from scada.historian.store import HistoryError
from scada.opcua.address_space import set_variable_attributes, variant_type
from scada.opcua.asyncua_private.history import HistoryRead, ServiceError, stock_historized, wrap_history_read
from scada.opcua.asyncua_private.nodes import AttributeValue, address_space
from scada.opcua.typed_ua import DataValue, NodeId, StatusCode
from scada.security.context import current
from scada.security.identity import Permission
from scada.tagdb import ANALOG, TEXT, TagDB

log = structlog.get_logger("scada.opcua")

MAX_VALUES = 10_000  # values (or intervals) per node in one response; beyond, a continuation point

A = ua.AttributeIds
SC = ua.StatusCodes
_O = ua.ObjectIds

# The aggregates the store computes, by the NodeId of their AggregateFunction object (ns 0).
AGGREGATES: dict[int, str] = {
    _O.AggregateFunction_Average: "Average",
    _O.AggregateFunction_TimeAverage: "TimeAverage",
    _O.AggregateFunction_Minimum: "Minimum",
    _O.AggregateFunction_Maximum: "Maximum",
    _O.AggregateFunction_Count: "Count",
    _O.AggregateFunction_Interpolative: "Interpolative",
}

# StatusCode info bits (OPC 10000-4 §7.39, 10000-11 §6.2.2): InfoType DataValue, historian bits.
INFO_DATA_VALUE = 0x0400
CALCULATED = 0x0001
INTERPOLATED = 0x0002
PARTIAL = 0x0004
_SEVERITY_BAD = 0x80000000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_NS = -(2**62)
_MAX_NS = 2**62  # ~ year 2116; DateTime.MaxValue (9999) clamps here


def to_ns(dt: datetime | None) -> int | None:
    """An OPC UA UtcTime -> ns since the Unix epoch; None for DateTime.MinValue ("not specified")."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if ua.datetime_to_win_epoch(dt) <= 0:
        return None
    d = dt - _EPOCH
    ns = (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
    return max(_MIN_NS, min(_MAX_NS, ns))


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // 1000)


# -- continuation points ----------------------------------------------------------------------

_CP = struct.Struct("<2sBBqq8s")
_CP_MAGIC = b"SH"
_CP_VERSION = 1
RAW, PROCESSED = 1, 2


def request_key(*parts) -> bytes:
    """A digest of what defines a read (node, kind, times, counts...): a continuation point is
    only valid with the request that produced it."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()


def encode_cp(kind: int, cursor: int, remaining: int, key: bytes) -> bytes:
    return _CP.pack(_CP_MAGIC, _CP_VERSION, kind, int(cursor), int(remaining), key)


def decode_cp(data: bytes, kind: int, key: bytes) -> tuple[int, int]:
    """(cursor, remaining) of a continuation point; ValueError when it is not one of ours for
    this request."""
    try:
        magic, version, k, cursor, remaining, digest = _CP.unpack(bytes(data))
    except struct.error:
        raise ValueError("not a continuation point of this server") from None
    if magic != _CP_MAGIC or version != _CP_VERSION or k != kind or digest != key:
        raise ValueError("continuation point of another request")
    return cursor, remaining


# -- one tag's points: the store plus what is not stored yet -----------------------------------

_Point = tuple  # (time_ns, value, status, text)


@dataclass(frozen=True, slots=True)
class Unstored:
    """A tag's points not in the store yet, in time order (held by the compressor, or waiting
    for the historian's next write)."""

    times: np.ndarray
    values: np.ndarray
    status: np.ndarray
    texts: tuple[str | None, ...] | None = None

    @classmethod
    def empty(cls) -> Unstored:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint32))

    def point(self, k: int) -> _Point:
        return (
            int(self.times[k]),
            float(self.values[k]),
            int(self.status[k]),
            None if self.texts is None else self.texts[k],
        )


@dataclass(frozen=True, slots=True)
class UnstoredColumns:
    """The unstored points of several tags as flat columns, grouped by tag in ``tags`` order.

    ``counts[k]`` points of ``tags[k]`` follow one another, in time order; ``texts`` is
    parallel to the points when any has a text (None otherwise), ``has_text[k]`` says whether
    tag k's points came with texts. Plain arrays: what crosses the front's channel.
    """

    tags: np.ndarray  # int64
    counts: np.ndarray  # int64
    times: np.ndarray  # int64
    values: np.ndarray  # float64
    status: np.ndarray  # uint32
    has_text: np.ndarray  # bool
    texts: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        k, n = len(self.tags), len(self.times)
        if len(self.counts) != k or len(self.has_text) != k:
            raise ValueError("UnstoredColumns: tags, counts and has_text must have the same length")
        if int(self.counts.sum()) != n or len(self.values) != n or len(self.status) != n:
            raise ValueError("UnstoredColumns: counts must add up to the points, parallel to times")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError("UnstoredColumns: texts must be parallel to times")

    def split(self) -> dict[int, Unstored]:
        """Per tag, its :class:`Unstored` points (views of the columns)."""
        out: dict[int, Unstored] = {}
        ends = np.cumsum(self.counts).tolist()
        begin = 0
        for tag, end, text in zip(self.tags.tolist(), ends, self.has_text.tolist()):
            texts = self.texts[begin:end] if text and self.texts is not None else None
            out[tag] = Unstored(self.times[begin:end], self.values[begin:end], self.status[begin:end], texts)
            begin = end
        return out


def unstored_columns(historian, ids: Sequence[int] | np.ndarray) -> UnstoredColumns:
    """The points the historian has kept but not written to its store, for tags ``ids``.

    Runs on the event loop (the compressor and the write queue live there), so it is batch
    work costing the asked tags' points, not the backlog's size (a failing disk's backlog
    may hold millions): the historian finds them through its index by tag
    (:meth:`~scada.historian.service.Historian.unstored_of`), then one sort of the rows found.
    """
    tags = np.unique(np.asarray(ids, np.int64))
    batches = []
    if len(tags):
        batches = historian.unstored_of(tags)  # compressed, being written or waiting for the next write
        batches.append(historian.compressor.pending(tags))  # held snapshots (the newest)
    found = [(b.ids, b.times, b.values, b.status, b.texts) for b in batches if len(b)]
    if not found:
        z = np.zeros(len(tags), np.int64)
        empty = Unstored.empty()
        return UnstoredColumns(tags, z, empty.times, empty.values, empty.status, np.zeros(len(tags), bool))
    i = np.concatenate([f[0] for f in found]).astype(np.int64)
    t = np.concatenate([f[1] for f in found]).astype(np.int64)
    v = np.concatenate([f[2] for f in found]).astype(np.float64)
    s = np.concatenate([f[3] for f in found]).astype(np.uint32)
    from_text = np.concatenate([np.full(len(f[0]), f[4] is not None) for f in found])
    any_text = bool(from_text.any())
    # Stable: of two copies of one point (a tag's time in two batches), the oldest batch's
    # comes first and is kept, as merge_parts(keep="first") would.
    order = np.lexsort((t, i))
    i, t = i[order], t[order]
    keep = np.ones(len(t), bool)
    keep[1:] = (i[1:] != i[:-1]) | (t[1:] != t[:-1])
    # A tag's points have texts when any of its batches had (before copies are dropped).
    has_text = np.zeros(len(tags), bool)
    np.logical_or.at(has_text, np.searchsorted(tags, i), from_text[order])
    order = order[keep]
    texts = None
    if any_text:
        flat = tuple(x for f in found for x in (f[4] if f[4] is not None else (None,) * len(f[0])))
        texts = tuple(flat[k] for k in order.tolist())
    i = i[keep]
    counts = np.bincount(np.searchsorted(tags, i), minlength=len(tags)).astype(np.int64)
    return UnstoredColumns(tags, counts, t[keep], v[order], s[order], has_text, texts)


def unstored_points(historian, ids: Sequence[int] | np.ndarray) -> dict[int, Unstored]:
    """Per tag id, the points the historian has kept but not written to its store."""
    return unstored_columns(historian, ids).split()


@runtime_checkable
class HistoryReads(Protocol):
    """The store reads TagHistory makes (:class:`~scada.historian.store.HistoryStore`'s);
    blocking calls, made in a worker thread."""

    def read_raw(
        self, tag: int | str, start_ns: int, end_ns: int, limit: int | None = None, after: int | None = None
    ) -> RawHistory: ...

    def bound_before(self, tag: int | str, time_ns: int) -> Point | None: ...

    def bound_after(self, tag: int | str, time_ns: int) -> Point | None: ...

    def read_processed(
        self, tag: int | str, start_ns: int, end_ns: int, interval_ns: int, aggregate: str, stepped: bool = False
    ) -> ProcessedHistory: ...


@runtime_checkable
class HistorySource(Protocol):
    """What TagHistory needs of the historian: its store (reads, by TagDB id) and, awaited on
    the event loop before the store is read, the points not in the store yet.

    In-process: :class:`LocalHistory` over the running Historian. In an OPC UA front process:
    :class:`scada.front.history.HistoryMirror` (its own read-only store, and a request to the
    core for the unstored points).
    """

    @property
    def store(self) -> HistoryReads: ...

    async def unstored_points(self, ids: Sequence[int]) -> dict[int, Unstored]: ...


class LocalHistory:
    """The running :class:`~scada.historian.service.Historian` as a :class:`HistorySource`."""

    def __init__(self, historian) -> None:
        self.historian = historian

    @property
    def store(self) -> HistoryReads:
        """The historian's own store (the writer; reads are serialised with its writes)."""
        return self.historian.store

    async def unstored_points(self, ids: Sequence[int]) -> dict[int, Unstored]:
        """Its compressor's held points and its write queue, read on the loop that owns them."""
        return unstored_points(self.historian, ids)


def history_source(history) -> HistorySource:
    """``history`` as a HistorySource: itself when it is one, else a Historian to wrap."""
    return history if isinstance(history, HistorySource) else LocalHistory(history)


class Series:
    """One tag's history as the client sees it: the store's points, then the unstored ones."""

    def __init__(self, store: HistoryReads, tag: int, extra: Unstored | None = None, text: bool = False) -> None:
        self.store = store
        self.tag = tag
        self.extra = extra if extra is not None else Unstored.empty()
        self.text = text

    def _extra(self, lo: int, hi: int):
        e = self.extra
        m = np.flatnonzero((e.times >= lo) & (e.times < hi))
        return e.times[m], e.values[m], e.status[m], None if e.texts is None else tuple(e.texts[i] for i in m.tolist())

    def forward(self, lo: int, hi: int, limit: int):
        """The first ``limit`` points with lo <= t < hi, in time order: (t, v, s, texts)."""
        if hi <= lo or limit <= 0:
            return empty_part()
        r = self.store.read_raw(self.tag, lo, hi, limit)
        parts = [(r.times, r.values, r.status, r.texts)]
        if r.next_after is None:  # the store's points end in the range: the unstored ones follow
            parts.append(self._extra(lo, hi))
        # The store's copy of a point over the unstored one (see merge_parts).
        t, v, s, x = merge_parts(parts, keep="first")
        return t[:limit], v[:limit], s[:limit], (None if x is None else x[:limit])

    def backward(self, lo: int, hi: int, limit: int):
        """The last ``limit`` points with lo <= t < hi, newest first: (t, v, s, texts).

        The store reads forward: windows going back from ``hi`` (empty stretches skipped with
        one indexed probe), growing until they hold enough points.
        """
        if hi <= lo or limit <= 0:
            return empty_part()
        extra = self._extra(lo, hi)
        parts: list[Part] = []
        got = 0
        top, width = hi, 3_600_000_000_000
        while got + len(extra[0]) < limit and top > lo:
            b = self.store.bound_before(self.tag, top - 1)
            if b is None or b[0] < lo:
                break
            top = b[0] + 1
            bottom = max(lo, top - width)
            r = self.store.read_raw(self.tag, bottom, top)
            parts.insert(0, (r.times, r.values, r.status, r.texts))
            got += len(r)
            top, width = bottom, width * 4
        t, v, s, x = merge_parts(parts + [extra], keep="first")
        t, v, s = t[-limit:][::-1], v[-limit:][::-1], s[-limit:][::-1]
        return t, v, s, (None if x is None else tuple(reversed(x[-limit:])))

    def _with_text(self, p):
        if p is None or not self.text:
            return p
        r = self.store.read_raw(self.tag, p[0], p[0] + 1)
        return (p[0], p[1], p[2], r.texts[0] if len(r) and r.texts else None)

    def before(self, t: int) -> _Point | None:
        """The last point at or before ``t``."""
        b = self.store.bound_before(self.tag, t)
        best = None if b is None else (b[0], b[1], b[2], None)
        e = self.extra
        k = int(np.searchsorted(e.times, t, "right")) - 1
        if k >= 0 and (best is None or e.times[k] > best[0]):
            return e.point(k)
        return self._with_text(best)

    def after(self, t: int) -> _Point | None:
        """The first point at or after ``t``."""
        b = self.store.bound_after(self.tag, t)
        best = None if b is None else (b[0], b[1], b[2], None)
        e = self.extra
        k = int(np.searchsorted(e.times, t, "left"))
        if k < len(e.times) and (best is None or e.times[k] < best[0]):
            return e.point(k)
        return self._with_text(best)


def _bound_not_found(t: int) -> _Point:
    return (t, math.nan, SC.BadBoundNotFound, None)


def _points(t, v, s, x) -> list[_Point]:
    texts = x if x is not None else (None,) * len(t)
    return list(zip(t.tolist(), v.tolist(), s.tolist(), texts))


@dataclass(frozen=True, slots=True)
class RawQuery:
    """A validated raw read: forward from ``start`` or backward from ``start`` (the later time).

    ``end`` is None for the one-time forms (start + N, or end + N read backward); ``total``
    is then the number of values asked for.
    """

    start: int
    end: int | None
    forward: bool
    bounds: bool
    page: int  # values per response
    total: int  # 0: no total (both times given)


def raw_query(start: int | None, end: int | None, n: int, bounds: bool, max_values: int) -> RawQuery | int:
    """The query of a ReadRawModifiedDetails, or the Bad status code that refuses it."""
    if start is None and end is None:
        return SC.BadInvalidTimestampArgument
    if (start is None or end is None) and n == 0:
        return SC.BadInvalidTimestampArgument  # at least two of start, end and NumValuesPerNode
    if start is not None and end is not None:
        page = min(n, max_values) if n else max_values
        return RawQuery(start, end, start <= end, bounds, page, 0)
    if start is not None:
        return RawQuery(start, None, True, bounds, min(n, max_values), n)
    assert end is not None  # both None is refused above
    return RawQuery(end, None, False, bounds, min(n, max_values), n)  # end + N: newest first, end included


def raw_page(series: Series, q: RawQuery, cursor: int | None, page: int) -> tuple[list[_Point], bool]:
    """The next ``page`` values of the logical sequence [start bound] values [end bound] after
    ``cursor`` (the time of the last value returned), and whether more follow."""
    want = page + 1
    out: list[_Point] = []
    if q.forward:
        lo = _MIN_NS if cursor is None else cursor + 1
        hi = _MAX_NS if q.end is None else (q.start + 1 if q.end == q.start else q.end)
        if q.bounds:
            b = series.before(q.start)  # at the start itself, it is the range's first value
            b = _bound_not_found(q.start) if b is None else (b if b[0] < q.start else None)
            if b is not None and b[0] >= lo:
                out.append(b)
        out.extend(_points(*series.forward(max(q.start, lo), hi, want - len(out))))
        if q.bounds and q.end is not None and len(out) < want:
            a = series.after(q.end)
            a = _bound_not_found(q.end) if a is None else (a if a[0] >= hi else None)
            if a is not None and a[0] >= lo:
                out.append(a)
    else:
        hi = _MAX_NS if cursor is None else cursor  # values strictly before the cursor
        top = q.start
        low = _MIN_NS if q.end is None else q.end + 1  # (end, start]
        if q.bounds:
            a = series.after(top)  # at the start itself, it is the range's first value
            a = _bound_not_found(top) if a is None else (a if a[0] > top else None)
            if a is not None and a[0] < hi:
                out.append(a)
        out.extend(_points(*series.backward(low, min(top + 1, hi), want - len(out))))
        if q.bounds and q.end is not None and len(out) < want:
            b = series.before(q.end)  # at or before the end: never in (end, start]
            b = _bound_not_found(q.end) if b is None else b
            if b[0] < hi:
                out.append(b)
    return out[:page], len(out) > page


# -- processed reads ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessedQuery:
    start: int
    end: int
    interval: int  # ns; the whole range when the request said 0
    requested: int  # ns as requested (0: whole range): shorter intervals are Partial
    aggregate: str
    stepped: bool

    @property
    def count(self) -> int:
        return -(-abs(self.end - self.start) // self.interval)


def processed_page(store: HistoryReads, tag: int, q: ProcessedQuery, first: int, page: int):
    """Intervals ``first`` .. ``first + page`` of a processed read: (times, values, status,
    partial, more). Backward reads (start > end) run forward over shifted ranges, (a, b]
    being [a + 1, b + 1) in integer nanoseconds, and come back newest first."""
    n = q.count
    last = min(n, first + page)
    I = q.interval  # noqa: E741
    if q.start < q.end:
        ps, pe = q.start + first * I, min(q.end, q.start + last * I)
        r = store.read_processed(tag, ps, pe, I, q.aggregate, q.stepped)
        times, values, status = r.times, r.values, r.status
        length = np.minimum(times + I, q.end) - times
    else:
        S, E = q.start, q.end
        if q.aggregate == "Interpolative":  # values at S - m I: forward edges, then reversed
            r = store.read_processed(tag, S - (last - 1) * I, S - first * I + 1, I, q.aggregate, q.stepped)
            times, values, status = r.times[::-1], r.values[::-1], r.status[::-1]
        else:
            full = (S - E) // I  # intervals (S - (m+1) I, S - m I] that fit whole
            chunks = []
            if (S - E) % I and first <= full < last:  # the short, earliest one: (E, S - full I]
                top = S - full * I
                r = store.read_processed(tag, E + 1, top + 1, top - E, q.aggregate, q.stepped)
                chunks.append((np.array([top], np.int64), r.values, r.status))
            hi = min(last, full)
            if hi > first:
                r = store.read_processed(tag, S - hi * I + 1, S - first * I + 1, I, q.aggregate, q.stepped)
                chunks.append((r.times - 1 + I, r.values, r.status))  # interval start: its later edge
            times = np.concatenate([c[0] for c in chunks])[::-1]
            values = np.concatenate([c[1] for c in chunks])[::-1]
            status = np.concatenate([c[2] for c in chunks])[::-1]
        length = times - np.maximum(times - I, E)
    # A value at an instant has no partial interval.
    partial = length < q.requested if q.requested and q.aggregate != "Interpolative" else np.zeros(len(times), bool)
    return times, values, status, partial, last < n


# -- the service ---------------------------------------------------------------------------------


class TagHistory:
    """HistoryRead for the tag variables of an HmiServer; see the module docstring.

    ``historian``: a :class:`HistorySource`, or the server's
    :class:`~scada.historian.service.Historian` (wrapped in a :class:`LocalHistory`).
    ``tagdb``: what it uses of the TagDB is ``names``, ``id_of`` and ``kind``.
    """

    def __init__(
        self, server: Server, ns: int, config: Config, tagdb: TagDB, historian, max_values: int = MAX_VALUES
    ) -> None:
        self.server = server
        self.ns = ns
        self.config = config
        self.tagdb = tagdb
        self.source: HistorySource = history_source(historian)
        self.max_values = int(max_values)
        self.historized = np.asarray(config.history_table()["enabled"], bool)
        self.vtypes = [variant_type(p) for p in config.point_defs()]
        # The tag variables whose Writes go to the command pipeline (scada/opcua/writes.py): their
        # marks keep CurrentWrite. Set by the server before install() and each mark_variables().
        self.writable: frozenset[str] = frozenset()
        self._previous: HistoryRead | None = None  # asyncua's handler, for what is not ours
        self.reads = 0  # HistoryRead operations answered (nodes)

    # -- installation ----------------------------------------------------------------------

    async def install(self) -> int:
        """Mark the historised variables, advertise the capabilities, take over HistoryRead.

        Call after the address space is built, before the server starts. Returns the number
        of variables marked Historizing.
        """
        marked = self.mark_variables()
        await self._advertise()
        self._previous = wrap_history_read(self.server, self.read_history)
        log.info("opcua_history_ready", historizing=marked, max_values=self.max_values)
        return marked

    def mark_variables(self) -> int:
        """Historizing = true and the HistoryRead bit on every historised tag variable.

        Tag variables are read-only (the builder's AccessLevel is CurrentRead) but the writable
        ones (``writable``: CurrentWrite kept), so every marked one gets one of two pairs of shared
        attribute objects, set on all of them at once
        (``set_variable_attributes``: a city's variables in about a second, without building
        each variable's node).
        """
        historizing = AttributeValue(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
        mask = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask
        level = AttributeValue(ua.DataValue(ua.Variant(mask, ua.VariantType.Byte)))
        names = self.tagdb.names
        marked = [names[tag] for tag in np.flatnonzero(self.historized).tolist()]
        attrs = {A.Historizing: historizing, A.AccessLevel: level, A.UserAccessLevel: level}
        aspace = address_space(self.server)
        writable = [n for n in marked if n in self.writable]
        if not writable:
            return set_variable_attributes(aspace, marked, self.ns, attrs)
        # Writable points (commands through the pipeline) keep CurrentWrite beside HistoryRead.
        rw = AttributeValue(ua.DataValue(ua.Variant(mask | ua.AccessLevel.CurrentWrite.mask, ua.VariantType.Byte)))
        rw_attrs = {A.Historizing: historizing, A.AccessLevel: rw, A.UserAccessLevel: rw}
        done = set_variable_attributes(aspace, writable, self.ns, rw_attrs)
        return done + set_variable_attributes(aspace, [n for n in marked if n not in self.writable], self.ns, attrs)

    async def _advertise(self) -> None:
        """HistoryServerCapabilities and the AggregateFunctions folders (Part 11 §5.4, Part 13)."""
        server = self.server
        caps = {
            _O.HistoryServerCapabilities_AccessHistoryDataCapability: (True, ua.VariantType.Boolean),
            _O.HistoryServerCapabilities_MaxReturnDataValues: (self.max_values, ua.VariantType.UInt32),
            _O.HistoryServerCapabilities_ServerTimestampSupported: (False, ua.VariantType.Boolean),
        }
        for nid, (value, vtype) in caps.items():
            try:
                await server.get_node(nid).write_value(ua.Variant(value, vtype))
            except Exception as exc:  # noqa: BLE001  an older nodeset without the node: not essential
                log.warning("opcua_history_capability_not_set", node=nid, error=repr(exc))
        for folder in (
            _O.Server_ServerCapabilities_AggregateFunctions,
            _O.HistoryServerCapabilities_AggregateFunctions,
        ):
            node = server.get_node(folder)
            present = {r.NodeId for r in await node.get_references(ua.ObjectIds.Organizes)}
            for agg in AGGREGATES:
                if NodeId(agg) not in present:
                    await node.add_reference(NodeId(agg), ua.ObjectIds.Organizes, forward=True, bidirectional=False)

    # -- HistoryRead -----------------------------------------------------------------------

    def tag_of(self, nodeid: ua.NodeId) -> int | None:
        """The tag id of a tag variable's NodeId, or None."""
        if nodeid.NamespaceIndex != self.ns or not isinstance(nodeid.Identifier, str):
            return None
        try:
            return self.tagdb.id_of(nodeid.Identifier)
        except KeyError:
            return None

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        """asyncua's HistoryRead entry point: tag variables here, the rest to the previous handler."""
        previous = self._previous
        assert previous is not None, "install() first"
        ctx = current()  # None: no security layer, or the server's own read
        if ctx is not None and Permission.HISTORY not in ctx.identity.permissions:
            raise ServiceError(SC.BadUserAccessDenied)  # (the service gate refuses first and audits)
        details = params.HistoryReadDetails
        if not isinstance(details, (ua.ReadRawModifiedDetails, ua.ReadProcessedDetails)):
            return await previous(params)  # events, at-time, annotations...
        if params.TimestampsToReturn not in (
            ua.TimestampsToReturn.Source,
            ua.TimestampsToReturn.Both,
            ua.TimestampsToReturn.Server,
        ):
            raise ServiceError(SC.BadTimestampsToReturnInvalid)
        if isinstance(details, ua.ReadProcessedDetails) and len(details.AggregateType) != len(params.NodesToRead):
            raise ServiceError(SC.BadAggregateListMismatch)
        results: list[ua.HistoryReadResult | None] = [None] * len(params.NodesToRead)
        ours: list[tuple[int, int]] = []  # (position, tag)
        theirs: list[int] = []
        stock = stock_historized(self.server)
        aspace = address_space(self.server)
        for k, rv in enumerate(params.NodesToRead):
            tag = self.tag_of(rv.NodeId)
            if tag is not None and ctx is not None and not ctx.identity.sees(_commune_of(rv.NodeId)):
                results[k] = _status(SC.BadUserAccessDenied)  # another commune's, hidden from this user
            elif tag is not None:
                ours.append((k, tag))
            elif rv.NodeId in stock:
                theirs.append(k)  # historised by asyncua's own HistoryManager
            elif rv.NodeId in aspace:
                results[k] = _status(SC.BadHistoryOperationUnsupported)
            else:
                results[k] = _status(SC.BadNodeIdUnknown)
        if theirs:
            sub = ua.HistoryReadParameters(
                HistoryReadDetails=details,
                TimestampsToReturn=params.TimestampsToReturn,
                ReleaseContinuationPoints=params.ReleaseContinuationPoints,
                NodesToRead=[params.NodesToRead[k] for k in theirs],
            )
            for k, res in zip(theirs, await previous(sub)):
                results[k] = res
        if ours:
            source = self.source  # one source for the whole request, even across a reload
            extra: dict[int, Unstored] = {}
            if isinstance(details, ua.ReadRawModifiedDetails):
                # Before the store is read: a point written in between is then in both (the
                # store's copy wins), never in neither.
                try:
                    extra = await source.unstored_points([t for _, t in ours])
                except Exception as exc:  # noqa: BLE001  the core out of reach (a front's request)
                    log.warning("opcua_history_unstored_unavailable", nodes=len(ours), error=repr(exc))
                    for k, _ in ours:  # without the newest points a raw read would be wrong
                        results[k] = _status(SC.BadDataUnavailable)
                    return results  # type: ignore[return-value]
            answers = await asyncio.to_thread(self._read_tags, source.store, params, ours, extra)
            for (k, _), res in zip(ours, answers):
                results[k] = res
            self.reads += len(ours)
        return results  # type: ignore[return-value]

    def _read_tags(self, store: HistoryReads, params, ours, extra) -> list[ua.HistoryReadResult]:
        """In a worker thread: each tag node's answer."""
        out = []
        for k, tag in ours:
            rv = params.NodesToRead[k]
            try:
                out.append(self._read_tag(store, params, params.NodesToRead[k], k, tag, extra.get(tag)))
            # RuntimeError, AttributeError: the store closed (shutdown, a front's reload).
            except (HistoryError, sqlite3.Error, RuntimeError, AttributeError, OSError) as exc:
                log.warning("opcua_history_read_failed", tag=rv.NodeId.Identifier, error=str(exc))
                out.append(_status(SC.BadDataUnavailable))
            except Exception:  # one node's failure must not fail the others
                log.exception("opcua_history_read_error", tag=rv.NodeId.Identifier)
                out.append(_status(SC.BadInternalError))
        return out

    def _read_tag(
        self, store: HistoryReads, params, rv: ua.HistoryReadValueId, k: int, tag: int, extra
    ) -> ua.HistoryReadResult:
        details = params.HistoryReadDetails
        if not self.historized[tag]:
            return _status(SC.BadHistoryOperationUnsupported)
        if params.ReleaseContinuationPoints:  # stateless: nothing is held for the client
            released = _status(SC.Good)
            released.HistoryData = ua.HistoryData()
            return released
        if params.TimestampsToReturn == ua.TimestampsToReturn.Server:
            return _status(SC.BadTimestampNotSupported)  # only source times are recorded
        if isinstance(details, ua.ReadRawModifiedDetails):
            return self._read_raw(store, details, rv, tag, extra)
        return self._read_processed(store, details, rv, tag, details.AggregateType[k])

    def _read_raw(self, store: HistoryReads, d: ua.ReadRawModifiedDetails, rv, tag: int, extra) -> ua.HistoryReadResult:
        if d.IsReadModified:
            return _status(SC.BadHistoryOperationUnsupported)  # values are never modified
        start, end = to_ns(d.StartTime), to_ns(d.EndTime)
        q = raw_query(start, end, int(d.NumValuesPerNode or 0), bool(d.ReturnBounds), self.max_values)
        if isinstance(q, int):
            return _status(q)
        key = request_key(rv.NodeId.to_string(), RAW, start, end, int(d.NumValuesPerNode or 0), bool(d.ReturnBounds))
        cursor, remaining = None, q.total
        if rv.ContinuationPoint:
            try:
                cursor, remaining = decode_cp(rv.ContinuationPoint, RAW, key)
            except ValueError:
                return _status(SC.BadContinuationPointInvalid)
        page = min(q.page, remaining) if q.total else q.page
        if page <= 0:  # nothing owed (a continuation point used twice)
            return ua.HistoryReadResult(StatusCode=StatusCode(SC.GoodNoData), HistoryData=ua.HistoryData())
        series = Series(store, tag, extra, text=self.tagdb.kind[tag] == TEXT)
        points, more = raw_page(series, q, cursor, page)
        if q.total:
            remaining -= len(points)
            more = more and remaining > 0
        result = ua.HistoryReadResult(StatusCode=StatusCode(SC.Good))
        if not points and not more:
            result.StatusCode = StatusCode(SC.GoodNoData)
        vtype = self.vtypes[tag]
        result.HistoryData = ua.HistoryData(DataValues=[_datavalue(t, v, s, x, vtype) for t, v, s, x in points])
        if more:
            result.ContinuationPoint = encode_cp(RAW, points[-1][0], remaining, key)
        return result

    def _read_processed(
        self, store: HistoryReads, d: ua.ReadProcessedDetails, rv, tag: int, agg_id: ua.NodeId
    ) -> ua.HistoryReadResult:
        ident = agg_id.Identifier
        aggregate = AGGREGATES.get(ident) if agg_id.NamespaceIndex == 0 and isinstance(ident, int) else None
        kind = int(self.tagdb.kind[tag])
        if aggregate is None or kind == TEXT:
            return _status(SC.BadAggregateNotSupported)
        if not _default_configuration(d.AggregateConfiguration):
            return _status(SC.BadAggregateConfigurationRejected)
        start, end = to_ns(d.StartTime), to_ns(d.EndTime)
        if start is None or end is None:
            return _status(SC.BadInvalidTimestampArgument)
        if start == end:
            return _status(SC.BadInvalidArgument)  # Part 13 Table 12: no intervals
        interval_ms = float(d.ProcessingInterval or 0.0)
        if not interval_ms >= 0 or math.isinf(interval_ms):
            return _status(SC.BadInvalidArgument)
        requested = int(round(interval_ms * 1e6))
        interval = requested if 0 < requested < abs(end - start) else abs(end - start)
        q = ProcessedQuery(start, end, interval, requested, aggregate, kind != ANALOG)
        key = request_key(rv.NodeId.to_string(), PROCESSED, start, end, requested, aggregate)
        first = 0
        if rv.ContinuationPoint:
            try:
                first, _ = decode_cp(rv.ContinuationPoint, PROCESSED, key)
            except ValueError:
                return _status(SC.BadContinuationPointInvalid)
        if not 0 <= first < q.count:
            return _status(SC.BadContinuationPointInvalid)
        times, values, status, partial, more = processed_page(store, tag, q, first, self.max_values)
        bits = INFO_DATA_VALUE | (INTERPOLATED if aggregate == "Interpolative" else CALCULATED)
        vtype = self.vtypes[tag]
        if aggregate == "Count":
            vtype = ua.VariantType.Int32
        elif aggregate in ("Average", "TimeAverage") or (aggregate == "Interpolative" and kind == ANALOG):
            vtype = ua.VariantType.Double
        dvs = []
        for t, v, s, p in zip(times.tolist(), values.tolist(), status.tolist(), partial.tolist()):
            if not s & _SEVERITY_BAD:
                s |= bits | (PARTIAL if p else 0)
            dvs.append(_datavalue(t, v, s, None, vtype))
        result = ua.HistoryReadResult(StatusCode=StatusCode(SC.Good))
        result.HistoryData = ua.HistoryData(DataValues=dvs)
        if more:
            result.ContinuationPoint = encode_cp(PROCESSED, first + len(dvs), 0, key)
        return result


def _default_configuration(c: ua.AggregateConfiguration | None) -> bool:
    """The store computes with the server's defaults: only Good values count (Uncertain ones
    are left out), an interval is Good when all its data is, stepped extrapolation."""
    if c is None or c.UseServerCapabilitiesDefaults:
        return True
    return (
        c.TreatUncertainAsBad
        and c.PercentDataBad in (0, 100)
        and c.PercentDataGood in (0, 100)
        and not c.UseSlopedExtrapolation
    )


def _commune_of(nodeid: ua.NodeId) -> str:
    """A tag variable's commune: the first part of its NodeId (``commune/class/device/point``)."""
    return str(nodeid.Identifier).split("/", 1)[0]


def _status(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=StatusCode(code))


_STATUS_CACHE: dict[int, ua.StatusCode] = {}


def _datavalue(t: int, v: float, s: int, text, vtype: ua.VariantType) -> ua.DataValue:
    sc = _STATUS_CACHE.get(s)
    if sc is None:
        sc = _STATUS_CACHE[s] = StatusCode(s)
    if vtype == ua.VariantType.String:
        variant = ua.Variant(text, vtype) if text is not None else ua.Variant(None, ua.VariantType.Null)
    elif v != v:  # NaN: no value (a bound not found, an empty interval, a Bad point without value)
        variant = ua.Variant(None, ua.VariantType.Null)
    elif vtype == ua.VariantType.Double:
        variant = ua.Variant(float(v), vtype)
    elif vtype == ua.VariantType.Int32:
        variant = ua.Variant(int(round(v)), vtype)
    elif vtype == ua.VariantType.Boolean:
        variant = ua.Variant(bool(v), vtype)
    else:
        variant = ua.Variant(float(v), ua.VariantType.Double)
    return DataValue(variant, StatusCode=sc, SourceTimestamp=from_ns(t))
