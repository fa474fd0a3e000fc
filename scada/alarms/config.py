"""alarms.yaml -> frozen alarm definitions, checked against the equipment types of tags.yaml.

Services (who acts, and how soon they must acknowledge), and alarms declared per equipment
type (every device of the type) or for one device: limit (high_high, high, low, low_low,
with deadband), state (a value in a set), rate of change, communication loss, and
expressions over a device's points; each with a priority, a message template, on/off
delays, the service it is routed to, latching, and the alarms whose activity suppresses it
(cause-based suppression). The engine is ``scada/alarms/engine.py``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from common.fields import (
    REQUIRED,
    Fields,
    Key,
    KeyTable,
    Schema,
    converter,
    non_negative,
    one_of,
    positive,
    ref_list,
    ref_map,
    schema_of,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
    when,
)
from common.yamlsrc import ConfigError, LocList, LocMap
from common.yamlsrc import load as load_yaml
from scada.alarms.expr import ExpressionError, compile_expression
from scada.tagdb import TEXT

if TYPE_CHECKING:
    from scada.config import Device, EquipmentType

# ISA-18.2 priorities -> OPC UA severities (1-1000).
PRIORITIES = {"low": 250, "medium": 500, "high": 750, "critical": 900}
LIMIT_CONDITIONS = ("high_high", "high", "low", "low_low")
CONDITIONS = (*LIMIT_CONDITIONS, "state", "rate_of_change", "comm_loss", "expression")
MESSAGE_FIELDS = {"device", "commune", "value", "unit", "point", "limit"}
# Which keys each condition takes beyond the common ones; the others are errors, never ignored.
CONDITION_KEYS = {
    **{c: ("point", "limit", "deadband") for c in LIMIT_CONDITIONS},
    "state": ("point", "states"),
    "rate_of_change": ("point", "limit"),
    "comm_loss": (),
    "expression": ("expression",),
}
# The keys only some conditions take, in the order they are blamed when present for another one.
CONDITIONAL_KEYS = ("point", "limit", "deadband", "states", "expression")


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    label: str
    ack_deadline_s: float


@dataclass(frozen=True, slots=True)
class AlarmDef:
    name: str
    type: str  # equipment type it applies to (every device of that type)
    point: str | None  # None for comm_loss
    condition: str
    priority: str
    severity: int
    message: str
    service: str
    limit: float | None = None
    deadband: float = 0.0
    states: tuple[int, ...] = ()
    on_delay: float = 0.0
    off_delay: float = 0.0
    source: str = ""
    device: str | None = None  # declared for one device only (its type is ``type``)
    expression: str = ""
    expression_points: tuple[str, ...] = ()  # the points the expression reads
    latching: bool = False  # stays announced after return to normal until acknowledged and reset
    suppressed_by: tuple[str, ...] = ()  # alarms of the same device whose activity hides this one

    @property
    def key(self) -> tuple[str, str]:
        """(scope, name): scope is the device for a device's own alarm, else the type."""
        return (self.device or self.type, self.name)


@dataclass(frozen=True, slots=True)
class AlarmsConfig:
    alarms: tuple[AlarmDef, ...]
    services: Mapping[str, Service]


_FIELDS = "|".join(sorted(MESSAGE_FIELDS))


@converter(
    {
        "type": "string",
        "minLength": 1,
        # What string.Formatter can fill with the engine's fields: no nested field, a known conversion.
        "pattern": f"^(?:[^{{}}]|\\{{\\{{|\\}}\\}}|\\{{(?:{_FIELDS})(?:![rsa])?(?::[^{{}}]*)?\\}})*$",
        "patternErrorMessage": f"fields are {' '.join('{' + f + '}' for f in sorted(MESSAGE_FIELDS))}; write {{{{ and }}}} for literal braces",
    }
)
def _message(v: Any) -> str:
    s = to_str(v)
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(s) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad message template: {exc}") from None
    unknown = names - MESSAGE_FIELDS
    if unknown:
        raise ValueError(f"unknown field {{{sorted(unknown)[0]}}} (fields: {', '.join(sorted(MESSAGE_FIELDS))})")
    # Fill it once with sample values, as the engine will: conversions (!x), nested fields
    # and format specs fail here, at load time, not when the alarm is raised in the night.
    sample = {"device": "LC-1", "commune": "Dijon", "value": 1.5, "unit": "V", "point": "p", "limit": 1.0}
    try:
        s.format(**sample)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"bad message template: {exc}") from None
    return s


