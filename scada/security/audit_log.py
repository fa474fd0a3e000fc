"""The audit trail: append-only SQLite, each record chained to the previous one by a hash.

``hash = sha256(prev_hash || canonical_record(record))`` (the previous record's 32-byte digest,
32 zero bytes for the first, then the record's canonical JSON, :func:`scada.security.audit.canonical_record`).
An edited, deleted or reordered record breaks the chain where it happened: :meth:`AuditLog.verify`
names each problem and its record. What the chain cannot show by itself: a trail cut at its
end, or rewritten whole from the first altered record on (hashes recomputed). ``scada audit --verify``
prints the count and the last hash: kept elsewhere (a ticket, a printed report), they make
those detectable too.

Several writers at once (the server, and ``scada user`` / ``scada pki`` writing their changes
directly): each append is one ``BEGIN IMMEDIATE`` transaction that reads the last hash and
inserts after it, so the chain stays one chain. Triggers refuse UPDATE and DELETE (a mistake
with a SQL shell; someone who drops them is caught by the chain).

Durability: WAL, ``synchronous=FULL`` by default (records are few; a power cut keeps every
committed one). The server writes through :class:`AuditTrail`, never on its event loop.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import sqlite3
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import structlog

from scada.alarms.journal import iso_utc
from scada.csv_cells import safe_row
from scada.security.audit import FIELDS, AuditRecord, canonical_record, lost_record
from scada.sqlite_wal import HeaderError, Transaction, check_header, create_schema, where_clauses

log = structlog.get_logger("scada.security")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x5343_4131  # "SCA1": an audit trail of this server
GENESIS = bytes(32)  # the "previous hash" of the first record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq             INTEGER PRIMARY KEY,
    time_ns         INTEGER NOT NULL,
    action          TEXT NOT NULL,
    "user"          TEXT NOT NULL,
    roles           TEXT NOT NULL,
    session         TEXT NOT NULL,
    client_address  TEXT NOT NULL,
    cert_thumbprint TEXT NOT NULL,
    target          TEXT NOT NULL,
    arguments       TEXT NOT NULL,
    result          TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ns);
CREATE INDEX IF NOT EXISTS audit_user ON audit ("user", time_ns)
"""
# Apart from _SCHEMA: create_schema splits on ";", which a trigger's body holds.
_GUARDS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS audit_no_{verb.lower()} BEFORE {verb} ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
    for verb in ("UPDATE", "DELETE")
)
# Columns of the record, in FIELDS order ("user" quoted: an SQL keyword).
_RECORD_COLUMNS = ", ".join(f'"{f}"' for f in FIELDS)
_INSERT = f"INSERT INTO audit (seq, {_RECORD_COLUMNS}, prev_hash, hash) VALUES ({', '.join('?' * (len(FIELDS) + 3))})"
_SELECT = f"SELECT seq, {_RECORD_COLUMNS}, prev_hash, hash FROM audit"
FILTERS = ("user", "action", "result", "session", "client_address", "target")
# The CSV export's columns after ``time`` (ISO 8601): the record, its place and its hash.
CSV_COLUMNS = ("seq", *FIELDS, "hash")


class AuditError(Exception):
    """The trail cannot be opened, read or written; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"audit trail {self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One place where the chain does not hold: ``seq`` the record where it shows, ``kind``
    one of "edited", "deleted", "swapped", "start", "chain"."""

    seq: int
    kind: str
    message: str


@dataclasses.dataclass(frozen=True)
class Entry:
    """A stored record with its place in the chain."""

    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


def chain_hash(prev: bytes, rec: AuditRecord) -> bytes:
    """The record's hash after ``prev`` (a 32-byte digest)."""
    return hashlib.sha256(prev + canonical_record(rec).encode("utf-8")).digest()


def _row(rec: AuditRecord) -> list[Any]:
    values: list[Any] = [getattr(rec, f) for f in FIELDS]
    values[FIELDS.index("roles")] = ",".join(rec.roles)
    return values


def _entry(row: Sequence[Any]) -> Entry:
    seq, *values, prev, h = row
    roles_at = FIELDS.index("roles")
    values[roles_at] = tuple(values[roles_at].split(",")) if values[roles_at] else ()
    return Entry(seq, AuditRecord(*values), prev, h)


