"""Lighting cabinets served over Modbus TCP: pymodbus servers around the pure lighting model.

Each cabinet is one Modbus unit. Cabinets are spread over ports ``base_port, base_port+1, ...``
with ``units_per_port`` units on each (1 = one cabinet per address, as cabinets with their own
IP; more = a gateway). Each model step encodes every cabinet's registers at once (numpy, see
:func:`encode_images`); a request then only copies its cabinet's row. Writes go into the
model as commands, which change only the cabinet written (``lighting.refresh``): its row alone
is re-encoded, so that a write costs one cabinet, not the city (2,200 writes for a city-wide
dimming cost 6.6 s of simulator CPU when each stepped and re-encoded all 1,100 cabinets).

Faults of the link itself (not of the cabinet) live here: a cabinet that stops answering
(its requests hang, the connection stays open) and one that drops off the network (its
port closes).

The register map below is the cabinet's "firmware": tags.yaml's ``lighting_cabinet`` type
must describe the same addresses (a test checks that it does).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.clock import Paced
from simulators.models import lighting

# (name, table, address, type, word order, scale) -- value on the wire = value / scale
REGISTER_MAP = (
    ("mode", "holding", 0, "uint16", "big", 1.0),
    ("dim_setpoint", "holding", 1, "uint16", "big", 1.0),
    ("power", "input", 0, "float32", "big", 1.0),
    ("energy", "input", 2, "uint32", "little", 0.1),
    ("mains_voltage", "input", 4, "uint16", "big", 0.1),
    ("failed_lamps", "input", 5, "uint16", "big", 1.0),
    ("lamp_count", "input", 6, "uint16", "big", 1.0),
    ("temperature", "input", 7, "int16", "big", 0.1),
    ("dim_level", "input", 8, "uint16", "big", 1.0),
    ("door_open", "discrete", 0, "bool", "", 1.0),
    ("lamps_on", "discrete", 1, "bool", "", 1.0),
    ("mains_fault", "discrete", 2, "bool", "", 1.0),
    ("earth_leakage_trip", "discrete", 3, "bool", "", 1.0),
    ("lamp_test", "coil", 0, "bool", "", 1.0),
    ("reset_trip", "coil", 1, "bool", "", 1.0),  # write 1 to reset an earth-leakage trip; reads 0
)
SIZES = {"holding": 2, "input": 9, "discrete": 16, "coil": 16}


class _RequestHandler(ServerRequestHandler):
    """pymodbus's request handler, without a thread-safe hand-off per request.

    pymodbus 3.16 runs every request through ``asyncio.run_coroutine_threadsafe`` from the
    loop's own thread: a concurrent Future with its Condition and RLock, chained to an asyncio
    one, per request. That was a quarter of the simulator's CPU at 7,000 requests/s (py-spy),
    and 2,000 cabinets polled at 1 s ask 8,000. The same coroutine on the same loop, in the
    same order, as a plain task.
    """

    def handle_later(self) -> None:
        self.loop.create_task(self.handle_request())


class _TcpServer(ModbusTcpServer):
    """ModbusTcpServer whose connections use :class:`_RequestHandler` (pymodbus pinned <3.17)."""

    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


def model_values(s: lighting.LightingState) -> dict[str, np.ndarray]:
    """Every cabinet's values by register-map name (arrays of length ``s.count``)."""
    return {
        "mode": s.mode,
        "dim_setpoint": s.dim_setpoint,
        "power": s.power_kw,
        "energy": s.energy_kwh,
        "mains_voltage": s.voltage,
        "failed_lamps": s.failed,
        "lamp_count": s.lamps,
        "temperature": s.temperature,
        "dim_level": s.dim_level,
        "door_open": s.door_open,
        "lamps_on": s.on,
        "mains_fault": ~s.mains_ok,
        "earth_leakage_trip": s.leakage_trip,
        "lamp_test": s.lamp_test,
        "reset_trip": np.zeros(s.count, bool),
    }


