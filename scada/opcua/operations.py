"""The Operations folder: the open work orders, the dispatcher's methods, the orders' events and
the contract's live figures, for HMI clients (issue 16).

Tree (ns = the tags namespace)::

    Objects/City/Operations                 NodeId City/Operations (a folder and event notifier)
        Create, Assign, Cancel, Close, Propose  methods (City/Operations/<name>)
        Contract                            object: one Double variable per live KPI name
        WO-000012                           an open order (object, event notifier)
            State, Service, Priority, Device, Commune, Latitude, Longitude, Crew, Source,
            Cause, Description, OnSiteDue, RepairedDue, Created, Breached

**An order's NodeId begins with its commune** (``Dijon/_orders/WO-000012``, its variables
``Dijon/_orders/WO-000012/State``...), although it is browsed under ``City/Operations``: so
scada/opcua/visibility.py hides the orders of the communes a user does not see exactly as it
hides their devices (Browse, TranslateBrowsePaths, Read, monitored items), with no rule of its
own. An order of no commune (an unlocated citizen report) is everyone's, as the core authorises
it: ``City/Operations/WO-000012``. No position is NaN; no deadline is OPC UA's null DateTime
(1601-01-01). Closed and cancelled orders leave the folder.

**Pushes** from the core (model.PUSH_ORDERS / PUSH_ORDERS_SNAPSHOT / PUSH_KPIS, wired by the
front's dispatch) only record what changed: :meth:`Operations.apply` keeps the latest state of
each order and the events, :meth:`Operations.run` (a task of the front) shows them, so a burst of
a thousand changed orders is one pass. A new order's nodes are built directly (nobody watches
them yet); a changed variable is set directly unless a client monitors it, and only those few
are awaited writes (asyncua notifies the monitored items). One GeneralModelChangeEvent per pass
names the folder (ReferenceAdded / ReferenceDeleted), never the orders: an order of a hidden
commune must not be named to its sessions, and the folder is what a client browses again.

**Methods** (on the folder: ObjectId City/Operations): each call becomes
``request(model.REQUEST_WORK_ORDER, OpsRequest(...).to_wire())``; the core authorises
(Permission.DISPATCH and the order's commune), journals and audits (``work_order``), and the
call's status is the OpsResult's. The front refuses at once what it can tell alone, audited as
the core audits its refusals: a session without DISPATCH (scada/opcua/authorise.py
``method_permissions``: BadUserAccessDenied), arguments missing or mistyped, an order of a
commune the caller does not see (BadNodeIdUnknown, what the core answers for an unknown order).

* ``Create(Service, Priority, Device, Latitude, Longitude, Description) -> OrderId``: Priority
  "" is the service's default, Device "" none (then the position is required), Latitude and
  Longitude NaN none (the device's position).
* ``Assign(Order, Crew) -> Crew``: Crew "" assigns the proposed nearest available crew.
* ``Cancel(Order, Reason)``, ``Close(Order, Note)``.
* ``Propose(Order) -> Crews, Etas``: the nearest available crews with the skill, ETAs in s.

**Events**: one ``WorkOrderEventType`` event (a BaseEventType subtype of this namespace, NodeId
``_types/WorkOrderEventType``) per OrderEvent, SourceNode the order object, Message like
"WO-000012 assigned to V-007 by olga", with the fields OrderId, Transition (the journal's event:
assign, accept, ... or a note: warn, breach...), FromState, ToState, User, Crew, Detail. Chosen
over AuditUpdateMethodEventType because most transitions are no method call (a crew's answer,
a deadline, an alarm's clear) and an audit event is shown only to auditors; an HMI filters
OfType WorkOrderEventType and lists the fields it needs. Delivered by us (as the conditions'
and audit events are) to the event items on the Server object, the Operations folder and the
order, and not to sessions that do not see the order's commune.

**Contract**: :meth:`Operations.kpis` takes the core's ``{name: value}`` (model.PUSH_KPIS, flat
names such as ``energy.Dijon.kwh``); a name seen for the first time becomes a Double variable
``Contract/<name>`` (BrowseName the name), later pushes write it; a name missing from a later
push keeps its last value. A name that is no text or a value that is no number is skipped and
logged.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from asyncua import Server, ua

from scada.opcua.address_space import ROOT_NAME, AddressSpaceBuilder, unlink_nodes
from scada.opcua.asyncua_private.events import SubtypeWhere
from scada.opcua.asyncua_private.events import event_items as subscription_event_items
from scada.opcua.asyncua_private.nodes import AttributeValue, NodeData, address_space
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.asyncua_private.subscriptions import monitored_item, subscriptions
from scada.opcua.authorise import audit_value, authorisation
from scada.opcua.commands import Request, argument, ask_core, call_result, caller_of
from scada.opcua.conditions.events import ConditionEvent
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.opcua.visibility import hides, visible_roots
from scada.operations.model import (
    REQUEST_WORK_ORDER,
    OperationsConfig,
    OpsRequest,
    OpsResult,
    OrderEvent,
    WorkOrder,
)
from scada.security.context import current
from scada.security.identity import Permission

log = structlog.get_logger("scada.opcua")

SC = ua.StatusCodes
V = ua.VariantType
A = ua.AttributeIds
OI = ua.ObjectIds

FOLDER_NAME = "Operations"
FOLDER_PATH = f"{ROOT_NAME}/{FOLDER_NAME}"
CONTRACT_NAME = "Contract"
CONTRACT_PATH = f"{FOLDER_PATH}/{CONTRACT_NAME}"
ORDERS_SEGMENT = "_orders"  # <commune>/_orders/<id>: the commune's first segment hides it (module docstring)
EVENT_TYPE_NAME = "WorkOrderEventType"
EVENT_TYPE_PATH = f"_types/{EVENT_TYPE_NAME}"
EVENT_FIELDS = ("OrderId", "Transition", "FromState", "ToState", "User", "Crew", "Detail")
MAX_QUEUED_EVENTS = 10_000  # events waiting for run(): beyond, dropped and counted (a client resyncs by Browse/Read)
YIELD_EVERY = 100  # orders built or events sent between two yields to the loop
NO_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's null DateTime (encoded as 0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SERVER = NodeId(OI.Server)


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000) if ns > 0 else NO_TIME


def _number(x: float | None) -> float:
    return math.nan if x is None else float(x)


# An order's variables: (name, variant type, value of the order, description).
ORDER_VARIABLES: tuple[tuple[str, ua.VariantType, Callable[[WorkOrder], Any], str], ...] = (
    ("State", V.String, lambda o: o.state.label, "new, assigned, accepted, en_route, on_site, repaired"),
    ("Service", V.String, lambda o: o.service, "the service (the crews' skill)"),
    ("Priority", V.String, lambda o: o.priority, "low, medium, high, critical"),
    ("Device", V.String, lambda o: o.device or "", "the equipment (empty: an unlocated report)"),
    ("Commune", V.String, lambda o: o.commune, "the commune"),
    ("Latitude", V.Double, lambda o: _number(o.lat), "degrees (NaN: unknown)"),
    ("Longitude", V.Double, lambda o: _number(o.lon), "degrees (NaN: unknown)"),
    ("Crew", V.String, lambda o: o.crew or "", "the vehicle it is assigned to (empty: none)"),
    ("Source", V.String, lambda o: o.source, "alarm, citizen or operator"),
    ("Cause", V.String, lambda o: o.cause, "the alarm, the Open311 service code or the operator's text"),
    ("Description", V.String, lambda o: o.description, ""),
    ("OnSiteDue", V.DateTime, lambda o: _time(o.on_site_due_ns), "the contract's deadline to be on site"),
    ("RepairedDue", V.DateTime, lambda o: _time(o.repaired_due_ns), "the contract's deadline to repair"),
    ("Created", V.DateTime, lambda o: _time(o.created_ns), ""),
    ("Breached", V.Boolean, lambda o: bool(o.breached), "a contractual deadline was missed"),
)

# The Message of an order's event, per journal event: "{order} {verb} by {who}[: detail]".
VERBS: Mapping[str, str] = {
    "create": "created",
    "assign": "assigned to {crew}",
    "accept": "accepted",
    "refuse": "refused",
    "depart": "en route",
    "arrive": "on site",
    "repair": "repaired",
    "close": "closed",
    "reopen": "reopened",
    "cancel": "cancelled",
    "attach": "attached",
    "note": "noted",
    "warn": "near its deadline",
    "breach": "missed its deadline",
    "dispatch_failed": "not dispatched",
    "purge": "contact details purged",
}
SEVERITY: Mapping[str, int] = {"breach": 700, "warn": 500, "refuse": 400, "dispatch_failed": 400, "reopen": 400}
SEVERITY_DEFAULT = 200


def event_message(e: OrderEvent) -> str:
    """The text an operator reads: "WO-000012 assigned to V-007 by olga"."""
    verb = VERBS.get(e.event, e.event).format(crew=e.crew or "?")
    who = e.user
    if who.startswith("crew:"):
        who = who[len("crew:") :]
    text = f"{e.order} {verb}" + (f" by {who}" if who and who != "server" else "")
    return text + (f": {e.detail}" if e.detail else "")


def order_path(order_id: str, commune: str) -> str:
    """The NodeId (string) of an order's object (module docstring: why it begins with the commune)."""
    return f"{commune}/{ORDERS_SEGMENT}/{order_id}" if commune else f"{FOLDER_PATH}/{order_id}"


