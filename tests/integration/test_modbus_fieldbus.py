"""The Modbus driver on a shared gateway, on a serial line (RTU over a socat pty pair), with
poll groups, against answers that do not fit, and its diagnostic tags.

The peers are pymodbus's servers (the lighting simulator) and, for RTU, mbpoll as well: our
client and framing are checked against independent implementations of the protocol.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scada.driver_api import WriteCommand
from scada import status as st
from scada.config import DIAG_POINTS
from scada.diagnostics import DEMOTED, ONLINE
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.models import lighting

from .helpers import DEADLINE, free_port, free_port_range, load, until, write_tags
from .test_modbus_driver import Harness

pytestmark = pytest.mark.integration

POLL, TIMEOUT = 0.2, 0.3
DIAG = [p.name for p in DIAG_POINTS]


def write_config(folder: Path, endpoints: list[tuple[str, str, int]], type_name: str = "lighting_cabinet",
                 extra_types: str = "", device_keys: str = "", timeout: float = TIMEOUT) -> object:
    """One device per (name, endpoint, unit), listed in YAML under the shipped types."""
    devices = "".join(
        f"  - {{name: {n}, type: {type_name}, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: '{ep}', unit: {u}, "
        f"poll_interval: {POLL}, timeout: {timeout}{device_keys}}}\n"
        for n, ep, u in endpoints)
    write_tags(folder, extra_types=extra_types, devices="\ndevices:\n" + devices)
    return load(folder)


@pytest.fixture
async def gateway():
    """Three cabinets behind one gateway port: units 1, 2 and 3."""
    port = free_port_range(1)
    state = lighting.create([47.3] * 3, [5.0] * 3, [30, 31, 32], t=time.time())
    sim = LightingModbusSimulator(state, "127.0.0.1", port, units_per_port=3)
    await sim.start()
    yield sim
    await sim.stop()


def neighbour_polls(h: Harness) -> int:
    return h.successes("LC-1") + h.successes("LC-3")


async def test_a_silent_unit_behind_a_gateway_is_demoted_so_its_neighbours_keep_their_cycle(gateway, tmp_path):
    ep = f"127.0.0.1:{gateway.base_port}"
    units = [("LC-1", ep, 1), ("LC-2", ep, 2), ("LC-3", ep, 3)]
    # Unit 2 stops answering. Without demotion every one of its polls holds the shared link
    # for a whole timeout (1 s, five of its neighbours' 0.2 s cycles): they poll only in the
    # gaps between its timeouts. Counted per timeout, not per second, so that a slow machine
    # (which only polls less) cannot make the test fail.
    never = write_config(tmp_path / "never", units, device_keys=", demote_after: 0", timeout=1.0)
    gateway.set_silent(1, True)
    async with Harness(never) as h:
        await until(lambda: h.successes("LC-1") > 0 and h.successes("LC-3") > 0, DEADLINE, "first polls")
        failures = lambda: int(h.driver.diag.failures[h.state("LC-2").k])  # noqa: E731
        f0, n0 = failures(), neighbour_polls(h)
        await until(lambda: failures() >= f0 + 4, DEADLINE, "four timeouts of LC-2")
        timeouts, starved = failures() - f0, neighbour_polls(h) - n0
    # At full rate the two neighbours would poll 2 x 5 times per timeout; in the gaps, at most
    # twice each (once per cycle of the <= 0.2 s gap, plus the poll that was waiting).
    assert starved <= 4 * (timeouts + 1), (starved, timeouts)
    gateway.set_silent(1, False)

    demote_for = 6.0
    cfg = write_config(tmp_path / "demote", units, device_keys=f", demote_after: 2, demote_for: {demote_for}",
                       timeout=1.0)
    async with Harness(cfg) as h:
        lc2 = h.state("LC-2")
        await until(lambda: h.diag("LC-2", "state") == ONLINE, DEADLINE, "LC-2 online")
        gateway.set_silent(1, True)
        await until(lambda: h.diag("LC-2", "state") == DEMOTED, DEADLINE, "LC-2 demoted")
        off_scan_until = lc2.demoted_until
        assert h.diag("LC-2", "demoted") == 1
        assert "no answer from unit 2" in h.diag("LC-2", "last_error")
        await until(lambda: h.status("LC-2", "power") == st.BAD_COMMUNICATION_ERROR, DEADLINE, "LC-2's tags Bad")
        assert h.driver.diagnostics()["demoted"] == 1
        # Off scan: no request is sent to it while its neighbours make ten polls (about one
        # second; the demotion lasts six), so nothing holds the link they share.
        failures = int(h.driver.diag.failures[lc2.k])
        n0 = neighbour_polls(h)
        await until(lambda: neighbour_polls(h) >= n0 + 10, DEADLINE, "ten polls of the neighbours")
        assert h.driver.diag.failures[lc2.k] == failures, "a request was sent to the demoted unit"
        assert h.status("LC-1", "power") == h.status("LC-3", "power") == st.GOOD
        # It answers again: tried after demote_for (not before), back on scan.
        gateway.set_silent(1, False)
        await until(lambda: h.diag("LC-2", "state") == ONLINE, DEADLINE, "LC-2 back on scan")
        assert time.monotonic() >= off_scan_until
        assert h.diag("LC-2", "demoted") == 0
        await until(lambda: h.status("LC-2", "power") == st.GOOD, DEADLINE, "LC-2's tags Good")


async def test_diagnostic_tags_of_a_healthy_and_a_dead_device(gateway, tmp_path):
    dead_port = free_port()
    cfg = write_config(tmp_path / "c", [("LC-1", f"127.0.0.1:{gateway.base_port}", 1),
                                        ("LC-DEAD", f"127.0.0.1:{dead_port}", 1)])
    async with Harness(cfg) as h:
        await until(lambda: h.diag("LC-1", "successes") >= 3, DEADLINE, "diagnostics published")
        assert h.diag("LC-1", "state") == ONLINE
        assert 0 < h.diag("LC-1", "rtt") < TIMEOUT * 1000
        assert h.diag("LC-1", "failures") == 0 and h.diag("LC-1", "demoted") == 0
        await until(lambda: h.diag("LC-DEAD", "demoted") == 1, DEADLINE, "dead device demoted")
        assert h.diag("LC-DEAD", "successes") == 0 and h.diag("LC-DEAD", "failures") >= 3
        assert f"127.0.0.1:{dead_port}" in h.diag("LC-DEAD", "last_error")
        for name in DIAG:  # diagnostics are the server's own knowledge: always Good
            assert h.status("LC-DEAD", f"Diagnostics/{name}") == st.GOOD


SLOW_TYPE = """
  metered_cabinet:
    class: lighting
    driver: modbus
    read_gap: 0
    poll_groups: {slow: 1.0}
    points:
      mode:
        table: holding
        address: 0
      lamp_count:
        table: input
        address: 6
      energy:
        table: input
        address: 2
        type: uint32
        word_order: little
        scale: 0.1
        poll_group: slow