def _words(values: np.ndarray, dtype: str, order: str, scale: float) -> list[np.ndarray]:
    raw = np.asarray(values, np.float64) / scale
    if dtype == "float32":
        u32 = raw.astype(np.float32).view(np.uint32).astype(np.int64)
    else:
        u32 = np.round(raw).astype(np.int64)
    if dtype in ("uint16", "int16"):
        return [u32 & 0xFFFF]
    words = [(u32 >> 16) & 0xFFFF, u32 & 0xFFFF]
    return words[::-1] if order == "little" else words


def encode_images(s: lighting.LightingState, rows: list[int] | None = None) -> dict[str, np.ndarray]:
    """Register images of every cabinet (or of ``rows``): ``{table: array (n, size)}``, uint16 words or bools."""
    values = model_values(s)
    if rows is not None:
        values = {name: np.asarray(v)[rows] for name, v in values.items()}
    n = len(values["mode"])
    images = {
        "holding": np.zeros((n, SIZES["holding"]), np.uint16),
        "input": np.zeros((n, SIZES["input"]), np.uint16),
        "discrete": np.zeros((n, SIZES["discrete"]), bool),
        "coil": np.zeros((n, SIZES["coil"]), bool),
    }
    for name, table, address, dtype, order, scale in REGISTER_MAP:
        if dtype == "bool":
            images[table][:, address] = values[name]
        else:
            for k, w in enumerate(_words(values[name], dtype, order, scale)):
                images[table][:, address + k] = w
    return images


_BIT_WEIGHTS = 1 << np.arange(16, dtype=np.int64)


def bits_to_registers(bits: np.ndarray) -> np.ndarray:
    """Bit images (n, 16) -> one register each: pymodbus packs bit k into bit k of the register."""
    return (bits.astype(np.int64) * _BIT_WEIGHTS).sum(axis=1)


@dataclass
class Placement:
    port: int
    unit: int