# -- the methods' signatures -----------------------------------------------------------------------

S, D = OI.String, OI.Double
# name -> (op, [(argument name, OPC UA Argument)], outputs, description)
METHODS: Mapping[str, tuple[str, tuple[tuple[str, ua.Argument], ...], tuple[ua.Argument, ...], str]] = {
    "Create": (
        "create",
        (
            ("service", argument("Service", S, "the service (operations.yaml)")),
            ("priority", argument("Priority", S, "low, medium, high, critical; empty: the service's default")),
            ("device", argument("Device", S, "the equipment; empty: none (then Latitude and Longitude)")),
            ("lat", argument("Latitude", D, "degrees; NaN: the device's")),
            ("lon", argument("Longitude", D, "degrees; NaN: the device's")),
            ("description", argument("Description", S, "what is wrong")),
        ),
        (argument("OrderId", S, "the new order"),),
        "an operator's work order",
    ),
    "Assign": (
        "assign",
        (
            ("order", argument("Order", S, "the order's id")),
            ("crew", argument("Crew", S, "the vehicle; empty: the proposed nearest available crew")),
        ),
        (argument("Crew", S, "the crew it is assigned to"),),
        "give the order to a crew (again: reassign)",
    ),
    "Cancel": (
        "cancel",
        (("order", argument("Order", S, "the order's id")), ("reason", argument("Reason", S, "why"))),
        (),
        "cancel the order (its crew is told)",
    ),
    "Close": (
        "close",
        (("order", argument("Order", S, "the order's id")), ("note", argument("Note", S, "e.g. confirmed by phone"))),
        (),
        "close an order on site or repaired",
    ),
    "Propose": (
        "propose",
        (("order", argument("Order", S, "the order's id")),),
        (
            argument("Crews", S, "the nearest available crews with the skill, nearest first", array=True),
            argument("Etas", D, "each crew's ETA in seconds", array=True),
        ),
        "the crews that could go",
    ),
}


