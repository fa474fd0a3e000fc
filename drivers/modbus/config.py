"""Modbus keys of tags.yaml: where each point lives in a device's tables, and how to reach it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.fields import (
    Fields,
    in_range,
    one_of,
    parse_host_port,
    positive,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
)
from common.yamlsrc import ConfigError, LocMap
from scada.driver_api import DeviceSite
from scada.tagdb import ANALOG, DISCRETE

TABLES = ("holding", "input", "coil", "discrete")
BIT_TABLES = ("coil", "discrete")
# Data type -> number of 16-bit registers it occupies.
REGISTER_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
DATA_TYPES = ("bool", *REGISTER_TYPES)
MAX_ADDRESS = 65535
TABLE_NAMES = {"holding": "holding register", "input": "input register", "coil": "coil", "discrete": "discrete input"}
POINT_KEYS = frozenset({"table", "address", "type", "word_order", "scale", "offset", "readback", "poll_group"})
DEVICE_KEYS = frozenset({"endpoint", "unit", "baudrate", "parity", "stop_bits"})
TYPE_KEYS = frozenset({"read_gap", "poll_groups"})
DEFAULT_GROUP = ""  # the points without poll_group: polled at the device's poll_interval
PARITIES = {"none": "N", "even": "E", "odd": "O"}
SERIAL_KEYS = ("baudrate", "parity", "stop_bits")


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
    poll_group: str = DEFAULT_GROUP  # a group of the type's poll_groups, polled at its own interval

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

    needs_command_enum = False  # a Modbus write is a value, not a command out of a list

    @property
    def kind(self) -> int:
        return DISCRETE if self.type == "bool" else ANALOG


@dataclass(frozen=True, slots=True)
class ModbusType:
    """Type-level Modbus options: how far apart two points may be and still share a request,
    and the poll groups (name -> interval in seconds) some points are polled in."""

    read_gap: int = 8
    poll_groups: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ModbusEndpoint:
    """A Modbus device: TCP host:port or a serial line (RTU), and its unit id.

    Devices behind one host:port (a gateway) or on one serial line (an RS-485 bus) share
    the connection and take turns on it.
    """

    host: str  # TCP host, or "" for a serial line
    port: int  # TCP port, or 0 for a serial line
    unit: int
    serial_port: str = ""  # /dev/ttyUSB0... for RTU
    baudrate: int = 19200
    parity: str = "E"
    stop_bits: int = 1

    @property
    def is_rtu(self) -> bool:
        return bool(self.serial_port)

    @property
    def line(self) -> tuple | None:
        """(connection, settings) of a serial line, which every device on it must agree on."""
        if not self.is_rtu:
            return None
        return self.connection, (self.baudrate, self.parity, self.stop_bits)

    @property
    def line_settings_text(self) -> str:
        parity = {v: k for k, v in PARITIES.items()}[self.parity]
        return f"baudrate {self.baudrate}, parity {parity}, stop_bits {self.stop_bits}"

    @property
    def identity(self) -> tuple:
        """What names one physical device: its connection and unit (not the line's speed)."""
        return (self.connection, self.unit)

    @property
    def connection(self) -> tuple[str, int | str]:
        return ("rtu", self.serial_port) if self.is_rtu else (self.host, self.port)


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
        raise f.error(
            "type",
            f"{article} {TABLE_NAMES[table]} holds a number: use int16, uint16, int32, uint32 "
            "or float32 (a bit is read from a coil or a discrete input)",
            dtype,
        )
    address = f.take("address", _address, what="register or bit address 0-65535")
    point = ModbusPoint(
        table=table,
        address=address,
        type=dtype,
        word_order=f.take("word_order", one_of("big", "little"), default="big"),
        scale=f.take("scale", to_float, default=1.0),
        offset=f.take("offset", to_float, default=0.0),
        readback=f.take("readback", to_bool, default=True),
        poll_group=f.take("poll_group", to_name, default=DEFAULT_GROUP),
    )
    if address + point.size - 1 > MAX_ADDRESS:
        raise f.error("address", f"a {dtype} at this address runs past register {MAX_ADDRESS}", address)
    if point.scale == 0:
        raise f.error("scale", "must not be 0", point.scale)
    return point


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (or 'tcp://host:port'; port 502 when omitted; an IPv6 address in brackets)."""
    return parse_host_port(text, 502, ("tcp://",), "Modbus TCP: 502")


def _read_gap(v: object) -> int:
    gap = to_int(v)
    if not 0 <= gap <= 125:
        raise ValueError(
            "must be between 0 and 125 (unused registers or bits one request may read to merge two points)"
        )
    return gap


def _poll_groups(raw: object, f: Fields) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, dict) or not raw:
        raise f.error(
            "poll_groups", "expected a mapping of group names to poll intervals in seconds, e.g. {slow: 60}", raw
        )
    gf = Fields(raw, f.key("poll_groups"), f.file, f.line_of("poll_groups"))
    groups = []
    for name in list(raw):
        try:
            to_name(name)
        except ValueError as exc:
            raise gf.error(str(name), str(exc), name) from None
        groups.append((str(name), gf.take(str(name), positive(to_float), what="poll interval in seconds")))
    return tuple(groups)


def parse_type(f: Fields) -> ModbusType:
    return ModbusType(
        read_gap=f.take("read_gap", _read_gap, default=8),
        poll_groups=_poll_groups(f.sub("poll_groups"), f) if f.has("poll_groups") else (),
    )


def _serial_path(text: str) -> str | None:
    """The device path of an ``rtu:///dev/ttyUSB0`` endpoint, None for a TCP endpoint."""
    s = text.strip()
    if not s.lower().startswith("rtu://"):
        return None
    path = s[len("rtu://") :]
    if not path.startswith("/") or len(path) < 2:
        raise ValueError("expected rtu:///dev/<serial device>, e.g. rtu:///dev/ttyUSB0")
    return path


def parse_device(f: Fields) -> ModbusEndpoint:
    text = f.take("endpoint", to_str, what="host:port, or rtu:///dev/ttyUSB0 for a serial line")
    try:
        serial_port = _serial_path(text)
        host, port = ("", 0) if serial_port else parse_endpoint(text)
    except ValueError as exc:
        raise f.error("endpoint", str(exc), text) from None
    if serial_port is None:
        for key in SERIAL_KEYS:
            if f.has(key):
                raise f.error(
                    key,
                    "a serial line setting, but this device's endpoint is TCP: remove it, "
                    "or write endpoint: rtu:///dev/ttyUSB0",
                    f.sub(key),
                )
        # 0 and 255 are what TCP devices that are not gateways commonly answer to.
        return ModbusEndpoint(host, port, f.take("unit", in_range(to_int, 0, 255), default=1))
    return ModbusEndpoint(
        host,
        port,
        unit=f.take("unit", in_range(to_int, 1, 247), default=1),
        serial_port=serial_port,
        baudrate=f.take("baudrate", one_of_int(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200), default=19200),
        parity=PARITIES[f.take("parity", one_of(*PARITIES), default="even")],
        stop_bits=f.take("stop_bits", one_of_int(1, 2), default=1),
    )


def one_of_int(*choices: int):
    def check(v: object) -> int:
        n = to_int(v)
        if n not in choices:
            raise ValueError(f"must be one of: {', '.join(map(str, choices))}")
        return n

    return check


def check_type(
    type_name: str, points: dict[str, ModbusPoint], where: Fields, type_io: ModbusType | None = None
) -> None:
    """Two points of one type may not share a register of the same table; poll groups must exist."""
    groups = dict(type_io.poll_groups) if type_io else {}
    owner: dict[tuple[str, int], str] = {}
    for name, p in points.items():
        if p.poll_group and p.poll_group not in groups:
            raw = where.mapping.get(name)
            line = raw.line_of("poll_group") if isinstance(raw, LocMap) else where.line_of(name)
            known = ", ".join(groups) or "none: declare them in the type's poll_groups, e.g. {slow: 60}"
            raise ConfigError(
                where.file,
                line,
                where.key(f"{name}.poll_group"),
                f"unknown poll group (this type's groups: {known})",
                p.poll_group,
            )
        for a in range(p.address, p.address + p.size):
            other = owner.get((p.table, a))
            if other is not None:
                raw = where.mapping.get(name)
                line = raw.line_of("address") if isinstance(raw, LocMap) else where.line_of(name)
                raise ConfigError(
                    where.file,
                    line,
                    where.key(f"{name}.address"),
                    f"overlaps point {other!r} at {TABLE_NAMES[p.table]} {a}",
                    p.address,
                )
            owner[(p.table, a)] = name


def check_devices(devices: Sequence[DeviceSite]) -> None:
    """Two devices may not share an address (host:port or serial line, and unit): that would be
    one device under two names, polled twice. Devices on one serial line agree on its settings."""
    by_identity: dict[tuple, DeviceSite] = {}
    line_first: dict[tuple, DeviceSite] = {}  # serial line -> first device on it
    for d in devices:
        ep: ModbusEndpoint = d.io
        other = by_identity.get(ep.identity)
        if other is not None:
            raise d.fields.error(
                "endpoint",
                f"same device address as {other.name} (declared at {other.source}): one device under two names?",
                d.fields.mapping.get("endpoint"),
            )
        line = ep.line
        if line is not None:
            first = line_first.setdefault(line[0], d)
            if first.io.line[1] != line[1]:
                raise d.fields.error(
                    "endpoint",
                    f"same serial line as {first.name} "
                    f"(declared at {first.source}) with other settings: {ep.line_settings_text} "
                    f"here, {first.io.line_settings_text} there",
                    d.fields.mapping.get("endpoint"),
                )
        by_identity[ep.identity] = d
