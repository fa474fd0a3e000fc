"""Group actions' logic against a fake command service (scada/control/groups.py).

The fake stands for the pipeline only here, where what is checked is the fan-out's own logic
(bounds, order, arguments, progress, refusals, audit); the real pipeline, drivers and
simulators run in tests/integration/test_control_groups*.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scada.alarms.config import AlarmsConfig
from scada.config import Config, Device, EquipmentType
from scada.control import groups
from scada.control.model import (
    BAD_INTERNAL_ERROR,
    BAD_INVALID_ARGUMENT,
    BAD_NODE_ID_UNKNOWN,
    BAD_REQUEST_NOT_ALLOWED,
    BAD_TIMEOUT,
    BAD_TOO_MANY_OPERATIONS,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    ArgDef,
    Caller,
    CommandDef,
    CommandRequest,
    CommandResult,
    ControlConfig,
    ControlSettings,
    GroupRequest,
    Step,
    ZoneDef,
)
from scada.security.audit import MemoryAudit

OPERATOR = Caller("olga", ("Operator",), None, session="s1", client="10.0.0.9:5000")
OBSERVER = Caller("oscar", ("Observer",), None, session="s2")


@dataclass(frozen=True)
class Endpoint:
    """A stand-in for a driver's endpoint: what link_of reads of a Modbus device."""

    connection: tuple[str, int]


def command(name: str, type_name: str, args: tuple[ArgDef, ...] = (), critical: bool = False) -> CommandDef:
    return CommandDef(name, type_name, args, (Step("p", arg="level"),), (), 1.0, critical=critical)


DIM = ArgDef("level", "float", (0.0, 100.0))
UNTIL = ArgDef("until", "datetime")


def make_config(
    devices: list[tuple[str, str, str, object]],
    *,
    concurrency: int = 64,
    critical_raise: bool = False,
    zone_defs: dict[str, ZoneDef] | None = None,
) -> Config:
    """Devices (name, type, commune, io) of three types: cabinet (lighting, modbus), bollard
    (bollard, mqtt), junction (traffic, opcua); and a lamp type (lighting) without commands."""
    types = {
        "cabinet": EquipmentType("cabinet", "lighting", "modbus", (), 1.0, 1.0),
        "lamp": EquipmentType("lamp", "lighting", "modbus", (), 1.0, 1.0),
        "bollard": EquipmentType("bollard", "bollard", "mqtt", (), 1.0, 1.0),
        "junction": EquipmentType("junction", "traffic", "opcua", (), 1.0, 1.0),
    }
    commands = {
        "cabinet": {"SetDimLevel": command("SetDimLevel", "cabinet", (DIM, UNTIL))},
        "bollard": {
            "Lower": command("Lower", "bollard"),
            "Raise": command("Raise", "bollard", critical=critical_raise),
        },
        "junction": {"SetPlan": command("SetPlan", "junction", (ArgDef("plan", "int", (1.0, 8.0)),))},
    }
    devs = tuple(
        Device(name, t, commune, 47.3 + k * 1e-3, 5.0, 1.0, 1.0, io, 0, f"test:{k}", index=k)
        for k, (name, t, commune, io) in enumerate(devices)
    )
    return Config(
        Path("."),
        types,
        devs,
        AlarmsConfig((), {}),
        control=ControlConfig(
            commands=commands, zones=zone_defs or {}, settings=ControlSettings(group_concurrency=concurrency)
        ),
        _device_index={d.name: d for d in devs},
    )


def cabinets(n: int, commune: str = "Dijon", port: int | None = None, prefix: str = "C") -> list:
    """``n`` cabinets, each on its own Modbus port, or all behind one gateway (``port``)."""
    return [
        (f"{prefix}{k:03d}", "cabinet", commune, Endpoint(("127.0.0.1", port if port else 20000 + k))) for k in range(n)
    ]