class ArgumentRefused(Exception):
    def __init__(self, status: int, per_argument: Sequence[int] = ()) -> None:
        super().__init__(status)
        self.status, self.per_argument = status, list(per_argument)


def method_arguments(method: str, inputs: Sequence[Any]) -> dict[str, Any]:
    """A call's inputs as the OpsRequest's args, or ArgumentRefused (per-argument statuses).

    Texts: a String (a null one is ""); numbers: a Double or an integer (NaN: none, sent as None).
    """
    _, defs, _, _ = METHODS[method]
    if len(inputs) < len(defs):
        raise ArgumentRefused(SC.BadArgumentsMissing)
    if len(inputs) > len(defs):
        raise ArgumentRefused(SC.BadTooManyArguments)
    out: dict[str, Any] = {}
    codes = []
    for (name, arg), given in zip(defs, inputs):
        value = given.Value if isinstance(given, ua.Variant) else given
        code = SC.Good
        if arg.DataType.Identifier == OI.Double:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                code = SC.BadTypeMismatch
            else:
                value = None if math.isnan(value) else float(value)
        elif value is None:
            value = ""
        elif not isinstance(value, str):
            code = SC.BadTypeMismatch
        codes.append(code)
        out[name] = value
    if any(codes):
        raise ArgumentRefused(SC.BadInvalidArgument, codes)
    if "order" in out and not out["order"]:
        raise ArgumentRefused(SC.BadInvalidArgument, [SC.BadInvalidArgument] + [SC.Good] * (len(defs) - 1))
    for key in ("device", "priority", "crew"):  # "" is "none" / "the default"
        if key in out and out[key] == "":
            out[key] = None
    return out


