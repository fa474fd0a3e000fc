"""MQTT keys of tags.yaml: which topic and JSON field each point comes from, and the broker.

Topics are templates: ``{device}`` is replaced by the device's name, so a type declares
``city/bollards/{device}/state`` once for all its devices.

```yaml
access_bollard:
  class: bollard
  driver: mqtt
  status_topic: city/bollards/{device}/status   # birth "online" / last will "offline"
  command_topic: city/bollards/{device}/cmd     # writes: {"command": label, "correlation_id": id}
  ack_topic: city/bollards/{device}/ack         # answered with the same correlation_id
  max_packet: 262144                            # bytes: a larger packet closes the broker link unread
  messages:                                     # optional: message channels beside the tags (crews' orders)
    order: {send: "city/vehicles/{device}/order", answers: "city/vehicles/{device}/order_status"}
  broker_security:                              # optional: TLS and a login (drivers/mqtt/security.py)
    ca: pki/broker-ca.pem
    username: scada
    password_file: secrets/mqtt.pw              # or password_env: NAME; never the password itself
  points:
    position: {topic: "city/bollards/{device}/state", json: position,
               enum: {0: down, 1: rising, 2: up, 3: lowering, 4: fault}}
    vehicle:  {topic: "city/bollards/{device}/state", json: vehicle, type: bool}
    command:  {type: command, writable: true, enum: {0: lower, 1: raise, 2: emergency_lower, 3: reset}}
```
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from common.fields import (
    NAME_RE,
    NO_DEADBAND,
    Fields,
    Key,
    KeyTable,
    Schema,
    converter,
    device_template_ok,
    host_port_schema,
    in_range,
    object_schema,
    one_of,
    parse_host_port,
    schema_of,
    to_int,
    to_name,
    to_str,
    when,
)
from common.yamlsrc import ConfigError
from drivers.mqtt.security import NO_SECURITY, SECURITY_KEYS, SECURITY_RULES, MqttSecurity, parse_security
from scada.driver_api import DeviceSite
from scada.tagdb import ANALOG, DISCRETE, TEXT

MAX_PACKET_RANGE = (1024, 268_435_455)  # bytes: a useful minimum; the most MQTT's remaining length can say
POINT_TYPES = ("number", "bool", "text", "command")
_JSON_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# What `driver: mqtt` means, for the editor's list of drivers.
SCHEMA_DESCRIPTION = (
    "MQTT: points are read from topics (a JSON field or the whole payload) and commanded through the type's "
    "command_topic; devices have an endpoint (the broker, host:port)"
)


@converter(
    {
        "type": "string",
        "pattern": "^(?:[^{}+#\\u0000]|\\{device\\}|\\{\\{|\\}\\})+$",
        "patternErrorMessage": "a literal MQTT topic: no + or # wildcard; the only placeholder is {device}",
    }
)
def _topic(v: object) -> str:
    s = to_str(v)
    if not s or any(ch in s for ch in "+#\0"):
        raise ValueError("a topic is a literal MQTT topic (no + or # wildcard); {device} stands for the device name")
    if not device_template_ok(s):
        raise ValueError("the only placeholder a topic may use is {device}")
    return s


@dataclass(frozen=True, slots=True)
class MqttChannel:
    """A message channel of a type (``messages:``): JSON objects sent to a device on ``send``, its
    answers read from ``answers`` (None: it never answers). Topics are templates ({device})."""

    name: str
    send: str
    answers: str | None = None
    qos: int = 1


@dataclass(frozen=True, slots=True)
class MqttType:
    status_topic: str | None = None
    online_payload: str = "online"
    offline_payload: str = "offline"
    command_topic: str | None = None
    ack_topic: str | None = None
    max_packet: int | None = None  # bytes after a packet's fixed header; None: the driver's default (aio.MAX_PACKET)
    security: MqttSecurity = NO_SECURITY  # TLS and login to the broker (broker_security)
    messages: tuple[MqttChannel, ...] = ()  # message channels (scada.driver_api.MessageChannel)

    def channel(self, name: str) -> MqttChannel | None:
        return next((c for c in self.messages if c.name == name), None)


@dataclass(frozen=True, slots=True)
class MqttPoint:
    topic: str | None  # None for a command point (written, never read)
    json: str | None  # dotted path in a JSON object; None: the whole payload is the value
    type: str = "number"
    qos: int = 1

    @property
    def kind(self) -> int:
        return {"bool": DISCRETE, "text": TEXT, "command": DISCRETE}.get(self.type, ANALOG)

    @property
    def writable_ok(self) -> bool:
        return self.type == "command"

    not_writable_reason = "values read from a topic are read-only: only a point of type command can be written"

    @property
    def needs_command_enum(self) -> bool:
        return self.type == "command"

    @property
    def reports_back(self) -> bool:
        return self.type != "command"  # a command is acknowledged on its ack topic, never read back


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int

    @property
    def connection(self) -> tuple[str, int]:
        return (self.host, self.port)


@converter(
    {
        "type": "string",
        "pattern": f"^{_JSON_PATH.pattern}$",
        "patternErrorMessage": "a JSON path is field names joined by dots, e.g. position or gps.lat",
    }
)
def _json_path(v: object) -> str:
    s = to_str(v)
    if not _JSON_PATH.fullmatch(s):
        raise ValueError("a JSON path is field names joined by dots, e.g. position or gps.lat")
    return s


_PAYLOAD = {"type": "string", "minLength": 1}
CHANNEL_KEYS: KeyTable = {
    "send": Key(
        _topic,
        "Topic a message to the device is published on, as a JSON object (QoS 1, not retained). {device} stands for the device's name.",
        what="the topic messages to the device are published on, e.g. city/vehicles/{device}/order",
        examples=("city/vehicles/{device}/order",),
    ),
    "answers": Key(
        _topic,
        "Topic the device answers on, JSON objects delivered one by one in the order they arrive (never coalesced like values). {device} stands for the device's name. Absent: the device never answers on this channel.",
        None,
        examples=("city/vehicles/{device}/order_status",),
    ),
    "qos": Key(
        in_range(to_int, 1, 2),
        "MQTT quality of service of the messages sent and of the subscription to the answers, 1 or 2 (default 1: a message must reach the broker; 0 could be lost silently).",
        1,
    ),
}
TYPE_KEYS: KeyTable = {
    "status_topic": Key(
        _topic,
        "MQTT only. Topic each device announces itself on: online_payload when it connects (its birth message), offline_payload as its last will, which marks it out of communication until its next value. A literal topic, no + or # wildcard; {device} stands for the device's name.",
        None,
    ),
    "online_payload": Key(
        to_str,
        'MQTT only. Payload of the status topic announcing a device online, its birth message (default "online"). Quote a payload YAML would read as a number or a boolean.',
        "online",
        schema=_PAYLOAD,
    ),
    "offline_payload": Key(
        to_str,
        'MQTT only. Payload of the status topic (the device\'s last will) that marks it out of communication (default "offline"). Quote a payload YAML would read as a number or a boolean.',
        "offline",
        schema=_PAYLOAD,
    ),
    "command_topic": Key(
        _topic,
        'MQTT only. Topic commands are published on, as JSON {"command": <enum label>, "correlation_id": <id>}. Required when the type has a command point. {device} stands for the device\'s name.',
        None,
    ),
    "ack_topic": Key(
        _topic,
        "MQTT only. Topic the device acknowledges commands on, echoing the correlation_id. Required when the type has a command point. {device} stands for the device's name.",
        None,
    ),
    "max_packet": Key(
        in_range(to_int, *MAX_PACKET_RANGE),
        "MQTT only. Largest MQTT packet accepted from the broker, in bytes after the fixed header (default 262144, 256 KiB: four times the 64 KiB a payload may have). A larger packet closes the broker link before it is read (logged mqtt_packet_too_large, counted), and the link reconnects. On a broker shared by several types, the largest of their values applies.",
        None,  # None: the driver's default (aio.MAX_PACKET)
    ),
    "messages": Key(
        None,
        "MQTT only. Message channels beside the tags, by name: JSON objects the server sends to a device (send: topic) and the device's answers (answers: topic), e.g. a crew vehicle's work orders and its order statuses. Topics are templates: {device} stands for the device's name; a topic is not also a point's, status or command topic of the type.",
        None,
        schema={
            "type": "object",
            "propertyNames": schema_of(to_name),
            "additionalProperties": object_schema(CHANNEL_KEYS),
        },
    ),
    "broker_security": Key(
        None,
        "MQTT only. How the driver reaches the broker of this type's devices: TLS with ca (the CA the broker's certificate chains to, its name checked against the endpoint's host; optionally our certificate and private_key), and a login with username and password_file or password_env. The password itself is never written in tags.yaml. Paths are relative to the folder of tags.yaml. Absent: plain MQTT, anonymous. Types with different broker_security on one broker open one connection each.",
        None,
        schema=object_schema(SECURITY_KEYS, SECURITY_RULES),
    ),
}
# check_type: a type with a command point has command_topic and ack_topic.
TYPE_RULES: tuple[Schema, ...] = (
    when(
        "points",
        {  # some point is a command point: not every point is something else
            "type": "object",
            "not": {
                "additionalProperties": {
                    "not": {"type": "object", "required": ["type"], "properties": {"type": {"const": "command"}}}
                }
            },
        },
        {"required": ["command_topic", "ack_topic"]},
    ),
)
POINT_KEYS: KeyTable = {
    "topic": Key(
        _topic,
        "Topic the value arrives on: a literal topic, no + or # wildcard; {device} stands for the device's name. Required, except on a command point, which has none.",
        what="the MQTT topic the value arrives on, e.g. city/bollards/{device}/state",
        examples=("city/bollards/{device}/state",),
        required=False,  # POINT_RULES: required unless type: command
    ),
    "json": Key(
        _json_path,
        "Where the value is in a JSON payload: field names joined by dots. Without it the whole payload is the value. Not on a command point.",
        None,
    ),
    "type": Key(
        one_of(*POINT_TYPES),
        "What the value is. A command point is not read: operators write it, and the label of the written value (its enum) is published on the type's command_topic.",
        "number",
    ),
    "qos": Key(
        in_range(to_int, 0, 2),
        "MQTT quality of service, 0, 1 or 2 (default 1): of the subscription to the topic, or, for a command point, of the published command.",
        1,
    ),
}
# parse_point and the core's checks: a command point has no topic nor json, is writable and lists its
# commands (enum); any other point has a topic and is read-only.
POINT_RULES: tuple[Schema, ...] = (
    when(
        "type",
        {"const": "command"},
        {
            "properties": {
                "topic": False,
                "json": False,
                "writable": {
                    "anyOf": [
                        {"const": True},
                        {"type": "string", "pattern": "^\\s*([Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|1)\\s*$"},
                    ]
                },
            },
            "required": ["writable", "enum"],
        },
        {"required": ["topic"], "properties": {"writable": {"const": False}}},
    ),
    when("type", {"const": "text"}, NO_DEADBAND),
)
DEVICE_KEYS: KeyTable = {
    "endpoint": Key(
        to_str,
        "MQTT: the broker as host:port, optionally prefixed mqtt:// or tcp://, port 1883 when omitted.",
        what="the broker, host:port",
        examples=("broker.lan:1883", "mqtt://10.20.0.5"),
        schema=host_port_schema(("mqtt://", "tcp://")),
    ),
}


def parse_type(f: Fields) -> MqttType:
    security = NO_SECURITY
    if "broker_security" in f.mapping:
        sub = f.sub("broker_security")
        security = parse_security(Fields(sub, f.key("broker_security"), f.file, f.line_of("broker_security")))
    t = MqttType(
        status_topic=f.read(TYPE_KEYS, "status_topic"),
        online_payload=f.read(TYPE_KEYS, "online_payload"),
        offline_payload=f.read(TYPE_KEYS, "offline_payload"),
        command_topic=f.read(TYPE_KEYS, "command_topic"),
        ack_topic=f.read(TYPE_KEYS, "ack_topic"),
        max_packet=f.read(TYPE_KEYS, "max_packet"),
        security=security,
    )
    if "messages" in f.mapping:
        t = replace(t, messages=_parse_messages(f, t))
    return t


def _parse_messages(f: Fields, t: MqttType) -> tuple[MqttChannel, ...]:
    """The ``messages:`` channels; a topic used twice (by two channels, or by the status or
    command topics) would make an answer ambiguous: a located error."""
    raw = f.sub("messages")
    mf = Fields(raw, f.key("messages"), f.file, f.line_of("messages"))
    used = {
        topic: key
        for key, topic in (
            ("status_topic", t.status_topic),
            ("command_topic", t.command_topic),
            ("ack_topic", t.ack_topic),
        )
        if topic
    }
    out: list[MqttChannel] = []
    for name, craw in raw.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise mf.error(str(name), "a channel name uses letters, digits, '_', '.' and '-' only", name)
        cf = Fields(craw, mf.key(name), f.file, mf.line_of(name))
        ch = MqttChannel(
            name, cf.read(CHANNEL_KEYS, "send"), cf.read(CHANNEL_KEYS, "answers"), cf.read(CHANNEL_KEYS, "qos")
        )
        cf.done(CHANNEL_KEYS)
        for key, topic in (("send", ch.send), ("answers", ch.answers)):
            if topic is None:
                continue
            if topic in used:
                raise cf.error(
                    key, f"this topic is already the type's {used[topic]}: each channel topic is its own", topic
                )
            used[topic] = f"messages.{name}.{key}"
        out.append(ch)
    return tuple(out)


def parse_point(f: Fields) -> MqttPoint:
    ptype = f.read(POINT_KEYS, "type")
    if ptype == "command":
        for key in ("topic", "json"):
            if f.has(key):
                raise f.error(
                    key, "a command point is written through the type's command_topic: no topic or json", f.mapping[key]
                )
        return MqttPoint(None, None, "command", f.read(POINT_KEYS, "qos"))
    return MqttPoint(
        topic=f.read(POINT_KEYS, "topic"),
        json=f.read(POINT_KEYS, "json"),
        type=ptype,
        qos=f.read(POINT_KEYS, "qos"),
    )


def parse_endpoint(text: str) -> tuple[str, int]:
    """The broker: host:port (port 1883 when omitted), optionally prefixed mqtt:// or tcp://."""
    return parse_host_port(text, 1883, ("mqtt://", "tcp://"), "MQTT: 1883")


