"""Lighting cabinets served over Modbus TCP: pymodbus servers around the pure lighting model.

Each cabinet is one Modbus unit. Cabinets are spread over ports ``base_port, base_port+1, ...``
with ``units_per_port`` units on each (1 = one cabinet per address, as cabinets with their own
IP; more = a gateway). The adapter steps the model on a timer and, on every request, encodes
the requested cabinet's current state into its registers; writes go into the model as commands.

The register map below is the cabinet's "firmware": tags.yaml's ``lighting_cabinet`` type
must describe the same addresses (a test checks that it does).
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.models import lighting

# (name, table, address, type, word order, scale) -- value on the wire = value / scale
REGISTER_MAP = (
    ("mode", "holding", 0, "uint16", "big", 1.0),
    ("dim_setpoint", "holding", 1, "uint16", "big", 1.0),
    ("power", "input", 0, "float32", "big", 1.0),
    ("energy", "input", 2, "uint32", "little", 0.1),
    ("voltage", "input", 4, "uint16", "big", 0.1),
    ("failed_lamps", "input", 5, "uint16", "big", 1.0),
    ("lamp_count", "input", 6, "uint16", "big", 1.0),
    ("temperature", "input", 7, "int16", "big", 0.1),
    ("dim_level", "input", 8, "uint16", "big", 1.0),
    ("door_open", "discrete", 0, "bool", "", 1.0),
    ("lamps_on", "discrete", 1, "bool", "", 1.0),
    ("lamp_test", "coil", 0, "bool", "", 1.0),
)
HOLDING_SIZE, INPUT_SIZE, BITS = 2, 9, 16
_FMT = {"uint16": ">H", "int16": ">h", "uint32": ">I", "float32": ">f"}


def _encode(value: float, dtype: str, word_order: str, scale: float) -> list[int]:
    raw = value / scale
    if dtype != "float32":
        raw = int(round(raw))
    b = struct.pack(_FMT[dtype], raw)
    words = [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]
    return words[::-1] if word_order == "little" else words


def cabinet_values(s: lighting.LightingState, i: int) -> dict[str, float]:
    """Current values of cabinet ``i`` by register-map name."""
    return {
        "mode": s.mode[i], "dim_setpoint": s.dim_setpoint[i], "power": s.power_kw[i],
        "energy": s.energy_kwh[i], "voltage": s.voltage[i], "failed_lamps": s.failed[i],
        "lamp_count": s.lamps[i], "temperature": s.temperature[i], "dim_level": s.dim_level[i],
        "door_open": s.door_open[i], "lamps_on": s.on[i], "lamp_test": s.lamp_test[i],
    }


def encode_tables(s: lighting.LightingState, i: int) -> dict[str, list]:
    """Cabinet ``i`` as Modbus tables: holding and input registers, discrete and coil bits."""
    tables: dict[str, list] = {"holding": [0] * HOLDING_SIZE, "input": [0] * INPUT_SIZE,
                               "discrete": [False] * BITS, "coil": [False] * BITS}
    values = cabinet_values(s, i)
    for name, table, address, dtype, order, scale in REGISTER_MAP:
        if dtype == "bool":
            tables[table][address] = bool(values[name])
        else:
            words = _encode(float(values[name]), dtype, order, scale)
            tables[table][address:address + len(words)] = words
    return tables


def _bits_to_registers(bits: list[bool]) -> list[int]:
    # pymodbus packs bit n of a block into bit (n % 16) of register n // 16.
    return [sum(1 << j for j, b in enumerate(bits[k:k + 16]) if b) for k in range(0, len(bits), 16)]


@dataclass
class Placement:
    port: int
    unit: int


class LightingModbusSimulator:
    """Owns the model state and the pymodbus servers that expose it."""

    def __init__(self, state: lighting.LightingState, host: str = "127.0.0.1", base_port: int = 15020,
                 units_per_port: int = 1, acceleration: float = 1.0, step_interval: float = 0.5,
                 start_time: float | None = None) -> None:
        if not 1 <= units_per_port <= 247:
            raise ValueError("units_per_port must be within 1-247")
        self.state = state
        self.host = host
        self.base_port = base_port
        self.units_per_port = units_per_port
        self.acceleration = acceleration
        self.step_interval = step_interval
        self._t0 = time.time() if start_time is None else start_time
        self._m0 = time.monotonic()
        self.servers: list[ModbusTcpServer] = []
        self._tasks: list[asyncio.Task] = []
        self.requests = 0

    def placement(self, i: int) -> Placement:
        return Placement(self.base_port + i // self.units_per_port, 1 + i % self.units_per_port)

    def sim_time(self) -> float:
        return self._t0 + (time.monotonic() - self._m0) * self.acceleration

    async def _action(self, i: int, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values) -> ExcCodes | None:
        """Called by pymodbus on every request for cabinet ``i``: refresh, or apply a write."""
        self.requests += 1
        if set_values is not None:
            return self._apply_write(i, function_code, address, list(set_values))
        tables = encode_tables(self.state, i)
        if function_code in (3, 6, 16, 22, 23):
            registers[:HOLDING_SIZE] = tables["holding"]
        elif function_code == 4:
            registers[:INPUT_SIZE] = tables["input"]
        elif function_code == 2:
            registers[:1] = _bits_to_registers(tables["discrete"])
        elif function_code in (1, 5, 15):
            registers[:1] = _bits_to_registers(tables["coil"])
        return None

    def _apply_write(self, i: int, function_code: int, address: int, values: list) -> ExcCodes | None:
        s = self.state
        try:
            for offset, v in enumerate(values):
                a = address + offset
                if function_code in (5, 15):
                    if a != 0:
                        return ExcCodes.ILLEGAL_ADDRESS
                    s = lighting.set_lamp_test(s, i, bool(v))
                elif a == 0:
                    s = lighting.set_mode(s, i, int(v))
                elif a == 1:
                    s = lighting.set_dim(s, i, int(v))
                else:
                    return ExcCodes.ILLEGAL_ADDRESS
        except ValueError:
            return ExcCodes.ILLEGAL_VALUE
        self.state = s
        return None

    def _device(self, i: int, unit: int) -> SimDevice:
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=BITS, values=False, datatype=DataType.BITS)],
                [SimData(0, count=BITS, values=False, datatype=DataType.BITS, readonly=True)],
                [SimData(0, count=HOLDING_SIZE, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=INPUT_SIZE, values=0, datatype=DataType.REGISTERS, readonly=True)],
            ),
            action=functools.partial(self._action, i),
        )

    async def start(self) -> None:
        ports: dict[int, list[SimDevice]] = {}
        for i in range(self.state.count):
            p = self.placement(i)
            ports.setdefault(p.port, []).append(self._device(i, p.unit))
        for port, devices in ports.items():
            server = ModbusTcpServer(devices, address=(self.host, port))
            self.servers.append(server)
            await server.serve_forever(background=True)
        self._tasks.append(asyncio.create_task(self._step_loop(), name="lighting-step"))

    async def _step_loop(self) -> None:
        while True:
            self.state = lighting.step(self.state, self.sim_time())
            await asyncio.sleep(self.step_interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for server in self.servers:
            await server.shutdown()
        self.servers.clear()