class AuditLog:
    """The trail in one SQLite file: :meth:`append`, :meth:`verify`, queries and the CSV export.

    Thread-safe (one connection behind a lock). ``read_only`` opens an existing file without
    writing anything (``scada audit``).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", read_only: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        if read_only and not self.path.is_file():
            raise AuditError(self.path, "no such file (the server writes it in its --data folder)")
        if not self.path.parent.is_dir():
            raise AuditError(self.path, f"folder {self.path.parent} does not exist")
        self._lock = threading.Lock()
        target = f"file:{quote(str(self.path.absolute()))}?mode={'ro' if read_only else 'rwc'}"
        try:
            # timeout: how long an append waits for another writer's transaction (SQLite's busy wait)
            self._db = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False, timeout=timeout)
        except sqlite3.Error as exc:
            raise AuditError(self.path, f"cannot open: {exc}") from None
        try:
            ours = check_header(self._db, APPLICATION_ID, SCHEMA_VERSION, "an audit trail", "audit trail")
            if read_only:
                if not ours:
                    raise AuditError(self.path, "is not an audit trail (empty file)")
            elif not create_schema(self._db, _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, synchronous.upper()):
                raise AuditError(self.path, "cannot switch the file to WAL mode")
            else:
                for guard in _GUARDS:
                    self._db.execute(guard)
        except BaseException as exc:
            self._db.close()
            raise self._open_error(exc) from None

    def _open_error(self, exc: BaseException) -> BaseException:
        """What opening the file failed with, said as an AuditError naming the file."""
        if isinstance(exc, HeaderError):
            return AuditError(self.path, str(exc))
        if isinstance(exc, sqlite3.OperationalError):  # the disk (full, read-only...), not the file's content
            return AuditError(self.path, f"cannot open: {exc}")
        if isinstance(exc, sqlite3.DatabaseError):
            return AuditError(self.path, f"not a usable audit trail ({exc})")
        return exc

    # -- writing -------------------------------------------------------------------------

    def append(self, records: Iterable[AuditRecord]) -> int:
        """Append ``records`` after the last one, chained, in one transaction (all or none);
        returns the last record's seq. Safe beside other processes appending to the same file."""
        records = list(records)
        with self._lock:
            db = self._db
            try:
                with Transaction(db):  # the write lock first: nobody appends between read and insert
                    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev = (last[0], bytes.fromhex(last[1])) if last else (0, GENESIS)
                    rows = []
                    for rec in records:
                        seq += 1
                        h = chain_hash(prev, rec)
                        rows.append((seq, *_row(rec), prev.hex(), h.hex()))
                        prev = h
                    db.executemany(_INSERT, rows)
            except (sqlite3.Error, ValueError) as exc:
                raise AuditError(self.path, f"write failed, none of {len(records)} record(s) stored: {exc}") from None
            return seq

    # -- checking ------------------------------------------------------------------------

    def verify(self) -> list[Problem]:
        """Every place where the chain does not hold, in order; [] for an intact trail."""
        problems: list[Problem] = []
        prev_seq, prev_hash = 0, GENESIS.hex()
        for e in self._entries(_SELECT + " ORDER BY seq", ()):
            if e.seq != prev_seq + 1:
                first = "the trail starts at record" if prev_seq == 0 else f"after record {prev_seq} comes"
                problems.append(
                    Problem(e.seq, "deleted", f"{first} {e.seq}: record(s) {prev_seq + 1}..{e.seq - 1} deleted")
                )
            elif e.prev_hash != prev_hash:
                if prev_seq == 0:
                    problems.append(Problem(e.seq, "start", f"record {e.seq} does not start the chain"))
                else:
                    problems.append(
                        Problem(e.seq, "chain", f"record {e.seq} does not follow record {prev_seq} (moved or replaced)")
                    )
            if _hash_of(e) != e.hash:
                problems.append(Problem(e.seq, "edited", f"record {e.seq} was altered (its hash does not match it)"))
            prev_seq, prev_hash = e.seq, e.hash
        return self._swaps(problems)

    def _swaps(self, problems: list[Problem]) -> list[Problem]:
        """Two neighbours exchanged (whole rows, or only their contents) read better as one
        "swapped" problem than as the several chain breaks it makes."""
        flagged = sorted({p.seq for p in problems})
        swapped: set[int] = set()
        relinked: set[int] = set()  # the record after a pair of moved rows: its link break is the swap's
        for a in flagged:
            if a in swapped or a + 1 not in flagged:
                continue
            rows = {e.seq: e for e in self._entries(_SELECT + " WHERE seq BETWEEN ? AND ?", (a - 1, a + 2))}
            x, y = rows.get(a), rows.get(a + 1)
            if x is None or y is None:
                continue
            before = rows[a - 1].hash if a - 1 in rows else GENESIS.hex()
            after = rows.get(a + 2)
            # Whole rows exchanged: each is intact, in the other's place.
            rows_swapped = (
                y.prev_hash == before and x.prev_hash == y.hash and (after is None or after.prev_hash == x.hash)
            )
            # Contents exchanged, hashes left in place: each content fits the other's link.
            contents_swapped = _hash_of(dataclasses.replace(x, record=y.record)) == x.hash and (
                _hash_of(dataclasses.replace(y, record=x.record)) == y.hash
            )
            if rows_swapped or contents_swapped:
                swapped |= {a, a + 1}
                if rows_swapped:
                    relinked.add(a + 2)
                problems.append(Problem(a, "swapped", f"records {a} and {a + 1} were swapped"))
        kept = [
            p
            for p in problems
            if p.kind == "swapped" or (p.seq not in swapped and not (p.seq in relinked and p.kind == "chain"))
        ]
        return sorted(kept, key=lambda p: (p.seq, p.kind != "swapped"))

    def head(self) -> tuple[int, str]:
        """(record count, last hash): what to note elsewhere to detect a cut or rewritten end."""
        with self._lock:
            row = self._read("SELECT COUNT(*), (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1) FROM audit", ())[0]
        return int(row[0]), row[1] or GENESIS.hex()

    # -- reading -------------------------------------------------------------------------

    def query(
        self, start_ns: int | None = None, end_ns: int | None = None, limit: int | None = None, **filters
    ) -> list[Entry]:
        """Records with ``start_ns <= time_ns < end_ns`` matching every filter (:data:`FILTERS`;
        one value or several), in order."""
        sql, params = _where(start_ns, end_ns, filters, limit)
        return list(self._entries(_SELECT + sql, params))

    def export_csv(self, out: TextIO, start_ns: int | None = None, end_ns: int | None = None, **filters) -> int:
        """The selection as CSV (a header, then ``time`` ISO 8601 UTC and :data:`CSV_COLUMNS`); the row count.
        A text cell that starts like a spreadsheet formula gets a leading ``'`` (scada/csv_cells.py)."""
        limit = filters.pop("limit", None)
        sql, params = _where(start_ns, end_ns, filters, limit)
        w = csv.writer(out, lineterminator="\n")
        w.writerow(("time", *CSV_COLUMNS))
        n = 0
        for e in self._entries(_SELECT + sql, params):
            r = e.record
            cells = (iso_utc(r.time_ns), e.seq, *(",".join(v) if f == "roles" else v for f, v in _items(r)), e.hash)
            w.writerow(safe_row(cells))  # a client's text never runs as a spreadsheet formula
            n += 1
        return n

    def _entries(self, sql: str, params: Sequence[Any]) -> Iterator[Entry]:
        """Entries page by page (a long trail never sits in memory at once)."""
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise AuditError(self.path, f"read failed: {exc}") from None
        while True:
            with self._lock:
                try:
                    page = cur.fetchmany(10_000)
                except sqlite3.Error as exc:
                    raise AuditError(self.path, f"read failed: {exc}") from None
            if not page:
                return
            yield from (_entry(r) for r in page)

    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise AuditError(self.path, f"read failed: {exc}") from None

    def close(self) -> None:
        """Close the file (appended records are already durable)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _items(rec: AuditRecord) -> Iterator[tuple[str, Any]]:
    return ((f, getattr(rec, f)) for f in FIELDS)


def _hash_of(e: Entry) -> str:
    try:
        prev = bytes.fromhex(e.prev_hash)
    except ValueError:  # an edited link is not even hex: it matches nothing
        return ""
    return chain_hash(prev, e.record).hex()


def _where(start_ns: int | None, end_ns: int | None, filters: dict[str, Any], limit: int | None) -> tuple[str, list]:
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown audit filter {sorted(unknown)[0]!r} (filters: {', '.join(FILTERS)})")
    clauses, params = where_clauses(start_ns, end_ns, filters, FILTERS)
    sql = (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return sql, params


class AuditTrail:
    """The server's AuditSink onto an :class:`AuditLog`: :meth:`record` returns at once, a
    worker thread appends (never the event loop: a transaction with ``synchronous=FULL`` waits
    for the disk).

    Bounded: at most ``max_backlog`` records wait; beyond, records are dropped and counted,
    and once writing works again one ``audit_lost`` record says in the trail how many. A
    write that fails (a full disk, an unwritable file) is logged once, counted, and retried
    every ``retry_s`` with the records kept; the server keeps running meanwhile. The file is
    opened by the first write: an unusable one is such a failure, not a start-up error.
    The worker thread ends when nothing has come for LINGER_S, and starts again with the next record.
    """

    BATCH = 500  # records per transaction
    LINGER_S = 5.0  # an idle writer thread ends after this long without a record

    def __init__(self, path: str | Path, *, max_backlog: int = 10_000, retry_s: float = 1.0, synchronous: str = "FULL"):
        self.path = Path(path)
        self.max_backlog = max_backlog
        self.retry_s = retry_s
        self.synchronous = synchronous
        self._pending: deque[AuditRecord] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._log: AuditLog | None = None
        self._closed = False
        self._lost = 0  # dropped since the last audit_lost record
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error = ""

    def record(self, rec: AuditRecord) -> None:
        with self._cond:
            if self._closed or len(self._pending) >= self.max_backlog:
                self.dropped += 1
                self._lost += 1
                if self._lost == 1:
                    log.error(
                        "audit_records_dropped", trail=str(self.path), backlog=len(self._pending), closed=self._closed
                    )
                return
            self._pending.append(rec)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
                self._thread.start()
            else:
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closed:
                    # Linger before ending: records come in bursts (a group action audits one per
                    # device as each finishes), and starting a thread per record blocks the event
                    # loop in Thread.start until the new thread runs (seen in a profile of a
                    # city-wide command).
                    self._cond.wait_for(lambda: self._pending or self._closed, self.LINGER_S)
                if not self._pending:
                    self._thread = None
                    self._cond.notify_all()
                    return
                batch = list(islice(self._pending, self.BATCH))
                lost = self._lost
            if lost:
                batch.append(lost_record(lost))
            try:
                if self._log is None:
                    self._log = AuditLog(self.path, synchronous=self.synchronous)
                self._log.append(batch)
            except (AuditError, OSError) as exc:
                with self._cond:
                    self.failures += 1
                    if not self.last_error:
                        log.error(
                            "audit_trail_write_failed", trail=str(self.path), error=str(exc), backlog=len(self._pending)
                        )
                    self.last_error = str(exc)
                    if self._closed:  # stopping: what is still pending is lost (said in the log)
                        log.error("audit_records_lost_at_stop", trail=str(self.path), records=len(self._pending))
                        self._pending.clear()
                        continue
                    self._cond.wait(self.retry_s)  # close() wakes it up
                continue
            with self._cond:
                for _ in range(len(batch) - (1 if lost else 0)):
                    self._pending.popleft()
                self._lost -= lost
                self.written += len(batch)
                if self.last_error:
                    log.info("audit_trail_write_recovered", trail=str(self.path), failures=self.failures)
                    self.last_error = ""
                self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record given so far is written (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what waits (one more try if writing fails), then stop; later records are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stats(self) -> dict[str, int]:
        """Counters for the status line."""
        with self._cond:
            backlog = len(self._pending)
        return {
            "audit_written": self.written,
            "audit_dropped": self.dropped,
            "audit_write_failures": self.failures,
            "audit_backlog": backlog,
        }


class CommandAudit:
    """The sink of a command line tool (``scada user``, ``scada pki``): each record appended to the
    trail at once (a short run: no writer thread). A trail that cannot be written is said on
    stderr and counted in ``failed``; the change itself is already made and stays."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.failed = 0

    def record(self, rec: AuditRecord) -> None:
        try:
            with AuditLog(self.path) as log:
                log.append([rec])
        except (AuditError, OSError, sqlite3.Error) as exc:
            self.failed += 1
            print(f"audit trail {self.path}: not recorded: {exc}", file=sys.stderr)
