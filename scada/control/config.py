"""tags.yaml's control sections -> :class:`~scada.control.model.ControlConfig`, or one located error.

Per equipment type, ``commands:`` and ``interlocks:`` (read with the type, against its points);
at the top level ``control:`` (settings), ``zones:`` and ``schedules:``. The format is the one
scada/control/model.py's docstring fixes; every key is declared once in a table below
(:class:`common.fields.Key`), which ``scada schema`` turns into the editor's JSON Schema.

What needs the devices (an interlock's ``inputs`` naming another device's tag, a zone's devices
and whether it contains any, a schedule's communes and zones) is checked by
:meth:`ControlReader.finish`, once every device is read. Each interlock is compiled once per
equipment type, never per device: a city's configuration loads as fast as before.

Extensions to the model's docstring (where it is silent): a datetime argument may be left out of
a schedule step (0: none); a schedule may not run a critical command (it cannot Select); an
emergency command (``emergency: true``: its own rate budgets) may not be critical; an
argument written to a point must fit the point (its range inside the point's, its enum values
among the point's); an interlock input may also name a Diagnostics tag
(``Dijon/traffic/J-DIJ-001/Diagnostics/state``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    one_of,
    positive,
    schema_of,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
    when,
)
from common.yamlsrc import ConfigError, LocList, LocMap
from scada.alarms.expr import ExpressionError, compile_expression
from scada.control.model import (
    ARG_TYPES,
    BAD_INVALID_STATE,
    INTERLOCK_STATUSES,
    WRITE,
    ArgDef,
    CommandDef,
    ControlConfig,
    ControlSettings,
    InterlockDef,
    RateLimit,
    ScheduleDef,
    ScheduleStep,
    Step,
    ZoneDef,
)
from scada.security.identity import ROLE_PERMISSIONS, Permission, Role
from scada.tagdb import DISCRETE, TEXT

if TYPE_CHECKING:
    from scada.config import Device, EquipmentType, PointDef

# The roles a command may require: those allowed to command at all.
COMMAND_ROLES = tuple(r.value for r in Role if Permission.COMMAND in ROLE_PERMISSIONS[r])
SCHEDULE_CLASSES = ("lighting",)  # what a schedule commands (ScheduleDef.classes)
MIN_TIMEOUT = 2.0  # s: the least default read-back timeout
EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG): a zone's circle is a few km at most
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an input's alias is a name in expressions
_AT = re.compile(
    r"^(?:(?P<anchor>sunset|sunrise)(?:(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))?|(?P<h>\d{2}):(?P<m>\d{2}))$"
)
# The same forms for the editor (ECMAScript: no named groups); the loader also checks the numbers.
AT_PATTERN = "^(?:(?:sunset|sunrise)(?:[+-][0-9]{2}:[0-9]{2})?|[0-9]{2}:[0-9]{2})$"
AT_FORMS = 'sunset, sunrise, "HH:MM" (local time), or sunset/sunrise with an offset: "sunset-00:30", "sunrise+00:15"'


@converter({"type": "string", "enum": list(COMMAND_ROLES)})
def _to_role(v: Any) -> str:
    s = to_str(v)
    if s not in COMMAND_ROLES:
        raise ValueError(f"the least role allowed to send the command: one of {', '.join(COMMAND_ROLES)}")
    return s


@converter({"type": "string", "enum": list(INTERLOCK_STATUSES)})
def _to_interlock_status(v: Any) -> int:
    s = to_str(v)
    if s not in INTERLOCK_STATUSES:
        raise ValueError(f"the refusal's status code: one of {', '.join(INTERLOCK_STATUSES)}")
    return INTERLOCK_STATUSES[s]


@converter({"type": "string"})
def _to_timezone(v: Any) -> str:
    s = to_str(v).strip()
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not a time zone this machine knows: an IANA name such as Europe/Paris") from None
    return s


_NUMBER_OR_TEXT: Schema = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}]}
_STEP_VALUES: Schema = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": schema_of(to_name),
    "additionalProperties": {
        **_NUMBER_OR_TEXT,
        "description": "A constant (a number, true/false, or one of the point's enum labels), or $argument: that argument's value.",
    },
}
_ENUM_SCHEMA: Schema = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"pattern": "^[-+]?[0-9]+$", "patternErrorMessage": "a value is an integer"},
    "additionalProperties": schema_of(to_name),
}
_RANGE_SCHEMA: Schema = {"type": "array", "items": schema_of(to_float), "minItems": 2, "maxItems": 2}
_NAMES: Schema = {"type": "array", "minItems": 1, "items": schema_of(to_name)}

ARG_KEYS: KeyTable = {
    "type": Key(
        one_of(*ARG_TYPES),
        "float, int, bool, enum (one of enum's values, by number or label), or datetime (a point in time; 0 or none: not given).",
        what=f"one of {', '.join(ARG_TYPES)}",
    ),
    "range": Key(
        None,
        "[min, max] allowed (float and int): a call outside it is refused with BadOutOfRange.",
        None,
        schema=_RANGE_SCHEMA,
    ),
    "enum": Key(
        None,
        "The allowed values of an enum argument: integer value -> label, e.g. {1: day, 2: peak}.",
        None,
        schema=_ENUM_SCHEMA,
    ),
    "unit": Key(to_str, "Engineering unit shown to operators (quote '%').", ""),
    "description": Key(to_str, "Free text shown to operators.", ""),
}
COMMAND_KEYS: KeyTable = {
    "description": Key(to_str, "Free text shown to operators.", ""),
    "role": Key(
        _to_role,
        f"The least role allowed to send it ({', '.join(COMMAND_ROLES)}; default Operator). The caller's communes apply too.",
        "Operator",
    ),
    "critical": Key(
        to_bool,
        "true: select-before-operate (Select returns a token; the same session Operates with it within control.select_timeout). A group action or a schedule never runs a critical command.",
        False,
    ),
    "emergency": Key(
        to_bool,
        "true: a safety command (the fire brigade's EmergencyLower) with budgets of its own that routine commands never use: per device control.emergency_rate, per user an allowance at control.user_rate. Never critical: an emergency does not wait for a Select.",
        False,
    ),
    "timeout": Key(
        positive(to_float),
        "Seconds for the read-back to confirm (> 0; default 3 x the type's timeout, at least 2). Past it: BadTimeout.",
        None,
    ),
    "tolerance": Key(
        non_negative(to_float),
        "How far an analog confirmation may be from its expected value (>= 0, default 0: equal).",
        0.0,
    ),
    "arguments": Key(
        None,
        "The call's arguments by name; written in `writes` and `confirm` as $name.",
        None,
        schema={
            "type": ["object", "null"],
            "propertyNames": schema_of(to_name),
            "additionalProperties": object_schema(ARG_KEYS, description="One argument of a command."),
        },
    ),
    "writes": Key(
        None,
        "The points written, in this order: point -> constant or $argument. Each point is `writable: true`.",
        schema=_STEP_VALUES,
    ),
    "confirm": Key(
        None,
        "The read-back: point -> the value it must reach (constant or $argument) before the timeout.",
        schema=_STEP_VALUES,
    ),
    "interlocks": Key(
        None,
        "Names of the type's `interlocks` that must hold for the command to go.",
        None,
        schema={"type": ["array", "null"], "items": schema_of(to_name)},
    ),
}
INTERLOCK_KEYS: KeyTable = {
    "when": Key(
        to_str,
        "Must be true for the command to go: an expression over the type's points and the inputs' aliases (the alarm expression language: and, or, not, comparisons, + - * /, abs, min, max). A point that is not Good refuses the command (fail safe).",
        what="an expression, e.g. not vehicle",
    ),
    "message": Key(to_str, "What the operator reads when the interlock refuses a command.", what="the refusal's text"),
    "status": Key(
        _to_interlock_status,
        f"The refusal's status code ({', '.join(INTERLOCK_STATUSES)}; default BadInvalidState).",
        "BadInvalidState",
    ),
    "inputs": Key(
        None,
        "Other devices' points, by an alias usable in `when`: alias -> tag name (<commune>/<class>/<device>/<point>).",
        None,
        schema={"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    ),
}
RATE_KEYS: KeyTable = {
    "per_minute": Key(positive(to_float), "Commands per minute, sustained (> 0).", what="commands per minute"),
    "burst": Key(
        positive(to_int),
        "Commands allowed at once above the sustained rate (a whole number >= 1).",
        what="a whole number",
    ),
}
CONTROL_KEYS: KeyTable = {
    "select_timeout": Key(positive(to_float), "Seconds between Select and Operate (> 0, default 10).", 10.0),
    "user_rate": Key(
        None,
        "Commands one user may send (default 60 per minute, bursts of 10): beyond, BadTooManyOperations.",
        None,
        schema=object_schema(RATE_KEYS),
    ),
    "device_rate": Key(
        None,
        "Commands one device accepts (default 20 per minute, bursts of 4): beyond, BadTooManyOperations.",
        None,
        schema=object_schema(RATE_KEYS),
    ),
    "emergency_rate": Key(
        None,
        "Emergency commands (`emergency: true`) one device accepts, a budget of their own that routine commands never use (default 10 per minute, bursts of 3): beyond, BadTooManyOperations.",
        None,
        schema=object_schema(RATE_KEYS),
    ),
    "group_concurrency": Key(
        in_range(to_int, 1, 4096), "Devices one group action commands at once (1-4096, default 64).", 64
    ),
    "timezone": Key(
        _to_timezone,
        "Time zone of the schedules' clock times (\"23:00\"), an IANA name (default: the machine's).",
        "",
        examples=("Europe/Paris",),
    ),
}
CIRCLE_KEYS: KeyTable = {
    "lat": Key(in_range(to_float, -90, 90), "Latitude of the centre in decimal degrees (WGS84).", what="latitude"),
    "lon": Key(in_range(to_float, -180, 180), "Longitude of the centre in decimal degrees (WGS84).", what="longitude"),
    "radius_m": Key(positive(to_float), "Radius in metres (> 0).", what="metres"),
}
_LAT_LON: Schema = {
    "type": "array",
    "minItems": 2,
    "maxItems": 2,
    "items": [schema_of(in_range(to_float, -90, 90)), schema_of(in_range(to_float, -180, 180))],
}
ZONE_KEYS: KeyTable = {
    "devices": Key(None, "The zone's devices, by name (or give a circle or a polygon).", None, schema=_NAMES),
    "circle": Key(
        None,
        "The devices within radius_m of a point (or give devices or a polygon).",
        None,
        schema=object_schema(CIRCLE_KEYS),
    ),
    "polygon": Key(
        None,
        "The devices inside a polygon of [lat, lon] vertices, at least 3 (or give devices or a circle).",
        None,
        schema={"type": "array", "minItems": 3, "items": _LAT_LON},
    ),
    "classes": Key(
        None,
        "Only devices of these classes (lighting, traffic, bollard...; default: every class).",
        None,
        schema=_NAMES,
    ),
}
ZONE_RULES: tuple[Schema, ...] = ({"oneOf": [{"required": [k]} for k in ("devices", "circle", "polygon")]},)
STEP_KEYS: KeyTable = {
    "at": Key(
        None,
        f"When: {AT_FORMS}.",
        what=AT_FORMS,
        schema={"type": "string", "pattern": AT_PATTERN, "patternErrorMessage": f"expected {AT_FORMS}"},
    ),
    "command": Key(to_name, "A command of the lighting types (SetMode, SetDimLevel...).", what="a command name"),
    "arguments": Key(
        None,
        "The command's arguments by name (an enum by its label or number; a datetime may be left out).",
        None,
        schema={"type": ["object", "null"], "additionalProperties": _NUMBER_OR_TEXT},
    ),
}
SCHEDULE_KEYS: KeyTable = {
    "name": Key(to_name, "The schedule's unique name (shown as the command's origin).", what="a name"),
    "communes": Key(
        None,
        "The communes whose lighting cabinets it commands.",
        None,
        schema={"type": "array", "minItems": 1, "items": {"type": "string"}},
    ),
    "zones": Key(None, "The zones (under `zones`) whose lighting cabinets it commands.", None, schema=_NAMES),
    "steps": Key(
        None,
        "What to do when, every day: each step runs one command on every cabinet not overridden by an operator.",
        schema={
            "type": "array",
            "minItems": 1,
            "items": object_schema(STEP_KEYS, description="One step of a schedule."),
        },
    ),
}
# An emergency command is never critical (_parse_command says why): true as to_bool reads it.
_TRUE: Schema = {
    "anyOf": [{"const": True}, {"type": "string", "pattern": r"^\s*([Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|1)\s*$"}]
}
COMMAND_RULES: tuple[Schema, ...] = (when("emergency", _TRUE, {"properties": {"critical": {"not": _TRUE}}}),)
SCHEDULE_RULES: tuple[Schema, ...] = ({"anyOf": [{"required": ["communes"]}, {"required": ["zones"]}]},)

# For scada/config.py's tables (the type's keys, the top level): the schema of each section.
COMMANDS_SCHEMA: Schema = {
    "type": "object",
    "propertyNames": schema_of(to_name),
    "additionalProperties": object_schema(
        COMMAND_KEYS, COMMAND_RULES, description="One command of the type: an OPC UA method on each device."
    ),
}
INTERLOCKS_SCHEMA: Schema = {
    "type": "object",
    "propertyNames": schema_of(to_name),
    "additionalProperties": object_schema(
        INTERLOCK_KEYS, description="A condition that must hold for a command to go."
    ),
}
CONTROL_SCHEMA: Schema = object_schema(CONTROL_KEYS)
ZONES_SCHEMA: Schema = {
    "type": "object",
    "propertyNames": schema_of(to_name),
    "additionalProperties": object_schema(
        ZONE_KEYS, ZONE_RULES, description="A named set of devices for group actions and schedules."
    ),
}
SCHEDULES_SCHEMA: Schema = {
    "type": "array",
    "items": object_schema(SCHEDULE_KEYS, SCHEDULE_RULES, description="A daily lighting programme."),
}


# -- per equipment type ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InputCheck:
    """An interlock input's tag name, checked once the devices are read."""

    file: str
    line: int | None
    key: str
    tag: str


