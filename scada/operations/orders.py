"""The core's work-order service (:class:`WorkOrderService`, service.WorkOrders): orders from
alarms, citizens' reports and operators, their crews, deadlines and journal.

* **From alarms.** The service subscribes to the alarm engine (its subscriber only queues: it runs
  inside the engine's evaluation). An activation of an alarm whose service is in operations.yaml
  creates an order keyed (device, alarm name); while that order is open, later activations are
  attached to it ("attach"). Activations that operators do not see (suppressed by their cause,
  shelved, out of service) create nothing: the cause's own alarm has the order; the consequence's
  order comes if it is announced later (UNSUPPRESS, UNSHELVE...) while still active.
* **Self-cleared faults.** An alarm's order still new (no crew sent yet) whose alarm clears is
  cancelled by "server": nobody drives to a fault that went away (a link back, a breaker reset).
  Not for a latching alarm (a signal conflict needs a technician's reset on site), nor once a
  crew is on its way (it finds out and reports; a note says the alarm cleared).
* **Closing.** An order repaired by its crew is closed by "server" once its alarm's condition is
  clear: at the repair when the engine's condition is already clear, else at the CLEAR event (a
  latching alarm stays LATCHED for an operator's reset after the repair: the order keys on the
  condition, not the state). An activation of a repaired order's alarm reopens it (to new, then
  dispatched again). An order without an alarm (citizen, operator) closes at the repair.
* **Dispatch.** With ``dispatch.auto_assign``, a new order goes to the first proposed crew
  (``crews.propose``) not already holding an open order and not having refused it, with a fresh
  correlation id, and is sent. No crew, or a send that fails: the order stays new with a
  "dispatch_failed" note (once per reason, not at every try) and is tried again: every
  ``NO_CREW_RETRY_S`` when no crew was free (a proposal is cheap, and a crew coming back from
  another job should get the order soon), every ``DISPATCH_RETRY_S`` after a failed send (the
  broker or the vehicle's link is down: not hammered). Real seconds both. An
  assignment without an answer within ``answer_timeout_s`` (operations clock) is "refuse"d by
  "server" and goes to another crew.
* **Deadlines.** Each tick, an open order not yet on site is checked against ``on_site_due_ns``,
  one on site against ``repaired_due_ns``: a "warn" note ``warn_before_s`` before, a "breach" note
  at the deadline with the escalation alarm ``work_order_late`` (source: the order id), cleared
  when the order closes or is cancelled.
* **Citizen reports.** A located report attaches to the nearest open order of its service within
  ``open311.radius_m`` (every alarm of a routed service has its order, so "near an open alarm" is
  that); else it creates an order on the nearest equipment of the service's classes within the
  radius; else an unlocated order (no device) whose commune is the nearest device's of any class
  (empty without coordinates), so that dispatchers of that commune see it. Contact details are
  purged ``purge_contact_after_s`` after the order closes (checked every ``PURGE_EVERY_S``).
* **Time** is the operations clock (the server's schedule clock: simulated time in a simulated
  run) for everything stored; the audit trail keeps real time like every other audit record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import time
import types
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import structlog

from scada.alarms.remote import RemoteAlarmError
from scada.alarms.states import State
from scada.control.model import (
    BAD_INVALID_ARGUMENT,
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_NODE_ID_UNKNOWN,
    BAD_SHUTDOWN,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    Caller,
    status_name,
)
from scada.control.zones import great_circle_m, index_of
from scada.driver_api import DriverError
from scada.operations.journal import OrderJournal, OrderJournalError, OrderWriter
from scada.operations.model import (
    CREW_ANSWERS,
    OPEN,
    OPS,
    CitizenReport,
    IllegalTransition,
    OperationsConfig,
    OpsRequest,
    OpsResult,
    OrderEvent,
    OrderState,
    ServiceDef,
    WorkOrder,
    next_state,
)
from scada.operations.service import Clock, Crews
from scada.security.audit import AuditRecord, AuditSink, canonical
from scada.security.identity import Identity, Permission, roles_of

log = structlog.get_logger("scada.operations")

TICK_S = 1.0  # real seconds between two checks of deadlines, answers and dispatch retries
DISPATCH_RETRY_S = 30.0  # real seconds before an order whose sending failed is tried again
NO_CREW_RETRY_S = 5.0  # real seconds before an order for which no crew was free is tried again
JOURNAL_THREADS = 2  # the service's own threads for journal reads and flushes (not the default executor)
MAX_READS = 2  # Open311 GETs reading the journal at once; more are answered "busy" (a 503) at once
READ_FLUSH_S = 1.0  # a GET waits this long for what waits to be written, then reads the file as it is
REPORT_FLUSH_S = 5.0  # a POST waits this long for its report to be on disk before answering
FINAL_READ_S = 2.0  # an act on an order not open waits this long for the file, then is refused
ANSWER_LOG_EVERY_S = 60.0  # real seconds: a window of log lines about ignored crew answers
ANSWER_LOG_BURST = 5  # lines per kind (garbage, stale) and window; the rest are counted
PURGE_EVERY_S = 60.0  # real seconds between two looks for contact details to purge
CLOCKS_AGREE_NS = 1_000_000_000  # two clocks this close are the same time base (real time)
LATE_ALARM = "work_order_late"
STORAGE_ALARM = "storage_failing"
SEEN = (State.UNACK_ACTIVE, State.ACK_ACTIVE)  # an active alarm shown to operators
# Events by which an active alarm is shown to operators (again): each may start an order.
ANNOUNCING = ("ACTIVATE", "UNSUPPRESS", "UNSHELVE", "SHELVE_EXPIRED", "RETURN_TO_SERVICE")
PRIORITIES = ("low", "medium", "high", "critical")
# The time stamp each transition sets.
_STAMP = {
    "assign": "assigned_ns",
    "accept": "accepted_ns",
    "depart": "en_route_ns",
    "arrive": "on_site_ns",
    "repair": "repaired_ns",
    "close": "closed_ns",
    "cancel": "closed_ns",
}
_HOLDING = frozenset({OrderState.ASSIGNED, OrderState.ACCEPTED, OrderState.EN_ROUTE, OrderState.ON_SITE})
Listener = Callable[[Sequence[WorkOrder], Sequence[OrderEvent]], None]


_T = TypeVar("_T")


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class WorkOrderService:
    """The core's work orders (see the module docstring). ``crews`` None: no crew board (orders
    are created, followed and closed; nothing is dispatched)."""

    def __init__(
        self,
        config: Any,
        alarms: Any,
        journal: OrderJournal,
        audit: AuditSink,
        crews: Crews | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        self.config = config
        self.ops: OperationsConfig = config.operations
        self.alarms = alarms
        self.journal = journal
        self.writer = OrderWriter(journal)
        self.audit = audit
        self.crews = crews
        self.clock = clock
        self.orders: dict[str, WorkOrder] = {}  # the open orders, by id
        self.by_key: dict[tuple[str, str], str] = {}  # (device, alarm) -> its open order
        self.listeners: list[Listener] = []  # told every change (the front link's pushes)
        self._queue: deque[Any] = deque()  # alarm events waiting for the service's task
        self._wake = asyncio.Event()
        self._refused: dict[str, set[str]] = {}  # order -> crews that refused it (or never answered)
        self._retry_at: dict[str, float] = {}  # order -> monotonic time of its next dispatch try
        self._failed_why: dict[str, str] = {}  # order -> why its last dispatch failed (journaled once)
        self._sending: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}  # order -> answers during its send
        self._marks: dict[str, set[str]] = {}  # order -> "warn:on_site", "breach:repaired"...
        self._log_window: dict[str, tuple[float, int]] = {}  # kind of ignored answer -> (since, lines)
        self._unlogged: dict[str, int] = {}  # kind of ignored answer -> not logged since its last line
        # Acts running, shielded (an operator's, or the automatic dispatch's send), with what they
        # do for the log: the server's stop waits for them (settle) before the drivers stop.
        self._acts: dict[asyncio.Future[Any], str] = {}
        self._stopping = False  # settle() began: no new act starts
        # Journal reads and flushes block on the writer's lock (a failing disk): never on the loop,
        # nor in the default executor the historian's writes share.
        self._io = concurrent.futures.ThreadPoolExecutor(JOURNAL_THREADS, thread_name_prefix="workorder-read")
        self._reads = asyncio.Semaphore(MAX_READS)
        last_order, last_report = journal.last_numbers()
        self._order_numbers = itertools.count(last_order + 1)
        self._report_numbers = itertools.count(last_report + 1)
        self._purge_at = 0.0
        self._storage_alarm = False
        # Counters for the status line and /metrics.
        self.created = 0
        self.closed = 0
        self.breaches = 0
        self.dispatch_failures = 0
        self.answers_ignored = 0
        self.answers_garbage = 0
        self._load()

    # -- restart ------------------------------------------------------------------------------

    def _load(self) -> None:
        """The open orders of the journal, their deadline marks, and the repaired ones whose alarm
        is no longer active closed."""
        for o in self.journal.orders(open_only=True):
            self.orders[o.id] = o
            if o.key is not None:
                self.by_key[o.key] = o.id
        if self.orders:
            for e in self.journal.events(list(self.orders), event=("warn", "breach")):
                self._marks.setdefault(e.order, set()).add(f"{e.event}:{e.detail.split(' ')[0]}")
            log.info("work_orders_restored", open=len(self.orders), journal=str(self.journal.path))
        now = self.clock()
        for o in list(self.orders.values()):
            if o.state == OrderState.REPAIRED and not self._condition(o):
                self._close(o, now, "alarm no longer active after the restart")
        for o in self.orders.values():
            if o.breached:  # server alarms are not kept over a restart: raised again
                self._late_alarm(o, True)
        self._reconcile()

    def _reconcile(self) -> int:
        """An order for every active alarm shown to operators, of a routed service, without an open
        order (its origin the alarm's activation): a crash between the alarm journal and the order
        writer, or a reload routing a service while faults are active, would leave it without one
        forever (a restored alarm is not announced again). Returns the orders created."""
        engine = self.alarms
        cond, state, since = (getattr(engine, a, None) for a in ("cond", "state", "cond_since"))
        if not self.ops.services or cond is None or state is None or since is None:
            return 0
        seen = np.asarray(cond, bool) & np.isin(state, np.array([int(s) for s in SEEN], np.uint8))
        made = 0
        clock_now = engine.clock()
        for i in np.flatnonzero(seen).tolist():
            try:
                a, d = engine.instances.definition(i), engine.instances.device(i)
                if a.service not in self.ops.services or self._open((d.name, a.name)) is not None:
                    continue
                e = types.SimpleNamespace(
                    instance=i,
                    service=a.service,
                    device=d.name,
                    alarm=a.name,
                    commune=d.commune,
                    priority=a.priority,
                    message=engine._message(i),
                )
                self._create_from_alarm(e, self._ops_time(int(since[i]) or clock_now, clock_now))
                made += 1
            except Exception:  # noqa: BLE001 - one instance must not stop the others
                log.exception("work_order_reconcile_failed", instance=i)
        if made:
            log.warning("work_orders_reconciled", created=made, reason="active routed alarms without an open order")
        return made

    # -- the alarm engine's events ------------------------------------------------------------

    def on_alarm_events(self, events: Sequence[Any]) -> None:
        """The engine's subscriber: called inside its evaluation, so it only queues."""
        self._queue.extend(events)
        self._wake.set()

    def process_alarm_events(self) -> None:
        """Handle the queued alarm events (the service's task; tests call it directly)."""
        while self._queue:
            e = self._queue.popleft()
            try:
                self._alarm_event(e)
            except Exception:  # noqa: BLE001 - one bad event must not stop the orders
                log.exception("work_order_alarm_event_failed", alarm=getattr(e, "alarm", "?"))

    def _alarm_event(self, e: Any) -> None:
        if e.instance < 0 or e.service not in self.ops.services:  # a server alarm, or not routed
            return
        key = (e.device, e.alarm)
        order = self._open(key)
        t = self._ops_time(e.time_ns, self.alarms.clock())
        if e.event in ANNOUNCING and e.active and e.state in SEEN:
            if order is None:
                self._create_from_alarm(e, t)
            elif order.state == OrderState.REPAIRED:
                self._commit(
                    *self._transition(
                        dataclasses.replace(order, alarms=order.alarms + 1),
                        "reopen",
                        "server",
                        t,
                        detail=f"{e.alarm} active again: {e.message}",
                        crew=None,
                        correlation_id="",
                    )
                )
            elif e.event == "ACTIVATE":
                new = dataclasses.replace(order, alarms=order.alarms + 1)
                self._commit(new, [self._note(new, "attach", "server", t, f"{e.alarm}: {e.message}")])
        elif e.event == "CLEAR" and order is not None:
            if order.state == OrderState.REPAIRED:
                self._close(order, t, f"{e.alarm} cleared")
            elif order.state == OrderState.NEW and not self._latching(order):
                # Gone by itself before anyone was sent (a link back, a breaker reset remotely):
                # nobody drives there. A latching alarm's fault (a signal conflict) waits for a
                # technician's reset on site whatever its condition says: its order stays.
                new, events = self._transition(order, "cancel", "server", t, f"{e.alarm} cleared before dispatch")
                self._commit(new, events)
                if order.breached:
                    self._late_alarm(new, False)
            else:
                self._commit(order, [self._note(order, "note", "server", t, f"{e.alarm} cleared")])

    def _ops_time(self, t_ns: int, clock_now: int) -> int:
        """``t_ns``, stamped by another clock whose now is ``clock_now``, in the operations clock.

        The alarm engine and the front stamp real time; in a simulated run (``--clock-start``,
        ``--acceleration``) the operations clock is the simulated one, so a time is carried over
        by the clocks' offset (the event is a moment old: the error is that moment). When the two
        agree (a real-time run) the time is kept exact."""
        offset = self.clock() - clock_now
        return int(t_ns) if abs(offset) < CLOCKS_AGREE_NS else int(t_ns) + offset

    def _open(self, key: tuple[str, str]) -> WorkOrder | None:
        oid = self.by_key.get(key)
        return self.orders.get(oid) if oid is not None else None

    def _create_from_alarm(self, e: Any, origin: int) -> None:
        try:
            device = self.config.device(e.device)
            lat, lon = float(device.lat), float(device.lon)
        except KeyError:
            lat = lon = None  # type: ignore[assignment]
        now = self.clock()
        order = self._new_order(
            "alarm",
            self.ops.services[e.service],
            e.priority,
            e.device,
            e.commune,
            lat,
            lon,
            e.alarm,
            e.message,
            origin_ns=origin,
            now=now,
            user="server",
            alarms=1,
        )
        self._commit(order, [self._note(order, "create", "server", now, f"alarm {e.alarm}")])

    def _latching(self, order: WorkOrder) -> bool:
        if order.key is None:
            return False
        device, alarm = order.key
        try:
            return bool(self.alarms.instances.definition(self.alarms.instance(alarm, device)).latching)
        except KeyError:
            return False

    def _condition(self, order: WorkOrder) -> bool:
        """Is the order's alarm condition active now (False: no alarm, or gone from the configuration)?"""
        if order.key is None:
            return False
        device, alarm = order.key
        try:
            i = self.alarms.instance(alarm, device)
        except KeyError:
            return False
        return bool(self.alarms.cond[i])

    # -- building and changing orders --------------------------------------------------------

    def _new_order(
        self,
        source: str,
        service: ServiceDef,
        priority: str,
        device: str | None,
        commune: str,
        lat: float | None,
        lon: float | None,
        cause: str,
        description: str,
        *,
        origin_ns: int,
        now: int,
        user: str,
        alarms: int = 0,
        reports: tuple[str, ...] = (),
    ) -> WorkOrder:
        delays = service.delays.get(priority) or service.delays.get(service.default_priority)
        on_site = repaired = 0
        if delays is not None:
            on_site = origin_ns + int(delays.on_site_s * 1e9)
            repaired = origin_ns + int(delays.repaired_s * 1e9)
        self.created += 1
        return WorkOrder(
            f"WO-{next(self._order_numbers):06d}",
            source,
            service.name,
            priority,
            device,
            commune,
            lat,
            lon,
            cause,
            description,
            OrderState.NEW,
            origin_ns,
            now,
            user,
            on_site_due_ns=on_site,
            repaired_due_ns=repaired,
            alarms=alarms,
            reports=reports,
        )

    @staticmethod
    def _note(order: WorkOrder, event: str, user: str, now: int, detail: str = "") -> OrderEvent:
        return OrderEvent(int(now), order.id, event, order.state, order.state, user, order.crew, detail)

    @staticmethod
    def _transition(
        order: WorkOrder, event: str, user: str, now: int, detail: str = "", **changes: Any
    ) -> tuple[WorkOrder, list[OrderEvent]]:
        """The order after ``event`` and its journal event (IllegalTransition when not allowed)."""
        to = next_state(order.id, order.state, event)
        stamp = _STAMP.get(event)
        if stamp is not None:
            changes[stamp] = int(now)
        new = dataclasses.replace(order, state=to, **changes)
        return new, [OrderEvent(int(now), order.id, event, order.state, to, user, new.crew or order.crew, detail)]

    def _commit(self, order: WorkOrder, events: Sequence[OrderEvent], reports: Sequence[CitizenReport] = ()) -> None:
        """Keep, journal and tell the listeners."""
        if order.open:
            self.orders[order.id] = order
            if order.key is not None:
                self.by_key[order.key] = order.id
        else:
            self.orders.pop(order.id, None)
            if order.key is not None and self.by_key.get(order.key) == order.id:
                del self.by_key[order.key]
            for table in (self._refused, self._retry_at, self._marks, self._failed_why):
                table.pop(order.id, None)
        self.writer.submit([order], events, reports)
        # One line per event: an operator reading the server's log follows each order (who, when).
        for e in events:
            log.info(
                "work_order",
                order=e.order,
                order_event=e.event,
                state=e.to_state.label,
                user=e.user,
                crew=e.crew,
                service=order.service,
                device=order.device,
                detail=e.detail or None,
            )
        for listen in self.listeners:
            try:
                listen([order], events)
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the order
                log.exception("work_order_listener_failed")

    def _close(self, order: WorkOrder, now: int, detail: str, user: str = "server") -> None:
        new, events = self._transition(order, "close", user, now, detail)
        self.closed += 1
        self._commit(new, events)
        if order.breached:
            self._late_alarm(new, False)

    def _late_alarm(self, order: WorkOrder, active: bool) -> None:
        if active:
            msg = f"work order {order.id} ({order.service}, {order.device or order.commune}) missed its deadline"
        else:
            msg = f"work order {order.id} {order.state.label}"
        priority = order.priority if order.priority in PRIORITIES else "high"
        self.alarms.system_alarm(LATE_ALARM, active, msg, priority=priority, service=order.service, source=order.id)

    # -- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Handle alarm events as they come, and the timers every ``TICK_S``, until cancelled."""
        while True:
            self.process_alarm_events()
            await self.tick()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> None:
        """Deadlines, unanswered assignments, dispatch and its retries, purge, storage alarm."""
        now = self.clock()
        self._deadlines(now)
        await self._answer_timeouts(now)
        await self._dispatch_new()
        if time.monotonic() >= self._purge_at:
            self._purge_at = time.monotonic() + PURGE_EVERY_S
            await self.purge()
        failing = self.writer.failing
        if failing != self._storage_alarm:
            self._storage_alarm = failing
            self.alarms.system_alarm(
                STORAGE_ALARM,
                failing,
                f"work-order journal {self.journal.path}: "
                + (
                    f"cannot be written ({self.writer.last_error}); changes wait in memory"
                    if failing
                    else "writes again"
                ),
                source="workorder_journal",
            )

    def _deadlines(self, now: int) -> None:
        for order in list(self.orders.values()):
            phase, due = (
                ("on_site", order.on_site_due_ns)
                if order.state < OrderState.ON_SITE
                else ("repaired", order.repaired_due_ns)
            )
            if not due or order.state >= OrderState.REPAIRED:
                continue
            marks = self._marks.setdefault(order.id, set())
            delays = self._delays(order)
            warn_at = due - int((delays.warn_before_s if delays else 0.0) * 1e9)
            if now >= due and f"breach:{phase}" not in marks:
                marks.update((f"breach:{phase}", f"warn:{phase}"))
                new = dataclasses.replace(order, breached=True, warned=True)
                self.breaches += 1
                self._commit(new, [self._note(new, "breach", "server", now, f"{phase} deadline missed")])
                if not order.breached:
                    self._late_alarm(new, True)
            elif now >= warn_at and f"warn:{phase}" not in marks and f"breach:{phase}" not in marks:
                marks.add(f"warn:{phase}")
                new = dataclasses.replace(order, warned=True)
                self._commit(
                    new, [self._note(new, "warn", "server", now, f"{phase} deadline in {(due - now) / 1e9:.0f} s")]
                )

    def _delays(self, order: WorkOrder):
        service = self.ops.services.get(order.service)
        if service is None:
            return None
        return service.delays.get(order.priority) or service.delays.get(service.default_priority)

    async def _answer_timeouts(self, now: int) -> None:
        timeout = int(self.ops.dispatch.answer_timeout_s * 1e9)
        for order in list(self.orders.values()):
            if (
                order.state == OrderState.ASSIGNED
                and order.id not in self._sending
                and now - order.assigned_ns > timeout
            ):
                crew = order.crew
                self._refused.setdefault(order.id, set()).add(crew or "")
                new, events = self._transition(
                    order,
                    "refuse",
                    "server",
                    now,
                    f"no answer from {crew} within {self.ops.dispatch.answer_timeout_s:g} s",
                    crew=None,
                    correlation_id="",
                )
                self._commit(new, events)
                await self._send_quietly(order, "cancel")  # the silent crew must not drive there anyway

    async def _dispatch_new(self) -> None:
        if self.crews is None:
            return
        self._tell_busy()  # resynchronised each tick: the board never drifts from the orders
        if not self.ops.dispatch.auto_assign:
            return
        mono = time.monotonic()
        # Once per tick, not per order (1,000 open orders, hundreds new in a storm): the crews
        # holding an order, and the services for which no crew at all was proposed. Both are
        # taken again after a send (its await lets answers and operators' acts change them).
        held = self._held()
        none_for: set[str] = set()
        new = [o for o in self.orders.values() if o.state == OrderState.NEW]
        for order in new:
            if self._stopping:  # the server stops: no send starts that it could not see through
                return
            if order.id in self._sending or self._retry_at.get(order.id, 0.0) > mono:
                continue
            current = self.orders.get(order.id)
            if current is None or current.state != OrderState.NEW:  # changed by an earlier send's answers
                continue
            located = current.lat is not None and current.lon is not None
            crew = None if current.service in none_for else self._choose(current, held, none_for if located else None)
            if crew is None:
                self._dispatch_failed(current, "no available crew with the skill", NO_CREW_RETRY_S)
                continue
            try:
                await self._shielded(self._assign(current, crew, "server"), f"dispatch {current.id} to {crew}")
            except (DriverError, OSError) as exc:
                self._dispatch_failed(current, f"not sent to {crew}: {exc}", DISPATCH_RETRY_S)
            except IllegalTransition as exc:  # the order moved on during the send
                log.info("work_order_dispatch_overtaken", order=current.id, error=str(exc))
            held = self._held()
            none_for.clear()

    def _dispatch_failed(self, order: WorkOrder, why: str, retry_s: float) -> None:
        self.dispatch_failures += 1
        self._retry_at[order.id] = time.monotonic() + retry_s
        if self._failed_why.get(order.id) != why:  # journaled once per reason, not at every try
            self._failed_why[order.id] = why
            self._commit(order, [self._note(order, "dispatch_failed", "server", self.clock(), why)])

    def _held(self, but: str = "") -> set[str]:
        """The crews holding an open order (assigned to on site; a repaired order's crew is free
        again while the alarm's clear is awaited)."""
        return {o.crew for o in self.orders.values() if o.crew and o.id != but and o.state in _HOLDING}

    def _tell_busy(self) -> None:
        """The crew board's view of the busy crews, replaced by ours (its ``busy``, when it has one)."""
        busy = getattr(self.crews, "busy", None)
        if callable(busy):
            busy(self._held())

    def _choose(self, order: WorkOrder, held: set[str] | None = None, none_for: set[str] | None = None) -> str | None:
        """The nearest proposed crew not holding another open order and not having refused this one.
        ``held``: the crews holding an order (a new order holds none), when the caller has it;
        ``none_for`` gets the order's service when no crew at all is proposed for it."""
        assert self.crews is not None
        busy = self._held(but=order.id) if held is None else held
        refused = self._refused.get(order.id, set())
        proposed = [c for c, _eta in self.crews.propose(order, limit=max(3, len(busy) + len(refused) + 1))]
        if not proposed and none_for is not None:
            none_for.add(order.service)
        free = [c for c in proposed if c not in busy]
        pick = next((c for c in free if c not in refused), None)
        if pick is None and free and refused:  # every free crew refused once: ask them again
            self._refused.pop(order.id, None)
            pick = free[0]
        return pick

    async def _assign(self, order: WorkOrder, crew: str, user: str) -> WorkOrder:
        """Give ``order`` to ``crew`` and send it; journaled once sent (DriverError/OSError if not:
        the order is unchanged). Answers that arrive during the send wait for it."""
        now = self.clock()
        new, events = self._transition(
            order, "assign", user, now, f"to {crew}", crew=crew, correlation_id=str(uuid.uuid4())
        )
        self._sending[order.id] = []
        try:
            if self.crews is None:
                raise DriverError("no crew board: nothing can be sent")
            await self.crews.send(new, "assign")
        except BaseException:
            # Not sent: the order is unchanged, so the answers that waited (its current crew's,
            # during a reassignment) are judged now against it; stale ones are still ignored.
            for vehicle, payload in self._sending.pop(order.id, []):
                self.crew_answer(vehicle, payload)
            raise
        current = self.orders.get(order.id)
        if current is None:  # closed or cancelled while it was being sent: the crew is told
            self._sending.pop(order.id, None)
            await self._send_quietly(new, "cancel")
            final = self.writer.latest(order.id)  # just closed: still waiting to be written, or in the file
            raise IllegalTransition(order.id, final.state if final else OrderState.CANCELLED, "assign")
        if current is not order:
            # Changed meanwhile (a note, a deadline mark): this assignment is the newer act, but
            # from the state the order has now (a second assignment is refused while one is sent).
            try:
                new, events = self._transition(
                    current, "assign", user, now, f"to {crew}", crew=crew, correlation_id=new.correlation_id
                )
            except IllegalTransition:
                self._sending.pop(order.id, None)
                await self._send_quietly(new, "cancel")
                raise
        self._commit(new, events)
        if current.crew and current.crew != crew and current.state in OPEN:
            await self._send_quietly(current, "cancel")  # a reassignment: the former crew stops
        self._failed_why.pop(order.id, None)
        self._retry_at.pop(order.id, None)
        for vehicle, payload in self._sending.pop(order.id, []):
            self.crew_answer(vehicle, payload)
        return new

    async def _send_quietly(self, order: WorkOrder, action: str) -> None:
        if self.crews is None or not order.crew:
            return
        try:
            await self.crews.send(order, action)
        except (DriverError, OSError) as exc:
            log.warning("work_order_send_failed", order=order.id, crew=order.crew, action=action, error=str(exc))

    # -- the crews' answers -------------------------------------------------------------------

    def crew_answer(self, vehicle: str, payload: Mapping[str, Any]) -> None:
        """A crew's order_status message (model's MQTT contract); never raises."""
        try:
            self._crew_answer(vehicle, payload)
        except Exception:  # noqa: BLE001 - the MQTT driver's callback must never fail
            log.exception("work_order_crew_answer_failed", vehicle=vehicle)

    def _crew_answer(self, vehicle: str, payload: Mapping[str, Any]) -> None:
        oid = payload.get("order_id") if isinstance(payload, Mapping) else None
        cid = payload.get("correlation_id") if isinstance(payload, Mapping) else None
        status = payload.get("status") if isinstance(payload, Mapping) else None
        if not isinstance(oid, str) or not isinstance(cid, str) or status not in CREW_ANSWERS:
            self.answers_garbage += 1
            if self._may_log("garbage"):
                log.warning(
                    "work_order_answer_garbage",
                    vehicle=vehicle,
                    payload=repr(payload)[:200],
                    total=self.answers_garbage,
                    unlogged=self._unlogged.pop("garbage", 0),
                )
            return
        if oid in self._sending:
            self._sending[oid].append((vehicle, payload))
            return
        order = self.orders.get(oid)
        if order is None or order.correlation_id != cid or order.crew != vehicle:
            self.answers_ignored += 1
            if self._may_log("stale"):
                log.info(
                    "work_order_answer_stale",
                    vehicle=vehicle,
                    order=oid,
                    status=status,
                    correlation_id=cid,
                    total=self.answers_ignored,
                    unlogged=self._unlogged.pop("stale", 0),
                )
            return
        event = CREW_ANSWERS[str(status)]
        reason = payload.get("reason")
        detail = str(reason)[:500] if reason else ""
        now = self.clock()
        changes: dict[str, Any] = {}
        if event == "refuse":
            self._refused.setdefault(oid, set()).add(vehicle)
            changes = {"crew": None, "correlation_id": ""}
        try:
            new, events = self._transition(order, event, f"crew:{vehicle}", now, detail, **changes)
        except IllegalTransition as exc:
            self.answers_ignored += 1
            log.warning("work_order_answer_illegal", vehicle=vehicle, order=oid, error=str(exc))
            return
        self._commit(new, events)
        if event == "repair" and not self._condition(new):
            self._close(new, now, "repaired, no alarm active" if new.key else "repaired")
        elif event == "refuse":
            self._wake.set()  # another crew at once

    def _may_log(self, kind: str) -> bool:
        """At most ANSWER_LOG_BURST lines of a kind of ignored answer per ANSWER_LOG_EVERY_S (a
        tracker repeating its QoS 1 answers must not flood the log from the core's loop); the
        others are counted in ``_unlogged`` and reported with the next line."""
        now = time.monotonic()
        start, logged = self._log_window.get(kind, (now, 0))
        if now - start >= ANSWER_LOG_EVERY_S:
            start, logged = now, 0
        if logged >= ANSWER_LOG_BURST:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            self._log_window[kind] = (start, logged)
            return False
        self._log_window[kind] = (start, logged + 1)
        return True

    # -- operators' acts ----------------------------------------------------------------------

    async def apply(self, request: OpsRequest) -> OpsResult:
        """An operator's act (model.OPS): authorised, journaled, audited; never raises for a refusal.

        Shielded: once started, the act completes, is journaled and audited even when its requester
        goes away (a front process dying cancels its requests): a crew may already have the order.
        Refused (BadShutdown, audited) once the server stops (:meth:`settle`)."""
        if self._stopping:
            result = OpsResult(BAD_SHUTDOWN, "the server is stopping: try again once it is back", "")
            self._audit(request, result)
            return result
        what = f"{request.op} {request.args.get('order', '')} by {request.caller.user}".replace("  ", " ")
        return await self._shielded(self._apply_audited(request), what)

    async def _shielded(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        """Run ``coro`` to its end even if the caller is cancelled; :meth:`settle` waits for it."""
        act = asyncio.ensure_future(coro)
        self._acts[act] = what
        act.add_done_callback(self._act_done)
        return await asyncio.shield(act)

    def _act_done(self, act: asyncio.Future[Any]) -> None:
        self._acts.pop(act, None)
        if act.cancelled():
            return
        exc = act.exception()  # retrieved here: its caller may have gone (cancelled) meanwhile
        if exc is not None and not isinstance(exc, (DriverError, OSError, IllegalTransition)):
            log.error("work_order_act_failed", error=repr(exc))

    async def settle(self, timeout: float) -> list[str]:
        """The server stops: start no new act, and wait (at most ``timeout`` s) for the running ones
        (an Assign waiting for the broker's acknowledgement) while the drivers still run, so that
        what the crews were sent is journaled. What is still running after that is returned and
        logged: such a crew may hold an order the journal does not show as assigned."""
        self._stopping = True
        pending = set(self._acts)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        left = [self._acts[a] for a in pending if not a.done() and a in self._acts]
        if left:
            log.warning("work_order_acts_unsettled_at_stop", acts=left, waited_s=timeout)
        return left

    async def _apply_audited(self, request: OpsRequest) -> OpsResult:
        try:
            result = await self._apply(request)
        except _Refusal as r:
            result = OpsResult(r.status, r.message, str(request.args.get("order", "") or ""))
        except IllegalTransition as exc:
            result = OpsResult(BAD_INVALID_STATE, str(exc), exc.order)
        except (DriverError, OSError) as exc:
            result = OpsResult(BAD_NO_COMMUNICATION, f"not sent to the crew: {exc}", str(request.args.get("order", "")))
        self._audit(request, result)
        return result

    def _audit(self, request: OpsRequest, result: OpsResult) -> None:
        c = request.caller
        arguments = {"op": request.op, "args": dict(request.args), "message": result.message}
        self.audit.record(
            AuditRecord(
                time.time_ns(),
                "work_order",
                c.user,
                tuple(sorted(c.roles)),
                c.session,
                c.client,
                "",
                result.order or str(request.args.get("order", "") or ""),
                canonical(arguments),
                status_name(result.status),
            )
        )

    def _authorise(self, caller: Caller, commune: str | None, what: str) -> None:
        try:
            held = roles_of(caller.roles)
        except ValueError:
            held = frozenset()
        ident = Identity(caller.user, held, None if caller.communes is None else frozenset(caller.communes))
        if ident.allows(Permission.DISPATCH, commune or None):
            return
        have = ", ".join(sorted(caller.roles)) or "no role"
        if Permission.DISPATCH not in ident.permissions:
            raise _Refusal(BAD_USER_ACCESS_DENIED, f"{caller.user} ({have}) may not {what} work orders")
        raise _Refusal(
            BAD_USER_ACCESS_DENIED, f"{caller.user} may not {what} work orders of {commune} (outside their communes)"
        )

    async def _order_arg(self, args: Mapping[str, Any]) -> WorkOrder:
        oid = args.get("order")
        if not isinstance(oid, str) or not oid:
            raise _Refusal(BAD_INVALID_ARGUMENT, "the order's id is required")
        order = self.orders.get(oid)
        if order is None:
            final = await self._final(oid)
            if final is not None:
                raise IllegalTransition(oid, final.state, "any act")
            raise _Refusal(BAD_NODE_ID_UNKNOWN, f"no work order {oid!r}")
        return order

    async def _final(self, oid: str) -> WorkOrder | None:
        """A closed or cancelled order (not in memory): what waits to be written, else the file,
        read in the service's thread (the writer may hold the file: refused after FINAL_READ_S)."""
        latest = self.writer.latest(oid)
        if latest is not None:
            return latest
        loop = asyncio.get_running_loop()
        try:
            known = await asyncio.wait_for(
                loop.run_in_executor(self._io, lambda: self.journal.orders(ids=[oid])), FINAL_READ_S
            )
        except (TimeoutError, OrderJournalError) as exc:
            raise _Refusal(
                BAD_NODE_ID_UNKNOWN, f"{oid} is not an open work order (the journal cannot be read now: {exc!r})"
            ) from None
        return known[0] if known else None

    async def _apply(self, request: OpsRequest) -> OpsResult:
        op, args, caller = request.op, request.args, request.caller
        if op not in OPS:
            raise _Refusal(BAD_INVALID_ARGUMENT, f"unknown work-order operation {op!r} ({', '.join(OPS)})")
        unknown = set(args) - set(OPS[op])
        if unknown:
            raise _Refusal(BAD_INVALID_ARGUMENT, f"{op}: unknown argument {sorted(unknown)[0]!r}")
        if op == "create":
            return self._create(args, caller)
        order = await self._order_arg(args)
        self._authorise(caller, order.commune, op)
        now = self.clock()
        if op == "propose":
            crews = self.crews.propose(order) if self.crews is not None else []
            return OpsResult(GOOD, "", order.id, {"crews": [(c, float(eta)) for c, eta in crews]})
        if op == "assign":
            crew = args.get("crew") or None
            if crew is not None:
                if not isinstance(crew, str) or crew not in self.ops.crews:
                    raise _Refusal(BAD_NODE_ID_UNKNOWN, f"no crew {crew!r} in operations.yaml")
                if order.service not in self.ops.crews[crew].skills:
                    raise _Refusal(BAD_INVALID_ARGUMENT, f"crew {crew} does not work for {order.service}")
            else:
                if self.crews is None:
                    raise _Refusal(BAD_INVALID_STATE, "no crew board: name the crew")
                crew = self._choose(order)
                if crew is None:
                    raise _Refusal(BAD_INVALID_STATE, f"no available crew with the skill {order.service}")
            next_state(order.id, order.state, "assign")  # refused before anything is sent
            if order.id in self._sending:  # one assignment at a time: the other would be lost
                raise _Refusal(BAD_INVALID_STATE, f"{order.id}: an assignment is being sent; try again")
            new = await self._assign(order, crew, caller.user)
            return OpsResult(GOOD, f"assigned to {crew}", new.id, {"crew": crew})
        if op == "cancel":
            reason = str(args.get("reason") or "")
            new, events = self._transition(order, "cancel", caller.user, now, reason)
            self._commit(new, events)
            if order.breached:
                self._late_alarm(new, False)
            if order.crew and order.state != OrderState.NEW:
                await self._send_quietly(order, "cancel")
            return OpsResult(GOOD, "cancelled", new.id)
        # close
        next_state(order.id, order.state, "close")
        self._close(order, now, str(args.get("note") or ""), user=caller.user)
        if order.crew and order.state in _HOLDING:
            # Closed while its crew still holds it (on site): the crew drops the job, as at a
            # Cancel (the crews' contract has "assign" and "cancel" only; the fleet frees the crew).
            await self._send_quietly(order, "cancel")
        return OpsResult(GOOD, "closed", order.id)

    def _create(self, args: Mapping[str, Any], caller: Caller) -> OpsResult:
        name = args.get("service")
        service = self.ops.services.get(name) if isinstance(name, str) else None
        if service is None:
            raise _Refusal(BAD_INVALID_ARGUMENT, f"unknown service {name!r} ({', '.join(self.ops.services)})")
        priority = args.get("priority") or service.default_priority
        if priority not in PRIORITIES:
            raise _Refusal(BAD_INVALID_ARGUMENT, f"unknown priority {priority!r} ({', '.join(PRIORITIES)})")
        device_name = args.get("device") or None
        lat, lon = args.get("lat"), args.get("lon")
        commune = ""
        if device_name is not None:
            try:
                device = self.config.device(device_name)
            except (KeyError, TypeError):
                raise _Refusal(BAD_NODE_ID_UNKNOWN, f"no device {device_name!r}") from None
            commune = device.commune
            if lat is None or lon is None:
                lat, lon = device.lat, device.lon
        try:
            lat = None if lat is None else float(lat)
            lon = None if lon is None else float(lon)
        except (TypeError, ValueError):
            raise _Refusal(BAD_INVALID_ARGUMENT, f"lat and lon must be numbers (got {lat!r}, {lon!r})") from None
        if (lat is None) != (lon is None) or (
            lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)
        ):
            raise _Refusal(BAD_INVALID_ARGUMENT, f"not a position: lat {lat!r}, lon {lon!r}")
        if device_name is None and lat is not None and lon is not None:
            commune = self._nearest(lat, lon, None, float("inf"))[1]
        if device_name is None and lat is None:
            raise _Refusal(BAD_INVALID_ARGUMENT, "a device or a position (lat, lon) is required")
        description = str(args.get("description") or "")
        self._authorise(caller, commune, "create")
        now = self.clock()
        order = self._new_order(
            "operator",
            service,
            str(priority),
            device_name,
            commune,
            lat,
            lon,
            description[:80] or service.name,
            description,
            origin_ns=now,
            now=now,
            user=caller.user,
        )
        self._commit(order, [self._note(order, "create", caller.user, now, description)])
        self._wake.set()
        return OpsResult(GOOD, "created", order.id)

    # -- citizen reports ----------------------------------------------------------------------

    def _nearest(
        self, lat: float, lon: float, classes: Sequence[str] | None, radius_m: float
    ) -> tuple[str | None, str]:
        """The nearest device (of ``classes``, None: any) within ``radius_m``: (name, commune), or (None, "")."""
        index = index_of(self.config)
        if not len(index.devices):
            return None, ""
        mask = np.ones(len(index.devices), bool)
        if classes is not None:
            codes = [index.classes.index(c) for c in classes if c in index.classes]
            mask = np.isin(index.cls, codes)
        if not mask.any():
            return None, ""
        d = np.where(mask, great_circle_m(index.lat, index.lon, lat, lon), np.inf)
        i = int(np.argmin(d))
        if not d[i] <= radius_m:
            return None, ""
        dev = index.devices[i]
        return dev.name, dev.commune

    async def citizen_report(self, report: CitizenReport) -> tuple[int, str, str, str]:
        """Store a validated report, attach it to a near open order of its service or create one:
        (status, message, report id, order id)."""
        service = self.ops.service_of_code(report.service_code)
        if service is None:
            return BAD_INVALID_ARGUMENT, f"unknown service_code {report.service_code!r}", "", ""
        now = self.clock()
        rid = report.id or f"CR-{next(self._report_numbers):06d}"
        requested = self._ops_time(report.requested_ns, time.time_ns()) if report.requested_ns else now
        radius = self.ops.open311.radius_m
        lat, lon = report.lat, report.lon
        target: WorkOrder | None = None
        if lat is not None and lon is not None:
            near = [
                o for o in self.orders.values() if o.service == service.name and o.lat is not None and o.lon is not None
            ]
            if near:
                d = great_circle_m(
                    np.array([o.lat for o in near], float), np.array([o.lon for o in near], float), lat, lon
                )
                i = int(np.argmin(d))
                if d[i] <= radius:
                    target = near[i]
        if target is not None:
            new = dataclasses.replace(target, reports=(*target.reports, rid))
            stored = dataclasses.replace(report, id=rid, requested_ns=requested, order=new.id)
            self._commit(new, [self._note(new, "attach", "citizen", now, f"report {rid}")], [stored])
            message = f"attached to {new.id}"
        else:
            device, commune = None, ""
            if lat is not None and lon is not None:
                device, commune = self._nearest(lat, lon, service.classes, radius)
                if device is None:
                    commune = self._nearest(lat, lon, None, float("inf"))[1]
            new = self._new_order(
                "citizen",
                service,
                service.default_priority,
                device,
                commune,
                lat,
                lon,
                report.service_code,
                report.description or report.address,
                origin_ns=requested,
                now=now,
                user="citizen",
                reports=(rid,),
            )
            stored = dataclasses.replace(report, id=rid, requested_ns=requested, order=new.id)
            self._commit(new, [self._note(new, "create", "citizen", now, f"report {rid}")], [stored])
            self._wake.set()
            message = f"order {new.id} created" + ("" if device else " (no equipment near: unlocated)")
        self.audit.record(
            AuditRecord(
                time.time_ns(),
                "citizen_report",
                "citizen",
                (),
                "",
                report.client,
                "",
                rid,
                canonical({"service_code": report.service_code, "order": new.id}),
                "Good",
            )
        )
        # Answered once on disk: a report id given to a citizen is never given again after a crash.
        flushed = await asyncio.get_running_loop().run_in_executor(self._io, self.writer.flush, REPORT_FLUSH_S)
        if not flushed:
            log.warning("citizen_report_not_yet_written", report=rid, journal=str(self.journal.path))
        return GOOD, message, rid, new.id

    async def reports(self, *query: Any) -> list[tuple[Any, str | None]]:
        """model.REQUEST_REPORTS: (ids, service_code, start_ns, end_ns, bbox, limit) -> public
        reports with their order's state, read from the journal in a thread (what waits written first).

        The front bounds the query by the operations clock (it is given it when it starts:
        scada/front/orders.py), the clock the reports are stored in: no conversion here."""

        def read() -> list[tuple[Any, str | None]]:
            self.writer.flush(READ_FLUSH_S)
            return [(dataclasses.asdict(r), state) for r, state in self.journal.reports(*query)]

        if self._reads.locked():  # the journal is slow: the next GETs are told at once, not queued
            raise RemoteAlarmError("value", f"{MAX_READS} report queries already reading the journal")
        async with self._reads:
            return await asyncio.get_running_loop().run_in_executor(self._io, read)

    async def purge(self) -> int:
        """Null the contact details of reports whose order closed ``purge_contact_after_s`` ago."""
        now = self.clock()
        after = int(self.ops.open311.purge_contact_after_s * 1e9)

        def due() -> tuple[list[str], list[OrderEvent]]:
            self.writer.flush(READ_FLUSH_S)  # a closure still waiting for the writer counts (a busy machine)
            ids = self.journal.to_purge(now - after, now - after)
            reports = self.journal.reports(ids) if ids else []
            states = {o.id: o.state for o in self.journal.orders(ids=[r.order for r, _ in reports if r.order])}
            events = [
                OrderEvent(
                    now, r.order, "purge", states[r.order], states[r.order], "server", None, f"contact of {r.id}"
                )
                for r, _ in reports
                if r.order in states
            ]
            return ids, events

        try:
            ids, events = await asyncio.get_running_loop().run_in_executor(self._io, due)
        except OrderJournalError as exc:
            log.warning("work_order_purge_failed", error=str(exc))
            return 0
        if not ids:
            return 0
        self.writer.submit(events=events, purged={rid: now for rid in ids})
        for listen in self.listeners:
            try:
                listen([], events)
            except Exception:  # noqa: BLE001
                log.exception("work_order_listener_failed")
        log.info("citizen_contacts_purged", reports=len(ids))
        return len(ids)

    # -- the rest -----------------------------------------------------------------------------

    def open_orders(self) -> Sequence[WorkOrder]:
        return list(self.orders.values())

    def reload(self, config: Any, alarms: Any) -> None:
        """Follow a new configuration and alarm engine; the orders stay (the engine's subscriber
        list is copied by scada/reload.py, this one's included)."""
        self.config, self.ops, self.alarms = config, config.operations, alarms
        if self.on_alarm_events not in alarms.subscribers:
            alarms.subscribers.append(self.on_alarm_events)
        self.process_alarm_events()  # what waits first: an activation queued is not made twice
        self._reconcile()
        if self.crews is not None:
            self._tell_busy()

    def stats(self) -> dict[str, int]:
        return {
            "orders_open": len(self.orders),
            "orders_breached": sum(1 for o in self.orders.values() if o.breached),
            "orders_created": self.created,
            "orders_closed": self.closed,
            "order_breaches": self.breaches,
            "dispatch_failures": self.dispatch_failures,
            "crew_answers_ignored": self.answers_ignored,
            "crew_answers_garbage": self.answers_garbage,
            **self.writer.stats(),
        }

    def close(self) -> None:
        """Write what waits, then close the journal."""
        self.writer.close()
        self._io.shutdown(wait=False, cancel_futures=True)
        self.journal.close()
