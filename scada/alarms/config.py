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

from common.fields import Fields, non_negative, one_of, positive, to_bool, to_float, to_int, to_name, to_str
from common.yamlsrc import ConfigError, LocMap
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
ALARM_KEYS = (
    "name",
    "type",
    "device",
    "point",
    "condition",
    "limit",
    "deadband",
    "states",
    "expression",
    "priority",
    "message",
    "service",
    "on_delay",
    "off_delay",
    "latching",
    "suppressed_by",
)
# Which keys each condition takes beyond the common ones; the others are errors, never ignored.
CONDITION_KEYS = {
    **{c: ("point", "limit", "deadband") for c in LIMIT_CONDITIONS},
    "state": ("point", "states"),
    "rate_of_change": ("point", "limit"),
    "comm_loss": (),
    "expression": ("expression",),
}


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
    raw_services = {} if raw_services is None else raw_services
    if not isinstance(raw_services, dict):
        raise top.error("services", "expected a mapping of service names", raw_services)
    for sname, sraw in raw_services.items():
        f = Fields(sraw, f"services.{sname}", file, raw_services.line_of(sname))
        try:
            sname = to_name(sname)
        except ValueError as exc:
            raise ConfigError(file, raw_services.line_of(sname), f"services.{sname}", str(exc), sname) from None
        services[sname] = Service(
            name=sname,
            label=f.take("label", to_str, default=str(sname)),
            ack_deadline_s=f.take("ack_deadline_s", positive(to_float), what="seconds to acknowledge"),
        )
        f.done(("label", "ack_deadline_s"))

    alarms: list[AlarmDef] = []
    seen: dict[tuple[str, str], int] = {}
    raw_alarms = top.sub("alarms")
    raw_alarms = [] if raw_alarms is None else raw_alarms
    if not isinstance(raw_alarms, list):
        raise top.error("alarms", "expected a list of alarms", raw_alarms)
    top.done(("services", "alarms"))
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
    seen: dict[tuple[str, str], int],
) -> AlarmDef:
    name = f.take("name", to_name)
    device = None
    if "device" in araw and araw["device"] in ("", None):
        raise f.error("device", "empty: name the device, or remove the key for an alarm on every device of the type")
    if f.has("device"):
        device = f.take("device", to_str, what="the device the alarm applies to")
        if device not in devices:
            raise f.error("device", "unknown device (declare it in tags.yaml)", device)
        tname = devices[device].type
        if f.has("type") and f.take("type", to_str) != tname:
            raise f.error("type", f"device {device} is a {tname}: give its type, or leave type out", f.sub("type"))
        f.take("type", to_str, default=tname)
    else:
        tname = f.take("type", to_str, what="the equipment type the alarm applies to (or device: one device)")
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
    condition = f.take("condition", one_of(*CONDITIONS))
    for key in ("point", "limit", "deadband", "states", "expression"):
        if key in araw and key not in CONDITION_KEYS[condition]:
            # A known key, but meaningless for this condition: not silently ignored.
            raise f.error(key, f"{_article(condition)} {condition} alarm has no {key} (remove this key)", araw[key])
    point = None
    if "point" in CONDITION_KEYS[condition]:
        point = f.take("point", to_str, what="the point the alarm watches")
        if t.point(point) is None:
            known = ", ".join(p.name for p in t.points)
            raise f.error("point", f"type {tname} has no such point (points: {known})", point)
        if t.point(point).kind == TEXT:
            raise f.error("point", "a text point has no value to compare: alarm on a number or a state", point)
    limit = None
    if "limit" in CONDITION_KEYS[condition]:
        what = (
            "the rate in engineering units per second"
            if condition == "rate_of_change"
            else "the limit in engineering units"
        )
        limit = f.take("limit", positive(to_float) if condition == "rate_of_change" else to_float, what=what)
    states: tuple[int, ...] = ()
    if condition == "state":
        raw_states = f.sub("states")
        if not isinstance(raw_states, list) or not raw_states:
            raise f.error("states", "expected a list of the values that raise the alarm", raw_states)
        try:
            states = tuple(to_int(s) for s in raw_states)
        except ValueError as exc:
            raise f.error("states", str(exc), raw_states) from None
    expression, expression_points = "", ()
    if condition == "expression":
        expression = f.take(
            "expression",
            to_str,
            what='a condition over the type\'s points, e.g. "contactor and power < 0.2 * nominal_power"',
        )
        try:
            _, expression_points = compile_expression(expression, [p.name for p in t.points])
        except ExpressionError as exc:
            raise f.error("expression", str(exc), expression) from None
        text = [p for p in expression_points if t.point(p).kind == TEXT]
        if text:
            raise f.error(
                "expression", f"{text[0]!r} is a text point: an expression compares numbers and states", expression
            )
    priority = f.take("priority", one_of(*PRIORITIES))
    service = f.take("service", to_str, what="the service the alarm is routed to")
    if service not in services:
        raise f.error("service", f"unknown service (services: {', '.join(services) or 'none declared'})", service)
    message = f.take("message", _message)
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
        deadband=f.take("deadband", non_negative(to_float), default=0.0),
        states=states,
        on_delay=f.take("on_delay", non_negative(to_float), default=0.0),
        off_delay=f.take("off_delay", non_negative(to_float), default=0.0),
        source=f"{f.file}:{f.line}",
        device=device,
        expression=expression,
        expression_points=tuple(expression_points),
        latching=f.take("latching", to_bool, default=False),
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
