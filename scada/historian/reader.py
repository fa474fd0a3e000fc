"""Reading the history store: raw values in pages, bounds, last points, processed values.

Reads combine the merged tables with the rows not merged yet (the writer's memory, or the
``staging`` table for a reader in another process), so that what was written is readable
at once. The aggregates themselves are pure functions in :mod:`scada.historian.aggregates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scada.historian.aggregates import (
    AGGREGATES,
    ROLLUP_AGGREGATES,
    from_partials,
    interpolate,
    partials,
    point_partials,
    time_average,
)
from scada.historian.merge import Part, concat_parts, empty_part, merge_parts, part_from_rows
from scada.historian.schema import ROLLUPS, StoreFile, TagIds

Point = tuple[int, float, int]  # time, value, status


@dataclass(frozen=True, slots=True)
class RawHistory:
    """Raw values of one tag in time order; ``texts`` only when the tag has text points.

    ``next_after`` is None when the range is complete; otherwise pass it as ``after`` to get
    the next page (the OPC UA continuation point).
    """

    times: np.ndarray
    values: np.ndarray
    status: np.ndarray
    texts: tuple[str | None, ...] | None = None
    next_after: int | None = None

    def __len__(self) -> int:
        return len(self.times)


@dataclass(frozen=True, slots=True)
class ProcessedHistory:
    """One value per interval: ``times`` are the interval starts. ``source`` says what was read
    ('rollup_hour', 'rollup_minute' or 'raw')."""

    times: np.ndarray
    values: np.ndarray
    status: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.times)


class PendingRows(Protocol):
    """Rows written and not merged yet, as a read sees them."""

    def any(self) -> bool:
        """False when there surely are none (the read skips them)."""
        ...

    def rows_of(self, sid: int, lo: int, hi: int) -> Part:
        """One tag's pending rows with lo <= time < hi (numeric, then text; not sorted)."""
        ...


class StagingRows:
    """The pending rows of a writer in another process: its ``staging`` table.

    ``staging`` has no index on tag (the writer's appends must stay cheap), so a look-up scans
    it: 25 ms per 100,000 staged rows here. So each tag's staged rows, once scanned, are kept
    for as long as nothing is committed to the file: ``PRAGMA data_version``, read inside the
    caller's snapshot, changes with every commit of another connection. The calls of one
    HistoryRead (pages, bounds, windows going back) then scan once per tag, not once per call,
    and every answer is that of the snapshot it was read in. Calls hold the file's lock.
    """

    def __init__(self, file: StoreFile) -> None:
        self.file = file
        self._version: int | None = None  # data_version of the rows kept
        self._rows: dict[int, Part] = {}  # store id -> all its staged rows (numeric, then text)

    def any(self) -> bool:
        """Always True: another process may have written since."""
        return True

    def rows_of(self, sid: int, lo: int, hi: int) -> Part:
        """One tag's staged rows with lo <= time < hi: numeric rows, then text rows."""
        db = self.file.db
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._rows.clear()
            self._version = version
        part = self._rows.get(sid)
        if part is None:
            rows = db.execute("SELECT time_ns, value, status, text FROM staging WHERE tag = ?", (sid,)).fetchall()
            num = part_from_rows([r[:3] for r in rows if r[3] is None])
            txt = part_from_rows([(r[0], r[3], r[2]) for r in rows if r[3] is not None], text=True)
            part = self._rows[sid] = concat_parts(num, txt)
        t, v, s, texts = part
        m = np.flatnonzero((t >= lo) & (t < hi))
        return t[m], v[m], s[m], None if texts is None else tuple(texts[i] for i in m.tolist())


