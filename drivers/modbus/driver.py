"""Modbus TCP driver: one poll loop per device, one connection per endpoint, batches into TagDB.

Devices behind one host:port (a gateway) share a connection and take turns on it; every
other device has its own, so a dead device only ever costs its own poll loop its timeout.
Connections are re-opened by this driver with capped, jittered exponential backoff
(pymodbus's own reconnect is disabled: ``reconnect_delay=0`` means "off" in pymodbus 3.16,
and our backoff is jittered so that a city of cabinets does not reconnect in lock-step).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.base import CommandRejected, DeviceRejected, DeviceUnreachable, WriteCommand, check_point, lookup
from drivers.modbus.codec import Block, ReadPlan, encode
from drivers.modbus.config import ModbusEndpoint
from scada import status as st
from scada.config import Config, Device
from scada.tagdb import TagDB

log = structlog.get_logger("drivers.modbus")

# Modbus exception codes -> what they mean for the points of the refused block.
EXC_ILLEGAL_FUNCTION, EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, EXC_DEVICE_FAILURE, EXC_BUSY = 1, 2, 3, 4, 6
EXCEPTION_STATUS = {
    EXC_ILLEGAL_FUNCTION: st.BAD_CONFIGURATION_ERROR,
    EXC_ILLEGAL_ADDRESS: st.BAD_CONFIGURATION_ERROR,
    EXC_ILLEGAL_VALUE: st.BAD_CONFIGURATION_ERROR,
    EXC_DEVICE_FAILURE: st.BAD_DEVICE_FAILURE,
}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: delay(n) in [d/2, d], d = min(cap, base * 2**(n-1))."""

    base: float = 0.25
    cap: float = 10.0

    def delay(self, failures: int) -> float:
        d = min(self.cap, self.base * 2 ** max(0, failures - 1))
        return d * random.uniform(0.5, 1.0)


class Connection:
    """One TCP connection to a host:port, shared by the units behind it, one request at a time."""

    def __init__(self, host: str, port: int, timeout: float, backoff: Backoff) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.backoff = backoff
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
        self.lock = asyncio.Lock()
        self.failures = 0
        self.next_attempt = 0.0

    async def _ensure_connected(self) -> None:
        if self.client.connected:
            return
        now = time.monotonic()
        if now < self.next_attempt:
            raise DeviceUnreachable(f"{self.host}:{self.port} unreachable; retry in {self.next_attempt - now:.1f} s")
        try:
            async with asyncio.timeout(self.timeout + 1.0):
                ok = await self.client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            self._failed()
            raise DeviceUnreachable(f"cannot connect to {self.host}:{self.port}")
        self.failures = 0

    def _failed(self) -> None:
        self.failures += 1
        self.next_attempt = time.monotonic() + self.backoff.delay(self.failures)

    async def request(self, call: str, unit: int, *args: Any, **kwargs: Any) -> Any:
        """Run one pymodbus client call; only this project's errors come out."""
        async with self.lock:
            await self._ensure_connected()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that races with the answer, and the server would not stop.
                async with asyncio.timeout(self.timeout + 1.0):
                    response = await getattr(self.client, call)(*args, device_id=unit, **kwargs)
            except (ModbusException, TimeoutError, OSError) as exc:
                # Close so that a late answer can never be taken for the next request's.
                self.client.close()
                self._failed()
                raise DeviceUnreachable(f"{type(exc).__name__}: {exc}") from None
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise DeviceRejected(code)
        return response

    def close(self) -> None:
        self.client.close()


@dataclass(eq=False)
class DeviceState:
    """A device's poll loop state and diagnostics."""

    device: Device
    plan: ReadPlan
    connection: Connection
    ids: np.ndarray
    points: tuple
    ok: bool = False
    ever_ok: bool = False
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    last_rtt: float = 0.0
    refused: set[int] = field(default_factory=set)  # blocks answered with exception 02/03: not read again
    status: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.status = np.zeros(len(self.ids), np.uint32)


