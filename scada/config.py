"""tags.yaml, alarms.yaml and operations.yaml -> frozen, typed configuration, or one loud, located error.

tags.yaml declares *equipment types* (templates of points) and *devices* that instantiate
them, listed in the YAML or imported from CSV inventories (a GIS export). Tag names are
paths ``<commune>/<class>/<device>/<point>``; tag ids are dense and follow the order of
devices, and a device's points are contiguous ids starting at ``Device.first_tag_id``.

Every error names the file, the line, the key and the offending value; duplicates and
unknown keys are errors; nothing is skipped. The result is built completely before it is
returned, so a running server never sees a half-applied configuration.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from common.fields import (
    Fields,
    Key,
    KeyTable,
    Schema,
    converter,
    in_range,
    non_negative,
    object_schema,
    positive,
    ref_list,
    ref_map,
    schema_of,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
)
from common.yamlsrc import ConfigError, LocList, LocMap, decode_utf8, load
from scada.alarms import config as alarms_config
from scada.control import config as control_config
from scada.control.model import ControlConfig
from scada.driver_api import DeviceSite, DriverConfig, Drivers
from scada.operations import config as operations_config
from scada.operations.model import OperationsConfig
from scada.tagdb import ANALOG, DISCRETE, TEXT

TAGS_FILE = "tags.yaml"
ALARMS_FILE = "alarms.yaml"
OPERATIONS_FILE = "operations.yaml"


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of an equipment type, common part plus the driver's own (``io``)."""

    name: str
    kind: int  # tagdb.ANALOG, DISCRETE or TEXT
    io: Any
    unit: str = ""
    description: str = ""
    deadband: float = 0.0
    writable: bool = False
    range: tuple[float, float] | None = None
    enum: tuple[tuple[int, str], ...] | None = None  # value -> label, for discrete states
    max_age: float = 0.0  # s: a Good value older than this turns Uncertain_LastUsableValue (0: never)
    history: bool = True  # recorded by the historian
    history_deviation: float | None = None  # % of the point's span; None: the type's


# Every device's diagnostic tags, kept by its driver (scada/diagnostics.py), under the
# device's "Diagnostics" object: <commune>/<class>/<device>/Diagnostics/<point>. Their ids
# follow all the process tags', DIAG_COUNT per device in device order.
DIAG_FOLDER = "Diagnostics"
DIAG_STATES = ((0, "not_connected"), (1, "online"), (2, "offline"), (3, "demoted"))
DIAG_POINTS: tuple[PointDef, ...] = (
    PointDef("state", DISCRETE, None, enum=DIAG_STATES, description="Communication state of the device"),
    PointDef("successes", ANALOG, None, description="Successful polls or messages since the server started"),
    PointDef("failures", ANALOG, None, description="Failed polls, refused connections and rejected messages"),
    PointDef("rtt", ANALOG, None, unit="ms", description="Round-trip time of the last poll"),
    PointDef(
        "demoted",
        DISCRETE,
        None,
        description="Taken off scan after consecutive failures, so that it cannot slow the others",
    ),
    PointDef("last_error", TEXT, None, description="The last communication error"),
)
DIAG_COUNT = len(DIAG_POINTS)

# Every device whose type has commands (tags.yaml ``commands:``) also has these tags, kept by the
# command pipeline (scada/control/), under its "Control" object:
# <commune>/<class>/<device>/Control/<point>. Their ids follow the diagnostic tags', CONTROL_COUNT
# per such device in device order. The time of the last command is its tags' source timestamp.
CONTROL_FOLDER = "Control"
CONTROL_STATES = ((0, "idle"), (1, "selected"), (2, "running"))
CONTROL_POINTS: tuple[PointDef, ...] = (
    PointDef(
        "state",
        DISCRETE,
        None,
        enum=CONTROL_STATES,
        description="idle; selected (select-before-operate, waiting for Operate); running (a command in progress)",
    ),
    PointDef("last_command", TEXT, None, description="The last command and its arguments"),
    PointDef("last_user", TEXT, None, description="Who sent the last command (Scheduler: a lighting schedule)"),
    PointDef("last_result", TEXT, None, description="The last command's result: its status code and message"),
)
CONTROL_COUNT = len(CONTROL_POINTS)


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """How a type's points are recorded (tags.yaml ``history:`` of an equipment type)."""

    enabled: bool = True
    deviation: float = 1.0  # % of a point's span: swinging-door compression of analog points
    max_interval: float = 0.0  # s: a value is stored at least this often (0: only on change)
    retention_days: float = 90.0  # raw values
    rollup_retention_days: float = 1095.0  # minute and hour minimum/maximum/mean/count