# The keys of each section of alarms.yaml, read through these tables (Fields.read) and walked
# by `scada schema` (scada/schema.py) to write scada/schemas/alarms.schema.json.
_NAME_SCHEMA = schema_of(to_name)
SERVICE_KEYS: KeyTable = {
    "label": Key(to_str, "Name shown to operators; defaults to the service's key.", None),
    "ack_deadline_s": Key(
        positive(to_float), "Seconds the service has to acknowledge an alarm (> 0).", what="seconds to acknowledge"
    ),
}
ALARM_KEYS: KeyTable = {
    "name": Key(
        to_name,
        "Name of the alarm, unique within its equipment type (a device's own alarm may not reuse the name of one of its type's alarms).",
    ),
    "type": Key(
        to_str,
        "Equipment type (from tags.yaml) the alarm applies to: every device of that type gets it. Required unless `device` is given; beside `device`, it must be that device's type.",
        what="the equipment type the alarm applies to (or device: one device)",
        schema=_NAME_SCHEMA,
        required=False,  # ALARM_RULES: type or device
    ),
    "device": Key(
        to_str,
        "One device (from tags.yaml or an inventory) the alarm applies to, instead of every device of a type. Its points are its type's.",
        None,
        what="the device the alarm applies to",
        schema=_NAME_SCHEMA,
    ),
    "point": Key(
        to_str,
        "Point of the equipment type the alarm watches. Required for limit, state and rate_of_change conditions; not allowed for comm_loss and expression.",
        what="the point the alarm watches",
        schema=_NAME_SCHEMA,
        required=False,  # by condition: ALARM_RULES
    ),
    "condition": Key(one_of(*CONDITIONS), "What raises the alarm."),
    "limit": Key(
        to_float,  # positive for rate_of_change: _parse_alarm and ALARM_RULES
        "Limit in the point's engineering units; for rate_of_change, the rate in engineering units per second (> 0). Required for high_high, high, low, low_low and rate_of_change; not allowed otherwise.",
        what="the limit in engineering units",
        required=False,
    ),
    "deadband": Key(
        non_negative(to_float),
        "Hysteresis in engineering units (>= 0): the value must come back this far past the limit to clear the alarm. Limit conditions (high_high, high, low, low_low) only.",
        0.0,
    ),
    "states": Key(
        None,
        "Values of the point that raise the alarm (integers, at least one). Required for condition state; not allowed otherwise.",
        schema={"type": "array", "minItems": 1, "items": {"type": "integer"}},
        required=False,
    ),
    "expression": Key(
        to_str,
        "Condition over the point names of the type, true while the alarm condition holds: and, or, not, comparisons (chains allowed: 0 < x < 5), + - * /, numbers, abs(), min(), max(). A point without a value (NaN) makes a comparison false. Required for condition expression; not allowed otherwise.",
        what='a condition over the type\'s points, e.g. "contactor and power < 0.2 * nominal_power"',
        schema={"type": "string", "minLength": 1, "pattern": "\\S"},
        examples=("lamps_on and power < 0.5",),
        required=False,
    ),
    "priority": Key(one_of(*PRIORITIES), "ISA-18.2 priority; sets the OPC UA severity."),
    "message": Key(
        _message,
        "Text shown to operators. Fields in braces are filled in: {device} {commune} {value} {unit} {point} {limit}, optionally with a format, e.g. {value:.1f}. Write {{ and }} for literal braces. Quote the whole text in YAML when it starts with '{'.",
        examples=("{device} ({commune}): mains voltage {value:.1f} {unit} below {limit} {unit}",),
    ),
    "service": Key(
        to_str,
        "Service the alarm is routed to: one of the names under services.",
        what="the service the alarm is routed to",
        schema=_NAME_SCHEMA,
    ),
    "on_delay": Key(non_negative(to_float), "Seconds the condition must hold before the alarm is raised (>= 0).", 0.0),
    "off_delay": Key(
        non_negative(to_float), "Seconds the condition must stay clear before the alarm clears (>= 0).", 0.0
    ),
    "latching": Key(
        to_bool,
        "true: once raised, the alarm stays shown after its condition is gone, until an operator acknowledges and resets it. Default false.",
        False,
    ),
    "suppressed_by": Key(
        None,
        "Names of alarms of the same equipment type whose condition hides this one on the same device (a cause hides its consequences): a list, or one name. Not the alarm itself, and never in a circle.",
        None,
        schema={"anyOf": [_NAME_SCHEMA, {"type": "array", "minItems": 1, "items": _NAME_SCHEMA}]},
    ),
}