class ModbusDriver:
    """Polls every configured Modbus device; see the module docstring."""

    name = "modbus"

    def __init__(self, config: Config, devices: list[Device], tagdb: TagDB, backoff: Backoff = Backoff()) -> None:
        self.config = config
        self.tagdb = tagdb
        self.backoff = backoff
        plans: dict[str, ReadPlan] = {}
        connections: dict[tuple[str, int], Connection] = {}
        self.devices: list[DeviceState] = []
        self._by_tag: dict[str, tuple[DeviceState, int]] = {}
        for d in devices:
            t = config.types[d.type]
            if d.type not in plans:
                plans[d.type] = ReadPlan([p.io for p in t.points])
            ep: ModbusEndpoint = d.io
            conn = connections.get(ep.connection)
            if conn is None:
                conn = connections[ep.connection] = Connection(ep.host, ep.port, d.timeout, backoff)
            ds = DeviceState(d, plans[d.type], conn, config.tag_ids(d), t.points)
            self.devices.append(ds)
            for k, p in enumerate(t.points):
                self._by_tag[config.tag_name(d, p)] = (ds, k)
        self.connections = list(connections.values())
        self.polls_started = 0
        self.late_polls = 0  # started more than 10 % of the poll interval after their tick
        self.missed_cycles = 0  # cycles skipped because a poll overran its interval
        self.max_lateness = 0.0

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for ds in self.devices:
                    tg.create_task(self._poll_loop(ds), name=f"modbus:{ds.device.name}")
        finally:
            for conn in self.connections:
                conn.close()

    async def _poll_loop(self, ds: DeviceState) -> None:
        interval = ds.device.poll_interval
        # Spread devices over the interval so that a city does not poll in one burst.
        phase = (zlib.crc32(ds.device.name.encode()) % 1000) / 1000.0 * interval
        await asyncio.sleep(phase)
        next_tick = time.monotonic()
        me = asyncio.current_task()
        while True:
            # How late this poll starts against its schedule: "every cycle on time" is measured here.
            late = time.monotonic() - next_tick
            self.polls_started += 1
            if late > 0.1 * interval:
                self.late_polls += 1
            self.max_lateness = max(self.max_lateness, late)
            try:
                await self.poll(ds)
            except Exception as exc:  # a bug in one device's poll must not stop every other device
                log.exception("poll_failed", device=ds.device.name)
                self._link_down(ds, f"internal error: {exc!r}")
            if me is not None and me.cancelling():
                # A library swallowed our cancellation (pymodbus uses wait_for internally): honour it.
                raise asyncio.CancelledError
            next_tick += interval
            now = time.monotonic()
            if next_tick < now:  # overran: skip the missed cycles rather than burst
                self.missed_cycles += int((now - next_tick) // interval) + 1
                next_tick = now + interval - (now - next_tick) % interval
            await asyncio.sleep(next_tick - now)

    async def poll(self, ds: DeviceState) -> None:
        """Read every block of one device once and report the result to the tag database."""
        unit = ds.device.io.unit
        t0 = time.monotonic()
        responses: list[Any] = []
        ds.status[:] = st.GOOD
        try:
            for k, block in enumerate(ds.plan.blocks):
                if k in ds.refused:  # the device said this block does not exist: not asked again
                    self._mark_block(ds, block, st.BAD_CONFIGURATION_ERROR)
                    responses.append([0] * block.count)
                    continue
                try:
                    responses.append(await self._read_block(ds.connection, unit, block))
                except DeviceRejected as exc:
                    code = exc.args[0]
                    if code == EXC_BUSY:
                        raise
                    self._mark_block(ds, block, EXCEPTION_STATUS.get(code, st.BAD_DEVICE_FAILURE))
                    responses.append([0] * block.count)
                    ds.last_error = f"exception {code} on {block.table} {block.start}+{block.count}"
                    if code in (EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE):
                        # A configuration mistake, not a transient fault: retrying every poll would
                        # only cost the device a request per cycle. It stays Bad_ConfigurationError.
                        ds.refused.add(k)
                        log.warning("modbus_block_refused", device=ds.device.name, table=block.table,
                                    address=block.start, count=block.count, modbus_exception=code)
        except DeviceUnreachable as exc:
            self._link_down(ds, str(exc))
            return
        except DeviceRejected:  # busy: try again next cycle, keep what we have
            ds.last_error = "device busy (exception 06)"
            return
        ds.last_rtt = time.monotonic() - t0
        try:
            values = ds.plan.decode(responses)
        except ValueError as exc:  # a malformed answer never lands on the wrong tags
            self._link_down(ds, f"malformed response: {exc}")
            return
        self.tagdb.update(ds.ids, values, ds.status, time.time_ns())
        if not ds.ok and ds.failures:  # a recovery; first contacts are counted in the status line
            log.info("device_online", device=ds.device.name, rtt_ms=round(ds.last_rtt * 1000, 1))
        ds.ok = ds.ever_ok = True
        ds.successes += 1

    async def _read_block(self, conn: Connection, unit: int, block: Block) -> list:
        call = {"holding": "read_holding_registers", "input": "read_input_registers",
                "coil": "read_coils", "discrete": "read_discrete_inputs"}[block.table]
        response = await conn.request(call, unit, block.start, count=block.count)
        return response.bits if block.is_bits else response.registers

    def _mark_block(self, ds: DeviceState, block: Block, code: int) -> None:
        for k, p in enumerate(ds.points):
            io = p.io
            if io.table == block.table and block.start <= io.address < block.start + block.count:
                ds.status[k] = code

    def _link_down(self, ds: DeviceState, error: str) -> None:
        ds.failures += 1
        if ds.ok or not ds.last_error:
            log.warning("device_offline", device=ds.device.name, error=error)
        ds.ok = False
        ds.last_error = error
        code = st.BAD_COMMUNICATION_ERROR if ds.ever_ok else st.BAD_NO_COMMUNICATION
        self.tagdb.set_status(ds.ids, code)

    # Commands

    def _resolve(self, command: WriteCommand) -> tuple[DeviceState, Any]:
        ds, k = lookup(self._by_tag, command)
        return ds, ds.points[k]

    def check(self, command: WriteCommand) -> None:
        """Validate a write without touching the device."""
        _, point = self._resolve(command)
        check_point(point, command)
        try:
            encode(point.io, command.value)
        except ValueError as exc:
            raise CommandRejected(str(exc)) from None

    async def write(self, command: WriteCommand) -> None:
        """Send a checked write, then confirm it by reading the point back from the device.

        The read-back must show the commanded value (within half a scaling step) before
        ``3 x timeout``; otherwise DeviceRejected. Points whose device resets them by design
        (a "write 1 to reset" coil) are declared ``readback: false`` in tags.yaml.
        """
        self.check(command)
        ds, point = self._resolve(command)
        io = point.io
        data = encode(io, command.value)
        unit, address = ds.device.io.unit, io.address
        try:
            if io.table == "coil":
                await ds.connection.request("write_coil", unit, address, data)
            else:
                await ds.connection.request("write_registers", unit, address, data)
        except DeviceRejected as exc:
            raise DeviceRejected(f"{command.tag}: device refused the write (exception {exc.args[0]})") from None
        if not io.readback:
            return
        plan = ReadPlan([io])
        tolerance = abs(io.scale) / 2 if io.type != "float32" else abs(command.value) * 1e-6 + 1e-9
        deadline = time.monotonic() + 3 * ds.device.timeout
        got = None
        while True:
            try:
                got = plan.decode([await self._read_block(ds.connection, unit, plan.blocks[0])])[0]
            except DeviceRejected as exc:
                raise DeviceRejected(f"{command.tag}: device refused the read-back (exception {exc.args[0]})") from None
            if abs(got - command.value) <= tolerance:
                return
            if time.monotonic() > deadline:
                raise DeviceRejected(f"{command.tag}: wrote {command.value}, the device reads back {got}")
            await asyncio.sleep(0.1)

    def diagnostics(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "online": sum(ds.ok for ds in self.devices),
            "polls": sum(ds.successes for ds in self.devices),
            "failures": sum(ds.failures for ds in self.devices),
            "late_polls": self.late_polls,
            "missed_cycles": self.missed_cycles,
        }


def create(config: Config, devices: list[Device], tagdb: TagDB) -> ModbusDriver:
    return ModbusDriver(config, devices, tagdb)
