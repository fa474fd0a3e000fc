"""Lighting schedules: the dimming programmes of tags.yaml's ``schedules:``, run by the core.

A schedule (:class:`~scada.control.model.ScheduleDef`) names communes or zones and a list of
steps, each at ``sunset``, ``sunrise`` or a clock time ("23:00", local civil time of
``control.timezone``, else the machine's), with an offset. Each device has its own times: the
Sun sets a few seconds earlier on a commune's eastern cabinets than on its western ones
(:mod:`scada.control.sun`, from each device's coordinates).

:class:`ScheduleRunner` is one task of the core. It lays out every step's instant for every
device over a few days (:func:`occurrences`), groups the devices whose step falls in the same
second, and waits with one timer for the next group; then it runs the step's command on each
device through the app's command service, as the user Scheduler (the same pipeline as an
operator's command: interlocks, read-back, audit), a bounded number at once (the group actions'
fan-out and per-link slots, scada/control/groups.py), leaving alone the devices an operator has
overridden (:mod:`scada.control.overrides`). Each step is audited once
("schedule": target the schedule; arguments the step, command and arguments; result the counts),
and the pipeline audits each device's command.

At start, and for a schedule a reload adds or changes, the step in force (each device's last
step already passed) is applied at once: a server restarted at 00:30 puts the city at the
23:00 level, not back to the sunset one. The other schedules go on from where they were: the
steps that fell due while a step was being run (its read-backs take a poll cycle or more) run
next, in order, whether a reload (even one that changes nothing) came meanwhile or not.

A clock time belongs to the night it falls in: the instants are laid out day after day, so
"01:00" comes after the evening's "sunset" and "23:00" and before the next "sunrise". On the
day the clocks change, a clock time is the local time of that day (one that the change skips
happens an hour later, at the same UTC instant; one that happens twice, the first time).

Only the schedules follow the simulated clock (:class:`ScheduleClock`, ``scada run
--clock-start ... --acceleration ...``): a step due at 23:00 simulated runs when the simulated
clock says 23:00. Timestamps, read-back timeouts and rate limits stay real.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import structlog

from scada.control.model import (
    BAD_INTERNAL_ERROR,
    SCHEDULER,
    SCHEDULER_USER,
    ZONE_PREFIX,
    CommandRequest,
    CommandResult,
    ScheduleDef,
    status_name,
)
from scada.control.sun import NO_EVENT, sun_times
from scada.security.audit import AuditRecord, AuditSink, canonical

if TYPE_CHECKING:
    from scada.config import Config
    from scada.control.overrides import Overrides


class CommandService(Protocol):
    """What the schedules need of the app's command service (scada/control/service.py Commands)."""

    config: Config
    overrides: Overrides

    async def execute(self, request: CommandRequest) -> CommandResult: ...


log = structlog.get_logger("scada.control.schedules")

NS = 10**9
DAY_NS = 86400 * NS
LOOKBACK_DAYS = 2  # how far back the step in force is looked for (a daily programme has one)
HORIZON_DAYS = 3  # how far ahead the instants are laid out; laid out again before they run out
MAX_SLEEP_S = 3600.0  # the one timer never sleeps longer (a clock set forward is noticed within)
FIRST_CONTACT_MAX_S = 30.0  # the longest the step in force waits for the devices' first polls


# -- the schedules' clock ------------------------------------------------------------------------


