"""Modbus driver (TCP and RTU): one poll loop per device and poll group, batches into TagDB.

Devices behind one host:port (a gateway) or on one serial line share a connection and take
turns on it; every other device has its own, so a dead device only ever costs its own poll
loop its timeout. A device that fails ``demote_after`` polls in a row is taken off scan for
``demote_for`` seconds: a silent unit behind a gateway would otherwise cost its neighbours
a timeout every cycle. Each device's diagnostics (state, successes, failures, round-trip
time, demoted, last error) are published as tags by ``scada.diagnostics``.

Values of many devices' polls are coalesced into one ``TagDB.update`` every
``FLUSH_PERIOD``: one call per device poll costs 24 µs of fixed overhead, a tenth of the
server's budget per poll at city scale.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from drivers.modbus import frames
from drivers.modbus.codec import Block, ReadPlan, encode, non_finite_status
from drivers.modbus.config import DEFAULT_GROUP, ModbusEndpoint, ModbusType
from drivers.modbus.frames import FrameError
from drivers.modbus.transport import Connection, RtuLink, SerialSettings, TcpLink
from scada import status as st
from scada.backoff import Backoff
from scada.config import Config, Device
from scada.diagnostics import DeviceDiagnostics
from scada.driver_api import CommandRejected, DeviceRejected, DeviceUnreachable, WriteCommand, check_point, lookup
from scada.ingest import Ingest
from scada.tagdb import TagDB

log = structlog.get_logger("drivers.modbus")

FLUSH_PERIOD = 0.02  # s: how long a poll's values may wait to share a TagDB batch with others'

# Modbus exception codes -> what they mean for the points of the refused block.
EXC_ILLEGAL_FUNCTION, EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, EXC_DEVICE_FAILURE, EXC_BUSY = 1, 2, 3, 4, 6
# A gateway's "no path to the unit" / "the unit did not answer": the device is unreachable.
EXC_GATEWAY_PATH, EXC_GATEWAY_TARGET = 10, 11
EXCEPTION_STATUS = {
    EXC_ILLEGAL_FUNCTION: st.BAD_CONFIGURATION_ERROR,
    EXC_ILLEGAL_ADDRESS: st.BAD_CONFIGURATION_ERROR,
    EXC_ILLEGAL_VALUE: st.BAD_CONFIGURATION_ERROR,
    EXC_DEVICE_FAILURE: st.BAD_DEVICE_FAILURE,
}

__all__ = ["Backoff", "ModbusDriver", "create"]


def _zero_data(block: Block) -> bytes:
    """Stand-in data bytes for a block without values (refused): its points carry a Bad status."""
    return bytes((block.count + 7) // 8 if block.is_bits else 2 * block.count)


def open_connection(ep: ModbusEndpoint, timeout: float, backoff: Backoff) -> Connection:
    if ep.is_rtu:
        settings = SerialSettings(ep.serial_port, ep.baudrate, ep.parity, ep.stop_bits)
        return Connection(RtuLink(settings, timeout), backoff)
    return Connection(TcpLink(ep.host, ep.port, timeout), backoff)


@dataclass(eq=False)
class PollGroup:
    """Points of one device polled together at one interval (the device's, or a poll group's)."""

    name: str
    interval: float
    plan: ReadPlan
    ids: np.ndarray  # tag ids of the group's points, in plan order
    points: tuple  # PointDefs, in plan order
    refused: set[int] = field(default_factory=set)  # blocks answered with exception 02/03: not read again
    polls: int = 0  # polls that brought values
    status: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.status = np.zeros(len(self.ids), np.uint32)
        self.status_good = np.full(len(self.ids), st.GOOD, np.uint32)
        # Read request PDUs, built once: they never change between polls.
        self.requests = [frames.read_request(frames.READ_FUNCTION[b.table], b.start, b.count) for b in self.plan.blocks]


@dataclass(eq=False)
class DeviceState:
    """A device's poll state; its counters live in the driver's DeviceDiagnostics at row ``k``."""

    device: Device
    k: int
    connection: Connection
    ids: np.ndarray  # every tag of the device
    points: tuple
    groups: list[PollGroup]
    ok: bool = False
    ever_ok: bool = False
    consecutive_failures: int = 0
    demoted_until: float = 0.0  # monotonic time before which the device is off scan
    last_error: str = ""
    stored_now: int = 0  # values stored out of the poll schedule (read_now, a write's read-back)


class _Coalescer:
    """Polls waiting to go into the TagDB as one batch, decoded together per read plan.

    A poll adds its answers' raw data bytes; the flush (``scada.ingest.Ingest``, which calls
    :meth:`_decode` first) decodes every poll of one plan (one equipment type's poll group)
    with one set of numpy operations and stores them all as one batch. A poll group polled
    twice before a flush flushes first: every poll's values reach the TagDB and its
    consumers (the historian records both), none is coalesced away.
    """

    def __init__(self, tagdb: TagDB) -> None:
        # Tag ids never repeat between flushes (see add): no repeats to look for.
        self.ingest = Ingest(tagdb, before_flush=self._decode, coalesce=False)
        # plan -> the polls' (group, register bytes, bit bytes, status or None when all good, time)
        self._pending: dict[int, tuple[ReadPlan, list]] = {}
        self._groups: set[int] = set()

    def add(self, group: PollGroup, registers: bytes, bits: bytes, status: np.ndarray | None, t: int) -> None:
        if id(group) in self._groups:
            self.flush()
        self._groups.add(id(group))
        entry = self._pending.get(id(group.plan))
        if entry is None:
            entry = self._pending[id(group.plan)] = (group.plan, [])
        entry[1].append((group, registers, bits, None if status is None else status.copy(), t))

    def flush(self) -> None:
        """Decode the pending polls and store them (and anything else gathered) in one batch."""
        self.ingest.flush()

    def _decode(self) -> None:
        """Each plan's polls decoded together, handed to the ingest."""
        for plan, polls in self._pending.values():
            n, width = len(polls), len(plan.points)
            try:
                decoded = plan.decode_polls(b"".join(p[1] for p in polls), b"".join(p[2] for p in polls), n)
            except ValueError:  # a bug (answer lengths are checked per request): lose one period, not the driver
                log.exception("modbus_decode_failed", polls=n, points=width)
                continue
            values = decoded.ravel()
            if any(p[3] is not None for p in polls):
                status = np.concatenate([p[0].status_good if p[3] is None else p[3] for p in polls])
            else:
                status = np.full(n * width, st.GOOD, np.uint32)
            # A NaN/Inf float from the field is stored with its value, never as Good (codec.NON_FINITE_STATUS).
            self.ingest.add(
                np.concatenate([p[0].ids for p in polls]),
                values,
                non_finite_status(values, status),
                np.repeat(np.fromiter((p[4] for p in polls), np.int64, n), width),
            )
        self._pending.clear()
        self._groups.clear()


class ModbusDriver:
    """Polls every configured Modbus device; see the module docstring."""

    name = "modbus"

    def __init__(self, config: Config, devices: list[Device], tagdb: TagDB, backoff: Backoff = Backoff()) -> None:
        self.config = config
        self.tagdb = tagdb
        self.backoff = backoff
        self.diag = DeviceDiagnostics(config, devices)
        self._coalescer = _Coalescer(tagdb)
        self.ingest = self._coalescer.ingest  # the flush loop and the link-loss statuses
        plans: dict[tuple[str, str], ReadPlan] = {}
        connections: dict[tuple, Connection] = {}
        self.devices: list[DeviceState] = []
        self._by_tag: dict[str, tuple[DeviceState, int]] = {}
        for k, d in enumerate(devices):
            t = config.types[d.type]
            tio: ModbusType = t.io or ModbusType()
            ep: ModbusEndpoint = d.io
            conn = connections.get(ep.connection)
            if conn is None:
                conn = connections[ep.connection] = open_connection(ep, d.timeout, backoff)
            ids = config.tag_ids(d)
            intervals = {DEFAULT_GROUP: d.poll_interval, **dict(tio.poll_groups)}
            groups = []
            for gname, interval in intervals.items():
                members = [i for i, p in enumerate(t.points) if p.io.poll_group == gname]
                if not members:
                    continue
                plan = plans.get((d.type, gname))
                if plan is None:
                    plan = plans[(d.type, gname)] = ReadPlan([t.points[i].io for i in members], tio.read_gap)
                groups.append(PollGroup(gname, interval, plan, ids[members], tuple(t.points[i] for i in members)))
            ds = DeviceState(d, k, conn, ids, t.points, groups)
            self.devices.append(ds)
            for i, p in enumerate(t.points):
                self._by_tag[config.tag_name(d, p)] = (ds, i)
        self.connections = list(connections.values())
        self.polls_started = 0
        self.late_polls = 0  # started more than 10 % of the poll interval after their tick
        self.missed_cycles = 0  # cycles skipped because a poll overran its interval
        self.max_lateness = 0.0
        self.demotions = 0
        self._now_plans: dict[tuple[str, tuple[int, ...]], ReadPlan] = {}
        self._write_plans: dict[
            tuple[str, int], ReadPlan
        ] = {}  # a write's read-back, by type and point  # read_now's plans, by type and points
        self.reads_now = 0  # read_now requests sent (out of the poll schedule)
        self.polls_superseded = 0  # polls whose values were dropped: older than a read_now's (see poll)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.ingest.run(FLUSH_PERIOD), name="modbus:flush")
                tg.create_task(self.diag.run(self.tagdb), name="modbus:diagnostics")
                for ds in self.devices:
                    for g in ds.groups:
                        tg.create_task(self._poll_loop(ds, g), name=f"modbus:{ds.device.name}:{g.name}")
        finally:
            self.ingest.flush()
            for conn in self.connections:
                conn.close()

    async def _poll_loop(self, ds: DeviceState, group: PollGroup) -> None:
        interval = group.interval
        # Spread devices over the interval so that a city does not poll in one burst.
        phase = (zlib.crc32(f"{ds.device.name}/{group.name}".encode()) % 1000) / 1000.0 * interval
        await asyncio.sleep(phase)
        next_tick = time.monotonic()
        task = asyncio.current_task()
        while True:
            if time.monotonic() >= ds.demoted_until:
                # How late this poll starts against its schedule: "every cycle on time" is measured here.
                late = time.monotonic() - next_tick
                self.polls_started += 1
                if late > 0.1 * interval:
                    self.late_polls += 1
                self.max_lateness = max(self.max_lateness, late)
                try:
                    await self.poll(ds, group)
                except Exception as exc:  # a bug in one device's poll must not stop every other device
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from exc  # a cancellation turned into an error: stop
                    log.exception("poll_failed", device=ds.device.name)
                    self._failed(ds, f"internal error: {exc!r}")
                if task is not None and task.cancelling():
                    # Cancelled, but the poll lost the cancellation and returned (Python 3.11's
                    # asyncio.wait_for returns an inner result that races with it; a timeout it
                    # becomes is answered as an unreachable device): stop as asked, or the loop
                    # would poll for ever and the driver's stop, then the server's, would hang.
                    raise asyncio.CancelledError
            next_tick += interval
            now = time.monotonic()
            if next_tick < now:  # overran: skip the missed cycles rather than burst
                self.missed_cycles += int((now - next_tick) // interval) + 1
                next_tick = now + interval - (now - next_tick) % interval
            await asyncio.sleep(next_tick - now)

    async def poll(self, ds: DeviceState, group: PollGroup | None = None) -> None:
        """Read every block of one poll group (default: the first) once and report the result."""
        group = group or ds.groups[0]
        unit = ds.device.io.unit
        t0 = time.monotonic()
        stored_now = ds.stored_now
        registers: list[bytes] = []
        bits: list[bytes] = []
        all_good = True
        try:
            for k, block in enumerate(group.plan.blocks):
                parts = bits if block.is_bits else registers
                if k in group.refused:  # the device said this block does not exist: not asked again
                    all_good = self._mark_block(group, block, st.BAD_CONFIGURATION_ERROR, all_good)
                    parts.append(_zero_data(block))
                    continue
                try:
                    parts.append(await ds.connection.request(unit, group.requests[k]))
                except DeviceRejected as exc:
                    code = exc.args[0]
                    if code == EXC_BUSY:
                        raise
                    if code in (EXC_GATEWAY_PATH, EXC_GATEWAY_TARGET):
                        raise DeviceUnreachable(f"the gateway cannot reach unit {unit} (exception {code})") from None
                    all_good = self._mark_block(
                        group, block, EXCEPTION_STATUS.get(code, st.BAD_DEVICE_FAILURE), all_good
                    )
                    parts.append(_zero_data(block))
                    ds.last_error = f"exception {code} on {block.table} {block.start}+{block.count}"
                    if code in (EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE):
                        # A configuration mistake, not a transient fault: retrying every poll would
                        # only cost the device a request per cycle. It stays Bad_ConfigurationError.
                        group.refused.add(k)
                        log.warning(
                            "modbus_block_refused",
                            device=ds.device.name,
                            table=block.table,
                            address=block.start,
                            count=block.count,
                            modbus_exception=code,
                        )
        except DeviceUnreachable as exc:
            self._failed(ds, str(exc))
            return
        except FrameError as exc:  # a garbled or mismatched answer never lands on any tag
            self._failed(ds, f"malformed response: {exc}")
            return
        except DeviceRejected:  # busy: try again next cycle, keep what we have
            ds.last_error = "device busy (exception 06)"
            self.diag.failure(ds.k, ds.last_error, offline=False)
            return
        rtt = time.monotonic() - t0
        if ds.stored_now != stored_now:
            # A read_now or a write's read-back stored newer values of this device while the poll's
            # requests waited their turn: the poll's (read before them, some of them) must not
            # take them back in time. Its values are dropped; the next poll brings them.
            self.polls_superseded += 1
        else:
            # The answers' lengths were checked against the requests (frames.check_response): the
            # concatenated bytes fit the plan, and decoding waits for the flush.
            self._coalescer.add(
                group, b"".join(registers), b"".join(bits), None if all_good else group.status, time.time_ns()
            )
        if not ds.ok and ds.consecutive_failures:  # a recovery; first contacts are counted in the status line
            log.info("device_online", device=ds.device.name, rtt_ms=round(rtt * 1000, 1))
        ds.ok = ds.ever_ok = True
        ds.consecutive_failures = 0
        group.polls += 1
        self.diag.success(ds.k, rtt)

    async def _read_block(self, conn: Connection, unit: int, block: Block) -> np.ndarray:
        request = frames.read_request(frames.READ_FUNCTION[block.table], block.start, block.count)
        data = await conn.request(unit, request)
        return frames.bits(data, block.count) if block.is_bits else frames.registers(data)

    @staticmethod
    def _mark_block(group: PollGroup, block: Block, code: int, all_good: bool) -> bool:
        """Give the block's points ``code`` (the group's statuses reset to Good first); False."""
        if all_good:
            group.status[:] = st.GOOD
        for k, p in enumerate(group.points):
            io = p.io
            if io.table == block.table and block.start <= io.address < block.start + block.count:
                group.status[k] = code
        return False

    def _failed(self, ds: DeviceState, error: str) -> None:
        """A poll failed: tags go bad (last values kept); enough failures in a row demote the device."""
        ds.consecutive_failures += 1
        if ds.ok or not ds.last_error:
            log.warning("device_offline", device=ds.device.name, error=error)
        ds.ok = False
        ds.last_error = error
        self.diag.failure(ds.k, error)
        self.ingest.link_lost(ds.ids, ds.ever_ok)
        n, limit = ds.consecutive_failures, ds.device.demote_after
        if limit and n >= limit:
            ds.demoted_until = time.monotonic() + ds.device.demote_for
            self.demotions += 1
            self.diag.demote(ds.k, error)
            log.warning(
                "device_demoted", device=ds.device.name, failures=n, off_scan_s=ds.device.demote_for, error=error
            )

    def _store_now(self, ds: DeviceState, ids: np.ndarray, values: np.ndarray) -> None:
        """Values read out of the poll schedule (a write's read-back, read_now), stored at once.

        The polls gathered so far are stored first, in their own update: this driver's ingest
        does not look for repeated ids (see _Coalescer), and what was read last lands last; a
        poll of the device still in flight is dropped (see poll), never stored after these.
        """
        ds.stored_now += 1
        self.ingest.flush()
        status = non_finite_status(values, np.full(len(ids), st.GOOD, np.uint32))
        self.ingest.add(ids, values, status, time.time_ns())
        self.ingest.flush()

    async def read_now(self, tags: Sequence[str]) -> None:
        """Read these points from their devices now and store them as a poll does.

        Only the blocks holding the points are read, on the device's connection (in turn with
        the polls of the devices that share it); the poll schedule is left as it is. A device
        taken off scan (demoted) is not asked: DeviceUnreachable. A failure changes neither
        the device's state nor its tags' statuses: its next poll says what the link is.
        """
        wanted: dict[int, tuple[DeviceState, list[int]]] = {}
        for tag in tags:
            found = self._by_tag.get(tag)
            if found is None:
                raise CommandRejected(f"unknown tag {tag!r}")
            ds, k = found
            wanted.setdefault(id(ds), (ds, []))[1].append(k)
        for ds, points in wanted.values():
            name = ds.device.name
            if time.monotonic() < ds.demoted_until:
                raise DeviceUnreachable(f"{name} is off scan (demoted) after {ds.consecutive_failures} failed polls")
            key = (ds.device.type, tuple(sorted(set(points))))
            plan = self._now_plans.get(key)
            if plan is None:
                tio: ModbusType = self.config.types[ds.device.type].io or ModbusType()
                plan = self._now_plans[key] = ReadPlan([ds.points[k].io for k in key[1]], tio.read_gap)
            registers: list[bytes] = []
            bits: list[bytes] = []
            unit = ds.device.io.unit
            try:
                for block in plan.blocks:
                    request = frames.read_request(frames.READ_FUNCTION[block.table], block.start, block.count)
                    self.reads_now += 1
                    (bits if block.is_bits else registers).append(await ds.connection.request(unit, request))
            except DeviceRejected as exc:
                raise DeviceRejected(f"{name}: the device refused the read (exception {exc.args[0]})") from None
            except FrameError as exc:
                raise DeviceRejected(f"{name}: the answer to the read is garbled ({exc})") from None
            try:
                values = plan.decode_polls(b"".join(registers), b"".join(bits), 1)[0]
            except ValueError as exc:
                raise DeviceRejected(f"{name}: the answer to the read does not fit ({exc})") from None
            self._store_now(ds, ds.ids[list(key[1])], values)

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
        (a "write 1 to reset" coil) are declared ``readback: false`` in tags.yaml; a caller that
        confirms the effect itself says so (``WriteCommand.readback`` False): no read. The value
        read back is stored as a poll's would be: a read-back of the written point (the
        pipeline's confirmation of a Write) then needs no read of its own.
        """
        self.check(command)
        ds, k = lookup(self._by_tag, command)
        point = ds.points[k]
        io = point.io
        data = encode(io, command.value)
        unit, address = ds.device.io.unit, io.address
        if isinstance(data, bool):  # a coil: the only writable bit table (a register is never bool)
            request = frames.write_coil_request(address, data)
        else:
            request = frames.write_registers_request(address, data)
        try:
            await ds.connection.request(unit, request)
        except DeviceRejected as exc:
            raise DeviceRejected(f"{command.tag}: device refused the write (exception {exc.args[0]})") from None
        except FrameError as exc:
            raise DeviceRejected(f"{command.tag}: the device's answer to the write is garbled ({exc})") from None
        if not (io.readback and command.readback):
            return
        plan = self._write_plans.get((ds.device.type, k))
        if plan is None:  # one per point of a type: a city-wide command writes the same points 1,100 times
            plan = self._write_plans[(ds.device.type, k)] = ReadPlan([io])
        tolerance = abs(io.scale) / 2 if io.type != "float32" else abs(command.value) * 1e-6 + 1e-9
        deadline = time.monotonic() + 3 * ds.device.timeout
        got = None
        while True:
            try:
                got = plan.decode([await self._read_block(ds.connection, unit, plan.blocks[0])])[0]
            except DeviceRejected as exc:
                raise DeviceRejected(f"{command.tag}: device refused the read-back (exception {exc.args[0]})") from None
            except FrameError as exc:
                raise DeviceRejected(f"{command.tag}: the read-back answer is garbled ({exc})") from None
            if abs(got - command.value) <= tolerance:
                self._store_now(ds, ds.ids[k : k + 1], np.array([got]))
                return
            if time.monotonic() > deadline:
                raise DeviceRejected(f"{command.tag}: wrote {command.value}, the device reads back {got}")
            await asyncio.sleep(0.1)

    def diagnostics(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "online": sum(ds.ok for ds in self.devices),
            "polls": int(self.diag.successes.sum()),
            "failures": int(self.diag.failures.sum()),
            "demoted": sum(time.monotonic() < ds.demoted_until for ds in self.devices),
            "late_polls": self.late_polls,
            "missed_cycles": self.missed_cycles,
        }


def create(config: Config, devices: list[Device], tagdb: TagDB) -> ModbusDriver:
    return ModbusDriver(config, devices, tagdb)