def _sub_fields(f: Fields, key: str, raw: Any) -> Fields:
    line = f.line_of(key)
    return Fields(raw, f.key(key), f.file, line)


def _name_items(raw: Any, f: Fields, key: str, what: str) -> list[tuple[str, Any, int | None]]:
    """(name, value, line) of a mapping of names; a located error for a bad name."""
    if not isinstance(raw, dict):
        raise f.error(key, f"expected a mapping of {what} names to their definitions", raw)
    out = []
    for name, value in raw.items():
        line = raw.line_of(name) if isinstance(raw, LocMap) else f.line_of(key)
        if isinstance(name, bool):  # YAML 1.1 reads on, off, yes, no, true, false as booleans
            raise ConfigError(
                f.file, line, f"{f.key(key)}.{name}", "YAML reads on/off/yes/no as true/false: quote the name", name
            )
        try:
            out.append((to_name(name), value, line))
        except ValueError as exc:
            raise ConfigError(f.file, line, f"{f.key(key)}.{name}", str(exc), name) from None
    return out


def _parse_enum(raw: Any, f: Fields, key: str) -> tuple[tuple[int, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise f.error(key, "expected a mapping of integer values to labels, e.g. {1: day, 2: peak}", raw)
    out = []
    for k, v in raw.items():
        line = raw.line_of(k) if isinstance(raw, LocMap) else f.line_of(key)
        try:
            value = to_int(k)
            label = to_name(v)
        except ValueError as exc:
            raise ConfigError(
                f.file, line, f.key(f"{key}.{k}"), f"{exc} (an enum maps integer values to labels)", v
            ) from None
        out.append((value, label))
    labels = [label for _, label in out]
    dup = next((label for label in labels if labels.count(label) > 1), None)
    if dup is not None:
        raise f.error(key, "each label names one value", dup)
    return tuple(sorted(out))


def _parse_range(raw: Any, f: Fields, key: str) -> tuple[float, float]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise f.error(key, "expected [min, max]", raw)
    try:
        lo, hi = to_float(raw[0]), to_float(raw[1])
    except ValueError as exc:
        raise f.error(key, str(exc), raw) from None
    if lo >= hi:
        raise f.error(key, "min must be below max", raw)
    return lo, hi


def _parse_argument(name: str, raw: Any, path: str, file: str, line: int | None) -> ArgDef:
    f = Fields(raw, path, file, line)
    kind = f.read(ARG_KEYS, "type")
    rng = _parse_range(f.sub("range"), f, "range") if f.has("range") else None
    enum = _parse_enum(f.sub("enum"), f, "enum") if f.has("enum") else None
    if rng is not None and kind not in ("float", "int"):
        raise f.error("range", f"only a float or int argument has a range (this one is {kind})", f.mapping["range"])
    if kind == "enum" and enum is None:
        raise f.error("enum", "required key is missing: an enum argument lists its values, e.g. {1: day, 2: peak}")
    if enum is not None and kind != "enum":
        raise f.error("enum", f"only an argument of type enum lists values (this one is {kind})", f.mapping["enum"])
    arg = ArgDef(name, kind, rng, enum, f.read(ARG_KEYS, "unit"), f.read(ARG_KEYS, "description"))
    f.done(ARG_KEYS)
    return arg


def _point_values(p: PointDef) -> str:
    if p.enum:
        return ", ".join(f"{v} ({label})" for v, label in p.enum)
    if p.kind == DISCRETE:
        return "0 or 1 (false or true)"
    return f"{p.range[0]:g} to {p.range[1]:g}" if p.range else "any number"


def point_constant(p: PointDef, raw: Any) -> float:
    """A constant for point ``p``: a number, true/false, or one of its enum labels; ValueError when
    the point cannot take it (outside its range, not among its enum values, not 0/1 for a bool)."""
    if isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and p.enum and raw.strip() in {label for _, label in p.enum}:
        return float(next(v for v, label in p.enum if label == raw.strip()))
    else:
        try:
            value = to_float(raw)
        except ValueError:
            hint = f" or one of its labels ({', '.join(label for _, label in p.enum)})" if p.enum else ""
            raise ValueError(f"expected a number{hint}, or $argument") from None
    if p.enum and value not in {float(v) for v, _ in p.enum}:
        raise ValueError(f"not a value of {p.name} (its values: {_point_values(p)})")
    if not p.enum and p.kind == DISCRETE and value not in (0.0, 1.0):
        raise ValueError(f"{p.name} is true or false (0 or 1)")
    if p.range and not p.range[0] <= value <= p.range[1]:
        raise ValueError(f"outside {p.name}'s range ({_point_values(p)})")
    return value


def _parse_steps(
    raw: Any,
    f: Fields,
    key: str,
    points: Mapping[str, PointDef],
    args: Mapping[str, ArgDef],
    writing: bool,
) -> tuple[Step, ...]:
    if not isinstance(raw, dict) or not raw:
        example = "{mode: 3, dim_setpoint: $level}" if writing else "{dim_level: $level}"
        raise f.error(key, f"expected a mapping of points to values, e.g. {example}", raw)
    steps = []
    for pname, value in raw.items():
        line = raw.line_of(pname) if isinstance(raw, LocMap) else f.line_of(key)
        path = f.key(f"{key}.{pname}")
        p = points.get(str(pname))
        if p is None:
            raise ConfigError(f.file, line, path, f"the type has no such point (points: {', '.join(points)})", pname)
        if writing and not p.writable:
            raise ConfigError(
                f.file, line, path, "this point is not writable: declare it `writable: true` to command it", pname
            )
        if p.kind == TEXT:
            raise ConfigError(f.file, line, path, "a text point cannot be commanded or confirmed", pname)
        if isinstance(value, str) and value.strip().startswith("$"):
            aname = value.strip()[1:]
            arg = args.get(aname)
            if arg is None:
                known = ", ".join("$" + a for a in args) or "none declared"
                raise ConfigError(f.file, line, path, f"no such argument (arguments: {known})", value)
            _check_arg_fits(arg, p, f.file, line, path, value)
            steps.append(Step(p.name, arg=aname))
            continue
        try:
            steps.append(Step(p.name, value=point_constant(p, value)))
        except ValueError as exc:
            raise ConfigError(f.file, line, path, str(exc), value) from None
    return tuple(steps)


def _check_arg_fits(arg: ArgDef, p: PointDef, file: str, line: int | None, path: str, value: str) -> None:
    """An argument written to (or confirmed on) a point takes only values the point can hold."""
    if arg.type == "datetime":
        raise ConfigError(file, line, path, "a datetime argument is not a point's value", value)
    if arg.type == "enum" and p.enum:
        extra = sorted({v for v, _ in arg.enum or ()} - {v for v, _ in p.enum})
        if extra:
            raise ConfigError(
                file,
                line,
                path,
                f"the argument's value {extra[0]} is not a value of {p.name} ({_point_values(p)})",
                value,
            )
    if p.kind == DISCRETE and not p.enum and arg.type not in ("bool",):
        raise ConfigError(file, line, path, f"{p.name} is true or false: pass a bool argument", value)
    if p.range and arg.type in ("float", "int"):
        if arg.range is None:
            raise ConfigError(
                file, line, path, f"give the argument a range within {p.name}'s ({_point_values(p)})", value
            )
        if arg.range[0] < p.range[0] or arg.range[1] > p.range[1]:
            raise ConfigError(
                file,
                line,
                path,
                f"the argument's range {list(arg.range)} exceeds {p.name}'s ({_point_values(p)})",
                value,
            )


def _parse_interlock(
    name: str, raw: Any, path: str, file: str, line: int | None, t: EquipmentType, checks: list[_InputCheck]
) -> InterlockDef:
    f = Fields(raw, path, file, line)
    points = {p.name: p for p in t.points}
    inputs: dict[str, str] = {}
    if f.has("inputs"):
        raw_inputs = f.sub("inputs")
        if not isinstance(raw_inputs, dict) or not raw_inputs:
            raise f.error(
                "inputs",
                "expected a mapping of aliases to tag names, e.g. {up_mode: Dijon/traffic/J-DIJ-001/mode}",
                raw_inputs,
            )
        for alias, tag in raw_inputs.items():
            aline = raw_inputs.line_of(alias) if isinstance(raw_inputs, LocMap) else f.line_of("inputs")
            akey = f.key(f"inputs.{alias}")
            if not isinstance(alias, str) or not IDENTIFIER.fullmatch(alias):
                raise ConfigError(
                    file,
                    aline,
                    akey,
                    "an alias is a name usable in `when`: letters, digits and '_', not starting with a digit",
                    alias,
                )
            if alias in points:
                raise ConfigError(file, aline, akey, "the type has a point of this name: choose another alias", alias)
            if not isinstance(tag, str) or tag.count("/") < 3:
                raise ConfigError(file, aline, akey, "expected a tag name: <commune>/<class>/<device>/<point>", tag)
            inputs[alias] = tag.strip()
            checks.append(_InputCheck(file, aline, akey, tag.strip()))
    when = f.read(INTERLOCK_KEYS, "when")
    try:
        _, used = compile_expression(when, [*points, *inputs])
    except ExpressionError as exc:
        raise f.error("when", str(exc), when) from None
    text = [u for u in used if u in points and points[u].kind == TEXT]
    if text:
        raise f.error("when", f"{text[0]!r} is a text point: an interlock compares numbers and states", when)
    status = f.read(INTERLOCK_KEYS, "status", default=BAD_INVALID_STATE)
    interlock = InterlockDef(
        name=name,
        when=when,
        message=f.read(INTERLOCK_KEYS, "message"),
        status=status,
        inputs=MappingProxyType(inputs),
        source=f"{file}:{line}",
    )
    f.done(INTERLOCK_KEYS)
    return interlock


def _parse_command(
    name: str,
    raw: Any,
    path: str,
    file: str,
    line: int | None,
    t: EquipmentType,
    interlocks: Mapping[str, InterlockDef],
) -> CommandDef:
    f = Fields(raw, path, file, line)
    points = {p.name: p for p in t.points}
    args: dict[str, ArgDef] = {}
    if f.has("arguments") and f.mapping["arguments"] is not None:
        for aname, araw, aline in _name_items(f.sub("arguments"), f, "arguments", "argument"):
            args[aname] = _parse_argument(aname, araw, f.key(f"arguments.{aname}"), file, aline)
    f.sub("arguments")
    if not f.has("writes"):
        raise ConfigError(
            file,
            line,
            f.key("writes"),
            "required key is missing: the points written, e.g. {mode: 3, dim_setpoint: $level}",
        )
    writes = _parse_steps(f.sub("writes"), f, "writes", points, args, writing=True)
    if not f.has("confirm"):
        raise ConfigError(
            file,
            line,
            f.key("confirm"),
            "required key is missing: the read-back that confirms the command, e.g. {dim_level: $level}",
        )
    confirm = _parse_steps(f.sub("confirm"), f, "confirm", points, args, writing=False)
    names: tuple[str, ...] = ()
    if f.has("interlocks") and f.mapping["interlocks"] is not None:
        raw_names = f.sub("interlocks")
        if not isinstance(raw_names, list):
            raise f.error("interlocks", "expected a list of the type's interlock names, e.g. [no_vehicle]", raw_names)
        for i, n in enumerate(raw_names):
            if not isinstance(n, str) or n not in interlocks:
                known = ", ".join(interlocks) or "none declared"
                raise f.error("interlocks", f"the type declares no such interlock (its interlocks: {known})", n)
            if n in raw_names[:i]:
                raise f.error("interlocks", "named twice", n)
        names = tuple(raw_names)
    f.sub("interlocks")
    timeout = f.read(COMMAND_KEYS, "timeout")
    command = CommandDef(
        name=name,
        type_name=t.name,
        arguments=tuple(args.values()),
        writes=writes,
        confirm=confirm,
        timeout=timeout if timeout is not None else default_timeout(t),
        role=f.read(COMMAND_KEYS, "role"),
        critical=f.read(COMMAND_KEYS, "critical"),
        interlocks=names,
        tolerance=f.read(COMMAND_KEYS, "tolerance"),
        description=f.read(COMMAND_KEYS, "description"),
        source=f"{file}:{line}",
        emergency=f.read(COMMAND_KEYS, "emergency"),
    )
    if command.emergency and command.critical:
        raise f.error(
            "emergency",
            "an emergency command cannot be critical: it goes at once, without Select/Operate "
            "(drop `critical: true`, or make it a routine command)",
            True,
        )
    f.done(COMMAND_KEYS)
    return command


def default_timeout(t: EquipmentType) -> float:
    """A command's read-back timeout when it gives none: 3 x the type's timeout, at least 2 s."""
    return max(MIN_TIMEOUT, 3 * t.timeout)


class ControlReader:
    """Reads the control sections of one tags.yaml: each type's as it is read, the top level's
    once the devices are (:meth:`finish`)."""

    def __init__(self) -> None:
        self.commands: dict[str, Mapping[str, CommandDef]] = {}
        self.interlocks: dict[str, Mapping[str, InterlockDef]] = {}
        self._checks: list[_InputCheck] = []

    def read_type(self, f: Fields, t: EquipmentType) -> None:
        """The ``commands:`` and ``interlocks:`` of type ``t`` (``f``: the type's fields; marks both taken)."""
        interlocks: dict[str, InterlockDef] = {}
        if f.has("interlocks") and f.mapping["interlocks"] is not None:
            for name, raw, line in _name_items(f.sub("interlocks"), f, "interlocks", "interlock"):
                interlocks[name] = _parse_interlock(
                    name, raw, f.key(f"interlocks.{name}"), f.file, line, t, self._checks
                )
        f.sub("interlocks")
        commands: dict[str, CommandDef] = {}
        if f.has("commands") and f.mapping["commands"] is not None:
            for name, raw, line in _name_items(f.sub("commands"), f, "commands", "command"):
                if name == WRITE:
                    raise ConfigError(
                        f.file,
                        line,
                        f.key(f"commands.{name}"),
                        f"{WRITE} is the Write of a writable tag: choose another name",
                        name,
                    )
                commands[name] = _parse_command(name, raw, f.key(f"commands.{name}"), f.file, line, t, interlocks)
        f.sub("commands")
        if commands:
            self.commands[t.name] = MappingProxyType(commands)
        if interlocks:
            self.interlocks[t.name] = MappingProxyType(interlocks)

    def finish(
        self,
        top: Fields,
        types: Mapping[str, EquipmentType],
        devices: Sequence[Device],
        device_index: Mapping[str, Device],
    ) -> ControlConfig:
        """Cross-checks against the devices, then the top-level ``control``, ``zones`` and ``schedules``."""
        for check in self._checks:
            _check_input(check, types, device_index)
        settings = _parse_settings(top.sub("control"), top) if top.has("control") else ControlSettings()
        zones: dict[str, ZoneDef] = {}
        if top.has("zones") and top.mapping["zones"] is not None:
            for name, raw, line in _name_items(top.sub("zones"), top, "zones", "zone"):
                zones[name] = _parse_zone(name, raw, f"zones.{name}", top.file, line, types, devices, device_index)
        top.sub("zones")
        schedules: tuple[ScheduleDef, ...] = ()
        if top.has("schedules") and top.mapping["schedules"] is not None:
            schedules = _parse_schedules(top.sub("schedules"), top, types, devices, zones, self.commands)
        top.sub("schedules")
        return ControlConfig(
            commands=MappingProxyType(dict(self.commands)),
            interlocks=MappingProxyType(dict(self.interlocks)),
            zones=MappingProxyType(zones),
            schedules=schedules,
            settings=settings,
        )


def _check_input(check: _InputCheck, types: Mapping[str, EquipmentType], device_index: Mapping[str, Device]) -> None:
    from scada.config import DIAG_FOLDER, DIAG_POINTS  # the tag layout is scada.config's

    parts = check.tag.split("/")
    commune, cls, device, point = parts[0], parts[1], parts[2], "/".join(parts[3:])
    d = device_index.get(device)

    def refuse(message: str) -> ConfigError:
        return ConfigError(check.file, check.line, check.key, message, check.tag)

    if d is None:
        raise refuse(f"no device is named {device!r}: expected <commune>/<class>/<device>/<point>")
    t = types[d.type]
    if (commune, cls) != (d.commune, t.cls):
        raise refuse(f"no such tag: {device}'s tags are {d.commune}/{t.cls}/{device}/<point>")
    if point.startswith(f"{DIAG_FOLDER}/"):
        p = next((x for x in DIAG_POINTS if x.name == point[len(DIAG_FOLDER) + 1 :]), None)
    else:
        p = t.point(point)
    if p is None:
        raise refuse(f"{device} has no point {point!r} (its points: {', '.join(x.name for x in t.points)})")
    if p.kind == TEXT:
        raise refuse("a text point cannot be an interlock's input")


# -- top level ------------------------------------------------------------------------------


def _parse_rate(raw: Any, f: Fields, key: str, default: RateLimit) -> RateLimit:
    if not f.has(key):
        return default
    r = _sub_fields(f, key, raw)
    rate = RateLimit(r.read(RATE_KEYS, "per_minute"), r.read(RATE_KEYS, "burst"))
    r.done(RATE_KEYS)
    return rate


def _parse_settings(raw: Any, top: Fields) -> ControlSettings:
    f = _sub_fields(top, "control", raw)
    base = ControlSettings()
    settings = ControlSettings(
        select_timeout=f.read(CONTROL_KEYS, "select_timeout"),
        user_rate=_parse_rate(f.sub("user_rate"), f, "user_rate", base.user_rate),
        device_rate=_parse_rate(f.sub("device_rate"), f, "device_rate", base.device_rate),
        emergency_rate=_parse_rate(f.sub("emergency_rate"), f, "emergency_rate", base.emergency_rate),
        group_concurrency=f.read(CONTROL_KEYS, "group_concurrency"),
        timezone=f.read(CONTROL_KEYS, "timezone"),
    )
    f.done(CONTROL_KEYS)
    return settings


def _name_list(raw: Any, f: Fields, key: str, what: str) -> list[tuple[str, int | None]]:
    """(name, line) of a non-empty list of names; duplicates refused."""
    if not isinstance(raw, list) or not raw:
        raise f.error(key, f"expected a list of {what}", raw)
    out: list[tuple[str, int | None]] = []
    for i, item in enumerate(raw):
        line = raw.line_of(i) if isinstance(raw, LocList) else f.line_of(key)
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ConfigError(f.file, line, f.key(f"{key}[{i}]"), f"expected one of {what}", item)
        name = str(item).strip()
        if any(name == n for n, _ in out):
            raise ConfigError(f.file, line, f.key(f"{key}[{i}]"), "listed twice", name)
        out.append((name, line))
    return out


def _parse_zone(
    name: str,
    raw: Any,
    path: str,
    file: str,
    line: int | None,
    types: Mapping[str, EquipmentType],
    devices: Sequence[Device],
    device_index: Mapping[str, Device],
) -> ZoneDef:
    f = Fields(raw, path, file, line)
    given = [k for k in ("devices", "circle", "polygon") if f.has(k)]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise ConfigError(
            file, line, path, f"a zone gives exactly one of devices, circle or polygon (this one gives {what})"
        )
    classes: tuple[str, ...] = ()
    if f.has("classes"):
        known = sorted({t.cls for t in types.values()})
        listed = _name_list(f.sub("classes"), f, "classes", "classes")
        for c, cline in listed:
            if c not in known:
                raise ConfigError(
                    file, cline, f.key("classes"), f"no equipment type has this class (classes: {', '.join(known)})", c
                )
        classes = tuple(c for c, _ in listed)
    f.sub("classes")
    listed_devices: tuple[str, ...] = ()
    circle: tuple[float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] = ()
    if given == ["devices"]:
        names = _name_list(f.sub("devices"), f, "devices", "device names")
        for dname, dline in names:
            if dname not in device_index:
                raise ConfigError(file, dline, f.key("devices"), "no device has this name", dname)
        listed_devices = tuple(d for d, _ in names)
    elif given == ["circle"]:
        cf = _sub_fields(f, "circle", f.sub("circle"))
        circle = (cf.read(CIRCLE_KEYS, "lat"), cf.read(CIRCLE_KEYS, "lon"), cf.read(CIRCLE_KEYS, "radius_m"))
        cf.done(CIRCLE_KEYS)
    else:
        polygon = _parse_polygon(f.sub("polygon"), f)
    zone = ZoneDef(name, listed_devices, circle, polygon, classes, source=f"{file}:{line}")
    f.done(ZONE_KEYS)
    if not zone_members(zone, devices, types):
        only = f" of class {', '.join(classes)}" if classes else ""
        raise ConfigError(
            file, line, path, f"the zone contains no device{only}: check its coordinates (lat, lon) and classes"
        )
    return zone


def _parse_polygon(raw: Any, f: Fields) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list) or len(raw) < 3:
        raise f.error("polygon", "a polygon has at least 3 vertices, each [lat, lon]", raw)
    out = []
    for i, vertex in enumerate(raw):
        vline = raw.line_of(i) if isinstance(raw, LocList) else f.line_of("polygon")
        key = f.key(f"polygon[{i}]")
        if not isinstance(vertex, list) or len(vertex) != 2:
            raise ConfigError(f.file, vline, key, "a vertex is [lat, lon]", vertex)
        try:
            lat = in_range(to_float, -90, 90)(vertex[0])
        except ValueError as exc:
            raise ConfigError(f.file, vline, key, f"latitude {exc}", vertex) from None
        try:
            lon = in_range(to_float, -180, 180)(vertex[1])
        except ValueError as exc:
            raise ConfigError(f.file, vline, key, f"longitude {exc}", vertex) from None
        out.append((lat, lon))
    return tuple(out)


def zone_members(zone: ZoneDef, devices: Sequence[Device], types: Mapping[str, EquipmentType]) -> tuple[str, ...]:
    """The names of the devices in ``zone``, in device order: listed, or within its circle or
    polygon (by their coordinates), of its classes when it names some."""
    if zone.devices:
        listed = set(zone.devices)
        chosen = [d for d in devices if d.name in listed]
    else:
        lat = np.fromiter((d.lat for d in devices), np.float64, len(devices))
        lon = np.fromiter((d.lon for d in devices), np.float64, len(devices))
        inside = _in_circle(lat, lon, zone.circle) if zone.circle else _in_polygon(lat, lon, zone.polygon)
        chosen = [devices[i] for i in np.flatnonzero(inside).tolist()]
    if zone.classes:
        chosen = [d for d in chosen if types[d.type].cls in zone.classes]
    return tuple(d.name for d in chosen)


def _in_circle(lat: np.ndarray, lon: np.ndarray, circle: tuple[float, float, float]) -> np.ndarray:
    """Great-circle distance (haversine) from the centre within the radius."""
    clat, clon, radius = circle
    p1, p2 = np.radians(lat), math.radians(clat)
    dphi, dlmb = p2 - p1, np.radians(clon - lon)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))) <= radius


