"""operations.yaml -> :class:`~scada.operations.model.OperationsConfig`, or one located error.

The contract and the operations settings, beside tags.yaml and alarms.yaml (read after them: it
names their services, equipment classes, devices and communes):

* ``services``: per alarms.yaml service, the equipment classes it maintains, its contractual
  delays per priority (on site, repaired, the warning before each; a ``default:`` entry stands
  for the priorities not listed) and its Open311 service code. A service of alarms.yaml left out
  gets no work order.
* ``crews``: groups of fleet vehicles (fnmatch patterns over the devices of class ``fleet``, or
  ``all``) and the services they work for.
* ``dispatch``, ``open311``, ``http``: settings of the dispatch, the citizen reports and the HTTP
  server.
* ``energy``: baselines (kWh per day per cabinet, per commune or per named cabinet) and the
  savings target; ``availability``: a target per equipment class.

Every key is declared once in a table below (:class:`common.fields.Key`), which ``scada schema``
turns into the editor's JSON Schema. Durations are seconds or text with a unit ("30m", "4h",
"2d"); fractions are numbers in (0, 1] or percentages ("65 %").
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from common.fields import (
    Fields,
    Key,
    KeyTable,
    converter,
    host_port_schema,
    non_negative,
    object_schema,
    one_of,
    parse_host_port,
    positive,
    schema_of,
    to_bool,
    to_float,
    to_int,
    to_name,
    to_str,
)
from common.yamlsrc import ConfigError, LocList, LocMap
from common.yamlsrc import load as load_yaml
from scada.alarms.config import PRIORITIES, AlarmsConfig
from scada.operations.model import (
    CrewDef,
    Delays,
    DispatchSettings,
    EnergySettings,
    HttpSettings,
    Open311Settings,
    OperationsConfig,
    ServiceDef,
)
from scada.operations.proxies import Network, parse_network

if TYPE_CHECKING:
    from scada.config import Device, EquipmentType

FLEET_CLASS = "fleet"  # the crews' vehicles: devices of an equipment type of this class
LIGHTING_CLASS = "lighting"  # what an energy baseline is about
DEFAULT = "default"  # the delays entry that stands for every priority not listed
HTTP_PORT = 8080
HTTP_INTERNAL_PORT = 9464  # Prometheus's port for an exporter's /metrics
_NAME_SCHEMA = schema_of(to_name)
_NAMES = {"anyOf": [_NAME_SCHEMA, {"type": "array", "minItems": 1, "items": _NAME_SCHEMA}]}  # one name: a list of one

# -- converters ----------------------------------------------------------------------------------

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h|d|w)\s*$")
DURATION_FORMS = 'seconds, or a number with a unit: "90s", "30m", "4h", "2d", "1w"'


@converter(
    {
        "anyOf": [
            {"type": "number", "minimum": 0},
            {
                "type": "string",
                "pattern": "^\\s*([0-9]+(\\.[0-9]*)?|\\.[0-9]+)\\s*(s|m|min|h|d|w)\\s*$",
                "patternErrorMessage": f"a duration: {DURATION_FORMS}",
            },
        ]
    }
)
def to_duration(v: Any) -> float:
    """A duration in seconds: a number (seconds) or text with a unit (s, m or min, h, d, w)."""
    if isinstance(v, str):
        m = _DURATION.match(v.lower())
        if not m:
            raise ValueError(f"expected a duration: {DURATION_FORMS}")
        return float(m.group(1)) * _UNITS[m.group(2)]
    try:
        s = to_float(v)
    except ValueError:
        raise ValueError(f"expected a duration: {DURATION_FORMS}") from None
    if s < 0:
        raise ValueError("a duration is not negative")
    return s


def _positive_duration(v: Any) -> float:
    s = to_duration(v)
    if s <= 0:
        raise ValueError("must be longer than zero")
    return s


positive_duration = converter(
    {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, schema_of(to_duration)["anyOf"][1]]}
)(_positive_duration)

_FRACTION_FORMS = 'a fraction in (0, 1], e.g. 0.98, or a percentage: "98 %"'


@converter(
    {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            {
                "type": "string",
                "pattern": "^\\s*([0-9]+(\\.[0-9]*)?|\\.[0-9]+)\\s*%\\s*$",
                "patternErrorMessage": _FRACTION_FORMS,
            },
        ]
    }
)
def to_fraction(v: Any) -> float:
    """A target: a number in (0, 1], or a percentage ("65 %") in (0, 100]."""
    if isinstance(v, str) and v.strip().endswith("%"):
        x = to_float(v.strip()[:-1].strip()) / 100.0
    else:
        try:
            x = to_float(v)
        except ValueError:
            raise ValueError(f"expected {_FRACTION_FORMS}") from None
    if not 0 < x <= 1:
        raise ValueError(f"must be within (0, 1]: {_FRACTION_FORMS}")
    return x


# -- key tables ----------------------------------------------------------------------------------

DELAY_KEYS: KeyTable = {
    "on_site": Key(
        positive_duration,
        f"How long after the fault is known (the alarm, or the citizen's report) a crew must be on site ({DURATION_FORMS}).",
        what="the delay to be on site, e.g. 4h",
        examples=("1h", "4h", "48h"),
    ),
    "repaired": Key(
        positive_duration,
        f"How long after the fault is known it must be repaired; not shorter than on_site ({DURATION_FORMS}).",
        what="the delay to repair, e.g. 24h",
        examples=("4h", "24h", "5d"),
    ),
    "warn_before": Key(
        to_duration,
        "The warning this long before each deadline (default: the service's warn_before); shorter than on_site.",
        None,
        examples=("15m", "1h"),
    ),
}
OPEN311_SERVICE_KEYS: KeyTable = {
    "code": Key(
        to_name,
        "Its Open311 service_code: what a citizen's app sends (unique among the services).",
        what="a code, e.g. streetlight",
        examples=("streetlight", "traffic_signal", "bollard"),
    ),
    "name": Key(to_str, "The service_name citizens' apps show (default: the code).", ""),
    "description": Key(to_str, "The description citizens' apps show.", ""),
}
SERVICE_KEYS: KeyTable = {
    "classes": Key(
        None,
        "The equipment classes it maintains (lighting, traffic, bollard, fleet...): a citizen's report goes to the "
        "nearest of them. Default: the classes of the equipment types whose alarms alarms.yaml routes to it.",
        None,
        schema=_NAMES,
    ),
    "default_priority": Key(
        one_of(*PRIORITIES),
        "The priority of a citizen's report or an operator's order that gives none (default medium).",
        "medium",
    ),
    "warn_before": Key(
        to_duration,
        f"The warning this long before each deadline, for every priority that gives none (default 15m; {DURATION_FORMS}).",
        900.0,
        examples=("15m", "1h"),
    ),
    "delays": Key(
        None,
        "The contract's delays per priority (low, medium, high, critical), counted from the fault: every priority "
        "needs one, or a `default:` entry stands for those not listed.",
        schema={
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": [*PRIORITIES, DEFAULT]},
            "additionalProperties": object_schema(DELAY_KEYS, description="Delays of one priority."),
        },
    ),
    "open311": Key(
        None,
        "Offered to citizens through Open311 under this code (leave out: not offered).",
        None,
        schema=object_schema(OPEN311_SERVICE_KEYS, description="How citizens' apps see the service."),
    ),
}
CREW_KEYS: KeyTable = {
    "vehicles": Key(
        None,
        "The fleet's vehicles (devices of class fleet) in these crews: names or patterns (* any text, ? one "
        'character, [15] one of those characters), e.g. ["V-00*", "V-01?"]; or all. Each pattern must match a '
        "vehicle; a vehicle is in one group only.",
        what='vehicle names or patterns, e.g. ["V-00*"], or all',
        schema={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            ]
        },
        examples=("all",),
    ),
    "skills": Key(
        None,
        "The services (under services) these crews work for.",
        what="service names, e.g. [lighting_maintenance]",
        schema=_NAMES,
    ),
}
DISPATCH_KEYS: KeyTable = {
    "auto_assign": Key(
        to_bool,
        "true: a new order goes at once to the nearest available crew with the skill; false: the crew is only "
        "proposed to the dispatcher (default true).",
        True,
    ),
    "speed_kmh": Key(
        positive(to_float), "The crews' average speed, for the ETA from the great-circle distance (default 30).", 30.0
    ),
    "answer_timeout": Key(
        positive_duration,
        "An assignment not accepted by the crew within this delay goes back to new, to be dispatched again (default 5m).",
        300.0,
    ),
}
OPEN311_KEYS: KeyTable = {
    "radius_m": Key(
        positive(to_float),
        "A report this near (m) an open order or alarm of its service is attached to it (default 50).",
        50.0,
    ),
    "rate_per_minute": Key(
        positive(to_float), "Reports one client address may post per minute, sustained (default 10).", 10.0
    ),
    "rate_burst": Key(positive(to_int), "Reports one client address may post at once (default 5).", 5),
    "max_body_bytes": Key(positive(to_int), "Largest request body accepted (default 16384).", 16_384),
    "purge_contact_after": Key(
        to_duration,
        "The citizen's contact details are deleted this long after the order is closed (default 30d).",
        30 * 86400.0,
    ),
    "territory_margin_m": Key(
        to_float,
        "Reports are accepted within this margin (m) around the devices' bounding box (default 2000).",
        2_000.0,
        schema={"type": "number", "minimum": 0},
    ),
    "jurisdiction_id": Key(to_str, "The Open311 jurisdiction_id (e.g. the city's domain name); empty: none.", ""),
}
_IPV4 = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}"
_PROXY_SCHEMA = {  # the loader checks an IPv6 entry fully (the pattern is loose there)
    "type": "string",
    "pattern": f"^\\s*(({_IPV4})(/(3[0-2]|[12]?[0-9]))?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)\\s*$",
    "patternErrorMessage": "an IP address or a CIDR network, e.g. 10.0.0.5, 10.0.0.0/24, 2001:db8::/64",
}
HTTP_KEYS: KeyTable = {
    "listen": Key(
        None,
        f"host:port of the citizens' HTTP server (Open311 only), default 127.0.0.1:{HTTP_PORT}; false: no HTTP "
        "server at all (no internal one either).",
        f"127.0.0.1:{HTTP_PORT}",
        schema={"anyOf": [host_port_schema(), {"const": False}]},
        examples=(f"127.0.0.1:{HTTP_PORT}", f"0.0.0.0:{HTTP_PORT}"),
    ),
    "internal": Key(
        None,
        "host:port of the internal HTTP listener: the map feed /map.geojson and /metrics (crews' positions, "
        "devices' states, the server's internals: the city's network only, never the citizens'), default "
        f"127.0.0.1:{HTTP_INTERNAL_PORT}; false: not served.",
        f"127.0.0.1:{HTTP_INTERNAL_PORT}",
        schema={"anyOf": [host_port_schema(), {"const": False}]},
        examples=(f"127.0.0.1:{HTTP_INTERNAL_PORT}", f"10.1.2.3:{HTTP_INTERNAL_PORT}"),
    ),
    "trusted_proxies": Key(
        None,
        "The city's reverse proxies in front of listen (TLS): addresses or networks (CIDR), IPv4 or IPv6, e.g. "
        "[10.0.0.5, 2001:db8::/64]. A request from one of them is the citizen the rightmost address of its "
        "X-Forwarded-For names that is not itself a trusted proxy: the rate limit and the report's recorded "
        "client are the citizen's. Default none: the TCP peer is the client, and X-Forwarded-For is ignored "
        "(any client can write it).",
        None,
        what="addresses or networks of the reverse proxies, e.g. [10.0.0.5] or [10.0.0.0/24]",
        schema={
            "anyOf": [
                _PROXY_SCHEMA,
                {"type": "array", "items": _PROXY_SCHEMA},
            ]
        },
        examples=(["127.0.0.1"], ["10.0.0.5"], ["10.0.0.0/24", "2001:db8::/64"]),
    ),
}
_KWH = {"type": "number", "minimum": 0}
ENERGY_KEYS: KeyTable = {
    "baseline_kwh_per_day": Key(
        non_negative(to_float),
        "Reference consumption of one lighting cabinet, kWh per day, where no commune or cabinet baseline applies "
        "(0: none).",
        0.0,
    ),
    "communes": Key(
        None,
        "Reference consumption of all the lighting cabinets of a commune, kWh per day: commune -> kWh.",
        None,
        schema={"type": "object", "additionalProperties": _KWH},
    ),
    "cabinets": Key(
        None,
        "Reference consumption of one lighting cabinet, kWh per day: cabinet -> kWh (before its commune's).",
        None,
        schema={"type": "object", "propertyNames": _NAME_SCHEMA, "additionalProperties": _KWH},
    ),
    "savings_target": Key(
        to_fraction,
        'The contract\'s savings against the baseline: a fraction or a percentage ("65 %" for -65 %).',
        None,
        examples=("65 %",),
    ),
}
OPERATIONS_FILE_KEYS: KeyTable = {
    "services": Key(
        None,
        "The services of alarms.yaml that get work orders, with their contract. A service left out gets none.",
        None,
        schema={
            "type": ["object", "null"],
            "propertyNames": _NAME_SCHEMA,
            "additionalProperties": {"$ref": "#/definitions/service"},
        },
    ),
    "crews": Key(
        None,
        "Groups of fleet vehicles and the services they work for.",
        None,
        schema={"type": ["array", "null"], "items": {"$ref": "#/definitions/crews"}},
    ),
    "dispatch": Key(None, "How orders reach the crews.", None, schema={"$ref": "#/definitions/dispatch"}),
    "open311": Key(None, "Citizens' reports (Open311 GeoReport v2).", None, schema={"$ref": "#/definitions/open311"}),
    "http": Key(None, "The HTTP server (Open311, map feed, metrics).", None, schema={"$ref": "#/definitions/http"}),
    "energy": Key(None, "Energy baselines and the savings target.", None, schema={"$ref": "#/definitions/energy"}),
    "availability": Key(
        None,
        "Availability target per equipment class (device-time in communication and without fault): class -> "
        + _FRACTION_FORMS
        + ".",
        None,
        schema={"type": "object", "propertyNames": _NAME_SCHEMA, "additionalProperties": schema_of(to_fraction)},
    ),
}
# The sections read with a table of their own: file key -> (table, the schema definition's help).
SECTIONS: Mapping[str, tuple[KeyTable, str]] = {
    "dispatch": (DISPATCH_KEYS, "How orders reach the crews."),
    "open311": (OPEN311_KEYS, "Citizens' reports (Open311 GeoReport v2)."),
    "http": (HTTP_KEYS, "The HTTP server."),
    "energy": (ENERGY_KEYS, "Energy baselines (kWh per day) and the savings target."),
}

# -- loading -------------------------------------------------------------------------------------


def load(
    path: Path,
    types: Mapping[str, EquipmentType],
    devices: Sequence[Device],
    alarms: AlarmsConfig,
) -> OperationsConfig:
    """Read operations.yaml against the configuration it refers to (tags.yaml's types and devices,
    alarms.yaml's services and alarms)."""
    file = str(path)
    doc = load_yaml(path)
    if doc is None:  # empty, or only comments: operations off
        return OperationsConfig()
    if not isinstance(doc, LocMap):
        raise ConfigError(file, getattr(doc, "line", 1), "", "expected a mapping with services, crews...")
    top = Fields(doc, "", file, 1)
    for key in OPERATIONS_FILE_KEYS:  # a misspelt section first: its contents would be blamed otherwise
        top.sub(key)
    top.done(OPERATIONS_FILE_KEYS)
    classes = {t.cls for t in types.values()}
    services = _services(top, types, classes, alarms)
    crews = _crews(top, types, devices, services)
    sections = {}
    for key in SECTIONS:
        raw = top.sub(key)
        sections[key] = Fields(LocMap() if raw is None else raw, key, file, top.line_of(key))
    dispatch = _read_all(sections["dispatch"], DISPATCH_KEYS)
    open311 = _read_all(sections["open311"], OPEN311_KEYS)
    energy = _energy(sections["energy"], types, devices)
    out = OperationsConfig(
        services=services,
        crews=crews,
        dispatch=DispatchSettings(
            auto_assign=dispatch["auto_assign"],
            speed_kmh=dispatch["speed_kmh"],
            answer_timeout_s=dispatch["answer_timeout"],
        ),
        open311=Open311Settings(
            radius_m=open311["radius_m"],
            rate_per_minute=open311["rate_per_minute"],
            rate_burst=open311["rate_burst"],
            max_body_bytes=open311["max_body_bytes"],
            purge_contact_after_s=open311["purge_contact_after"],
            territory_margin_m=open311["territory_margin_m"],
            jurisdiction_id=open311["jurisdiction_id"],
        ),
        http=_http(sections["http"]),
        energy=energy,
        availability=_availability(top, classes),
    )
    return out


def _read_all(f: Fields, table: KeyTable) -> dict[str, Any]:
    out = {k: f.read(table, k) for k, key in table.items() if key.convert is not None}
    f.done(table)
    return out


def _mapping(top: Fields, key: str, what: str) -> LocMap:
    raw = top.sub(key)
    if raw is None:
        return LocMap()
    if not isinstance(raw, LocMap):  # the YAML reader's mappings are LocMaps
        raise top.error(key, f"expected a mapping of {what}", raw)
    return raw


def _names(raw: Any, f: Fields, key: str, what: str) -> list[str]:
    """A list of names (one name alone is taken as a list of one)."""
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list) or not raw:
        raise f.error(key, f"expected a list of {what}", raw)
    try:
        return [to_name(x) for x in raw]
    except ValueError as exc:
        raise f.error(key, str(exc), raw) from None