@dataclass(frozen=True, slots=True)
class EquipmentType:
    name: str
    cls: str  # the <class> segment of tag paths: lighting, traffic, bollard, ...
    driver: str
    points: tuple[PointDef, ...]
    poll_interval: float
    timeout: float
    description: str = ""
    io: Any = None  # the driver's type-level options (MQTT status topic, OPC UA namespace...)
    demote_after: int = 3  # consecutive failed polls that take a device off scan (0: never)
    demote_for: float = 10.0  # s off scan before the device is tried again
    history: HistorySettings = HistorySettings()

    def point(self, name: str) -> PointDef | None:
        return next((p for p in self.points if p.name == name), None)


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    type: str
    commune: str
    lat: float
    lon: float
    poll_interval: float
    timeout: float
    io: Any  # the driver's endpoint description
    first_tag_id: int
    source: str  # "file:line" where it was declared, for later messages
    description: str = ""
    demote_after: int = 3
    demote_for: float = 10.0
    index: int = 0  # position in Config.devices: where its diagnostic tags sit


@dataclass(frozen=True)
class Config:
    """The whole running configuration; immutable once loaded."""

    directory: Path
    types: Mapping[str, EquipmentType]
    devices: tuple[Device, ...]
    alarms: alarms_config.AlarmsConfig
    # tags.yaml's commands, interlocks, zones, schedules and control settings (scada/control/).
    control: ControlConfig = field(default_factory=ControlConfig)
    # operations.yaml: the contract, crews, dispatch, Open311 (no services: operations off).
    operations: OperationsConfig = field(default_factory=OperationsConfig)
    # The registry the types' drivers were read with, and from which the server builds them.
    drivers: Drivers = field(repr=False, compare=False, default_factory=dict)
    _device_index: Mapping[str, Device] = field(repr=False, default_factory=dict)

    @cached_property  # per device by diag_ids: a sum over the devices each time was quadratic (26 s at 280k tags)
    def tag_count(self) -> int:
        """Process tags (the points of every device), without the diagnostic tags."""
        return sum(len(self.types[d.type].points) for d in self.devices)

    @property
    def total_tag_count(self) -> int:
        """Every tag of the TagDB: process tags, DIAG_COUNT diagnostic tags per device, then
        CONTROL_COUNT control tags per controlled device."""
        return self.tag_count + DIAG_COUNT * len(self.devices) + CONTROL_COUNT * len(self.controlled)

    @cached_property
    def controlled(self) -> tuple[Device, ...]:
        """The devices whose type has commands, in device order: those with Control tags."""
        return tuple(d for d in self.devices if self.control.commands.get(d.type))

    @cached_property
    def _control_first(self) -> Mapping[str, int]:
        first = self.tag_count + DIAG_COUNT * len(self.devices)
        return {d.name: first + CONTROL_COUNT * k for k, d in enumerate(self.controlled)}

    def control_ids(self, device: Device) -> np.ndarray | None:
        """Ids of a device's control tags, in CONTROL_POINTS order; None: its type has no commands."""
        first = self._control_first.get(device.name)
        return None if first is None else np.arange(first, first + CONTROL_COUNT, dtype=np.int64)

    def diag_ids(self, device: Device) -> np.ndarray:
        """Ids of a device's diagnostic tags, in DIAG_POINTS order."""
        first = self.tag_count + DIAG_COUNT * device.index
        return np.arange(first, first + DIAG_COUNT, dtype=np.int64)

    def device(self, name: str) -> Device:
        return self._device_index[name]

    def tag_name(self, device: Device, point: PointDef) -> str:
        return f"{device.commune}/{self.types[device.type].cls}/{device.name}/{point.name}"

    def tag_ids(self, device: Device) -> np.ndarray:
        n = len(self.types[device.type].points)
        return np.arange(device.first_tag_id, device.first_tag_id + n, dtype=np.int64)

    def tag_table(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names, kinds and deadbands of every tag, in tag-id order: what TagDB needs."""
        names: list[str] = []
        kinds: list[int] = []
        deadbands: list[float] = []
        for d in self.devices:
            t = self.types[d.type]
            prefix = f"{d.commune}/{t.cls}/{d.name}/"
            names.extend(prefix + p.name for p in t.points)
            kinds.extend(p.kind for p in t.points)
            deadbands.extend(p.deadband for p in t.points)
        for d in self.devices:
            prefix = f"{d.commune}/{self.types[d.type].cls}/{d.name}/{DIAG_FOLDER}/"
            names.extend(prefix + p.name for p in DIAG_POINTS)
            kinds.extend(p.kind for p in DIAG_POINTS)
            deadbands.extend(p.deadband for p in DIAG_POINTS)
        for d in self.controlled:
            prefix = f"{d.commune}/{self.types[d.type].cls}/{d.name}/{CONTROL_FOLDER}/"
            names.extend(prefix + p.name for p in CONTROL_POINTS)
            kinds.extend(p.kind for p in CONTROL_POINTS)
            deadbands.extend(p.deadband for p in CONTROL_POINTS)
        return names, np.asarray(kinds, np.uint8), np.asarray(deadbands, np.float64)

    def point_defs(self) -> list[PointDef]:
        """The PointDef of every tag, in tag-id order (diagnostic tags included)."""
        out = [p for d in self.devices for p in self.types[d.type].points]
        out.extend(DIAG_POINTS * len(self.devices))
        out.extend(CONTROL_POINTS * len(self.controlled))
        return out

    def history_table(self) -> dict[str, np.ndarray]:
        """Per tag, in tag-id order: what the historian records and how.

        ``enabled`` (bool), ``deviation`` (absolute swinging-door deviation in engineering
        units: the percent of the point's ``range``; 0 without a range, so every change
        beyond the deadband is kept), ``deadband``, ``kind``, ``max_interval_ns``, and
        ``type_index`` (index into ``list(self.types)``, the retention class). Diagnostic
        tags: only ``state`` and ``demoted`` are recorded (availability is computed from
        them); the counters change every second and are not worth their disk.
        """
        enabled, deviation, deadband, kind, interval, type_index = [], [], [], [], [], []
        type_names = list(self.types)
        for d in self.devices:
            t = self.types[d.type]
            h = t.history
            ti = type_names.index(d.type)
            for p in t.points:
                enabled.append(h.enabled and p.history)
                pct = h.deviation if p.history_deviation is None else p.history_deviation
                span = (p.range[1] - p.range[0]) if p.range else 0.0
                deviation.append(pct / 100.0 * span if p.kind == ANALOG else 0.0)
                deadband.append(p.deadband)
                kind.append(p.kind)
                interval.append(int(h.max_interval * 1e9))
                type_index.append(ti)
        for d in self.devices:
            ti = type_names.index(d.type)
            for p in DIAG_POINTS:
                enabled.append(p.name in ("state", "demoted"))
                deviation.append(0.0)
                deadband.append(0.0)
                kind.append(p.kind)
                interval.append(0)
                type_index.append(ti)
        for d in self.controlled:  # every command's trace is kept
            ti = type_names.index(d.type)
            for p in CONTROL_POINTS:
                enabled.append(True)
                deviation.append(0.0)
                deadband.append(0.0)
                kind.append(p.kind)
                interval.append(0)
                type_index.append(ti)
        return {
            "enabled": np.array(enabled, bool),
            "deviation": np.array(deviation, np.float64),
            "deadband": np.array(deadband, np.float64),
            "kind": np.array(kind, np.uint8),
            "max_interval_ns": np.array(interval, np.int64),
            "type_index": np.array(type_index, np.int32),
        }

    def max_ages(self) -> np.ndarray:
        """Each tag's max_age in seconds, in tag-id order (0: never stale; diagnostic tags never are)."""
        out: list[float] = []
        for d in self.devices:
            out.extend(p.max_age for p in self.types[d.type].points)
        out.extend([0.0] * (DIAG_COUNT * len(self.devices) + CONTROL_COUNT * len(self.controlled)))
        return np.asarray(out, np.float64)

    def summary(self) -> str:
        """Devices and tags per equipment type, as `scada check` prints it."""
        per_type = Counter(d.type for d in self.devices)
        lines = [f"{'equipment type':<24} {'driver':<8} {'devices':>8} {'tags':>10}"]
        for name, t in self.types.items():
            n = per_type.get(name, 0)
            lines.append(f"{name:<24} {t.driver:<8} {n:>8} {n * len(t.points):>10}")
        lines.append(f"{'total':<24} {'':<8} {len(self.devices):>8} {self.tag_count:>10}")
        communes = len({d.commune for d in self.devices})
        lines.append(
            f"{communes} communes; {len(self.alarms.alarms)} alarm definitions, {len(self.alarms.services)} services"
        )
        lines.extend(self.control_summary())
        lines.extend(operations_config.summary(self.operations))
        return "\n".join(lines)

    def control_summary(self) -> list[str]:
        """The commands of each type (role, select-before-operate, interlocks), zones and schedules."""
        c = self.control
        lines = []
        for tname, commands in c.commands.items():
            lines.append(f"commands of {tname}:")
            for cmd in commands.values():
                args = ", ".join(a.name for a in cmd.arguments)
                notes = [cmd.role] + (["select-before-operate"] if cmd.critical else [])
                if cmd.emergency:
                    notes.append("emergency")
                if cmd.interlocks:
                    notes.append("interlocks " + ", ".join(cmd.interlocks))
                lines.append(f"  {cmd.name}({args})  [{'; '.join(notes)}]")
        if c.commands:
            zones = ", ".join(c.zones) or "none"
            schedules = ", ".join(s.name for s in c.schedules) or "none"
            lines.append(f"{len(self.controlled)} controlled devices; zones: {zones}; schedules: {schedules}")
        return lines


# The keys of each section of tags.yaml, read through these tables (Fields.read) and walked
# by `scada schema` (scada/schema.py) to write scada/schemas/tags.schema.json.

FREE_TEXT = "Free text shown to operators."
_NAME_SCHEMA = schema_of(to_name)


@converter(
    {
        "type": "string",
        "pattern": "^[^/]*[^/\\s][^/]*$",
        "patternErrorMessage": "a commune name is not empty and has no '/'",
    }
)
def _to_commune(v: Any) -> str:
    s = to_str(v).strip()
    if not s or "/" in s:
        raise ValueError("a commune name is not empty and has no '/'")
    return s


_demote_for = positive(to_float, "must be greater than 0 (to never take a device off scan, write demote_after: 0)")

HISTORY_KEYS: KeyTable = {
    "enabled": Key(to_bool, "false: the type's points are not recorded (default true).", True),
    "deviation": Key(
        in_range(to_float, 0, 100),
        "Swinging-door deviation in percent of a point's range (0-100, default 1): a value is stored only when the signal leaves the band a straight line through the stored values allows. 0 keeps every change beyond the deadband.",
        1.0,
    ),
    "max_interval": Key(
        non_negative(to_float),
        "Seconds: a value is stored at least this often even if it did not change (0, default: only on change).",
        0.0,
    ),
    "retention_days": Key(positive(to_float), "Days raw values are kept (> 0, default 90).", 90.0),
    "rollup_retention_days": Key(
        positive(to_float),
        "Days the minute and hour rollups (minimum, maximum, mean, count) are kept (> 0, default 1095; at least retention_days).",
        1095.0,
    ),
}
TYPE_KEYS: KeyTable = {
    "class": Key(
        to_name,
        "Class of equipment: the second segment of tag names (<commune>/<class>/<device>/<point>).",
        what="the class segment of tag paths, e.g. lighting",
        examples=("lighting", "traffic", "bollard"),
    ),
    "driver": Key(
        to_str,
        "Protocol driver that reads and commands devices of this type. It decides which keys a point, the type itself and a device take.",
    ),  # `scada schema` lists the drivers it is given
    "points": Key(
        None,
        "Points by name (the last segment of tag names). The keys a point takes depend on the driver: table and address (modbus), topic and json (mqtt), node (opcua).",
        schema={"type": "object", "minProperties": 1, "propertyNames": _NAME_SCHEMA},
    ),
    "poll_interval": Key(
        positive(to_float),
        "Seconds between two polls of each device of this type (> 0). A device may override it. Modbus polls; MQTT and OPC UA devices report by themselves (subscriptions), so it has no effect there.",
        1.0,
    ),
    "timeout": Key(
        positive(to_float),
        "Seconds to wait for an answer before the device counts as silent (> 0). A device may override it.",
        1.0,
    ),
    "description": Key(to_str, FREE_TEXT, ""),
    "demote_after": Key(
        non_negative(to_int),
        "Failed polls in a row after which a device is taken off scan for demote_for seconds (a whole number >= 0, default 3; 0: never). A dead unit behind a gateway or on a serial line then stops costing the devices sharing its line a timeout every cycle. Its Diagnostics/demoted tag reads 1 while it is off scan. A device may override it.",
        3,
    ),
    "demote_for": Key(
        _demote_for,
        "Seconds a device stays off scan once demote_after polls in a row have failed (> 0, default 10). Then it is polled again; one more failure takes it off scan again, the first answer puts it back on scan. A device may override it.",
        10.0,
    ),
    "history": Key(
        None,
        "How the historian records this type's points: swinging-door compression of analog points with a deviation in percent of each point's range (points without a range keep every change beyond their deadband), discrete and text points on every change, an optional heartbeat, and how long raw values and rollups are kept. `history: false` records none of them.",
        None,
        schema={"oneOf": [{"const": False}, object_schema(HISTORY_KEYS)]},
    ),
    "commands": Key(
        None,
        "Commands by name, offered on every device of this type (OPC UA methods): arguments, the points written, the read-back that confirms, the role needed, select-before-operate, interlocks (README, Commands).",
        None,
        schema=control_config.COMMANDS_SCHEMA,
    ),
    "interlocks": Key(
        None,
        "Interlocks by name: conditions over the device's points (and other devices' by alias) that must hold for the commands naming them to go.",
        None,
        schema=control_config.INTERLOCKS_SCHEMA,
    ),
}
COMMON_POINT_KEYS: KeyTable = {
    "unit": Key(to_str, "Engineering unit shown to operators (quote '%').", "", examples=("V", "kW", "%")),
    "description": Key(to_str, FREE_TEXT, ""),
    "deadband": Key(
        non_negative(to_float),
        "Smallest change, in engineering units, reported as a new value (>= 0; 0 reports every change).",
        0.0,
    ),
    "writable": Key(to_bool, "Whether operators may command this point: true or false.", False),
    "range": Key(
        None,
        "[min, max] of meaningful values in engineering units, min below max. Writes outside it are refused.",
        None,
        schema={"type": "array", "items": schema_of(to_float), "minItems": 2, "maxItems": 2},
    ),
    "enum": Key(
        None,
        "Labels of the values of a state point: integer value -> label (a name). Makes the point discrete. Quote labels YAML would read as booleans: 'on', 'off', 'yes', 'no', 'true', 'false'.",
        None,
        schema={
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[-+]?[0-9]+$", "patternErrorMessage": "a state value is an integer"},
            "additionalProperties": _NAME_SCHEMA,
        },
    ),
    "max_age": Key(
        non_negative(to_float),
        "Seconds after which a Good value that has not been reported again turns Uncertain_LastUsableValue (0 or absent: never). For devices that report on their own (MQTT trackers) and can go quiet without losing their link.",
        0.0,
    ),
    "history": Key(to_bool, "false: this point is not recorded by the historian (default true).", True),
    "history_deviation": Key(
        in_range(to_float, 0, 100),
        "Swinging-door deviation of this analog point in percent of its range (0-100), instead of its type's history.deviation.",
        None,
    ),
}
COMMON_DEVICE_KEYS: KeyTable = {
    "name": Key(to_name, "Unique device name: the third segment of its tag names.", what="the device's unique name"),
    "type": Key(
        to_str,
        "The device's equipment type: one of the names under equipment_types.",
        what="an equipment type",
        schema=_NAME_SCHEMA,
    ),
    "commune": Key(
        _to_commune,
        "Commune the device stands in: the first segment of its tag names. Any text without '/'.",
        examples=("Dijon", "Chenôve", "Bressey-sur-Tille"),
    ),
    "lat": Key(
        in_range(to_float, -90, 90), "Latitude in decimal degrees (WGS84), -90 to 90.", what="latitude in degrees"
    ),
    "lon": Key(
        in_range(to_float, -180, 180), "Longitude in decimal degrees (WGS84), -180 to 180.", what="longitude in degrees"
    ),
    "poll_interval": Key(
        positive(to_float),
        "Seconds between two polls of this device (> 0); defaults to its type's poll_interval.",
        None,
    ),
    "timeout": Key(positive(to_float), "Seconds to wait for an answer (> 0); defaults to its type's timeout.", None),
    "description": Key(to_str, FREE_TEXT, ""),
    "demote_after": Key(
        non_negative(to_int),
        "Failed polls in a row after which this device is taken off scan for demote_for seconds (a whole number >= 0; 0: never); defaults to its type's demote_after (3 when the type does not say).",
        None,
    ),
    "demote_for": Key(
        _demote_for,
        "Seconds this device stays off scan once demote_after polls in a row have failed (> 0); defaults to its type's demote_for (10 when the type does not say).",
        None,
    ),
}
INVENTORY_KEYS: KeyTable = {
    "file": Key(
        to_str,
        "Path of the CSV file, relative to tags.yaml. Header line: device keys (name, type, commune, lat, lon, endpoint, unit, poll_interval, timeout, description, demote_after, demote_for; baudrate, parity, stop_bits for a serial line); empty cells are absent.",
        what="path of a CSV file, relative to tags.yaml",
        schema={"type": "string", "minLength": 1},
    ),
    "type": Key(to_str, "Equipment type of rows without a `type` column or cell.", None, schema=_NAME_SCHEMA),
    "commune": Key(
        to_str,
        "Commune of rows without a `commune` column or cell. Any text without '/'.",
        None,
        schema=schema_of(_to_commune),
    ),
}
# The top level: the schema generator supplies the definitions these refer to.
TAGS_KEYS: KeyTable = {
    "equipment_types": Key(
        None,
        "Equipment types by name: templates of points shared by every device of the type.",
        schema={
            "type": "object",
            "minProperties": 1,
            **ref_map("equipmentType"),
        },
    ),
    "devices": Key(
        None,
        "Devices listed here, one mapping each. Devices can also (or instead) be imported from CSV files under `inventories`.",
        None,
        schema=ref_list("device"),
    ),
    "inventories": Key(
        None,
        "CSV inventories (a GIS export) to import devices from. A CSV has a header line naming device keys (name, type, commune, lat, lon, endpoint, unit, ...) and one device per line; lines starting with '#' are comments.",
        None,
        schema={"type": "array", "items": {"$ref": "#/definitions/inventory"}},
    ),
    "control": Key(
        None,
        "Settings of supervisory control: select-before-operate time, rate limits per user and per device, group fan-out, the schedules' time zone.",
        None,
        schema=control_config.CONTROL_SCHEMA,
    ),
    "zones": Key(
        None,
        "Named zones for group actions (OpenZone, CloseZone, DimAll, SetCorridorPlan) and schedules: listed devices, or a circle or a polygon over the devices' coordinates.",
        None,
        schema=control_config.ZONES_SCHEMA,
    ),
    "schedules": Key(
        None,
        "Lighting schedules: daily steps at times relative to sunset and sunrise or at clock times, each a command run on the cabinets of communes or zones.",
        None,
        schema=control_config.SCHEDULES_SCHEMA,
    ),
}
# load_tags: "no devices: list some under devices or import them under inventories".
TAGS_RULES: tuple[Schema, ...] = (
    {
        "anyOf": [
            {"required": ["devices"], "properties": {"devices": {"type": "array", "minItems": 1}}},
            {"required": ["inventories"], "properties": {"inventories": {"type": "array", "minItems": 1}}},
        ]
    },
)


def _parse_history(raw: Any, f: Fields) -> HistorySettings:
    if raw is False:
        return HistorySettings(enabled=False)
    h = Fields(raw, f.key("history"), f.file, f.line_of("history"))
    settings = HistorySettings(
        enabled=h.read(HISTORY_KEYS, "enabled"),
        deviation=h.read(HISTORY_KEYS, "deviation"),
        max_interval=h.read(HISTORY_KEYS, "max_interval"),
        retention_days=h.read(HISTORY_KEYS, "retention_days"),
        rollup_retention_days=h.read(HISTORY_KEYS, "rollup_retention_days"),
    )
    h.done(HISTORY_KEYS)
    if settings.rollup_retention_days < settings.retention_days:
        raise h.error(
            "rollup_retention_days",
            f"rollups are kept at least as long as raw values (retention_days: {settings.retention_days:g})",
            settings.rollup_retention_days,
        )
    return settings


def _parse_enum(raw: Any, f: Fields) -> tuple[tuple[int, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise f.error("enum", "expected a mapping of integer values to labels, e.g. {0: auto, 1: forced_on}", raw)
    out = []
    for k, v in raw.items():
        line = raw.line_of(k) if isinstance(raw, LocMap) else f.line_of("enum")
        try:
            value = to_int(k)
        except ValueError:
            raise ConfigError(
                f.file, line, f.key(f"enum.{k}"), "an enum maps integer values to labels, e.g. {0: auto}", k
            ) from None
        try:
            out.append((value, to_name(v)))
        except ValueError as exc:
            raise ConfigError(f.file, line, f.key(f"enum.{k}"), str(exc), v) from None
    return tuple(sorted(out))


def _parse_range(raw: Any, f: Fields) -> tuple[float, float]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise f.error("range", "expected [min, max]", raw)
    try:
        lo, hi = to_float(raw[0]), to_float(raw[1])
    except ValueError as exc:
        raise f.error("range", str(exc), raw) from None
    if lo >= hi:
        raise f.error("range", "min must be below max", raw)
    return lo, hi


def _parse_point(name: str, raw: Any, path: str, file: str, line: int | None, drv: DriverConfig) -> PointDef:
    f = Fields(raw, path, file, line)
    unknown_hint = sorted(set(COMMON_POINT_KEYS) | set(drv.POINT_KEYS))
    for key in raw:
        if key not in COMMON_POINT_KEYS and key not in drv.POINT_KEYS:
            raise f.unknown_key(key, unknown_hint)
    io = drv.parse_point(f)
    enum = _parse_enum(f.sub("enum"), f) if f.has("enum") else None
    rng = _parse_range(f.sub("range"), f) if f.has("range") else None
    point = PointDef(
        name=name,
        kind=DISCRETE if enum else io.kind,
        io=io,
        unit=f.read(COMMON_POINT_KEYS, "unit"),
        description=f.read(COMMON_POINT_KEYS, "description"),
        deadband=f.read(COMMON_POINT_KEYS, "deadband"),
        max_age=f.read(COMMON_POINT_KEYS, "max_age"),
        writable=f.read(COMMON_POINT_KEYS, "writable"),
        range=rng,
        enum=enum,
        history=f.read(COMMON_POINT_KEYS, "history"),
        history_deviation=f.read(COMMON_POINT_KEYS, "history_deviation"),
    )
    if point.history_deviation is not None and point.kind != ANALOG:
        raise f.error(
            "history_deviation",
            "only analog points are compressed (discrete and text points are recorded on every change)",
            point.history_deviation,
        )
    if point.writable and not io.writable_ok:
        raise f.error("writable", io.not_writable_reason, True)
    if io.needs_command_enum and not (point.writable and point.enum):
        raise f.error(
            "enum" if point.writable else "writable",
            "a command point is writable and lists its commands: writable: true, enum: {0: lower, ...}",
            point.enum is not None if point.writable else point.writable,
        )
    if point.kind == TEXT and point.deadband:
        raise f.error("deadband", "a text point has no deadband", point.deadband)
    f.done(unknown_hint)
    return point


def _parse_type(
    name: str, raw: Any, file: str, line: int, drivers: Drivers, control: control_config.ControlReader
) -> EquipmentType:
    path = f"equipment_types.{name}"
    f = Fields(raw, path, file, line)
    driver = f.take("driver", to_str, what=f"one of {', '.join(drivers)}")
    if driver not in drivers:
        raise f.error("driver", f"unknown driver (known drivers: {', '.join(drivers)})", driver)
    drv = drivers[driver].config
    raw_points = f.sub("points")
    if not isinstance(raw_points, dict) or not raw_points:
        raise f.error("points", "expected a mapping of point names to their definitions", raw_points)
    pf = Fields(raw_points, f"{path}.points", file, f.line_of("points"))
    points: list[PointDef] = []
    for pname, praw in raw_points.items():
        try:
            pname = to_name(pname)
        except ValueError as exc:
            raise pf.error(str(pname), str(exc), pname) from None
        points.append(_parse_point(pname, praw, f"{path}.points.{pname}", file, pf.line_of(pname), drv))
        pf.take(pname, lambda v: v)
    io = drv.parse_type(f)
    drv.check_type(name, {p.name: p.io for p in points}, pf, io)
    t = EquipmentType(
        name=name,
        cls=f.read(TYPE_KEYS, "class"),
        driver=driver,
        points=tuple(points),
        poll_interval=f.read(TYPE_KEYS, "poll_interval"),
        timeout=f.read(TYPE_KEYS, "timeout"),
        description=f.read(TYPE_KEYS, "description"),
        io=io,
        demote_after=f.read(TYPE_KEYS, "demote_after"),
        demote_for=f.read(TYPE_KEYS, "demote_for"),
        history=_parse_history(f.sub("history"), f) if f.has("history") else HistorySettings(),
    )
    control.read_type(f, t)
    f.done((*TYPE_KEYS, *drv.TYPE_KEYS))
    return t


def _parse_device(
    raw: Any,
    path: str,
    file: str,
    line: int,
    types: Mapping[str, EquipmentType],
    first_tag_id: int,
    index: int,
    drivers: Drivers,
) -> Device:
    f = Fields(raw, path, file, line)
    name = f.read(COMMON_DEVICE_KEYS, "name")
    tname = f.read(COMMON_DEVICE_KEYS, "type")
    if tname not in types:
        raise f.error("type", f"unknown equipment type (known types: {', '.join(types) or 'none'})", tname)
    t = types[tname]
    drv = drivers[t.driver].config
    allowed = sorted(set(COMMON_DEVICE_KEYS) | set(drv.DEVICE_KEYS))
    for key in raw:
        if key not in allowed:
            raise f.unknown_key(key, allowed)
    io = drv.parse_device(f)
    device = Device(
        name=name,
        type=tname,
        commune=f.read(COMMON_DEVICE_KEYS, "commune"),
        lat=f.read(COMMON_DEVICE_KEYS, "lat"),
        lon=f.read(COMMON_DEVICE_KEYS, "lon"),
        poll_interval=f.read(COMMON_DEVICE_KEYS, "poll_interval", default=t.poll_interval),
        timeout=f.read(COMMON_DEVICE_KEYS, "timeout", default=t.timeout),
        io=io,
        first_tag_id=first_tag_id,
        index=index,
        source=f"{file}:{line}",
        description=f.read(COMMON_DEVICE_KEYS, "description"),
        demote_after=f.read(COMMON_DEVICE_KEYS, "demote_after", default=t.demote_after),
        demote_for=f.read(COMMON_DEVICE_KEYS, "demote_for", default=t.demote_for),
    )
    f.done(allowed)
    return device


def _csv_rows(path: Path, ref: Fields) -> list[tuple[dict, int]]:
    """Rows of a CSV inventory with their line numbers; '#' lines are comments.

    Each line is one device and is parsed on its own: a quote left open would otherwise swallow
    the lines after it into one value, and every later error would name the wrong line.
    """
    if not path.is_file():
        raise ref.error("file", f"inventory file not found: {path}", ref.mapping["file"])
    try:
        data = path.read_bytes()
    except OSError as exc:  # unreadable (permissions, I/O error...): a located error, not a traceback
        raise ConfigError(path, None, "", f"inventory cannot be read: {exc.strerror or exc}") from None
    text = decode_utf8(data, path)
    lines = [
        (i, ln)
        for i, ln in enumerate(io.StringIO(text, newline=""), 1)
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        raise ConfigError(path, None, "", "inventory is empty: expected a header line and devices")
    header = [h.strip() for h in _csv_line(path, *lines[0])]
    dup = [h for h, n in Counter(header).items() if n > 1]
    if dup:
        raise ConfigError(path, lines[0][0], dup[0], "duplicate column", dup[0])
    rows = []
    for lineno, text in lines[1:]:
        cells = _csv_line(path, lineno, text)
        if len(cells) != len(header):
            hint = " (quote a value that holds a comma; decimals take a point)" if len(cells) > len(header) else ""
            raise ConfigError(
                path,
                lineno,
                "",
                f"expected {len(header)} columns ({', '.join(header)}), found {len(cells)}{hint}",
                text.rstrip("\r\n"),
            )
        rows.append(({h: c.strip() for h, c in zip(header, cells) if c.strip() != ""}, lineno))
    return rows


def _csv_line(path: Path, lineno: int, text: str) -> list[str]:
    """The cells of one CSV line, or a ConfigError at that line (unclosed quote, NUL bytes...)."""
    line = text.rstrip("\r\n")
    if "\x00" in line:  # UTF-8 text never holds NULs; UTF-16 text without its BOM is full of them
        raise ConfigError(
            path,
            lineno,
            "",
            "NUL bytes in the line (a file saved as UTF-16, or not a text file? save it as UTF-8 CSV)",
            line,
        )
    try:
        return next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise ConfigError(
                path,
                lineno,
                "",
                'a quote (") opens a value that is not closed on this line (one device per line: close the quote)',
                line,
            ) from None
        raise ConfigError(
            path, lineno, "", f'not a valid CSV line: {exc} (a quote inside a quoted value is written twice: "")', line
        ) from None


def _inventory_devices(
    raw: Any, f: Fields, directory: Path, types: Mapping[str, EquipmentType]
) -> list[tuple[dict, str, str, int]]:
    if not isinstance(raw, list):
        raise f.error("inventories", "expected a list of {file: path.csv, type: default type}", raw)
    out = []
    for i, item in enumerate(raw):
        inv = Fields(item, f"inventories[{i}]", f.file, raw.line_of(i) if isinstance(raw, LocList) else f.line)
        rel = inv.read(INVENTORY_KEYS, "file")
        default_type = inv.read(INVENTORY_KEYS, "type")
        default_commune = inv.read(INVENTORY_KEYS, "commune")
        inv.done(INVENTORY_KEYS)
        if default_type is not None and default_type not in types:  # blamed here, not on each CSV row
            raise inv.error("type", f"unknown equipment type (known types: {', '.join(types)})", default_type)
        path = directory / rel
        for row, lineno in _csv_rows(path, inv):
            if default_type and "type" not in row:
                row["type"] = default_type
            if default_commune and "commune" not in row:
                row["commune"] = default_commune
            out.append((row, "", str(path), lineno))
    return out


def load_tags(
    path: Path, drivers: Drivers, alarms_path: Path | None = None, operations_path: Path | None = None
) -> Config:
    """Read tags.yaml (and alarms.yaml, operations.yaml) with the driver plugins ``drivers`` (name -> plugin)."""
    file = str(path)
    doc = load(path)
    if doc is None:
        raise ConfigError(file, None, "", "the file is empty (or only comments): expected equipment_types and devices")
    if not isinstance(doc, LocMap):
        raise ConfigError(file, getattr(doc, "line", 1), "", "expected a mapping with equipment_types and devices", doc)
    top = Fields(doc, "", file, 1)
    raw_types = top.sub("equipment_types")
    if not isinstance(raw_types, LocMap) or not raw_types:  # the YAML loader's mappings are LocMaps
        raise top.error("equipment_types", "expected a mapping of equipment type names to definitions", raw_types)
    types: dict[str, EquipmentType] = {}
    control = control_config.ControlReader()
    for tname, traw in raw_types.items():
        try:
            tname = to_name(tname)
        except ValueError as exc:
            raise ConfigError(file, raw_types.line_of(tname), f"equipment_types.{tname}", str(exc)) from None
        types[tname] = _parse_type(tname, traw, file, raw_types.line_of(tname), drivers, control)

    entries: list[tuple[Any, str, str, int]] = []
    raw_devices = top.sub("devices")
    if raw_devices is not None:
        if not isinstance(raw_devices, LocList):  # the YAML loader's sequences are LocLists
            raise top.error("devices", "expected a list of devices", raw_devices)
        entries += [(d, f"devices[{i}]", file, raw_devices.line_of(i)) for i, d in enumerate(raw_devices)]
    if top.has("inventories"):
        entries += _inventory_devices(top.sub("inventories"), top, path.parent, types)
    for key in ("control", "zones", "schedules"):  # read once the devices are: control.finish below
        top.sub(key)
    top.done(TAGS_KEYS)
    if not entries:
        raise top.error("devices", "no devices: list some under devices or import them under inventories")

    devices: list[Device] = []
    seen: dict[str, str] = {}
    sites: dict[str, list[DeviceSite]] = {name: [] for name in drivers}  # for each driver's device check
    next_id = 0
    for raw, where, dfile, line_no in entries:
        try:
            d = _parse_device(raw, where, dfile, line_no, types, next_id, len(devices), drivers)
            if d.name in seen:
                prefix = f"{where}." if where else ""
                name_line = raw.line_of("name") if isinstance(raw, LocMap) else line_no
                raise ConfigError(
                    dfile, name_line, f"{prefix}name", f"duplicate device (first declared at {seen[d.name]})", d.name
                )
        except ConfigError:
            # The drivers check devices together, once all are read; but an error among the
            # devices above this one comes first in the file, and is the one to report first.
            _check_devices(drivers, sites)
            raise
        seen[d.name] = d.source
        sites[types[d.type].driver].append(DeviceSite(d.name, d.io, d.source, Fields(raw, where, dfile, line_no)))
        devices.append(d)
        next_id += len(types[d.type].points)
    # Checks across devices belong to their driver: a Modbus address names one device, and
    # devices on one serial line agree on its settings; many devices share an MQTT broker.
    _check_devices(drivers, sites)
    device_index = MappingProxyType({d.name: d for d in devices})
    control_cfg = control.finish(top, types, devices, device_index)

    alarms = (
        alarms_config.load(alarms_path, types, devices)
        if alarms_path
        else alarms_config.AlarmsConfig((), MappingProxyType({}))
    )
    # After the alarms: it names their services, and tags.yaml's classes, devices and communes.
    operations = (
        operations_config.load(operations_path, types, devices, alarms) if operations_path else OperationsConfig()
    )
    return Config(
        directory=path.parent,
        types=MappingProxyType(types),
        devices=tuple(devices),
        alarms=alarms,
        control=control_cfg,
        operations=operations,
        drivers=drivers,
        _device_index=device_index,
    )


def _check_devices(drivers: Drivers, sites: Mapping[str, list[DeviceSite]]) -> None:
    """Each driver's checks across its devices (scada.driver_api.DriverConfig.check_devices)."""
    for name, plugin in drivers.items():
        plugin.config.check_devices(sites[name])


def load_config(directory: str | Path, drivers: Drivers) -> Config:
    """Load ``tags.yaml`` and (when present) ``alarms.yaml`` and ``operations.yaml`` from a configuration folder, with
    the driver plugins ``drivers`` (the registry, given by the composition point)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    tags = directory / TAGS_FILE
    if not tags.is_file():
        raise ConfigError(tags, None, "", f"no {TAGS_FILE} in {directory.resolve()}")
    alarms = directory / ALARMS_FILE
    operations = directory / OPERATIONS_FILE
    return load_tags(tags, drivers, alarms if alarms.is_file() else None, operations if operations.exists() else None)
