"""The command pipeline against the real field: the tiny simulated city in its own process
(Modbus lighting cabinets, the traffic OPC UA server, MQTT bollards through Mosquitto), the real
drivers polling it into a tag table, and the pipeline on top (no OPC UA front needed here: the
HMI side is tests/integration/test_opcua_commands*.py).

Each test commands its own devices of the one city (faults are per device), so that the tests
do not disturb each other; a read-back is what the simulator reports through the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest

from scada import status as st
from scada.control.model import (
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_REQUEST_NOT_ALLOWED,
    BAD_SEQUENCE_NUMBER_INVALID,
    BAD_TIMEOUT,
    BAD_TOO_MANY_OPERATIONS,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    Caller,
    CommandRequest,
    RateLimit,
)
from scada.control.pipeline import CommandPipeline
from scada.security.audit import MemoryAudit
from scada.tagdb import TagDB
from tests.control_defs import control, shipped_control, with_control

from .helpers import DEADLINE, Mosquitto, fault, load, start_tiny_city, until, wait_port

pytestmark = pytest.mark.integration

OPERATOR = Caller("olga", ("Operator",), None, session="s1", client="127.0.0.1:5000")
ENGINEER = Caller("emma", ("Engineer",), None, session="s2")
ENGINEER_ELSEWHERE = Caller("eve", ("Engineer",), None, session="s3")
OBSERVER = Caller("otto", ("Observer",), None, session="s4")
ACCELERATION = 2.0  # simulated s per real s: a bollard rises in 3 s, a vehicle stays on its loop 4 s


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """The tiny city with its bollards on a real Mosquitto, for every test of this module."""
    folder = tmp_path_factory.mktemp("city")
    broker = Mosquitto(folder / "mqtt")
    c = start_tiny_city(folder, mqtt=f"127.0.0.1:{broker.port}", acceleration=ACCELERATION)
    try:
        wait_port(c.control, proc=c.sim)
        yield c
    finally:
        c.sim.stop()
        broker.stop()


class Field:
    """The real drivers of ``kinds`` polling the city into a tag table, and the pipeline over them."""

    def __init__(self, city, kinds: tuple[str, ...], ctl=None, **settings) -> None:
        """``ctl``: these commands; by default tags.yaml's (the tests' own until it has some),
        with ``settings`` (ControlSettings fields) overridden."""
        config = load(city.config)
        self.config = with_control(config, ctl) if ctl is not None else shipped_control(config, **settings)
        self.tagdb = TagDB(*self.config.tag_table())
        self.drivers = {}
        for name in kinds:
            devices = [d for d in self.config.devices if self.config.types[d.type].driver == name]
            self.drivers[name] = self.config.drivers[name].create(self.config, devices, self.tagdb)
        self.audit = MemoryAudit()
        self.pipeline = CommandPipeline(self.config, self.tagdb, self.drivers, self.audit)
        self.tasks: list[asyncio.Task] = []

    def id(self, device: str, point: str) -> int:
        d = self.config.device(device)
        return self.tagdb.id_of(f"{d.commune}/{self.config.types[d.type].cls}/{device}/{point}")

    def value(self, device: str, point: str) -> float:
        return float(self.tagdb.value[self.id(device, point)])

    def status(self, device: str, point: str) -> int:
        return int(self.tagdb.status[self.id(device, point)])

    def good(self, device: str, point: str) -> bool:
        return self.status(device, point) == st.GOOD

    def control(self, device: str, point: str) -> str | None:
        return self.tagdb.text.get(self.id(device, f"Control/{point}"))

    async def online(self, *devices: str, point: str) -> None:
        """Wait until the driver reports ``point`` of each device Good and says it is online."""
        for name in devices:
            await until(lambda n=name: self.good(n, point), what=f"{name}/{point} Good")
            await until(lambda n=name: self.value(n, "Diagnostics/state") == 1.0, what=f"{name} online")

    async def run(self, device, command, args=None, caller=OPERATOR, **kw):
        return await self.pipeline.execute(CommandRequest(device, command, args or {}, caller, **kw))

    async def __aenter__(self):
        self.tasks = [asyncio.create_task(d.run()) for d in self.drivers.values()]
        self.tasks.append(asyncio.create_task(self.pipeline.run()))
        return self

    async def __aexit__(self, *exc):
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_an_operator_dims_a_cabinet_and_the_simulator_confirms_it(city):
    async with Field(city, ("modbus",)) as f:
        await f.online("LC-DIJ-001", point="dim_level")
        r = await f.run("LC-DIJ-001", "SetDimLevel", {"level": 37, "until": 0})
        assert r.status == GOOD, r.message
        # The simulator applies it: its dim level and mode, as the driver polls them.
        assert f.value("LC-DIJ-001", "dim_level") == 37.0 and f.good("LC-DIJ-001", "dim_level")
        assert f.value("LC-DIJ-001", "mode") == 3.0
        assert f.control("LC-DIJ-001", "last_result") == "Good"
        assert f.control("LC-DIJ-001", "last_command") == "SetDimLevel(level=37, until=0)"
        assert [(a.target, a.result) for a in f.audit.records] == [("LC-DIJ-001", "Good")]
        # A Write to the set-point goes through the same pipeline, confirmed by the point itself.
        r = await f.run("LC-DIJ-001", "Write", {"value": 55}, point="dim_setpoint", origin="write")
        assert r.status == GOOD, r.message
        await until(lambda: f.value("LC-DIJ-001", "dim_level") == 55.0, what="the cabinet dims to 55 %")


async def test_a_read_back_the_cabinet_never_gives_is_bad_timeout_and_its_tag_stays_as_it_says(city):
    """The cabinet takes the write but cannot apply it (no mains: lamps off): BadTimeout, and the
    dim level stays what the cabinet reports. (The tests' SetDimLevel, without the shipped
    ``mains_present`` interlock that would refuse it before any write.)"""
    async with Field(city, ("modbus",), control(timeout=2.0)) as f:
        await f.online("LC-DIJ-002", point="dim_level")
        fault(city.control, "mains_loss", "LC-DIJ-002")
        await until(lambda: f.value("LC-DIJ-002", "mains_fault") == 1.0, what="the mains fault is seen")
        r = await f.run("LC-DIJ-002", "SetDimLevel", {"level": 60, "until": 0})
        assert r.status == BAD_TIMEOUT, r.message
        assert "dim_level reads 0 (Good), expected 60" in r.message
        assert f.value("LC-DIJ-002", "dim_level") == 0.0 and f.good("LC-DIJ-002", "dim_level")
        assert f.value("LC-DIJ-002", "dim_setpoint") == 60.0  # written: the cabinet has the set-point
        assert f.control("LC-DIJ-002", "last_result").startswith("BadTimeout: ")
        assert f.audit.records[-1].result == "BadTimeout"
        fault(city.control, "mains_restore", "LC-DIJ-002")


async def test_a_cabinet_that_stops_answering_is_not_in_communication_and_its_tags_turn_bad(city):
    async with Field(city, ("modbus",)) as f:
        await f.online("LC-DIJ-003", point="dim_level")
        before = f.value("LC-DIJ-003", "dim_level")
        fault(city.control, "device_silent", "LC-DIJ-003")
        try:
            r = await f.run("LC-DIJ-003", "SetDimLevel", {"level": 12, "until": 0})
            # The write itself gets no answer (BadTimeout: it went out, whether it was applied is
            # unknown), or the driver already saw the silence (BadNoCommunication: nothing sent);
            # never a success. (Through an HMI: tests/integration/test_opcua_commands_field.py.)
            assert r.status in (BAD_TIMEOUT, BAD_NO_COMMUNICATION), r.message
            first = "BadTimeout" if r.status == BAD_TIMEOUT else "BadNoCommunication"
            await until(lambda: st.is_bad(f.status("LC-DIJ-003", "dim_level")), what="dim_level turns Bad")
            assert f.value("LC-DIJ-003", "dim_level") == before  # the last value is kept, Bad
            # Once the driver has seen it, the next command is refused before any write.
            await until(lambda: f.value("LC-DIJ-003", "Diagnostics/state") != 1.0, what="the device is offline")
            r = await f.run("LC-DIJ-003", "SetMode", {"mode": 1})
            assert r.status == BAD_NO_COMMUNICATION and "not in communication" in r.message
        finally:
            fault(city.control, "device_answer", "LC-DIJ-003")
        assert [a.result for a in f.audit.records] == [first, "BadNoCommunication"]


async def test_select_before_operate_on_a_real_cabinet(city):
    """ResetTrip is critical: Operate without Select, from another session or after the timeout
    is refused and writes nothing; Select then Operate resets the simulator's breaker."""
    async with Field(city, ("modbus",), select_timeout=1.0) as f:
        dev = "LC-CHE-001"
        await f.online(dev, point="earth_leakage_trip")
        fault(city.control, "earth_leakage", dev)
        await until(lambda: f.value(dev, "earth_leakage_trip") == 1.0, what="the breaker trips")
        r = await f.run(dev, "ResetTrip", caller=ENGINEER)
        assert r.status == BAD_REQUEST_NOT_ALLOWED and "select first" in r.message
        r = await f.run(dev, "ResetTrip", caller=ENGINEER, phase="operate", token="0" * 32)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "not selected" in r.message
        sel = await f.run(dev, "ResetTrip", caller=ENGINEER, phase="select")
        assert sel.status == GOOD and sel.token
        r = await f.run(dev, "ResetTrip", caller=ENGINEER_ELSEWHERE, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "another session" in r.message
        # The selection's time runs out: its own timer shows the cabinet idle again.
        await until(lambda: f.value(dev, "Control/state") == 0.0, what="the selection expires")
        r = await f.run(dev, "ResetTrip", caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID
        assert f.value(dev, "earth_leakage_trip") == 1.0  # nothing was written: still tripped
        sel = await f.run(dev, "ResetTrip", caller=ENGINEER, phase="select")
        r = await f.run(dev, "ResetTrip", caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == GOOD, r.message
        assert f.value(dev, "earth_leakage_trip") == 0.0
        phases = [(a.user, json.loads(a.arguments)["phase"], a.result) for a in f.audit.records]
        assert phases == [
            ("emma", "execute", "BadRequestNotAllowed"),
            ("emma", "operate", "BadSequenceNumberInvalid"),
            ("emma", "select", "Good"),
            ("eve", "operate", "BadSequenceNumberInvalid"),
            ("emma", "operate", "BadSequenceNumberInvalid"),
            ("emma", "select", "Good"),
            ("emma", "operate", "Good"),
        ]


async def test_an_observer_is_refused_and_the_rate_limit_holds(city):
    async with Field(city, ("modbus",), user_rate=RateLimit(0.01, 2), device_rate=RateLimit(0.01, 100)) as f:
        dev = "LC-TAL-001"
        await f.online(dev, point="mode")
        r = await f.run(dev, "SetMode", {"mode": 1}, caller=OBSERVER)
        assert r.status == BAD_USER_ACCESS_DENIED
        got = [(await f.run(dev, "SetMode", {"mode": m})).status for m in (1, 0, 1)]
        assert got == [GOOD, GOOD, BAD_TOO_MANY_OPERATIONS]
        assert f.value(dev, "mode") == 0.0  # the third never reached the cabinet
        assert [a.result for a in f.audit.records] == [
            "BadUserAccessDenied",
            "Good",
            "Good",
            "BadTooManyOperations",
        ]


async def test_a_bollard_does_not_rise_while_a_vehicle_is_on_its_loop(city):
    async with Field(city, ("mqtt",)) as f:
        dev = "B-DIJ-001"
        await f.online(dev, point="position")
        r = await f.run(dev, "Lower")
        assert r.status == GOOD, r.message
        assert f.value(dev, "position") == 0.0
        fault(city.control, "vehicle_arrival", dev, "vehicle_class=unauthorised")
        await until(lambda: f.value(dev, "vehicle") == 1.0, what="the vehicle on the loop is seen")
        r = await f.run(dev, "Raise")
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "no_vehicle")
        assert r.message.startswith("interlock no_vehicle: a vehicle is on ")
        rec = f.audit.records[-1]
        assert (rec.target, rec.result) == (dev, "BadInvalidState") and '"interlock":"no_vehicle"' in rec.arguments
        assert f.value(dev, "position") == 0.0  # not commanded: still down
        # Once the vehicle has gone, Raise goes and the bollard confirms it is up. (The simulator's
        # own random arrivals may put another vehicle on the loop: refused again, rightly.)
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while True:
            await until(lambda: f.value(dev, "vehicle") == 0.0, what="the vehicle leaves the loop")
            r = await f.run(dev, "Raise")
            if r.interlock != "no_vehicle" or asyncio.get_running_loop().time() > deadline:
                break
        assert r.status == GOOD, r.message
        assert f.value(dev, "position") == 2.0


async def test_routine_commands_never_spend_a_bollard_s_emergency_budget(city):
    """The fire brigade's EmergencyLower (tags.yaml: ``emergency: true``) draws on budgets of its
    own: the operator's Lowers have spent the bollard's device budget and her own user budget,
    and it still goes and the simulator lowers and latches; its own budget spent, it is refused too."""
    budgets = {"user_rate": RateLimit(0.01, 3), "device_rate": RateLimit(0.01, 2), "emergency_rate": RateLimit(0.01, 1)}
    async with Field(city, ("mqtt",), **budgets) as f:
        dev = "B-DIJ-002"
        assert f.config.control.commands["access_bollard"]["EmergencyLower"].emergency  # as shipped
        await f.online(dev, point="position")
        assert [(await f.run(dev, "Lower")).status for _ in range(2)] == [GOOD, GOOD]
        r = await f.run(dev, "Lower")
        assert r.status == BAD_TOO_MANY_OPERATIONS and r.message.startswith(f"device {dev} is over its command rate")
        # Both the device's and olga's routine budgets are spent: the emergency goes all the same.
        r = await f.run(dev, "EmergencyLower")
        assert r.status == GOOD, r.message
        assert (f.value(dev, "position"), f.value(dev, "emergency")) == (0.0, 1.0)  # down and latched
        # A loop of emergency commands is bounded by the device's emergency budget...
        r = await f.run(dev, "EmergencyLower")
        assert r.status == BAD_TOO_MANY_OPERATIONS
        assert r.message.startswith(f"device {dev} is over its emergency command rate (0.01/min, burst 1)")
        # ...and the emergency command took nothing from the routine budgets: they stay spent.
        r = await f.run(dev, "Lower")
        assert r.status == BAD_TOO_MANY_OPERATIONS and r.message.startswith("user 'olga' is over the command rate")
        assert [a.result for a in f.audit.records] == ["Good", "Good", "BadTooManyOperations", "Good"] + [
            "BadTooManyOperations"
        ] * 2


async def test_a_junction_changes_plan_through_the_traffic_server_unless_its_conflict_monitor_is_in_fault(city):
    async with Field(city, ("opcua",)) as f:
        await f.online("J-DIJ-001", "J-DIJ-002", point="plan")
        target = 3.0 if f.value("J-DIJ-001", "plan") != 3.0 else 2.0
        r = await f.run("J-DIJ-001", "SetPlan", {"plan": target})
        assert r.status == GOOD, r.message
        assert f.value("J-DIJ-001", "plan") == target
        fault(city.control, "conflict_fault", "J-DIJ-002")
        await until(lambda: f.value("J-DIJ-002", "conflict_fault") == 1.0, what="the conflict is seen")
        before = f.value("J-DIJ-002", "plan")
        r = await f.run("J-DIJ-002", "SetPlan", {"plan": 2})
        assert (r.status, r.interlock) == (BAD_REQUEST_NOT_ALLOWED, "no_conflict")
        assert "reset on site" in r.message
        assert f.value("J-DIJ-002", "plan") == before
        np.testing.assert_equal([a.result for a in f.audit.records], ["Good", "BadRequestNotAllowed"])
