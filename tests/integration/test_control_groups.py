"""Group actions end to end in the core: the real pipeline, the real drivers, the real simulators.

DimAll over a commune through the Modbus driver and the lighting simulator (some cabinets
behind one gateway, sharing its connection): every cabinet of the commune is dimmed and
confirmed by its read-back, the others untouched; a caller limited to another commune gets
BadUserAccessDenied per device. OpenZone/CloseZone over a zone of bollards through Mosquitto
and the bollard simulator: every bollard of the zone moves, the one outside stays, and a
vehicle on a loop makes the interlock refuse that bollard only. Each act is audited: one
group record plus one record per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import pytest

from drivers.modbus.driver import ModbusDriver
from drivers.mqtt.driver import MqttDriver
from scada.backoff import Backoff
from scada.control import groups
from scada.control.model import (
    BAD_INVALID_STATE,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    ArgDef,
    Caller,
    CommandDef,
    ControlConfig,
    GroupRequest,
    InterlockDef,
    Step,
    ZoneDef,
)
from scada.control.pipeline import CommandPipeline
from scada.security.audit import MemoryAudit
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.adapters.mqtt_city import BollardMqttSimulator
from simulators.models import bollards as bo
from simulators.models import lighting

from .helpers import DEADLINE, DriverHarness, free_port_range, load, until, write_inventory

pytestmark = pytest.mark.integration

OPERATOR = Caller("olga", ("Operator",), None, session="s1", client="127.0.0.1:4000")
TALANT_ONLY = Caller("tom", ("Operator",), ("Talant",), session="s2")

# The commands as tags.yaml declares them for the shipped types (built here so that this test
# does not depend on the parser's branch; the configuration helper's tests cover the parsing).
SET_DIM = CommandDef(
    "SetDimLevel",
    "lighting_cabinet",
    (ArgDef("level", "float", (0.0, 100.0), unit="%"), ArgDef("until", "datetime")),
    (Step("mode", value=3.0), Step("dim_setpoint", arg="level")),
    (Step("dim_level", arg="level"),),
    timeout=DEADLINE,
    tolerance=0.5,
)
LOWER = CommandDef(
    "Lower", "access_bollard", (), (Step("command", value=0.0),), (Step("position", value=0.0),), DEADLINE
)
RAISE = CommandDef(
    "Raise",
    "access_bollard",
    (),
    (Step("command", value=1.0),),
    (Step("position", value=2.0),),
    DEADLINE,
    interlocks=("no_vehicle",),
)
NO_VEHICLE = InterlockDef("no_vehicle", "not vehicle", "a vehicle is on the loop")


def vehicle_parks(s: bo.BollardState, i: int) -> bo.BollardState:
    """A vehicle stays on bollard ``i``'s loop for an hour (no race with its leaving)."""
    until_t = s.vehicle_until.copy()
    until_t[i] = s.t + 3600.0
    return dataclasses.replace(s, vehicle_until=until_t)


@contextlib.asynccontextmanager
async def pipeline_over(harness: DriverHarness, driver_name: str):
    """The real pipeline over the harness's driver and tag table, its read-back task running."""
    audit = MemoryAudit()
    pipeline = CommandPipeline(harness.config, harness.tagdb, {driver_name: harness.driver}, audit)
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline, audit
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_group(pipeline: CommandPipeline, request: GroupRequest, progress=None):
    """The group action as the command service runs it: the group counts once against the
    user's rate (the pipeline's limiter) and is audited in the pipeline's trail."""
    return await groups.run_group(
        pipeline,
        request,
        progress,
        user_limit=lambda caller: pipeline.limits.users.take(caller.user),
        audit=pipeline.audit,
    )


def group_records(audit: MemoryAudit) -> list:
    return [r for r in audit.records if r.action == "group_command"]


def device_records(audit: MemoryAudit) -> list:
    return [r for r in audit.records if r.action == "command"]


@pytest.fixture
async def cabinets():
    """Six simulated cabinets, two units per port: three gateways' worth of shared connections."""
    base = free_port_range(3)
    state = lighting.create([47.32] * 6, [5.04] * 6, [20] * 6, t=time.time())
    sim = LightingModbusSimulator(state, "127.0.0.1", base, 2, step_interval=0.05)
    await sim.start()
    yield sim
    await sim.stop()


