"""The alarm engine: alarms.yaml's definitions evaluated, vectorised, over the TagDB's change batches.

Every alarm definition is instantiated once per device it applies to; an *instance* is one
row of the engine's columns:

* ``raw``: the process condition as the values say now (limits with deadband hysteresis,
  states, rate of change, communication loss, expressions);
* ``cond``: the condition after its on-delay / off-delay: what the ISA-18.2 table sees;
* ``state``: the ISA-18.2 state (``scada.alarms.states``), moved by the table only;
* ``suppressed``: a cause alarm of the same device is active (suppression by design).

A change batch costs: one random read per changed tag for the (instance, tag) pairs reading
it, sorted into definition order; one gather of the watched values and statuses; one numpy
evaluation per alarm definition over its slice; and Python objects only for the
transitions, which go to the journal (with the states, in one transaction), to the
subscribers (OPC UA Alarms & Conditions) and to the log.

Suppression uses the cause's *raw* condition, not its delayed one: a cabinet's mains loss
(on-delay 2 s) must hide its lamp alarms from the first second, not after they have been
announced. A device's ``comm_loss`` alarm, when its type has one, suppresses every other
alarm of the device: with no data, its process alarms are meaningless. That one suppresses
only once its own on-delay is over: a process alarm whose tags are Bad keeps its condition
anyway, so there is nothing to hide while the link may still come back, and a server start
(every tag Bad until its first poll) must not suppress and unsuppress every alarm in town.

A process alarm whose tag is Bad keeps its condition (no data neither raises nor clears).

Journal faults (disk full, read-only file system, I/O error): the in-memory states stay
applied (they are the field's truth: the alarms keep being evaluated and notified), and the
rows the journal refused wait in a bounded in-memory backlog, in order. The backlog is retried
with backoff (from :meth:`AlarmEngine.tick`) and written first, with the current state of
every instance it touched, in one transaction, before anything newer: once the disk is back
the journal holds every row in order and the saved states equal memory. Operator actions
while the journal cannot write are accepted and queued the same way (refusing an
acknowledgement would leave the operator without a way to work the alarm). A server alarm
``storage_failing`` (source: the alarm journal) is raised (notified, journaled with the
backlog) and cleared when the backlog is written. The disk always holds a consistent prefix:
a crash (SIGKILL) during the outage loses the rows of the outage and nothing else, and the
restart restores the states as they were before it. Beyond BACKLOG_ROWS the oldest rows are
dropped and counted (the states are never dropped: one per instance at most).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from scada import status as st
from scada.alarms.config import LIMIT_CONDITIONS, AlarmDef
from scada.alarms.expr import compile_expression
from scada.alarms.journal import Journal, JournalError, JournalRow, StateRecord
from scada.alarms.states import NEEDS_ACK, Event, IllegalTransition, State, apply, transition
from scada.config import Config
from scada.tagdb import ChangeBatch, TagDB

log = structlog.get_logger("scada.alarms")

COMM_LOSS_CODES = np.array([st.BAD_COMMUNICATION_ERROR, st.BAD_NO_COMMUNICATION], np.uint32)
LOG_EACH = 20  # transitions logged one by one per evaluation; more are summarised in one line
RATE_QUIET_S = 2.5  # a rate-of-change condition clears when the value has not moved for this long
ANNOUNCING = ("ACTIVATE", "UNSHELVE", "SHELVE_EXPIRED", "UNSUPPRESS", "RETURN_TO_SERVICE")
ANNOUNCED = np.zeros(len(State), bool)  # shown to operators
# Journal outage: rows kept in memory at most (~300 B each), and the retry backoff (s).
BACKLOG_ROWS = 100_000
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0
STORAGE_FAILING = "storage_failing"
ANNOUNCED[[State.UNACK_ACTIVE, State.ACK_ACTIVE, State.RTN_UNACK, State.LATCHED]] = True


def _bad(status: np.ndarray) -> np.ndarray:
    return (status & np.uint32(0xC0000000)) == np.uint32(0x80000000)


def _usable(status: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Data that may raise or clear a process alarm: a number, with a status not Bad."""
    ok = ~_bad(status)
    ok &= ~np.isnan(value)
    return ok


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition or operator action, as subscribers (OPC UA A&C) receive it."""

    time_ns: int
    instance: int
    alarm: str
    device: str
    commune: str
    event: str  # an Event name, or NOTE / ASSIGN
    state: State
    active: bool
    value: float | None
    priority: str
    severity: int
    service: str
    message: str
    user: str = ""
    comment: str = ""
    seq: int = 0  # the instance's event number (OPC UA EventIds are derived from it and time_ns)


class AlarmEngine:
    """Evaluates every configured alarm; see the module docstring."""

    def __init__(self, config: Config, tagdb: TagDB, journal: Journal, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.tagdb = tagdb
        self.journal = journal
        self.clock = clock
        self.defs: tuple[AlarmDef, ...] = config.alarms.alarms
        self.subscribers: list[Callable[[Sequence[AlarmEvent]], None]] = []
        devices = config.devices
        dev_index = {d.name: i for i, d in enumerate(devices)}
        starts, inst_def, inst_dev, inst_tag = [], [], [], []
        self._expr: dict[int, tuple[Callable, list[np.ndarray]]] = {}
        pairs_tag: list[np.ndarray] = []
        pairs_inst: list[np.ndarray] = []
        n = 0
        for k, a in enumerate(self.defs):
            t = config.types[a.type]
            devs = np.array(
                [dev_index[a.device]] if a.device else [i for i, d in enumerate(devices) if d.type == a.type], np.int64
            )
            first = np.array([devices[i].first_tag_id for i in devs], np.int64)
            starts.append(n)
            inst = np.arange(n, n + len(devs), dtype=np.int64)
            inst_def.append(np.full(len(devs), k, np.int32))
            inst_dev.append(devs)
            if a.condition == "expression":
                names = [p.name for p in t.points]
                evaluate, used = compile_expression(a.expression, names)
                tags = [first + names.index(p) for p in used]
                self._expr[k] = (evaluate, tags, used)
                watched = tags[0]
                for tg in tags:
                    pairs_tag.append(tg)
                    pairs_inst.append(inst)
            else:
                # comm_loss watches the device's first tag: a link loss turns all its tags bad at once.
                offset = 0 if a.condition == "comm_loss" else [p.name for p in t.points].index(a.point)
                watched = first + offset
                pairs_tag.append(watched)
                pairs_inst.append(inst)
            inst_tag.append(watched)
            n += len(devs)
        starts.append(n)
        self.n = n
        self.starts = np.array(starts, np.int64)
        self._all = np.arange(n)  # every instance, in order: a full evaluation
        self.inst_def = np.concatenate(inst_def) if inst_def else np.zeros(0, np.int32)
        self.inst_dev = np.concatenate(inst_dev) if inst_dev else np.zeros(0, np.int64)
        self.inst_tag = np.concatenate(inst_tag) if inst_tag else np.zeros(0, np.int64)
        self.latching = np.array([self.defs[k].latching for k in self.inst_def], bool)
        self.is_comm_loss = np.array([self.defs[k].condition == "comm_loss" for k in self.inst_def], bool)
        self.on_delay_ns = (
            np.array([a.on_delay * 1e9 for a in self.defs], np.int64)[self.inst_def] if n else np.zeros(0, np.int64)
        )
        self.off_delay_ns = (
            np.array([a.off_delay * 1e9 for a in self.defs], np.int64)[self.inst_def] if n else np.zeros(0, np.int64)
        )
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
        self.extra: dict[int, dict] = {}  # instance -> shelve user/reason, assignment
        self.one_shot = np.zeros(n, bool)  # shelved until the condition returns to normal
        self.last_event_ns = np.zeros(n, np.int64)  # time and number of each instance's last event
        self.event_seq = np.zeros(n, np.int64)
        # Rows the journal refused (disk full...), in order, and the instances whose saved
        # state is behind memory: written first once the journal writes again.
        self._backlog: collections.deque[JournalRow] = collections.deque()
        self._backlog_states: set[int] = set()
        self.backlog_dropped = 0  # rows lost to a full backlog since the start (counter)
        self._dropped_before = 0  # the counter when the current outage began
        self._retry_at = 0.0  # time.monotonic() of the next write attempt
        self._retry_delay = RETRY_FIRST_S
        self._build_lookup(
            np.concatenate(pairs_tag) if pairs_tag else np.zeros(0, np.int64),
            np.concatenate(pairs_inst) if pairs_inst else np.zeros(0, np.int64),
        )
        self._build_suppression(dev_index)
        self._index = {
            (self.defs[int(self.inst_def[i])].name, devices[int(self.inst_dev[i])].name): i for i in range(n)
        }
        self.transitions = 0
        self.evaluations = 0
        self._system: dict[tuple[str, str], bool] = {}  # (source, name) -> active
        self._announced_at: collections.deque[int] = collections.deque()  # times alarms were announced
        # Routing: each instance's service must acknowledge within its deadline, or it is escalated.
        services = config.alarms.services
        self.ack_deadline_ns = (
            np.array([int(services[a.service].ack_deadline_s * 1e9) for a in self.defs], np.int64)[self.inst_def]
            if n
            else np.zeros(0, np.int64)
        )
        self.announced_since = np.zeros(n, np.int64)
        self.escalated = np.zeros(n, bool)

    # Construction helpers

    def _build_lookup(self, tags: np.ndarray, insts: np.ndarray) -> None:
        """tag -> the instances reading it, from (tag, instance) pairs, for the change batches.

        A pair is one int64 key, ``instance << 32 | tag``: sorting a batch's keys groups its
        instances by definition (instances are numbered definition by definition) and keeps
        each beside its tag. Most tags feed one instance or none: ``_tag_key[tag]`` is that
        pair's key (-1: none), so a batch finds its pairs in one random read per tag. A tag
        feeding several holds ``-2 - j``, j its row in a CSR of those tags' keys only.
        """
        if len(self.tagdb) >= 1 << 32:  # pragma: no cover - four billion tags
            raise ValueError("a tag id must fit in 32 bits")
        order = np.argsort(tags, kind="stable")
        tags, insts = tags[order], insts[order]
        keys = insts.astype(np.int64) << 32 | tags
        counts = np.bincount(tags, minlength=len(self.tagdb))
        self._tag_key = np.full(len(self.tagdb), -1, np.int64)
        one = counts[tags] == 1
        self._tag_key[tags[one]] = keys[one]
        multi = np.flatnonzero(counts > 1)
        self._tag_key[multi] = -2 - np.arange(len(multi))
        self._multi_off = np.concatenate([[0], np.cumsum(counts[multi])]).astype(np.int64)
        self._multi_key = keys[~one]

    def _build_suppression(self, dev_index: dict[str, int]) -> None:
        """Pairs (consequence instance, cause instance) on the same device."""
        by_def_dev: dict[tuple[str, int], int] = {}
        for i in range(self.n):
            by_def_dev[(self.defs[int(self.inst_def[i])].name, int(self.inst_dev[i]))] = i
        dep, cause = [], []
        comm = {k for k, a in enumerate(self.defs) if a.condition == "comm_loss"}
        for i in range(self.n):
            a = self.defs[int(self.inst_def[i])]
            dev = int(self.inst_dev[i])
            names = set(a.suppressed_by)
            if a.condition != "comm_loss":  # comm loss hides every other alarm of the device
                names |= {self.defs[k].name for k in comm if self.defs[k].type == a.type}
            for name in names:
                c = by_def_dev.get((name, dev))
                if c is not None and c != i:
                    dep.append(i)
                    cause.append(c)
        self._dep = np.array(dep, np.int64)
        self._cause = np.array(cause, np.int64)
        order = np.argsort(self._cause, kind="stable")
        self._dep_by_cause = self._dep[order]
        self._cause_sorted = self._cause[order]

    def instance(self, alarm: str, device: str) -> int:
        try:
            return self._index[(alarm, device)]
        except KeyError:
            raise KeyError(f"no alarm {alarm!r} on device {device!r}") from None

    # Evaluation

    def _affected(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The instances reading the changed tags ``ids``, sorted (so grouped by definition).

        Returns (instances, the tag each was reached by, bounds): definition k's are rows
        bounds[k]:bounds[k + 1]. An instance appears once per changed tag it reads (an
        expression reading several changed points: several times).
        """
        keys = self._tag_key[ids]
        keys.sort()
        # Negative keys sort first: tags feeding no instance (-1) or several (below -1).
        start = 0 if keys[0] >= 0 else int(np.searchsorted(keys, 0))
        if start and keys[0] < -1:
            j = -2 - keys[: np.searchsorted(keys, -1)]
            lo = self._multi_off[j]
            counts = self._multi_off[j + 1] - lo
            first = np.repeat(lo - np.cumsum(counts) + counts, counts)
            keys = np.concatenate([keys[start:], self._multi_key[first + np.arange(len(first))]])
            keys.sort()
        else:
            keys = keys[start:]
        inst = keys >> 32
        return inst, keys & 0xFFFFFFFF, np.searchsorted(inst, self.starts)

    def _evaluate(self, inst: np.ndarray, tags: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Recompute ``raw`` for the instances ``inst`` (definition k's at bounds[k]:bounds[k + 1],
        each beside the tag it watches); return the instances whose raw condition changed.

        The watched tags' values are gathered once for the whole batch (random reads of
        million-row columns are the cost here); each definition reads its slice. Statuses are
        read where a condition needs them (comm loss), else only where the condition would
        change, to check that the data may change it (a number, not Bad): few rows of a batch.
        """
        if not len(inst):
            return inst
        value, status = self.tagdb.value, self.tagdb.status
        v_all = value[tags]
        every = inst is self._all
        cur_all = self.raw if every else self.raw[inst]
        moves = np.zeros(len(inst), bool)  # the condition changes, if the data is usable
        flips = []  # instances whose raw condition changes
        b = bounds.tolist()
        for k, a in enumerate(self.defs):
            lo, hi = b[k], b[k + 1]
            if lo == hi:
                continue
            sel = inst[lo:hi]
            cur = cur_all[lo:hi]
            if a.condition == "comm_loss":
                s = status[tags[lo:hi]]
                flips.append(sel[((s == COMM_LOSS_CODES[0]) | (s == COMM_LOSS_CODES[1])) != cur])
                continue
            if a.condition == "expression":
                evaluate, tags_k, used = self._expr[k]
                if not every:  # reached by each of its changed points
                    sel = np.unique(sel)
                    cur = self.raw[sel]
                local = sel - self.starts[k]
                env = {p: value[tg[local]] for p, tg in zip(used, tags_k)}
                good = np.ones(len(sel), bool)
                for tg in tags_k:
                    good &= ~_bad(status[tg[local]])
                flips.append(sel[good & (evaluate(env) != cur)])
                continue
            v = v_all[lo:hi]
            if a.condition in LIMIT_CONDITIONS:
                # Hysteresis: an active alarm clears only once the value is past limit -/+ deadband.
                if a.condition in ("high", "high_high"):
                    new = v > a.limit
                    if a.deadband:
                        new |= cur & (v > a.limit - a.deadband)
                else:
                    new = v < a.limit
                    if a.deadband:
                        new |= cur & (v < a.limit + a.deadband)
            elif a.condition == "state":
                new = np.isin(v, np.array(a.states, np.float64))
            elif a.condition == "rate_of_change":
                t = self.tagdb.source_time[tags[lo:hi]]
                dt = (t - self.prev_time[sel]) / 1e9
                with np.errstate(invalid="ignore", divide="ignore"):
                    rate = np.abs(v - self.prev_value[sel]) / dt
                new = np.where((dt > 0) & ~np.isnan(self.prev_value[sel]), rate > a.limit, cur)
                moved = _usable(status[tags[lo:hi]], v) & (t != self.prev_time[sel])
                self.prev_value[sel[moved]] = v[moved]
                self.prev_time[sel[moved]] = t[moved]
            else:  # pragma: no cover - the loader knows every condition
                raise AssertionError(a.condition)
            np.not_equal(new, cur, out=moves[lo:hi])
        rows = np.flatnonzero(moves)
        if len(rows):
            flips.append(inst[rows[_usable(status[tags[rows]], v_all[rows])]])
        changed = np.concatenate(flips) if flips else inst[:0]
        self.raw[changed] ^= True
        return changed

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
        return self._step(self._all, self.inst_tag, self.starts, self.clock())

    def _step(self, inst: np.ndarray, tags: np.ndarray, bounds: np.ndarray, now: int) -> list[AlarmEvent]:
        self.evaluations += 1
        changed = self._evaluate(inst, tags, bounds)
        if len(changed):
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
        """Time-driven work: due delays, shelve expiries, quiet rate-of-change alarms."""
        now = self.clock()
        if self._backlog_states or self._backlog:
            if time.monotonic() >= self._retry_at:
                self.flush_journal()
        events: list[AlarmEvent] = []
        rate = np.flatnonzero(self.raw & (self.prev_time > 0) & (now - self.prev_time > RATE_QUIET_S * 1e9))
        rate = (
            rate[[self.defs[int(self.inst_def[i])].condition == "rate_of_change" for i in rate]] if len(rate) else rate
        )
        if len(rate):
            self.raw[rate] = False
            self.raw_since[rate] = now
            self._set_pending(rate)
        events += self._advance(now, rate)
        expired = np.flatnonzero((self.state == State.SHELVED) & (self.shelved_until > 0) & (self.shelved_until <= now))
        for i in expired.tolist():
            events += self._operator(i, Event.SHELVE_EXPIRED, "", "shelve expired", now)
        events += self._escalate(now)
        return events

    def _escalate(self, now: int) -> list[AlarmEvent]:
        """Alarms their service has not acknowledged within its deadline: one ESCALATE row each."""
        owing = NEEDS_ACK[self.state]
        self.escalated &= owing  # acknowledged (or gone): a later occurrence may be escalated again
        late = np.flatnonzero(owing & ~self.escalated & (now - self.announced_since > self.ack_deadline_ns))
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
                f"{self.ack_deadline_ns[i] / 1e9:g} s by {self.defs[int(self.inst_def[i])].service}",
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
                deadline_s=self.ack_deadline_ns[e.instance] / 1e9,
            )
        return events

    def _advance(self, now: int, raw_changed: np.ndarray) -> list[AlarmEvent]:
        """Due condition changes, suppression by design, then the table's events, journaled."""
        events: list[AlarmEvent] = []
        # 1. Condition changes whose delay is over.
        due = np.zeros(0, np.int64)
        pend = self._pending_idx = self._pending_idx[self.pending[self._pending_idx]]
        if len(pend):
            delay = np.where(self.raw[pend], self.on_delay_ns[pend], self.off_delay_ns[pend])
            due = pend[now - self.raw_since[pend] >= delay]
            self.cond[due] = self.raw[due]
            self.cond_since[due] = now
            self.pending[due] = False
        if not len(due) and not len(raw_changed):
            return events
        # 2. Suppression by design follows the causes (raw conditions; comm loss: delayed).
        released = np.zeros(0, np.int64)
        changed = np.union1d(raw_changed, due)
        if len(changed) and len(self._cause_sorted):
            lo = np.searchsorted(self._cause_sorted, changed, "left")
            hi = np.searchsorted(self._cause_sorted, changed, "right")
            parts = [self._dep_by_cause[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
            deps = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            if len(deps):
                mask = np.isin(self._dep, deps)
                causes = self._cause[mask]
                signal = np.where(self.is_comm_loss[causes], self.cond[causes], self.raw[causes])
                want = np.zeros(self.n, bool)
                np.logical_or.at(want, self._dep[mask], signal)
                new_sup = want[deps]
                start = deps[new_sup & ~self.suppressed[deps]]
                self.suppressed[deps] = new_sup
                # Only an alarm with something to hide changes state (and is journaled): a
                # normal one just carries the flag, and is suppressed if it activates.
                start = start[ANNOUNCED[self.state[start]] | self.cond[start]]
                events += self._apply(start, Event.SUPPRESS, now, strict=False)
                released = deps[~new_sup & (self.state[deps] == State.SUPPRESSED)]
                # Leaving suppression: the condition as it stands decides, delays applied.
                self._settle(released, now)
                events += self._apply(released, Event.UNSUPPRESS, now)
        # 3. The condition changes, except where leaving suppression already accounted for them.
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
        delay = np.where(self.raw[inst], self.on_delay_ns[inst], self.off_delay_ns[inst])
        due = inst[(self.raw[inst] != self.cond[inst]) & (now - self.raw_since[inst] >= delay)]
        self.cond[due] = self.raw[due]
        self.cond_since[due] = now
        self.pending[due] = False

    def _apply(self, inst: np.ndarray, event: Event, now: int, strict: bool = True) -> list[AlarmEvent]:
        if not len(inst):
            return []
        new, legal = apply(self.state[inst], event, self.cond[inst], self.latching[inst])
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

    # Operator actions

    def _operator(self, i: int, event: Event, user: str, comment: str, now: int | None = None) -> list[AlarmEvent]:
        now = self.clock() if now is None else now
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED, Event.RETURN_TO_SERVICE):
            self._settle(np.array([i]), now)
        self.state[i] = transition(int(self.state[i]), event, bool(self.cond[i]), bool(self.latching[i]))
        if self.state[i] != State.SHELVED:
            self.one_shot[i] = False
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED):
            self.shelved_until[i] = 0
            self.extra.get(i, {}).pop("shelve", None)
        events = [self._event(i, event.name, now, user, comment)]
        # A design suppression whose cause is still active applies again once visible.
        if event in (Event.UNSHELVE, Event.SHELVE_EXPIRED, Event.RETURN_TO_SERVICE) and self.suppressed[i]:
            events += self._apply(np.array([i]), Event.SUPPRESS, now, strict=False)
        self._record(events)
        return events

    def ack(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Acknowledge; IllegalTransition when nothing is owed (already acknowledged, normal)."""
        return self._operator(self.instance(alarm, device), Event.ACK, user, comment)

    def reset(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Reset a latched alarm once its condition is gone and it is acknowledged."""
        return self._operator(self.instance(alarm, device), Event.RESET, user, comment)

    def shelve(
        self, alarm: str, device: str, user: str, reason: str, duration_s: float, one_shot: bool = False
    ) -> list[AlarmEvent]:
        """Hide an alarm for ``duration_s`` (at most 24 h: a shelved alarm must come back);
        ``one_shot``: also until its condition returns to normal, whichever comes first."""
        if not 0 < duration_s <= 86400:
            raise ValueError("a shelve lasts more than 0 s and at most 24 h")
        if not reason.strip():
            raise ValueError("shelving needs a reason")
        i = self.instance(alarm, device)
        now = self.clock()
        before = int(self.shelved_until[i]), self.extra.get(i, {}).get("shelve")
        # Set before the transition: subscribers and the saved state see the expiry with the event.
        self.shelved_until[i] = now + int(duration_s * 1e9)
        self.extra.setdefault(i, {})["shelve"] = (user, reason)
        self.one_shot[i] = one_shot
        try:
            return self._operator(i, Event.SHELVE, user, reason, now)
        except IllegalTransition:
            self.one_shot[i] = False  # an illegal SHELVE leaves the state, hence not SHELVED
            self.shelved_until[i] = before[0]
            if before[1] is None:
                self.extra[i].pop("shelve", None)
            else:
                self.extra[i]["shelve"] = before[1]
            raise

    def unshelve(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        return self._operator(self.instance(alarm, device), Event.UNSHELVE, user, comment)

    def remove_from_service(self, alarm: str, device: str, user: str, comment: str) -> list[AlarmEvent]:
        return self._operator(self.instance(alarm, device), Event.REMOVE_FROM_SERVICE, user, comment)

    def return_to_service(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        return self._operator(self.instance(alarm, device), Event.RETURN_TO_SERVICE, user, comment)

    def note(self, alarm: str, device: str, user: str, text: str) -> list[AlarmEvent]:
        """Add a note to an alarm's record; no state changes."""
        i = self.instance(alarm, device)
        events = [self._event(i, "NOTE", self.clock(), user, text)]
        self._record(events)
        return events

    def assign(self, alarm: str, device: str, user: str, to: str) -> list[AlarmEvent]:
        """Hand an alarm to a service or a crew (named in the comment of the journal row)."""
        i = self.instance(alarm, device)
        self.extra.setdefault(i, {})["assigned"] = to
        events = [self._event(i, "ASSIGN", self.clock(), user, to)]
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
        self._system[(source, name)] = active
        from scada.alarms.config import PRIORITIES

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
        # Through the backlog: storage_failing itself is raised while the journal cannot write.
        self._journal_write(
            [
                JournalRow(
                    e.time_ns,
                    e.alarm,
                    e.device,
                    e.commune,
                    None,
                    e.priority,
                    e.severity,
                    e.event,
                    e.state.name,
                    "",
                    "",
                    e.service,
                    e.message,
                )
            ],
            (),
        )
        (log.warning if active else log.info)("system_alarm", alarm=name, source=source, active=active, message=message)
        for notify in self.subscribers:
            notify([e])
        return e

    # Queries

    def announced(self) -> np.ndarray:
        """Instances shown to operators (active, or owing an acknowledgement or a reset)."""
        return np.flatnonzero(ANNOUNCED[self.state])

    def describe(self, i: int) -> dict:
        a = self.defs[int(self.inst_def[i])]
        d = self.config.devices[int(self.inst_dev[i])]
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

    def listing(self, states: Sequence[State] | None = None) -> list[dict]:
        """Instances in the given states (default: announced), for the HMI and `scada alarms`."""
        mask = ANNOUNCED[self.state] if states is None else np.isin(self.state, np.array(states, np.uint8))
        return [self.describe(int(i)) for i in np.flatnonzero(mask)]

    # Events, journal, restart

    def _name(self, i: int) -> str:
        return self.defs[int(self.inst_def[i])].name

    def _device(self, i: int) -> str:
        return self.config.devices[int(self.inst_dev[i])].name

    def _value(self, i: int) -> float | None:
        v = float(self.tagdb.value[self.inst_tag[i]])
        return None if math.isnan(v) else v

    def _message(self, i: int) -> str:
        a = self.defs[int(self.inst_def[i])]
        d = self.config.devices[int(self.inst_dev[i])]
        t = self.config.types[a.type]
        p = t.point(a.point) if a.point else None
        v = self._value(i)
        value = "?" if v is None else (f"{v:g}" if p is None or not p.enum else dict(p.enum).get(int(v), f"{v:g}"))
        return a.message.format(
            device=d.name,
            commune=d.commune,
            value=value,
            unit=p.unit if p else "",
            point=a.point or "",
            limit="" if a.limit is None else f"{a.limit:g}",
        )

    def _event(self, i: int, event: str, now: int, user: str = "", comment: str = "") -> AlarmEvent:
        a = self.defs[int(self.inst_def[i])]
        d = self.config.devices[int(self.inst_dev[i])]
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

    def _state_record(self, i: int) -> tuple[tuple[str, str], StateRecord]:
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

    def rate(self, window_s: float = 600.0) -> int:
        """Alarms announced in the last ``window_s`` (ISA-18.2: more than 10 in 10 minutes is a flood)."""
        horizon = self.clock() - int(window_s * 1e9)
        times = self._announced_at
        while times and times[0] < horizon:
            times.popleft()
        return len(times)

    def _record(self, events: Sequence[AlarmEvent], persist: Sequence[int] = ()) -> None:
        rows = [
            JournalRow(
                e.time_ns,
                e.alarm,
                e.device,
                e.commune,
                e.value,
                e.priority,
                e.severity,
                e.event,
                e.state.name,
                e.user,
                e.comment,
                e.service,
                e.message,
            )
            for e in events
        ]
        touched = sorted({e.instance for e in events} | set(persist))
        self._journal_write(rows, touched)
        self.transitions += len(rows)
        announced = [e for e in events if e.state == State.UNACK_ACTIVE and e.event in ANNOUNCING]
        self._announced_at.extend(e.time_ns for e in announced)
        for e in announced:
            self.announced_since[e.instance] = e.time_ns
        if len(events) <= LOG_EACH:
            for e in events:
                if e.event in ("ACTIVATE", "CLEAR", "ACK", "SHELVE", "RESET"):
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
        else:  # a flood: one line (a log line costs more than evaluating and journaling the alarm)
            counts: dict[str, int] = {}
            for e in events:
                counts[f"{e.alarm}:{e.event}"] = counts.get(f"{e.alarm}:{e.event}", 0) + 1
            log.warning("alarm_burst", transitions=len(events), by_alarm=counts)
        for notify in self.subscribers:
            notify(events)

    # Journal writes, and the backlog of a journal outage (see the module docstring)

    def _journal_write(self, rows: Sequence[JournalRow], touched: Sequence[int]) -> None:
        """Journal ``rows`` with the states of ``touched``; on a storage error keep them for later."""
        if self._backlog or self._backlog_states:  # behind what waits: the journal keeps the order
            self._keep(rows, touched)
            return
        try:
            self.journal.record(rows, states=[self._state_record(i) for i in touched])
        except JournalError as exc:
            self._keep(rows, touched)
            self._journal_failed(exc)

    def _keep(self, rows: Sequence[JournalRow], touched: Sequence[int]) -> None:
        self._backlog.extend(rows)
        self._backlog_states.update(touched)
        over = len(self._backlog) - BACKLOG_ROWS
        if over > 0:
            for _ in range(over):
                self._backlog.popleft()
            self.backlog_dropped += over
            log.error(
                "alarm_journal_backlog_full",
                journal=str(self.journal.path),
                dropped=self.backlog_dropped,
                kept=len(self._backlog),
            )

    def _journal_failed(self, exc: JournalError) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        log.error(
            "alarm_journal_write_failed",
            journal=exc.path,
            error=exc.reason,
            backlog=len(self._backlog),
            retry_in_s=self._retry_delay,
        )
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)
        self.system_alarm(
            STORAGE_FAILING,
            True,
            f"alarm journal {exc.path} cannot be written ({exc.reason}): "
            f"alarms still run, their journal rows wait in memory and are retried; free space "
            f"or repair the disk",
            source="alarm_journal",
        )

    @property
    def journal_backlog(self) -> int:
        """Journal rows waiting in memory for the journal to write again (0: none)."""
        return len(self._backlog)

    def flush_journal(self) -> bool:
        """Write the backlog of a journal outage, oldest first, with the current states of the
        instances it touched, in one transaction; True once nothing waits."""
        if not self._backlog and not self._backlog_states:
            return True
        rows = list(self._backlog)
        try:
            # A new file descriptor: a file system that went read-only on an error is only
            # writable again once repaired and mounted again, which the old one never sees.
            self.journal.reopen()
            self.journal.record(rows, states=[self._state_record(i) for i in sorted(self._backlog_states)])
        except JournalError as exc:
            self._journal_failed(exc)
            return False
        self._backlog.clear()
        self._backlog_states.clear()
        self._retry_delay = RETRY_FIRST_S
        dropped, self._dropped_before = self.backlog_dropped - self._dropped_before, self.backlog_dropped
        log.info("alarm_journal_recovered", journal=str(self.journal.path), rows=len(rows), dropped=dropped)
        self.system_alarm(
            STORAGE_FAILING,
            False,
            f"alarm journal {self.journal.path} writes again: "
            f"{len(rows)} waiting rows written" + (f", {dropped} dropped when the backlog was full" if dropped else ""),
            source="alarm_journal",
        )
        return True

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
            self.escalated[i] = self.clock() - (rec.since_ns or 0) > self.ack_deadline_ns[i]
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
            if self._backlog or self._backlog_states:  # a last chance before the process ends
                if not self.flush_journal():
                    log.error("alarm_journal_rows_lost", journal=str(self.journal.path), rows=len(self._backlog))