def parse_device(f: Fields) -> MqttEndpoint:
    host, port = f.read(DEVICE_KEYS, "endpoint", convert=lambda v: parse_endpoint(to_str(v)))
    return MqttEndpoint(host, port)


def check_type(type_name: str, points: dict[str, MqttPoint], where: Fields, type_io: MqttType | None = None) -> None:
    """A command point needs the type's command and acknowledgement topics; a message channel's
    topic is no point's (a message would be both an answer and a value)."""
    for name, p in points.items():
        for ch in type_io.messages if type_io else ():
            if p.topic is not None and p.topic in (ch.send, ch.answers):
                raise ConfigError(
                    where.file,
                    where.line_of(name),
                    where.key(name),
                    f"topic {p.topic!r} is also a topic of the type's message channel {ch.name!r}",
                )
        if p.type == "command" and not (type_io and type_io.command_topic and type_io.ack_topic):
            raise ConfigError(
                where.file,
                where.line_of(name),
                where.key(name),
                "a command point needs the type's command_topic and ack_topic",
            )


def check_devices(devices: Sequence[DeviceSite]) -> None:
    """Nothing to check across devices: many devices share one broker, and a device's topics
    come from its name, which the core already keeps unique."""


# No cross-key rules of these sections for the schema (scada.driver_api.DriverConfig).
DEVICE_RULES: tuple[Schema, ...] = ()
