"""The embedded history store: one SQLite file in WAL mode, nothing to install.

What it keeps, per tag:

- **raw values**: the points the compressor chose (time, value, status), and text points in
  their own table; read back in time order, in pages (continuation by the last time seen);
- **rollups** per minute and per hour: count, sum, minimum and maximum of the Good values and
  the count of the others, kept longer than raw values (retention per tag class), so that
  Average, Minimum, Maximum and Count over long ranges never read raw values.

**Writing: a landing table, then sorted merges.** A B-tree keyed by (tag, time) that receives
one row for each of thousands of tags per transaction dirties one page per row: measured here,
the rate falls from 190k to 40-60k rows/s as the table outgrows the cache, and every commit
writes a WAL page per row. So :meth:`HistoryStore.write` appends the batch to ``staging`` (a
rowid table: appends fill pages in order, ~380k rows/s) and commits: from then on the batch
survives a crash of the process. It also keeps the rows in memory. When ``merge_rows`` rows
are pending, or ``merge_seconds`` have passed, :meth:`HistoryStore.merge` moves them in one
transaction: sorted by (tag, time) into ``raw`` (each tag's rows land together), rollups
computed with numpy and upserted, ``staging`` emptied. The rollup tables are keyed (bucket,
tag), so their upserts land in the few pages of the current buckets whatever the number of
tags; a read of one tag probes one bucket after the other (~10 µs each: a year of hours in
~0.1 s), and a bucket range of every tag (exports per commune) is one range scan. A crash before the merge commits
leaves the rows in ``staging``; the next open merges them. Reads combine the merged tables
with the pending rows, so what was written is readable at once.

**Tag names.** Rows carry the store's own tag ids; the ``tags`` table maps them to names (and
the tag's class). At open, the server's tag names are looked up, new ones get new ids, and
the server's ids are translated with one numpy gather per write: the history survives a
configuration that adds, removes or reorders tags. Tags no longer configured keep their
history (and their retention, by their last known class).

**Reads.** :meth:`HistoryStore.read_raw` (OPC UA ReadRaw: values in [start, end), at most
``limit``, continuation by the last time returned) and :meth:`HistoryStore.read_processed`
(OPC UA ReadProcessed, OPC 10000-13 definitions): ``Average`` is the *simple* mean of the Good
raw values in the interval (Part 13 §5.4.3.5: "adds up the values of all Good Raw data for
each interval, and divides the sum by the number of Good values"; not time based);
``TimeAverage`` is the time-weighted one (§5.4.3.6, with interpolated bounds). With a
compressing historian the stored points are irregular (a flat hour is one point, a ramp two),
so ``TimeAverage`` is the one that means "average of the signal"; ``Average``, ``Minimum``,
``Maximum`` and ``Count`` are those of the *stored* values. Those four come from the rollups
when the interval, the start and the end are whole hours (or minutes), from raw values
otherwise.
``Interpolative`` is the value at each interval start, linear between the stored points on
either side (stepped with ``stepped=True``: discrete points). Timestamps are interval starts.
Result status per interval: Good; ``Uncertain_DataSubNormal`` when non-Good values were
left out, or part of the interval has no Good data; ``Bad_NoData`` when nothing is there
(``Count`` then says 0, Good: with a compressing historian an interval without a stored point
is normal). The OPC UA layer adds the historian information bits (Calculated, Interpolated).
Ranges are [start, end) and read forward (start < end); the compressor's held snapshots
(:meth:`Compressor.pending`) are not in the store until stored: a read of the latest values
appends them.

**A failing disk** (full, read-only, I/O errors): every change is one transaction, so a refused
write leaves the file as it was and :meth:`write` raises :class:`HistoryError` with nothing of
the batch stored (write it again later). A merge the disk refuses after the batch was committed
to ``staging`` does not raise (the batch *is* stored): the rows stay pending, ``merge_error``
says why, and the next write (or open) merges them.

Durability: WAL with ``synchronous=NORMAL``: a committed write survives the process being
killed; a power cut may lose the last transactions, never corrupt the file. One writer (one
``HistoryStore`` opened for writing, enforced by a lock file beside the store); any number of
readers (``readonly=True``, e.g. the command line) in other processes. Calls are serialised by
a lock, so a server should run writes in a worker thread: a merge of a million rows takes a
few seconds (``merge_rows`` and ``merge_seconds`` trade that pause against write
amplification, see bench/README.md).

**Modules.** :class:`HistoryStore` composes them: :mod:`scada.historian.schema` (tables,
opening, transactions, tag ids), :mod:`scada.historian.writer` (staging, merges, rollups,
retention), :mod:`scada.historian.reader` (raw, bounds, processed), with the aggregates as
pure functions in :mod:`scada.historian.aggregates` and the merge of time-ordered parts in
:mod:`scada.historian.merge`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scada.historian.aggregates import AGGREGATES, BAD_NO_DATA, GOOD, UNCERTAIN_DATA_SUB_NORMAL
from scada.historian.compress import StoredBatch
from scada.historian.reader import HistoryReader, PendingRows, Point, ProcessedHistory, RawHistory, StagingRows
from scada.historian.schema import (
    APPLICATION_ID,
    DAY,
    HOUR,
    MINUTE,
    SCHEMA_VERSION,
    SECOND,
    HistoryError,
    StoreFile,
    TagIds,
)
from scada.historian.writer import HistoryWriter, Retention, parse_retention

__all__ = [
    "AGGREGATES",
    "APPLICATION_ID",
    "BAD_NO_DATA",
    "DAY",
    "GOOD",
    "HOUR",
    "MINUTE",
    "SCHEMA_VERSION",
    "SECOND",
    "UNCERTAIN_DATA_SUB_NORMAL",
    "HistoryError",
    "HistoryStore",
    "ProcessedHistory",
    "RawHistory",
    "Retention",
]


class HistoryStore:
    """The embedded history store (see the module docstring).

    ``tag_names``: the server's tags in TagDB id order; the ids given to :meth:`write` and
    to the reads are then TagDB ids. Without it, ids are the store's own (a reader, or a
    test); a name is accepted wherever a tag is. ``tag_class``: each tag's class
    (e.g. 'lighting'), which selects its ``retention`` (class name -> :class:`Retention` or
    raw days; key '*' for the default; default :class:`Retention()`).
    """

    def __init__(
        self,
        path: str | Path,
        tag_names: Sequence[str] | None = None,
        tag_class: np.ndarray | Sequence[str] | None = None,
        retention: Mapping[str, Retention | float] | None = None,
        *,
        readonly: bool = False,
        merge_rows: int = 1_000_000,
        merge_seconds: float = 600.0,
        synchronous: str = "NORMAL",
        cache_mb: int = 64,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        retentions = parse_retention(retention)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        if not self.path.parent.is_dir():
            raise HistoryError(self.path, f"folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise HistoryError(self.path, "is a folder, not a history file")
        if readonly and not self.path.exists():
            raise HistoryError(self.path, "does not exist")
        self._file = StoreFile(self.path, readonly, synchronous.upper(), cache_mb)
        self._tags = TagIds(self._file)
        self._writer = HistoryWriter(self._file, self._tags, retentions, int(merge_rows), float(merge_seconds))
        pending: PendingRows = StagingRows(self._file) if readonly else self._writer.pending
        self._reader = HistoryReader(self._file, self._tags, pending)
        try:
            if tag_names is not None:
                self._tags.register(tag_names, tag_class)
            if not readonly:
                self._writer.load_staging()
                self._writer.try_merge()
        except sqlite3.DatabaseError as exc:
            self._file.close()
            raise HistoryError(self.path, f"not a usable SQLite history store ({exc})") from None
        except BaseException:
            self._file.close()
            raise

    # -- writing ---------------------------------------------------------------------------

    @property
    def merge_rows(self) -> int:
        """Pending rows that trigger a merge."""
        return self._writer.merge_rows

    @property
    def merge_seconds(self) -> float:
        """Age of the oldest pending row that triggers a merge."""
        return self._writer.merge_seconds

    @property
    def merge_error(self) -> str | None:
        """Why the last merge failed (the rows are kept in staging), or None."""
        return self._writer.merge_error

    @property
    def pending_rows(self) -> int:
        """Rows written and not merged yet (in ``staging``)."""
        return self._writer.pending.rows

    def write(self, batch: StoredBatch) -> int:
        """Append a batch (one transaction), merging when enough is pending. Returns its rows."""
        return self._writer.write(batch)

    def merge(self) -> int:
        """Move the pending rows into the raw and rollup tables (one transaction). Returns rows."""
        with self._file.lock:
            return self._writer.merge()

    def retention_of(self, tag_class: str) -> Retention:
        """The retention of a tag class (the default one for a class without its own)."""
        return self._writer.retention_of(tag_class)

    def prune(self, now_ns: int) -> dict[str, int]:
        """Delete what is older than each tag class's retention; returns rows deleted per table.

        Rollup buckets go once they have wholly passed their cutoff. Run it daily or so.
        """
        return self._writer.prune(now_ns)

    # -- reading -----------------------------------------------------------------------------

    def store_id(self, tag: int | str) -> int:
        """The store's id of a tag: a name, or a TagDB id when the store was opened with names."""
        return self._tags.store_id(tag)

    def names(self, pattern: str = "*") -> list[str]:
        """Tag names in the store matching a glob pattern (``*/lighting/*/power``), sorted."""
        return self._tags.names(pattern)

    def read_raw(
        self, tag: int | str, start_ns: int, end_ns: int, limit: int | None = None, after: int | None = None
    ) -> RawHistory:
        """Stored values of one tag with start <= time < end, in time order.

        ``limit`` (None or 0: all) caps the values returned; when more remain, ``next_after``
        is the last time returned: call again with ``after=next_after`` for the next page.
        """
        return self._reader.read_raw(tag, start_ns, end_ns, limit, after)

    def bound_before(self, tag: int | str, time_ns: int) -> Point | None:
        """The last stored point at or before ``time_ns``: (time, value, status) or None."""
        return self._reader.bound_before(tag, time_ns)

    def bound_after(self, tag: int | str, time_ns: int) -> Point | None:
        """The first stored point at or after ``time_ns``: (time, value, status) or None."""
        return self._reader.bound_after(tag, time_ns)

    def last_points(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each tag's last stored point: (ids, values, status, times) of the tags that have one.

        ``ids`` are TagDB ids (all configured tags when None). For :meth:`Compressor.prime`
        at start-up; one indexed query per tag (~10 µs each).
        """
        sid = self._tags.sid
        if ids is None:
            if sid is None:
                raise ValueError("last_points needs ids when the store was opened without tag names")
            ids = np.arange(len(sid))
        if not self.readonly:
            with self._file.lock:
                self._writer.try_merge()  # so that each tag costs one indexed query, not a pass over pending rows
        return self._reader.last_points(np.asarray(ids, np.int64))

    def read_processed(
        self, tag: int | str, start_ns: int, end_ns: int, interval_ns: int, aggregate: str, stepped: bool = False
    ) -> ProcessedHistory:
        """One value per interval of ``interval_ns`` from ``start_ns`` (the last one may be
        shorter, ending at ``end_ns``). ``aggregate``: one of :data:`AGGREGATES`
        (case-insensitive); see the module docstring for their definitions."""
        return self._reader.read_processed(tag, start_ns, end_ns, interval_ns, aggregate, stepped)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Merge what is pending, checkpoint the WAL and close. Idempotent."""
        with self._file.lock:
            if self._file.closed:
                return
            try:
                if not self.readonly:
                    self._writer.merge()
                    self._file.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._file.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
