"""The command pipeline's logic, step by step, with a fake driver (the integration tests
tests/integration/test_control_pipeline*.py run the real drivers against the simulators).

The fake driver stands for the field: it records the writes and, when told to, makes the
confirmation tags follow (as a poll would), through the tag table's batch API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import numpy as np
import pytest

from scada import status as st
from scada.control.model import (
    BAD_DEVICE_FAILURE,
    BAD_INVALID_ARGUMENT,
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_NODE_ID_UNKNOWN,
    BAD_NOT_WRITABLE,
    BAD_OUT_OF_RANGE,
    BAD_REQUEST_NOT_ALLOWED,
    BAD_SEQUENCE_NUMBER_INVALID,
    BAD_TIMEOUT,
    BAD_TOO_MANY_OPERATIONS,
    BAD_TYPE_MISMATCH,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    SCHEDULER,
    WRITE,
    Caller,
    CommandRequest,
    RateLimit,
)
from scada.control.overrides import NEXT_STEP
from scada.control.pipeline import CommandPipeline
from scada.driver_api import CommandRejected, DeviceRejected, DeviceTimeout, DeviceUnreachable, WriteCommand
from scada.security.audit import MemoryAudit
from scada.tagdb import TagDB
from tests.configs import write_config
from tests.control_defs import control, with_control
from tests.integration.helpers import DEADLINE, until

DEVICES = """devices:
  - {name: LC-1, type: lighting_cabinet, commune: Dijon, lat: 47.32, lon: 5.04, endpoint: "127.0.0.1:1502"}
  - {name: LC-T, type: lighting_cabinet, commune: Talant, lat: 47.33, lon: 5.0, endpoint: "127.0.0.1:1503"}
  - {name: B-1, type: access_bollard, commune: Dijon, lat: 47.32, lon: 5.03, endpoint: "127.0.0.1:1883"}
  - {name: J-1, type: traffic_junction, commune: Dijon, lat: 47.31, lon: 5.05, endpoint: "opc.tcp://127.0.0.1:4841/t/"}