"""


async def test_poll_groups_poll_slow_points_at_their_own_interval(gateway, tmp_path):
    cfg = write_config(tmp_path / "c", [("MC-1", f"127.0.0.1:{gateway.base_port}", 1)],
                       type_name="metered_cabinet", extra_types=SLOW_TYPE)
    async with Harness(cfg) as h:
        ds = h.state("MC-1")
        fast, slow = ds.groups
        assert (fast.name, slow.name) == ("", "slow")
        # read_gap 0: holding 0 and input 6 are two requests; energy alone in the slow group.
        assert [(b.table, b.start, b.count) for b in fast.plan.blocks] == [("holding", 0, 1), ("input", 6, 1)]
        assert [(b.table, b.start, b.count) for b in slow.plan.blocks] == [("input", 2, 2)]
        await until(lambda: h.status("MC-1", "energy") == st.GOOD, DEADLINE, "slow group polled")
        # Counted over four polls of the slow group, not over a fixed time: a loaded machine
        # only makes the window longer.
        f0, s0 = fast.polls, slow.polls
        took = await until(lambda: slow.polls >= s0 + 4, DEADLINE, "four polls of the slow group")
        df, dslow = fast.polls - f0, slow.polls - s0
        # The slow group waits its own 1 s between polls: four take at least 2 s (3 s of ticks
        # less one late start), where at the fast 0.2 s they would take 0.6 s; and the fast
        # group polls more often.
        assert took >= 1.0, took
        assert df > dslow, (df, dslow)
        assert h.value("MC-1", "lamp_count") == 30
        assert h.value("MC-1", "energy") == pytest.approx(gateway.state.energy_kwh[0], abs=0.2)


class GarblingDevice:
    """A Modbus TCP "device" that answers every request with a frame that does not fit it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        function, _, count = struct.unpack(">BHH", pdu[:5])
        data = b"\x00\x07" * count
        good = bytes([function, len(data)]) + data
        body = {
            "wrong_transaction": (tid ^ 0x5555, unit, good),
            "wrong_unit": (tid, unit + 1, good),
            "wrong_function": (tid, unit, bytes([function ^ 7]) + good[1:]),
            "short": (tid, unit, good[:-2]),
            "byte_count": (tid, unit, bytes([function, len(data) + 2]) + data + b"\x00\x00"),
        }
        if self.mode == "not_modbus":
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        t, u, p = body[self.mode]
        return struct.pack(">HHHB", t, 0, len(p) + 1, u) + p

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                writer.write(self.answer(tid, unit, pdu))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize("mode", ["wrong_transaction", "wrong_unit", "wrong_function", "short", "byte_count",
                                  "not_modbus"])
