"""Writing the history store: staging, merges into the raw and rollup tables, retention.

Why rows land in ``staging`` first and are merged later is in :mod:`scada.historian.store`.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from scada.historian.aggregates import partials
from scada.historian.compress import StoredBatch
from scada.historian.merge import Part, concat_parts, part_from_rows
from scada.historian.schema import DAY, HOUR, MINUTE, ROLLUPS, HistoryError, StoreFile, TagIds

_UPSERT = """INSERT INTO {table} (tag, bucket_ns, n, vsum, vmin, vmax, nbad) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket_ns, tag) DO UPDATE SET
    n = n + excluded.n,
    vsum = vsum + excluded.vsum,
    vmin = CASE WHEN vmin IS NULL OR excluded.vmin < vmin THEN excluded.vmin ELSE vmin END,
    vmax = CASE WHEN vmax IS NULL OR excluded.vmax > vmax THEN excluded.vmax ELSE vmax END,
    nbad = nbad + excluded.nbad"""

Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # store id, time, value, status
TextRow = tuple[int, int, str | None, int]  # store id, time, text, status


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a tag class's history is kept, in days (``math.inf``: for ever)."""

    raw_days: float = 30.0
    minute_days: float = 400.0
    hour_days: float = 3650.0

    def __post_init__(self) -> None:
        for name in ("raw_days", "minute_days", "hour_days"):
            days = getattr(self, name)
            if not days > 0:  # also refuses NaN
                raise ValueError(f"retention {name} must be > 0 days (got {days!r})")


def parse_retention(retention: Mapping[str, Retention | float] | None) -> dict[str, Retention]:
    """Class name -> :class:`Retention` (or raw days) with the default under '*'."""
    out = {"*": Retention()}
    for cls, r in (retention or {}).items():
        if isinstance(r, Retention):
            out[cls] = r
        else:
            # Raw days only: the rollups keep at least the defaults, and never less than raw.
            d = Retention()
            out[cls] = Retention(float(r), max(float(r), d.minute_days), max(float(r), d.hour_days))
    return out


def cutoffs(r: Retention, now: int) -> Iterator[tuple[str, str, int]]:
    """(table, time column, delete below) for one retention; a rollup bucket is deleted once
    its end has passed the cutoff."""
    for table, col, days, width in (
        ("raw", "time_ns", r.raw_days, 0),
        ("raw_text", "time_ns", r.raw_days, 0),
        ("rollup_minute", "bucket_ns", r.minute_days, MINUTE),
        ("rollup_hour", "bucket_ns", r.hour_days, HOUR),
    ):
        if not math.isinf(days):
            cutoff = now - int(days * DAY)
            yield table, col, (cutoff - width + 1) if width else cutoff


class Pending:
    """Rows written to ``staging`` and not merged yet, kept in memory for the writer's reads."""

    def __init__(self) -> None:
        self.numeric: list[Columns] = []
        self.text: list[TextRow] = []
        self.rows = 0
        self.since = 0.0  # monotonic time of the oldest pending row
        self._cat: Columns | None = None

    def add(self, numeric: Columns | None, text: list[TextRow], rows: int) -> None:
        """Rows just committed to ``staging``."""
        if not self.rows:
            self.since = time.monotonic()
        if numeric is not None:
            self.numeric.append(numeric)
        self.text.extend(text)
        self.rows += rows
        self._cat = None

    def clear(self) -> None:
        """The rows were merged."""
        self.numeric.clear()
        self.text.clear()
        self._cat = None
        self.rows = 0

    def arrays(self) -> Columns:
        """All pending numeric rows as columns, in write order (concatenated once per change)."""
        if self._cat is None:
            if self.numeric:
                sid, t, v, s = (np.concatenate([p[k] for p in self.numeric]) for k in range(4))
                self._cat = (sid, t, v, s)
            else:
                e = np.zeros(0, np.int64)
                self._cat = (e, e, np.zeros(0), np.zeros(0, np.uint32))
        return self._cat

    def any(self) -> bool:
        """Whether a read must look at pending rows."""
        return self.rows > 0

    def rows_of(self, sid: int, lo: int, hi: int) -> Part:
        """Pending rows of one tag with lo <= time < hi: numeric rows, then text rows."""
        psid, pt, pv, ps = self.arrays()
        m = np.flatnonzero((psid == sid) & (pt >= lo) & (pt < hi))
        txt = [(t, x, s) for i, t, x, s in self.text if i == sid and lo <= t < hi]
        return concat_parts((pt[m], pv[m], ps[m], None), part_from_rows(txt, text=True))


