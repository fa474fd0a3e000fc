"""The work-order journal: ``<data>/workorders.sqlite`` (application id "SCW1").

Three tables:

* ``orders``: the current state of every order, one row per order (upserted);
* ``order_events``: every transition and note (:class:`~scada.operations.model.OrderEvent`),
  append-only: who did what when, the source of the contract's delays;
* ``reports``: the citizens' reports; their contact columns are nulled by the purge.

:class:`OrderJournal` is the file (one connection behind a lock: readers in threads, one
writer); :class:`OrderWriter` is how the server writes it: :meth:`OrderWriter.submit` returns at
once and a worker thread writes each batch in one transaction. Why a thread and not the alarm
journal's way (a synchronous commit on the event loop plus a backlog): a commit waits for the
disk, and a failing disk (an NFS mount hanging, a controller resetting) would stall the loop that
polls the field; orders are few, so one thread that coalesces what waits costs nothing. On a
write error what waits is kept (nothing is lost while the disk fails: current states one per
order, events and reports in order, bounded by ``MAX_EVENTS`` beyond which the oldest events are
dropped and counted) and retried every ``retry_s``; the owner sees ``failing`` and raises its
storage alarm.

Times are int64 nanoseconds UTC (the operations clock); ISO 8601 in the CSV export.
"""

from __future__ import annotations

import csv
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import structlog

from scada.alarms.journal import iso_utc
from scada.csv_cells import safe_row
from scada.operations.model import CONTACT_FIELDS, FINAL, CitizenReport, OrderEvent, OrderState, WorkOrder
from scada.sqlite_wal import HeaderError, Transaction, check_header, create_schema, where_clauses

log = structlog.get_logger("scada.operations")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x5343_5731  # "SCW1": a work-order journal of this server
JOURNAL_FILE = "workorders.sqlite"

ORDER_COLUMNS = tuple(WorkOrder.__dataclass_fields__)
EVENT_COLUMNS = ("time_ns", "order_id", "event", "from_state", "to_state", "user", "crew", "detail")
REPORT_COLUMNS = ("id", "service_code", "description", "lat", "lon", "address", "requested_ns", "order_id", "client")
_INT_ORDER = {"origin_ns", "created_ns", "on_site_due_ns", "repaired_due_ns", "assigned_ns", "accepted_ns"}
_INT_ORDER |= {"en_route_ns", "on_site_ns", "repaired_ns", "closed_ns", "warned", "breached", "alarms"}


def _q(c: str) -> str:
    return f'"{c}"'


def _order_column(c: str) -> str:
    if c in ("lat", "lon"):
        return f"{_q(c)} REAL"
    if c in _INT_ORDER:
        return f"{_q(c)} INTEGER NOT NULL"
    if c in ("device", "crew"):
        return f"{_q(c)} TEXT"
    return f"{_q(c)} TEXT NOT NULL"  # state as its label, reports comma-separated