async def test_an_answer_that_does_not_fit_never_lands_on_a_tag(mode, tmp_path):
    device = GarblingDevice(mode)
    await device.start()
    try:
        cfg = write_config(tmp_path / "c", [("LC-X", f"127.0.0.1:{device.port}", 1)],
                           device_keys=", demote_after: 0")
        async with Harness(cfg) as h:
            # Both awaited: a poll may also fail without reaching the device (its connection
            # being opened again after a garbled answer), so the counts need not move together.
            await until(
                lambda: h.driver.diag.failures[0] >= 3 and device.requests >= 3, DEADLINE, "failed polls, answered"
            )
            ids = h.config.tag_ids(h.config.device("LC-X"))
            assert np.isnan(h.tagdb.value[ids]).all()  # 7s everywhere would have been "values"
            assert (h.tagdb.status[ids] == st.BAD_NO_COMMUNICATION).all()
            assert h.driver.diag.successes[0] == 0
            assert h.driver.diag.errors[0]
    finally:
        await device.stop()


@pytest.fixture
async def serial_line(tmp_path):
    """A pseudo-terminal pair standing for an RS-485 line: the driver on one end, the simulator on the other."""
    socat = shutil.which("socat")
    assert socat, "socat is needed (scripts/install-system-deps.sh installs it)"
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen([socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
    try:
        await until(lambda: a.exists() and b.exists(), DEADLINE, "socat pty pair")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


async def test_rtu_over_a_serial_line(serial_line, tmp_path):
    master, slave = serial_line
    state = lighting.create([47.3] * 3, [5.0] * 3, [30, 31, 32], t=time.time())
    # Parity none: a pty carries bytes, not characters, and Linux refuses parity on some ptys.
    sim = LightingModbusSimulator(state, serial_port=slave, baudrate=38400, parity="N")
    await sim.start()
    try:
        ep = f"rtu://{master}"
        cfg = write_config(tmp_path / "c", [(f"LC-{u}", ep, u) for u in (1, 2, 3)],
                           device_keys=", baudrate: 38400, parity: none, demote_after: 2, demote_for: 1")
        async with Harness(cfg) as h:
            await until(lambda: all(h.status(f"LC-{u}", "lamp_count") == st.GOOD for u in (1, 2, 3)), DEADLINE, "RTU polls")
            assert [h.value(f"LC-{u}", "lamp_count") for u in (1, 2, 3)] == [30, 31, 32]
            assert h.value("LC-2", "mains_voltage") == pytest.approx(sim.state.voltage[1], abs=0.2)
            await h.driver.write(WriteCommand("Dijon/lighting/LC-3/dim_setpoint", 40))
            assert sim.state.dim_setpoint[2] == 40
            # A silent unit on the bus is demoted; the others keep answering on the same line.
            sim.set_silent(0, True)
            await until(lambda: h.diag("LC-1", "state") == DEMOTED, DEADLINE, "silent unit demoted")
            assert h.status("LC-2", "lamp_count") == h.status("LC-3", "lamp_count") == st.GOOD
            n = h.successes("LC-2")
            await until(lambda: h.successes("LC-2") >= n + 3, DEADLINE, "neighbours still polled")
            sim.set_silent(0, False)
            await until(lambda: h.diag("LC-1", "state") == ONLINE, DEADLINE, "back on scan")
    finally:
        await sim.stop()


async def test_mbpoll_reads_the_rtu_simulator(serial_line):
    """An independent master (mbpoll) reads the simulator's RTU line: the simulator speaks real RTU."""
    master, slave = serial_line
    state = lighting.create([47.3] * 2, [5.0] * 2, [30, 31], t=time.time())
    sim = LightingModbusSimulator(state, serial_port=slave, baudrate=19200, parity="N")
    await sim.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            "mbpoll", "-m", "rtu", "-b", "19200", "-P", "none", "-a", "2", "-t", "3", "-r", "7", "-c", "1",
            "-1", "-o", "2", master, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        text = out.decode()
        assert proc.returncode == 0, text
        assert re.search(r"\[7\]:\s+31\b", text), text  # lamp_count of unit 2 (input register 6, 1-based 7)
    finally:
        await sim.stop()
