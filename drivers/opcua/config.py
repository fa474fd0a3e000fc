"""OPC UA client keys of tags.yaml: which node each point reads, in which server namespace.

```yaml
traffic_junction:
  class: traffic
  driver: opcua
  namespace: urn:city-scada:traffic-sim   # resolved to its index when the session opens
  publishing_interval: 500                # ms, one subscription per server
  points:
    mode: {node: "{device}.Mode", writable: true, enum: {1: flashing_amber, 2: fixed_time, 3: actuated, 4: central}}
    conflict_fault: {node: "{device}.ConflictFault", type: bool}
```
Devices: ``endpoint: opc.tcp://host:port/path``; devices on one endpoint share a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from scada.fields import Fields, device_template_ok, in_range, one_of, parse_host_port, positive, to_float, to_str
from scada.tagdb import ANALOG, DISCRETE, TEXT

POINT_KEYS = frozenset({"node", "type", "sampling_interval"})
DEVICE_KEYS = frozenset({"endpoint"})
TYPE_KEYS = frozenset({"namespace", "publishing_interval"})
POINT_TYPES = ("number", "bool", "text")


@dataclass(frozen=True, slots=True)
class OpcUaType:
    namespace: str
    publishing_interval: float = 500.0  # ms


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    node: str  # string identifier template; {device} is the device's name
    type: str = "number"
    sampling_interval: float = 0.0  # ms; 0: as fast as the server samples

    @property
    def kind(self) -> int:
        return {"bool": DISCRETE, "text": TEXT}.get(self.type, ANALOG)


@dataclass(frozen=True, slots=True)
class OpcUaEndpoint:
    url: str

    @property
    def connection(self) -> str:
        return self.url


def _node(v) -> str:
    s = to_str(v)
    if not device_template_ok(s):
        raise ValueError("the only placeholder a node id may use is {device}")
    if not s:
        raise ValueError("empty node id")
    return s


def _namespace(v) -> str:
    if not isinstance(v, str) or ":" not in v:
        raise ValueError("expected the namespace URI, e.g. urn:city-scada:traffic-sim (not its index, "
                         "which the server may change)")
    return v


def parse_type(f: Fields) -> OpcUaType:
    return OpcUaType(
        namespace=f.take("namespace", _namespace, what="the server namespace URI of the nodes"),
        publishing_interval=f.take("publishing_interval", positive(to_float), default=500.0),
    )


def parse_point(f: Fields) -> OpcUaPoint:
    return OpcUaPoint(
        node=f.take("node", _node, what="the node's string identifier, e.g. {device}.Mode"),
        type=f.take("type", one_of(*POINT_TYPES), default="number"),
        sampling_interval=f.take("sampling_interval", in_range(to_float, 0, 3_600_000), default=0.0),
    )


def parse_endpoint(text: str) -> str:
    """opc.tcp://host:port/path: the port is required, the host checked as for Modbus."""
    s = text.strip()
    if not s.lower().startswith("opc.tcp://"):
        raise ValueError("expected opc.tcp://host:port/path")
    u = urlparse(s)
    try:
        port = u.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError("expected opc.tcp://host:port/path, with the port (OPC UA: 4840)")
    parse_host_port(u.netloc.rsplit("@", 1)[-1], 4840, (), "OPC UA: 4840")
    return s


def parse_device(f: Fields) -> OpcUaEndpoint:
    return OpcUaEndpoint(f.take("endpoint", lambda v: parse_endpoint(to_str(v)), what="opc.tcp://host:port/path"))


def check_type(type_name: str, points: dict[str, OpcUaPoint], where: Fields, type_io: OpcUaType | None = None) -> None:
    """Nothing to cross-check: node ids are the server's business, checked when subscribing."""
