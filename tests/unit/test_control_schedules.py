"""Lighting schedules (scada/control/schedules.py): step times, the step in force, the runner.

The step times are pure functions of the schedule, the devices' coordinates and the time zone,
tested at fixed instants. The runner is tested with a fake command service (the pipeline has
its own tests) and a simulated clock running 100,000 times faster than real time, as ``scada
run --acceleration`` does: each test waits for what the runner did, never for a duration.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from scada.control.model import (
    BAD_NO_COMMUNICATION,
    GOOD,
    SCHEDULER_USER,
    CommandResult,
    ControlConfig,
    ControlSettings,
    ScheduleDef,
    ScheduleStep,
)
from scada.control.overrides import Overrides
from scada.control.schedules import (
    Plan,
    ScheduleClock,
    ScheduleRunner,
    Target,
    occurrences,
    parse_clock_start,
    resolve_targets,
)
from scada.control.sun import sun_times
from scada.security.audit import MemoryAudit

PARIS = ZoneInfo("Europe/Paris")
NS = 10**9
AUTO, FORCED_OFF = 0.0, 2.0


def _steps() -> tuple[ScheduleStep, ...]:
    return (
        ScheduleStep("sunset", 0, "SetMode", {"mode": AUTO}, "sunset"),
        ScheduleStep("clock", 23 * 3600, "SetDimLevel", {"level": 50.0}, "23:00"),
        ScheduleStep("clock", 1 * 3600, "SetDimLevel", {"level": 30.0}, "01:00"),
        ScheduleStep("sunrise", 15 * 60, "SetMode", {"mode": FORCED_OFF}, "sunrise+00:15"),
    )


NIGHT = ScheduleDef("dijon_night", ("Dijon",), (), _steps())


def _local(y, mo, d, h=0, mi=0, s=0) -> int:
    return int(datetime(y, mo, d, h, mi, s, tzinfo=PARIS).timestamp()) * NS


def _target(lats=(47.32,), lons=(5.04,), sched=NIGHT) -> Target:
    return Target(sched, tuple(f"C-{i}" for i in range(len(lats))), np.array(lats, float), np.array(lons, float))


# -- step times -------------------------------------------------------------------------------


def test_a_night_in_order_the_small_hours_belong_to_the_night_that_began_at_sunset():
    t = _target()
    occ = occurrences(t, PARIS, _local(2026, 12, 5, 12), _local(2026, 12, 6, 12))
    assert occ.step.tolist() == [0, 1, 2, 3]  # sunset, 23:00, 01:00 (next day), sunrise+15 min
    sun5 = sun_times(datetime(2026, 12, 5).date(), 47.32, 5.04)
    sun6 = sun_times(datetime(2026, 12, 6).date(), 47.32, 5.04)
    assert occ.t_ns.tolist() == [
        int(sun5.sunset[()]),
        _local(2026, 12, 5, 23),
        _local(2026, 12, 6, 1),
        int(sun6.sunrise[()]) + 15 * 60 * NS,
    ]
    # Dijon in December: sunset near 16:50 local, sunrise near 08:15
    assert datetime.fromtimestamp(occ.t_ns[0] / NS, PARIS).strftime("%H") == "16"
    assert datetime.fromtimestamp(occ.t_ns[3] / NS, PARIS).strftime("%H") == "08"


def test_clock_times_follow_the_daylight_saving_change():
    """Europe/Paris goes to summer time at 02:00 on 29 March 2026: 23:00 is 22:00 UTC the evening
    before and 21:00 UTC that evening; 01:00 that night is still winter time (00:00 UTC)."""
    t = _target()
    occ = occurrences(t, PARIS, _local(2026, 3, 28, 12), _local(2026, 3, 30, 12))
    utc = {
        (int(k), datetime.fromtimestamp(v / NS, UTC).strftime("%m-%d %H:%M"))
        for k, v in zip(occ.step, occ.t_ns, strict=True)
    }
    assert (1, "03-28 22:00") in utc and (1, "03-29 21:00") in utc
    assert (2, "03-29 00:00") in utc and (2, "03-29 23:00") in utc
    # and back to winter time on 25 October 2026 (03:00 CEST -> 02:00 CET)
    occ = occurrences(t, PARIS, _local(2026, 10, 24, 12), _local(2026, 10, 26, 12))
    clock = [datetime.fromtimestamp(v / NS, UTC).strftime("%m-%d %H:%M") for k, v in zip(occ.step, occ.t_ns) if k == 1]
    assert clock == ["10-24 21:00", "10-25 22:00"]


def test_a_time_the_change_skips_happens_at_the_same_utc_instant_an_hour_later_locally():
    sched = ScheduleDef(
        "s", ("Dijon",), (), (ScheduleStep("clock", 2.5 * 3600, "SetDimLevel", {"level": 10.0}, "02:30"),)
    )
    occ = occurrences(_target(sched=sched), PARIS, _local(2026, 3, 29, 0), _local(2026, 3, 29, 12))
    assert [datetime.fromtimestamp(v / NS, PARIS).strftime("%H:%M") for v in occ.t_ns] == ["03:30"]


def test_each_device_its_own_sunset_grouped_by_the_second():
    # two cabinets 10 m apart share their sunset second; one 5 km east sets ~15 s earlier
    t = _target(lats=(47.32, 47.32, 47.32), lons=(5.0400, 5.0401, 5.1060))
    start = _local(2026, 12, 5, 12)
    plan = Plan([t], PARIS, start, _local(2026, 12, 6, 12))
    t1, dues1 = plan.next_due(start)
    assert [(d.step, d.devices) for d in dues1] == [(0, ("C-2",))]
    t2, dues2 = plan.next_due(t1)
    assert [(d.step, d.devices) for d in dues2] == [(0, ("C-0", "C-1"))]
    assert 10 * NS < t2 - t1 < 20 * NS
    assert t1 % NS == 0 and t2 % NS == 0  # due at a second's end: never early
    sunset = sun_times(datetime(2026, 12, 5).date(), 47.32, 5.04).sunset[()]
    assert 0 <= t2 - int(sunset) < NS
    # then 23:00 for all three at once
    _t3, dues3 = plan.next_due(t2)
    assert [(d.step, d.devices) for d in dues3] == [(1, ("C-0", "C-1", "C-2"))]


def test_the_step_in_force_after_a_restart_in_the_middle_of_the_night():
    plan = Plan([_target()], PARIS, _local(2026, 12, 3), _local(2026, 12, 8))
    cases = {
        _local(2026, 12, 6, 0, 30): 1,  # 00:30: the 23:00 level, not the sunset one
        _local(2026, 12, 6, 2, 0): 2,  # 02:00: the 01:00 level
        _local(2026, 12, 6, 12, 0): 3,  # noon: off since sunrise
        _local(2026, 12, 6, 20, 0): 0,  # 20:00: on since sunset
    }
    for now, step in cases.items():
        dues = plan.in_force(now)
        assert [(d.step, d.devices, d.t_ns) for d in dues] == [(step, ("C-0",), now)]


def test_polar_day_has_no_sun_steps_only_clock_ones():
    t = _target(lats=(69.65,), lons=(18.96,))
    tromso = ZoneInfo("Europe/Oslo")
    start = int(datetime(2026, 6, 21, 12, tzinfo=tromso).timestamp()) * NS
    occ = occurrences(t, tromso, start, start + 86400 * NS)
    assert sorted(occ.step.tolist()) == [1, 2]  # 23:00 and 01:00; no sunset, no sunrise


def _device(name, commune, lat=47.32, lon=5.04, type_="lighting_cabinet"):
    return SimpleNamespace(name=name, commune=commune, lat=lat, lon=lon, type=type_)


def _config(schedules=(NIGHT,), devices=None, concurrency=64):
    devices = devices or [
        _device("C-DIJ-1", "Dijon"),
        _device("C-DIJ-2", "Dijon", lon=5.05),
        _device("C-TAL-1", "Talant"),
    ]
    commands = {"lighting_cabinet": {"SetMode": object(), "SetDimLevel": object()}, "junction": {"SetPlan": object()}}
    return SimpleNamespace(
        devices=tuple(devices),
        types={
            "lighting_cabinet": SimpleNamespace(cls="lighting", driver="mqtt"),
            "junction": SimpleNamespace(cls="traffic", driver="opcua"),
        },
        control=ControlConfig(
            commands=commands,
            schedules=tuple(schedules),
            settings=ControlSettings(group_concurrency=concurrency, timezone="Europe/Paris"),
        ),
    )


def test_targets_are_the_communes_lighting_devices_that_have_the_commands():
    devices = [
        _device("C-DIJ-1", "Dijon"),
        _device("J-DIJ-1", "Dijon", type_="junction"),  # another class
        _device("C-TAL-1", "Talant"),  # another commune
        _device("C-DIJ-2", "Dijon", lat=47.33, lon=5.06),
    ]
    (t,) = resolve_targets(_config(devices=devices))
    assert t.devices == ("C-DIJ-1", "C-DIJ-2")
    assert t.lat.tolist() == [47.32, 47.33] and t.lon.tolist() == [5.04, 5.06]
    zoned = ScheduleDef("z", (), ("centre",), _steps())
    (t,) = resolve_targets(_config((zoned,), devices), zone_members=lambda _c, z: ["C-TAL-1"] if z == "centre" else [])
    assert t.devices == ("C-TAL-1",)


def test_clock_start_and_acceleration():
    mono = [0]
    clock = ScheduleClock(parse_clock_start("2026-12-05T16:00:00+01:00"), 60.0, monotonic_ns=lambda: mono[0])
    assert clock.now_ns() == _local(2026, 12, 5, 16)
    mono[0] = 10 * NS  # ten real seconds: ten simulated minutes
    assert clock.now_ns() == _local(2026, 12, 5, 16, 10)
    assert clock.real_delay(_local(2026, 12, 5, 17, 10)) == pytest.approx(60.0)
    assert clock.real_delay(_local(2026, 12, 5, 16)) == 0.0
    assert parse_clock_start("2026-12-05T15:00:00") == _local(2026, 12, 5, 16)  # UTC without an offset
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_clock_start("tomorrow")
    with pytest.raises(ValueError, match="acceleration"):
        ScheduleClock(None, 0)
    assert ScheduleClock().simulated is False
    # without an origin, the simulated clock reads its start when first read (the schedules' start)
    mono[0] = 0
    lazy = ScheduleClock(_local(2026, 12, 5, 16), 60.0, monotonic_ns=lambda: mono[0])
    mono[0] = 30 * NS  # the server took 30 s to start
    assert lazy.now_ns() == _local(2026, 12, 5, 16)
    mono[0] = 31 * NS
    assert lazy.now_ns() == _local(2026, 12, 5, 16, 1)
    # started 5 real seconds after the origin at x60: five simulated minutes already run
    late = ScheduleClock(
        _local(2026, 12, 5, 16), 60.0, origin_ns=100 * NS, wall_ns=lambda: 105 * NS, monotonic_ns=lambda: 0
    )
    assert late.now_ns() == _local(2026, 12, 5, 16, 5)


# -- the runner ---------------------------------------------------------------------------------


class FakeCommands:
    """The app's command service as the runner sees it: records each request, answers Good (or
    what ``answers`` says for a device)."""

    def __init__(self, config, answers=None):
        self.config = config
        self.overrides = Overrides()
        self.requests = []
        self.answers = answers or {}
        self.running = 0
        self.max_running = 0

    async def execute(self, request):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0)
            self.requests.append(request)
            return CommandResult(request.device, self.answers.get(request.device, GOOD))
        finally:
            self.running -= 1


async def _until(predicate, timeout=60.0):  # a safety net: each wait ends on its state
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the runner did not get there"
        await asyncio.sleep(0.005)


class SteppingClock:
    """A simulated clock that jumps to each instant the runner waits for, up to ``stop_ns``
    (then it stands still): the runner goes through a night in order, whatever the machine's
    load (a fast real clock could pass a step before the runner has started)."""

    def __init__(self, start_ns: int, stop_ns: int) -> None:
        self.t = start_ns
        self.stop_ns = stop_ns

    def now_ns(self) -> int:
        return self.t

    def real_delay(self, t_ns: int) -> float:
        if t_ns <= self.t:
            return 0.0
        if t_ns <= self.stop_ns:
            self.t = t_ns
            return 0.0
        return 3600.0


def _real_pace(start_ns: int) -> ScheduleClock:
    return ScheduleClock(start_ns, 1.0)


async def _running(runner):
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    return task


async def _stop(task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _levels(commands, device):
    return [(r.command, r.args.get("level", r.args.get("mode"))) for r in commands.requests if r.device == device]


async def test_restart_at_half_past_midnight_applies_the_23h_level_then_each_step_in_time():
    commands = FakeCommands(_config(), answers={"C-DIJ-2": BAD_NO_COMMUNICATION})
    audit = MemoryAudit()
    runner = ScheduleRunner(commands, audit, SteppingClock(_local(2026, 12, 6, 0, 30), _local(2026, 12, 6, 22)))
    task = await _running(runner)
    try:
        # in force, 01:00, sunrise+15, sunset; then the clock stands
        await _until(lambda: runner.steps_run == 4)
    finally:
        await _stop(task)
    assert _levels(commands, "C-DIJ-1") == [
        ("SetDimLevel", 50.0),
        ("SetDimLevel", 30.0),
        ("SetMode", FORCED_OFF),
        ("SetMode", AUTO),
    ]
    assert not any(r.device == "C-TAL-1" for r in commands.requests)  # another commune
    first = commands.requests[0]
    assert first.caller.user == SCHEDULER_USER and first.origin == "schedule:dijon_night" and first.phase == "execute"
    records = [r for r in audit.records if r.action == "schedule"]
    assert len(records) == 4
    rec = records[0]
    assert rec.user == SCHEDULER_USER and rec.target == "dijon_night"
    args, counts = json.loads(rec.arguments), json.loads(rec.result)
    assert args["step"] == "23:00" and args["command"] == "SetDimLevel" and args["args"] == {"level": 50.0}
    assert args["in_force_at_start"] is True
    assert counts == {"devices": 2, "confirmed": 1, "failed": 1, "skipped_override": 0}
    assert args["statuses"] == {"Good": 1, "BadNoCommunication": 1}
    assert json.loads(records[1].arguments)["step"] == "01:00"
    assert json.loads(records[1].arguments)["in_force_at_start"] is False
    # The two cabinets (0.01 degree apart) see sunrise in different seconds: two commands, one record
    sunrise = json.loads(records[2].arguments)
    assert sunrise["step"] == "sunrise+00:15" and sunrise["due"] < sunrise["last_due"]
    assert json.loads(records[2].result)["devices"] == 2


async def test_an_override_without_end_skips_the_next_step_once_one_with_an_end_until_then():
    commands = FakeCommands(_config())
    start = _local(2026, 12, 5, 22, 0)
    commands.overrides.set("C-DIJ-1", 0)  # until the next step
    commands.overrides.set("C-DIJ-2", _local(2026, 12, 6, 0, 30))  # until 00:30
    audit = MemoryAudit()
    # the override is already in place at start: the step in force (sunset) leaves both alone
    runner = ScheduleRunner(commands, audit, SteppingClock(start, _local(2026, 12, 6, 2)))
    task = await _running(runner)
    try:
        await _until(lambda: runner.steps_run == 3)  # in force (sunset), 23:00, 01:00; then the clock stands
    finally:
        await _stop(task)
    assert _levels(commands, "C-DIJ-1") == [("SetDimLevel", 50.0), ("SetDimLevel", 30.0)]
    assert _levels(commands, "C-DIJ-2") == [("SetDimLevel", 30.0)]  # 23:00 still overridden
    counts = [json.loads(r.result)["skipped_override"] for r in audit.records if r.action == "schedule"]
    assert counts == [2, 1, 0]


async def test_fan_out_is_bounded_by_the_group_concurrency():
    devices = [_device(f"C-{i}", "Dijon") for i in range(40)]
    commands = FakeCommands(_config(devices=devices, concurrency=5))
    runner = ScheduleRunner(commands, MemoryAudit(), _real_pace(_local(2026, 12, 6, 0, 30)))
    task = await _running(runner)
    try:
        await _until(lambda: len(commands.requests) >= 40)
    finally:
        await _stop(task)
    assert commands.max_running == 5
    assert {r.device for r in commands.requests} == {d.name for d in devices}


async def test_reload_lays_out_again_and_applies_a_new_schedules_step_in_force():
    config = _config()
    commands = FakeCommands(config)
    audit = MemoryAudit()
    # real pace: after the step in force nothing is due for hours
    runner = ScheduleRunner(commands, audit, _real_pace(_local(2026, 12, 6, 0, 30)))
    task = await _running(runner)
    try:
        await _until(lambda: runner.steps_run == 1)
        talant = ScheduleDef("talant", ("Talant",), (), _steps()[1:3])
        commands.config = new = _config((NIGHT, talant))
        runner.reload(new)
        await _until(lambda: runner.steps_run == 2)
        assert [(r.device, r.args) for r in commands.requests[-1:]] == [("C-TAL-1", {"level": 50.0})]
        # the unchanged schedule did not apply its step again
        assert len([r for r in commands.requests if r.device == "C-DIJ-1"]) == 1
        assert runner.plan is not None and runner.plan.next_due(_local(2026, 12, 6, 0, 30))[0] == _local(2026, 12, 6, 1)
    finally:
        await _stop(task)


async def test_one_device_raising_does_not_stop_the_step():
    commands = FakeCommands(_config())
    real = commands.execute

    async def execute(request):
        if request.device == "C-DIJ-1":
            raise RuntimeError("a bug")
        return await real(request)

    commands.execute = execute
    audit = MemoryAudit()
    runner = ScheduleRunner(commands, audit, _real_pace(_local(2026, 12, 6, 0, 30)))
    task = await _running(runner)
    try:
        await _until(lambda: runner.steps_run == 1)
    finally:
        await _stop(task)
    assert [r.device for r in commands.requests] == ["C-DIJ-2"]
    args, counts = json.loads(audit.records[0].arguments), json.loads(audit.records[0].result)
    assert counts["failed"] == 1 and args["statuses"] == {"BadInternalError": 1, "Good": 1}


async def test_the_step_in_force_waits_for_the_devices_first_poll():
    """A step in force sent before the first poll would be refused (no communication): the runner
    waits until each device's Diagnostics/state says whether it answers (here: online)."""
    config = _config()
    names = [d.name for d in config.devices]
    config.device = lambda n: SimpleNamespace(name=n, poll_interval=1.0, timeout=1.0, index=names.index(n))
    config.diag_ids = lambda d: np.array([d.index, 99])
    commands = FakeCommands(config)

    class States:
        """The Diagnostics/state column, counting the runner's looks."""

        def __init__(self):
            self.column = np.array([0.0, np.nan, 0.0])  # not_connected, never polled
            self.looks = 0

        def __getitem__(self, ids):
            self.looks += 1
            return self.column[ids]

    states = States()
    commands.tagdb = SimpleNamespace(value=states)
    runner = ScheduleRunner(commands, MemoryAudit(), _real_pace(_local(2026, 12, 6, 0, 30)))
    task = await _running(runner)
    try:
        await _until(lambda: states.looks >= 3)
        assert commands.requests == []  # looked three times, commanded nothing
        states.column[:2] = (1.0, 2.0)  # C-DIJ-1 online, C-DIJ-2 offline: both known
        await _until(lambda: runner.steps_run == 1)
    finally:
        await _stop(task)
    assert {r.device for r in commands.requests} == {"C-DIJ-1", "C-DIJ-2"}