@dataclass
class FakeCommands:
    """Records each request, tracks what runs at once (overall and per link), and answers as
    told: ``status`` per device (Good by default), after ``gate`` opens when one is given."""

    config: Config
    status: dict[str, int] = field(default_factory=dict)
    raises: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None
    requests: list[CommandRequest] = field(default_factory=list)
    running: Counter = field(default_factory=Counter)
    peak: Counter = field(default_factory=Counter)
    cancelled: int = 0

    async def execute(self, request: CommandRequest) -> CommandResult:
        self.requests.append(request)
        link = groups.link_of(self.config, self.config.device(request.device))
        for key in (link, "all"):
            self.running[key] += 1
            self.peak[key] = max(self.peak[key], self.running[key])
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if request.device in self.raises:
                raise RuntimeError("a bug")
            return CommandResult(request.device, self.status.get(request.device, GOOD))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            for key in (link, "all"):
                self.running[key] -= 1


async def spin_until(predicate, deadline: float = 30.0) -> None:
    """Let the loop run until ``predicate()`` holds (a failure, not a hang, when it never does)."""
    async with asyncio.timeout(deadline):
        while not predicate():
            await asyncio.sleep(0)


def run(commands, request, **kw):
    return asyncio.run(groups.run_group(commands, request, **kw))


def test_dim_all_reaches_the_communes_cabinets_in_device_order_with_the_groups_arguments() -> None:
    cfg = make_config(
        [
            *cabinets(3),
            ("LAMP1", "lamp", "Dijon", None),  # lighting, but its type has no SetDimLevel
            ("B1", "bollard", "Dijon", None),
            *cabinets(2, "Talant", prefix="T"),
        ]
    )
    fake = FakeCommands(cfg)
    results = run(fake, GroupRequest("Dijon", "DimAll", {"level": 40.0}, OPERATOR))
    assert [r.device for r in results] == ["C000", "C001", "C002"]
    assert all(r.status == GOOD for r in results)
    assert sorted(r.device for r in fake.requests) == ["C000", "C001", "C002"]
    for r in fake.requests:
        assert (r.command, dict(r.args), r.origin, r.phase, r.caller) == (
            "SetDimLevel",
            {"level": 40.0, "until": 0.0},  # what the group does not give: 0
            "group:Dijon",
            "execute",
            OPERATOR,
        )


def test_class_folder_and_zone_groups() -> None:
    devs = [
        *cabinets(2),
        ("B1", "bollard", "Dijon", None),
        ("B2", "bollard", "Dijon", None),
        ("B3", "bollard", "Talant", None),
    ]
    cfg = make_config(devs, zone_defs={"fire": ZoneDef("fire", devices=("B3", "B1", "C000"))})
    fake = FakeCommands(cfg)
    assert [r.device for r in run(fake, GroupRequest("Dijon/bollard", "OpenZone", {}, OPERATOR))] == ["B1", "B2"]
    assert {r.command for r in fake.requests} == {"Lower"}
    fake.requests.clear()
    # The zone lists a cabinet too: CloseZone only reaches its bollards, in device order.
    assert [r.device for r in run(fake, GroupRequest("zone:fire", "CloseZone", {}, OPERATOR))] == ["B1", "B3"]
    assert {(r.command, r.origin) for r in fake.requests} == {("Raise", "group:zone:fire")}


def test_the_fan_out_never_exceeds_group_concurrency_and_keeps_the_order() -> None:
    cfg = make_config(cabinets(40), concurrency=5)
    fake = FakeCommands(cfg, status={"C007": BAD_TIMEOUT})

    async def go():
        fake.gate = asyncio.Event()
        task = asyncio.create_task(groups.run_group(fake, GroupRequest("Dijon", "DimAll", {"level": 10}, OPERATOR)))
        await spin_until(lambda: fake.running["all"] >= 5)
        for _ in range(20):  # nothing more starts while the five wait
            await asyncio.sleep(0)
        assert fake.running["all"] == 5
        fake.gate.set()
        return await task

    results = asyncio.run(go())
    assert fake.peak["all"] == 5
    assert [r.device for r in results] == [f"C{k:03d}" for k in range(40)]
    assert [r.status for r in results if r.status != GOOD] == [BAD_TIMEOUT]


