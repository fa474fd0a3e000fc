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
"""

from __future__ import annotations

import fcntl
import math
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scada.historian.compress import StoredBatch
from scada.sqlite_wal import HeaderError, check_header, create_schema

SCHEMA_VERSION = 1
# Our file's identity in the SQLite header, so that another application's database is refused.
APPLICATION_ID = 0x5343_4831  # "SCH1"

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 3600 * SECOND
DAY = 86400 * SECOND

GOOD = 0x00000000
UNCERTAIN_DATA_SUB_NORMAL = 0x40A40000
BAD_NO_DATA = 0x809B0000
_SEVERITY = np.uint32(0xC0000000)

AGGREGATES = ("Average", "TimeAverage", "Minimum", "Maximum", "Count", "Interpolative")
_ROLLUP_AGGREGATES = ("Average", "Minimum", "Maximum", "Count")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE,
    class TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS staging (
    tag     INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    value   REAL,
    status  INTEGER NOT NULL,
    text    TEXT
);
CREATE TABLE IF NOT EXISTS raw (
    tag     INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    value   REAL,
    status  INTEGER NOT NULL,
    PRIMARY KEY (tag, time_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raw_text (
    tag     INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    text    TEXT,
    status  INTEGER NOT NULL,
    PRIMARY KEY (tag, time_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_minute (
    bucket_ns INTEGER NOT NULL,
    tag       INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    vsum      REAL NOT NULL,
    vmin      REAL,
    vmax      REAL,
    nbad      INTEGER NOT NULL,
    PRIMARY KEY (bucket_ns, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_hour (
    bucket_ns INTEGER NOT NULL,
    tag       INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    vsum      REAL NOT NULL,
    vmin      REAL,
    vmax      REAL,
    nbad      INTEGER NOT NULL,
    PRIMARY KEY (bucket_ns, tag)
) WITHOUT ROWID;
"""

_ROLLUPS = (("rollup_minute", MINUTE), ("rollup_hour", HOUR))
_UPSERT = """INSERT INTO {table} (tag, bucket_ns, n, vsum, vmin, vmax, nbad) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket_ns, tag) DO UPDATE SET
    n = n + excluded.n,
    vsum = vsum + excluded.vsum,
    vmin = CASE WHEN vmin IS NULL OR excluded.vmin < vmin THEN excluded.vmin ELSE vmin END,
    vmax = CASE WHEN vmax IS NULL OR excluded.vmax > vmax THEN excluded.vmax ELSE vmax END,
    nbad = nbad + excluded.nbad"""


