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
from dataclasses import dataclass

from common.fields import Fields, device_template_ok, in_range, one_of, parse_host_port, to_int, to_str
from common.yamlsrc import ConfigError
from scada.driver_api import DeviceSite
from scada.tagdb import ANALOG, DISCRETE, TEXT

POINT_KEYS = frozenset({"topic", "json", "type", "qos"})
DEVICE_KEYS = frozenset({"endpoint"})
TYPE_KEYS = frozenset({"status_topic", "online_payload", "offline_payload", "command_topic", "ack_topic", "max_packet"})
MAX_PACKET_RANGE = (1024, 268_435_455)  # bytes: a useful minimum; the most MQTT's remaining length can say
POINT_TYPES = ("number", "bool", "text", "command")
_JSON_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _topic(v) -> str:
    s = to_str(v)
    if not s or any(ch in s for ch in "+#\0"):
        raise ValueError("a topic is a literal MQTT topic (no + or # wildcard); {device} stands for the device name")
    if not device_template_ok(s):
        raise ValueError("the only placeholder a topic may use is {device}")
    return s


@dataclass(frozen=True, slots=True)
class MqttType:
    status_topic: str | None = None
    online_payload: str = "online"
    offline_payload: str = "offline"
    command_topic: str | None = None
    ack_topic: str | None = None
    max_packet: int | None = None  # bytes after a packet's fixed header; None: the driver's default (aio.MAX_PACKET)


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


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int

    @property
    def connection(self) -> tuple[str, int]:
        return (self.host, self.port)


def parse_type(f: Fields) -> MqttType:
    return MqttType(
        status_topic=f.take("status_topic", _topic, default=None),
        online_payload=f.take("online_payload", to_str, default="online"),
        offline_payload=f.take("offline_payload", to_str, default="offline"),
        command_topic=f.take("command_topic", _topic, default=None),
        ack_topic=f.take("ack_topic", _topic, default=None),
        max_packet=f.take("max_packet", in_range(to_int, *MAX_PACKET_RANGE), default=None),
    )


def _json_path(v) -> str:
    s = to_str(v)
    if not _JSON_PATH.fullmatch(s):
        raise ValueError("a JSON path is field names joined by dots, e.g. position or gps.lat")
    return s


def parse_point(f: Fields) -> MqttPoint:
    ptype = f.take("type", one_of(*POINT_TYPES), default="number")
    if ptype == "command":
        for key in ("topic", "json"):
            if f.has(key):
                raise f.error(
                    key, "a command point is written through the type's command_topic: no topic or json", f.mapping[key]
                )
        return MqttPoint(None, None, "command", f.take("qos", in_range(to_int, 0, 2), default=1))
    return MqttPoint(
        topic=f.take("topic", _topic, what="the MQTT topic the value arrives on, e.g. city/bollards/{device}/state"),
        json=f.take("json", _json_path, default=None),
        type=ptype,
        qos=f.take("qos", in_range(to_int, 0, 2), default=1),
    )


def parse_endpoint(text: str) -> tuple[str, int]:
    """The broker: host:port (port 1883 when omitted), optionally prefixed mqtt:// or tcp://."""
    return parse_host_port(text, 1883, ("mqtt://", "tcp://"), "MQTT: 1883")


def parse_device(f: Fields) -> MqttEndpoint:
    host, port = f.take("endpoint", lambda v: parse_endpoint(to_str(v)), what="the broker, host:port")
    return MqttEndpoint(host, port)


def check_type(type_name: str, points: dict[str, MqttPoint], where: Fields, type_io: MqttType | None = None) -> None:
    """A command point needs the type's command and acknowledgement topics."""
    for name, p in points.items():
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