class LightingModbusSimulator(Paced):
    """Owns the model state and the pymodbus servers that expose it."""

    def __init__(
        self,
        state: lighting.LightingState,
        host: str = "127.0.0.1",
        base_port: int = 15020,
        units_per_port: int = 1,
        acceleration: float = 1.0,
        step_interval: float = 0.5,
        start_time: float | None = None,
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "E",
    ) -> None:
        if serial_port is not None:  # Modbus RTU: every cabinet on one line, units 1..N
            units_per_port = state.count
        if not 1 <= units_per_port <= 247:
            raise ValueError("units_per_port must be within 1-247 (a serial line carries at most 247 units)")
        super().__init__(acceleration, step_interval, start_time)
        self.serial_port, self.baudrate, self.parity = serial_port, baudrate, parity
        self.host = host
        self.base_port = base_port
        self.units_per_port = units_per_port
        self.servers: dict[int, ModbusTcpServer | ModbusSerialServer] = {}
        self.requests = 0
        self.requests_per_cabinet = np.zeros(state.count, np.int64)
        self.silent: set[int] = set()  # cabinets that stopped answering
        self._answer = asyncio.Event()  # set whenever a silent cabinet may answer again
        self.state = state

    @property
    def state(self) -> lighting.LightingState:
        return self._state

    @state.setter
    def state(self, s: lighting.LightingState) -> None:
        # Every change of state re-encodes the images, so a request always sees the current state.
        self._state = s
        self._images = encode_images(s)
        self._bit_registers = {t: bits_to_registers(self._images[t]) for t in ("discrete", "coil")}

    def placement(self, i: int) -> Placement:
        return Placement(self.base_port + i // self.units_per_port, 1 + i % self.units_per_port)

    async def _action(
        self, i: int, function_code: int, start_address: int, address: int, count: int, registers: list[int], set_values
    ) -> ExcCodes | None:
        """Called by pymodbus on every request for cabinet ``i``: refresh, or apply a write."""
        while i in self.silent:  # the cabinet stopped answering: the request hangs, the link stays up
            self._answer.clear()
            await self._answer.wait()
        self.requests += 1
        self.requests_per_cabinet[i] += 1
        if set_values is not None:
            return self._apply_write(i, function_code, address, list(set_values))
        if function_code in (3, 6, 16, 22, 23):
            registers[: SIZES["holding"]] = self._images["holding"][i].tolist()
        elif function_code == 4:
            registers[: SIZES["input"]] = self._images["input"][i].tolist()
        elif function_code == 2:
            registers[0] = int(self._bit_registers["discrete"][i])
        elif function_code in (1, 5, 15):
            registers[0] = int(self._bit_registers["coil"][i])
        return None

    def _apply_write(self, i: int, function_code: int, address: int, values: list) -> ExcCodes | None:
        s = self.state
        try:
            for offset, v in enumerate(values):
                a = address + offset
                if function_code in (5, 15):
                    if a == 0:
                        s = lighting.set_lamp_test(s, i, bool(v))
                    elif a == 1:
                        if v:
                            s = lighting.reset_trip(s, i)
                    else:
                        return ExcCodes.ILLEGAL_ADDRESS
                elif a == 0:
                    s = lighting.set_mode(s, i, int(v))
                elif a == 1:
                    s = lighting.set_dim(s, i, int(v))
                else:
                    return ExcCodes.ILLEGAL_ADDRESS
        except ValueError:
            return ExcCodes.ILLEGAL_VALUE
        self._cabinet_changed(s, i)
        return None

    def _cabinet_changed(self, s: lighting.LightingState, i: int) -> None:
        """``s`` differs from the current state in cabinet ``i`` only: its row is re-encoded now,
        so a request always sees the current state."""
        self._state = s
        rows = encode_images(s, [i])
        for table, image in rows.items():
            self._images[table][i] = image[0]
        for table in ("discrete", "coil"):
            self._bit_registers[table][i] = bits_to_registers(rows[table])[0]

    def _device(self, i: int, unit: int) -> SimDevice:
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=SIZES["coil"], values=False, datatype=DataType.BITS)],
                [SimData(0, count=SIZES["discrete"], values=False, datatype=DataType.BITS, readonly=True)],
                [SimData(0, count=SIZES["holding"], values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=SIZES["input"], values=0, datatype=DataType.REGISTERS, readonly=True)],
            ),
            action=functools.partial(self._action, i),
        )

    def _port_devices(self, port: int) -> list[SimDevice]:
        first = (port - self.base_port) * self.units_per_port
        return [
            self._device(i, 1 + i - first) for i in range(first, min(first + self.units_per_port, self.state.count))
        ]

    async def _open(self, port: int) -> None:
        server = _TcpServer(self._port_devices(port), address=(self.host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying the bind failed
            raise OSError(f"cannot listen on {self.host}:{port}: in use, or not an address of this machine") from exc
        self.servers[port] = server

    async def _open_serial(self, serial_port: str) -> None:
        server = ModbusSerialServer(
            self._port_devices(self.base_port), port=serial_port, baudrate=self.baudrate, parity=self.parity
        )
        await server.serve_forever(background=True)
        self.servers[self.base_port] = server

    async def start(self) -> None:
        if self.serial_port is not None:
            await self._open_serial(self.serial_port)
        else:
            for port in sorted({self.placement(i).port for i in range(self.state.count)}):
                await self._open(port)
        self.spawn(self._step_loop(), "lighting-step")

    async def _step_loop(self) -> None:
        while True:
            self.state = lighting.step(self.state, self.sim_time())
            await asyncio.sleep(self.step_interval)

    # Link faults

    def set_silent(self, i: int, silent: bool) -> None:
        """Cabinet ``i`` stops answering (True) or answers again (False); its TCP link stays up."""
        if silent:
            self.silent.add(i)
        else:
            self.silent.discard(i)
            self._answer.set()

    async def set_offline(self, i: int, offline: bool) -> None:
        """Cabinet ``i`` drops off the network (its port closes) or comes back.

        With a gateway (several units per port) the whole gateway goes: that is what a
        dead gateway does to the cabinets behind it.
        """
        port = self.placement(i).port
        if offline and port in self.servers:
            await self.servers.pop(port).shutdown()
        elif not offline and port not in self.servers:
            await self._open(port)

    async def stop(self) -> None:
        await self.stop_tasks()
        self.silent.clear()
        self._answer.set()
        for server in self.servers.values():
            await server.shutdown()
        self.servers.clear()