class HistoryError(Exception):
    """The history store cannot be opened, read or written; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"history store {self.path}: {reason}")


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


def _good(status: np.ndarray, values: np.ndarray) -> np.ndarray:
    return ((np.asarray(status, np.uint32) & _SEVERITY) == 0) & np.isfinite(values)


def _columns(rows: list[tuple], with_text: bool = False):
    """SQL rows (time, value|text, status) -> numpy columns; NULL values become NaN."""
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint32), ()
    t, v, s = zip(*rows)
    if with_text:
        return np.array(t, np.int64), np.full(len(t), np.nan), np.array(s, np.uint32), v
    return np.array(t, np.int64), np.array(v, np.float64), np.array(s, np.uint32), None


def _partials(sid: np.ndarray, t: np.ndarray, v: np.ndarray, s: np.ndarray, width: int):
    """Per (tag, bucket) aggregates of rows sorted by (tag, time): keys, n, sum, min, max, nbad."""
    bucket = t - t % width
    new = np.ones(len(t), bool)
    new[1:] = (sid[1:] != sid[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    good = _good(s, v)
    n = np.add.reduceat(good.astype(np.int64), starts)
    total = np.diff(np.append(starts, len(t)))
    vsum = np.add.reduceat(np.where(good, v, 0.0), starts)
    vmin = np.fmin.reduceat(np.where(good, v, np.nan), starts)
    vmax = np.fmax.reduceat(np.where(good, v, np.nan), starts)
    return sid[starts], bucket[starts], n, vsum, vmin, vmax, total - n


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
        self.merge_rows = int(merge_rows)
        self.merge_seconds = float(merge_seconds)
        self._retention = self._parse_retention(retention)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        if not self.path.parent.is_dir():
            raise HistoryError(self.path, f"folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise HistoryError(self.path, "is a folder, not a history file")
        if readonly and not self.path.exists():
            raise HistoryError(self.path, "does not exist")
        self._lock = threading.RLock()
        self._writer_lock = None if readonly else self._lock_writer()
        self._sid: np.ndarray | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_text: list[tuple[int, int, str | None, int]] = []
        self._pending_cat: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pending_rows = 0
        self._pending_since = 0.0
        self.merge_error: str | None = None  # why the last merge failed (rows kept in staging), or None
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._unlock_writer()
            raise HistoryError(self.path, f"cannot open: {exc}") from None
        try:
            self._init_schema(synchronous.upper(), cache_mb)
            if tag_names is not None:
                self._register(tag_names, tag_class)
            if not readonly:
                self._load_staging()
                self._try_merge()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._unlock_writer()
            raise HistoryError(self.path, f"not a usable SQLite history store ({exc})") from None
        except BaseException:
            self._db.close()
            self._unlock_writer()
            raise

    def _lock_writer(self):
        """One writer per file: a second one would merge the first one's pending rows again.

        An advisory lock on a file beside the store; the kernel drops it when the process
        dies, so a crashed writer never blocks the next start.
        """
        lock_path = Path(f"{self.path}.writer-lock")
        try:
            fh = open(lock_path, "a+b")
        except OSError as exc:
            raise HistoryError(self.path, f"cannot create {lock_path.name}: {exc.strerror}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise HistoryError(self.path, "another writer has it open (use readonly=True to read)") from None
        return fh

    def _unlock_writer(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.close()  # closing the file releases the lock
            self._writer_lock = None

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _parse_retention(retention) -> dict[str, Retention]:
        out = {"*": Retention()}
        for cls, r in (retention or {}).items():
            if isinstance(r, Retention):
                out[cls] = r
            else:
                # Raw days only: the rollups keep at least the defaults, and never less than raw.
                d = Retention()
                out[cls] = Retention(float(r), max(float(r), d.minute_days), max(float(r), d.hour_days))
        return out

    def _init_schema(self, synchronous: str, cache_mb: int) -> None:
        db = self._db
        try:
            ours = check_header(db, APPLICATION_ID, SCHEMA_VERSION, "a history store", "history")
        except HeaderError as exc:
            raise HistoryError(self.path, str(exc)) from None
        db.execute(f"PRAGMA cache_size={-int(cache_mb) * 1024}")
        if self.readonly:
            if not ours:
                raise HistoryError(self.path, "is empty, not a history store")
            return
        if ours:
            # Created and stamped already: opening writes nothing, so a start on a full disk works.
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise HistoryError(self.path, "cannot switch the file to WAL mode")
            db.execute(f"PRAGMA synchronous={synchronous}")
        elif not create_schema(db, _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, synchronous):
            raise HistoryError(self.path, "cannot switch the file to WAL mode")

    def _register(self, names: Sequence[str], classes) -> None:
        """Map the server's tag ids to store ids, adding new names; see the module docstring."""
        n = len(names)
        classes = [""] * n if classes is None else [str(c) for c in classes]
        if len(classes) != n:
            raise ValueError("tag_class must have one entry per tag name")
        known = {name: (i, c) for i, name, c in self._db.execute("SELECT id, name, class FROM tags")}
        next_id = 1 + max((i for i, _ in known.values()), default=-1)
        sid = np.empty(n, np.int64)
        new: list[tuple[int, str, str]] = []
        moved: list[tuple[str, int]] = []
        seen: set[str] = set()
        for k, (name, cls) in enumerate(zip(names, classes)):
            if name in seen:
                raise ValueError(f"duplicate tag name {name!r}")
            seen.add(name)
            entry = known.get(name)
            if entry is None:
                entry = (next_id, cls)
                new.append((next_id, name, cls))
                next_id += 1
            elif entry[1] != cls:
                moved.append((cls, entry[0]))
            sid[k] = entry[0]
        if new or moved:
            if self.readonly:
                raise HistoryError(self.path, f"{len(new)} tag names are not in the store (read-only)")
            with self._transaction():
                self._db.executemany("INSERT INTO tags (id, name, class) VALUES (?, ?, ?)", new)
                self._db.executemany("UPDATE tags SET class = ? WHERE id = ?", moved)
        self._sid = sid

    def _load_staging(self) -> None:
        """Rows written but not merged when the last writer stopped (or crashed)."""
        rows = self._db.execute("SELECT tag, time_ns, value, status, text FROM staging ORDER BY rowid").fetchall()
        if not rows:
            return
        num = [r for r in rows if r[4] is None]
        if num:
            sid, t, v, s, _ = zip(*num)
            self._pending.append(
                (np.array(sid, np.int64), np.array(t, np.int64), np.array(v, np.float64), np.array(s, np.uint32))
            )
        self._pending_text.extend((r[0], r[1], r[4], r[3]) for r in rows if r[4] is not None)
        self._pending_rows = len(rows)
        self._pending_since = time.monotonic()

    def _transaction(self):
        return _Transaction(self._db)

    # -- writing ---------------------------------------------------------------------------

    def write(self, batch: StoredBatch) -> int:
        """Append a batch (one transaction), merging when enough is pending. Returns its rows."""
        n = len(batch)
        if n == 0:
            return 0
        self._check_writable()
        ids = np.asarray(batch.ids, np.int64)
        if self._sid is None:
            sid = ids.copy()  # copies: the pending rows must not change with the caller's arrays
        else:
            if ids.min() < 0 or ids.max() >= len(self._sid):
                raise ValueError(f"tag ids must be within 0-{len(self._sid) - 1}")
            sid = self._sid[ids]
        t = np.array(batch.times, np.int64)
        v = np.array(batch.values, np.float64)
        s = np.array(batch.status, np.uint32)
        text_rows: list[tuple[int, int, str | None, int]] = []
        if batch.texts is not None:
            is_text = np.fromiter((x is not None for x in batch.texts), bool, n)
            if is_text.any():
                tpos = np.flatnonzero(is_text)
                text_rows = [(int(sid[p]), int(t[p]), batch.texts[p], int(s[p])) for p in tpos.tolist()]
                num = np.flatnonzero(~is_text)
                sid, t, v, s = sid[num], t[num], v[num], s[num]
        with self._lock:
            try:
                with self._transaction():
                    self._db.executemany(
                        "INSERT INTO staging (tag, time_ns, value, status) VALUES (?, ?, ?, ?)",
                        zip(sid.tolist(), t.tolist(), v.tolist(), s.tolist()),
                    )
                    if text_rows:
                        self._db.executemany(
                            "INSERT INTO staging (tag, time_ns, text, status) VALUES (?, ?, ?, ?)", text_rows
                        )
            except sqlite3.Error as exc:
                raise HistoryError(self.path, f"write failed: {exc}") from None
            if not self._pending_rows:
                self._pending_since = time.monotonic()
            if len(sid):
                self._pending.append((sid, t, v, s))
            self._pending_text.extend(text_rows)
            self._pending_rows += n
            self._pending_cat = None
            if (
                self._pending_rows >= self.merge_rows
                or self.merge_error is not None
                or time.monotonic() - self._pending_since >= self.merge_seconds
            ):
                # The batch is committed in staging: a failed merge must not make the caller
                # write it again (stored twice). The rows stay pending; the next write retries.
                self._try_merge()
        return n

    def _try_merge(self) -> None:
        """Merge now if the disk lets us; otherwise the rows stay pending (in staging, and read
        from memory) and ``merge_error`` says why: a full disk must not stop a start or a write."""
        try:
            self._merge_locked()
        except HistoryError as exc:
            self.merge_error = exc.reason

    def merge(self) -> int:
        """Move the pending rows into the raw and rollup tables (one transaction). Returns rows."""
        with self._lock:
            return self._merge_locked()

    def _merge_locked(self) -> int:
        if not self._pending_rows:
            return 0
        self._check_writable()
        sid, t, v, s = self._pending_arrays()
        order = np.lexsort((t, sid))
        sid, t, v, s = sid[order], t[order], v[order], s[order]
        db = self._db
        try:
            with self._transaction():
                # OR REPLACE: a point written again (same tag and time) replaces the first; the
                # rollups then count it twice. The compressor keeps times increasing per tag, and
                # Compressor.prime() carries that across restarts.
                db.executemany(
                    "INSERT OR REPLACE INTO raw (tag, time_ns, value, status) VALUES (?, ?, ?, ?)",
                    zip(sid.tolist(), t.tolist(), v.tolist(), s.tolist()),
                )
                if self._pending_text:
                    db.executemany(
                        "INSERT OR REPLACE INTO raw_text (tag, time_ns, text, status) VALUES (?, ?, ?, ?)",
                        sorted(self._pending_text, key=lambda r: (r[0], r[1])),
                    )
                if len(t):
                    for table, width in _ROLLUPS:
                        part = _partials(sid, t, v, s, width)
                        o = np.lexsort((part[0], part[1]))  # in key order: (bucket, tag)
                        db.executemany(_UPSERT.format(table=table), zip(*(a[o].tolist() for a in part)))
                db.execute("DELETE FROM staging")
        except sqlite3.Error as exc:
            raise HistoryError(self.path, f"merge failed: {exc}") from None
        merged = self._pending_rows
        self.merge_error = None
        self._pending.clear()
        self._pending_text.clear()
        self._pending_cat = None
        self._pending_rows = 0
        return merged

    def _pending_arrays(self):
        if self._pending_cat is None:
            if self._pending:
                self._pending_cat = tuple(np.concatenate([p[k] for p in self._pending]) for k in range(4))
            else:
                e = np.zeros(0, np.int64)
                self._pending_cat = (e, e, np.zeros(0), np.zeros(0, np.uint32))
        return self._pending_cat

    @property
    def pending_rows(self) -> int:
        """Rows written and not merged yet (in ``staging``)."""
        return self._pending_rows

    def _check_writable(self) -> None:
        if self.readonly:
            raise HistoryError(self.path, "opened read-only")

    # -- retention ---------------------------------------------------------------------------

    def retention_of(self, tag_class: str) -> Retention:
        return self._retention.get(tag_class, self._retention["*"])

    def prune(self, now_ns: int) -> dict[str, int]:
        """Delete what is older than each tag class's retention; returns rows deleted per table.

        Rollup buckets go once they have wholly passed their cutoff. Run it daily or so.
        """
        self._check_writable()
        deleted = {"raw": 0, "raw_text": 0, "rollup_minute": 0, "rollup_hour": 0}
        with self._lock:
            by_class: dict[str, list[int]] = {}
            for i, cls in self._db.execute("SELECT id, class FROM tags"):
                by_class.setdefault(cls, []).append(i)
            with self._transaction():
                for cls, ids in by_class.items():
                    for table, col, cutoff in self._cutoffs(self.retention_of(cls), int(now_ns)):
                        before = self._db.total_changes
                        if table.startswith("raw"):  # keyed (tag, time): a range per tag
                            self._db.executemany(
                                f"DELETE FROM {table} WHERE tag = ? AND {col} < ?", ((i, cutoff) for i in ids)
                            )
                        else:  # keyed (bucket, tag): the old buckets are a prefix
                            self._db.execute(
                                f"DELETE FROM {table} WHERE {col} < ? AND tag IN (SELECT id FROM tags WHERE class = ?)",
                                (cutoff, cls),
                            )
                        deleted[table] += self._db.total_changes - before
                if self._sid is None:
                    # Ids written without names have no class: the default retention, by a scan.
                    for table, col, cutoff in self._cutoffs(self.retention_of("*"), int(now_ns)):
                        cur = self._db.execute(
                            f"DELETE FROM {table} WHERE {col} < ? AND tag NOT IN (SELECT id FROM tags)", (cutoff,)
                        )
                        deleted[table] += cur.rowcount
        return deleted

    @staticmethod
    def _cutoffs(r: Retention, now: int):
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

    # -- reading -----------------------------------------------------------------------------

    def store_id(self, tag: int | str) -> int:
        """The store's id of a tag: a name, or a TagDB id when the store was opened with names."""
        if isinstance(tag, str):
            with self._lock:
                row = self._db.execute("SELECT id FROM tags WHERE name = ?", (tag,)).fetchone()
            if row is None:
                raise KeyError(f"unknown tag {tag!r}")
            return int(row[0])
        tag = int(tag)
        if self._sid is None:
            return tag
        if not 0 <= tag < len(self._sid):
            raise KeyError(f"unknown tag id {tag}")
        return int(self._sid[tag])

    def names(self, pattern: str = "*") -> list[str]:
        """Tag names in the store matching a glob pattern (``*/lighting/*/power``), sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM tags WHERE name GLOB ? ORDER BY name", (pattern,))]

    def _pending_rows_of(self, sid: int, lo: int, hi: int):
        """Pending (unmerged) rows of one tag with lo <= time < hi: t, v, s, texts-or-None."""
        if self.readonly:  # another process writes: its pending rows are in staging
            rows = self._db.execute(
                "SELECT time_ns, value, status, text FROM staging WHERE tag = ? AND time_ns >= ? AND time_ns < ?",
                (sid, lo, hi),
            ).fetchall()
            num = [r[:3] for r in rows if r[3] is None]
            txt = [(r[0], r[3], r[2]) for r in rows if r[3] is not None]
        else:
            num = []
            txt = [(t, x, s) for i, t, x, s in self._pending_text if i == sid and lo <= t < hi]
        t, v, s, _ = _columns(num)
        if not self.readonly:
            psid, pt, pv, ps = self._pending_arrays()
            m = np.flatnonzero((psid == sid) & (pt >= lo) & (pt < hi))
            t, v, s = pt[m], pv[m], ps[m]
        if txt:
            tt, tv, ts, tx = _columns(txt, with_text=True)
            return (
                np.concatenate([t, tt]),
                np.concatenate([v, tv]),
                np.concatenate([s, ts]),
                (None,) * len(t) + tuple(tx),
            )
        return t, v, s, None

    def _points(self, sid: int, lo: int, hi: int, limit: int | None = None):
        """Stored points of one tag with lo <= time < hi, merged tables + pending, in time order.

        With ``limit``, at most limit + 1 (to know whether more follow). Returns t, v, s, texts.
        """
        lim = "" if limit is None else f" LIMIT {int(limit) + 1}"
        num = self._db.execute(
            f"SELECT time_ns, value, status FROM raw WHERE tag = ? AND time_ns >= ? "
            f"AND time_ns < ? ORDER BY time_ns{lim}",
            (sid, lo, hi),
        ).fetchall()
        txt = self._db.execute(
            f"SELECT time_ns, text, status FROM raw_text WHERE tag = ? AND time_ns >= ? "
            f"AND time_ns < ? ORDER BY time_ns{lim}",
            (sid, lo, hi),
        ).fetchall()
        parts = [_columns(num)]
        if txt:
            parts.append(_columns(txt, with_text=True))
        if self._pending_rows or self.readonly:
            parts.append(self._pending_rows_of(sid, lo, hi))
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return _columns([])
        if len(parts) == 1 and parts[0][3] is None:
            t, v, s, texts = parts[0]
        else:
            t = np.concatenate([p[0] for p in parts])
            v = np.concatenate([p[1] for p in parts])
            s = np.concatenate([p[2] for p in parts])
            texts = None
            if any(p[3] is not None for p in parts):
                texts = tuple(x for p in parts for x in (p[3] if p[3] is not None else (None,) * len(p[0])))
            # Later sources win for an equal time (pending over merged): stable sort, keep the last.
            order = np.argsort(t, kind="stable")
            t = t[order]
            keep = np.ones(len(t), bool)
            keep[:-1] = t[1:] != t[:-1]
            order = order[keep]
            t, v, s = t[keep], v[order], s[order]
            if texts is not None:
                texts = tuple(texts[i] for i in order.tolist())
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
        with self._lock, _Snapshot(self._db):
            sid = self.store_id(tag)
            t, v, s, texts = self._points(sid, lo, int(end_ns), limit)
        next_after = None
        if limit is not None and len(t) > limit:
            t, v, s = t[:limit], v[:limit], s[:limit]
            texts = None if texts is None else texts[:limit]
            next_after = int(t[-1])
        return RawHistory(t, v, s, texts, next_after)

    def bound_before(self, tag: int | str, time_ns: int):
        """The last stored point at or before ``time_ns``: (time, value, status) or None."""
        with self._lock, _Snapshot(self._db):
            return self._bound(self.store_id(tag), int(time_ns), before=True)

    def bound_after(self, tag: int | str, time_ns: int):
        """The first stored point at or after ``time_ns``: (time, value, status) or None."""
        with self._lock, _Snapshot(self._db):
            return self._bound(self.store_id(tag), int(time_ns), before=False)

    def _bound(self, sid: int, t: int, before: bool):
        if before:
            where, order, lo, hi = "time_ns <= ?", "DESC", -(2**63), t + 1
        else:
            where, order, lo, hi = "time_ns >= ?", "ASC", t, 2**63 - 1
        candidates = []
        for sql in (
            f"SELECT time_ns, value, status FROM raw WHERE tag = ? AND {where} ORDER BY time_ns {order} LIMIT 1",
            f"SELECT time_ns, NULL, status FROM raw_text WHERE tag = ? AND {where} ORDER BY time_ns {order} LIMIT 1",
        ):
            row = self._db.execute(sql, (sid, t)).fetchone()
            if row is not None:
                candidates.append((int(row[0]), math.nan if row[1] is None else float(row[1]), int(row[2])))
        if self._pending_rows or self.readonly:
            pt, pv, ps, _ = self._pending_rows_of(sid, lo, hi)
            if len(pt):
                k = int(np.argmax(pt)) if before else int(np.argmin(pt))
                candidates.append((int(pt[k]), float(pv[k]), int(ps[k])))
        if not candidates:
            return None
        # The latest (or earliest); on a tie the last candidate, pending, which replaces the others.
        best = candidates[0]
        for c in candidates[1:]:
            if c[0] == best[0] or (c[0] > best[0]) == before:
                best = c
        return best

    def last_points(self, ids: np.ndarray | None = None):
        """Each tag's last stored point: (ids, values, status, times) of the tags that have one.

        ``ids`` are TagDB ids (all configured tags when None). For :meth:`Compressor.prime`
        at start-up; one indexed query per tag (~10 µs each).
        """
        if self._sid is None and ids is None:
            raise ValueError("last_points needs ids when the store was opened without tag names")
        ids = np.arange(len(self._sid)) if ids is None else np.asarray(ids, np.int64)
        out_i, out_v, out_s, out_t = [], [], [], []
        with self._lock:
            if not self.readonly:
                self._try_merge()  # so that each tag costs one indexed query, not a pass over pending rows
        with self._lock, _Snapshot(self._db):
            for i in ids.tolist():
                b = self._bound(self.store_id(i), 2**63 - 2, before=True)
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
        (case-insensitive); see the module docstring for their definitions."""
        names = {a.lower(): a for a in AGGREGATES}
        agg = names.get(str(aggregate).lower())
        if agg is None:
            raise ValueError(f"unknown aggregate {aggregate!r}: one of {', '.join(AGGREGATES)}")
        start, end, interval = int(start_ns), int(end_ns), int(interval_ns)
        if interval <= 0 or end <= start:
            raise ValueError("read_processed needs interval_ns > 0 and end_ns > start_ns")
        k = -(-(end - start) // interval)
        edges = start + np.arange(k, dtype=np.int64) * interval
        with self._lock, _Snapshot(self._db):
            sid = self.store_id(tag)
            if agg in _ROLLUP_AGGREGATES:
                return self._from_partials(sid, start, end, interval, edges, agg)
            t, v, s = self._points_with_bounds(sid, start, end)
        if agg == "Interpolative":
            values, status = _interpolate(t, v, s, edges, stepped)
        else:
            values, status = _time_average(t, v, s, edges, end, stepped)
        return ProcessedHistory(edges, values, status, "raw")

    def _points_with_bounds(self, sid: int, start: int, end: int):
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

    def _rollup_table(self, start: int, end: int, interval: int) -> tuple[str, int] | None:
        for table, width in reversed(_ROLLUPS):  # the coarsest that fits
            if interval % width == 0 and start % width == 0 and end % width == 0:
                return table, width
        return None

    def _from_partials(self, sid, start, end, interval, edges, agg) -> ProcessedHistory:
        chosen = self._rollup_table(start, end, interval)
        if chosen is not None:
            table, width = chosen
            # Keyed (bucket, tag): one probe per bucket of the range (CROSS JOIN keeps the
            # generated buckets as the outer loop), never a scan of every tag's buckets.
            rows = self._db.execute(
                f"WITH RECURSIVE b(x) AS (SELECT ? UNION ALL SELECT x + ? FROM b WHERE x + ? < ?) "
                f"SELECT r.bucket_ns, r.n, r.vsum, r.vmin, r.vmax, r.nbad FROM b CROSS JOIN {table} r "
                f"ON r.bucket_ns = b.x AND r.tag = ?",
                (start, width, width, end, sid),
            ).fetchall()
            if rows:
                b, n, vsum, vmin, vmax, nbad = (
                    np.array(c, np.float64 if j >= 2 and j <= 4 else np.int64) for j, c in enumerate(zip(*rows))
                )
            else:
                b = n = nbad = np.zeros(0, np.int64)
                vsum = vmin = vmax = np.zeros(0)
            pt, pv, ps, _ = (
                self._pending_rows_of(sid, start, end) if (self._pending_rows or self.readonly) else _columns([])
            )
            if len(pt):
                o = np.argsort(pt, kind="stable")
                _, pb, pn, psum, pmin, pmax, pbad = _partials(np.zeros(len(pt), np.int64), pt[o], pv[o], ps[o], width)
                b, n, vsum = np.concatenate([b, pb]), np.concatenate([n, pn]), np.concatenate([vsum, psum])
                vmin, vmax = np.concatenate([vmin, pmin]), np.concatenate([vmax, pmax])
                nbad = np.concatenate([nbad, pbad])
            key = (b - start) // interval
            source = table
        else:
            t, v, s, _ = self._points(sid, start, end)
            good = _good(s, v)
            key = (t - start) // interval
            n, nbad = good.astype(np.int64), (~good).astype(np.int64)
            vsum = np.where(good, v, 0.0)
            vmin = vmax = np.where(good, v, np.nan)
            source = "raw"
        k = len(edges)
        key = key.astype(np.int64)
        cnt = np.bincount(key, weights=n, minlength=k)[:k]
        bad = np.bincount(key, weights=nbad, minlength=k)[:k]
        status = np.where(bad > 0, UNCERTAIN_DATA_SUB_NORMAL, GOOD).astype(np.uint32)
        if agg == "Count":
            return ProcessedHistory(edges, cnt, status, source)
        if agg == "Average":
            with np.errstate(invalid="ignore", divide="ignore"):
                values = np.bincount(key, weights=vsum, minlength=k)[:k] / cnt
        else:
            values = np.full(k, np.nan)
            (np.fmin if agg == "Minimum" else np.fmax).at(values, key, vmin if agg == "Minimum" else vmax)
        empty = cnt == 0
        values[empty] = np.nan
        status[empty] = BAD_NO_DATA
        return ProcessedHistory(edges, values, status, source)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Merge what is pending, checkpoint the WAL and close. Idempotent."""
        with self._lock:
            if self._db is None:
                return
            try:
                if not self.readonly:
                    self._merge_locked()
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()
                self._db = None
                self._unlock_writer()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")  # left open by a ROLLBACK the disk refused last time
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()  # a COMMIT refused (disk full) leaves nothing half-applied either
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # SQLite rolls back by itself on SQLITE_FULL / SQLITE_IOERR: a second ROLLBACK would
        # raise "no transaction is active" and hide the error that matters.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error propagates; the next transaction rolls this one back first


class _Snapshot:
    """A read transaction: several SELECTs see one state of the file, even while another
    process merges staging into raw (a row is then in exactly one of them)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, *exc) -> None:
        self.db.execute("COMMIT")