def _condition_rules() -> tuple[Schema, ...]:
    """_parse_alarm's rules as the editor sees them: each condition's own keys (the others are
    errors), a positive rate, no {limit} in the message of an alarm without a limit."""
    rules: list[Schema] = [{"anyOf": [{"required": ["type"]}, {"required": ["device"]}]}]
    for condition, keys in CONDITION_KEYS.items():
        then: Schema = {"properties": {k: False for k in CONDITIONAL_KEYS if k not in keys}}
        required = [k for k in keys if ALARM_KEYS[k].default is REQUIRED]
        if required:
            then["required"] = required
        if condition == "rate_of_change":
            then["properties"]["limit"] = {"exclusiveMinimum": 0}
        if "limit" not in keys:
            then["properties"]["message"] = {"not": {"pattern": "\\{limit"}}
        rules.append(when("condition", {"const": condition}, then))
    return tuple(rules)


ALARM_RULES = _condition_rules()
ALARMS_FILE_KEYS: KeyTable = {
    "services": Key(
        None,
        "Services (teams) alarms are routed to, by name.",
        None,
        schema={"type": ["object", "null"], **ref_map("service")},
    ),
    "alarms": Key(
        None,
        "Alarm definitions. Each one watches a point, an expression over points, or the communication of every device of an equipment type, or of one device.",
        None,
        schema=ref_list("alarm"),
    ),
}
# load: an alarm names a declared service.
ALARMS_FILE_RULES: tuple[Schema, ...] = (
    when(
        "alarms",
        {"type": "array", "minItems": 1},
        {"required": ["services"], "properties": {"services": {"type": "object", "minProperties": 1}}},
    ),
)