def _services(
    top: Fields, types: Mapping[str, EquipmentType], classes: set[str], alarms: AlarmsConfig
) -> Mapping[str, ServiceDef]:
    raw_services = _mapping(top, "services", "service names to their contract")
    # A service's default classes: those of the types whose alarms it receives, in alarms.yaml's order.
    alarm_classes: dict[str, dict[str, None]] = {}
    for a in alarms.alarms:
        alarm_classes.setdefault(a.service, {})[types[a.type].cls] = None
    out: dict[str, ServiceDef] = {}
    codes: dict[str, tuple[str, int | None]] = {}
    for sname, sraw in raw_services.items():
        line = raw_services.line_of(sname)
        key = f"services.{sname}"
        if isinstance(sname, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            raise ConfigError(top.file, line, key, "YAML reads on/off/yes/no as true/false: quote the name", sname)
        if sname not in alarms.services:
            known = ", ".join(alarms.services) or "none declared"
            raise ConfigError(top.file, line, key, f"not a service of alarms.yaml (its services: {known})", sname)
        f = Fields(sraw, key, top.file, line)
        if f.has("classes"):
            cls = _names(f.sub("classes"), f, "classes", "equipment classes, e.g. [lighting]")
            unknown = [c for c in cls if c not in classes]
            if unknown:
                raise f.error(
                    "classes",
                    f"unknown class {unknown[0]!r} (tags.yaml's classes: {', '.join(sorted(classes))})",
                    f.sub("classes"),
                )
            service_classes = tuple(dict.fromkeys(cls))
        else:
            f.sub("classes")
            service_classes = tuple(alarm_classes.get(sname, {}))
        default_priority = f.read(SERVICE_KEYS, "default_priority")
        warn_before = f.read(SERVICE_KEYS, "warn_before")
        delays = _delays(f, warn_before)
        code = name = description = ""
        if f.has("open311"):
            o = Fields(f.sub("open311"), f.key("open311"), f.file, f.line_of("open311"))
            code = o.read(OPEN311_SERVICE_KEYS, "code")
            if code in codes:
                first, first_line = codes[code]
                raise o.error("code", f"duplicate Open311 code: already the code of {first} (line {first_line})", code)
            codes[code] = (sname, o.line_of("code"))
            name = o.read(OPEN311_SERVICE_KEYS, "name") or code
            description = o.read(OPEN311_SERVICE_KEYS, "description")
            o.done(OPEN311_SERVICE_KEYS)
        else:
            f.sub("open311")
        f.done(SERVICE_KEYS)
        out[sname] = ServiceDef(
            name=sname,
            classes=service_classes,
            delays=delays,
            open311_code=code,
            open311_name=name,
            open311_description=description,
            default_priority=default_priority,
        )
    return MappingProxyType(out)


def _delays(f: Fields, warn_before: float) -> Mapping[str, Delays]:
    """Every priority's delays (the ``default:`` entry fills those not listed)."""
    raw = f.sub("delays")
    if raw is None and "delays" not in f.mapping:
        raise f.error(
            "delays",
            "required key is missing: the contract's delays per priority, e.g. {default: {on_site: 48h, repaired: 5d}}",
        )
    if not isinstance(raw, LocMap) or not raw:
        raise f.error(
            "delays", "expected a mapping of priorities (low, medium, high, critical, default) to delays", raw
        )
    given: dict[str, Delays] = {}
    for prio, draw in raw.items():
        key = f"delays.{prio}"
        line = raw.line_of(prio)
        if prio not in PRIORITIES and prio != DEFAULT:
            raise ConfigError(
                f.file, line, f.key(key), f"not a priority (priorities: {', '.join(PRIORITIES)}, or {DEFAULT})", prio
            )
        d = Fields(draw, f.key(key), f.file, line)
        on_site = d.read(DELAY_KEYS, "on_site")
        repaired = d.read(DELAY_KEYS, "repaired")
        warn = d.read(DELAY_KEYS, "warn_before", default=warn_before)
        d.done(DELAY_KEYS)
        if repaired < on_site:
            raise d.error(
                "repaired", f"shorter than on_site ({_human(on_site)}): a repair is done on site", d.mapping["repaired"]
            )
        if warn >= on_site:
            where = "warn_before" if "warn_before" in d.mapping else "on_site"
            raise d.error(
                where,
                f"the warning {_human(warn)} before the deadline would come before the fault is known: make "
                f"warn_before shorter than on_site ({_human(on_site)})",
                d.mapping[where],
            )
        given[str(prio)] = Delays(on_site, repaired, warn)
    missing = [p for p in PRIORITIES if p not in given]
    if missing and DEFAULT not in given:
        raise f.error(
            "delays",
            f"no delays for priority {', '.join(missing)}: every priority needs its delays, or add a "
            f"`{DEFAULT}:` entry for those not listed",
        )
    return MappingProxyType({p: given.get(p) or given[DEFAULT] for p in PRIORITIES})


def _human(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def _crews(
    top: Fields, types: Mapping[str, EquipmentType], devices: Sequence[Device], services: Mapping[str, ServiceDef]
) -> Mapping[str, CrewDef]:
    raw = top.sub("crews")
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, LocList):  # the YAML reader's lists are LocLists
        raise top.error("crews", "expected a list of crew groups, e.g. - {vehicles: [V-00*], skills: [...]}", raw)
    fleet = [d.name for d in devices if types[d.type].cls == FLEET_CLASS]
    out: dict[str, CrewDef] = {}
    group_of: dict[str, tuple[int, int | None]] = {}
    for i, graw in enumerate(raw):
        f = Fields(graw, f"crews[{i}]", top.file, raw.line_of(i))
        if "vehicles" not in f.mapping or f.mapping["vehicles"] in (None, ""):
            raise f.error("vehicles", f"required key is missing: {CREW_KEYS['vehicles'].what}")
        vraw = f.sub("vehicles")
        if vraw == "all":
            patterns = ["*"]
            if not fleet:
                raise f.error("vehicles", "no vehicle in tags.yaml (devices of an equipment type of class fleet)", vraw)
        else:
            vlist = [vraw] if isinstance(vraw, str) else vraw
            if not isinstance(vlist, list) or not vlist or not all(isinstance(p, str) and p for p in vlist):
                raise f.error("vehicles", f"expected {CREW_KEYS['vehicles'].what}", vraw)
            patterns = list(vlist)
        if "skills" not in f.mapping:
            raise f.error("skills", f"required key is missing: {CREW_KEYS['skills'].what}")
        skills = tuple(dict.fromkeys(_names(f.sub("skills"), f, "skills", CREW_KEYS["skills"].what)))
        for s in skills:
            if s not in services:
                raise f.error(
                    "skills",
                    f"{s!r} is not a service of this file (services: {', '.join(services) or 'none'})",
                    list(skills),
                )
        f.done(CREW_KEYS)
        for pattern in patterns:
            matched = [v for v in fleet if fnmatch.fnmatchcase(v, pattern)]  # device names are case-sensitive
            if not matched:
                sample = ", ".join(fleet[:5]) + (", ..." if len(fleet) > 5 else "") if fleet else "none"
                raise f.error("vehicles", f"{pattern!r} matches no vehicle of the fleet (vehicles: {sample})", pattern)
            for v in matched:
                if v in group_of:
                    j, line = group_of[v]
                    if j == i:
                        continue  # two patterns of one group may overlap
                    raise f.error(
                        "vehicles",
                        f"{v} is already in crews[{j}] (line {line}): a vehicle is in one group only",
                        pattern,
                    )
                group_of[v] = (i, f.line)
                out[v] = CrewDef(v, skills)
    return MappingProxyType(out)


def _http(f: Fields) -> HttpSettings:
    trusted = _trusted_proxies(f)  # before _listen: it closes the section
    listen, internal = _listen(f)
    return HttpSettings(listen, internal, trusted)


def _trusted_proxies(f: Fields) -> tuple[Network, ...]:
    """http.trusted_proxies: a list of addresses or networks (one alone: a list of one)."""
    key, what = "trusted_proxies", HTTP_KEYS["trusted_proxies"].what
    raw = f.sub(key)
    if key not in f.mapping:
        return ()
    if raw is None or raw == "":
        raise f.error(key, f"no value given: {what}, or [] for none")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise f.error(key, f"expected a list of {what}", raw)
    out: dict[Network, tuple[str, int | None]] = {}
    for i, item in enumerate(items):
        line = raw.line_of(i) if isinstance(raw, LocList) else f.line_of(key)
        where = f.key(f"{key}[{i}]") if isinstance(raw, list) else f.key(key)
        if not isinstance(item, str):  # YAML reads 10 or 10.5 as numbers
            raise ConfigError(
                f.file,
                line,
                where,
                "expected an IP address or a CIDR network as text, e.g. 10.0.0.5 or 10.0.0.0/24",
                item,
            )
        try:
            net = parse_network(item)
        except ValueError as exc:
            raise ConfigError(f.file, line, where, str(exc), item) from None
        if net in out:
            first, first_line = out[net]
            raise ConfigError(f.file, line, where, f"listed twice: already {first} (line {first_line})", item)
        out[net] = (item, line)
    return tuple(out)


def _listen(f: Fields) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """http.listen and http.internal."""
    raws = {key: f.sub(key) for key in ("listen", "internal")}
    f.done(HTTP_KEYS)
    out: list[tuple[str, int] | None] = []
    for key, port in (("listen", HTTP_PORT), ("internal", HTTP_INTERNAL_PORT)):
        raw = raws[key]
        if raw is False:
            out.append(None)
            continue
        if raw is None or raw == "":
            if key in f.mapping:
                raise f.error(key, f"no value given: host:port (e.g. 127.0.0.1:{port}), or false for none")
            out.append(parse_host_port(str(HTTP_KEYS[key].default), port))
            continue
        if not isinstance(raw, str):
            raise f.error(key, f"expected host:port (e.g. 127.0.0.1:{port}), or false for none", raw)
        try:
            out.append(parse_host_port(raw, port, service="HTTP"))
        except ValueError as exc:
            raise f.error(key, str(exc), raw) from None
    return out[0], out[1]


def _kwh(f: Fields, key: str, raw: Any) -> float:
    try:
        x = to_float(raw)
    except ValueError as exc:
        raise f.error(key, f"{exc}: kWh per day", raw) from None
    if x < 0:
        raise f.error(key, "a consumption is not negative", raw)
    return x


def _energy(f: Fields, types: Mapping[str, EquipmentType], devices: Sequence[Device]) -> EnergySettings:
    baseline = f.read(ENERGY_KEYS, "baseline_kwh_per_day")
    target = f.read(ENERGY_KEYS, "savings_target", default=0.0)
    lighting = [d for d in devices if types[d.type].cls == LIGHTING_CLASS]
    communes = {d.commune for d in lighting}
    cabinets = {d.name for d in lighting}
    per: dict[str, dict[str, float]] = {}
    for key, known, what in (("communes", communes, "commune"), ("cabinets", cabinets, "cabinet")):
        raw = f.sub(key)
        per[key] = {}
        if raw is None:
            continue
        if not isinstance(raw, LocMap):
            raise f.error(key, f"expected a mapping of {what} names to kWh per day", raw)
        sub = Fields(raw, f.key(key), f.file, f.line_of(key))
        for name, value in raw.items():
            if str(name) not in known:
                other = {d.name for d in devices} if what == "cabinet" else {d.commune for d in devices}
                why = "not a lighting cabinet" if str(name) in other else f"unknown {what}"
                hint = (
                    " (tags.yaml's communes with lighting cabinets: "
                    + ", ".join(sorted(communes)[:8])
                    + (", ..." if len(communes) > 8 else "")
                    + ")"
                    if what == "commune"
                    else ""
                )
                raise sub.error(str(name), f"{why}: a baseline is for the lighting cabinets of tags.yaml{hint}", name)
            per[key][str(name)] = _kwh(sub, str(name), value)
    f.done(ENERGY_KEYS)
    return EnergySettings(
        baseline_kwh_per_day=baseline,
        communes=MappingProxyType(per["communes"]),
        cabinets=MappingProxyType(per["cabinets"]),
        savings_target=target,
    )


def _availability(top: Fields, classes: set[str]) -> Mapping[str, float]:
    raw = _mapping(top, "availability", "equipment classes to targets, e.g. {lighting: 0.98}")
    f = Fields(raw, "availability", top.file, top.line_of("availability"))
    out: dict[str, float] = {}
    for cls in raw:
        if str(cls) not in classes:
            raise f.error(str(cls), f"unknown class (tags.yaml's classes: {', '.join(sorted(classes))})", cls)
        out[str(cls)] = f.take(str(cls), to_fraction)
    return MappingProxyType(out)


def summary(ops: OperationsConfig) -> list[str]:
    """What `scada check` prints of operations.yaml."""
    if not ops.services:
        return ["operations: off (no operations.yaml, or no service in it): no work orders, crews nor Open311"]
    lines = [f"operations: {len(ops.services)} services with a contract, {len(ops.crews)} crew vehicles"]
    for s in ops.services.values():
        crews = len(ops.crews_for(s.name))
        d = s.delays
        delays = "; ".join(f"{p} {_human(d[p].on_site_s)}/{_human(d[p].repaired_s)}" for p in PRIORITIES)
        code = f"; Open311 {s.open311_code}" if s.open311_code else ""
        lines.append(f"  {s.name}: {crews} crews; on site/repaired {delays}{code}")
    if ops.energy.savings_target:
        lines.append(
            f"energy: savings target {ops.energy.savings_target:.0%} against {ops.energy.baseline_kwh_per_day:g} "
            f"kWh/day per cabinet ({len(ops.energy.communes)} commune and {len(ops.energy.cabinets)} cabinet baselines)"
        )
    if ops.availability:
        lines.append("availability targets: " + ", ".join(f"{c} {t:.1%}" for c, t in ops.availability.items()))
    listen, internal = ops.http.listen, ops.http.internal
    where = "off" if listen is None else f"{listen[0]}:{listen[1]}"
    if listen is not None:
        where += f" (map, metrics: {'off' if internal is None else f'{internal[0]}:{internal[1]}'})"
    if listen is not None:
        proxies = ", ".join(str(n) for n in ops.http.trusted_proxies)
        where += (
            f"; clients behind the trusted proxies {proxies} (X-Forwarded-For)"
            if proxies
            else "; the client is the TCP peer (no trusted proxy)"
        )
    lines.append(
        f"HTTP: {where}; dispatch "
        f"{'automatic' if ops.dispatch.auto_assign else 'proposed only'} at {ops.dispatch.speed_kmh:g} km/h"
    )
    return lines
