"""Modbus keys of tags.yaml: where each point lives in a device's tables, and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass

from scada.fields import parse_host_port, to_bool, Fields, in_range, one_of, to_float, to_int, to_str
from scada.tagdb import ANALOG, DISCRETE
from scada.yamlsrc import ConfigError, LocMap

TABLES = ("holding", "input", "coil", "discrete")
BIT_TABLES = ("coil", "discrete")
# Data type -> number of 16-bit registers it occupies.
REGISTER_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
DATA_TYPES = ("bool", *REGISTER_TYPES)
MAX_ADDRESS = 65535
TABLE_NAMES = {"holding": "holding register", "input": "input register", "coil": "coil", "discrete": "discrete input"}
POINT_KEYS = frozenset({"table", "address", "type", "word_order", "scale", "offset", "readback"})
DEVICE_KEYS = frozenset({"endpoint", "unit"})


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """Where a point is read: table, first address, data type, word order, linear scaling."""

    table: str
    address: int
    type: str
    word_order: str = "big"  # "big": high word first (Modbus convention); "little": low word first
    scale: float = 1.0
    offset: float = 0.0
    readback: bool = True  # a write is confirmed by reading the point back (false: the device resets it)

    @property
    def size(self) -> int:
        """Registers (or bits, for bit tables) the point occupies."""
        return 1 if self.type == "bool" else REGISTER_TYPES[self.type]

    @property
    def writable_ok(self) -> bool:
        """Only holding registers and coils can be written; input registers and discrete inputs are read-only."""
        return self.table in ("holding", "coil")

    @property
    def not_writable_reason(self) -> str:
        return f"a point in the {self.table} table is read-only: only holding registers and coils can be written"

    @property
    def kind(self) -> int:
        return DISCRETE if self.type == "bool" else ANALOG


@dataclass(frozen=True, slots=True)
class ModbusEndpoint:
    """A Modbus TCP device: host, port and unit id (1-247; a gateway serves several units)."""

    host: str
    port: int
    unit: int

    # host, port and unit name one physical device: two devices may not share them.
    identifies_device = True

    @property
    def connection(self) -> tuple[str, int]:
        return (self.host, self.port)


def _address(v: object) -> int:
    a = to_int(v)
    if not 0 <= a <= MAX_ADDRESS:
        hint = ""
        if 300001 <= a <= 365536 or 400001 <= a <= 465536:  # 6-digit Modicon reference, 1-based
            hint = f" (a Modicon reference? write the 0-based address: {a % 100000 - 1})"
        raise ValueError(f"must be between 0 and {MAX_ADDRESS}{hint}")
    return a


def parse_point(f: Fields) -> ModbusPoint:
    table = f.take("table", one_of(*TABLES), what="one of " + ", ".join(TABLES))
    dtype = f.take("type", one_of(*DATA_TYPES), default="bool" if table in BIT_TABLES else "uint16")
    article = "an" if table[0] in "aeiou" else "a"
    if table in BIT_TABLES and dtype != "bool":
        raise f.error("type", f"{article} {TABLE_NAMES[table]} holds a single bit: its type must be bool", dtype)
    if table not in BIT_TABLES and dtype == "bool":
        raise f.error("type", f"{article} {TABLE_NAMES[table]} holds a number: use int16, uint16, int32, uint32 "
                      "or float32 (a bit is read from a coil or a discrete input)", dtype)
    address = f.take("address", _address, what="register or bit address 0-65535")
    point = ModbusPoint(
        table=table,
        address=address,
        type=dtype,
        word_order=f.take("word_order", one_of("big", "little"), default="big"),
        scale=f.take("scale", to_float, default=1.0),
        offset=f.take("offset", to_float, default=0.0),
        readback=f.take("readback", to_bool, default=True),
    )
    if address + point.size - 1 > MAX_ADDRESS:
        raise f.error("address", f"a {dtype} at this address runs past register {MAX_ADDRESS}", address)
    if point.scale == 0:
        raise f.error("scale", "must not be 0", point.scale)
    return point


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (or 'tcp://host:port'; port 502 when omitted; an IPv6 address in brackets)."""
    return parse_host_port(text, 502, ("tcp://",), "Modbus TCP: 502")


def parse_device(f: Fields) -> ModbusEndpoint:
    host, port = f.take("endpoint", lambda v: parse_endpoint(to_str(v)), what="host:port")
    unit = f.take("unit", in_range(to_int, 1, 247), default=1)
    return ModbusEndpoint(host, port, unit)


def check_type(type_name: str, points: dict[str, ModbusPoint], where: Fields, type_io=None) -> None:
    """Two points of one type may not share a register of the same table."""
    owner: dict[tuple[str, int], str] = {}
    for name, p in points.items():
        for a in range(p.address, p.address + p.size):
            other = owner.get((p.table, a))
            if other is not None:
                raw = where.mapping.get(name)
                line = raw.line_of("address") if isinstance(raw, LocMap) else where.line_of(name)
                raise ConfigError(
                    where.file, line, where.key(f"{name}.address"),
                    f"overlaps point {other!r} at {TABLE_NAMES[p.table]} {a}", p.address,
                )
            owner[(p.table, a)] = name
