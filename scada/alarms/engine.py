"""The alarm engine: alarms.yaml's definitions evaluated, vectorised, over the TagDB's change batches.

Every alarm definition is instantiated once per device it applies to
(:mod:`scada.alarms.instances`); an *instance* is one row of the engine's columns:

* ``raw``: the process condition as the values say now (:mod:`scada.alarms.evaluate`);
* ``cond``: the condition after its on-delay / off-delay: what the ISA-18.2 table sees;
* ``state``: the ISA-18.2 state (:mod:`scada.alarms.states`), moved by the table only;
* ``suppressed``: a cause alarm of the same device is active (:mod:`scada.alarms.suppression`).

A change batch costs: one random read per changed tag for the (instance, tag) pairs reading
it, sorted into definition order (:mod:`scada.alarms.lookup`); one gather of the watched
values and statuses; one numpy evaluation per alarm definition over its slice; and Python
objects only for the transitions (:mod:`scada.alarms.events`), which go to the journal (with
the states, in one transaction), to the subscribers (OPC UA Alarms & Conditions) and to the
log. Operator actions are in :mod:`scada.alarms.operator`.

Journal faults (disk full, read-only file system, I/O error): the in-memory states stay
applied (they are the field's truth: the alarms keep being evaluated and notified), and the
rows wait in the backlog of :mod:`scada.alarms.backlog`, retried from :meth:`AlarmEngine.tick`.
Operator actions while the journal cannot write are accepted and queued the same way
(refusing an acknowledgement would leave the operator without a way to work the alarm). A
server alarm ``storage_failing`` (source: the alarm journal) is raised (notified, journaled
with the backlog) and cleared when the backlog is written. The disk always holds a consistent
prefix: a crash (SIGKILL) during the outage loses the rows of the outage and nothing else, and
the restart restores the states as they were before it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from scada.alarms.backlog import JournalWriter
from scada.alarms.config import PRIORITIES
from scada.alarms.evaluate import RateMemory, TagColumns, raw_flips
from scada.alarms.events import ANNOUNCED, ANNOUNCING, AlarmEvent, journal_row
from scada.alarms.instances import AlarmInstances
from scada.alarms.journal import Journal, JournalError, JournalRow, Key, StateRecord
from scada.alarms.operator import OperatorActions
from scada.alarms.present import current_value, message
from scada.alarms.states import NEEDS_ACK, Event, State, apply, transition
from scada.config import Config
from scada.tagdb import ChangeBatch, TagDB

__all__ = ["ANNOUNCED", "STORAGE_FAILING", "AlarmEngine", "AlarmEvent"]

log = structlog.get_logger("scada.alarms")

LOG_EACH = 20  # transitions logged one by one per evaluation; more are summarised in one line
RATE_QUIET_S = 2.5  # a rate-of-change condition clears when the value has not moved for this long
STORAGE_FAILING = "storage_failing"
LOGGED_EVENTS = ("ACTIVATE", "CLEAR", "ACK", "SHELVE", "RESET")  # one log line each (below LOG_EACH)


class AlarmEngine(OperatorActions):
    """Evaluates every configured alarm; see the module docstring."""

    def __init__(self, config: Config, tagdb: TagDB, journal: Journal, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.tagdb = tagdb
        self.journal = journal
        self.clock = clock
        self.subscribers: list[Callable[[Sequence[AlarmEvent]], None]] = []
        self.instances = inst = AlarmInstances(config, len(tagdb))
        # The instance tables, by their names of old (readers: reload, OPC UA, benches, tests).
        self.defs, self.n, self._index = inst.defs, inst.n, inst.index
        self.inst_def, self.inst_dev, self.inst_tag = inst.inst_def, inst.inst_dev, inst.inst_tag
        n = inst.n
        # Columns
        self.state = np.zeros(n, np.uint8)
        self.raw = np.zeros(n, bool)
        self.cond = np.zeros(n, bool)
        self.raw_since = np.zeros(n, np.int64)  # when raw last changed: delays count from it
        self.cond_since = np.zeros(n, np.int64)  # when cond last changed (activation time)
        self.suppressed = np.zeros(n, bool)
        self.shelved_until = np.zeros(n, np.int64)
        self.prev_value = np.full(n, np.nan)  # rate of change
        self.prev_time = np.zeros(n, np.int64)
        self.pending = np.zeros(n, bool)  # raw != cond, waiting for a delay
        self._pending_idx = np.zeros(0, np.int64)  # a superset of the pending instances, sorted
        self.extra: dict[int, dict[str, Any]] = {}  # instance -> shelve user/reason, assignment
        self.one_shot = np.zeros(n, bool)  # shelved until the condition returns to normal
        self.last_event_ns = np.zeros(n, np.int64)  # time and number of each instance's last event
        self.event_seq = np.zeros(n, np.int64)
        self.announced_since = np.zeros(n, np.int64)  # escalation counts from it
        self.escalated = np.zeros(n, bool)
        self.transitions = 0
        self.evaluations = 0
        self._system: dict[tuple[str, str], bool] = {}  # (source, name) -> active
        # The event that raised each active server alarm: what a client shown the alarms after a
        # loss (a restarted OPC UA front, a resynchronisation) must see again.
        self._system_events: dict[tuple[str, str], AlarmEvent] = {}
        self._announced_at: collections.deque[int] = collections.deque()  # times alarms were announced
        self.writer = JournalWriter(journal, self._state_records, self._storage_failing, self._storage_back)

    def instance(self, alarm: str, device: str) -> int:
        """The instance of ``alarm`` on ``device``; KeyError with a readable message if none."""
        return self.instances.instance(alarm, device)

    # Evaluation

    def _affected(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.instances.affected(ids)

    def process(self, batch: ChangeBatch | None) -> list[AlarmEvent]:
        """Evaluate the alarms reading the batch's tags; return (and journal) the transitions."""
        if batch is None or not len(batch.ids):
            return []
        ids = np.asarray(batch.ids, np.int64)
        if len(ids) * 2 > len(self.tagdb):
            return self.evaluate_all()
        return self._step(*self._affected(ids), self.clock())

    def evaluate_all(self) -> list[AlarmEvent]:
        """Evaluate every instance (at start, after a consumer overflow, for large batches)."""
        return self._step(self.instances.all, self.inst_tag, self.instances.starts, self.clock(), every=True)

    def _step(
        self, inst: np.ndarray, tags: np.ndarray, bounds: np.ndarray, now: int, every: bool = False
    ) -> list[AlarmEvent]:
        self.evaluations += 1
        tdb = self.tagdb
        changed = raw_flips(
            self.instances,
            TagColumns(tdb.value, tdb.status, tdb.source_time),
            self.raw,
            RateMemory(self.prev_value, self.prev_time),
            inst,
            tags,
            bounds,
            every,
        )
        if len(changed):
            self.raw[changed] ^= True
            self.raw_since[changed] = now
            # Delays: a condition change is due once raw has held for its on/off delay.
            self._set_pending(changed)
        return self._advance(now, changed)

    def _set_pending(self, inst: np.ndarray) -> None:
        """pending = raw != cond for ``inst``, whose raw condition changed (pending changes with
        raw or cond only); the index list spares a scan of every instance."""
        now_pending = self.raw[inst] != self.cond[inst]
        self.pending[inst] = now_pending
        new = inst[now_pending]
        if len(new):
            self._pending_idx = np.union1d(self._pending_idx, new)

    def tick(self) -> list[AlarmEvent]:
        """Time-driven work: due delays, shelve expiries, quiet rate-of-change alarms, escalation,
        and the retry of a journal outage's backlog."""
        now = self.clock()
        self.writer.retry_due()
        events: list[AlarmEvent] = []
        quiet = self.raw & self.instances.is_rate & (self.prev_time > 0) & (now - self.prev_time > RATE_QUIET_S * 1e9)
        rate = np.flatnonzero(quiet)
        if len(rate):
            self.raw[rate] = False
            self.raw_since[rate] = now
            self._set_pending(rate)
        events += self._advance(now, rate)
        expired = np.flatnonzero((self.state == State.SHELVED) & (self.shelved_until > 0) & (self.shelved_until <= now))
        for i in expired.tolist():
            events += self._operator(i, Event.SHELVE_EXPIRED, "", "shelve expired", now)
        # A removal from service ends too (its expiry shares the column: see remove_from_service).
        ended = (self.state == State.OUT_OF_SERVICE) & (self.shelved_until > 0) & (self.shelved_until <= now)
        for i in np.flatnonzero(ended).tolist():
            events += self._operator(i, Event.RETURN_TO_SERVICE, "server", "out of service expired", now)
        events += self._escalate(now)
        return events

    def _escalate(self, now: int) -> list[AlarmEvent]:
        """Alarms their service has not acknowledged within its deadline: one ESCALATE row each."""
        owing = NEEDS_ACK[self.state]
        self.escalated &= owing  # acknowledged (or gone): a later occurrence may be escalated again
        late = np.flatnonzero(owing & ~self.escalated & (now - self.announced_since > self.instances.ack_deadline_ns))
        if not len(late):
            return []
        self.escalated[late] = True
        events = [
            self._event(
                int(i),
                "ESCALATE",
                now,
                "",
                f"not acknowledged within "
                f"{self.instances.ack_deadline_ns[i] / 1e9:g} s by {self.instances.definition(i).service}",
            )
            for i in late.tolist()
        ]
        self._record(events)
        for e in events[:LOG_EACH]:
            log.warning(
                "alarm_not_acknowledged",
                alarm=e.alarm,
                device=e.device,
                service=e.service,
                deadline_s=self.instances.ack_deadline_ns[e.instance] / 1e9,
            )
        return events

    # State: delays, suppression, the ISA-18.2 table

    def _due(self, now: int) -> np.ndarray:
        """Condition changes whose delay is over: applied to ``cond``; returns their instances."""
        pend = self._pending_idx = self._pending_idx[self.pending[self._pending_idx]]
        if not len(pend):
            return np.zeros(0, np.int64)
        delay = np.where(self.raw[pend], self.instances.on_delay_ns[pend], self.instances.off_delay_ns[pend])
        due = pend[now - self.raw_since[pend] >= delay]
        self.cond[due] = self.raw[due]
        self.cond_since[due] = now
        self.pending[due] = False
        return due

    def _follow_causes(self, changed: np.ndarray, now: int) -> tuple[list[AlarmEvent], np.ndarray]:
        """Suppression by design follows the causes among ``changed``; returns the events and the
        instances released from suppression (their condition settled)."""
        graph = self.instances.suppression
        released = np.zeros(0, np.int64)
        if not len(changed) or not len(graph):
            return [], released
        deps = graph.dependents(changed)
        if not len(deps):
            return [], released
        new_sup = graph.wanted(deps, self.raw, self.cond, self.instances.is_comm_loss)
        start = deps[new_sup & ~self.suppressed[deps]]
        self.suppressed[deps] = new_sup
        # Only an alarm with something to hide changes state (and is journaled): a normal one
        # just carries the flag, and is suppressed if it activates.
        start = start[ANNOUNCED[self.state[start]] | self.cond[start]]
        events = self._apply(start, Event.SUPPRESS, now, strict=False)
        released = deps[~new_sup & (self.state[deps] == State.SUPPRESSED)]
        # Leaving suppression: the condition as it stands decides, delays applied.
        self._settle(released, now)
        events += self._apply(released, Event.UNSUPPRESS, now)
        return events, released

    def _advance(self, now: int, raw_changed: np.ndarray) -> list[AlarmEvent]:
        """Due condition changes, suppression by design, then the table's events, journaled."""
        due = self._due(now)
        if not len(due) and not len(raw_changed):
            return []
        events, released = self._follow_causes(np.union1d(raw_changed, due), now)
        # The condition changes, except where leaving suppression already accounted for them.
        if len(due):
            due = np.setdiff1d(due, released, assume_unique=True)
            up = due[self.cond[due]]
            down = due[~self.cond[due]]
            hide = up[self.suppressed[up] & (self.state[up] == State.NORMAL)]
            events += self._apply(hide, Event.SUPPRESS, now, strict=False)
            events += self._apply(up, Event.ACTIVATE, now)
            events += self._apply(down, Event.CLEAR, now)
        if events:
            self._record(events)
        # A one-shot shelve ends when the condition returns to normal (OPC UA Part 9 OneShotShelved).
        if len(due):
            for i in down[self.one_shot[down] & (self.state[down] == State.SHELVED)].tolist():
                events += self._operator(
                    i, Event.UNSHELVE, "", "one-shot shelve ended: the condition returned to normal", now
                )
        return events

    def _settle(self, inst: np.ndarray, now: int) -> None:
        """Bring cond up to raw where the delay is over (before leaving a hidden state)."""
        if not len(inst):
            return
        delay = np.where(self.raw[inst], self.instances.on_delay_ns[inst], self.instances.off_delay_ns[inst])
        due = inst[(self.raw[inst] != self.cond[inst]) & (now - self.raw_since[inst] >= delay)]
        self.cond[due] = self.raw[due]
        self.cond_since[due] = now
        self.pending[due] = False

    def _apply(self, inst: np.ndarray, event: Event, now: int, strict: bool = True) -> list[AlarmEvent]:
        if not len(inst):
            return []
        new, legal = apply(self.state[inst], event, self.cond[inst], self.instances.latching[inst])
        if strict and not legal.all():
            for i in inst[~legal].tolist():
                log.error(
                    "alarm_illegal_transition",
                    alarm=self._name(i),
                    device=self._device(i),
                    state=State(int(self.state[i])).name,
                    alarm_event=event.name,
                )
        moved = inst[legal]
        self.state[moved] = new[legal]
        return [self._event(int(i), event.name, now) for i in moved.tolist()]

    def _operator(self, i: int, event: Event, user: str, comment: str, now: int | None = None) -> list[AlarmEvent]:
        """One operator transition (or a timed one: shelve expiry), journaled and notified."""
        now = self.clock() if now is None else now
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED, Event.RETURN_TO_SERVICE):
            self._settle(np.array([i]), now)
        self.state[i] = transition(int(self.state[i]), event, bool(self.cond[i]), bool(self.instances.latching[i]))
        if self.state[i] != State.SHELVED:
            self.one_shot[i] = False
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED):
            self.shelved_until[i] = 0
            self.extra.get(i, {}).pop("shelve", None)
        elif event == Event.RETURN_TO_SERVICE:
            self.shelved_until[i] = 0  # the removal's expiry
            self.extra.get(i, {}).pop("shelve", None)  # a shelve it replaced is over too
        events = [self._event(i, event.name, now, user, comment)]
        # A design suppression whose cause is still active applies again once visible.
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED, Event.RETURN_TO_SERVICE) and self.suppressed[i]:
            events += self._apply(np.array([i]), Event.SUPPRESS, now, strict=False)
        self._record(events)
        return events

    # Alarms of the server itself (a history spool filling up...): journaled and notified,
    # with the server as their device; they have no tag, so no instance in the columns.

    def system_alarm(
        self,
        name: str,
        active: bool,
        message: str,
        priority: str = "high",
        service: str | None = None,
        source: str = "server",
    ) -> AlarmEvent | None:
        """Raise (``active``) or clear a server alarm; returns its event, None when unchanged.

        ``source`` (its device) tells apart alarms of one name, one per server task for example.
        """
        if self._system.get((source, name), False) == active:
            return None
        if active:
            self._system[(source, name)] = True
        else:  # gone when cleared: one entry per source ever raised would grow without bound
            self._system.pop((source, name), None)
        service = service or next(iter(self.config.alarms.services), "")
        # Shown while active, gone when it clears: no acknowledgement is owed (the server's
        # own condition has no operator workflow; the journal keeps both rows).
        e = AlarmEvent(
            self.clock(),
            -1,
            name,
            source,
            "",
            "ACTIVATE" if active else "CLEAR",
            State.ACK_ACTIVE if active else State.NORMAL,
            active,
            None,
            priority,
            PRIORITIES[priority],
            service,
            message,
        )
        if active:
            self._system_events[(source, name)] = e
        else:
            self._system_events.pop((source, name), None)
        # Through the backlog: storage_failing itself is raised while the journal cannot write.
        self.writer.write([journal_row(e)], ())
        (log.warning if active else log.info)("system_alarm", alarm=name, source=source, active=active, message=message)
        for notify in self.subscribers:
            notify([e])
        return e

    def _storage_failing(self, exc: JournalError) -> None:
        self.system_alarm(
            STORAGE_FAILING,
            True,
            f"alarm journal {exc.path} cannot be written ({exc.reason}): "
            f"alarms still run, their journal rows wait in memory and are retried; free space "
            f"or repair the disk",
            source="alarm_journal",
        )

    def _storage_back(self, rows: int, dropped: int) -> None:
        self.system_alarm(
            STORAGE_FAILING,
            False,
            f"alarm journal {self.journal.path} writes again: "
            f"{rows} waiting rows written" + (f", {dropped} dropped when the backlog was full" if dropped else ""),
            source="alarm_journal",
        )

    # Queries

    def announced(self) -> np.ndarray:
        """Instances shown to operators (active, or owing an acknowledgement or a reset)."""
        return np.flatnonzero(ANNOUNCED[self.state])

    def active_system_events(self) -> list[AlarmEvent]:
        """The events that raised the server alarms active now (one per alarm and source)."""
        return [e for key, e in self._system_events.items() if self._system.get(key)]

    def describe(self, i: int) -> dict[str, Any]:
        """Instance ``i`` as the HMI and ``scada alarms`` show it."""
        a = self.instances.definition(i)
        d = self.instances.device(i)
        return {
            "alarm": a.name,
            "device": d.name,
            "commune": d.commune,
            "state": State(int(self.state[i])).name,
            "active": bool(self.cond[i]),
            "suppressed": bool(self.suppressed[i]),
            "priority": a.priority,
            "service": a.service,
            "since_ns": int(self.cond_since[i]),
            "message": self._message(i),
        }

    def listing(self, states: Sequence[State] | None = None) -> list[dict[str, Any]]:
        """Instances in the given states (default: announced), for the HMI and `scada alarms`."""
        mask = ANNOUNCED[self.state] if states is None else np.isin(self.state, np.array(states, np.uint8))
        return [self.describe(int(i)) for i in np.flatnonzero(mask)]

    def rate(self, window_s: float = 600.0) -> int:
        """Alarms announced in the last ``window_s`` (ISA-18.2: more than 10 in 10 minutes is a flood)."""
        horizon = self.clock() - int(window_s * 1e9)
        times = self._announced_at
        while times and times[0] < horizon:
            times.popleft()
        return len(times)

    # Events, journal, restart

    def _name(self, i: int) -> str:
        return self.instances.definition(i).name

    def _device(self, i: int) -> str:
        return self.instances.device(i).name

    def _value(self, i: int) -> float | None:
        return current_value(self.tagdb.value, int(self.inst_tag[i]))

    def _message(self, i: int) -> str:
        return message(self.config, self.instances.definition(i), self.instances.device(i), self._value(i))

    def _event(self, i: int, event: str, now: int, user: str = "", comment: str = "") -> AlarmEvent:
        a = self.instances.definition(i)
        d = self.instances.device(i)
        # Every event built is journaled and notified: its number and time are the instance's last.
        seq = int(self.event_seq[i]) + 1
        self.event_seq[i] = seq
        self.last_event_ns[i] = now
        return AlarmEvent(
            now,
            i,
            a.name,
            d.name,
            d.commune,
            event,
            State(int(self.state[i])),
            bool(self.cond[i]),
            self._value(i),
            a.priority,
            a.severity,
            a.service,
            self._message(i),
            user,
            comment,
            seq,
        )

    def _state_record(self, i: int) -> tuple[Key, StateRecord]:
        shelve = self.extra.get(i, {}).get("shelve", ("", ""))
        return (self._name(i), self._device(i)), StateRecord(
            state=State(int(self.state[i])),
            active=bool(self.cond[i]),
            acked=State(int(self.state[i])) not in (State.UNACK_ACTIVE, State.RTN_UNACK),
            since_ns=int(self.cond_since[i]) or None,
            shelved_until_ns=int(self.shelved_until[i]) or None,
            shelve_user=shelve[0],
            shelve_reason=shelve[1],
            assigned_to=self.extra.get(i, {}).get("assigned", ""),
            last_value=self._value(i),
            one_shot=bool(self.one_shot[i]),
            last_event_ns=int(self.last_event_ns[i]) or None,
            event_seq=int(self.event_seq[i]),
        )

    def _state_records(self, inst: Sequence[int]) -> list[tuple[Key, StateRecord]]:
        return [self._state_record(i) for i in inst]

    def _record(self, events: Sequence[AlarmEvent], persist: Sequence[int] = ()) -> None:
        """Journal (with the states of the instances touched), count, log and notify ``events``."""
        rows = [journal_row(e) for e in events]
        touched = sorted({e.instance for e in events} | set(persist))
        self.writer.write(rows, touched)
        self.transitions += len(rows)
        announced = [e for e in events if e.state == State.UNACK_ACTIVE and e.event in ANNOUNCING]
        self._announced_at.extend(e.time_ns for e in announced)
        for e in announced:
            self.announced_since[e.instance] = e.time_ns
        _log_events(events)
        for notify in self.subscribers:
            notify(events)

    def _journal_write(self, rows: Sequence[JournalRow], touched: Sequence[int]) -> None:
        """Journal ``rows`` with the states of ``touched`` (behind a journal outage's backlog)."""
        self.writer.write(rows, touched)

    @property
    def journal_backlog(self) -> int:
        """Journal rows waiting in memory for the journal to write again (0: none)."""
        return len(self.writer.backlog)

    @property
    def backlog_dropped(self) -> int:
        """Journal rows lost to a full backlog since the start (counter)."""
        return self.writer.dropped

    def flush_journal(self) -> bool:
        """Write the backlog of a journal outage, oldest first, with the current states of the
        instances it touched, in one transaction; True once nothing waits."""
        return self.writer.flush()

    def restore(self) -> int:
        """Take back the states saved by a previous run (call before the first evaluation).

        A restored active alarm is not announced again; one whose condition cleared while the
        server was down clears at the first evaluation, and that is journaled.
        """
        saved = self.journal.load_states()
        n = 0
        for (alarm, device), rec in saved.items():
            i = self._index.get((alarm, device))
            if i is None:  # the alarm or the device left the configuration
                continue
            self.state[i] = int(rec.state)
            self.cond[i] = self.raw[i] = rec.active
            self.pending[i] = False
            self.cond_since[i] = self.raw_since[i] = rec.since_ns or 0
            # An alarm already past its acknowledgement deadline was escalated by the previous
            # run (or will be seen by an operator now): it is not escalated a second time.
            self.announced_since[i] = rec.since_ns or 0
            self.escalated[i] = self.clock() - (rec.since_ns or 0) > self.instances.ack_deadline_ns[i]
            self.shelved_until[i] = rec.shelved_until_ns or 0
            if rec.shelve_user or rec.shelve_reason:
                self.extra.setdefault(i, {})["shelve"] = (rec.shelve_user, rec.shelve_reason)
            if rec.assigned_to:
                self.extra.setdefault(i, {})["assigned"] = rec.assigned_to
            self.one_shot[i] = rec.one_shot and rec.state == State.SHELVED
            self.last_event_ns[i] = rec.last_event_ns or 0
            self.event_seq[i] = rec.event_seq
            n += 1
        return n

    async def run(self, period: float = 0.5) -> None:
        """Consume the TagDB's change batches and tick the timers, until cancelled."""
        consumer = self.tagdb.subscribe("alarms", maxsize=4096)
        try:
            self.evaluate_all()
            next_tick = time.monotonic() + period
            while True:
                batch = await consumer.get_until(next_tick)
                if consumer.take_overflow():  # batches were dropped: evaluate everything again
                    self.evaluate_all()
                elif batch is not None:
                    self.process(batch)
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + period
        finally:
            self.tagdb.unsubscribe(consumer)
            if self.writer.waiting and not self.flush_journal():  # a last chance before the process ends
                log.error("alarm_journal_rows_lost", journal=str(self.journal.path), rows=len(self.writer.backlog))


def _log_events(events: Sequence[AlarmEvent]) -> None:
    """A line per notable event; a flood is one line (a log line costs more than evaluating and
    journaling the alarm)."""
    if len(events) <= LOG_EACH:
        for e in events:
            if e.event in LOGGED_EVENTS:
                log.info(
                    "alarm",
                    alarm=e.alarm,
                    device=e.device,
                    alarm_event=e.event,
                    state=e.state.name,
                    priority=e.priority,
                    service=e.service,
                    user=e.user or None,
                    message=e.message,
                )
    else:
        counts: dict[str, int] = {}
        for e in events:
            counts[f"{e.alarm}:{e.event}"] = counts.get(f"{e.alarm}:{e.event}", 0) + 1
        log.warning("alarm_burst", transitions=len(events), by_alarm=counts)
