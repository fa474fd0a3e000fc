"""Durable alarm journal (SQLite) and the persisted current state of every alarm instance.

Every transition and operator action is one :class:`JournalRow`; :meth:`Journal.record`
writes a batch of them in one transaction, together with the new current state of the alarm
instances they touched (:class:`StateRecord`, an upsert table keyed by alarm and device).
Both tables change in the same transaction, so after a crash the states and the journal
never disagree: either a batch is in both or in neither. On restart the engine reloads the
states with :meth:`Journal.load_states`: no alarm lost, none announced twice.

Schema version 2 added to the state table the one-shot shelve flag and the time and sequence
number of each instance's last event (the OPC UA EventId of a condition is derived from them,
so that an HMI sees the same EventIds after a restart). A version 1 file is migrated in place
when opened (three columns added, their defaults: not one-shot, no last event).

Durability: WAL with ``synchronous=NORMAL``. A committed transaction survives a crash of the
process (SIGKILL included); a power cut may lose the last transactions since the last WAL
checkpoint, never corrupt the file. ``synchronous="FULL"`` trades speed for that too.

Times are int64 nanoseconds UTC inside; ISO 8601 in the CSV export.
"""

from __future__ import annotations

import csv
import operator
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import numpy as np

from scada.alarms.states import State
from scada.sqlite_wal import HeaderError, Transaction, check_header, create_schema, where_clauses

SCHEMA_VERSION = 2
# Our file's identity in the SQLite header, so that another application's database is refused.
APPLICATION_ID = 0x5343_4A31  # "SCJ1"

# Time ranges are in every query, device and commune are the selective filters: indexed.
# Priority, state and service have a handful of values each: an index would not beat the
# time range, and every index costs the writer.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id       INTEGER PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    alarm    TEXT NOT NULL,
    device   TEXT NOT NULL,
    commune  TEXT NOT NULL,
    value    REAL,
    priority TEXT NOT NULL,
    severity INTEGER NOT NULL,
    event    TEXT NOT NULL,
    state    TEXT NOT NULL,
    "user"   TEXT NOT NULL,
    comment  TEXT NOT NULL,
    service  TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_time ON journal (time_ns);
CREATE INDEX IF NOT EXISTS journal_device ON journal (device, time_ns);
CREATE INDEX IF NOT EXISTS journal_commune ON journal (commune, time_ns);
CREATE TABLE IF NOT EXISTS alarm_state (
    alarm            TEXT NOT NULL,
    device           TEXT NOT NULL,
    state            TEXT NOT NULL,
    active           INTEGER NOT NULL,
    acked            INTEGER NOT NULL,
    since_ns         INTEGER,
    shelved_until_ns INTEGER,
    shelve_user      TEXT NOT NULL,
    shelve_reason    TEXT NOT NULL,
    assigned_to      TEXT NOT NULL,
    last_value       REAL,
    one_shot         INTEGER NOT NULL DEFAULT 0,
    last_event_ns    INTEGER,
    event_seq        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (alarm, device)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "time_ns",
    "alarm",
    "device",
    "commune",
    "value",
    "priority",
    "severity",
    "event",
    "state",
    "user",
    "comment",
    "service",
    "message",
)
_STATE_COLUMNS = (
    "alarm",
    "device",
    "state",
    "active",
    "acked",
    "since_ns",
    "shelved_until_ns",
    "shelve_user",
    "shelve_reason",
    "assigned_to",
    "last_value",
    "one_shot",
    "last_event_ns",
    "event_seq",
)
# Version 1 -> 2: the columns schema 2 added to alarm_state (defaults as in _SCHEMA).
_MIGRATE_1_TO_2 = (
    "ALTER TABLE alarm_state ADD COLUMN one_shot INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE alarm_state ADD COLUMN last_event_ns INTEGER",
    "ALTER TABLE alarm_state ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0",
)


def _q(column: str) -> str:
    return f'"{column}"'


_INSERT = f"INSERT INTO journal ({', '.join(_q(c) for c in _COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPSERT = (
    f"INSERT OR REPLACE INTO alarm_state ({', '.join(_STATE_COLUMNS)}) VALUES ({', '.join('?' * len(_STATE_COLUMNS))})"
)
_SELECT = f"SELECT {', '.join(_q(c) for c in _COLUMNS)} FROM journal"
# Filters of query(), columns() and export_csv(): each is the column of the same name.
_FILTERS = ("commune", "device", "priority", "state", "service", "alarm", "event", "user")


