"""The history store's file: tables, opening (one writer, any readers), transactions, tag ids.

The tables and why they are laid out so are described in :mod:`scada.historian.store`.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from scada.sqlite_wal import HeaderError, Transaction, check_header, create_schema

SCHEMA_VERSION = 1
# Our file's identity in the SQLite header, so that another application's database is refused.
APPLICATION_ID = 0x5343_4831  # "SCH1"

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 3600 * SECOND
DAY = 86400 * SECOND

_TABLES = """
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
"""

# The rollup tables and their bucket widths, finest first.
ROLLUPS = (("rollup_minute", MINUTE), ("rollup_hour", HOUR))

# Per bucket of one tag: count, sum, minimum and maximum of the Good values, count of the others.
_ROLLUP_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    bucket_ns INTEGER NOT NULL,
    tag       INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    vsum      REAL NOT NULL,
    vmin      REAL,
    vmax      REAL,
    nbad      INTEGER NOT NULL,
    PRIMARY KEY (bucket_ns, tag)
) WITHOUT ROWID;"""

SCHEMA = _TABLES + "".join(_ROLLUP_TABLE.format(table=table) for table, _ in ROLLUPS)


class HistoryError(Exception):
    """The history store cannot be opened, read or written; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"history store {self.path}: {reason}")


class StoreFile:
    """The open SQLite file: its connection, the lock that serialises calls, and (when
    writing) the writer lock file. ``readonly`` connections never write the file."""

    def __init__(self, path: Path, readonly: bool, synchronous: str, cache_mb: int) -> None:
        self.path = path
        self.readonly = readonly
        self.closed = False
        self.lock = threading.RLock()
        self._writer_lock: IO[bytes] | None = None if readonly else self._lock_writer()
        try:
            if readonly:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._unlock_writer()
            raise HistoryError(path, f"cannot open: {exc}") from None
        try:
            self._init_schema(synchronous, cache_mb)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise HistoryError(path, f"not a usable SQLite history store ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _lock_writer(self) -> IO[bytes]:
        """One writer per file: a second one would merge the first one's pending rows again.

        An advisory lock on a file beside the store; the kernel drops it when the process
        dies, so a crashed writer never blocks the next start.
        """
        lock_path = Path(f"{self.path}.writer-lock")
        try:
            fh = open(lock_path, "a+b")  # noqa: SIM115 - held open for the store's lifetime
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

    def _init_schema(self, synchronous: str, cache_mb: int) -> None:
        db = self.db
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
        elif not create_schema(db, SCHEMA, APPLICATION_ID, SCHEMA_VERSION, synchronous):
            raise HistoryError(self.path, "cannot switch the file to WAL mode")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; a closed store raises RuntimeError (not a storage error: a caller
        still using a closed store is a bug to surface, not a full disk to retry)."""
        if self.closed:
            raise RuntimeError(f"history store {self.path} is closed")
        return self._db

    def check_writable(self) -> None:
        """Raise :class:`HistoryError` when the file was opened read-only."""
        if self.readonly:
            raise HistoryError(self.path, "opened read-only")

    def transaction(self) -> Transaction:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        return Transaction(self.db)

    def snapshot(self) -> Snapshot:
        """A read transaction: the SELECTs inside it see one state of the file."""
        return Snapshot(self.db)

    def close(self) -> None:
        """Close the connection and release the writer lock. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self._db.close()
        finally:
            self._unlock_writer()


class Snapshot:
    """A read transaction: several SELECTs see one state of the file, even while another
    process merges staging into raw (a row is then in exactly one of them)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, *exc: object) -> None:
        self.db.execute("COMMIT")


class TagIds:
    """The ``tags`` table: store ids, names and classes, and the server's ids mapped to them.

    Rows carry the store's own ids; :meth:`register` maps the server's TagDB ids (positions
    in its name list) to them, adding new names, so that the history survives a
    configuration that adds, removes or reorders tags.
    """

    def __init__(self, file: StoreFile) -> None:
        self.file = file
        # TagDB id -> store id, or None when the store was opened without names (ids are the store's).
        self.sid: np.ndarray | None = None

    def register(self, names: Sequence[str], classes: np.ndarray | Sequence[str] | None) -> None:
        """Map the server's tag ids to store ids, adding new names and updating classes."""
        n = len(names)
        cls_of = [""] * n if classes is None else [str(c) for c in classes]
        if len(cls_of) != n:
            raise ValueError("tag_class must have one entry per tag name")
        db = self.file.db
        known = {name: (i, c) for i, name, c in db.execute("SELECT id, name, class FROM tags")}
        next_id = 1 + max((i for i, _ in known.values()), default=-1)
        sid = np.empty(n, np.int64)
        new: list[tuple[int, str, str]] = []
        moved: list[tuple[str, int]] = []
        seen: set[str] = set()
        for k, (name, cls) in enumerate(zip(names, cls_of)):
            if name in seen:
                raise ValueError(f"duplicate tag name {name!r}")
            seen.add(name)
            entry = known.get(name)
            if entry is None:
                entry = (next_id, cls)
                new.append((next_id, name, cls))
                next_id += 1
            elif entry[1] != cls and not self.file.readonly:
                # A reader maps names only: the class (retention) is the writer's business.
                moved.append((cls, entry[0]))
            sid[k] = entry[0]
        if new or moved:
            if self.file.readonly:
                raise HistoryError(
                    self.file.path,
                    f"{len(new)} tag names are not in the store (read-only), e.g. {new[0][1]!r}: "
                    "the writer registers them when it opens the store",
                )
            with self.file.transaction():
                db.executemany("INSERT INTO tags (id, name, class) VALUES (?, ?, ?)", new)
                db.executemany("UPDATE tags SET class = ? WHERE id = ?", moved)
        self.sid = sid

    def to_store(self, ids: np.ndarray) -> np.ndarray:
        """Store ids of a batch's TagDB ids (a copy: pending rows must not follow the caller's array)."""
        ids = np.asarray(ids, np.int64)
        if self.sid is None:
            return ids.copy()
        if ids.min() < 0 or ids.max() >= len(self.sid):
            raise ValueError(f"tag ids must be within 0-{len(self.sid) - 1}")
        return self.sid[ids]

    def store_id(self, tag: int | str) -> int:
        """The store's id of a tag: a name, or a TagDB id when the store was opened with names."""
        if isinstance(tag, str):
            with self.file.lock:
                row = self.file.db.execute("SELECT id FROM tags WHERE name = ?", (tag,)).fetchone()
            if row is None:
                raise KeyError(f"unknown tag {tag!r}")
            return int(row[0])
        tag = int(tag)
        if self.sid is None:
            return tag
        if not 0 <= tag < len(self.sid):
            raise KeyError(f"unknown tag id {tag}")
        return int(self.sid[tag])

    def names(self, pattern: str = "*") -> list[str]:
        """Tag names in the store matching a glob pattern (``*/lighting/*/power``), sorted."""
        with self.file.lock:
            rows = self.file.db.execute("SELECT name FROM tags WHERE name GLOB ? ORDER BY name", (pattern,))
            return [r[0] for r in rows]

    def ids_by_class(self) -> dict[str, list[int]]:
        """Store ids per tag class (for retention)."""
        by_class: dict[str, list[int]] = {}
        for i, cls in self.file.db.execute("SELECT id, class FROM tags"):
            by_class.setdefault(cls, []).append(i)
        return by_class