def test_a_shared_modbus_link_takes_at_most_link_concurrency_and_does_not_hold_back_the_others() -> None:
    gateway = cabinets(12, port=1502, prefix="G")  # 12 units behind one gateway
    alone = cabinets(6, prefix="A")  # each on its own port
    cfg = make_config(gateway + alone, concurrency=64)
    fake = FakeCommands(cfg)

    async def go():
        fake.gate = asyncio.Event()
        task = asyncio.create_task(groups.run_group(fake, GroupRequest("Dijon", "DimAll", {"level": 10}, OPERATOR)))
        want = groups.LINK_CONCURRENCY + 6
        await spin_until(lambda: fake.running["all"] >= want)
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.running["all"] == want  # the gateway's other units wait their turn
        fake.gate.set()
        return await task

    results = asyncio.run(go())
    assert fake.peak[("modbus", ("127.0.0.1", 1502))] == groups.LINK_CONCURRENCY
    assert len(results) == 18 and all(r.good for r in results)


def test_mqtt_and_opcua_devices_are_bounded_by_group_concurrency_only() -> None:
    cfg = make_config([(f"B{k}", "bollard", "Dijon", None) for k in range(10)], concurrency=64)
    fake = FakeCommands(cfg)

    async def go():
        fake.gate = asyncio.Event()
        task = asyncio.create_task(groups.run_group(fake, GroupRequest("Dijon", "OpenZone", {}, OPERATOR)))
        await spin_until(lambda: fake.running["all"] >= 10)
        fake.gate.set()
        return await task

    assert len(asyncio.run(go())) == 10


def test_progress_starts_goes_on_at_a_bounded_rate_and_ends(monkeypatch) -> None:
    monkeypatch.setattr(groups, "PROGRESS_PERIOD", 0.02)
    cfg = make_config(cabinets(30), concurrency=3)
    fake = FakeCommands(cfg, status={"C002": BAD_TIMEOUT, "C020": BAD_TIMEOUT})
    calls: list[tuple] = []

    async def slow_execute(request, inner=fake.execute):
        await asyncio.sleep(0.005)
        return await inner(request)

    fake.execute = slow_execute  # type: ignore[method-assign]

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await groups.run_group(
            fake,
            GroupRequest("Dijon", "DimAll", {"level": 70}, OPERATOR),
            lambda *a: calls.append((loop.time(), *a)),
        )
        return out, loop.time() - t0

    results, elapsed = asyncio.run(go())
    assert len(results) == 30
    assert calls[0][1:] == (calls[0][1], "Dijon", "DimAll", "olga", 30, 0, 0, False)[1:]
    assert calls[-1][1:] == ("Dijon", "DimAll", "olga", 30, 30, 2, True)
    middle = calls[1:-1]
    assert middle, "progress while the group runs"
    assert all(not c[-1] for c in middle)
    dones = [c[5] for c in calls]
    assert dones == sorted(dones)
    # At most one report per period (plus the first and the last).
    times = [c[0] for c in calls[:-1]]
    assert all(b - a >= 0.02 * 0.99 for a, b in zip(times, times[1:]))
    assert len(calls) <= 2 + elapsed / 0.02 + 1


def test_a_critical_command_is_never_fanned_out() -> None:
    cfg = make_config([("B1", "bollard", "Dijon", None), ("B2", "bollard", "Dijon", None)], critical_raise=True)
    fake, audit = FakeCommands(cfg), MemoryAudit()
    results = run(fake, GroupRequest("Dijon", "CloseZone", {}, OPERATOR), audit=audit)
    assert [(r.device, r.status) for r in results] == [("Dijon", BAD_REQUEST_NOT_ALLOWED)]
    assert "select-before-operate" in results[0].message
    assert fake.requests == []
    assert [(a.action, a.result) for a in audit.records] == [("group_command", "BadRequestNotAllowed")]
    # Lower is not critical: the same bollards open.
    assert len(run(fake, GroupRequest("Dijon", "OpenZone", {}, OPERATOR))) == 2


