"""Modbus keys of tags.yaml: where each point lives in a device's tables, and how to reach it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.fields import (
    Fields,
    Key,
    KeyTable,
    Schema,
    converter,
    host_port_schema,
    in_range,
    one_of,
    one_of_int,
    parse_host_port,
    positive,
    schema_of,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
    when,
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
DEFAULT_GROUP = ""  # the points without poll_group: polled at the device's poll_interval
PARITIES = {"none": "N", "even": "E", "odd": "O"}
SERIAL_KEYS = ("baudrate", "parity", "stop_bits")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
# What `driver: modbus` means, for the editor's list of drivers.
SCHEMA_DESCRIPTION = (
    "Modbus TCP or RTU: points live in holding/input registers, coils or discrete inputs; devices have an "
    "endpoint (host:port, or rtu:///dev/ttyUSB0 for a serial line) and a unit id"
)


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
    def reports_back(self) -> bool:
        return self.readback

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


@converter({"type": "integer", "minimum": 0, "maximum": MAX_ADDRESS})
def _address(v: object) -> int:
    a = to_int(v)
    if not 0 <= a <= MAX_ADDRESS:
        hint = ""
        if 300001 <= a <= 365536 or 400001 <= a <= 465536:  # 6-digit Modicon reference, 1-based
            hint = f" (a Modicon reference? write the 0-based address: {a % 100000 - 1})"
        raise ValueError(f"must be between 0 and {MAX_ADDRESS}{hint}")
    return a


@converter({"type": "integer", "minimum": 0, "maximum": 125})
def _read_gap(v: object) -> int:
    gap = to_int(v)
    if not 0 <= gap <= 125:
        raise ValueError(
            "must be between 0 and 125 (unused registers or bits one request may read to merge two points)"
        )
    return gap


_BIT_TYPE_RULE = "a coil or discrete input holds single bits: its type must be bool (the default)"
POINT_KEYS: KeyTable = {
    "table": Key(one_of(*TABLES), "Modbus table the point lives in.", what="one of " + ", ".join(TABLES)),
    "address": Key(
        _address,
        "First register (or bit) address, 0-65535, counted from 0 as on the wire (register 40001 is holding address 0). A 32-bit type occupies this register and the next one.",
        what="register or bit address 0-65535",
    ),
    "type": Key(
        one_of(*DATA_TYPES),
        "Data type. coil and discrete points are bool (the default there); holding and input points are numbers (default uint16). int32, uint32 and float32 take two registers.",
        None,  # the default depends on the table (parse_point)
    ),
    "word_order": Key(
        one_of("big", "little"),
        "Order of the two registers of a 32-bit value: big = high word first (the Modbus convention), little = low word first. No effect on 16-bit and bool points.",
        "big",
    ),
    "scale": Key(
        to_float,
        "Multiplier from raw to engineering value (value = raw * scale + offset). Not 0.",
        1.0,
        schema={**schema_of(to_float), "not": {"const": 0}},
    ),
    "offset": Key(to_float, "Added after scaling (value = raw * scale + offset).", 0.0),
    "readback": Key(
        to_bool,
        "Confirm a write by reading the point back from the device (default true). false for a point the device resets by design, such as a 'write 1 to reset' coil.",
        True,
    ),
    "poll_group": Key(
        to_name,
        "Poll group of this point: one of the names under its type's poll_groups. The point is then polled at that group's interval instead of the device's poll_interval (absent: polled with the other points, at poll_interval). `scada check` checks the name exists.",
        DEFAULT_GROUP,
    ),
}
# parse_point's and the core's cross-key checks of a point, as the editor can see them.
POINT_RULES: tuple[Schema, ...] = (
    when(
        "table", {"enum": list(BIT_TABLES)}, {"properties": {"type": {"const": "bool", "description": _BIT_TYPE_RULE}}}
    ),
    when(
        "table",
        {"not": {"enum": list(BIT_TABLES)}},
        {"properties": {"type": {"enum": list(REGISTER_TYPES), "description": "a register holds numbers"}}},
    ),
    when(
        "type",
        {"enum": [t for t, n in REGISTER_TYPES.items() if n == 2]},
        {"properties": {"address": {"maximum": MAX_ADDRESS - 1}}},
    ),
    when(
        "table",
        {"enum": ["input", "discrete"]},
        {
            "properties": {
                "writable": {"const": False, "description": "input registers and discrete inputs are read-only"}
            }
        },
    ),
)
TYPE_KEYS: KeyTable = {
    "read_gap": Key(
        _read_gap,
        "Modbus only. Unused registers (or bits) one read may span to merge two neighbouring points into a single request (a whole number 0-125, default 8): fewer requests per poll. 0 merges only adjacent points; use it for a device that answers exception 02 (illegal data address) when a read covers addresses it does not have.",
        8,
    ),
    "poll_groups": Key(
        None,
        "Modbus only. Poll groups of this type: group name -> seconds between two polls of the group's points (> 0). A point joins a group with poll_group: e.g. {slow: 60} and poll_group: slow on an energy meter read once a minute. Points without a poll_group are polled at the device's poll_interval.",
        None,
        schema={
            "type": "object",
            "minProperties": 1,
            "propertyNames": schema_of(to_name),
            "additionalProperties": schema_of(positive(to_float)),
        },
    ),
}
_RTU = r"^\s*[Rr][Tt][Uu]://"
DEVICE_KEYS: KeyTable = {
    "endpoint": Key(
        to_str,
        "Modbus TCP: the device or its gateway as host:port, optionally prefixed tcp://, port 502 when omitted. Modbus RTU: the serial line as rtu:// followed by the serial device's absolute path, e.g. rtu:///dev/ttyUSB0 (three slashes; every device on one RS-485 line gives the same path and its own unit).",
        what="host:port, or rtu:///dev/ttyUSB0 for a serial line",
        examples=("10.20.1.15:502", "tcp://cabinet-17.lan:502", "[fd00::15]:502", "rtu:///dev/ttyUSB0"),
        schema={"anyOf": [host_port_schema(("tcp://",)), {"type": "string", "pattern": _RTU + r"/.*\S\s*$"}]},
    ),
    "unit": Key(
        in_range(to_int, 0, 255),  # 1-247 on a serial line: parse_device
        "Modbus only: unit (slave) id, default 1. Modbus TCP: 0-255; a gateway serves several units (1-247) on one endpoint, and a device that is not behind a gateway often answers to 0 or 255 (see its manual). Modbus RTU (rtu:// endpoint): 1-247, one per device on the serial line. An mqtt or opcua device has no unit.",
        1,
    ),
    "baudrate": Key(
        one_of_int(*BAUDRATES),
        "Modbus RTU only (rtu:// endpoint): speed of the serial line in bit/s, as set on the devices: 1200, 2400, 4800, 9600, 19200 (default), 38400, 57600 or 115200. Give every device on one line the same serial settings. Not allowed with a TCP endpoint.",
        19200,
    ),
    "parity": Key(
        one_of(*PARITIES),
        "Modbus RTU only (rtu:// endpoint): parity of the serial line, as set on the devices: even (default, the Modbus standard), odd or none. Not allowed with a TCP endpoint.",
        "even",
    ),
    "stop_bits": Key(
        one_of_int(1, 2),
        "Modbus RTU only (rtu:// endpoint): stop bits of the serial line, 1 (default) or 2, as set on the devices. Not allowed with a TCP endpoint.",
        1,
    ),
}
# parse_device: serial settings only on a serial line, where the unit is 1-247.
DEVICE_RULES: tuple[Schema, ...] = (
    when(
        "endpoint",
        {"type": "string", "pattern": _RTU},
        {"properties": {"unit": {"minimum": 1, "maximum": 247}}},
        {"properties": dict.fromkeys(SERIAL_KEYS, False)},
    ),
)


def parse_point(f: Fields) -> ModbusPoint:
    table = f.read(POINT_KEYS, "table")
    dtype = f.read(POINT_KEYS, "type", default="bool" if table in BIT_TABLES else "uint16")
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
    address = f.read(POINT_KEYS, "address")
    point = ModbusPoint(
        table=table,
        address=address,
        type=dtype,
        word_order=f.read(POINT_KEYS, "word_order"),
        scale=f.read(POINT_KEYS, "scale"),
        offset=f.read(POINT_KEYS, "offset"),
        readback=f.read(POINT_KEYS, "readback"),
        poll_group=f.read(POINT_KEYS, "poll_group"),
    )
    if address + point.size - 1 > MAX_ADDRESS:
        raise f.error("address", f"a {dtype} at this address runs past register {MAX_ADDRESS}", address)
    if point.scale == 0:
        raise f.error("scale", "must not be 0", point.scale)
    return point


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (or 'tcp://host:port'; port 502 when omitted; an IPv6 address in brackets)."""
    return parse_host_port(text, 502, ("tcp://",), "Modbus TCP: 502")


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
        read_gap=f.read(TYPE_KEYS, "read_gap"),
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
    text = f.read(DEVICE_KEYS, "endpoint")
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
        return ModbusEndpoint(host, port, f.read(DEVICE_KEYS, "unit"))
    return ModbusEndpoint(
        host,
        port,
        unit=f.read(DEVICE_KEYS, "unit", convert=in_range(to_int, 1, 247)),
        serial_port=serial_port,
        baudrate=f.read(DEVICE_KEYS, "baudrate"),
        parity=PARITIES[f.read(DEVICE_KEYS, "parity")],
        stop_bits=f.read(DEVICE_KEYS, "stop_bits"),
    )


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


# No cross-key rules of these sections for the schema (scada.driver_api.DriverConfig).
TYPE_RULES: tuple[Schema, ...] = ()
