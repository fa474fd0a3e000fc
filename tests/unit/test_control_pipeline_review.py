"""The command pipeline after the review of issue 15 (findings 1-5 and 11): the implicit command
of a Write, the device budget taken only to write, Operate/Cancel rate-limited and checked before
the device's lock and the arguments, a reload under a command, a cancelled request's writes."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from scada.control.model import (
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_SEQUENCE_NUMBER_INVALID,
    BAD_TIMEOUT,
    BAD_TOO_MANY_OPERATIONS,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    SCHEDULER,
    WRITE,
    CommandRequest,
    RateLimit,
)
from scada.tagdb import TagDB
from tests.configs import write_config
from tests.control_defs import control, with_control

from .test_control_pipeline import DEVICES, ENGINEER, OPERATOR, OPERATOR_2, Rig, audit_args


def _role(rig: Rig, type_name: str, command: str, role: str) -> None:
    cmds = rig.config.control.commands[type_name]
    cmds[command] = dataclasses.replace(cmds[command], role=role)


def _critical(rig: Rig) -> None:
    """The junction's SetMode (an argument, mode) select-before-operate, as shipped."""
    cmds = rig.config.control.commands["traffic_junction"]
    cmds["SetMode"] = dataclasses.replace(cmds["SetMode"], critical=True)


async def test_a_write_needs_the_role_of_the_commands_that_write_that_value(tmp_path):
    async with Rig(tmp_path) as rig:
        _role(rig, "lighting_cabinet", "SetDimLevel", "Engineer")
        rig.follow("LC-1", "dim_setpoint", "dim_setpoint")
        r = await rig.run("LC-1", "SetDimLevel", {"level": 40})
        assert r.status == BAD_USER_ACCESS_DENIED
        # mode = 3 (dimmed) only SetDimLevel writes: its role; dim_setpoint is its argument: its role.
        for point, value in (("mode", 3), ("dim_setpoint", 40)):
            r = await rig.run("LC-1", WRITE, {"value": value}, point=point, origin="write")
            assert r.status == BAD_USER_ACCESS_DENIED and "needs Engineer" in r.message, (point, r.message)
        assert rig.drivers["modbus"].writes == []
        # mode = 1 is SetMode's argument too (an Operator's): but SetDimLevel writes only 3.
        rig.follow("LC-1", "mode", "mode")
        r = await rig.run("LC-1", WRITE, {"value": 1}, point="mode", origin="write")
        assert r.status == GOOD, r.message
        r = await rig.run("LC-1", WRITE, {"value": 40}, point="dim_setpoint", origin="write", caller=ENGINEER)
        assert r.status == GOOD, r.message