def _interpolate(t, v, s, edges, stepped: bool):
    """Value at each edge from the points on either side (see HistoryStore.read_processed)."""
    k = len(edges)
    values = np.full(k, np.nan)
    status = np.full(k, BAD_NO_DATA, np.uint32)
    if len(t) == 0:
        return values, status
    j = np.searchsorted(t, edges, "right") - 1
    has = j >= 0
    jj = np.clip(j, 0, len(t) - 1)
    nxt = np.minimum(jj + 1, len(t) - 1)
    has_next = has & (jj + 1 < len(t))
    exact = has & (t[jj] == edges)
    good = _good(s, v)
    p_good, n_good = good[jj], good[nxt] & has_next
    values[has] = v[jj][has]
    status[has] = s[jj][has]
    sloped = has & ~exact & p_good & n_good & (not stepped)
    if sloped.any():
        a, b = jj[sloped], nxt[sloped]
        frac = (edges[sloped] - t[a]) / (t[b] - t[a])
        values[sloped] = v[a] + (v[b] - v[a]) * frac
        status[sloped] = GOOD
    # A Good prior point without a Good next one: held, not quite certain (extrapolated).
    held = has & ~exact & p_good & ~n_good
    status[held] = UNCERTAIN_DATA_SUB_NORMAL
    return values, status