class HistoryWriter:
    """Writes of one store file: append to ``staging``, merge, prune. Calls hold the file's lock."""

    def __init__(
        self,
        file: StoreFile,
        tags: TagIds,
        retention: dict[str, Retention],
        merge_rows: int,
        merge_seconds: float,
    ) -> None:
        self.file, self.tags, self.retention = file, tags, retention
        self.merge_rows, self.merge_seconds = merge_rows, merge_seconds
        self.pending = Pending()
        self.merge_error: str | None = None  # why the last merge failed (rows kept in staging), or None

    def load_staging(self) -> None:
        """Rows written but not merged when the last writer stopped (or crashed)."""
        rows = self.file.db.execute("SELECT tag, time_ns, value, status, text FROM staging ORDER BY rowid").fetchall()
        if not rows:
            return
        num = [r for r in rows if r[4] is None]
        numeric = None
        if num:
            sid, t, v, s, _ = zip(*num)
            numeric = (np.array(sid, np.int64), np.array(t, np.int64), np.array(v, np.float64), np.array(s, np.uint32))
        self.pending.add(numeric, [(r[0], r[1], r[4], r[3]) for r in rows if r[4] is not None], len(rows))

    def write(self, batch: StoredBatch) -> int:
        """Append a batch (one transaction), merging when enough is pending. Returns its rows."""
        n = len(batch)
        if n == 0:
            return 0
        self.file.check_writable()
        sid = self.tags.to_store(batch.ids)
        t = np.array(batch.times, np.int64)
        v = np.array(batch.values, np.float64)
        s = np.array(batch.status, np.uint32)
        text_rows: list[TextRow] = []
        if batch.texts is not None:
            texts = batch.texts
            is_text = np.fromiter((x is not None for x in texts), bool, n)
            if is_text.any():
                tpos = np.flatnonzero(is_text)
                text_rows = [(int(sid[p]), int(t[p]), texts[p], int(s[p])) for p in tpos.tolist()]
                num = np.flatnonzero(~is_text)
                sid, t, v, s = sid[num], t[num], v[num], s[num]
        db = self.file.db
        with self.file.lock:
            try:
                with self.file.transaction():
                    db.executemany(
                        "INSERT INTO staging (tag, time_ns, value, status) VALUES (?, ?, ?, ?)",
                        zip(sid.tolist(), t.tolist(), v.tolist(), s.tolist()),
                    )
                    if text_rows:
                        db.executemany(
                            "INSERT INTO staging (tag, time_ns, text, status) VALUES (?, ?, ?, ?)", text_rows
                        )
            except sqlite3.Error as exc:
                raise HistoryError(self.file.path, f"write failed: {exc}") from None
            self.pending.add((sid, t, v, s) if len(sid) else None, text_rows, n)
            if (
                self.pending.rows >= self.merge_rows
                or self.merge_error is not None
                or time.monotonic() - self.pending.since >= self.merge_seconds
            ):
                # The batch is committed in staging: a failed merge must not make the caller
                # write it again (stored twice). The rows stay pending; the next write retries.
                self.try_merge()
        return n

    def try_merge(self) -> None:
        """Merge now if the disk lets us; otherwise the rows stay pending (in staging, and read
        from memory) and ``merge_error`` says why: a full disk must not stop a start or a write."""
        try:
            self.merge()
        except HistoryError as exc:
            self.merge_error = exc.reason

    def merge(self) -> int:
        """Move the pending rows into the raw and rollup tables (one transaction). Returns rows.

        The caller holds the file's lock.
        """
        pending = self.pending
        if not pending.rows:
            return 0
        self.file.check_writable()
        sid, t, v, s = pending.arrays()
        order = np.lexsort((t, sid))
        sid, t, v, s = sid[order], t[order], v[order], s[order]
        db = self.file.db
        try:
            with self.file.transaction():
                # OR REPLACE: a point written again (same tag and time) replaces the first; the
                # rollups then count it twice. The compressor keeps times increasing per tag, and
                # Compressor.prime() carries that across restarts.
                db.executemany(
                    "INSERT OR REPLACE INTO raw (tag, time_ns, value, status) VALUES (?, ?, ?, ?)",
                    zip(sid.tolist(), t.tolist(), v.tolist(), s.tolist()),
                )
                if pending.text:
                    text_rows = sorted(pending.text, key=lambda r: (r[0], r[1]))
                    db.executemany(
                        "INSERT OR REPLACE INTO raw_text (tag, time_ns, text, status) VALUES (?, ?, ?, ?)", text_rows
                    )
                if len(t):
                    for table, width in ROLLUPS:
                        part = partials(sid, t, v, s, width)
                        o = np.lexsort((part[0], part[1]))  # in key order: (bucket, tag)
                        db.executemany(_UPSERT.format(table=table), zip(*(a[o].tolist() for a in part)))
                db.execute("DELETE FROM staging")
        except sqlite3.Error as exc:
            raise HistoryError(self.file.path, f"merge failed: {exc}") from None
        merged = pending.rows
        self.merge_error = None
        pending.clear()
        return merged

    def retention_of(self, tag_class: str) -> Retention:
        """The retention of a tag class (the default one for a class without its own)."""
        return self.retention.get(tag_class, self.retention["*"])

    def prune(self, now_ns: int) -> dict[str, int]:
        """Delete what is older than each tag class's retention; returns rows deleted per table.

        Rollup buckets go once they have wholly passed their cutoff. Run it daily or so.
        """
        self.file.check_writable()
        db = self.file.db
        now = int(now_ns)
        deleted = {"raw": 0, "raw_text": 0, "rollup_minute": 0, "rollup_hour": 0}
        with self.file.lock:
            by_class = self.tags.ids_by_class()
            with self.file.transaction():
                for cls, ids in by_class.items():
                    for table, col, cutoff in cutoffs(self.retention_of(cls), now):
                        before = db.total_changes
                        if table.startswith("raw"):  # keyed (tag, time): a range per tag
                            db.executemany(
                                f"DELETE FROM {table} WHERE tag = ? AND {col} < ?", ((i, cutoff) for i in ids)
                            )
                        else:  # keyed (bucket, tag): the old buckets are a prefix
                            db.execute(
                                f"DELETE FROM {table} WHERE {col} < ? AND tag IN (SELECT id FROM tags WHERE class = ?)",
                                (cutoff, cls),
                            )
                        deleted[table] += db.total_changes - before
                if self.tags.sid is None:
                    # Ids written without names have no class: the default retention, by a scan.
                    for table, col, cutoff in cutoffs(self.retention_of("*"), now):
                        cur = db.execute(
                            f"DELETE FROM {table} WHERE {col} < ? AND tag NOT IN (SELECT id FROM tags)", (cutoff,)
                        )
                        deleted[table] += cur.rowcount
        return deleted