def load(path: Path, types: Mapping[str, EquipmentType], devices: Sequence[Device] = ()) -> AlarmsConfig:
    file = str(path)
    doc = load_yaml(path)
    if doc is None:
        return AlarmsConfig((), MappingProxyType({}))
    if not isinstance(doc, LocMap):
        raise ConfigError(file, getattr(doc, "line", 1), "", "expected a mapping with services and alarms")
    top = Fields(doc, "", file, 1)
    services: dict[str, Service] = {}
    raw_services = top.sub("services")
    raw_services = LocMap() if raw_services is None else raw_services
    if not isinstance(raw_services, LocMap):  # what the YAML reader makes of any mapping
        raise top.error("services", "expected a mapping of service names", raw_services)
    for sname, sraw in raw_services.items():
        f = Fields(sraw, f"services.{sname}", file, raw_services.line_of(sname))
        try:
            sname = to_name(sname)
        except ValueError as exc:
            raise ConfigError(file, raw_services.line_of(sname), f"services.{sname}", str(exc), sname) from None
        services[sname] = Service(
            name=sname,
            label=f.read(SERVICE_KEYS, "label", default=str(sname)),
            ack_deadline_s=f.read(SERVICE_KEYS, "ack_deadline_s"),
        )
        f.done(SERVICE_KEYS)

    alarms: list[AlarmDef] = []
    seen: dict[tuple[str, str], int | None] = {}
    raw_alarms = top.sub("alarms")
    raw_alarms = LocList() if raw_alarms is None else raw_alarms
    if not isinstance(raw_alarms, LocList):  # what the YAML reader makes of any list
        raise top.error("alarms", "expected a list of alarms", raw_alarms)
    top.done(ALARMS_FILE_KEYS)
    devices_by_name = {d.name: d for d in devices}
    lines: list[int] = []
    for i, araw in enumerate(raw_alarms):
        line = raw_alarms.line_of(i)
        lines.append(line)
        alarms.append(
            _parse_alarm(araw, Fields(araw, f"alarms[{i}]", file, line), types, devices_by_name, services, seen)
        )
    _check_suppression(alarms, raw_alarms, file)
    return AlarmsConfig(tuple(alarms), MappingProxyType(services))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _parse_alarm(
    araw: Any,
    f: Fields,
    types: Mapping[str, EquipmentType],
    devices: Mapping[str, Device],
    services: Mapping[str, Service],
    seen: dict[tuple[str, str], int | None],
) -> AlarmDef:
    name = f.read(ALARM_KEYS, "name")
    device = None
    if "device" in araw and araw["device"] in ("", None):
        raise f.error("device", "empty: name the device, or remove the key for an alarm on every device of the type")
    if f.has("device"):
        device = f.read(ALARM_KEYS, "device", default=REQUIRED)
        if device not in devices:
            raise f.error("device", "unknown device (declare it in tags.yaml)", device)
        tname = devices[device].type
        if f.has("type") and f.take("type", to_str) != tname:
            raise f.error("type", f"device {device} is a {tname}: give its type, or leave type out", f.sub("type"))
        f.take("type", to_str, default=tname)
    else:
        tname = f.read(ALARM_KEYS, "type")
        if tname not in types:
            raise f.error("type", f"unknown equipment type (known types: {', '.join(types)})", tname)
    scope = device or tname
    # One name per device: a device's own alarm may not reuse the name of one of its type's.
    clash = seen.get((scope, name)) or seen.get((tname, name) if device else ("@" + tname, name))
    if clash:
        raise f.error("name", f"duplicate alarm for {scope} (first on line {clash})", name)
    seen[(scope, name)] = f.line
    if device:
        seen.setdefault(("@" + tname, name), f.line)
    t = types[tname]
    condition = f.read(ALARM_KEYS, "condition")
    for key in CONDITIONAL_KEYS:
        if key in araw and key not in CONDITION_KEYS[condition]:
            # A known key, but meaningless for this condition: not silently ignored.
            raise f.error(key, f"{_article(condition)} {condition} alarm has no {key} (remove this key)", araw[key])
    point = None
    if "point" in CONDITION_KEYS[condition]:
        point = f.read(ALARM_KEYS, "point")
        watched = t.point(point)
        if watched is None:
            known = ", ".join(p.name for p in t.points)
            raise f.error("point", f"type {tname} has no such point (points: {known})", point)
        if watched.kind == TEXT:
            raise f.error("point", "a text point has no value to compare: alarm on a number or a state", point)
    limit = None
    if "limit" in CONDITION_KEYS[condition]:
        if condition == "rate_of_change":
            limit = f.take("limit", positive(to_float), what="the rate in engineering units per second")
        else:
            limit = f.read(ALARM_KEYS, "limit")
    states: tuple[int, ...] = ()
    if condition == "state":
        raw_states = f.sub("states")
        if not isinstance(raw_states, list) or not raw_states:
            raise f.error("states", "expected a list of the values that raise the alarm", raw_states)
        try:
            states = tuple(to_int(s) for s in raw_states)
        except ValueError as exc:
            raise f.error("states", str(exc), raw_states) from None
    expression = ""
    expression_points: tuple[str, ...] = ()
    kinds = {p.name: p.kind for p in t.points}
    if condition == "expression":
        expression = f.read(ALARM_KEYS, "expression")
        try:
            _, expression_points = compile_expression(expression, [p.name for p in t.points])
        except ExpressionError as exc:
            raise f.error("expression", str(exc), expression) from None
        text = [p for p in expression_points if kinds[p] == TEXT]  # compiled against t's points: all there
        if text:
            raise f.error(
                "expression", f"{text[0]!r} is a text point: an expression compares numbers and states", expression
            )
    priority = f.read(ALARM_KEYS, "priority")
    service = f.read(ALARM_KEYS, "service")
    if service not in services:
        raise f.error("service", f"unknown service (services: {', '.join(services) or 'none declared'})", service)
    message = f.read(ALARM_KEYS, "message")
    if limit is None and "{limit" in message:
        raise f.error(
            "message", f"{_article(condition)} {condition} alarm has no limit to show: remove {{limit}}", message
        )
    suppressed_by: tuple[str, ...] = ()
    if f.has("suppressed_by"):
        raw = f.sub("suppressed_by")
        raw = [raw] if isinstance(raw, str) else raw
        if not isinstance(raw, list) or not raw:
            raise f.error(
                "suppressed_by", "expected the names of the alarms that hide this one, e.g. [mains_loss]", raw
            )
        try:
            suppressed_by = tuple(to_name(x) for x in raw)
        except ValueError as exc:
            raise f.error("suppressed_by", str(exc), raw) from None
    alarm = AlarmDef(
        name=name,
        type=tname,
        point=point,
        condition=condition,
        priority=priority,
        severity=PRIORITIES[priority],
        message=message,
        service=service,
        limit=limit,
        deadband=f.read(ALARM_KEYS, "deadband"),
        states=states,
        on_delay=f.read(ALARM_KEYS, "on_delay"),
        off_delay=f.read(ALARM_KEYS, "off_delay"),
        source=f"{f.file}:{f.line}",
        device=device,
        expression=expression,
        expression_points=tuple(expression_points),
        latching=f.read(ALARM_KEYS, "latching"),
        suppressed_by=suppressed_by,
    )
    f.done(ALARM_KEYS)
    return alarm