def _time_average(t, v, s, edges, end: int, stepped: bool):
    """Time-weighted average per interval over the Good parts of the stored signal.

    The signal is linear between two Good points (stepped when ``stepped``, or when the next
    point is not Good), held after the last point; a non-Good point's segment is left out.
    Integrals are evaluated at the interval boundaries from cumulative sums (no Python loop).
    """
    k = len(edges)
    values = np.full(k, np.nan)
    status = np.full(k, BAD_NO_DATA, np.uint32)
    if len(t) == 0:
        return values, status
    origin = int(edges[0])
    x = (t - origin) * 1e-9
    good = _good(s, v)
    vz = np.where(good, v, 0.0)
    m = len(t)
    seg = np.append(np.diff(x), np.inf)
    slope = np.zeros(m)
    if not stepped and m > 1:
        both = good[:-1] & good[1:]
        slope[:-1] = np.where(both, (vz[1:] - vz[:-1]) / np.where(seg[:-1] > 0, seg[:-1], 1.0), 0.0)
    full = np.where(good[:-1], seg[:-1] * (vz[:-1] + 0.5 * slope[:-1] * seg[:-1]), 0.0)
    dur = np.where(good[:-1], seg[:-1], 0.0)
    c_int = np.concatenate([[0.0], np.cumsum(full)])
    c_dur = np.concatenate([[0.0], np.cumsum(dur)])
    bounds = np.append((edges - origin) * 1e-9, (end - origin) * 1e-9)
    j = np.searchsorted(x, bounds, "right") - 1
    jj = np.clip(j, 0, m - 1)
    d = np.where(j >= 0, bounds - x[jj], 0.0)
    g = (j >= 0) & good[jj]
    f_int = np.where(j >= 0, c_int[jj], 0.0) + np.where(g, d * (vz[jj] + 0.5 * slope[jj] * d), 0.0)
    f_dur = np.where(j >= 0, c_dur[jj], 0.0) + np.where(g, d, 0.0)
    covered = np.diff(f_dur)
    length = np.diff(bounds)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.diff(f_int) / covered
    has = covered > 0
    values[has] = avg[has]
    # Fully covered by Good data between stored points: Good; partly, or beyond the last point
    # (held value, extrapolated): Uncertain.
    extrapolated = bounds[1:] > x[-1]
    status[has] = np.where(
        (covered[has] >= length[has] * (1 - 1e-12)) & ~extrapolated[has], GOOD, UNCERTAIN_DATA_SUB_NORMAL
    )
    return values, status