class ScheduleClock:
    """The schedules' time: real time, or simulated time that reads ``start_ns`` at the real
    instant ``origin_ns`` and runs ``acceleration`` times faster (the simulators' clock,
    simulators/clock.py: given the same start, origin and acceleration, both read alike).

    Without an origin, a simulated clock reads ``start_ns`` when it is first read: when the
    schedules start running, however long the server took to start (so the first step after
    the start comes when expected)."""

    def __init__(
        self,
        start_ns: int | None = None,
        acceleration: float = 1.0,
        *,
        origin_ns: int | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if not acceleration > 0:
            raise ValueError(f"the acceleration must be above 0, got {acceleration}")
        self.acceleration = float(acceleration)
        self.simulated = start_ns is not None or acceleration != 1.0
        self._start_ns = start_ns
        self._origin_ns = origin_ns
        self._wall = wall_ns
        self._monotonic = monotonic_ns
        self._m0 = 0
        self.t0: int | None = None  # the simulated time at monotonic _m0, once anchored
        self.segment: tuple[int, int, float] | None = None  # (real ns, clock ns, acceleration) at the anchor
        self._on_anchor: list[Callable[[tuple[int, int, float]], None]] = []
        if start_ns is None or origin_ns is not None:
            self._anchor()

    def _anchor(self) -> int:
        self._m0 = self._monotonic()
        wall = self._wall()
        start = wall if self._start_ns is None else int(self._start_ns)
        origin = wall if self._origin_ns is None else int(self._origin_ns)
        # Simulated time already run since the origin (a process started after it catches up).
        self.t0 = start + int((wall - origin) * self.acceleration)
        self.segment = (wall, self.t0, self.acceleration)
        for callback in self._on_anchor:
            callback(self.segment)
        return self.t0

    def when_anchored(self, callback: Callable[[tuple[int, int, float]], None]) -> None:
        """Call ``callback(segment)`` with the clock's line (the real instant, its reading then, its
        acceleration: scada/control/clockmap.py's record) now if anchored, else when first read.
        Called where the clock is read: it must be quick and must not raise."""
        if self.segment is not None:
            callback(self.segment)
        else:
            self._on_anchor.append(callback)

    def now_ns(self) -> int:
        """The schedules' now, ns since the Unix epoch (UTC)."""
        t0 = self._anchor() if self.t0 is None else self.t0
        return t0 + int((self._monotonic() - self._m0) * self.acceleration)

    def real_delay(self, t_ns: int) -> float:
        """Real seconds until the schedules' clock reaches ``t_ns`` (0 when it has)."""
        return max(0.0, (t_ns - self.now_ns()) / self.acceleration / NS)


def parse_clock_start(text: str) -> int:
    """``--clock-start``: ISO 8601, UTC unless it gives an offset -> ns since the epoch."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-05T16:55:00+01:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * NS)


def local_zone() -> tzinfo:
    """The machine's time zone, with its daylight-saving rules (not just today's offset):
    $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("schedule_tz_unknown", tz=name, using="/etc/localtime")
    path = Path("/etc/localtime")
    try:
        target = str(path.resolve())
        if "zoneinfo/" in target:
            return ZoneInfo(target.split("zoneinfo/", 1)[1])
        with path.open("rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return UTC


def schedule_zone(name: str) -> tzinfo:
    """``control.timezone`` (an IANA name), "" the machine's own."""
    return ZoneInfo(name) if name else local_zone()


# -- the instants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A schedule and the devices it drives, with their coordinates (parallel arrays)."""

    schedule: ScheduleDef
    devices: tuple[str, ...]
    lat: np.ndarray
    lon: np.ndarray


@dataclass(frozen=True)
class Occurrences:
    """Every (instant, step, device) of one schedule in a time range, sorted by instant then step.
    ``device`` indexes the target's devices."""

    t_ns: np.ndarray  # int64
    step: np.ndarray  # int32
    device: np.ndarray  # int32
    day: np.ndarray  # int32: the local day it belongs to (date ordinal): one occurrence of a step


def _clock_ns(day: date, offset_s: float, tz: tzinfo) -> int:
    """``offset_s`` after local midnight of ``day``, as wall-clock time of ``tz`` (so 23:00 is
    23:00 whatever the day's length), in ns UTC."""
    wall = datetime(day.year, day.month, day.day) + timedelta(seconds=offset_s)
    return int(wall.replace(tzinfo=tz).timestamp() * NS)


def occurrences(target: Target, tz: tzinfo, start_ns: int, end_ns: int) -> Occurrences:
    """Every step's instant for every device of ``target`` in ``[start_ns, end_ns)``.

    Laid out local day by local day: on each day, the Sun's events at each device and the clock
    times of that day; a polar day or night has no sunset or sunrise step (nothing is invented),
    its clock steps still happen."""
    n = len(target.devices)
    steps = target.schedule.steps
    first = datetime.fromtimestamp(start_ns / NS, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end_ns / NS, tz).date() + timedelta(days=1)
    ts: list[np.ndarray] = []
    ks: list[np.ndarray] = []
    ds: list[np.ndarray] = []
    days: list[np.ndarray] = []
    dev = np.arange(n, dtype=np.int32)
    day = first
    while day <= last:
        sun = sun_times(day, target.lat, target.lon) if any(s.anchor != "clock" for s in steps) else None
        for k, s in enumerate(steps):
            offset = int(round(s.offset_s * NS))
            if s.anchor == "clock":
                t = np.full(n, _clock_ns(day, s.offset_s, tz), np.int64)
                ok = np.ones(n, bool)
            else:
                assert sun is not None
                base = sun.sunset if s.anchor == "sunset" else sun.sunrise
                ok = base != NO_EVENT
                t = np.where(ok, base + offset, 0)
            keep = ok & (t >= start_ns) & (t < end_ns)
            ts.append(t[keep])
            ks.append(np.full(int(keep.sum()), k, np.int32))
            ds.append(dev[keep])
            days.append(np.full(int(keep.sum()), day.toordinal(), np.int32))
        day += timedelta(days=1)
    t_all = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    k_all = np.concatenate(ks) if ks else np.zeros(0, np.int32)
    d_all = np.concatenate(ds) if ds else np.zeros(0, np.int32)
    day_all = np.concatenate(days) if days else np.zeros(0, np.int32)
    order = np.lexsort((d_all, k_all, t_all))
    return Occurrences(t_all[order], k_all[order], d_all[order], day_all[order])


@dataclass(frozen=True)
class Due:
    """One step of one schedule for some of its devices, due at ``t_ns`` (the end of the second
    in which each of their instants falls: a step never runs early)."""

    t_ns: int
    schedule: str
    step: int
    devices: tuple[str, ...]
    day: int = 0  # the occurrence: its local day (date ordinal); 0 for the steps in force
    expected: int = 0  # devices of the whole occurrence (its seconds together); the audit's one record


def _second_end(t_ns: np.ndarray) -> np.ndarray:
    return -((-t_ns) // NS) * NS  # ceil to the second


class Plan:
    """Every schedule's instants over ``[start_ns, end_ns)``, merged and sorted: what is due next,
    and what is in force at an instant."""

    def __init__(self, targets: Sequence[Target], tz: tzinfo, start_ns: int, end_ns: int) -> None:
        self.targets = {t.schedule.name: t for t in targets}
        self.start_ns, self.end_ns = start_ns, end_ns
        parts = [(i, occurrences(t, tz, start_ns, end_ns)) for i, t in enumerate(targets)]
        self._names = [t.schedule.name for t in targets]
        self.t_ns = np.concatenate([o.t_ns for _, o in parts]) if parts else np.zeros(0, np.int64)
        self.due_ns = _second_end(self.t_ns)
        self.sched = (
            np.concatenate([np.full(len(o.t_ns), i, np.int32) for i, o in parts]) if parts else np.zeros(0, np.int32)
        )
        self.step = np.concatenate([o.step for _, o in parts]) if parts else np.zeros(0, np.int32)
        self.device = np.concatenate([o.device for _, o in parts]) if parts else np.zeros(0, np.int32)
        self.day = np.concatenate([o.day for _, o in parts]) if parts else np.zeros(0, np.int32)
        order = np.lexsort((self.device, self.step, self.sched, self.due_ns))
        self.t_ns, self.due_ns = self.t_ns[order], self.due_ns[order]
        self.sched, self.step, self.device = self.sched[order], self.step[order], self.device[order]
        self.day = self.day[order]
        # devices per occurrence (schedule, step, day): a sunset spread over a minute is one step
        keys, counts = np.unique(self._keys(np.arange(len(self.t_ns))), return_counts=True)
        self._expected = dict(zip(keys.tolist(), counts.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.t_ns)

    def _keys(self, rows: np.ndarray) -> np.ndarray:
        return (self.sched[rows].astype(np.int64) << 40) | (self.step[rows].astype(np.int64) << 24) | self.day[rows]

    def _dues(self, rows: np.ndarray, t_ns: int | None = None) -> list[Due]:
        """The rows grouped by occurrence (schedule, step, day), in schedule then step order; due
        ``t_ns`` (the steps in force: one group per step, whatever its day)."""
        out = []
        keys = self._keys(rows) if t_ns is None else self._keys(rows) & ~((1 << 24) - 1)
        for key in np.unique(keys):
            sel = rows[keys == key]
            i, k, day = int(key) >> 40, (int(key) >> 24) & 0xFFFF, int(key) & 0xFFFFFF
            target = self.targets[self._names[i]]
            devices = tuple(target.devices[j] for j in self.device[sel])
            if t_ns is None:
                out.append(Due(int(self.due_ns[sel].max()), self._names[i], k, devices, day, self._expected[int(key)]))
            else:
                out.append(Due(t_ns, self._names[i], k, devices, 0, len(devices)))
        return out

    def next_due(self, after_ns: int) -> tuple[int, list[Due]] | None:
        """The first second after ``after_ns`` when a step is due, and every step due then."""
        i = int(np.searchsorted(self.due_ns, after_ns, side="right"))
        if i >= len(self.due_ns):
            return None
        t = int(self.due_ns[i])
        j = int(np.searchsorted(self.due_ns, t, side="right"))
        return t, self._dues(np.arange(i, j))

    def in_force(self, now_ns: int, schedules: Iterable[str] | None = None) -> list[Due]:
        """Per device of each schedule (all, or those named), its last step due at or before
        ``now_ns`` (none when it has none in the plan), grouped by step; due ``now_ns``."""
        wanted = None if schedules is None else {self._names.index(n) for n in schedules if n in self._names}
        passed = np.flatnonzero(self.due_ns <= now_ns)
        if wanted is not None:
            passed = passed[np.isin(self.sched[passed], list(wanted))]
        if not len(passed):
            return []
        key = self.sched[passed].astype(np.int64) * (1 << 32) + self.device[passed]
        # rows are sorted by time: the last row of each (schedule, device) is its step in force
        _, last_rev = np.unique(key[::-1], return_index=True)
        rows = passed[::-1][last_rev]
        return self._dues(np.sort(rows), now_ns)


def resolve_targets(config: Config, zone_members: Callable[[Config, str], Iterable[str]] | None = None) -> list[Target]:
    """Each schedule's devices: those of its communes and zones whose class is among the
    schedule's classes and whose type has the schedule's commands, in configuration order."""
    out = []
    by_name = {d.name: d for d in config.devices}
    for sched in config.control.schedules:
        names: set[str] = set()
        for zone in sched.zones:
            names.update(_zone_devices(config, zone) if zone_members is None else zone_members(config, zone))
        communes = set(sched.communes)
        commands = {s.command for s in sched.steps}
        chosen = []
        for d in config.devices:
            if d.commune not in communes and d.name not in names:
                continue
            if config.types[d.type].cls not in sched.classes:
                continue
            missing = commands - set(config.control.commands.get(d.type, {}))
            if missing:
                log.warning(
                    "schedule_device_lacks_command", schedule=sched.name, device=d.name, commands=sorted(missing)
                )
                continue
            chosen.append(by_name[d.name])
        out.append(
            Target(
                sched,
                tuple(d.name for d in chosen),
                np.array([d.lat for d in chosen], np.float64),
                np.array([d.lon for d in chosen], np.float64),
            )
        )
    return out


def _zone_devices(config: Config, zone: str) -> Iterable[str]:
    """A zone's devices, as the group actions resolve it (scada/control/zones.py: listed, or
    inside a circle or a polygon). Looked up when a schedule names a zone (the groups' module)."""
    zones = importlib.import_module("scada.control.zones")
    return [d.name for d in zones.group_devices(config, ZONE_PREFIX + zone)]


# -- the runner -------------------------------------------------------------------------------------


class _Tally:
    """What one step's occurrence did so far, over the seconds its devices' times span."""

    def __init__(self, due: Due, step_text: str, command: str, args: dict[str, float], in_force: bool) -> None:
        self.schedule = due.schedule
        self.step_text, self.command, self.args, self.in_force = step_text, command, args, in_force
        self.first_due = self.last_due = due.t_ns
        self.devices = self.confirmed = self.failed = self.skipped = 0
        self.statuses: dict[str, int] = {}

    def add(self, due: Due, results: Sequence[CommandResult], skipped: int) -> None:
        self.last_due = due.t_ns
        self.devices += len(due.devices)
        self.skipped += skipped
        for r in results:
            self.statuses[status_name(r.status)] = self.statuses.get(status_name(r.status), 0) + 1
            if r.good:
                self.confirmed += 1
            else:
                self.failed += 1

    def counts(self) -> dict[str, int]:
        return {
            "devices": self.devices,
            "confirmed": self.confirmed,
            "failed": self.failed,
            "skipped_override": self.skipped,
        }


class ScheduleRunner:
    """Runs the configuration's schedules through ``commands`` (see the module docstring)."""

    def __init__(
        self,
        commands: CommandService,
        audit: AuditSink,
        clock: ScheduleClock | None = None,
        *,
        zone_members: Callable[[Config, str], Iterable[str]] | None = None,
    ) -> None:
        self.commands = commands
        self.audit = audit
        self.clock = clock or ScheduleClock()
        self.zone_members = zone_members
        self.config: Config = commands.config
        self.plan: Plan | None = None
        self.steps_run = 0  # steps executed (the step in force at start included)
        self._targets: dict[str, Target] = {}
        self._pending: set[str] = set()  # schedules new or changed, their step in force not yet applied
        self._generation = 0  # reloads so far
        self._tallies: dict[tuple[str, int, int, bool], _Tally] = {}  # steps whose devices are not all done
        # Per schedule whose step in force was applied after the cursor: that instant. Its steps
        # due up to then are covered by the step in force and are not run again.
        self._covered: dict[str, int] = {}
        self._wake = asyncio.Event()

    # -- configuration --

    def reload(self, config: Config) -> None:
        """A new configuration: the instants are laid out again, and the schedules it adds or
        changes apply their step in force at once (the others go on from where they were)."""
        self.config = config
        self._generation += 1
        self.plan = None
        self._wake.set()

    async def _lay_out(self, now_ns: int) -> Plan:
        """The plan around ``now_ns``, built in a worker thread (a city's cabinets over five days
        are tens of thousands of rows: numpy, but not on the event loop). The schedules whose
        definition or devices changed since the last lay-out join ``_pending``. ``self.plan``
        stays None when a reload came meanwhile (laid out again)."""
        config, generation = self.config, self._generation

        def build() -> tuple[list[Target], Plan]:
            targets = resolve_targets(config, self.zone_members)
            tz = schedule_zone(config.control.settings.timezone)
            return targets, Plan(targets, tz, now_ns - LOOKBACK_DAYS * DAY_NS, now_ns + HORIZON_DAYS * DAY_NS)

        targets, plan = await asyncio.to_thread(build)
        old, new = self._targets, {t.schedule.name: t for t in targets}
        self._pending |= {
            n for n, t in new.items() if n not in old or old[n].schedule != t.schedule or old[n].devices != t.devices
        }
        # The steps under way of a schedule changed or removed are recorded as far as they went;
        # the others' go on (their occurrences' devices are the same in the new plan).
        self._flush({n for n in old if n not in new} | self._pending)
        self._targets = new
        if generation == self._generation:
            self.plan = plan
        return plan

    # -- running --

    async def run(self) -> None:
        """Apply the steps in force, then each step when due, until cancelled. A restart (the
        supervisor's) applies the steps in force again."""
        self._targets, self._pending, self.plan, self._covered = {}, set(), None, {}  # every schedule is new
        try:
            await self._loop()
        finally:
            self._flush()  # the steps under way are recorded as far as they went

    async def _loop(self) -> None:
        # Every step due up to the cursor has run (or is in force). A lay-out (start, reload, the
        # next days) never moves it: the steps that fell due meanwhile (a reload while a step was
        # being run, even one that changed nothing) run next, in order; only the schedules new or
        # changed skip theirs, which the step in force they apply covers (``_covered``).
        cursor = self.clock.now_ns()
        while True:
            plan = self.plan
            if plan is None:  # start or reload: lay out; what is new or changed applies its step in force
                now = self.clock.now_ns()
                plan = await self._lay_out(now)
                if self.plan is None:
                    continue  # a reload came meanwhile
                changed, self._pending = self._pending, set()
                if changed:
                    self._covered.update(dict.fromkeys(changed, now))
                    await self._apply_in_force(plan, now, sorted(changed))
                continue
            if cursor >= plan.end_ns - DAY_NS:  # the laid-out days run out: the next ones
                self.plan = None
                continue
            nxt = plan.next_due(cursor)
            if nxt is None:  # nothing in the coming days (no schedule, a polar night...)
                wait_to = plan.end_ns - DAY_NS
                if await self._sleep_until(wait_to):
                    cursor = max(cursor, wait_to)
                continue
            t, dues = nxt
            log.info(
                "schedule_next",
                at=_iso(t),
                steps=[f"{d.schedule}:{self._step_text(d)}" for d in dues],
                devices=sum(len(d.devices) for d in dues),
                in_real_s=round(self.clock.real_delay(t), 3),
            )
            if not await self._sleep_until(t):
                continue  # woken by a reload
            for due in dues:
                if due.t_ns > self._covered.get(due.schedule, -1):
                    await self._run(due)
            cursor = t
            self._covered = {n: c for n, c in self._covered.items() if c > cursor}

    async def _sleep_until(self, t_ns: int) -> bool:
        """Wait on one timer until the schedules' clock reaches ``t_ns``; False if a reload came."""
        while True:
            if self.plan is None:
                return False
            delay = self.clock.real_delay(t_ns)
            if delay <= 0:
                return True
            self._wake.clear()
            try:
                # asyncio.timeout, not wait_for: no inner task, and a cancellation is never lost
                async with asyncio.timeout(min(delay, MAX_SLEEP_S)):
                    await self._wake.wait()
            except TimeoutError:
                continue  # the timer (or the hourly check): due yet?

    async def _apply_in_force(self, plan: Plan, now_ns: int, schedules: Sequence[str] | None) -> None:
        dues = plan.in_force(now_ns, schedules)
        if dues:
            await self._first_contact({d for due in dues for d in due.devices})
        for due in dues:
            await self._run(due, in_force=True)

    async def _first_contact(self, devices: set[str]) -> None:
        """Wait until each device's first poll has said whether it answers (its diagnostic state
        is no longer not_connected), at most a few poll cycles: the pipeline refuses a command to
        a device not yet in communication, and the step in force at start would be lost."""
        tagdb = getattr(self.commands, "tagdb", None)
        if tagdb is None or not devices:
            return
        config = self.config
        devs = [config.device(n) for n in sorted(devices)]
        ids = np.array([int(config.diag_ids(d)[0]) for d in devs], np.int64)  # Diagnostics/state
        grace = min(FIRST_CONTACT_MAX_S, max(2.0, 3 * max(d.poll_interval + d.timeout for d in devs)))
        deadline = time.monotonic() + grace
        while True:
            state = np.asarray(
                getattr(self.commands, "tagdb", tagdb).value[ids]
            )  # looked up each time: a reload replaces it
            waiting = ~(np.isfinite(state) & (state != 0))
            if not waiting.any():
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "schedule_in_force_before_first_contact",
                    devices=int(waiting.sum()),
                    first=[d.name for d, w in zip(devs, waiting, strict=True) if w][:5],
                    waited_s=grace,
                )
                return
            await asyncio.sleep(0.1)

    def _step_text(self, due: Due) -> str:
        step = self._targets[due.schedule].schedule.steps[due.step]
        return step.text or f"{step.anchor}{step.offset_s:+.0f}s"

    async def _run(self, due: Due, in_force: bool = False) -> None:
        """One step on its devices: the overridden ones left alone, the others commanded (a bounded
        number at once). The step's audit record is written when every device of its occurrence
        has had its turn (a sunset spread over a minute of a commune's cabinets is one record)."""
        step = self._targets[due.schedule].schedule.steps[due.step]
        now = self.clock.now_ns()
        overrides = self.commands.overrides
        todo: list[str] = []
        skipped = 0
        for device in due.devices:
            if overrides.active(device, now):
                overrides.step_skipped(device)
                skipped += 1
            else:
                todo.append(device)
        results = await self._fan_out(todo, step.command, step.arguments, due.schedule)
        key = (due.schedule, due.step, due.day, in_force)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(due, self._step_text(due), step.command, dict(step.arguments), in_force)
        tally.add(due, results, skipped)
        if tally.devices >= due.expected:
            self._record(self._tallies.pop(key))

    def _record(self, tally: _Tally) -> None:
        """The step's one "schedule" audit record (and log line), with its counts."""
        counts = tally.counts()
        arguments = {
            "step": tally.step_text,
            "command": tally.command,
            "args": tally.args,
            "due": _iso(tally.first_due),
            "last_due": _iso(tally.last_due),
            "in_force_at_start": tally.in_force,
            "statuses": dict(sorted(tally.statuses.items())),
        }
        self.audit.record(
            AuditRecord(
                time.time_ns(),
                "schedule",
                SCHEDULER_USER,
                SCHEDULER.roles,
                SCHEDULER.session,
                "",
                "",
                tally.schedule,
                canonical(arguments),
                canonical(counts),
            )
        )
        self.steps_run += 1
        log.info("schedule_step", schedule=tally.schedule, step=tally.step_text, in_force=tally.in_force, **counts)

    def _flush(self, schedules: set[str] | None = None) -> None:
        """Write the records of steps not every device of which has run (of these schedules, or
        all: a stop)."""
        for key in [k for k in self._tallies if schedules is None or k[0] in schedules]:
            self._record(self._tallies.pop(key))

    async def _fan_out(
        self, devices: Sequence[str], command: str, args: Mapping[str, float], schedule: str
    ) -> list[CommandResult]:
        """The command on every device, as the group actions fan out (scada/control/groups.py
        ``run_bounded``): at most ``control.group_concurrency`` at once, and at most
        ``LINK_CONCURRENCY`` at once on a link that carries one request at a time (a Modbus
        gateway), counted with the group actions running on the same command service."""
        groups = importlib.import_module("scada.control.groups")  # groups builds on zones, as above
        origin = f"schedule:{schedule}"
        config = self.commands.config  # the service's: the one its links' slots are laid out for
        known = {d.name: d for d in config.devices}
        results: dict[str, CommandResult] = {}
        # A device a reload removed while its step was due: the pipeline refuses it (and audits).
        for name in [n for n in devices if n not in known]:
            results[name] = await self._execute(CommandRequest(name, command, dict(args), SCHEDULER, origin=origin))
        bounded = [known[n] for n in devices if n in known]
        requests = [CommandRequest(d.name, command, dict(args), SCHEDULER, origin=origin) for d in bounded]
        done = await groups.run_bounded(self.commands, requests, bounded, name=origin)
        results.update(zip((d.name for d in bounded), done, strict=True))
        return [results[n] for n in devices if n in results]

    async def _execute(self, request: CommandRequest) -> CommandResult:
        try:
            return await self.commands.execute(request)
        except Exception as exc:  # noqa: BLE001 - one device's failure never stops the step
            log.exception("schedule_command_failed", device=request.device, command=request.command)
            return CommandResult(request.device, BAD_INTERNAL_ERROR, repr(exc))


def _iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / NS, UTC).isoformat(timespec="seconds")