def _as_order(w: Any) -> WorkOrder:
    return w if isinstance(w, WorkOrder) else WorkOrder.from_wire(w)


def _as_event(w: Any) -> OrderEvent:
    return w if isinstance(w, OrderEvent) else OrderEvent.from_wire(w)


class Operations:
    """The Operations folder of one server (module docstring)."""

    def __init__(
        self,
        server: Server,
        ns: int,
        request: Request,
        config: OperationsConfig,
        model_changed: Callable[[list], Awaitable[None]] | None = None,
    ) -> None:
        self.server = server
        self.ns = ns
        self.request = request
        self.config = config
        self.model_changed = model_changed  # HmiServer._model_changed: one GeneralModelChangeEvent
        self.aspace = address_space(server)
        self.builder = AddressSpaceBuilder(server, ns)
        self.node_count = 0
        self.methods: dict[str, ua.NodeId] = {}
        self.folder: NodeData | None = None
        self.contract: NodeData | None = None
        self.event_type = NodeId(EVENT_TYPE_PATH, ns)
        self._ancestors = frozenset({self.event_type, NodeId(OI.BaseEventType)})
        self._built: list[ua.NodeId] = []  # folder, methods, contract (detach removes them)
        self.orders: dict[str, WorkOrder] = {}  # the orders shown (open)
        self._nodes: dict[str, list[ua.NodeId]] = {}  # order id -> its object and variables
        self._kpis: dict[str, ua.NodeId] = {}
        self._pending: dict[str, WorkOrder] = {}  # latest state of each changed order, not shown yet
        self._snapshot: dict[str, WorkOrder] | None = None  # a snapshot not shown yet (replaces all)
        self._events: list[OrderEvent] = []
        self._kpi_pending: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._notifier_on = AttributeValue(ua.DataValue(ua.Variant(ua.EventNotifier.SubscribeToEvents.mask, V.Byte)))
        # Counters (tests, diagnostics)
        self.passes = 0  # run() passes that showed something
        self.awaited_writes = 0  # writes of monitored variables (the others are set directly)
        self.events_sent = 0
        self.events_dropped = 0
        self.malformed = 0  # pushed items that did not decode (logged, skipped)
        self.failures = 0  # passes of run() that failed (logged)

    # -- building ---------------------------------------------------------------------------

    async def build(self) -> None:
        """The folder, its methods, the Contract object and the event type (once per server)."""
        if self.event_type not in self.aspace:  # made once per server: a reload may install the folder again
            # asyncua's create_custom_event_type would give its properties the type's NodeId.
            etype = await self.server.get_node(NodeId(OI.BaseEventType)).add_object_type(
                self.event_type, EVENT_TYPE_NAME
            )
            for name in EVENT_FIELDS:
                await etype.add_property(NodeId(f"{EVENT_TYPE_PATH}/{name}", self.ns), name, "", varianttype=V.String)
        self.install_folder()

    def install_folder(self) -> None:
        b = self.builder
        root = self.aspace[NodeId(ROOT_NAME, self.ns)]
        folder = self.folder = b.add_object(root, FOLDER_PATH, FOLDER_NAME, folder=True)
        folder.attributes[A.EventNotifier] = self._notifier_on
        self._built.append(folder.nodeid)
        for name, (_, defs, outputs, desc) in METHODS.items():
            nd = b.add_method(folder, f"{FOLDER_PATH}/{name}", name, desc, [a for _, a in defs], list(outputs))
            self.aspace.add_method_callback(nd.nodeid, self._callback(name))
            self.methods[name] = nd.nodeid
            self._built += [nd.nodeid, *(r.NodeId for r in nd.references if r.IsForward)]
        self.contract = b.add_object(folder, CONTRACT_PATH, CONTRACT_NAME, folder=False)
        self._built.append(self.contract.nodeid)
        authz = authorisation(self.server)
        if authz is not None:
            authz.self_audited.update(self.methods.values())  # the core audits them ("work_order")
            authz.method_permissions.update(dict.fromkeys(self.methods.values(), Permission.DISPATCH))
        self.node_count = b.node_count

    def detach(self) -> None:
        """Remove everything :meth:`build` and the pushes made (the event type stays)."""
        authz = authorisation(self.server)
        if authz is not None:
            authz.self_audited.difference_update(self.methods.values())
            for nid in self.methods.values():
                authz.method_permissions.pop(nid, None)
        gone = set(self._built) | set(self._kpis.values())
        for nodes in self._nodes.values():
            gone.update(nodes)
        unlink_nodes(self.aspace, gone)
        self.methods.clear()
        self._built.clear()
        self._nodes.clear()
        self._kpis.clear()
        self.orders.clear()
        self._pending.clear()
        self._snapshot = None
        self._events.clear()
        self._kpi_pending.clear()
        self.folder = self.contract = None

    # -- the core's pushes (synchronous: recorded, shown by run) ------------------------------

    def install(self, orders: Iterable[Any]) -> None:
        """Every open order (model.PUSH_ORDERS_SNAPSHOT, WorkOrders or their wire tuples): the
        folder shows exactly these once :meth:`run` has caught up."""
        self._snapshot = {o.id: o for o in self._decoded(orders, _as_order)}
        self._pending.clear()
        self._wake.set()

    def apply(self, orders: Iterable[Any], events: Iterable[Any] = ()) -> None:
        """A model.PUSH_ORDERS message: changed orders (the latest of each is kept) and their events."""
        for o in self._decoded(orders, _as_order):
            if self._snapshot is not None:
                self._snapshot[o.id] = o
            else:
                self._pending[o.id] = o
        new = self._decoded(events, _as_event)
        room = MAX_QUEUED_EVENTS - len(self._events)
        if len(new) > room:
            self.events_dropped += len(new) - max(room, 0)
            log.warning("opcua_order_events_dropped", dropped=self.events_dropped)
            new = new[: max(room, 0)]
        self._events.extend(new)
        self._wake.set()

    def _decoded(self, items: Iterable[Any], decode: Callable[[Any], Any]) -> list[Any]:
        """The items that decode; a malformed one is logged and counted, never the others' loss
        (nor the front's: a raise here would end the process that serves every client)."""
        out = []
        for item in items:
            try:
                out.append(decode(item))
            except (TypeError, ValueError, KeyError) as exc:
                self.malformed += 1
                log.error("opcua_work_order_push_malformed", item=repr(item)[:200], error=repr(exc))
        return out

    def kpis(self, values: Mapping[Any, Any]) -> None:
        """The contract's live figures (model.PUSH_KPIS): name -> number."""
        if not isinstance(values, Mapping):
            self.malformed += 1
            log.error("opcua_contract_kpis_malformed", values=repr(values)[:200])
            return
        for name, value in values.items():
            if not isinstance(name, str) or not name or isinstance(value, bool) or not isinstance(value, (int, float)):
                log.warning("opcua_contract_kpi_skipped", name=repr(name), value=repr(value))
                continue
            self._kpi_pending[name] = float(value)
        self._wake.set()

    # -- showing --------------------------------------------------------------------------

    async def run(self) -> None:
        """Show the pushes as they come (a task of the front, until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the clients keep the rest of the server; the next snapshot heals
                self.failures += 1
                log.exception("opcua_work_orders_show_failed", failures=self.failures)

    async def flush(self) -> None:
        """Show what was pushed since the last pass: nodes, values, events, one model change."""
        if self.folder is None:
            return
        snapshot, self._snapshot = self._snapshot, None
        pending, self._pending = self._pending, {}
        events, self._events = self._events, []
        kpis, self._kpi_pending = self._kpi_pending, {}
        gone = set()
        if snapshot is not None:  # shown orders the core no longer lists as open leave too
            gone = {oid for oid in self.orders if oid not in snapshot}
            pending.update(snapshot)
        if not (pending or events or kpis or gone):
            return
        self.passes += 1
        communes = {oid: o.commune for oid, o in self.orders.items()} | {o.id: o.commune for o in pending.values()}
        added = 0
        removed: list[list[ua.NodeId]] = [self._forget(oid) for oid in gone]
        for n, order in enumerate(pending.values(), 1):
            shown = self.orders.get(order.id)
            if shown is not None and (not order.open or shown.commune != order.commune):
                removed.append(self._forget(order.id))  # closed, or moved commune: its NodeId changes
                shown = None
            if order.open:
                if shown is None:
                    self._add_order(order)
                    added += 1
                else:
                    await self._update_order(shown, order)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for name, value in kpis.items():
            await self._write_kpi(name, value)
        # Events before the removal: their SourceNode still browses while a client reads it.
        await self._send_events(events, communes)
        if removed:
            await self._remove([nid for nodes in removed for nid in nodes])
        if (added or removed) and self.model_changed is not None:
            verb = (ua.ModelChangeStructureVerbMask.ReferenceAdded if added else 0) | (
                ua.ModelChangeStructureVerbMask.ReferenceDeleted if removed else 0
            )
            await self.model_changed([(NodeId(FOLDER_PATH, self.ns), NodeId(OI.FolderType), verb)])

    def _forget(self, order_id: str) -> list[ua.NodeId]:
        """An order no longer shown: its nodes, for :meth:`_remove`."""
        del self.orders[order_id]
        return self._nodes.pop(order_id)

    def _add_order(self, order: WorkOrder) -> None:
        assert self.folder is not None
        b = self.builder
        path = order_path(order.id, order.commune)
        obj = b.add_object(self.folder, path, order.id, folder=False)
        obj.attributes[A.EventNotifier] = self._notifier_on
        nodes = [obj.nodeid]
        for name, vtype, value_of, desc in ORDER_VARIABLES:
            nodes.append(b.add_variable(obj, f"{path}/{name}", name, value_of(order), vtype, desc).nodeid)
        self._nodes[order.id] = nodes
        self.orders[order.id] = order
        self.node_count = b.node_count

    async def _update_order(self, shown: WorkOrder, order: WorkOrder) -> None:
        path = order_path(order.id, order.commune)
        for name, vtype, value_of, _ in ORDER_VARIABLES:
            value = value_of(order)
            before = value_of(shown)
            if value == before or (isinstance(value, float) and math.isnan(value) and math.isnan(before)):
                continue
            await self._write(NodeId(f"{path}/{name}", self.ns), ua.DataValue(ua.Variant(value, vtype)))
        self.orders[order.id] = order

    async def _write(self, nid: ua.NodeId, dv: ua.DataValue) -> None:
        """A variable's new value: set directly when nobody monitors it (no await, no notification
        owed), else through asyncua, which notifies its monitored items."""
        nd = self.aspace.get(nid)
        if nd is None:
            return
        attr = nd.attributes[A.Value]
        if not attr.datachange_callbacks:
            attr.value = dv
            return
        self.awaited_writes += 1
        await self.server.write_attribute_value(nid, dv)

    async def _write_kpi(self, name: str, value: float) -> None:
        nid = self._kpis.get(name)
        if nid is None:
            assert self.contract is not None
            nd = self.builder.add_variable(self.contract, f"{CONTRACT_PATH}/{name}", name, value, V.Double)
            self._kpis[name] = nd.nodeid
            self.node_count = self.builder.node_count
            return
        await self._write(nid, ua.DataValue(ua.Variant(value, V.Double)))

    async def _remove(self, nodes: list[ua.NodeId]) -> None:
        """Orders' nodes gone: their monitored items get BadNodeIdUnknown first (as for a device
        removed by a reload, scada/opcua/address_space.py delete_nodes), then the nodes go, all at
        once (the folder's references are filtered once, not once per order)."""
        gone = ua.DataValue(StatusCode=StatusCode(SC.BadNodeIdUnknown))
        for nid in nodes:
            nd = self.aspace.get(nid)
            attr = None if nd is None else nd.attributes.get(A.Value)
            if attr is None:
                continue
            for handle, callback in list(attr.datachange_callbacks.items()):
                try:
                    await callback(handle, gone)
                except Exception:  # noqa: BLE001 - one client's callback must not stop the removal
                    pass
                self.aspace.delete_datachange_callback(handle)
        unlink_nodes(self.aspace, set(nodes))

    # -- events ---------------------------------------------------------------------------

    def event_of(self, e: OrderEvent, commune: str) -> ConditionEvent:
        now = datetime.now(UTC)
        fields = {
            "EventId": ua.Variant(uuid.uuid4().bytes, V.ByteString),
            "EventType": ua.Variant(self.event_type, V.NodeId),
            "SourceNode": ua.Variant(NodeId(order_path(e.order, commune), self.ns), V.NodeId),
            "SourceName": ua.Variant(e.order, V.String),
            "Time": ua.Variant(_time(e.time_ns) if e.time_ns > 0 else now, V.DateTime),
            "ReceiveTime": ua.Variant(now, V.DateTime),
            "Message": ua.Variant(ua.LocalizedText(event_message(e)), V.LocalizedText),
            "Severity": ua.Variant(SEVERITY.get(e.event, SEVERITY_DEFAULT), V.UInt16),
        }
        values = (e.order, e.event, e.from_state.label, e.to_state.label, e.user, e.crew or "", e.detail)
        for name, value in zip(EVENT_FIELDS, values):
            fields[name] = ua.Variant(value, V.String)
        return ConditionEvent(fields, self._ancestors)

    async def _send_events(self, events: list[OrderEvent], communes: Mapping[str, str]) -> None:
        """To the event items on the Server, the folder and the order, of the sessions that see
        the order's commune (an order this front never knew: only those that see every commune)."""
        if not events:
            return
        subs = list(subscriptions(self.server).values())
        if not subs:
            self.events_sent += len(events)
            return
        authz = authorisation(self.server) is not None
        roots = {s.session_id: _roots(s) for s in external_sessions(self.server)} if authz else {}
        folder = NodeId(FOLDER_PATH, self.ns)
        aspace = self.aspace
        for n, e in enumerate(events, 1):
            commune = communes.get(e.order)
            ev = self.event_of(e, commune or "")
            source = ev.fields["SourceNode"].Value
            for sub in subs:
                if authz:
                    r = roots.get(sub.session_id, frozenset())  # fails closed: an unknown session sees no commune
                    if r is not None and (commune is None or hides(source, r)):
                        continue
                watched = subscription_event_items(sub)
                for node in (_SERVER, folder, source):
                    for mid in list(watched.get(node, ())):
                        md = monitored_item(sub, mid)
                        if md is None or md.filter is None:
                            continue
                        where = md.where_clause_evaluator
                        if where is not None and not SubtypeWhere.of(where, aspace).eval(ev):
                            continue
                        fields = ua.EventFieldList(
                            ClientHandle=md.client_handle, EventFields=ev.to_event_fields(md.filter.SelectClauses)
                        )
                        await sub.enqueue_event(mid, fields, md.queue_size)
            self.events_sent += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    # -- calls ------------------------------------------------------------------------------

    def _callback(self, method: str) -> Callable[..., Awaitable[Any]]:
        async def call(object_id: ua.NodeId, *inputs: Any) -> Any:
            try:
                return await self._call(method, object_id, inputs)
            except Exception as exc:  # noqa: BLE001 - a client gets a status, the session lives
                log.error("opcua_work_order_method_failed", method=method, error=repr(exc))
                return call_result(SC.BadInternalError)

        return call

    async def _call(self, method: str, object_id: ua.NodeId, inputs: Sequence[Any]) -> Any:
        op = METHODS[method][0]
        if object_id != NodeId(FOLDER_PATH, self.ns):
            return self._refused(op, object_id.to_string(), inputs, SC.BadMethodInvalid)
        try:
            args = method_arguments(method, inputs)
        except ArgumentRefused as err:
            return self._refused(op, FOLDER_PATH, inputs, err.status, err.per_argument)
        ctx = current()
        order = self.orders.get(args.get("order") or "")
        if ctx is not None and order is not None and order.commune and not ctx.identity.sees(order.commune):
            # As the core answers for an order it does not know: a hidden order does not exist.
            return self._refused(op, order.id, inputs, SC.BadNodeIdUnknown)
        request = OpsRequest(op, args, caller_of(ctx))
        answer = await ask_core(self.request, REQUEST_WORK_ORDER, request.to_wire())
        result = OpsResult(answer, "request failed") if isinstance(answer, int) else OpsResult.from_wire(answer)
        log.info(
            "opcua_work_order",
            op=op,
            order=result.order or args.get("order"),
            user=request.caller.user,
            status=f"0x{result.status:08X}",
            message=result.message,
        )
        if not result.good:
            return call_result(result.status)
        if method == "Create":
            return call_result(result.status, [ua.Variant(result.order, V.String)])
        if method == "Assign":
            return call_result(result.status, [ua.Variant(str(result.data.get("crew") or ""), V.String)])
        if method == "Propose":
            crews = [(str(c), float(eta)) for c, eta in result.data.get("crews", ())]
            return call_result(
                result.status,
                [
                    ua.Variant([c for c, _ in crews], V.String, is_array=True),
                    ua.Variant([eta for _, eta in crews], V.Double, is_array=True),
                ],
            )
        return call_result(result.status)

    def _refused(self, op: str, target: str, inputs: Sequence[Any], status: int, per_arg: Sequence[int] = ()) -> Any:
        """A call the front refuses alone: audited as the core audits its refusals ("work_order")."""
        authz = authorisation(self.server)
        if authz is not None:
            authz.refuse(
                "work_order", target, {"op": op, "arguments": [audit_value(v) for v in inputs]}, status, current()
            )
        return call_result(status, per_argument=per_arg)


def _roots(session: Any) -> frozenset[str] | None:
    ident = identity_of(session)
    return visible_roots(ident) if ident is not None else frozenset()