# Orders are queried by state, service, commune and device (the CLI, the restart's open orders),
# events by order: indexed. One index on the events' time for the KPIs' month reads.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS orders (
    {", ".join(_order_column(c) if c != "id" else '"id" TEXT PRIMARY KEY' for c in ORDER_COLUMNS)}
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_state ON orders (state, created_ns);
CREATE INDEX IF NOT EXISTS orders_device ON orders (device, created_ns);
CREATE INDEX IF NOT EXISTS orders_commune ON orders (commune, created_ns);
CREATE TABLE IF NOT EXISTS order_events (
    id         INTEGER PRIMARY KEY,
    time_ns    INTEGER NOT NULL,
    order_id   TEXT NOT NULL,
    event      TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    "user"     TEXT NOT NULL,
    crew       TEXT,
    detail     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_events_order ON order_events (order_id, id);
CREATE INDEX IF NOT EXISTS order_events_time ON order_events (time_ns);
CREATE TABLE IF NOT EXISTS reports (
    id           TEXT PRIMARY KEY,
    service_code TEXT NOT NULL,
    description  TEXT NOT NULL,
    lat          REAL,
    lon          REAL,
    address      TEXT NOT NULL,
    requested_ns INTEGER NOT NULL,
    order_id     TEXT,
    client       TEXT NOT NULL,
    email        TEXT,
    first_name   TEXT,
    last_name    TEXT,
    phone        TEXT,
    purged_ns    INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_time ON reports (requested_ns);
CREATE INDEX IF NOT EXISTS reports_order ON reports (order_id)
"""

_UPSERT_ORDER = (
    f"INSERT OR REPLACE INTO orders ({', '.join(_q(c) for c in ORDER_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ORDER_COLUMNS))})"
)
_INSERT_EVENT = f"INSERT INTO order_events ({', '.join(_q(c) for c in EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
_REPORT_ALL = (*REPORT_COLUMNS, *CONTACT_FIELDS)
_UPSERT_REPORT = (
    f"INSERT OR REPLACE INTO reports ({', '.join(_REPORT_ALL)}) VALUES ({', '.join('?' * len(_REPORT_ALL))})"
)
_PURGE = f"UPDATE reports SET {', '.join(f'{c} = NULL' for c in CONTACT_FIELDS)}, purged_ns = ? WHERE id = ?"
_SELECT_ORDERS = f"SELECT {', '.join(_q(c) for c in ORDER_COLUMNS)} FROM orders"
_SELECT_EVENTS = f"SELECT {', '.join(_q(c) for c in EVENT_COLUMNS)} FROM order_events"
ORDER_FILTERS = ("state", "service", "commune", "device", "source", "crew", "priority")
_STATE_OF_LABEL = {s.label: s for s in OrderState}
_FINAL_LABELS = tuple(s.label for s in FINAL)


class OrderJournalError(Exception):
    """The journal cannot be opened, read or written; names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"work-order journal {self.path}: {reason}")


def _order_row(o: WorkOrder) -> tuple:
    values: list[Any] = []
    for c in ORDER_COLUMNS:
        v = getattr(o, c)
        if c == "state":
            v = o.state.label
        elif c == "reports":
            v = ",".join(o.reports)
        elif c in ("warned", "breached"):
            v = int(bool(v))
        values.append(v)
    return tuple(values)


def _order_of(row: Sequence[Any]) -> WorkOrder:
    values = dict(zip(ORDER_COLUMNS, row, strict=True))
    values["state"] = _STATE_OF_LABEL[values["state"]]
    values["reports"] = tuple(r for r in values["reports"].split(",") if r)
    values["warned"], values["breached"] = bool(values["warned"]), bool(values["breached"])
    return WorkOrder(**values)


def _event_row(e: OrderEvent) -> tuple:
    return (e.time_ns, e.order, e.event, e.from_state.label, e.to_state.label, e.user, e.crew, e.detail)


def _event_of(row: Sequence[Any]) -> OrderEvent:
    t, order, event, a, b, user, crew, detail = row
    return OrderEvent(int(t), order, event, _STATE_OF_LABEL[a], _STATE_OF_LABEL[b], user, crew, detail)


def _report_row(r: CitizenReport) -> tuple:
    return (
        r.id,
        r.service_code,
        r.description,
        r.lat,
        r.lon,
        r.address,
        int(r.requested_ns),
        r.order,
        r.client,
        *(r.contact.get(c) for c in CONTACT_FIELDS),
    )


class OrderJournal:
    """The work-order journal in one SQLite file (see the module docstring). Thread-safe.

    ``readonly`` opens an existing file without writing anything (``scada workorders``).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", readonly: bool = False):
        self.path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        if readonly and not self.path.is_file():
            raise OrderJournalError(self.path, "no such file (the server writes it in its --data folder)")
        if not self.path.parent.is_dir():
            raise OrderJournalError(self.path, f"folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise OrderJournalError(self.path, "is a folder, not a journal file")
        self._lock = threading.Lock()
        target = f"file:{quote(str(self.path.absolute()))}?mode={'ro' if readonly else 'rwc'}"
        try:
            self._db = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OrderJournalError(self.path, f"cannot open: {exc}") from None
        try:
            ours = check_header(self._db, APPLICATION_ID, SCHEMA_VERSION, "a work-order journal", "work-order journal")
            if readonly and not ours:
                raise OrderJournalError(self.path, "is not a work-order journal (empty file)")
            if not readonly and not create_schema(
                self._db, _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, synchronous.upper()
            ):
                raise OrderJournalError(self.path, "cannot switch the file to WAL mode")
        except HeaderError as exc:
            self._db.close()
            raise OrderJournalError(self.path, str(exc)) from None
        except sqlite3.DatabaseError as exc:  # garbage, a full disk, a read-only folder
            self._db.close()
            raise OrderJournalError(self.path, f"cannot open: {exc}") from None
        except OrderJournalError:
            self._db.close()
            raise

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        orders: Iterable[WorkOrder] = (),
        events: Iterable[OrderEvent] = (),
        reports: Iterable[CitizenReport] = (),
        purged: Iterable[tuple[str, int]] = (),
    ) -> None:
        """Upsert ``orders`` and ``reports``, append ``events``, null the contact details of the
        ``purged`` reports ((id, time)): one transaction, all of it or none of it."""
        o = [_order_row(x) for x in orders]
        e = [_event_row(x) for x in events]
        r = [_report_row(x) for x in reports]
        p = [(int(t), rid) for rid, t in purged]
        with self._lock:
            db = self._db
            try:
                with Transaction(db):
                    db.executemany(_UPSERT_ORDER, o)
                    db.executemany(_INSERT_EVENT, e)
                    db.executemany(_UPSERT_REPORT, r)
                    db.executemany(_PURGE, p)
            except sqlite3.Error as exc:
                raise OrderJournalError(self.path, f"write failed, nothing of the batch was stored: {exc}") from None

    # -- reading -----------------------------------------------------------------------------

    def orders(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        open_only: bool = False,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        **filters: str | Sequence[str] | None,
    ) -> list[WorkOrder]:
        """Orders created in ``[start_ns, end_ns)`` matching every filter (:data:`ORDER_FILTERS`:
        one value or several), oldest first; ``open_only``: not closed nor cancelled."""
        unknown = set(filters) - set(ORDER_FILTERS)
        if unknown:
            raise TypeError(f"unknown order filter {sorted(unknown)[0]!r} (filters: {', '.join(ORDER_FILTERS)})")
        clauses, params = where_clauses(None, None, filters, ORDER_FILTERS)
        if start_ns is not None:
            clauses.append("created_ns >= ?")
            params.append(int(start_ns))
        if end_ns is not None:
            clauses.append("created_ns < ?")
            params.append(int(end_ns))
        if open_only:
            clauses.append(f"state NOT IN ({', '.join('?' * len(_FINAL_LABELS))})")
            params.extend(_FINAL_LABELS)
        if ids is not None:
            clauses.append(f"id IN ({', '.join('?' * len(ids))})" if ids else "0")
            params.extend(ids)
        sql = _SELECT_ORDERS + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY created_ns, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_order_of(r) for r in self._read(sql, params)]

    def events(
        self,
        order: str | Sequence[str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        event: str | Sequence[str] | None = None,
    ) -> list[OrderEvent]:
        """Events of ``order`` (one or several; None: every order) in ``[start_ns, end_ns)``, in order."""
        clauses, params = where_clauses(start_ns, end_ns, {"order_id": order, "event": event}, ("order_id", "event"))
        sql = _SELECT_EVENTS + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        return [_event_of(r) for r in self._read(sql, params)]

    def last_numbers(self) -> tuple[int, int]:
        """The highest order and report numbers used (WO-000012 -> 12): a restart goes on after them."""
        sql = "SELECT MAX(CAST(SUBSTR(id, 4) AS INTEGER)) FROM {}"
        return (self._read(sql.format("orders"), ())[0][0] or 0, self._read(sql.format("reports"), ())[0][0] or 0)

    def reports(
        self,
        ids: Sequence[str] | None = None,
        service_code: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        bbox: tuple[float, float, float, float] | None = None,
        limit: int | None = None,
    ) -> list[tuple[CitizenReport, str | None]]:
        """Reports (public: no contact, no client) with their order's state label (None: no order),
        requested in ``[start_ns, end_ns)``, inside ``bbox`` (lat0, lon0, lat1, lon1), oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if ids is not None:
            clauses.append(f"r.id IN ({', '.join('?' * len(ids))})" if ids else "0")
            params.extend(ids)
        if service_code is not None:
            clauses.append("r.service_code = ?")
            params.append(service_code)
        if start_ns is not None:
            clauses.append("r.requested_ns >= ?")
            params.append(int(start_ns))
        if end_ns is not None:
            clauses.append("r.requested_ns < ?")
            params.append(int(end_ns))
        if bbox is not None:
            lat0, lon0, lat1, lon1 = bbox
            clauses.append("r.lat BETWEEN ? AND ? AND r.lon BETWEEN ? AND ?")
            params.extend((min(lat0, lat1), max(lat0, lat1), min(lon0, lon1), max(lon0, lon1)))
        cols = ", ".join(f"r.{c}" for c in REPORT_COLUMNS)
        sql = f"SELECT {cols}, o.state FROM reports r LEFT JOIN orders o ON o.id = r.order_id"
        sql += (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY r.requested_ns, r.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        out = []
        for *values, state in self._read(sql, params):
            rid, code, desc, lat, lon, addr, t, order, _client = values
            out.append((CitizenReport(rid, code, desc, lat, lon, addr, int(t), order, ""), state))
        return out

    def contact(self, report: str) -> dict[str, str]:
        """A report's contact details still held (empty once purged): for the purge's test and audit."""
        rows = self._read(f"SELECT {', '.join(CONTACT_FIELDS)} FROM reports WHERE id = ?", (report,))
        return {k: v for k, v in zip(CONTACT_FIELDS, rows[0]) if v is not None} if rows else {}

    def to_purge(self, closed_before_ns: int, requested_before_ns: int) -> list[str]:
        """Reports still holding contact details whose order was closed (or cancelled) before
        ``closed_before_ns``, or that have no order and were made before ``requested_before_ns``."""
        held = " OR ".join(f"r.{c} IS NOT NULL" for c in CONTACT_FIELDS)
        finals = ", ".join("?" * len(_FINAL_LABELS))
        sql = (
            f"SELECT r.id FROM reports r LEFT JOIN orders o ON o.id = r.order_id WHERE ({held}) AND ("
            f"(o.id IS NOT NULL AND o.state IN ({finals}) AND o.closed_ns < ?) "
            "OR (o.id IS NULL AND r.requested_ns < ?)) ORDER BY r.id"
        )
        return [r[0] for r in self._read(sql, (*_FINAL_LABELS, int(closed_before_ns), int(requested_before_ns)))]

    def export_orders_csv(self, out: TextIO, orders: Sequence[WorkOrder]) -> int:
        """``orders`` as CSV: their columns, every time also in ISO 8601 (``*_ns`` kept exact)."""
        times = [c for c in ORDER_COLUMNS if c.endswith("_ns")]
        w = csv.writer(out, lineterminator="\n")
        w.writerow((*ORDER_COLUMNS, *(c[:-3] for c in times)))
        for o in orders:
            row = _order_row(o)
            isos = [iso_utc(getattr(o, c)) if getattr(o, c) else "" for c in times]
            w.writerow(safe_row("" if v is None else v for v in (*row, *isos)))
        return len(orders)

    def export_events_csv(self, out: TextIO, events: Sequence[OrderEvent]) -> int:
        """``events`` as CSV: ``time`` (ISO 8601) then the event columns."""
        w = csv.writer(out, lineterminator="\n")
        w.writerow(("time", *EVENT_COLUMNS))
        for e in events:
            w.writerow(safe_row((iso_utc(e.time_ns), *("" if v is None else v for v in _event_row(e)))))
        return len(events)

    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise OrderJournalError(self.path, f"read failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OrderJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LINGER_S = 0.5  # an idle writer thread waits this long for more work before it ends


class OrderWriter:
    """Writes the service's changes to an :class:`OrderJournal` from a worker thread (see the
    module docstring): :meth:`submit` never blocks nor raises."""

    MAX_EVENTS = 200_000  # events kept over a disk outage (~200 B each); beyond, the oldest are dropped

    def __init__(self, journal: OrderJournal, *, retry_s: float = 1.0, linger_s: float = LINGER_S) -> None:
        self.journal = journal
        self.retry_s = retry_s
        self.linger_s = linger_s
        self._cond = threading.Condition()
        self._orders: dict[str, WorkOrder] = {}  # the latest state of each order waiting
        self._events: deque[OrderEvent] = deque()
        self._reports: dict[str, CitizenReport] = {}
        self._purged: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False  # a batch is being written (taken out of what waits)
        self._inflight: dict[str, WorkOrder] = {}  # the orders of that batch
        self.written_events = 0
        self.dropped_events = 0
        self.failures = 0
        self.last_error = ""

    @property
    def failing(self) -> bool:
        """The last write failed and what waits is kept for the next try."""
        return bool(self.last_error)

    def submit(
        self,
        orders: Iterable[WorkOrder] = (),
        events: Iterable[OrderEvent] = (),
        reports: Iterable[CitizenReport] = (),
        purged: Mapping[str, int] | None = None,
    ) -> None:
        with self._cond:
            for o in orders:
                self._orders[o.id] = o
            self._events.extend(events)
            over = len(self._events) - self.MAX_EVENTS
            if over > 0:
                for _ in range(over):
                    self._events.popleft()
                self.dropped_events += over
                log.error(
                    "workorder_journal_events_dropped", journal=str(self.journal.path), dropped=self.dropped_events
                )
            for r in reports:
                self._reports[r.id] = r
            self._purged.update(purged or {})
            if self._closed:
                log.error("workorder_journal_closed", journal=str(self.journal.path))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="workorder-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _waiting(self) -> bool:
        return bool(self._orders or self._events or self._reports or self._purged)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._waiting() and not self._closed:
                    # Linger for the next submit: starting a thread blocks the submitting event
                    # loop until the thread runs (milliseconds on a busy machine); one per report
                    # of an Open311 burst delayed the core's polls (bench/README.md).
                    self._cond.wait_for(lambda: self._waiting() or self._closed, self.linger_s)
                if not self._waiting():
                    self._thread = None
                    self._cond.notify_all()
                    return
                # Taken whole: a later submit of the same order waits for the next batch (its
                # state is newer), so the file never goes back in time.
                orders, events = list(self._orders.values()), list(self._events)
                reports, purged = list(self._reports.values()), list(self._purged.items())
                self._inflight = self._orders
                self._orders, self._events, self._reports, self._purged = {}, deque(), {}, {}
                self._busy = True
            try:
                self.journal.write(orders, events, reports, purged)
            except (OrderJournalError, OSError) as exc:
                with self._cond:
                    self._busy = False
                    self._inflight = {}
                    # Put back in front of what came meanwhile (newer states win).
                    self._orders = {**{o.id: o for o in orders}, **self._orders}
                    self._events = deque([*events, *self._events])
                    self._reports = {**{r.id: r for r in reports}, **self._reports}
                    self._purged = {**dict(purged), **self._purged}
                    self.failures += 1
                    if not self.last_error:
                        log.error("workorder_journal_write_failed", journal=str(self.journal.path), error=str(exc))
                    self.last_error = str(exc)
                    if self._closed:
                        log.error("workorder_journal_lost_at_stop", events=len(self._events), orders=len(self._orders))
                        self._orders, self._events, self._reports, self._purged = {}, deque(), {}, {}
                        continue
                    self._cond.wait(self.retry_s)
                continue
            with self._cond:
                self._busy = False
                self._inflight = {}
                self.written_events += len(events)
                if self.last_error:
                    log.info(
                        "workorder_journal_write_recovered", journal=str(self.journal.path), failures=self.failures
                    )
                    self.last_error = ""
                self._cond.notify_all()

    def latest(self, order: str) -> WorkOrder | None:
        """The order's state submitted and not in the file yet (None: the file has the latest)."""
        with self._cond:
            return self._orders.get(order) or self._inflight.get(order)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (True) or ``timeout`` passes."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting() and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what waits (one more try if writing fails), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._cond:
            waiting = len(self._events)
        return {
            "workorder_events_written": self.written_events,
            "workorder_events_waiting": waiting,
            "workorder_events_dropped": self.dropped_events,
            "workorder_write_failures": self.failures,
        }