async def test_dim_all_over_a_commune_confirms_every_cabinet(cabinets, tmp_path):
    base = cabinets.base_port
    communes = ["Dijon", "Dijon", "Dijon", "Dijon", "Talant", "Talant"]
    write_inventory(
        tmp_path / "c",
        "devices.csv",
        "name,type,commune,lat,lon,endpoint,unit,poll_interval,timeout",
        [
            f"C{k},lighting_cabinet,{c},47.32,5.04,127.0.0.1:{base + k // 2},{1 + k % 2},0.2,0.5"
            for k, c in enumerate(communes)
        ],
    )
    cfg = load(tmp_path / "c")
    cfg = dataclasses.replace(cfg, control=ControlConfig(commands={"lighting_cabinet": {"SetDimLevel": SET_DIM}}))
    harness = DriverHarness(cfg, lambda c, devices, db: ModbusDriver(c, devices, db, Backoff(base=0.1, cap=0.5)))
    async with harness as h, pipeline_over(h, "modbus") as (pipeline, audit):
        await until(lambda: all(h.value(f"C{k}", "Diagnostics/state") == 1 for k in range(6)), what="online")
        progress: list[tuple] = []
        results = await run_group(
            pipeline, GroupRequest("Dijon", "DimAll", {"level": 40.0}, OPERATOR), lambda *a: progress.append(a)
        )
        assert [(r.device, r.status) for r in results] == [(f"C{k}", GOOD) for k in range(4)], results
        # The simulator says so (its model, not our tag table) ...
        assert cabinets.state.dim_level[:4].tolist() == [40.0] * 4
        assert cabinets.state.mode[:4].tolist() == [lighting.MANUAL_DIM] * 4
        # ... and the cabinets of Talant were left alone.
        assert cabinets.state.mode[4:].tolist() == [lighting.AUTO] * 2
        assert all(h.value(f"C{k}", "dim_level") == 40.0 for k in range(4))
        assert progress[0] == ("Dijon", "DimAll", "olga", 4, 0, 0, False)
        assert progress[-1] == ("Dijon", "DimAll", "olga", 4, 4, 0, True)
        (group,) = group_records(audit)
        assert (group.target, group.result, group.user) == ("Dijon", "Good", "olga")
        assert json.loads(group.arguments) == {"action": "DimAll", "args": {"level": 40.0}, "devices": 4}
        per_device = device_records(audit)
        assert sorted(r.target for r in per_device) == ["C0", "C1", "C2", "C3"]
        assert {json.loads(r.arguments)["origin"] for r in per_device} == {"group:Dijon"}
        assert {r.result for r in per_device} == {"Good"}

        # An operator of Talant only: Dijon's cabinets are refused one by one; nothing moves.
        audit.records.clear()
        refused = await run_group(pipeline, GroupRequest("Dijon/lighting", "DimAll", {"level": 70.0}, TALANT_ONLY))
        assert [(r.device, r.status) for r in refused] == [(f"C{k}", BAD_USER_ACCESS_DENIED) for k in range(4)]
        assert cabinets.state.dim_level[:4].tolist() == [40.0] * 4
        assert group_records(audit)[0].result == "4 BadUserAccessDenied"
        # ... and Talant's own cabinets obey them.
        talant = await run_group(pipeline, GroupRequest("Talant", "DimAll", {"level": 70.0}, TALANT_ONLY))
        assert [(r.device, r.status) for r in talant] == [("C4", GOOD), ("C5", GOOD)]
        assert cabinets.state.dim_level[4:].tolist() == [70.0] * 2


async def test_open_and_close_a_zone_of_bollards_through_mosquitto(broker, tmp_path):
    names = ["B1", "B2", "B3"]
    write_inventory(
        tmp_path / "c",
        "devices.csv",
        "name,type,commune,lat,lon,endpoint",
        [f"{n},access_bollard,Dijon,47.32,5.04,127.0.0.1:{broker.port}" for n in names],
    )
    cfg = load(tmp_path / "c")
    control = ControlConfig(
        commands={"access_bollard": {"Lower": LOWER, "Raise": RAISE}},
        interlocks={"access_bollard": {"no_vehicle": NO_VEHICLE}},
        zones={"fire": ZoneDef("fire", devices=("B1", "B2"))},
    )
    cfg = dataclasses.replace(cfg, control=control)
    sim = BollardMqttSimulator(
        bo.create(3, t=time.time(), arrivals_per_hour=0),
        names,
        "127.0.0.1",
        broker.port,
        step_interval=0.05,
        acceleration=4,
    )
    await sim.start()
    try:
        async with DriverHarness(cfg, MqttDriver, max_ages=True) as h, pipeline_over(h, "mqtt") as (pipeline, audit):
            await until(lambda: all(h.value(n, "position") == 2 for n in names), what="every bollard up")
            await until(lambda: all(h.value(n, "Diagnostics/state") == 1 for n in names), what="online")
            opened = await run_group(pipeline, GroupRequest("zone:fire", "OpenZone", {}, OPERATOR))
            assert [(r.device, r.status) for r in opened] == [("B1", GOOD), ("B2", GOOD)]
            assert sim.state.position.tolist()[:2] == [bo.DOWN, bo.DOWN]
            assert h.value("B3", "position") == 2  # outside the zone: still up

            # A vehicle stands on B2's loop: closing the zone raises B1 and refuses B2, naming why.
            sim.apply(vehicle_parks, 1)
            await until(lambda: h.value("B2", "vehicle") == 1, what="vehicle on B2's loop")
            audit.records.clear()
            closed = await run_group(pipeline, GroupRequest("zone:fire", "CloseZone", {}, OPERATOR))
            assert [(r.device, r.status, r.interlock) for r in closed] == [
                ("B1", GOOD, ""),
                ("B2", BAD_INVALID_STATE, "no_vehicle"),
            ]
            assert "vehicle" in closed[1].message
            assert sim.state.position.tolist()[0] == bo.UP
            assert h.value("B2", "position") == 0
            (group,) = group_records(audit)
            assert (group.target, group.result) == ("zone:fire", "1 Good, 1 BadInvalidState")
            assert sorted((r.target, r.result) for r in device_records(audit)) == [
                ("B1", "Good"),
                ("B2", "BadInvalidState"),
            ]
    finally:
        await sim.stop()
