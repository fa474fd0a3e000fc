"""alarms.yaml -> frozen alarm definitions, checked against the equipment types of tags.yaml.

This first version covers what the skeleton needs to validate: services, and per-type limit,
state and communication-loss alarms with priority, message, delays and routing. The engine
that evaluates them (ISA-18.2 states, suppression, journal) is a later issue.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from scada.fields import Fields, non_negative, one_of, positive, to_float, to_int, to_name, to_str
from scada.yamlsrc import ConfigError, LocMap
from scada.yamlsrc import load as load_yaml

if TYPE_CHECKING:
    from scada.config import EquipmentType

# ISA-18.2 priorities -> OPC UA severities (1-1000).
PRIORITIES = {"low": 250, "medium": 500, "high": 750, "critical": 900}
CONDITIONS = ("high_high", "high", "low", "low_low", "state", "comm_loss")
MESSAGE_FIELDS = {"device", "commune", "value", "unit", "point", "limit"}
ALARM_KEYS = ("name", "type", "point", "condition", "limit", "deadband", "states", "priority",
              "message", "service", "on_delay", "off_delay")


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


def load(path: Path, types: Mapping[str, "EquipmentType"]) -> AlarmsConfig:
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
    for i, araw in enumerate(raw_alarms):
        line = raw_alarms.line_of(i)
        f = Fields(araw, f"alarms[{i}]", file, line)
        name = f.take("name", to_name)
        tname = f.take("type", to_str, what="the equipment type the alarm applies to")
        if tname not in types:
            raise f.error("type", f"unknown equipment type (known types: {', '.join(types)})", tname)
        if (tname, name) in seen:
            raise f.error("name", f"duplicate alarm for type {tname} (first on line {seen[(tname, name)]})", name)
        seen[(tname, name)] = line
        condition = f.take("condition", one_of(*CONDITIONS))
        point = None
        if condition != "comm_loss":
            point = f.take("point", to_str, what="the point the alarm watches")
            if types[tname].point(point) is None:
                known = ", ".join(p.name for p in types[tname].points)
                raise f.error("point", f"type {tname} has no such point (points: {known})", point)
        limit = None
        if condition in ("high_high", "high", "low", "low_low"):
            limit = f.take("limit", to_float, what="the limit in engineering units")
        states: tuple[int, ...] = ()
        if condition == "state":
            raw_states = f.sub("states")
            if not isinstance(raw_states, list) or not raw_states:
                raise f.error("states", "expected a list of the values that raise the alarm", raw_states)
            try:
                states = tuple(to_int(s) for s in raw_states)
            except ValueError as exc:
                raise f.error("states", str(exc), raw_states) from None
        priority = f.take("priority", one_of(*PRIORITIES))
        service = f.take("service", to_str, what="the service the alarm is routed to")
        if service not in services:
            raise f.error("service", f"unknown service (services: {', '.join(services) or 'none declared'})", service)
        unused = ("point", "limit", "states") if condition == "comm_loss" else (
            ("limit",) if condition == "state" else ("states",))
        for key in unused:  # a known key, but meaningless for this condition: not silently ignored
            if key in araw:
                raise f.error(key, f"a {condition} alarm has no {key} (remove this key)", araw[key])
        message = f.take("message", _message)
        if limit is None and "{limit" in message:
            raise f.error("message", f"a {condition} alarm has no limit to show: remove {{limit}}", message)
        alarms.append(AlarmDef(
            name=name, type=tname, point=point, condition=condition, priority=priority,
            severity=PRIORITIES[priority], message=message, service=service,
            limit=limit, deadband=f.take("deadband", non_negative(to_float), default=0.0), states=states,
            on_delay=f.take("on_delay", non_negative(to_float), default=0.0),
            off_delay=f.take("off_delay", non_negative(to_float), default=0.0),
            source=f"{file}:{line}",
        ))
        f.done(ALARM_KEYS)
    return AlarmsConfig(tuple(alarms), MappingProxyType(services))