"""

OPERATOR = Caller("olga", ("Operator",), None, session="s1", client="10.0.0.1:5000")
OPERATOR_2 = Caller("oscar", ("Operator",), None, session="s2")
OBSERVER = Caller("otto", ("Observer",), None, session="s3")
ENGINEER = Caller("emma", ("Engineer",), None, session="s4")
DIJON_ONLY = Caller("dora", ("Operator",), ("Dijon",), session="s5")


class FakeDriver:
    """Records writes; ``follow``: the device then reports the written value on ``echo`` points."""

    def __init__(self, name: str, tagdb: TagDB) -> None:
        self.name, self.tagdb = name, tagdb
        self.writes: list[WriteCommand] = []
        self.echo: dict[str, tuple[str, float | None]] = {}  # written tag -> (confirm tag, value or the written one)
        self.error: Exception | None = None
        self.reject: Exception | None = None
        self.started = asyncio.Event()
        self.release: asyncio.Event | None = None  # when set: write waits for it
        self.reads: list[list[str]] = []  # read_now's requests
        self.read_error: Exception | None = None  # read_now raises it
        self.now: dict[str, float] = {}  # what read_now finds on the device (tag -> value); others: nothing stored
        self.stores_readback = False  # write stores the written value itself (a Modbus write's read-back)
        self.stored_seq = 0  # the change batch of read_now's last store

    async def run(self) -> None:  # pragma: no cover - not run here
        await asyncio.Event().wait()

    def check(self, command: WriteCommand) -> None:
        if self.reject is not None:
            raise self.reject

    async def write(self, command: WriteCommand) -> None:
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        self.writes.append(command)
        if self.stores_readback:
            self.tagdb.update(np.array([self.tagdb.id_of(command.tag)]), np.array([command.value]))
        if command.tag in self.echo:
            tag, value = self.echo[command.tag]
            # The device reports later, on its own poll: after the write returned.
            asyncio.get_running_loop().call_soon(
                lambda: self.tagdb.update(
                    np.array([self.tagdb.id_of(tag)]), np.array([command.value if value is None else value])
                )
            )

    async def read_now(self, tags) -> None:
        self.reads.append(list(tags))
        if self.read_error is not None:
            raise self.read_error
        found = [t for t in tags if t in self.now]
        if found:
            self.tagdb.update(np.array([self.tagdb.id_of(t) for t in found]), np.array([self.now[t] for t in found]))
            self.stored_seq = self.tagdb.seq

    def diagnostics(self) -> dict:
        return {}


class Rig:
    def __init__(self, tmp_path, ctl=None) -> None:
        self.config = with_control(write_config(tmp_path / "cfg", DEVICES), ctl)
        self.tagdb = TagDB(*self.config.tag_table())
        self.drivers = {n: FakeDriver(n, self.tagdb) for n in ("modbus", "mqtt", "opcua")}
        self.audit = MemoryAudit()
        self.pipeline = CommandPipeline(self.config, self.tagdb, self.drivers, self.audit)
        # Every device online, every point Good at 0.
        ids = np.concatenate([self.config.tag_ids(d) for d in self.config.devices])
        kinds = self.tagdb.kind[ids]
        self.tagdb.update(ids[kinds != 2], np.zeros(int((kinds != 2).sum())))
        for d in self.config.devices:
            self.tagdb.update(self.config.diag_ids(d)[:1], np.array([1.0]))
        self.task: asyncio.Task | None = None

    def tag(self, device: str, point: str) -> str:
        d = self.config.device(device)
        return f"{d.commune}/{self.config.types[d.type].cls}/{device}/{point}"

    def set(self, device: str, point: str, value: float, status: int = st.GOOD) -> None:
        self.tagdb.update(np.array([self.tagdb.id_of(self.tag(device, point))]), np.array([value]), status)

    def value(self, device: str, point: str) -> float:
        return float(self.tagdb.value[self.tagdb.id_of(self.tag(device, point))])

    def control(self, device: str, point: str):
        i = self.tagdb.id_of(self.tag(device, f"Control/{point}"))
        return self.tagdb.text.get(i) if point != "state" else float(self.tagdb.value[i])

    def follow(self, device: str, written: str, confirm: str, value: float | None = None) -> None:
        d = self.config.device(device)
        self.drivers[self.config.types[d.type].driver].echo[self.tag(device, written)] = (
            self.tag(device, confirm),
            value,
        )

    async def __aenter__(self):
        self.task = asyncio.create_task(self.pipeline.run())
        return self

    async def __aexit__(self, *exc):
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def run(self, device, command, args=None, caller=OPERATOR, **kw):
        return await self.pipeline.execute(CommandRequest(device, command, args or {}, caller, **kw))


def audit_args(rec) -> dict:
    return json.loads(rec.arguments)


async def test_a_dim_command_is_written_confirmed_audited_and_shown(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("LC-1", "dim_setpoint", "dim_level")
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40, "until": 0})
        assert (r.status, r.device) == (GOOD, "LC-1"), r.message
        writes = [(w.tag, w.value) for w in rig.drivers["modbus"].writes]
        assert writes == [("Dijon/lighting/LC-1/mode", 3.0), ("Dijon/lighting/LC-1/dim_setpoint", 40.0)]
        assert rig.value("LC-1", "dim_level") == 40.0
        (rec,) = rig.audit.records
        assert (rec.action, rec.user, rec.roles, rec.session, rec.client_address, rec.target, rec.result) == (
            "command",
            "olga",
            ("Operator",),
            "s1",
            "10.0.0.1:5000",
            "LC-1",
            "Good",
        )
        a = audit_args(rec)
        assert (a["command"], a["args"], a["phase"], a["origin"]) == (
            "SetDimLevel",
            {"level": 40.0, "until": 0.0},
            "execute",
            "hmi",
        )
        assert rig.control("LC-1", "state") == 0.0
        assert rig.control("LC-1", "last_command") == "SetDimLevel(level=40, until=0)"
        assert rig.control("LC-1", "last_user") == "olga"
        assert rig.control("LC-1", "last_result") == "Good"
        # An operator's command with `until` 0: the schedules leave the cabinet alone until their next step.
        assert rig.pipeline.overrides.until("LC-1") == NEXT_STEP


async def test_the_scheduler_sets_no_override_and_an_until_time_is_kept(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("LC-1", "dim_setpoint", "dim_level")
        # A datetime argument not given is 0 (none): a schedule's step gives only the level.
        r = await rig.pipeline.execute(
            CommandRequest("LC-1", "SetDimLevel", {"level": 30}, SCHEDULER, origin="schedule:night")
        )
        assert r.status == GOOD and rig.pipeline.overrides.until("LC-1") is None
        r = await rig.run("LC-1", "SetDimLevel", {"level": 20, "until": 2_000_000_000_000_000_000})
        assert r.status == GOOD and rig.pipeline.overrides.until("LC-1") == 2_000_000_000_000_000_000


async def test_a_read_back_that_never_comes_is_bad_timeout_and_the_tag_stays_as_the_device_says(tmp_path):
    async with Rig(tmp_path, control(timeout=0.3)) as rig:
        rig.follow("LC-1", "dim_setpoint", "dim_level", value=70.0)  # the device applies something else
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40, "until": 0})
        assert r.status == BAD_TIMEOUT
        assert "dim_level reads 70 (Good), expected 40" in r.message, r.message
        assert rig.value("LC-1", "dim_level") == 70.0
        assert rig.control("LC-1", "last_result").startswith("BadTimeout: LC-1 SetDimLevel: not confirmed within 0.3 s")
        assert rig.audit.records[-1].result == "BadTimeout"
        assert rig.pipeline._waiting == {}  # nothing left registered


async def test_the_driver_reads_the_confirm_points_now_and_that_confirms_without_a_poll(tmp_path):
    async with Rig(tmp_path, control(timeout=5.0)) as rig:
        driver = rig.drivers["modbus"]
        driver.now[rig.tag("LC-1", "dim_level")] = 40.0  # no echo: no poll would ever report it
        while rig.pipeline._consumer is None:  # the read-back task has subscribed
            await asyncio.sleep(0)
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40, "until": 0})
        assert r.status == GOOD, r.message
        # The confirm point, and the written points in the same read (the driver did not read
        # each write back: the confirm point says whether the command worked).
        assert driver.reads == [
            ["Dijon/lighting/LC-1/dim_level", "Dijon/lighting/LC-1/mode", "Dijon/lighting/LC-1/dim_setpoint"]
        ]
        assert [(w.tag, w.readback) for w in driver.writes] == [
            ("Dijon/lighting/LC-1/mode", False),
            ("Dijon/lighting/LC-1/dim_setpoint", False),
        ]
        assert rig.pipeline._waiting == {}
        # Stored at once by read_now, yet the result waited for its change batch to be dispatched
        # (the consumers registered before the pipeline's, the front's forwarder, have it too).
        assert rig.pipeline._dispatched >= driver.stored_seq > 0


async def test_a_read_now_that_fails_is_not_the_commands_failure(tmp_path):
    async with Rig(tmp_path, control(timeout=0.3)) as rig:
        driver = rig.drivers["modbus"]
        driver.read_error = DeviceUnreachable("no answer from unit 1 within 1.0 s")
        rig.follow("LC-1", "dim_setpoint", "dim_level")  # the next poll brings it
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40, "until": 0})
        assert r.status == GOOD, r.message
        driver.echo.clear()  # and without a poll: BadTimeout, as before
        asked = len(driver.reads)
        r = await rig.run("LC-1", "SetDimLevel", {"level": 45, "until": 0})
        assert r.status == BAD_TIMEOUT and "dim_level reads 40 (Good), expected 45" in r.message, r.message
        assert len(driver.reads) == asked + 1  # it asked, the read failed, the wait went on
        driver.read_error = RuntimeError("a driver's bug")
        r = await rig.run("LC-1", "SetDimLevel", {"level": 45, "until": 0})
        assert r.status == BAD_TIMEOUT, r.message
        assert len(driver.reads) == asked + 2


async def test_a_write_whose_own_read_back_confirms_asks_for_no_read(tmp_path):
    async with Rig(tmp_path) as rig:
        driver = rig.drivers["modbus"]
        driver.stores_readback = True
        r = await rig.run("LC-1", WRITE, {"value": 55}, point="dim_setpoint", origin="write")
        assert r.status == GOOD, r.message
        assert driver.reads == []
        assert driver.writes[-1].readback  # the written point confirms: the driver reads it back


async def test_a_read_back_that_turns_bad_does_not_confirm(tmp_path):
    async with Rig(tmp_path, control(timeout=0.3)) as rig:
        rig.follow("LC-1", "dim_setpoint", "dim_level")
        rig.set("LC-1", "dim_level", 40.0, st.UNCERTAIN_LAST_USABLE_VALUE)  # equal, but not Good
        rig.drivers["modbus"].echo.clear()
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40, "until": 0})
        assert r.status == BAD_TIMEOUT and "Uncertain_LastUsableValue" in r.message


@pytest.mark.parametrize(
    ("device", "command", "args", "status", "words"),
    [
        ("LC-9", "SetDimLevel", {"level": 1}, BAD_NODE_ID_UNKNOWN, "no device"),
        ("LC-1", "Explode", {}, BAD_NODE_ID_UNKNOWN, "no command 'Explode'"),
        ("LC-1", "SetDimLevel", {"until": 0}, BAD_INVALID_ARGUMENT, "missing level"),
        ("LC-1", "SetDimLevel", {}, BAD_INVALID_ARGUMENT, "missing level (arguments: level (float), until (datetime))"),
        ("LC-1", "SetDimLevel", {"level": 1, "until": 0, "colour": 2}, BAD_INVALID_ARGUMENT, "unknown colour"),
        ("LC-1", "SetDimLevel", {"level": 101, "until": 0}, BAD_OUT_OF_RANGE, "outside [0, 100]"),
        ("LC-1", "SetDimLevel", {"level": float("nan"), "until": 0}, BAD_TYPE_MISMATCH, "finite"),
        ("LC-1", "SetDimLevel", {"level": "50", "until": 0}, BAD_TYPE_MISMATCH, "must be a number"),
        ("LC-1", "SetDimLevel", {"level": 5, "until": 1.5}, BAD_TYPE_MISMATCH, "not a whole number"),
        ("LC-1", "SetMode", {"mode": 3}, BAD_OUT_OF_RANGE, "not one of 0 auto, 1 forced_on, 2 forced_off"),
        ("LC-1", "SetMode", {"mode": 1.5}, BAD_TYPE_MISMATCH, "not a whole number"),
        ("J-1", "SetPlan", {"plan": 7}, BAD_OUT_OF_RANGE, "not one of 1 day"),
    ],
)
async def test_each_bad_request_is_refused_with_its_status_and_nothing_is_written(
    tmp_path, device, command, args, status, words
):
    async with Rig(tmp_path) as rig:
        r = await rig.run(device, command, args)
        assert r.status == status and words in r.message, r
        assert not any(d.writes for d in rig.drivers.values())
        (rec,) = rig.audit.records
        assert rec.result != "Good" and rec.target == device and audit_args(rec)["message"] == r.message


async def test_an_observer_and_a_user_outside_the_commune_are_refused(tmp_path):
    async with Rig(tmp_path) as rig:
        r = await rig.run("LC-1", "SetMode", {"mode": 1}, caller=OBSERVER)
        assert r.status == BAD_USER_ACCESS_DENIED and "otto (Observer)" in r.message
        r = await rig.run("LC-T", "SetMode", {"mode": 1}, caller=DIJON_ONLY)
        assert r.status == BAD_USER_ACCESS_DENIED and "Talant" in r.message
        # ResetTrip needs an Engineer: an Operator is refused, an Engineer goes further.
        r = await rig.run("LC-1", "ResetTrip", {}, phase="select")
        assert r.status == BAD_USER_ACCESS_DENIED and "needs Engineer" in r.message
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        assert r.status == GOOD
        assert [x.result for x in rig.audit.records] == ["BadUserAccessDenied"] * 3 + ["Good"]
        assert rig.control("LC-1", "last_user") == "emma"
        assert not rig.drivers["modbus"].writes


async def test_an_interlock_refuses_by_name_and_a_bad_input_refuses_fail_safe(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("B-1", "command", "position", 2.0)
        rig.set("B-1", "vehicle", 1.0)
        r = await rig.run("B-1", "Raise")
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "no_vehicle")
        assert r.message == "interlock no_vehicle: a vehicle is on the loop"
        assert audit_args(rig.audit.records[-1])["interlock"] == "no_vehicle"
        rig.set("B-1", "vehicle", 0.0, st.BAD_COMMUNICATION_ERROR)
        r = await rig.run("B-1", "Raise")
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "no_vehicle")
        assert "vehicle (Dijon/bollard/B-1/vehicle) is Bad_CommunicationError" in r.message and "fail safe" in r.message
        rig.set("B-1", "vehicle", 0.0)
        rig.set("B-1", "emergency", 1.0)
        r = await rig.run("B-1", "Raise")
        assert r.interlock == "no_emergency"
        assert not rig.drivers["mqtt"].writes
        rig.set("B-1", "emergency", 0.0)
        r = await rig.run("B-1", "Raise")
        assert r.status == GOOD, r.message
        assert [(w.tag, w.value) for w in rig.drivers["mqtt"].writes] == [("Dijon/bollard/B-1/command", 1.0)]


async def test_an_interlock_status_from_the_configuration_and_an_input_of_another_device(tmp_path):
    import dataclasses

    from scada.control.model import InterlockDef

    ctl = control()
    plan_ok = InterlockDef(
        "upstream_normal",
        "up_mode != 1",
        "the upstream junction is flashing",
        inputs={"up_mode": "Dijon/lighting/LC-1/mode"},
    )
    interlocks = {
        **ctl.interlocks,
        "traffic_junction": {**ctl.interlocks["traffic_junction"], "upstream_normal": plan_ok},
    }
    cmds = dict(ctl.commands)
    cmds["traffic_junction"] = {
        **cmds["traffic_junction"],
        "SetPlan": dataclasses.replace(
            cmds["traffic_junction"]["SetPlan"], interlocks=("no_conflict", "upstream_normal")
        ),
    }
    async with Rig(tmp_path, dataclasses.replace(ctl, interlocks=interlocks, commands=cmds)) as rig:
        rig.follow("J-1", "plan", "plan")
        rig.set("J-1", "conflict_fault", 1.0)
        r = await rig.run("J-1", "SetPlan", {"plan": 2})
        assert (r.status, r.interlock) == (BAD_REQUEST_NOT_ALLOWED, "no_conflict")
        assert "reset on site" in r.message
        rig.set("J-1", "conflict_fault", 0.0)
        rig.set("LC-1", "mode", 1.0)
        r = await rig.run("J-1", "SetPlan", {"plan": 2})
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "upstream_normal")
        rig.set("LC-1", "mode", 0.0)
        r = await rig.run("J-1", "SetPlan", {"plan": 2})
        assert r.status == GOOD and rig.value("J-1", "plan") == 2.0


async def test_a_device_not_in_communication_is_refused_before_any_write(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.tagdb.update(rig.config.diag_ids(rig.config.device("LC-1"))[:1], np.array([2.0]))  # offline
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert r.status == BAD_NO_COMMUNICATION and "(offline)" in r.message
        rig.tagdb.update(rig.config.diag_ids(rig.config.device("LC-1"))[:1], np.array([1.0]))
        rig.set("LC-1", "mode", 0.0, st.BAD_COMMUNICATION_ERROR)
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert r.status == BAD_NO_COMMUNICATION and "mode is Bad_CommunicationError" in r.message
        assert not rig.drivers["modbus"].writes


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DeviceUnreachable("LC-1: no answer within 1 s"), BAD_NO_COMMUNICATION),
        (DeviceRejected("LC-1: device refused the write (exception 2)"), BAD_DEVICE_FAILURE),
    ],
)
async def test_the_drivers_errors_become_their_status_with_the_drivers_message(tmp_path, error, status):
    async with Rig(tmp_path) as rig:
        rig.drivers["modbus"].error = error
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert r.status == status and r.message == str(error)
        assert rig.control("LC-1", "last_result") == f"{rig.audit.records[-1].result}: {error}"


async def test_a_write_sent_and_never_answered_is_bad_timeout_its_outcome_unknown(tmp_path):
    """Not BadNoCommunication (nothing sent): the device may have applied it."""
    async with Rig(tmp_path) as rig:
        rig.drivers["modbus"].error = DeviceTimeout("no answer from unit 1 within 1.0 s")
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert r.status == BAD_TIMEOUT, r.message
        assert r.message == "LC-1 SetMode: no answer to the write, whether it was applied is unknown: " + (
            "no answer from unit 1 within 1.0 s"
        )
        assert rig.audit.records[-1].result == "BadTimeout"


async def test_a_write_the_driver_check_refuses_is_out_of_range_and_nothing_goes_out(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.drivers["modbus"].reject = CommandRejected("16 bits hold no 70000")
        r = await rig.run("LC-1", "SetDimLevel", {"level": 50, "until": 0})
        assert r.status == BAD_OUT_OF_RANGE and "70000" in r.message
        assert not rig.drivers["modbus"].writes


async def test_rate_limits_per_user_and_per_device_and_groups_count_once(tmp_path):
    ctl = control(user_rate=RateLimit(0.001, 3), device_rate=RateLimit(0.001, 5))
    async with Rig(tmp_path, ctl) as rig:
        rig.follow("LC-1", "mode", "mode")
        rig.follow("LC-T", "mode", "mode")
        got = [(await rig.run("LC-1", "SetMode", {"mode": 1})).status for _ in range(4)]
        assert got == [GOOD] * 3 + [BAD_TOO_MANY_OPERATIONS]
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert "user 'olga' is over the command rate" in r.message
        # Another user has their own bucket; the device's fifth token goes, then its bucket is empty.
        got = [(await rig.run("LC-1", "SetMode", {"mode": 1}, caller=OPERATOR_2)).status for _ in range(3)]
        assert got == [GOOD, GOOD, BAD_TOO_MANY_OPERATIONS]
        # A group's per-device commands do not count against the user, the device's limit applies.
        r = await rig.run("LC-T", "SetMode", {"mode": 1}, origin="group:Talant")
        assert r.status == GOOD
        assert [x.result for x in rig.audit.records].count("BadTooManyOperations") == 3


async def test_commands_to_one_device_are_serialised_and_shown_running(tmp_path):
    async with Rig(tmp_path) as rig:
        driver = rig.drivers["modbus"]
        rig.follow("LC-1", "mode", "mode")
        driver.release = asyncio.Event()
        first = asyncio.create_task(rig.run("LC-1", "SetMode", {"mode": 1}))
        await driver.started.wait()
        assert rig.control("LC-1", "state") == 2.0  # running
        assert rig.control("LC-1", "last_result") == "in progress"
        second = asyncio.create_task(rig.run("LC-1", "SetMode", {"mode": 2}, caller=OPERATOR_2))
        refused = await rig.run("LC-1", "SetMode", {"mode": 9})  # refused before the lock: still running
        assert refused.status == BAD_OUT_OF_RANGE and rig.control("LC-1", "state") == 2.0
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(driver.writes) == 0  # the second waits for the first
        driver.release.set()
        assert (await first).status == GOOD and (await second).status == GOOD
        assert [w.value for w in driver.writes] == [1.0, 2.0]
        assert rig.control("LC-1", "state") == 0.0


async def test_select_then_operate_from_the_same_session(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("LC-1", "reset_trip", "earth_leakage_trip", 0.0)
        rig.set("LC-1", "earth_leakage_trip", 1.0)
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER)
        assert r.status == BAD_REQUEST_NOT_ALLOWED and "select first" in r.message
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        assert sel.status == GOOD and len(sel.token) == 32 and not rig.drivers["modbus"].writes
        assert rig.control("LC-1", "state") == 1.0  # selected
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == GOOD, r.message
        assert rig.value("LC-1", "earth_leakage_trip") == 0.0
        assert rig.control("LC-1", "state") == 0.0
        # The selection ended with its Operate: the same token again is refused.
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "not selected" in r.message
        assert [audit_args(x)["phase"] for x in rig.audit.records] == ["execute", "select", "operate", "operate"]


async def test_operate_refused_from_another_session_with_a_wrong_token_or_after_cancel(tmp_path):
    other_engineer = Caller("eve", ("Engineer",), None, session="s9")
    async with Rig(tmp_path) as rig:
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        r = await rig.run("LC-1", "ResetTrip", {}, caller=other_engineer, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "another session" in r.message
        # A Select by another session while it is held: refused, the holder keeps it.
        r = await rig.run("LC-1", "ResetTrip", {}, caller=other_engineer, phase="select")
        assert r.status == BAD_INVALID_STATE and "selected by another session (user emma" in r.message
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")  # re-select: a new token
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token="0" * 32)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "token does not match" in r.message
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="cancel", token=sel.token)
        assert r.status == GOOD and rig.control("LC-1", "state") == 0.0
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID
        r = await rig.run("LC-1", "SetMode", {"mode": 1}, phase="select")
        assert r.status == BAD_INVALID_ARGUMENT and "not critical" in r.message
        assert not rig.drivers["modbus"].writes


async def test_operate_after_the_select_timeout_is_refused_and_the_state_returns_to_idle(tmp_path):
    async with Rig(tmp_path, control(select_timeout=0.2)) as rig:
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        assert rig.control("LC-1", "state") == 1.0
        async with asyncio.timeout(60):  # the selection's own timer puts the device back to idle
            while rig.control("LC-1", "state") != 0.0:
                await asyncio.sleep(0.02)
        assert rig.control("LC-1", "state") == 0.0
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "not selected" in r.message
        assert not rig.drivers["modbus"].writes


async def test_operate_rechecks_the_interlocks(tmp_path):
    import dataclasses

    ctl = control()
    cmds = dict(ctl.commands)
    cab = dict(cmds["lighting_cabinet"])
    cab["ResetTrip"] = dataclasses.replace(cab["ResetTrip"], interlocks=("no_trip",))  # contrived, to test the re-check
    cmds["lighting_cabinet"] = cab
    async with Rig(tmp_path, dataclasses.replace(ctl, commands=cmds)) as rig:
        sel = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="select")
        assert sel.status == GOOD
        rig.set("LC-1", "earth_leakage_trip", 1.0)
        r = await rig.run("LC-1", "ResetTrip", {}, caller=ENGINEER, phase="operate", token=sel.token)
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "no_trip")
        assert not rig.drivers["modbus"].writes


async def test_a_write_to_a_tag_is_the_implicit_command_of_its_point(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("LC-1", "dim_setpoint", "dim_setpoint")  # the device reports the point as written
        r = await rig.run("LC-1", WRITE, {"value": 55}, point="dim_setpoint", origin="write")
        assert r.status == GOOD, r.message  # confirmed by the point itself
        assert [(w.tag, w.value) for w in rig.drivers["modbus"].writes] == [("Dijon/lighting/LC-1/dim_setpoint", 55.0)]
        assert rig.control("LC-1", "last_command") == "Write(dim_setpoint=55)"
        r = await rig.run("LC-1", WRITE, {"value": 120}, point="dim_setpoint")
        assert r.status == BAD_OUT_OF_RANGE
        r = await rig.run("LC-1", WRITE, {"value": 9}, point="mode")
        assert r.status == BAD_OUT_OF_RANGE
        r = await rig.run("LC-1", WRITE, {"value": 1}, point="power")
        assert r.status == BAD_NOT_WRITABLE
        r = await rig.run("LC-1", WRITE, {"value": 1}, point="nothing")
        assert r.status == BAD_NODE_ID_UNKNOWN
        # A point a critical command writes: its Select/Operate, not a Write.
        r = await rig.run("LC-1", WRITE, {"value": 1}, point="reset_trip", caller=ENGINEER)
        assert r.status == BAD_REQUEST_NOT_ALLOWED and "ResetTrip" in r.message
        # The interlocks of the commands writing the point apply (SetDimLevel writes dim_setpoint).
        rig.set("LC-1", "earth_leakage_trip", 1.0)
        r = await rig.run("LC-1", WRITE, {"value": 30}, point="dim_setpoint")
        assert (r.status, r.interlock) == (BAD_INVALID_STATE, "no_trip")
        r = await rig.run("LC-1", WRITE, {"value": 1}, point="dim_setpoint", caller=OBSERVER)
        assert r.status == BAD_USER_ACCESS_DENIED
        assert len(rig.drivers["modbus"].writes) == 1


async def test_a_write_to_a_command_point_is_confirmed_by_the_acknowledgement(tmp_path):
    """An MQTT command point is never reported by the device: no read-back, no link check on it."""
    async with Rig(tmp_path) as rig:
        r = await rig.run("B-1", WRITE, {"value": 0}, point="command")
        assert r.status == GOOD and r.message == "written"


async def test_a_reload_keeps_the_control_tags_and_follows_the_new_table(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.follow("LC-1", "mode", "mode")
        assert (await rig.run("LC-1", "SetMode", {"mode": 1})).status == GOOD
        new_db = TagDB(*rig.config.tag_table())
        new_db.carry_from(rig.tagdb)
        rig.pipeline.reload(rig.config, new_db, rig.drivers)
        rig.tagdb = new_db
        for d in rig.drivers.values():
            d.tagdb = new_db
        assert rig.control("LC-1", "last_user") == "olga"
        assert (await rig.run("LC-1", "SetMode", {"mode": 2})).status == GOOD
        assert rig.value("LC-1", "mode") == 2.0


async def test_commands_finishing_together_share_their_control_tags_change_batch(tmp_path):
    # Each Control tag write was a change batch of its own, that every consumer woke up for
    # (4 per command: a city-wide DimAll made 4,400); written per loop turn, devices that
    # finish together share one.
    async with Rig(tmp_path) as rig:
        for device in ("LC-1", "LC-T"):
            rig.follow(device, "dim_setpoint", "dim_level")
        control_ids = np.concatenate([rig.config.control_ids(rig.config.device(d)) for d in ("LC-1", "LC-T")])
        watch = rig.tagdb.subscribe("test-watch", maxsize=1000)
        try:
            results = await asyncio.gather(
                *(rig.run(d, "SetDimLevel", {"level": 30, "until": 0}) for d in ("LC-1", "LC-T"))
            )
            assert [r.status for r in results] == [GOOD, GOOD]
            # Already written when the callers get their results.
            assert [rig.control(d, "last_result") for d in ("LC-1", "LC-T")] == ["Good", "Good"]
            batches = []
            while not watch.queue.empty():
                batch = watch.queue.get_nowait()
                if batch is not None and np.isin(batch.ids, control_ids).any():
                    batches.append(batch)
        finally:
            rig.tagdb.unsubscribe(watch)
        # running (state + 3 texts), then the result (state and last_result change): 2 turns x
        # (numbers, texts), against 8 batches one by one
        assert len(batches) == 4, len(batches)
        assert sum(int(np.isin(b.ids, control_ids).sum()) for b in batches) == 12


async def test_an_emergency_command_does_not_wait_for_a_routine_commands_read_back(tmp_path):
    ctl = control(bollard_timeout=60.0)
    bollard = dict(ctl.commands["access_bollard"])
    bollard["EmergencyLower"] = dataclasses.replace(bollard["EmergencyLower"], emergency=True)
    ctl = dataclasses.replace(ctl, commands={**ctl.commands, "access_bollard": bollard})
    async with Rig(tmp_path, ctl) as rig:
        driver = rig.drivers["mqtt"]
        raising = asyncio.create_task(rig.run("B-1", "Raise"))  # no echo: its read-back waits 60 s
        await until(lambda: rig.pipeline._confirming, DEADLINE, "the Raise waiting for its read-back")
        rig.follow("B-1", "command", "position", 0.0)
        emergency = await asyncio.wait_for(rig.run("B-1", "EmergencyLower"), DEADLINE)
        assert emergency.status == GOOD, emergency.message
        r = await asyncio.wait_for(raising, DEADLINE)
        assert r.status == BAD_INVALID_STATE and "EmergencyLower took the device" in r.message, r.message
        assert [w.value for w in driver.writes] == [1.0, 2.0]  # the Raise was written, then the emergency
        # A routine command still waits for the one before it.
        driver.echo.clear()
        rig.set("B-1", "position", 2.0)  # up: a Lower waits for its read-back
        lowering = asyncio.create_task(rig.run("B-1", "Lower"))
        await until(lambda: rig.pipeline._confirming, DEADLINE, "the Lower waiting for its read-back")
        second = asyncio.create_task(rig.run("B-1", "Lower"))
        for _ in range(50):  # loop turns, not time: the second has every chance to run
            await asyncio.sleep(0)
        assert not second.done()  # serialised behind the first (its lock)
        lowering.cancel()
        second.cancel()
        await asyncio.gather(lowering, second, return_exceptions=True)


def test_every_driver_says_whether_a_written_point_reports_back() -> None:
    """reports_back is part of the driver interface (PointIO): the pipeline reads it, not a
    driver's own option by name."""
    from drivers.modbus.config import ModbusPoint
    from drivers.mqtt.config import MqttPoint
    from drivers.opcua.config import OpcUaPoint
    from scada.config import PointDef
    from scada.control.pipeline import reports_itself

    modbus = ModbusPoint(table="coil", address=0, type="bool")
    assert modbus.reports_back and not dataclasses.replace(modbus, readback=False).reports_back
    mqtt_cmd = MqttPoint(topic=None, json=None, type="command")
    assert not mqtt_cmd.reports_back and MqttPoint(topic="t", json=None, type="number").reports_back
    assert OpcUaPoint.reports_back
    point = PointDef(name="p", kind=0, io=dataclasses.replace(modbus, readback=False))
    assert not reports_itself(point) and reports_itself(dataclasses.replace(point, io=modbus))
