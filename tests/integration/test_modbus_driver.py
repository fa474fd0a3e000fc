"""The Modbus driver against the lighting simulator on loopback (in one event loop).

Covers what the end-to-end test cannot cheaply: a device that keeps its connection but stops
answering (timeout path), devices that are dead from the start, a point the device refuses,
and that none of them slows the healthy devices down.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from scada.driver_api import CommandRejected, DeviceRejected, DeviceUnreachable, WriteCommand
from drivers.modbus.driver import ModbusDriver
from scada.backoff import Backoff
from scada import status as st
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.models import lighting

from .helpers import DEADLINE, DriverHarness, SilentLink, free_port, free_port_range, load, until, write_inventory

pytestmark = pytest.mark.integration

POLL, TIMEOUT = 0.2, 0.4

BAD_TYPE = """
  misconfigured_cabinet:
    class: lighting
    driver: modbus
    points:
      power:
        table: input
        address: 0
        type: float32
      ghost:
        table: input
        address: 60
      mode_raw:
        table: holding
        address: 0
        writable: true
      reset_confirmed:
        table: coil
        address: 1
        writable: true
"""


def make_config(folder: Path, rows: list[tuple[str, str, int]], demote_for: float = 0.5, unit: int = 1, poll=POLL):
    """rows: (name, type, port). Uses the shipped lighting_cabinet type plus a misconfigured one.

    Devices are demoted for ``demote_for`` after 3 failed polls (shorter than the default so
    that recoveries show within the tests' waits).
    """
    write_inventory(
        folder,
        "devices.csv",
        "name,type,commune,lat,lon,endpoint,unit,poll_interval,timeout,demote_for",
        [f"{n},{t},Dijon,47.3,5.0,127.0.0.1:{p},{unit},{poll},{TIMEOUT},{demote_for}" for n, t, p in rows],
        BAD_TYPE,
    )
    return load(folder)


class Harness(DriverHarness):
    """The Modbus driver over ``config``'s devices, with a short backoff (recoveries within the waits)."""

    def __init__(self, config) -> None:
        super().__init__(config, lambda c, devices, db: ModbusDriver(c, devices, db, Backoff(base=0.1, cap=0.5)))


@pytest.fixture
async def simulator():
    base = free_port_range(4)
    state = lighting.create([47.3] * 4, [5.0] * 4, [30, 31, 32, 33], t=time.time())
    sim = LightingModbusSimulator(state, "127.0.0.1", base, 1)
    await sim.start()
    yield sim
    await sim.stop()


async def test_values_status_and_a_refused_point(simulator, tmp_path):
    base = simulator.base_port
    cfg = make_config(
        tmp_path / "c", [("LC-1", "lighting_cabinet", base), ("MIS-1", "misconfigured_cabinet", base + 1)]
    )
    async with Harness(cfg) as h:
        await until(lambda: h.status("LC-1", "lamp_count") == st.GOOD, DEADLINE, "first poll")
        assert h.value("LC-1", "lamp_count") == 30
        assert h.value("LC-1", "mains_voltage") == pytest.approx(simulator.state.voltage[0], abs=0.2)
        assert h.value("LC-1", "mode") == 0
        # The device refuses register 60 (exception 02): that point is Bad_ConfigurationError,
        # the other points of the same device stay Good.
        await until(lambda: h.status("MIS-1", "ghost") == st.BAD_CONFIGURATION_ERROR, DEADLINE, "refused point")
        assert h.status("MIS-1", "power") == st.GOOD
        assert "exception 2" in h.state("MIS-1").last_error
        # Exceptions 02/03 are configuration mistakes: the block is not asked for again.
        mis = h.state("MIS-1").groups[0]
        assert mis.refused
        asked = len(mis.plan.blocks) - 1  # every block but the refused one
        polls, requests = h.successes("MIS-1"), int(simulator.requests_per_cabinet[1])
        # Enough polls that one more request per poll cannot hide in the partial polls at the ends.
        await until(lambda: h.successes("MIS-1") >= polls + 2 * asked + 2, DEADLINE, "more polls")
        dp = h.successes("MIS-1") - polls
        dreq = int(simulator.requests_per_cabinet[1]) - requests
        # A poll in flight at each end of the window has part of its requests counted
        # (counts, not a pause "until the reads land"): between dp - 1 and dp + 1 polls' worth.
        assert (dp - 1) * asked <= dreq <= (dp + 1) * asked < (dp - 1) * (asked + 1), (dp, dreq, asked)
        assert h.status("MIS-1", "ghost") == st.BAD_CONFIGURATION_ERROR


async def test_write_goes_to_the_device_and_check_refuses_bad_commands(simulator, tmp_path):
    cfg = make_config(tmp_path / "c", [("LC-1", "lighting_cabinet", simulator.base_port)])
    async with Harness(cfg) as h:
        await until(lambda: h.status("LC-1", "mode") == st.GOOD, DEADLINE, "first poll")
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/mode", 3))
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/dim_setpoint", 25))
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/lamp_test", 1))
        assert simulator.state.mode[0] == 3 and simulator.state.dim_setpoint[0] == 25
        assert simulator.state.lamp_test[0]
        await until(lambda: h.value("LC-1", "mode") == 3, DEADLINE, "mode read back")
        for tag, value, reason in [
            ("Dijon/lighting/LC-1/power", 1, "not writable"),
            ("Dijon/lighting/LC-1/dim_setpoint", 150, "outside"),
            ("Dijon/lighting/LC-1/mode", 7, "not one of"),
            ("Dijon/lighting/LC-9/mode", 1, "unknown tag"),
        ]:
            with pytest.raises(CommandRejected, match=reason):
                h.driver.check(WriteCommand(tag, value))
        assert simulator.state.mode[0] == 3  # nothing reached the device
        # reset_trip is declared readback: false (the cabinet reads it back as 0): confirmed by the write alone.
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/reset_trip", 1))


async def test_refused_writes_and_a_write_that_does_not_take(simulator, tmp_path):
    cfg = make_config(tmp_path / "c", [("MIS-1", "misconfigured_cabinet", simulator.base_port)])
    async with Harness(cfg) as h:
        await until(lambda: h.status("MIS-1", "power") == st.GOOD, DEADLINE, "first poll")
        # The cabinet refuses mode 7 (exception 03): a clear error, nothing changed.
        with pytest.raises(DeviceRejected, match="refused the write"):
            await h.driver.write(WriteCommand("Dijon/lighting/MIS-1/mode_raw", 7))
        assert simulator.state.mode[0] == 0
        # The same coil, here with read-back: the device reads back 0, so the write is not confirmed.
        with pytest.raises(DeviceRejected, match="reads back 0"):
            await h.driver.write(WriteCommand("Dijon/lighting/MIS-1/reset_confirmed", 1))
        await h.driver.write(WriteCommand("Dijon/lighting/MIS-1/mode_raw", 2))  # a good one is confirmed
        assert simulator.state.mode[0] == 2


async def test_device_that_stops_answering_goes_bad_within_poll_plus_timeout_and_recovers(simulator, tmp_path):
    link = SilentLink(simulator.base_port)
    await link.start()
    try:
        cfg = make_config(tmp_path / "c", [("LC-1", "lighting_cabinet", link.port)])
        async with Harness(cfg) as h:
            await until(lambda: h.status("LC-1", "power") == st.GOOD, DEADLINE, "first poll")
            last = h.value("LC-1", "lamp_count")
            failures = int(h.driver.diag.failures[h.state("LC-1").k])
            link.silent = True
            await until(lambda: h.status("LC-1", "power") == st.BAD_COMMUNICATION_ERROR, DEADLINE, "silent device")
            # Within one poll plus one timeout: the first timed-out poll turns it Bad, not several.
            # (Counted, not timed: this check runs on the driver's loop before its next poll can end.)
            assert h.driver.diag.failures[h.state("LC-1").k] == failures + 1
            assert (h.tagdb.status[h.ids("LC-1")] == st.BAD_COMMUNICATION_ERROR).all()
            assert h.value("LC-1", "lamp_count") == last  # last value kept
            link.silent = False
            await until(lambda: h.status("LC-1", "power") == st.GOOD, DEADLINE, "recovery")
    finally:
        await link.stop()


async def test_dead_devices_do_not_slow_the_others(simulator, tmp_path):
    base = simulator.base_port
    live = [
        ("LC-1", "lighting_cabinet", base),
        ("LC-2", "lighting_cabinet", base + 1),
        ("LC-3", "lighting_cabinet", base + 2),
    ]
    silent = SilentLink(base + 3)
    await silent.start()
    silent.silent = True
    refused_port = free_port()  # nobody listens there
    try:
        dead = [("DEAD-REFUSED", "lighting_cabinet", refused_port), ("DEAD-SILENT", "lighting_cabinet", silent.port)]
        cfg = make_config(tmp_path / "b", live + dead)
        async with Harness(cfg) as h:
            await until(lambda: all(h.successes(n) > 0 for n, _, _ in live), DEADLINE, "first polls")
            before = {n: h.successes(n) for n, _, _ in live}
            failures = lambda name: int(h.driver.diag.failures[h.state(name).k])  # noqa: E731
            # The window: long enough for the dead devices to fail repeatedly (five timeouts of
            # the silent one, each 0.4 s = two poll cycles of the others).
            took = await until(
                lambda: failures("DEAD-SILENT") >= 5 and failures("DEAD-REFUSED") >= 5, 60, "the dead devices failing"
            )
            polled = {n: h.successes(n) - before[n] for n, _, _ in live}
            # Never answered: Bad_NoCommunication, not a stale "Good".
            assert (h.tagdb.status[h.ids("DEAD-REFUSED")] == st.BAD_NO_COMMUNICATION).all()
            assert (h.tagdb.status[h.ids("DEAD-SILENT")] == st.BAD_NO_COMMUNICATION).all()
            assert np.isnan(h.tagdb.value[h.ids("DEAD-SILENT")]).all()
            assert h.driver.diagnostics()["online"] == 3
        # Held behind the dead devices' timeouts, a live device would poll at most once per
        # timeout (every other cycle); on its own schedule it polls every cycle. Judged against
        # the cycles of the same window (not against a separate run, which a change of load
        # between the two runs would skew), with a generous margin: 40 % of the cycles may be
        # lost to a loaded machine's stalls, fewer than half must not.
        cycles = took / POLL
        for name, n in polled.items():
            assert n >= 0.6 * cycles, (name, n, round(cycles, 1), polled)
    finally:
        await silent.stop()


async def test_cabinet_that_drops_off_the_network_goes_bad_and_recovers(simulator, tmp_path):
    cfg = make_config(
        tmp_path / "c",
        [("LC-1", "lighting_cabinet", simulator.base_port), ("LC-2", "lighting_cabinet", simulator.base_port + 1)],
    )
    async with Harness(cfg) as h:
        await until(
            lambda: h.status("LC-1", "power") == st.GOOD and h.status("LC-2", "power") == st.GOOD, DEADLINE, "up"
        )
        await simulator.set_offline(0, True)
        await until(lambda: h.status("LC-1", "power") == st.BAD_COMMUNICATION_ERROR, DEADLINE, "offline")
        assert h.status("LC-2", "power") == st.GOOD
        await simulator.set_offline(0, False)
        await until(lambda: h.status("LC-1", "power") == st.GOOD, DEADLINE, "back online")


async def test_read_now_reads_the_points_out_of_the_poll_schedule(simulator, tmp_path):
    """A command's read-back: the points asked for are read and stored at once, no poll needed;
    a write stores what it read back. Polled once an hour: no poll runs during the test."""
    cfg = make_config(tmp_path / "c", [("LC-1", "lighting_cabinet", simulator.base_port)], poll=3600)
    async with Harness(cfg) as h:
        assert h.status("LC-1", "dim_level") == st.BAD_NO_COMMUNICATION  # never polled
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/mode", 3))
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/dim_setpoint", 25))
        # The write's own read-back is stored: the written point needs no read of its own.
        assert (h.value("LC-1", "dim_setpoint"), h.status("LC-1", "dim_setpoint")) == (25, st.GOOD)
        assert (h.value("LC-1", "mode"), h.status("LC-1", "mode")) == (3, st.GOOD)
        asked = int(simulator.requests_per_cabinet[0])
        await h.driver.read_now(["Dijon/lighting/LC-1/dim_level", "Dijon/lighting/LC-1/lamps_on"])
        assert (h.value("LC-1", "dim_level"), h.status("LC-1", "dim_level")) == (25, st.GOOD)
        assert (h.value("LC-1", "lamps_on"), h.status("LC-1", "lamps_on")) == (1, st.GOOD)
        assert int(simulator.requests_per_cabinet[0]) - asked == 2  # the input and the discrete block, no more
        assert h.status("LC-1", "power") == st.BAD_NO_COMMUNICATION  # not asked for, not read
        assert h.driver.polls_started == 0 and h.driver.reads_now == 2  # the schedule is left alone
        with pytest.raises(CommandRejected, match="unknown tag"):
            await h.driver.read_now(["Dijon/lighting/LC-9/dim_level"])
        # A write whose caller confirms the effect itself (readback False): the write request only.
        asked = int(simulator.requests_per_cabinet[0])
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/dim_setpoint", 40, readback=False))
        assert int(simulator.requests_per_cabinet[0]) - asked == 1
        assert simulator.state.dim_setpoint[0] == 40
        await h.driver.write(WriteCommand("Dijon/lighting/LC-1/dim_setpoint", 45))
        assert int(simulator.requests_per_cabinet[0]) - asked == 3  # a write and its read-back


async def test_read_now_of_a_silent_device_fails_and_a_demoted_one_is_not_asked(simulator, tmp_path):
    refused_port = free_port()  # nobody listens there
    cfg = make_config(
        tmp_path / "c",
        [("LC-1", "lighting_cabinet", simulator.base_port), ("DEAD-1", "lighting_cabinet", refused_port)],
        demote_for=3600,
    )
    async with Harness(cfg) as h:
        await until(lambda: h.status("LC-1", "dim_level") == st.GOOD, DEADLINE, "first poll")
        simulator.set_silent(0, True)
        try:
            with pytest.raises(DeviceUnreachable, match="no answer"):
                await h.driver.read_now(["Dijon/lighting/LC-1/dim_level"])
        finally:
            simulator.set_silent(0, False)
        await until(lambda: h.state("DEAD-1").demoted_until > time.monotonic(), DEADLINE, "the dead device demoted")
        requests = h.driver.reads_now
        with pytest.raises(DeviceUnreachable, match="off scan"):
            await h.driver.read_now(["Dijon/lighting/DEAD-1/dim_level"])
        assert h.driver.reads_now == requests  # a demoted device is not asked


async def test_a_poll_in_flight_does_not_take_back_what_read_now_stored(simulator, tmp_path):
    cfg = make_config(tmp_path / "c", [("LC-1", "lighting_cabinet", simulator.base_port)], poll=3600)
    async with Harness(cfg) as h:
        ds = h.state("LC-1")
        poll = asyncio.create_task(h.driver.poll(ds))
        while not ds.connection.lock.locked():  # the poll's first request is on the wire
            await asyncio.sleep(0)
        tag = h.tag("LC-1", "dim_level")
        h.driver._store_now(ds, np.array([tag]), np.array([77.0]))  # as read_now stores what it read
        await poll
        h.driver.ingest.flush()
        assert h.value("LC-1", "dim_level") == 77.0  # the poll read before it: dropped, not stored after it
        assert h.driver.polls_superseded == 1
        await h.driver.poll(ds)  # the next poll is stored as usual
        h.driver.ingest.flush()
        assert h.value("LC-1", "dim_level") == simulator.state.dim_level[0] and h.driver.polls_superseded == 1
