"""Operations: the shared vocabulary of work orders, crews, citizen reports and the contract.

This module is the interface every part of ``scada/operations/`` (and the front, the simulators'
crews, the CLI) builds on; it holds data and pure functions only, no I/O.

* **Work orders** (:class:`WorkOrder`) move through the states of :data:`TRANSITIONS` (a table,
  like the alarm states: an illegal transition raises :class:`IllegalTransition`), each
  transition an :class:`OrderEvent` journaled in SQLite (who, when). An order comes from an
  alarm (one open order per device and cause: later alarms are attached), a citizen report or
  an operator.
* **Crews** are vehicles of the fleet (class ``fleet``, the MQTT ``crew_vehicle`` type): their
  position and status are tags; an order goes to the crew's topic and the crew's answers come
  back with the order's correlation id (:data:`CREW_ANSWERS`, the MQTT contract below).
* **Citizen reports** (:class:`CitizenReport`) arrive through Open311 GeoReport v2; their contact
  details are private (never in a GET, an export or the front's mirror) and purged after closure.
* **The contract** (:class:`OperationsConfig`, from ``operations.yaml``): per service and
  priority the delays to be on site and to repair; energy baselines and the savings target;
  availability targets.

Time is int64 nanoseconds UTC, taken from the operations clock (the server's schedule clock:
simulated time when the server runs ``--acceleration``, so that crews driving at a simulated
speed and the contract's delays agree with the simulated city).

The crews' MQTT contract (the fleet simulator implements the other end)::

    server -> crew   <prefix>/<vehicle>/order          (QoS 1, not retained)
        {"order_id": "WO-000012", "correlation_id": "<uuid>", "action": "assign" | "cancel",
         "service": "lighting_maintenance", "device": "CAB-0042" | null, "lat": 47.3, "lon": 5.0,
         "priority": "high", "description": "...", "ts": "<ISO 8601>"}
    crew -> server   <prefix>/<vehicle>/order_status   (QoS 1, not retained)
        {"order_id": "WO-000012", "correlation_id": "<uuid>",
         "status": "accepted" | "refused" | "en_route" | "on_site" | "repaired",
         "reason": "...", "ts": "<ISO 8601>"}

with ``<prefix>`` the fleet's topic prefix (``city/vehicles``). An answer whose correlation id
is not the order's current one (an earlier assignment) is ignored and logged.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scada.control.model import Caller

# -- states and transitions ----------------------------------------------------------------------


class OrderState(enum.IntEnum):
    NEW = 0
    ASSIGNED = 1
    ACCEPTED = 2
    EN_ROUTE = 3
    ON_SITE = 4
    REPAIRED = 5
    CLOSED = 6
    CANCELLED = 7

    @property
    def label(self) -> str:
        return self.name.lower()


FINAL = frozenset({OrderState.CLOSED, OrderState.CANCELLED})
OPEN = frozenset(OrderState) - FINAL

S = OrderState
# (state, event) -> next state. Events that change no state (attach, note, warn, breach) are
# not transitions: they are journaled as OrderEvents with from_state == to_state.
TRANSITIONS: Mapping[tuple[OrderState, str], OrderState] = {
    # a dispatcher (or the automatic dispatch) gives the order to a crew; again = reassign
    **{(s, "assign"): S.ASSIGNED for s in (S.NEW, S.ASSIGNED, S.ACCEPTED, S.EN_ROUTE)},
    # the crew's answers (an answer may skip a step: en route straight after assigned, ...)
    (S.ASSIGNED, "accept"): S.ACCEPTED,
    **{(s, "refuse"): S.NEW for s in (S.ASSIGNED, S.ACCEPTED)},  # or no answer in time
    **{(s, "depart"): S.EN_ROUTE for s in (S.ASSIGNED, S.ACCEPTED)},
    **{(s, "arrive"): S.ON_SITE for s in (S.ASSIGNED, S.ACCEPTED, S.EN_ROUTE)},
    **{(s, "repair"): S.REPAIRED for s in (S.EN_ROUTE, S.ON_SITE)},
    # closed: the fault's alarm cleared after the repair (or there is no alarm to wait for), or an
    # operator closes it (a repair confirmed by phone)
    **{(s, "close"): S.CLOSED for s in (S.ON_SITE, S.REPAIRED)},
    # the fault came back before the order was closed: to be dispatched again
    (S.REPAIRED, "reopen"): S.NEW,
    **{(s, "cancel"): S.CANCELLED for s in OPEN},
}
EVENTS = tuple(dict.fromkeys(e for _, e in TRANSITIONS))
# Journaled without a change of state.
NOTES = ("create", "attach", "note", "warn", "breach", "dispatch_failed", "purge")
# The crews' answers (order_status "status") and the event each is.
CREW_ANSWERS: Mapping[str, str] = {
    "accepted": "accept",
    "refused": "refuse",
    "en_route": "depart",
    "on_site": "arrive",
    "repaired": "repair",
}
SOURCES = ("alarm", "citizen", "operator")


class IllegalTransition(ValueError):
    """``event`` is not allowed in ``state`` (the caller's refusal: BadInvalidState)."""

    def __init__(self, order: str, state: OrderState, event: str) -> None:
        allowed = sorted(e for (s, e) in TRANSITIONS if s == state)
        super().__init__(
            f"{order} is {state.label}: {event} is not allowed (allowed: {', '.join(allowed) or 'none, it is final'})"
        )
        self.order, self.state, self.event = order, state, event


def next_state(order: str, state: OrderState, event: str) -> OrderState:
    """The state after ``event``, or IllegalTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(order, state, event) from None


# -- work orders ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """One intervention. Immutable: a transition makes a new one (``dataclasses.replace``).

    ``origin_ns`` is when the fault was known (the alarm's activation or the report's time): every
    contractual delay counts from it. ``*_due_ns`` are the contract's deadlines (0: none).
    """

    id: str  # "WO-000123"
    source: str  # alarm | citizen | operator
    service: str  # alarms.yaml's service (the crews' skill)
    priority: str  # low | medium | high | critical (alarms.yaml's priorities)
    device: str | None  # the equipment, None for an unlocated report
    commune: str
    lat: float | None
    lon: float | None
    cause: str  # the alarm's name, the Open311 service code, or the operator's text
    description: str
    state: OrderState
    origin_ns: int
    created_ns: int
    created_by: str
    on_site_due_ns: int = 0
    repaired_due_ns: int = 0
    crew: str | None = None  # the vehicle (device name) it is assigned to
    correlation_id: str = ""  # of the current assignment: a crew's answer must carry it
    assigned_ns: int = 0
    accepted_ns: int = 0
    en_route_ns: int = 0
    on_site_ns: int = 0
    repaired_ns: int = 0
    closed_ns: int = 0  # closed or cancelled
    warned: bool = False  # a deadline's warning was given
    breached: bool = False  # a deadline was missed (the escalation alarm was raised)
    alarms: int = 0  # alarm activations attached (the first included)
    reports: tuple[str, ...] = ()  # citizen reports attached (their ids)

    @property
    def key(self) -> tuple[str, str] | None:
        """(device, cause) of an alarm's order: at most one open per key."""
        return (self.device, self.cause) if self.source == "alarm" and self.device else None

    @property
    def open(self) -> bool:
        return self.state in OPEN

    def to_wire(self) -> tuple:
        return tuple(getattr(self, f) for f in _ORDER_FIELDS)

    @classmethod
    def from_wire(cls, w: Any) -> WorkOrder:
        values = dict(zip(_ORDER_FIELDS, w, strict=True))
        values["state"] = OrderState(int(values["state"]))
        values["reports"] = tuple(values["reports"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What anyone may see of it (Open311, the map, OPC UA): no personal data is in an order."""
        return {f: (getattr(self, f).label if f == "state" else getattr(self, f)) for f in _ORDER_FIELDS}


_ORDER_FIELDS = tuple(WorkOrder.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One journal row: a transition (from_state != to_state) or a note on the order."""

    time_ns: int
    order: str
    event: str  # an EVENTS or NOTES entry
    from_state: OrderState
    to_state: OrderState
    user: str  # who: an operator, "crew:<vehicle>", "server" (automatic), "citizen"
    crew: str | None = None
    detail: str = ""

    def to_wire(self) -> tuple:
        return (
            self.time_ns,
            self.order,
            self.event,
            int(self.from_state),
            int(self.to_state),
            self.user,
            self.crew,
            self.detail,
        )

    @classmethod
    def from_wire(cls, w: Any) -> OrderEvent:
        t, order, event, a, b, user, crew, detail = w
        return cls(int(t), str(order), str(event), OrderState(a), OrderState(b), str(user), crew, str(detail))


# -- citizen reports ------------------------------------------------------------------------------

CONTACT_FIELDS = ("email", "first_name", "last_name", "phone")


@dataclass(frozen=True, slots=True)
class CitizenReport:
    """One Open311 service request. ``contact`` is private: never returned by a GET, exported, sent
    to the front's mirror, or kept after ``purge_contact_after`` once its order is closed."""

    id: str  # Open311 service_request_id, "CR-000123"
    service_code: str
    description: str
    lat: float | None
    lon: float | None
    address: str  # address_string
    requested_ns: int
    order: str | None  # the work order it created or was attached to (None: stored only)
    client: str  # the client's address (rate limit, audit)
    contact: Mapping[str, str] = field(default_factory=dict)  # CONTACT_FIELDS given

    def public(self) -> CitizenReport:
        return replace(self, contact={}, client="")


# -- requests from the front (OPC UA methods, Open311) --------------------------------------------

# ops of OpsRequest, with the arguments each takes (by name)
OPS: Mapping[str, tuple[str, ...]] = {
    "create": ("service", "priority", "device", "lat", "lon", "description"),  # operator's order
    "assign": ("order", "crew"),  # crew None or "": the proposed nearest crew
    "cancel": ("order", "reason"),
    "close": ("order", "note"),
    "propose": ("order",),  # the nearest available crews with the skill: data["crews"] [(crew, eta_s)]
}


@dataclass(frozen=True, slots=True)
class OpsRequest:
    op: str  # an OPS key
    args: Mapping[str, Any]
    caller: Caller

    def to_wire(self) -> tuple:
        return (self.op, dict(self.args), self.caller.to_wire())

    @classmethod
    def from_wire(cls, w: Any) -> OpsRequest:
        op, args, caller = w
        return cls(str(op), dict(args), Caller.from_wire(caller))


@dataclass(frozen=True, slots=True)
class OpsResult:
    status: int  # an OPC UA StatusCode (scada.control.model's constants): Good, or the refusal's
    message: str = ""
    order: str = ""  # the order concerned (created, assigned...)
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return self.status & 0xC0000000 == 0

    def to_wire(self) -> tuple:
        return (self.status, self.message, self.order, dict(self.data))

    @classmethod
    def from_wire(cls, w: Any) -> OpsResult:
        status, message, order, data = w
        return cls(int(status), str(message), str(order), dict(data))


# -- the front/core channel's messages (scada/front/link.py) --------------------------------------

# front -> core requests (CoreChannel.request): their argument and answer
REQUEST_WORK_ORDER = "work_order"  # OpsRequest.to_wire() -> OpsResult.to_wire()
# (service_code, description, lat, lon, address, contact dict, client, requested_ns) -> (status,
# message, report id, order id)
REQUEST_CITIZEN_REPORT = "citizen_report"
# (report ids or None, service_code or None, start_ns, end_ns, bbox (lat0, lon0, lat1, lon1) or None,
# limit) -> list of (CitizenReport.public() wire dict, order state label or None)
REQUEST_REPORTS = "citizen_reports"
# core -> front pushes (a tuple whose first element is the name)
PUSH_ORDERS = (
    "work_orders"  # ("work_orders", [WorkOrder.to_wire()], [OrderEvent.to_wire()]): changed orders and their events
)
PUSH_ORDERS_SNAPSHOT = (
    "work_orders_snapshot"  # ("work_orders_snapshot", [WorkOrder.to_wire()]): every open order (start, resync)
)
PUSH_KPIS = "contract_kpis"  # ("contract_kpis", {name: value}): the live contract figures
PUSH_STATS = "core_stats"  # ("core_stats", {name: value}): the core's health counters for /metrics


# -- operations.yaml ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delays:
    """The contract's delays for one service and priority, counted from the fault's time."""

    on_site_s: float
    repaired_s: float
    warn_before_s: float  # the warning before a deadline


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """An alarms.yaml service as operations sees it: its crews' skill and its contract."""

    name: str
    classes: tuple[str, ...]  # the equipment classes it maintains (a report's nearest equipment)
    delays: Mapping[str, Delays]  # per priority (every priority of alarms.yaml has one)
    open311_code: str = ""  # its Open311 service_code ("" : not offered to citizens)
    open311_name: str = ""
    open311_description: str = ""
    default_priority: str = "medium"  # of a citizen's or an operator's order without one


@dataclass(frozen=True, slots=True)
class CrewDef:
    """A vehicle that is a crew, and the services it can work for."""

    vehicle: str  # the fleet device's name
    skills: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    auto_assign: bool = True  # assign the proposed crew at once, else only propose
    speed_kmh: float = 30.0  # the ETA's speed (great circle)
    answer_timeout_s: float = 300.0  # an assignment not accepted by then goes back to new ("refuse")


@dataclass(frozen=True, slots=True)
class Open311Settings:
    radius_m: float = 50.0  # a report this near an open order (or alarm) of its service attaches to it
    rate_per_minute: float = 10.0  # per client address
    rate_burst: int = 5
    max_body_bytes: int = 16_384
    purge_contact_after_s: float = 30 * 86400.0  # after the order's closure
    territory_margin_m: float = 2_000.0  # around the devices' bounding box
    jurisdiction_id: str = ""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    listen: tuple[str, int] | None = ("127.0.0.1", 8080)  # None: no HTTP server
    # The map feed and /metrics: the city's own network only (crews' positions, which bollards
    # are down, the server's internals), never the citizens' listener. None: not served.
    internal: tuple[str, int] | None = ("127.0.0.1", 9464)
    # The city's reverse proxies in front of `listen`: a request from one of them is the client
    # its X-Forwarded-For names (scada/operations/proxies.py). Empty: the TCP peer is the client.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class EnergySettings:
    """Baselines in kWh per day, per cabinet by default, per commune or cabinet where given."""

    baseline_kwh_per_day: float = 0.0  # per cabinet, when no other baseline applies (0: none)
    communes: Mapping[str, float] = field(default_factory=dict)  # commune -> kWh/day for all its cabinets
    cabinets: Mapping[str, float] = field(default_factory=dict)  # device -> kWh/day
    savings_target: float = 0.0  # fraction saved against the baseline (0.65 = -65 %)


@dataclass(frozen=True, slots=True)
class OperationsConfig:
    services: Mapping[str, ServiceDef] = field(default_factory=dict)
    crews: Mapping[str, CrewDef] = field(default_factory=dict)  # by vehicle
    dispatch: DispatchSettings = DispatchSettings()
    open311: Open311Settings = Open311Settings()
    http: HttpSettings = HttpSettings()
    energy: EnergySettings = EnergySettings()
    availability: Mapping[str, float] = field(default_factory=dict)  # class -> target fraction

    def service_of_code(self, code: str) -> ServiceDef | None:
        return next((s for s in self.services.values() if s.open311_code and s.open311_code == code), None)

    def crews_for(self, service: str) -> tuple[str, ...]:
        return tuple(c.vehicle for c in self.crews.values() if service in c.skills)