class JournalError(Exception):
    """The journal cannot be opened, read or written; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"alarm journal {self.path}: {reason}")


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One transition or operator action of one alarm instance, as journalled.

    ``event`` is an :class:`~scada.alarms.states.Event` name or an action that changes no
    state ('NOTE', 'ASSIGN'); ``state`` is the State name after it; ``user`` is '' for the
    system (process events, shelve expiry, suppression by design).
    """

    time_ns: int
    alarm: str
    device: str
    commune: str
    value: float | None
    priority: str
    severity: int
    event: str
    state: str
    user: str = ""
    comment: str = ""
    service: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        # Cheap checks only (this is built per transition): the time must be an integer
        # (numpy ints included); event and state must say something.
        operator.index(self.time_ns)
        if not self.event or not self.state:
            raise ValueError(f"journal row for {self.alarm}@{self.device}: event and state are required")


Key = tuple[str, str]  # (alarm definition name, device name)


@dataclass(frozen=True, slots=True)
class StateRecord:
    """The persisted current state of one alarm instance (key: alarm name, device name).

    ``since_ns`` is the time of the activation that started the current episode (None when
    normal); ``shelved_until_ns`` the shelve expiry (None: not shelved, or shelved without
    expiry if the state is SHELVED); ``one_shot`` a shelve that ends when the condition
    returns to normal; ``last_event_ns`` and ``event_seq`` the time and the per-instance
    sequence number of the instance's last event (its OPC UA EventId is derived from them).
    """

    state: State
    active: bool = False
    acked: bool = True
    since_ns: int | None = None
    shelved_until_ns: int | None = None
    shelve_user: str = ""
    shelve_reason: str = ""
    assigned_to: str = ""
    last_value: float | None = None
    one_shot: bool = False
    last_event_ns: int | None = None
    event_seq: int = 0


# State -> its name as stored; a dict so that a numpy integer state works and a bad one fails.
_STATE_NAME = {int(s): s.name for s in State}


def _row_tuple(r: JournalRow) -> tuple:
    # int()/float() because numpy scalars are what the engine has at hand, and sqlite3 does
    # not bind numpy integers.
    v = r.value
    return (
        int(r.time_ns),
        r.alarm,
        r.device,
        r.commune,
        None if v is None else float(v),
        r.priority,
        int(r.severity),
        r.event,
        r.state,
        r.user,
        r.comment,
        r.service,
        r.message,
    )


def _state_tuple(key: Key, s: StateRecord) -> tuple:
    # Built per touched instance on the engine's hot path: no Enum calls, no helper calls.
    since, until, last, last_ev = s.since_ns, s.shelved_until_ns, s.last_value, s.last_event_ns
    try:
        state = _STATE_NAME[s.state]
    except (KeyError, TypeError):
        raise ValueError(f"alarm state of {key[0]}@{key[1]}: not a State ({s.state!r})") from None
    return (
        key[0],
        key[1],
        state,
        1 if s.active else 0,
        1 if s.acked else 0,
        None if since is None else int(since),
        None if until is None else int(until),
        s.shelve_user,
        s.shelve_reason,
        s.assigned_to,
        None if last is None else float(last),
        1 if s.one_shot else 0,
        None if last_ev is None else int(last_ev),
        int(s.event_seq),
    )


def _state_items(states: Mapping[Key, StateRecord] | Iterable[tuple[Key, StateRecord]]):
    return states.items() if isinstance(states, Mapping) else states


def iso_utc(time_ns: int) -> str:
    """ISO 8601 UTC with microseconds, e.g. 2026-11-28T17:04:05.123456Z."""
    s, ns = divmod(int(time_ns), 1_000_000_000)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