def _in_polygon(lat: np.ndarray, lon: np.ndarray, polygon: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule in the lat/lon plane (a city's zone is small: the plane is exact enough)."""
    inside = np.zeros(len(lat), bool)
    n = len(polygon)
    for k in range(n):
        (y1, x1), (y2, x2) = polygon[k], polygon[(k + 1) % n]
        crosses = (y1 > lat) != (y2 > lat)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (lat - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (lon < x_at)
    return inside


def parse_at(raw: Any) -> tuple[str, float]:
    """``at`` -> (anchor, offset_s): ("sunset"|"sunrise", signed offset) or ("clock", s after midnight)."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 24 * 60:
        h, m = divmod(raw, 60)  # YAML 1.1 reads an unquoted 23:00 as the number 1380
        raise ValueError(
            f'quote the time: at: "{h:02d}:{m:02d}" (unquoted, YAML reads {h}:{m:02d} as the number {raw})'
        )
    if not isinstance(raw, str):
        raise ValueError(f"expected {AT_FORMS}")
    match = _AT.fullmatch(raw.strip())
    if match is None:
        raise ValueError(f"expected {AT_FORMS}")
    if match["anchor"]:
        if not match["sign"]:
            return match["anchor"], 0.0
        hours, minutes = int(match["oh"]), int(match["om"])
        if minutes > 59 or hours > 12:
            raise ValueError("an offset is at most 12:00 hours, its minutes 00-59")
        return match["anchor"], (1 if match["sign"] == "+" else -1) * (hours * 3600.0 + minutes * 60.0)
    hours, minutes = int(match["h"]), int(match["m"])
    if hours > 23 or minutes > 59:
        raise ValueError("a time of day is 00:00 to 23:59")
    return "clock", hours * 3600.0 + minutes * 60.0


def argument_value(arg: ArgDef, raw: Any) -> float:
    """A value given for ``arg`` in the configuration (a schedule step), validated like a call:
    an enum by label or number, a bool as true/false, a number within its range."""
    if arg.type == "enum":
        enum = arg.enum or ()
        if isinstance(raw, str) and raw.strip() in {label for _, label in enum}:
            return float(next(v for v, label in enum if label == raw.strip()))
        try:
            value = to_int(raw)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(label for _, label in enum)}") from None
        if value not in {v for v, _ in enum}:
            raise ValueError(f"expected one of {', '.join(f'{label} ({v})' for v, label in enum)}")
        return float(value)
    if arg.type == "bool":
        return float(to_bool(raw))
    if arg.type == "datetime":
        raise ValueError("a schedule gives no datetime: leave it out")
    number = float(to_int(raw)) if arg.type == "int" else to_float(raw)
    if arg.range and not arg.range[0] <= number <= arg.range[1]:
        raise ValueError(f"must be between {arg.range[0]:g} and {arg.range[1]:g}")
    return number


def _parse_schedules(
    raw: Any,
    top: Fields,
    types: Mapping[str, EquipmentType],
    devices: Sequence[Device],
    zones: Mapping[str, ZoneDef],
    commands: Mapping[str, Mapping[str, CommandDef]],
) -> tuple[ScheduleDef, ...]:
    if not isinstance(raw, list):
        raise top.error(
            "schedules", "expected a list of schedules, each with a name, communes or zones, and steps", raw
        )
    out: list[ScheduleDef] = []
    seen: dict[str, str] = {}
    communes = {d.commune for d in devices}
    for i, item in enumerate(raw):
        line = raw.line_of(i) if isinstance(raw, LocList) else top.line_of("schedules")
        f = Fields(item, f"schedules[{i}]", top.file, line)
        name = f.read(SCHEDULE_KEYS, "name")
        if name in seen:
            raise f.error("name", f"duplicate schedule (first declared at {seen[name]})", name)
        seen[name] = f"{top.file}:{line}"
        if not f.has("communes") and not f.has("zones"):
            raise ConfigError(top.file, line, f.path, "a schedule names the communes or the zones it lights")
        s_communes: list[str] = []
        if f.has("communes"):
            for c, cline in _name_list(f.sub("communes"), f, "communes", "communes"):
                if c not in communes:
                    raise ConfigError(top.file, cline, f.key("communes"), "no device stands in this commune", c)
                s_communes.append(c)
        f.sub("communes")
        s_zones: list[str] = []
        if f.has("zones"):
            for z, zline in _name_list(f.sub("zones"), f, "zones", "zone names"):
                if z not in zones:
                    raise ConfigError(
                        top.file,
                        zline,
                        f.key("zones"),
                        f"no such zone (zones: {', '.join(zones) or 'none declared'})",
                        z,
                    )
                s_zones.append(z)
        f.sub("zones")
        classes = SCHEDULE_CLASSES
        targets = _schedule_types(s_communes, s_zones, zones, devices, types, classes)
        if not targets:
            raise ConfigError(top.file, line, f.path, f"the schedule covers no device of class {', '.join(classes)}")
        steps = _parse_schedule_steps(f, targets, commands)
        f.done(SCHEDULE_KEYS)
        out.append(ScheduleDef(name, tuple(s_communes), tuple(s_zones), steps, classes, source=f"{top.file}:{line}"))
    return tuple(out)


def _schedule_types(
    communes: Iterable[str],
    zone_names: Iterable[str],
    zones: Mapping[str, ZoneDef],
    devices: Sequence[Device],
    types: Mapping[str, EquipmentType],
    classes: tuple[str, ...],
) -> list[str]:
    """The equipment types (of ``classes``) of the devices a schedule covers, in declaration order."""
    covered: set[str] = set()
    in_communes = set(communes)
    for d in devices:
        if d.commune in in_communes:
            covered.add(d.type)
    by_name = {d.name: d for d in devices} if zone_names else {}
    for z in zone_names:
        for dname in zone_members(zones[z], devices, types):
            covered.add(by_name[dname].type)
    return [t for t in types if t in covered and types[t].cls in classes]


def _parse_schedule_steps(
    f: Fields, targets: Sequence[str], commands: Mapping[str, Mapping[str, CommandDef]]
) -> tuple[ScheduleStep, ...]:
    raw = f.sub("steps")
    if not isinstance(raw, list) or not raw:
        raise f.error("steps", "expected a list of steps, each {at: ..., command: ..., arguments: {...}}", raw)
    steps = []
    for i, item in enumerate(raw):
        line = raw.line_of(i) if isinstance(raw, LocList) else f.line_of("steps")
        s = Fields(item, f.key(f"steps[{i}]"), f.file, line)
        at_raw = s.sub("at")
        if not s.has("at"):
            raise s.error("at", f"required key is missing: {AT_FORMS}")
        try:
            anchor, offset = parse_at(at_raw)
        except ValueError as exc:
            raise s.error("at", str(exc), at_raw) from None
        cname = s.read(STEP_KEYS, "command")
        lacking = [t for t in targets if cname not in commands.get(t, {})]
        if lacking:
            known = ", ".join(commands.get(lacking[0], {})) or "none declared"
            raise s.error("command", f"the type {lacking[0]} has no such command (its commands: {known})", cname)
        command = commands[targets[0]][cname]
        if any(commands[t][cname].critical for t in targets):
            raise s.error("command", "a critical command (select-before-operate) cannot be scheduled", cname)
        args = _step_arguments(s, command)
        s.done(STEP_KEYS)
        steps.append(ScheduleStep(anchor, offset, cname, MappingProxyType(args), str(at_raw).strip()))
    return tuple(steps)


def _step_arguments(s: Fields, command: CommandDef) -> dict[str, float]:
    raw = s.sub("arguments")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise s.error("arguments", "expected a mapping of argument names to values, e.g. {level: 50}", raw)
    by_name = {a.name: a for a in command.arguments}
    out: dict[str, float] = {}
    for aname, value in raw.items():
        aline = raw.line_of(aname) if isinstance(raw, LocMap) else s.line_of("arguments")
        key = s.key(f"arguments.{aname}")
        arg = by_name.get(str(aname))
        if arg is None:
            raise ConfigError(
                s.file,
                aline,
                key,
                f"{command.name} has no such argument (arguments: {', '.join(by_name) or 'none'})",
                aname,
            )
        try:
            out[arg.name] = argument_value(arg, value)
        except ValueError as exc:
            raise ConfigError(s.file, aline, key, str(exc), value) from None
    for arg in command.arguments:
        if arg.name not in out:
            if arg.type != "datetime":
                raise s.error("arguments", f"{command.name} needs its argument {arg.name!r}")
            out[arg.name] = 0.0
    return out