async def test_a_step_stopped_half_way_is_recorded_as_far_as_it_went():
    commands = FakeCommands(_config())  # C-DIJ-1 at 5.04 E, C-DIJ-2 at 5.05 E: sunrise ~2 s earlier
    rise = sun_times(datetime(2026, 12, 6).date(), np.array([47.32, 47.32]), np.array([5.04, 5.05])).sunrise
    east_due = -(-(int(rise[1]) + 15 * 60 * NS) // NS) * NS
    audit = MemoryAudit()
    runner = ScheduleRunner(commands, audit, SteppingClock(_local(2026, 12, 6, 7), east_due))
    task = await _running(runner)
    try:
        # The 01:00 step in force on both, sunrise on one, and that command's answer taken into the
        # step's tally (a busy machine's stop came between the request and its answer).
        await _until(lambda: len(commands.requests) == 3 and any(t.devices == 1 for t in runner._tallies.values()))
    finally:
        await _stop(task)
    assert [r.device for r in commands.requests[2:]] == ["C-DIJ-2"]
    (rec,) = [r for r in audit.records if json.loads(r.arguments)["step"] == "sunrise+00:15"]
    assert json.loads(rec.result) == {"devices": 1, "confirmed": 1, "failed": 0, "skipped_override": 0}


async def test_days_after_days_the_plan_is_laid_out_again():
    """Four nights in a row: the plan covers a few days and is laid out again as they run out."""
    commands = FakeCommands(_config(devices=[_device("C-DIJ-1", "Dijon")]))
    runner = ScheduleRunner(commands, MemoryAudit(), SteppingClock(_local(2026, 12, 5, 12), _local(2026, 12, 9, 12)))
    task = await _running(runner)
    try:
        await _until(lambda: runner.steps_run == 17)  # in force, then 4 x (sunset, 23:00, 01:00, sunrise)
    finally:
        await _stop(task)
    assert [r.args for r in commands.requests[1:5]] == [
        {"mode": AUTO},
        {"level": 50.0},
        {"level": 30.0},
        {"mode": FORCED_OFF},
    ]
    assert [r.args for r in commands.requests[13:]] == [r.args for r in commands.requests[1:5]]
    assert runner.plan is not None and runner.plan.start_ns > _local(2026, 12, 5, 12) - 2 * 86400 * NS


def test_no_schedule_nothing_due():
    plan = Plan([], PARIS, 0, 10 * 86400 * NS)
    assert plan.next_due(0) is None and plan.in_force(5 * 86400 * NS) == []
    assert len(plan) == 0
    assert timedelta(0) == timedelta(0)


def test_the_server_and_the_simulators_share_one_clock():
    """`scada run --clock-start S --acceleration A --clock-origin O` and the simulators' `--start S
    --acceleration A --start-origin O` read the same simulated time, whenever each started."""
    import argparse

    from scada.cli import schedule_clock
    from simulators.clock import start_at

    origin = time.time() - 5.0  # the simulator started 5 s ago; the server now
    start = "2026-12-05T22:55:00+01:00"
    server = schedule_clock(argparse.Namespace(clock_start=start, acceleration=60.0, clock_origin=origin))
    sim_now = start_at(datetime.fromisoformat(start).timestamp(), origin, 60.0)
    assert server.simulated
    assert abs(server.now_ns() / NS - sim_now) < 60 * 0.5  # within half a real second
    assert server.now_ns() >= _local(2026, 12, 5, 23)  # five real seconds: five simulated minutes
    with pytest.raises(ValueError, match="ISO 8601"):
        schedule_clock(argparse.Namespace(clock_start="12/05/2026", acceleration=1.0, clock_origin=None))


# -- a reload while a step runs (review finding 8) ----------------------------------------------


class ManualClock:
    """A simulated clock the test sets (``t``); while a step is not due the runner looks again
    a millisecond later (real time), so it sees the test's moves."""

    def __init__(self, t_ns: int) -> None:
        self.t = t_ns

    def now_ns(self) -> int:
        return self.t

    def real_delay(self, t_ns: int) -> float:
        return 0.0 if t_ns <= self.t else 0.001


class GatedCommands(FakeCommands):
    """Sunset's SetMode(auto) waits until ``gate`` opens: a step still being run (its read-back)."""

    def __init__(self, config):
        super().__init__(config)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def execute(self, request):
        if request.command == "SetMode" and request.args.get("mode") == AUTO:
            self.waiting += 1
            await self.gate.wait()
        return await super().execute(request)


def _sunset_dues(day=(2026, 12, 5)):
    """The sunset seconds of _config()'s two Dijon cabinets: C-DIJ-2 (further east) first."""
    sunset = sun_times(datetime(*day).date(), np.array([47.32, 47.32]), np.array([5.04, 5.05])).sunset
    west, east = (-(-int(t) // NS) * NS for t in sunset)
    assert east < west
    return east, west


@pytest.mark.parametrize("changed", [False, True], ids=["same config", "schedule changed"])
async def test_a_reload_while_a_step_runs_drops_no_step_due_meanwhile(changed):
    east, west = _sunset_dues()
    config = _config()
    commands = GatedCommands(config)
    audit = MemoryAudit()
    clock = ManualClock(east - 60 * NS)
    runner = ScheduleRunner(commands, audit, clock)
    task = await _running(runner)
    try:
        await _until(lambda: runner.steps_run == 1)  # in force: off since sunrise, on both
        clock.t = east  # C-DIJ-2's sunset: its SetMode(auto) is being run...
        await _until(lambda: commands.waiting == 1)
        clock.t = west + 5 * NS  # ...while C-DIJ-1's sunset falls due
        if changed:  # the 23:00 level changes: the schedule applies its step in force (sunset) again
            at_40 = ScheduleStep("clock", 23 * 3600, "SetDimLevel", {"level": 40.0}, "23:00")
            new = ScheduleDef(NIGHT.name, NIGHT.communes, (), (_steps()[0], at_40, *_steps()[2:]))
            config = commands.config = _config((new,))
        runner.reload(config)  # e.g. app.reload after a SIGHUP (with the same files, or not)
        await _until(lambda: runner.plan is None)
        commands.gate.set()
        await _until(lambda: runner.plan is not None and commands.running == 0)
        clock.t = _local(2026, 12, 5, 23, 0, 5)
        level = 40.0 if changed else 50.0
        await _until(lambda: sum(r.args.get("level") == level for r in commands.requests) == 2)
    finally:
        await _stop(task)
    # Each cabinet: off (in force), on at its own sunset (once), then the 23:00 level.
    assert _levels(commands, "C-DIJ-1") == [("SetMode", FORCED_OFF), ("SetMode", AUTO), ("SetDimLevel", level)]
    if changed:  # the changed schedule's step in force (sunset) on both, not C-DIJ-1's sunset twice
        assert _levels(commands, "C-DIJ-2") == [
            ("SetMode", FORCED_OFF),
            ("SetMode", AUTO),
            ("SetMode", AUTO),
            ("SetDimLevel", level),
        ]
    else:  # nothing changed: the reload left the plan's cursor alone; one record for the sunset
        assert _levels(commands, "C-DIJ-2") == [("SetMode", FORCED_OFF), ("SetMode", AUTO), ("SetDimLevel", level)]
        sunsets = [json.loads(r.result) for r in audit.records if json.loads(r.arguments)["step"] == "sunset"]
        assert sunsets == [{"devices": 2, "confirmed": 2, "failed": 0, "skipped_override": 0}]


# -- the fan-out's per-link bound (review finding 10) -------------------------------------------


async def test_a_step_over_a_gateways_units_keeps_the_group_actions_link_bound():
    """A step over twelve cabinets behind one Modbus gateway (and six on their own ports) has at
    most LINK_CONCURRENCY commands in flight on the gateway, with a group action on the same
    gateway counted in the same slots (scada/control/groups.py's, not a copy)."""
    import dataclasses

    from scada.control import groups
    from scada.control.model import GroupRequest
    from tests.unit.test_control_groups import OPERATOR, FakeCommands as GroupFake, cabinets, make_config

    base = make_config(cabinets(12, port=1502, prefix="G") + cabinets(6, prefix="A"), concurrency=64)
    dim = ScheduleDef("dim", ("Dijon",), (), _steps()[1:3])  # 23:00 and 01:00: SetDimLevel only
    settings = dataclasses.replace(base.control.settings, timezone="Europe/Paris")
    config = dataclasses.replace(base, control=dataclasses.replace(base.control, schedules=(dim,), settings=settings))
    commands = GroupFake(config)
    commands.overrides = Overrides()  # type: ignore[attr-defined]
    gateway = ("modbus", ("127.0.0.1", 1502))
    runner = ScheduleRunner(commands, MemoryAudit(), _real_pace(_local(2026, 12, 6, 0, 30)))
    commands.gate = asyncio.Event()
    task = await _running(runner)
    group = None
    try:
        want = groups.LINK_CONCURRENCY + 6  # the step in force (23:00) on all 18 at once, 64 allowed
        await _until(lambda: commands.running["all"] >= want)
        group = asyncio.create_task(
            groups.run_group(commands, GroupRequest("Dijon", "DimAll", {"level": 10}, OPERATOR))
        )
        await _until(lambda: commands.running["all"] >= want + 6)  # the group's six lone cabinets
        for _ in range(20):  # nothing more starts on the gateway while the four wait
            await asyncio.sleep(0)
        assert commands.running[gateway] == groups.LINK_CONCURRENCY
        commands.gate.set()
        await _until(lambda: runner.steps_run == 1 and group.done())
    finally:
        if group is not None and not group.done():
            group.cancel()
            await asyncio.gather(group, return_exceptions=True)
        await _stop(task)
    assert commands.peak[gateway] == groups.LINK_CONCURRENCY
    scheduled = [r for r in commands.requests if r.origin == "schedule:dim"]
    assert sorted(r.device for r in scheduled) == sorted(d.name for d in config.devices)
    assert all(r.args == {"level": 50.0} for r in scheduled)
    assert len(group.result()) == 18 and all(r.good for r in group.result())