class Journal:
    """The alarm journal and current-state table in one SQLite file.

    One writer (the alarm engine). Calls are serialised by a lock, so the engine may move
    writes to a worker thread; SQLite's WAL lets readers (reports, exports) run beside it.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        if not self.path.parent.is_dir():
            raise JournalError(self.path, f"folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise JournalError(self.path, "is a folder, not a journal file")
        self._lock = threading.Lock()
        self._synchronous = synchronous.upper()
        self._db = self._connect()

    def _connect(self, existing: bool = False) -> sqlite3.Connection:
        # existing: open the file only if it is there (mode=rw), never create an empty journal
        # in its place (a file system that is not mounted again yet leaves its empty mount point).
        target, uri = (f"file:{quote(str(self.path.absolute()))}?mode=rw", True) if existing else (self.path, False)
        try:
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri)
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"cannot open: {exc}") from None
        self._db = db
        try:
            self._init_schema(self._synchronous)
        except sqlite3.OperationalError as exc:  # the disk (full, read-only...), not the file's content
            db.close()
            raise JournalError(self.path, f"cannot open: {exc}") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalError(self.path, f"not a usable SQLite journal ({exc})") from None
        except JournalError:
            db.close()
            raise
        return db

    def reopen(self) -> None:
        """Close the file and open it again (JournalError if that fails; the journal then stays
        closed and every call raises JournalError until a reopen succeeds).

        After a storage fault: a file system that went read-only on an error is repaired and
        mounted again, and only a new file descriptor reaches it.
        """
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover - closing a broken connection
                pass
            self._db = self._connect(existing=True)

    def _init_schema(self, synchronous: str) -> None:
        db = self._db
        try:
            check_header(db, APPLICATION_ID, SCHEMA_VERSION, "an alarm journal", "journal")
        except HeaderError as exc:
            if not self._migrate():
                raise JournalError(self.path, str(exc)) from None
        if not create_schema(db, _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, synchronous):
            raise JournalError(self.path, "cannot switch the file to WAL mode")

    def _migrate(self) -> bool:
        """Bring a version 1 journal of ours to version 2 (one transaction); False if it is not one."""
        db = self._db
        if (
            db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID
            or db.execute("PRAGMA user_version").fetchone()[0] != 1
        ):
            return False
        try:
            with Transaction(db):
                for stmt in _MIGRATE_1_TO_2:
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"cannot migrate the journal from schema version 1: {exc}") from None
        return True

    # -- writing -------------------------------------------------------------------------

    def record(
        self,
        rows: Sequence[JournalRow],
        states: Mapping[Key, StateRecord] | Iterable[tuple[Key, StateRecord]] | None = None,
    ) -> None:
        """Append ``rows`` and upsert ``states`` in one transaction: all of it or none of it."""
        journal = [_row_tuple(r) for r in rows]
        current = [_state_tuple(k, s) for k, s in _state_items(states)] if states is not None else []
        if not journal and not current:
            return
        self._write(journal, current)

    def save_states(self, states: Mapping[Key, StateRecord] | Iterable[tuple[Key, StateRecord]]) -> None:
        """Upsert current states without journal rows (e.g. a snapshot at shutdown)."""
        current = [_state_tuple(k, s) for k, s in _state_items(states)]
        if current:
            self._write([], current)

    def delete_states(self, keys: Iterable[Key]) -> None:
        """Forget the current state of alarm instances that no longer exist in the configuration."""
        keys = [(a, d) for a, d in keys]
        with self._lock:
            self._transaction(lambda db: db.executemany("DELETE FROM alarm_state WHERE alarm = ? AND device = ?", keys))

    def _write(self, journal: list[tuple], current: list[tuple]) -> None:
        def work(db: sqlite3.Connection) -> None:
            if journal:
                db.executemany(_INSERT, journal)
            if current:
                db.executemany(_UPSERT, current)

        with self._lock:
            self._transaction(work)

    def _transaction(self, work) -> None:
        db = self._db
        try:
            with Transaction(db):
                work(db)
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"write failed, nothing of the batch was stored: {exc}") from None

    # -- reading -------------------------------------------------------------------------

    def load_states(self) -> dict[Key, StateRecord]:
        """The persisted current state of every alarm instance, keyed by (alarm, device)."""
        out: dict[Key, StateRecord] = {}
        with self._lock:
            rows = self._read(f"SELECT {', '.join(_STATE_COLUMNS)} FROM alarm_state ORDER BY alarm, device", ())
        for (
            alarm,
            device,
            state,
            active,
            acked,
            since,
            until,
            suser,
            sreason,
            assigned,
            last,
            one_shot,
            last_ev,
            seq,
        ) in rows:
            try:
                s = State[state]
            except KeyError:
                raise JournalError(self.path, f"unknown alarm state {state!r} for {alarm}@{device}") from None
            out[(alarm, device)] = StateRecord(
                s, bool(active), bool(acked), since, until, suser, sreason, assigned, last, bool(one_shot), last_ev, seq
            )
        return out

    def query(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        commune: str | Iterable[str] | None = None,
        device: str | Iterable[str] | None = None,
        priority: str | Iterable[str] | None = None,
        state: str | Iterable[str] | None = None,
        service: str | Iterable[str] | None = None,
        alarm: str | Iterable[str] | None = None,
        event: str | Iterable[str] | None = None,
        user: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[JournalRow]:
        """Rows with ``start_ns <= time_ns < end_ns`` matching every filter given, in time order.

        A filter is one value or several (any of them matches).
        """
        sql, params = self._where(
            start_ns,
            end_ns,
            dict(
                commune=commune,
                device=device,
                priority=priority,
                state=state,
                service=service,
                alarm=alarm,
                event=event,
                user=user,
            ),
            limit,
            ordered=True,
        )
        with self._lock:
            rows = self._read(_SELECT + sql, params)
        return [JournalRow(*r) for r in rows]

    def last_rows(self, end_ns: int | None = None, *, event: str | Iterable[str] | None = None) -> list[JournalRow]:
        """The latest row of each alarm instance before ``end_ns`` (among ``event`` if given).

        What each instance's condition or state was at a time in the past, in one pass of
        SQLite over the journal instead of shipping every row to Python.
        """
        where, params = self._where(None, end_ns, {"event": event})
        cols = ", ".join(_q(c) for c in _COLUMNS)
        sql = (
            f"SELECT {cols} FROM (SELECT {cols}, ROW_NUMBER() OVER (PARTITION BY alarm, device "
            f"ORDER BY time_ns DESC, id DESC) AS rank FROM journal{where}) WHERE rank = 1 ORDER BY alarm, device"
        )
        with self._lock:
            rows = self._read(sql, params)
        return [JournalRow(*r) for r in rows]

    def columns(
        self, start_ns: int | None = None, end_ns: int | None = None, *, names: Sequence[str] = _COLUMNS, **filters
    ) -> dict[str, np.ndarray]:
        """The same selection as :meth:`query`, as one numpy array per column (for metrics).

        Integer columns are int64, ``value`` float64 (NaN for none), text columns object arrays.
        """
        for n in names:
            if n not in _COLUMNS:
                raise ValueError(f"unknown journal column {n!r}")
        limit = filters.pop("limit", None)
        self._check_filters(filters)
        sql, params = self._where(start_ns, end_ns, filters, limit, ordered=True)
        with self._lock:
            rows = self._read(f"SELECT {', '.join(_q(c) for c in names)} FROM journal" + sql, params)
        out: dict[str, np.ndarray] = {}
        cols = list(zip(*rows)) if rows else [()] * len(names)
        for n, col in zip(names, cols):
            if n in ("time_ns", "severity"):
                out[n] = np.fromiter(col, dtype=np.int64, count=len(col))
            elif n == "value":
                out[n] = np.array([np.nan if v is None else v for v in col], dtype=np.float64)
            else:
                arr = np.empty(len(col), dtype=object)
                arr[:] = col
                out[n] = arr
        return out

    def export_csv(self, out: TextIO, start_ns: int | None = None, end_ns: int | None = None, **filters) -> int:
        """Write the selection as CSV (a header line, ISO 8601 UTC times); returns the row count.

        ``time`` is ISO 8601 with microseconds; ``time_ns`` keeps the exact nanoseconds.
        """
        limit = filters.pop("limit", None)
        self._check_filters(filters)
        sql, params = self._where(start_ns, end_ns, filters, limit, ordered=True)
        with self._lock:
            rows = self._read(_SELECT + sql, params)
        w = csv.writer(out, lineterminator="\n")
        w.writerow(("time", *_COLUMNS))
        for r in rows:
            w.writerow((iso_utc(r[0]), *r[:4], "" if r[4] is None else repr(r[4]), *r[5:]))
        return len(rows)

    def newest_ns(self) -> int | None:
        """Time of the latest row (None for an empty journal)."""
        with self._lock:
            return self._read("SELECT MAX(time_ns) FROM journal", ())[0][0]

    def count(self) -> int:
        """Number of journal rows."""
        with self._lock:
            return self._read("SELECT COUNT(*) FROM journal", ())[0][0]

    def close(self) -> None:
        """Close the file (committed rows are already durable)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _check_filters(filters: Mapping[str, Any]) -> None:
        unknown = set(filters) - set(_FILTERS)
        if unknown:
            raise TypeError(f"unknown journal filter {sorted(unknown)[0]!r} (filters: {', '.join(_FILTERS)})")

    @staticmethod
    def _where(
        start_ns: int | None,
        end_ns: int | None,
        filters: Mapping[str, Any],
        limit: int | None = None,
        ordered: bool = False,
    ) -> tuple[str, list[int | str]]:
        """WHERE clause and parameters; with ``ordered``, in time order (and LIMIT if given)."""
        clauses, params = where_clauses(start_ns, end_ns, filters, _FILTERS)
        sql = " WHERE " + " AND ".join(clauses) if clauses else ""
        if not ordered:
            return sql, params
        sql += " ORDER BY time_ns, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return sql, params

    def _read(self, sql: str, params) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"read failed: {exc}") from None


# The journal's column names in order (also the CSV header after 'time').
COLUMNS = _COLUMNS
if tuple(f.name for f in fields(JournalRow)) != _COLUMNS:  # the SQL and the dataclass must agree
    raise RuntimeError("JournalRow fields and journal columns differ")