async def test_a_write_has_only_the_interlocks_of_the_commands_that_write_that_value(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.set("B-1", "vehicle", 1)
        # command = 0 (Lower) and 2 (EmergencyLower) have no interlock; 1 is Raise's, with no_vehicle.
        for value in (0, 2):
            r = await rig.run("B-1", WRITE, {"value": value}, point="command", origin="write")
            assert r.status == GOOD, (value, r.message)
        r = await rig.run("B-1", WRITE, {"value": 1}, point="command", origin="write")
        assert r.status == BAD_INVALID_STATE and r.interlock == "no_vehicle"
        # A value no command writes (3, reset): every writer's interlocks (fail safe).
        r = await rig.run("B-1", WRITE, {"value": 3}, point="command", origin="write")
        assert r.status == BAD_INVALID_STATE and r.interlock == "no_vehicle"


async def test_refused_attempts_do_not_take_the_devices_tokens(tmp_path):
    ctl = control(user_rate=RateLimit(0.001, 100), device_rate=RateLimit(0.001, 2))
    async with Rig(tmp_path, ctl) as rig:
        rig.set("B-1", "vehicle", 1)
        for _ in range(5):
            r = await rig.run("B-1", "Raise")
            assert r.interlock == "no_vehicle"
        rig.follow("B-1", "command", "position", 0.0)
        rig.set("B-1", "position", 2.0)
        assert (await rig.run("B-1", "EmergencyLower", caller=ENGINEER)).status == GOOD
        rig.set("B-1", "position", 2.0)
        assert (await rig.run("B-1", "Lower")).status == GOOD
        rig.set("B-1", "position", 2.0)
        r = await rig.run("B-1", "Lower")
        assert r.status == BAD_TOO_MANY_OPERATIONS and "device B-1" in r.message
        # The Scheduler has its own budget on the device: the operators' writes did not spend it.
        rig.set("B-1", "position", 2.0)
        r = await rig.pipeline.execute(CommandRequest("B-1", "Lower", {}, SCHEDULER, origin="schedule:x"))
        assert r.status == GOOD, r.message


async def test_a_flood_of_refusals_is_bounded_by_the_users_bucket(tmp_path):
    ctl = control(user_rate=RateLimit(0.001, 3))
    async with Rig(tmp_path, ctl) as rig:
        rig.set("B-1", "vehicle", 1)
        got = [(await rig.run("B-1", "Raise")).status for _ in range(4)]
        assert got == [BAD_INVALID_STATE] * 3 + [BAD_TOO_MANY_OPERATIONS]


@pytest.mark.parametrize("phase", ["operate", "cancel"])
async def test_operate_and_cancel_count_against_the_users_bucket(tmp_path, phase):
    ctl = control(user_rate=RateLimit(0.001, 3))
    async with Rig(tmp_path, ctl) as rig:
        _critical(rig)
        got = [
            (await rig.run("J-1", "SetMode", {}, phase=phase, token=f"{i:032x}")).status for i in range(5)
        ]
        assert got == [BAD_SEQUENCE_NUMBER_INVALID] * 3 + [BAD_TOO_MANY_OPERATIONS] * 2


async def test_an_operate_without_a_selection_is_refused_without_waiting_for_the_devices_lock(tmp_path):
    async with Rig(tmp_path) as rig:
        _critical(rig)
        driver = rig.drivers["opcua"]
        driver.release = asyncio.Event()
        rig.follow("J-1", "plan", "plan")
        busy = asyncio.create_task(rig.run("J-1", "SetPlan", {"plan": 2}))
        await driver.started.wait()  # J-1's lock is held by a write on the wire
        r = await rig.run("J-1", "SetMode", {}, phase="operate", token="0" * 32)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "not selected" in r.message
        assert not busy.done()
        driver.release.set()
        assert (await busy).status == GOOD


async def test_an_operate_with_no_valid_selection_says_so_before_the_missing_arguments(tmp_path):
    async with Rig(tmp_path) as rig:
        _critical(rig)
        sel = await rig.run("J-1", "SetMode", {"mode": 1}, phase="select")
        assert sel.status == GOOD, sel.message
        # The front sends Operate(token) alone: args={}.
        r = await rig.run("J-1", "SetMode", {}, caller=OPERATOR_2, phase="operate", token=sel.token)
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID and "another session" in r.message
        r = await rig.run("J-1", "SetMode", {}, phase="operate", token="abc")
        assert r.status == BAD_SEQUENCE_NUMBER_INVALID, r.message
        rig.follow("J-1", "mode", "mode")
        r = await rig.run("J-1", "SetMode", {}, phase="operate", token=sel.token)
        assert r.status == GOOD, r.message


D0 = '  - {name: LC-0, type: lighting_cabinet, commune: Dijon, lat: 47.32, lon: 5.03, endpoint: "127.0.0.1:1501"}\n'


async def test_a_command_whose_write_straddles_a_reload_is_confirmed_on_its_own_tags(tmp_path):
    async with Rig(tmp_path, control(timeout=0.3)) as rig:
        new = with_control(write_config(tmp_path / "new", "devices:\n" + D0 + DEVICES.split("\n", 1)[1]))
        drv = rig.drivers["modbus"]
        drv.release = asyncio.Event()
        task = asyncio.create_task(rig.run("LC-1", "SetDimLevel", {"level": 40}))
        await drv.started.wait()  # the write is on the wire
        tagdb = TagDB(*new.tag_table())
        tagdb.carry_from(rig.tagdb)
        for d in new.devices:
            ids = new.tag_ids(d)
            kinds = tagdb.kind[ids]
            tagdb.update(ids[kinds != 2], np.zeros(int((kinds != 2).sum())))
            tagdb.update(new.diag_ids(d)[:1], np.array([1.0]))
        # LC-0, new and first in the table, holds the old LC-1's ids: it is at 40 %, LC-1 at 0 %.
        tagdb.update(np.array([tagdb.id_of("Dijon/lighting/LC-0/dim_level")]), np.array([40.0]))
        for d in rig.drivers.values():
            d.tagdb = tagdb
        rig.pipeline.reload(new, tagdb, rig.drivers)
        drv.release.set()
        r = await task
        assert r.status == BAD_TIMEOUT and "dim_level reads 0" in r.message, r.message


async def test_a_command_waiting_for_the_lock_across_a_reload_is_refused_precisely(tmp_path):
    async with Rig(tmp_path) as rig:
        drv = rig.drivers["modbus"]
        drv.release = asyncio.Event()
        rig.follow("LC-1", "mode", "mode")
        first = asyncio.create_task(rig.run("LC-1", "SetMode", {"mode": 1}))
        await drv.started.wait()
        second = asyncio.create_task(rig.run("LC-1", "SetMode", {"mode": 2}, caller=OPERATOR_2))
        while not any(True for _ in rig.pipeline._locks["LC-1"]._waiters or ()):
            await asyncio.sleep(0)
        rig.pipeline.reload(dataclasses.replace(rig.config), rig.tagdb, rig.drivers)
        drv.release.set()
        assert (await first).status == GOOD
        r = await second
        assert r.status == BAD_INVALID_STATE and "reloaded" in r.message


async def test_suspended_drivers_refuse_with_no_communication(tmp_path):
    async with Rig(tmp_path) as rig:
        rig.pipeline.suspend_drivers()
        r = await rig.run("LC-1", "SetMode", {"mode": 1})
        assert r.status == BAD_NO_COMMUNICATION and "reload" in r.message
        assert rig.drivers["modbus"].writes == []


async def test_a_cancelled_request_completes_its_writes_and_is_audited(tmp_path):
    async with Rig(tmp_path) as rig:
        drv = rig.drivers["modbus"]
        drv.release = asyncio.Event()
        task = asyncio.create_task(rig.run("LC-1", "SetDimLevel", {"level": 40}))
        await drv.started.wait()  # the first step (mode) is on the wire
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # it waits for its writes
        drv.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [(w.tag, w.value) for w in drv.writes] == [
            ("Dijon/lighting/LC-1/mode", 3.0),
            ("Dijon/lighting/LC-1/dim_setpoint", 40.0),
        ]
        (rec,) = rig.audit.records
        assert rec.result == "BadShutdown" and "writes completed" in audit_args(rec)["message"]
        assert not rig.pipeline._locks["LC-1"].locked()


async def test_a_reload_during_the_read_back_follows_the_points_by_name_in_the_new_table(tmp_path):
    async with Rig(tmp_path, control(timeout=5.0)) as rig:
        new = with_control(write_config(tmp_path / "new", "devices:\n" + D0 + DEVICES.split("\n", 1)[1]))
        task = asyncio.create_task(rig.run("LC-1", "SetDimLevel", {"level": 40}))
        while not rig.pipeline._waiting:  # written, waiting for its read-back
            await asyncio.sleep(0)
        tagdb = TagDB(*new.tag_table())
        tagdb.carry_from(rig.tagdb)
        rig.pipeline.reload(new, tagdb, rig.drivers)
        while not rig.pipeline._waiting and not task.done():  # waiting again, on the new table
            await asyncio.sleep(0)
        assert not task.done(), task.result().message
        # LC-0 holds the old LC-1's ids: its 40 % confirms nothing; LC-1's does.
        tagdb.update(np.array([tagdb.id_of("Dijon/lighting/LC-0/dim_level")]), np.array([40.0]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        tagdb.update(np.array([tagdb.id_of("Dijon/lighting/LC-1/dim_level")]), np.array([40.0]))
        r = await task
        assert r.status == GOOD, r.message