def _check_suppression(alarms: list[AlarmDef], raw_alarms: Any, file: str) -> None:
    """suppressed_by names alarms that exist on the same device, and never goes round in a circle.

    A type's alarm may be suppressed by the type's alarms, or by a device's own alarm (it
    then acts on that device only); a device's alarm by its type's alarms and its own.
    Cycles are looked for in every device's set of alarms.
    """
    type_alarms: dict[str, list[AlarmDef]] = {}
    device_alarms: dict[str, list[AlarmDef]] = {}
    for a in alarms:
        (device_alarms.setdefault(a.device, []) if a.device else type_alarms.setdefault(a.type, [])).append(a)

    def where(i: int) -> int | None:
        return raw_alarms[i].line_of("suppressed_by") if isinstance(raw_alarms[i], LocMap) else None

    for i, a in enumerate(alarms):
        if a.device:
            scope = [x.name for x in type_alarms.get(a.type, [])] + [x.name for x in device_alarms[a.device]]
        else:
            scope = [x.name for x in type_alarms.get(a.type, [])] + sorted(
                {x.name for d, xs in device_alarms.items() for x in xs if x.type == a.type}
            )
        for cause in a.suppressed_by:
            if cause == a.name:
                raise ConfigError(
                    file, where(i), f"alarms[{i}].suppressed_by", "an alarm cannot suppress itself", cause
                )
            if cause not in scope:
                known = ", ".join(n for n in dict.fromkeys(scope) if n != a.name) or "none"
                on = f"device {a.device}" if a.device else f"a {a.type}"
                raise ConfigError(
                    file,
                    where(i),
                    f"alarms[{i}].suppressed_by",
                    f"no alarm of that name on {on} (its alarms: {known})",
                    cause,
                )
    # One graph per device that has alarms of its own, and one for the type's alarms alone.
    graphs = [type_alarms.get(t, []) for t in type_alarms]
    graphs += [type_alarms.get(xs[0].type, []) + xs for xs in device_alarms.values()]
    index = {id(a): i for i, a in enumerate(alarms)}
    for group in graphs:
        by_name = {a.name: a for a in group}  # a device's own alarm comes last and wins
        for a in group:
            path = [a.name]
            if _cycle(a.name, by_name, path, set()):
                i = index[id(a)]
                raise ConfigError(
                    file,
                    where(i),
                    f"alarms[{i}].suppressed_by",
                    "suppression goes round in a circle: " + " -> ".join(path),
                    list(a.suppressed_by),
                )


def _cycle(start: str, by_name: dict[str, AlarmDef], path: list[str], seen: set[str]) -> bool:
    """Whether following suppressed_by from path[-1] leads back to ``start`` (path: the loop)."""
    for cause in by_name[path[-1]].suppressed_by:
        if cause == start:
            path.append(cause)
            return True
        if cause in seen or cause not in by_name:
            continue
        seen.add(cause)
        path.append(cause)
        if _cycle(start, by_name, path, seen):
            return True
        path.pop()
    return False
