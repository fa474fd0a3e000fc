"""Per-tag historian compression, vectorised over the TagDB's change batches.

A :class:`Compressor` turns change batches (``ids, values, status, source_time``) into the
points worth storing, a :class:`StoredBatch`. Per tag, by kind:

**Analog points: deadband, then swinging-door compression** (E. H. Bristol, "Swinging Door
Trending: Adaptive Trend Recording?", ISA National Conference Proceedings, 1990, pp. 749-754;
the same algorithm as OSIsoft PI's "compression", with the deadband playing PI's "exception"
part). Per tag the state is the last *archived* (stored) point A, the *snapshot* S (the last
received point, held and not stored yet) and two slopes, ``lo`` and ``hi``. A new point P at
``dt`` after A narrows the door::

    lo = max(lo, (P.v - A.v - E) / dt)      # the lower door, hinged at A.v - E
    hi = min(hi, (P.v - A.v + E) / dt)      # the upper door, hinged at A.v + E

While ``lo <= hi`` a line from A (slope between lo and hi) passes within E of every point
received since A: P becomes the new snapshot and nothing is stored. When ``lo > hi`` the doors
have closed: the snapshot S (the last point that was still inside) is archived, A = S, and the
door restarts from S with P alone (one point never closes a door, so P becomes the snapshot).
Hence a ramp stores its first point (and its last at :meth:`Compressor.flush`), noise within
E stores nothing after the first point, and a step stores the point before the step and the
point after. As in the standard algorithm, the line between two archived points stays within
E of the discarded points in the usual case and within 2E at worst (the door guarantees *a*
line within E from A; the archived line ends at S instead, at most E away at S).
E is the tag's absolute deviation (engineering units: the lead computes it from a percentage
of the tag's span). E = 0 is lossless: a point is dropped only when it lies exactly on the
line through its neighbours (flat runs, exact ramps), so linear interpolation of the stored
points gives back every received value beyond the deadband.

The deadband (absolute) quantises: a value within the deadband of the snapshot is taken as
the snapshot's value (at its own time) before it enters the door. It is not dropped: a flat
run followed by a step must still store the point just before the step.

**Discrete and text points** are stored on every change of value (or text) or status.

**For every kind**, these *force* a store and restart the door from the new point:

- the first point of a tag;
- a change of status, or of NaN-ness (bad quality must be in the history): the held
  snapshot (the last value under the old status) is stored, then the new point;
- the heartbeat: when ``max_interval_ns`` (per tag, 0 = none) has passed since the tag's last
  stored point, the door closes as if the new point were outside it (the held snapshot is
  stored, or the new point when nothing is held): one stored point per beat at most.
  :meth:`Compressor.heartbeat` stores the current value of tags that receive nothing (the
  TagDB sends only changes).

**Times** are made strictly increasing per tag: a point not later than the tag's previous one
(a status change published with the last report's source time, a device clock stepping back)
is moved to 1 ns after it. The history then has one point per (tag, time), in order, and a
door never divides by zero.

**Vectorisation.** A batch is processed in *rounds*: round k holds the k-th occurrence of each
tag in the batch, so within a round every tag is unique and the state is gathered and
scattered with numpy fancy indexing. TagDB batches hold each tag once: one round, and a
duplicate check that costs one scatter and one gather. A tag repeated r times costs r rounds.
Text points (rare: diagnostics' ``last_error``) go through a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scada.tagdb import ANALOG, TEXT

_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F = np.zeros(0, np.float64)
_EMPTY_S = np.zeros(0, np.uint32)


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Points to store: parallel arrays, each tag's points in time order.

    ``ids`` are TagDB tag ids (int64), ``values`` float64 (NaN for text points and for bad
    values without one), ``status`` OPC UA StatusCodes (uint32), ``times`` int64 ns UTC.
    ``texts`` is None unless the batch holds text points; then it is parallel to ``ids``
    (None for the other rows).
    """

    ids: np.ndarray
    values: np.ndarray
    status: np.ndarray
    times: np.ndarray
    texts: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.values) != n or len(self.status) != n or len(self.times) != n:
            raise ValueError("StoredBatch: ids, values, status and times must have the same length")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError("StoredBatch: texts must be parallel to ids")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> StoredBatch:
        return cls(_EMPTY_I, _EMPTY_F, _EMPTY_S, _EMPTY_I)

    @classmethod
    def concat(cls, batches: Sequence[StoredBatch]) -> StoredBatch:
        """One batch of several, in order (each tag's points stay in time order if they were)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        texts = None
        if any(b.texts is not None for b in batches):
            texts = tuple(t for b in batches for t in (b.texts if b.texts is not None else (None,) * len(b)))
        return cls(
            np.concatenate([b.ids for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.status for b in batches]),
            np.concatenate([b.times for b in batches]),
            texts,
        )


def deviation_from_percent(percent: np.ndarray | float, span: np.ndarray | float) -> np.ndarray:
    """Absolute swinging-door deviation from a percentage of the tag's span (max - min).

    A negative percent stays negative (not historised); a NaN span (no range) gives NaN,
    which the caller must replace (Compressor refuses NaN).
    """
    percent = np.asarray(percent, np.float64)
    return np.where(percent < 0, percent, percent / 100.0 * np.abs(np.asarray(span, np.float64)))


class _Out:
    """Stored points collected during one compress call, as lists of array chunks."""

    __slots__ = ("ids", "values", "status", "times", "texts")

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.status: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.texts: list[str | None] | None = None  # set when text rows were stored

    def add(self, ids, values, status, times) -> None:
        if len(ids):
            self.ids.append(ids)
            self.values.append(values)
            self.status.append(status)
            self.times.append(times)

    def batch(self, text_rows: tuple[list, list, list, list, list] | None = None) -> StoredBatch:
        texts = None
        if text_rows is not None and text_rows[0]:
            n_num = sum(len(a) for a in self.ids)
            ti, tv, ts, tt, tx = text_rows
            self.add(
                np.asarray(ti, np.int64),
                np.asarray(tv, np.float64),
                np.asarray(ts, np.uint32),
                np.asarray(tt, np.int64),
            )
            texts = (None,) * n_num + tuple(tx)
        if not self.ids:
            return StoredBatch.empty()
        return StoredBatch(
            np.concatenate(self.ids),
            np.concatenate(self.values).astype(np.float64, copy=False),
            np.concatenate(self.status).astype(np.uint32, copy=False),
            np.concatenate(self.times).astype(np.int64, copy=False),
            texts,
        )


class Compressor:
    """Deadband + swinging-door compression per tag, over whole change batches (see module doc).

    ``deviation`` (absolute, engineering units) < 0 means the tag is not historised; its rows
    are ignored. ``deadband`` is absolute. ``kind`` holds scada.tagdb ANALOG/DISCRETE/TEXT.
    ``max_interval_ns`` is the heartbeat per tag (0: none). Scalars apply to every tag.
    Not thread-safe: one compressor lives with its consumer.
    """

    def __init__(
        self,
        n_tags: int,
        deviation: np.ndarray | float,
        deadband: np.ndarray | float,
        kind: np.ndarray | int,
        max_interval_ns: np.ndarray | int = 0,
    ) -> None:
        def per_tag(a, dtype, what):
            try:
                return np.broadcast_to(np.asarray(a, dtype), (n_tags,)).copy()
            except ValueError:
                raise ValueError(f"{what} must be a scalar or have one entry per tag ({n_tags})") from None

        dev = per_tag(deviation, np.float64, "deviation")
        db = per_tag(deadband, np.float64, "deadband")
        if np.isnan(dev).any() or np.isnan(db).any() or (db < 0).any():
            raise ValueError("deviation must not be NaN, deadband must be >= 0")
        self.n_tags = n_tags
        self.enabled = dev >= 0
        self.deviation = np.where(self.enabled, dev, 0.0)
        self.deadband = db
        self.kind = per_tag(kind, np.uint8, "kind")
        self.max_interval = per_tag(max_interval_ns, np.int64, "max_interval_ns")
        if (self.max_interval < 0).any():
            raise ValueError("max_interval_ns must be >= 0")
        # A: the last stored point of each tag.
        self._has = np.zeros(n_tags, bool)
        self._av = np.full(n_tags, np.nan)
        self._at = np.zeros(n_tags, np.int64)
        self._as = np.zeros(n_tags, np.uint32)
        # S: the snapshot, received and held (not stored yet); analog tags only.
        self._held = np.zeros(n_tags, bool)
        self._hv = np.full(n_tags, np.nan)
        self._ht = np.zeros(n_tags, np.int64)
        self._hs = np.zeros(n_tags, np.uint32)
        # The door, as slopes in engineering units per second from A.
        self._lo = np.full(n_tags, -np.inf)
        self._hi = np.full(n_tags, np.inf)
        self._text: dict[int, str | None] = {}  # last stored text of text tags
        self._slot = np.zeros(n_tags, np.int64)  # scratch for the duplicate check
        self.received = 0  # rows of historised tags offered
        self.stored = 0  # points returned to store

    # -- the hot path ----------------------------------------------------------------------

    def compress(self, batch) -> StoredBatch:
        """The points of ``batch`` to store (a ChangeBatch or anything with ids, values,
        status, source_time and optionally texts). Updates the per-tag state."""
        ids = np.asarray(batch.ids, np.int64)
        n = ids.size
        if n == 0:
            return StoredBatch.empty()
        values = np.asarray(batch.values, np.float64)
        status = np.broadcast_to(np.asarray(batch.status, np.uint32), (n,))
        times = np.broadcast_to(np.asarray(batch.source_time, np.int64), (n,))
        texts = getattr(batch, "texts", None)
        keep = self.enabled[ids]
        if not keep.all():
            pos = np.flatnonzero(keep)
            ids, values, status, times = ids[pos], values[pos], status[pos], times[pos]
            if texts is not None:
                texts = tuple(texts[i] for i in pos.tolist())
            n = ids.size
        self.received += n
        out = _Out()
        text_rows = None
        is_text = self.kind[ids] == TEXT
        if is_text.any():
            tpos = np.flatnonzero(is_text)
            text_rows = self._texts_loop(ids, status, times, texts, tpos)
            num = np.flatnonzero(~is_text)
            ids, values, status, times = ids[num], values[num], status[num], times[num]
        if ids.size:
            for rows in self._rounds(ids):
                if rows is None:
                    self._round(ids, values, status, times, out)
                else:
                    self._round(ids[rows], values[rows], status[rows], times[rows], out)
        result = out.batch(text_rows)
        self.stored += len(result)
        return result

    def _rounds(self, ids: np.ndarray) -> list[np.ndarray | None]:
        """Row positions per round (k-th occurrences of each tag), batch order within a round.

        ``[None]`` (the whole batch, one round) when no tag repeats: the common case.
        """
        n = ids.size
        pos = np.arange(n)
        self._slot[ids] = pos
        if (self._slot[ids] == pos).all():
            return [None]
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        first = np.ones(n, bool)
        first[1:] = sid[1:] != sid[:-1]
        starts = np.flatnonzero(first)
        rank = np.empty(n, np.int64)
        rank[order] = pos - np.repeat(starts, np.diff(np.append(starts, n)))
        by_rank = np.argsort(rank, kind="stable")
        return [*np.split(by_rank, np.cumsum(np.bincount(rank))[:-1])]

    def _round(self, ids, v, s, t, out: _Out) -> None:
        """One round: every tag in ``ids`` is unique."""
        has = self._has[ids]
        held = self._held[ids]
        av, at, as_ = self._av[ids], self._at[ids], self._as[ids]
        hv, ht, hs = self._hv[ids], self._ht[ids], self._hs[ids]
        last_t = np.where(held, ht, at)
        t = np.where(has & (t <= last_t), last_t + 1, t)
        # The current value of the tag: the snapshot when one is held, else the archive.
        cv = np.where(held, hv, av)
        cs = np.where(held, hs, as_)
        vnan = np.isnan(v)
        cnan = np.isnan(cv)
        maxint = self.max_interval[ids]
        beat = (maxint > 0) & (t - at >= maxint)  # heartbeat due: nothing stored for that long
        # A heartbeat closes the door when a snapshot is held (one point per beat), else stores the row.
        force = ~has | (s != cs) | (vnan != cnan) | (beat & ~held)
        analog = self.kind[ids] == ANALOG
        # Discrete: a change of value (NaN == NaN here: NaN-ness changes are forced already).
        # A change of status or NaN-ness is not a heartbeat: it stores the held snapshot too.
        row_store = force | (~analog & (v != cv) & ~(vnan & cnan))
        held_store = force & held  # the last value under the old status

        door = np.flatnonzero(analog & ~force & ~vnan)  # both NaN and same status: nothing new
        if door.size:
            di = ids[door]
            dv = v[door]
            dcv = cv[door]
            dv = np.where(np.abs(dv - dcv) <= self.deadband[di], dcv, dv)
            e = self.deviation[di]
            dav, dat, dt_ = av[door], at[door], t[door]
            span = (dt_ - dat) * 1e-9
            rise = dv - dav
            lo = np.maximum(self._lo[di], (rise - e) / span)
            hi = np.minimum(self._hi[di], (rise + e) / span)
            # lo > hi only with a snapshot held: the door is (-inf, inf) after a store.
            closed = (lo > hi) | beat[door]
            if closed.any():
                c = np.flatnonzero(closed)
                ci = di[c]
                chv, cht, chs = hv[door][c], ht[door][c], hs[door][c]
                out.add(ci, chv, chs, cht)
                self._av[ci], self._at[ci], self._as[ci] = chv, cht, chs
                span_c = (dt_[c] - cht) * 1e-9
                rise_c = dv[c] - chv
                lo[c] = (rise_c - e[c]) / span_c
                hi[c] = (rise_c + e[c]) / span_c
            self._lo[di], self._hi[di] = lo, hi
            self._held[di] = True
            self._hv[di], self._ht[di], self._hs[di] = dv, dt_, s[door]

        if held_store.any():
            h = np.flatnonzero(held_store)
            out.add(ids[h], hv[h], hs[h], ht[h])
        if row_store.any():
            r = np.flatnonzero(row_store)
            ri = ids[r]
            out.add(ri, v[r], s[r], t[r])
            self._has[ri] = True
            self._av[ri], self._at[ri], self._as[ri] = v[r], t[r], s[r]
            self._held[ri] = False
            self._lo[ri] = -np.inf
            self._hi[ri] = np.inf

    def _texts_loop(
        self, ids: np.ndarray, status: np.ndarray, times: np.ndarray, texts: np.ndarray | None, tpos: np.ndarray
    ) -> tuple[list[int], list[float], list[int], list[int], list[str | None]]:
        """Text rows, in batch order: stored on a change of text or status (and the heartbeat)."""
        out_i: list[int] = []
        out_v: list[float] = []
        out_s: list[int] = []
        out_t: list[int] = []
        out_x: list[str | None] = []
        for p in tpos.tolist():
            i = int(ids[p])
            s = int(status[p])
            t = int(times[p])
            txt = texts[p] if texts is not None else None
            has = bool(self._has[i])
            at = int(self._at[i])
            if has and t <= at:
                t = at + 1
            maxint = int(self.max_interval[i])
            if not has or s != int(self._as[i]) or txt != self._text.get(i) or (maxint > 0 and t - at >= maxint):
                out_i.append(i)
                out_v.append(np.nan)
                out_s.append(s)
                out_t.append(t)
                out_x.append(txt)
                self._has[i] = True
                self._at[i], self._as[i] = t, s
                self._text[i] = txt
        return out_i, out_v, out_s, out_t, out_x

    # -- around the hot path ---------------------------------------------------------------

    def pending(self, ids: np.ndarray | None = None) -> StoredBatch:
        """The held snapshots (received, not stored yet), without storing them.

        For history reads of the latest values: append them to what the store returns.
        """
        if ids is None:
            held = np.flatnonzero(self._held)
        else:
            ids = np.asarray(ids, np.int64)
            held = ids[self._held[ids]]
        return StoredBatch(held.astype(np.int64), self._hv[held], self._hs[held], self._ht[held])

    def flush(self, now_ns: int | None = None) -> StoredBatch:
        """Store every held snapshot (at shutdown), then the heartbeat when ``now_ns`` is given."""
        held = np.flatnonzero(self._held)
        out = StoredBatch(held.astype(np.int64), self._hv[held].copy(), self._hs[held].copy(), self._ht[held].copy())
        self._archive_held(held)
        self.stored += len(out)
        if now_ns is None:
            return out
        return StoredBatch.concat([out, self.heartbeat(now_ns)])

    def heartbeat(self, now_ns: int) -> StoredBatch:
        """For tags with a heartbeat whose last stored point is at least that old: store the
        held snapshot if any, then the current value again at ``now_ns`` if still due.

        Call it periodically (every few seconds is plenty): the TagDB sends nothing for a
        tag that does not change.
        """
        now = int(now_ns)
        due = np.flatnonzero(self._has & (self.max_interval > 0) & (now - self._at >= self.max_interval))
        if due.size == 0:
            return StoredBatch.empty()
        h = due[self._held[due]]
        first = StoredBatch(h.astype(np.int64), self._hv[h].copy(), self._hs[h].copy(), self._ht[h].copy())
        self._archive_held(h)
        due = due[(now - self._at[due] >= self.max_interval[due]) & (now > self._at[due])]
        texts = None
        if due.size and (self.kind[due] == TEXT).any():
            texts = tuple(self._text.get(i) for i in due.tolist())
        repeat = StoredBatch(
            due.astype(np.int64), self._av[due].copy(), self._as[due].copy(), np.full(due.size, now, np.int64), texts
        )
        self._at[due] = now
        self._lo[due] = -np.inf
        self._hi[due] = np.inf
        result = StoredBatch.concat([first, repeat])
        self.stored += len(result)
        return result

    def _archive_held(self, rows: np.ndarray) -> None:
        self._av[rows], self._at[rows], self._as[rows] = self._hv[rows], self._ht[rows], self._hs[rows]
        self._held[rows] = False
        self._lo[rows] = -np.inf
        self._hi[rows] = np.inf

    def prime(
        self,
        ids: np.ndarray,
        values: np.ndarray,
        status: np.ndarray,
        times: np.ndarray,
        texts: Sequence[str | None] | None = None,
    ) -> None:
        """Start from the last stored points (e.g. :meth:`HistoryStore.last_points` at start-up).

        The first change after a restart then continues the history instead of being stored
        unconditionally, and times stay increasing across the restart.
        """
        ids = np.asarray(ids, np.int64)
        self._has[ids] = True
        self._av[ids] = np.asarray(values, np.float64)
        self._as[ids] = np.asarray(status, np.uint32)
        self._at[ids] = np.asarray(times, np.int64)
        self._held[ids] = False
        self._lo[ids] = -np.inf
        self._hi[ids] = np.inf
        if texts is not None:
            for i, txt in zip(ids.tolist(), texts):
                if self.kind[i] == TEXT:
                    self._text[i] = txt