class HistoryReader:
    """Reads of one store file (see :mod:`scada.historian.store` for their definitions)."""

    def __init__(self, file: StoreFile, tags: TagIds, pending: PendingRows) -> None:
        self.file = file
        self.tags = tags
        self.pending = pending

    def _points(self, sid: int, lo: int, hi: int, limit: int | None = None) -> Part:
        """Stored points of one tag with lo <= time < hi, merged tables + pending, in time order.

        With ``limit``, at most limit + 1 (to know whether more follow). Returns t, v, s, texts.
        """
        db = self.file.db
        lim = "" if limit is None else f" LIMIT {int(limit) + 1}"
        num = db.execute(
            f"SELECT time_ns, value, status FROM raw WHERE tag = ? AND time_ns >= ? "
            f"AND time_ns < ? ORDER BY time_ns{lim}",
            (sid, lo, hi),
        ).fetchall()
        txt = db.execute(
            f"SELECT time_ns, text, status FROM raw_text WHERE tag = ? AND time_ns >= ? "
            f"AND time_ns < ? ORDER BY time_ns{lim}",
            (sid, lo, hi),
        ).fetchall()
        parts = [part_from_rows(num)]
        if txt:
            parts.append(part_from_rows(txt, text=True))
        if self.pending.any():
            parts.append(self.pending.rows_of(sid, lo, hi))
        # Pending rows are later writes: the merge will replace a merged point of the same time.
        t, v, s, texts = merge_parts(parts, keep="last")
        if limit is not None and len(t) > limit + 1:
            t, v, s = t[: limit + 1], v[: limit + 1], s[: limit + 1]
            texts = None if texts is None else texts[: limit + 1]
        return t, v, s, texts

    def read_raw(
        self, tag: int | str, start_ns: int, end_ns: int, limit: int | None = None, after: int | None = None
    ) -> RawHistory:
        """Stored values of one tag with start <= time < end, in time order.

        ``limit`` (None or 0: all) caps the values returned; when more remain, ``next_after``
        is the last time returned: call again with ``after=next_after`` for the next page.
        """
        lo = int(start_ns) if after is None else max(int(start_ns), int(after) + 1)
        limit = limit or None
        with self.file.lock, self.file.snapshot():
            sid = self.tags.store_id(tag)
            t, v, s, texts = self._points(sid, lo, int(end_ns), limit)
        next_after = None
        if limit is not None and len(t) > limit:
            t, v, s = t[:limit], v[:limit], s[:limit]
            texts = None if texts is None else texts[:limit]
            next_after = int(t[-1])
        return RawHistory(t, v, s, texts, next_after)

    def bound_before(self, tag: int | str, time_ns: int) -> Point | None:
        """The last stored point at or before ``time_ns``: (time, value, status) or None."""
        with self.file.lock, self.file.snapshot():
            return self._bound(self.tags.store_id(tag), int(time_ns), before=True)

    def bound_after(self, tag: int | str, time_ns: int) -> Point | None:
        """The first stored point at or after ``time_ns``: (time, value, status) or None."""
        with self.file.lock, self.file.snapshot():
            return self._bound(self.tags.store_id(tag), int(time_ns), before=False)

    def _bound(self, sid: int, t: int, before: bool) -> Point | None:
        if before:
            where, order, lo, hi = "time_ns <= ?", "DESC", -(2**63), t + 1
        else:
            where, order, lo, hi = "time_ns >= ?", "ASC", t, 2**63 - 1
        candidates = []
        for sql in (
            f"SELECT time_ns, value, status FROM raw WHERE tag = ? AND {where} ORDER BY time_ns {order} LIMIT 1",
            f"SELECT time_ns, NULL, status FROM raw_text WHERE tag = ? AND {where} ORDER BY time_ns {order} LIMIT 1",
        ):
            row = self.file.db.execute(sql, (sid, t)).fetchone()
            if row is not None:
                candidates.append((int(row[0]), math.nan if row[1] is None else float(row[1]), int(row[2])))
        if self.pending.any():
            pt, pv, ps, _ = self.pending.rows_of(sid, lo, hi)
            if len(pt):
                k = int(np.argmax(pt)) if before else int(np.argmin(pt))
                candidates.append((int(pt[k]), float(pv[k]), int(ps[k])))
        if not candidates:
            return None
        # The latest (or earliest); on a tie the last candidate, pending, which replaces the
        # others (the rule of merge_parts(keep="last") in _points).
        best = candidates[0]
        for c in candidates[1:]:
            if c[0] == best[0] or (c[0] > best[0]) == before:
                best = c
        return best

    def last_points(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each tag's last stored point: (ids, values, status, times) of the tags that have one.

        ``ids`` are TagDB ids; one indexed query per tag (~10 µs each), none when nothing is stored.
        """
        out_i, out_v, out_s, out_t = [], [], [], []
        with self.file.lock, self.file.snapshot():
            # A store with no point at all (a new city): no query per tag (28 s of a 1M-tag start).
            db = self.file.db
            stored = any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in ("raw", "raw_text"))
            for i in ids.tolist() if stored or self.pending.any() else ():
                b = self._bound(self.tags.store_id(i), 2**63 - 2, before=True)
                if b is not None:
                    out_i.append(i)
                    out_t.append(b[0])
                    out_v.append(b[1])
                    out_s.append(b[2])
        return (
            np.array(out_i, np.int64),
            np.array(out_v, np.float64),
            np.array(out_s, np.uint32),
            np.array(out_t, np.int64),
        )

    def read_processed(
        self, tag: int | str, start_ns: int, end_ns: int, interval_ns: int, aggregate: str, stepped: bool = False
    ) -> ProcessedHistory:
        """One value per interval of ``interval_ns`` from ``start_ns`` (the last one may be
        shorter, ending at ``end_ns``). ``aggregate``: one of :data:`AGGREGATES`
        (case-insensitive); see :mod:`scada.historian.store` for their definitions."""
        names = {a.lower(): a for a in AGGREGATES}
        agg = names.get(str(aggregate).lower())
        if agg is None:
            raise ValueError(f"unknown aggregate {aggregate!r}: one of {', '.join(AGGREGATES)}")
        start, end, interval = int(start_ns), int(end_ns), int(interval_ns)
        if interval <= 0 or end <= start:
            raise ValueError("read_processed needs interval_ns > 0 and end_ns > start_ns")
        k = -(-(end - start) // interval)
        edges = start + np.arange(k, dtype=np.int64) * interval
        with self.file.lock, self.file.snapshot():
            sid = self.tags.store_id(tag)
            if agg in ROLLUP_AGGREGATES:
                return self._from_partials(sid, start, end, interval, edges, agg)
            t, v, s = self._points_with_bounds(sid, start, end)
        if agg == "Interpolative":
            values, status = interpolate(t, v, s, edges, stepped)
        else:
            values, status = time_average(t, v, s, edges, end, stepped)
        return ProcessedHistory(edges, values, status, "raw")

    def _points_with_bounds(self, sid: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, v, s, _ = self._points(sid, start, end)
        before = self._bound(sid, start - 1, before=True) if not (len(t) and t[0] == start) else None
        after = self._bound(sid, end, before=False)
        pre = [before] if before is not None else []
        post = [after] if after is not None else []
        if pre or post:
            t = np.concatenate([[p[0] for p in pre], t, [p[0] for p in post]]).astype(np.int64)
            v = np.concatenate([[p[1] for p in pre], v, [p[1] for p in post]]).astype(np.float64)
            s = np.concatenate([[p[2] for p in pre], s, [p[2] for p in post]]).astype(np.uint32)
        return t, v, s

    @staticmethod
    def _rollup_table(start: int, end: int, interval: int) -> tuple[str, int] | None:
        for table, width in reversed(ROLLUPS):  # the coarsest that fits
            if interval % width == 0 and start % width == 0 and end % width == 0:
                return table, width
        return None

    def _from_partials(
        self, sid: int, start: int, end: int, interval: int, edges: np.ndarray, agg: str
    ) -> ProcessedHistory:
        chosen = self._rollup_table(start, end, interval)
        if chosen is not None:
            table, width = chosen
            # Keyed (bucket, tag): one probe per bucket of the range (CROSS JOIN keeps the
            # generated buckets as the outer loop), never a scan of every tag's buckets.
            rows = self.file.db.execute(
                f"WITH RECURSIVE b(x) AS (SELECT ? UNION ALL SELECT x + ? FROM b WHERE x + ? < ?) "
                f"SELECT r.bucket_ns, r.n, r.vsum, r.vmin, r.vmax, r.nbad FROM b CROSS JOIN {table} r "
                f"ON r.bucket_ns = b.x AND r.tag = ?",
                (start, width, width, end, sid),
            ).fetchall()
            if rows:
                b, n, vsum, vmin, vmax, nbad = (
                    np.array(c, np.float64 if 2 <= j <= 4 else np.int64) for j, c in enumerate(zip(*rows))
                )
            else:
                b = n = nbad = np.zeros(0, np.int64)
                vsum = vmin = vmax = np.zeros(0)
            pt, pv, ps, _ = self.pending.rows_of(sid, start, end) if self.pending.any() else empty_part()
            if len(pt):
                o = np.argsort(pt, kind="stable")
                _, pb, pn, psum, pmin, pmax, pbad = partials(np.zeros(len(pt), np.int64), pt[o], pv[o], ps[o], width)
                b, n, vsum = np.concatenate([b, pb]), np.concatenate([n, pn]), np.concatenate([vsum, psum])
                vmin, vmax = np.concatenate([vmin, pmin]), np.concatenate([vmax, pmax])
                nbad = np.concatenate([nbad, pbad])
            key = (b - start) // interval
            source = table
        else:
            t, v, s, _ = self._points(sid, start, end)
            key = (t - start) // interval
            n, nbad, vsum, vmin, vmax = point_partials(v, s)
            source = "raw"
        values, status = from_partials(key, n, nbad, vsum, vmin, vmax, len(edges), agg)
        return ProcessedHistory(edges, values, status, source)