@pytest.mark.parametrize(
    ("group", "action", "args", "status", "words"),
    [
        ("Paris", "DimAll", {"level": 1}, BAD_NODE_ID_UNKNOWN, "no commune 'Paris'"),
        ("zone:none", "DimAll", {"level": 1}, BAD_NODE_ID_UNKNOWN, "no zone 'none'"),
        ("Dijon", "Explode", {}, BAD_INVALID_ARGUMENT, "unknown group action 'Explode'"),
        ("Dijon", "DimAll", {}, BAD_INVALID_ARGUMENT, "DimAll: missing level"),
        ("Dijon", "DimAll", {"level": 1, "until": 5}, BAD_INVALID_ARGUMENT, "unexpected until"),
        ("Dijon", "SetCorridorPlan", {"plan": 2}, BAD_INVALID_ARGUMENT, "Dijon has no traffic device"),
    ],
)
def test_whole_group_refusals(group, action, args, status, words) -> None:
    cfg = make_config(cabinets(2))
    fake, audit = FakeCommands(cfg), MemoryAudit()
    calls = []
    results = run(fake, GroupRequest(group, action, args, OPERATOR), audit=audit, progress=lambda *a: calls.append(a))
    assert [(r.device, r.status) for r in results] == [(group, status)]
    assert words in results[0].message
    assert fake.requests == [] and calls == []
    (rec,) = audit.records
    assert (rec.action, rec.target, rec.user) == ("group_command", group, "olga")
    assert json.loads(rec.arguments)["message"] == results[0].message


def test_an_observer_is_refused_and_audited() -> None:
    cfg = make_config(cabinets(2))
    fake, audit = FakeCommands(cfg), MemoryAudit()
    results = run(fake, GroupRequest("Dijon", "DimAll", {"level": 5}, OBSERVER), audit=audit)
    assert [(r.device, r.status) for r in results] == [("Dijon", BAD_USER_ACCESS_DENIED)]
    assert fake.requests == []
    assert [(a.user, a.result) for a in audit.records] == [("oscar", "BadUserAccessDenied")]
    assert run(fake, GroupRequest("Dijon", "DimAll", {"level": 5}, Caller("x", ("Wizard",), None)))[0].status == (
        BAD_USER_ACCESS_DENIED
    )


def test_the_group_counts_once_against_the_users_rate_limit() -> None:
    cfg = make_config(cabinets(25))
    fake, audit = FakeCommands(cfg), MemoryAudit()
    asked: list[Caller] = []
    allowed = iter([True, False])

    def user_limit(caller: Caller) -> bool:
        asked.append(caller)
        return next(allowed)

    first = run(fake, GroupRequest("Dijon", "DimAll", {"level": 5}, OPERATOR), user_limit=user_limit)
    assert len(first) == 25 and asked == [OPERATOR]
    second = run(fake, GroupRequest("Dijon", "DimAll", {"level": 5}, OPERATOR), user_limit=user_limit, audit=audit)
    assert [(r.device, r.status) for r in second] == [("Dijon", BAD_TOO_MANY_OPERATIONS)]
    assert len(fake.requests) == 25 and len(asked) == 2
    assert audit.records[0].result == "BadTooManyOperations"


def test_audit_one_group_record_good_or_counted() -> None:
    cfg = make_config(cabinets(5))
    audit = MemoryAudit()
    run(FakeCommands(cfg), GroupRequest("Dijon", "DimAll", {"level": 30}, OPERATOR), audit=audit)
    (rec,) = audit.records
    assert (rec.action, rec.target, rec.result, rec.user, rec.session, rec.client_address, rec.roles) == (
        "group_command",
        "Dijon",
        "Good",
        "olga",
        "s1",
        "10.0.0.9:5000",
        ("Operator",),
    )
    assert json.loads(rec.arguments) == {"action": "DimAll", "args": {"level": 30.0}, "devices": 5}
    audit.records.clear()
    fake = FakeCommands(cfg, status={"C001": BAD_TIMEOUT, "C003": BAD_TIMEOUT, "C004": BAD_USER_ACCESS_DENIED})
    run(fake, GroupRequest("Dijon", "DimAll", {"level": 30}, OPERATOR), audit=audit)
    assert audit.records[0].result == "2 Good, 2 BadTimeout, 1 BadUserAccessDenied"


def test_a_pipeline_exception_is_that_devices_internal_error_only() -> None:
    cfg = make_config(cabinets(4))
    fake = FakeCommands(cfg, raises={"C002"})
    results = run(fake, GroupRequest("Dijon", "DimAll", {"level": 30}, OPERATOR))
    assert [r.status for r in results] == [GOOD, GOOD, BAD_INTERNAL_ERROR, GOOD]
    assert "a bug" in results[2].message


def test_cancelling_the_group_cancels_the_commands_in_flight() -> None:
    cfg = make_config(cabinets(20), concurrency=4)
    fake = FakeCommands(cfg)

    async def go():
        fake.gate = asyncio.Event()  # never opens
        task = asyncio.create_task(groups.run_group(fake, GroupRequest("Dijon", "DimAll", {"level": 1}, OPERATOR)))
        await spin_until(lambda: fake.running["all"] >= 4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fake.running["all"] == 0
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    asyncio.run(go())
    assert fake.cancelled == 4 and len(fake.requests) == 4


def test_a_thousand_devices_fan_out_quickly() -> None:
    """The fan-out's own cost per device (the bench measures the real pipeline)."""
    cfg = make_config(cabinets(1100), concurrency=64)
    fake = FakeCommands(cfg)
    results = run(fake, GroupRequest("Dijon", "DimAll", {"level": 30}, OPERATOR))
    assert len(results) == 1100 and all(r.good for r in results)
    assert fake.peak["all"] <= 64


def test_two_groups_at_once_share_a_gateways_slots() -> None:
    # Six units behind one gateway: three in Dijon, three in Talant; both communes dimmed at once.
    gateway = [(f"D{k}", "cabinet", "Dijon", Endpoint(("127.0.0.1", 1502))) for k in range(3)] + [
        (f"T{k}", "cabinet", "Talant", Endpoint(("127.0.0.1", 1502))) for k in range(3)
    ]
    cfg = make_config(gateway)
    fake = FakeCommands(cfg)

    async def go():
        fake.gate = asyncio.Event()
        both = [
            asyncio.create_task(groups.run_group(fake, GroupRequest(c, "DimAll", {"level": 10}, OPERATOR)))
            for c in ("Dijon", "Talant")
        ]
        await spin_until(lambda: fake.running["all"] >= groups.LINK_CONCURRENCY)
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.running["all"] == groups.LINK_CONCURRENCY  # not 2 x 3
        fake.gate.set()
        return await asyncio.gather(*both)

    dijon, talant = asyncio.run(go())
    assert [r.device for r in dijon] == ["D0", "D1", "D2"] and [r.device for r in talant] == ["T0", "T1", "T2"]
    assert fake.peak[("modbus", ("127.0.0.1", 1502))] == groups.LINK_CONCURRENCY


def test_devices_start_round_robin_over_their_links() -> None:
    assert groups._round_robin(["a", "a", "a", "b", "c", "c"]) == [0, 3, 4, 1, 5, 2]
    cfg = make_config(cabinets(6, port=1502, prefix="G") + cabinets(2, prefix="A"), concurrency=3)
    fake = FakeCommands(cfg)
    run(fake, GroupRequest("Dijon", "DimAll", {"level": 10}, OPERATOR))
    # The gateway's first unit, then the two lone cabinets, before the gateway's others.
    assert [r.device for r in fake.requests][:3] == ["G000", "A000", "A001"]
