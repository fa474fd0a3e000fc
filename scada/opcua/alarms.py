"""OPC UA Alarms & Conditions (Part 9) over the alarm engine: conditions, events, methods, refresh.

Every alarm instance of the engine (an alarm definition on one device) is one condition:

* **Nodes.** Under each device object: an ``Alarms`` object holding one condition object per
  alarm of the device (NodeId ``<commune>/<class>/<device>/Alarms/<alarm>``), typed with the
  fitting subtype of AlarmConditionType (table :data:`EVENT_TYPES`), with its ``ShelvingState``
  object, and a ``HasCondition`` reference from the device (the event source) to it.
  Measured with asyncua 2.1 (bench/bench_opcua_alarms.py): instantiating an OffNormalAlarmType
  the stock way (``add_object(objecttype=...)``) creates 99 nodes and costs 590 KiB and
  0.12 s (50 conditions) to 0.42 s (200: it grows with the count); 5,000 conditions would take
  more than 10 minutes and 2.8 GiB. So the nodes are written directly as asyncua ``NodeData``
  (as the tag tree is, ``scada.opcua.address_space``): two nodes per condition, sharing every
  identical attribute and reference, all created at start: 30 us and 3.3 KiB a condition
  (5,005 conditions: 0.15 s, 16 MiB). The condition's state is not a set of variables under
  it: it is carried by its events and returned by ConditionRefresh, which Part 9 allows ("it
  is up to the Server whether condition instances are also exposed in the AddressSpace");
  the node gives the condition its identity (ConditionId), a place to browse, and the
  ObjectId of its methods. The engine's server alarms (``AlarmEngine.system_alarm``: no
  instance) are conditions of the Server object, made at their first event.

* **Events.** Every engine transition or operator action (AlarmEvent) becomes one event of the
  condition's type with the Part 9 fields (:meth:`AlarmConditions._event`). It is delivered
  to the event monitored items of the Server object, the City folder, the device's commune
  and class folders and the device object (each an event notifier, linked by ``HasNotifier``
  from the Server down to the devices): a client watching the Server gets every alarm, one
  watching a device gets its alarms. asyncua routes an event to one notifier only and
  matches ``OfType`` by exact type, so delivery is done here (:meth:`AlarmConditions._deliver`),
  with ``OfType`` honouring subtypes.

* **State mapping** (engine State -> OPC UA): ActiveState = the process condition;
  AckedState = no acknowledgement owed (``scada.alarms.states.is_acked``); ShelvingState =
  TimedShelved / OneShotShelved in SHELVED; SuppressedState in SUPPRESSED (suppression by
  design); OutOfServiceState in OUT_OF_SERVICE; SuppressedOrShelved in any of the three;
  LatchedState for latching alarms (LATCHED); EnabledState always true (out of service is the
  engine's way to disable). **Retain** is true while the alarm is announced (UNACK_ACTIVE,
  ACK_ACTIVE, RTN_UNACK, LATCHED), and also while an operator holds it hidden (SHELVED,
  OUT_OF_SERVICE: an HMI must be able to list and release it) or while it is suppressed by
  design with its condition active. ConfirmedState is not used (the engine has no confirm step).
  Comment / ClientUserId are the last comment an operator gave (acknowledgement, note, shelve
  reason...), reset at each new occurrence. A one-shot shelve is a 24 h shelve of the engine
  with its ``one_shot`` flag: the engine ends it when the condition clears, and persists the
  flag with the alarm's state (a restart keeps it one-shot).

* **EventIds** are derived from the engine's event (:func:`condition_event_id`: the alarm,
  the device, the event's time and its per-instance number), which the engine persists with
  the alarm's state: after a restart, even after a SIGKILL, ConditionRefresh gives each
  retained condition the EventId of its last event, the one the HMI already holds (and can
  Acknowledge with). Server alarms and RefreshStart/End events keep a random per-run prefix.

* **Methods.** The standard method NodeIds, called with the condition (or its ShelvingState)
  as ObjectId: Acknowledge, AddComment, TimedShelve(2), OneShotShelve(2), Unshelve(2),
  Reset(2) (a latched alarm), RemoveFromService(2) / PlaceInService(2); ConditionRefresh(2)
  on the ConditionType. A refused action is a Bad status code of the call, never an exception
  (BadEventIdUnknown, BadConditionBranchAlreadyAcked, BadConditionAlreadyShelved,
  BadConditionNotShelved, BadShelvingTimeOutOfRange, BadInvalidState...). Confirm, Enable and
  Disable answer BadNotSupported. The user journaled for an action is the session's user name
  when the session has one, else ``opcua:<session name>@<client address>``: roles and
  authorisation are the security issue's, until then every session may act.

* **Queue.** The engine calls its subscribers synchronously from its own task; sending an
  event in asyncua is a coroutine. The subscriber only appends to a bounded queue; the task
  :meth:`AlarmConditions.run` (started by ``HmiServer.run``) sends. On overflow the queue is
  dropped and counted, the retained conditions are rebuilt from the engine's columns, and a
  RefreshRequiredEvent tells clients to call ConditionRefresh (Part 9's resynchronisation).
  Sending yields to the loop and waits while a subscription has MAX_PENDING events not yet
  published (backpressure, see MAX_PENDING), so that an alarm storm neither stalls the server
  nor makes a client drop its link.

It relies on asyncua internals (NodeData, the monitored item service's tables, the session
object), all through :mod:`scada.opcua.asyncua_private` and its contract test.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import itertools
import os
import struct
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from asyncua import Server, ua

from scada.alarms.config import LIMIT_CONDITIONS
from scada.alarms.states import ANNOUNCED, IllegalTransition, State, is_acked
from scada.opcua.address_space import reference_to
from scada.opcua.asyncua_private import (
    AttributeValue,
    NodeData,
    SubtypeWhere,
    address_space,
    event_items,
    hook_sessions,
    monitored_item,
    pending_events,
    subscriptions,
)
from scada.opcua.typed_ua import NodeId, StatusCode

if TYPE_CHECKING:
    from scada.alarms.engine import AlarmEngine, AlarmEvent

log = structlog.get_logger("scada.opcua")

OI = ua.ObjectIds
A = ua.AttributeIds
VT = ua.VariantType
SC = ua.StatusCodes
ALARMS_FOLDER = "Alarms"
MAX_SHELVE_MS = 86_400_000.0  # the engine's limit: a shelve lasts at most 24 h
QUEUE_SIZE = 10_000
RECENT_EVENT_IDS = 8  # EventIds of a condition an Acknowledge / AddComment may name
YIELD_EVERY = 50  # events sent between two looks at the event loop and the clients' backlogs
# Backpressure: asyncua encodes all of a subscription's pending events into one Publish
# response, synchronously: 0.3 ms per event with the 85 fields an AlarmConditionType
# subscription selects, up to 1 ms on a busy machine (measured). 1,430 events at once stalled
# the server for 1.3-3 s, and asyncua's client drops a link whose 1 s watchdog read is not
# answered. So no more than MAX_PENDING events wait for a subscription's next publish (a
# stall of 0.06-0.2 s; at most MAX_PENDING events per publishing interval to that client: 500
# failed once in two runs, the client decoding them for more than its 1 s watchdog);
# sending waits for it, except for a subscription stuck longer than SLOW_AFTER_S (a client
# that stopped publishing): that one no longer holds the others, and asyncua's bounded
# per-item queue drops its oldest.
MAX_PENDING = 200
SLOW_AFTER_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Event type per engine condition (documented choice): single-limit level alarms are
# NonExclusiveLevelAlarmType (one of HighHigh/High/Low/LowLow states, its limit and deadband);
# rate of change is NonExclusiveRateOfChangeAlarmType (HighLimit in units per second);
# discrete states are OffNormalAlarmType; a device link loss is SystemOffNormalAlarmType
# (Part 9: "the underlying system that is providing Alarm information is having a
# communication problem"); expressions are plain AlarmConditionType.
EVENT_TYPES = {
    "high_high": OI.NonExclusiveLevelAlarmType,
    "high": OI.NonExclusiveLevelAlarmType,
    "low": OI.NonExclusiveLevelAlarmType,
    "low_low": OI.NonExclusiveLevelAlarmType,
    "rate_of_change": OI.NonExclusiveRateOfChangeAlarmType,
    "state": OI.OffNormalAlarmType,
    "comm_loss": OI.SystemOffNormalAlarmType,
    "expression": OI.AlarmConditionType,
}
_LIMIT_FIELDS = {"high_high": "HighHigh", "high": "High", "low": "Low", "low_low": "LowLow", "rate_of_change": "High"}

_HAS_TYPEDEF = NodeId(OI.HasTypeDefinition)
_HAS_COMPONENT = NodeId(OI.HasComponent)
_HAS_CONDITION = NodeId(OI.HasCondition)
_HAS_NOTIFIER = NodeId(OI.HasNotifier)
_HAS_SUBTYPE = NodeId(OI.HasSubtype)
_SERVER = NodeId(OI.Server)
_BASE_EVENT = NodeId(OI.BaseEventType)

# The calling session of the method being run (set around InternalSession.call).
_CALLER: contextvars.ContextVar[Any] = contextvars.ContextVar("opcua_caller", default=None)


def _v(value, vtype: ua.VariantType) -> ua.Variant:
    return ua.Variant(value, vtype)


def _text(s: str) -> ua.Variant:
    return _v(ua.LocalizedText(s), VT.LocalizedText)


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


_NULL = ua.Variant()
_TRUE, _FALSE = _v(True, VT.Boolean), _v(False, VT.Boolean)
_BOOL = {True: _TRUE, False: _FALSE}
_TEXTS = {
    s: _text(s)
    for s in (
        "Active",
        "Inactive",
        "Acknowledged",
        "Unacknowledged",
        "Enabled",
        "Suppressed",
        "Unsuppressed",
        "Out of service",
        "In service",
        "Latched",
        "Unlatched",
    )
}
_SHELVING = {
    name: (_text(name), _v(NodeId(nid), VT.NodeId))
    for name, nid in (
        ("Unshelved", OI.ShelvedStateMachineType_Unshelved),
        ("TimedShelved", OI.ShelvedStateMachineType_TimedShelved),
        ("OneShotShelved", OI.ShelvedStateMachineType_OneShotShelved),
    )
}
_SHELVING_TRANSITION = {
    ("Unshelved", "TimedShelved"): ("UnshelvedToTimedShelved", OI.ShelvedStateMachineType_UnshelvedToTimedShelved),
    ("Unshelved", "OneShotShelved"): (
        "UnshelvedToOneShotShelved",
        OI.ShelvedStateMachineType_UnshelvedToOneShotShelved,
    ),
    ("TimedShelved", "Unshelved"): ("TimedShelvedToUnshelved", OI.ShelvedStateMachineType_TimedShelvedToUnshelved),
    ("OneShotShelved", "Unshelved"): (
        "OneShotShelvedToUnshelved",
        OI.ShelvedStateMachineType_OneShotShelvedToUnshelved,
    ),
}
_BRANCH_NULL = _v(NodeId(), VT.NodeId)
_HIDDEN_STATES = (State.SHELVED, State.SUPPRESSED, State.OUT_OF_SERVICE)


def condition_event_id(alarm: str, device: str, time_ns: int, seq: int) -> bytes:
    """The EventId of an alarm instance's event: the same whenever computed, unique per event
    (the per-instance number never repeats; the time keeps it apart across a lost journal)."""
    key = f"{alarm}\x1f{device}\x1f{int(time_ns)}\x1f{int(seq)}".encode()
    return hashlib.blake2b(key, digest_size=16).digest()


def retained(state: State | int, active: bool) -> bool:
    """Part 9 Retain: the condition is of interest to a client (see the module docstring)."""
    return (
        bool(ANNOUNCED[state])
        or state in (State.SHELVED, State.OUT_OF_SERVICE)
        or (state == State.SUPPRESSED and active)
    )


class ConditionEvent:
    """One event notification: the field values by browse path, built once, sent to many.

    It is what asyncua's monitored item service needs of an event: ``to_event_fields`` for
    the select clauses and attribute access for the where clause evaluator.
    """

    __slots__ = ("fields", "ancestors")

    def __init__(self, fields: dict[str, ua.Variant], ancestors: frozenset) -> None:
        self.fields = fields
        self.ancestors = ancestors  # the event type and its supertypes (OfType)

    def __getattr__(self, name: str):
        try:
            return object.__getattribute__(self, "fields")[name].Value
        except KeyError:
            raise AttributeError(name) from None

    def to_event_fields(self, select_clauses) -> list[ua.Variant]:
        fields = self.fields
        return [fields.get(n, _NULL) for n in _field_names(select_clauses)]


_NAMES: dict[int, tuple[Any, list[str]]] = {}


def _field_names(select_clauses) -> list[str]:
    """Browse paths of select clauses as asyncua names event fields ("ActiveState/Id"), cached."""
    hit = _NAMES.get(id(select_clauses))
    if hit is not None and hit[0] is select_clauses:
        return hit[1]
    names = []
    for sattr in select_clauses:
        if sattr.BrowsePath:
            names.append("/".join(q.Name for q in sattr.BrowsePath))
        else:  # ConditionId: the NodeId attribute of the ConditionType
            names.append("NodeId" if sattr.AttributeId == A.NodeId else "")
    if len(_NAMES) > 4096:
        _NAMES.clear()
    _NAMES[id(select_clauses)] = (select_clauses, names)
    return names


@dataclass(slots=True)
class _Dyn:
    """What the OPC UA side remembers of one condition beside the engine's columns."""

    event_ids: deque = field(default_factory=lambda: deque(maxlen=RECENT_EVENT_IDS))
    comment: str = ""
    comment_user: str = ""
    comment_time: datetime | None = None
    acked: bool = True
    acked_time: datetime | None = None
    shelving: str = "Unshelved"
    shelving_transition: tuple[str, int, datetime] | None = None


@dataclass(frozen=True, slots=True)
class _DefInfo:
    """Per alarm definition: its event type and the fields common to all its instances."""

    etype: ua.NodeId
    ancestors: frozenset
    static: dict
    point: str | None
    latching: bool
    limit_field: str | None


class AlarmConditions:
    """The engine's alarm instances as OPC UA conditions of an asyncua server.

    ``build()`` before the server starts (nodes, notifiers, method callbacks, engine
    subscription); ``run()`` sends the events until cancelled; ``close()`` detaches.
    """

    def __init__(self, server: Server, ns: int, engine: AlarmEngine, queue_size: int = QUEUE_SIZE) -> None:
        self.server = server
        self.aspace = address_space(server)
        self.ns = ns
        self.engine = engine
        self.queue_size = queue_size
        self.node_count = 0
        self.emitted = 0  # events sent (one per transition, whatever the number of clients)
        self.dropped = 0  # engine events lost to a full queue (then: resync + RefreshRequired)
        self.resyncs = 0
        self._queue: deque = deque()
        self._wake = asyncio.Event()
        self._resync = False
        self._attached = False
        self._prefix = os.urandom(8)  # EventIds: unique across restarts
        self._seq = itertools.count(1)
        self._cond_ids: list[ua.NodeId] = []
        self._by_node: dict[ua.NodeId, int] = {}
        self._dev_nodes: list[ua.NodeId | None] = []
        self._notifiers: list[tuple[ua.NodeId, ...]] = []
        self._defs: list[_DefInfo] = []
        self._dyn: dict[int, _Dyn] = {}
        self._retained: dict[int, ConditionEvent] = {}
        self._system: dict[str, ua.NodeId] = {}  # the engine's server alarms: name -> condition node
        self._system_nodes: set[ua.NodeId] = set()
        self._system_retained: dict[str, ConditionEvent] = {}
        self._refreshing: set[int] = set()
        self._slow: set[int] = set()  # id() of subscriptions that stopped draining (backpressure)
        self._tasks: set[asyncio.Task] = set()  # ConditionRefresh deliveries under way
        self._where_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._session_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # Construction

    def build(self) -> None:
        """Condition nodes, notifier tree, method callbacks, session hook; subscribe to the engine.

        Like the tag tree, the nodes live as long as the server: built without the cyclic
        collector and frozen out of its sight afterwards.
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._build_nodes()
        finally:
            gc.freeze()
            if enabled:
                gc.enable()
        self._bind_methods()
        self._hook_sessions()
        self.engine.subscribers.append(self._on_alarm_events)
        self._attached = True
        self._snapshot_all()  # states restored from the journal are retained from the start

    def _type_ancestors(self, etype: ua.NodeId) -> frozenset:
        out, node = {etype}, etype
        while node != _BASE_EVENT:
            nd = self.aspace.get(node)
            sup = next(
                (
                    r.NodeId
                    for r in (nd.references if nd else ())
                    if r.ReferenceTypeId == _HAS_SUBTYPE and not r.IsForward
                ),
                None,
            )
            if sup is None:
                break
            out.add(sup)
            node = sup
        return frozenset(out)

    def _def_info(self, a) -> _DefInfo:
        etype = NodeId(EVENT_TYPES.get(a.condition, OI.AlarmConditionType))
        if etype not in self.aspace:  # an older nodeset: fall back to the generic type
            etype = NodeId(OI.AlarmConditionType)
        system = a.condition == "comm_loss"
        static = {
            "EventType": _v(etype, VT.NodeId),
            "ConditionName": _v(a.name, VT.String),
            "ConditionClassId": _v(
                NodeId(OI.SystemConditionClassType if system else OI.ProcessConditionClassType), VT.NodeId
            ),
            "ConditionClassName": _text("System" if system else "Process"),
            "BranchId": _BRANCH_NULL,
            "EnabledState": _TEXTS["Enabled"],
            "EnabledState/Id": _TRUE,
            "MaxTimeShelved": _v(MAX_SHELVE_MS, VT.Double),
            "SupportsFilteredRetain": _FALSE,
        }
        if a.on_delay:
            static["OnDelay"] = _v(a.on_delay * 1000.0, VT.Double)
        if a.off_delay:
            static["OffDelay"] = _v(a.off_delay * 1000.0, VT.Double)
        limit_field = (
            _LIMIT_FIELDS.get(a.condition)
            if (a.condition in LIMIT_CONDITIONS or a.condition == "rate_of_change")
            else None
        )
        if limit_field and a.limit is not None:
            static[f"{limit_field}Limit"] = _v(float(a.limit), VT.Double)
            if a.deadband:
                static[f"{limit_field}Deadband"] = _v(float(a.deadband), VT.Double)
        return _DefInfo(etype, self._type_ancestors(etype), static, a.point, bool(a.latching), limit_field)

    def _attr(self, value, vtype) -> AttributeValue:
        return AttributeValue(ua.DataValue(ua.Variant(value, vtype)))

    def _node(self, nodeid: ua.NodeId, static: dict, refs: list) -> NodeData:
        nd = NodeData(nodeid)
        nd.attributes = dict(static)
        nd.attributes[A.NodeId] = self._attr(nodeid, VT.NodeId)
        nd.references = refs
        self.aspace[nodeid] = nd
        self.node_count += 1
        return nd

    def _names(self, name: str, ns: int) -> dict:
        return {
            A.BrowseName: self._attr(ua.QualifiedName(name, ns), VT.QualifiedName),
            A.DisplayName: self._attr(ua.LocalizedText(name), VT.LocalizedText),
        }

    def _typedef_ref(self, typedef: ua.NodeId) -> ua.ReferenceDescription:
        return ua.ReferenceDescription(
            ReferenceTypeId=_HAS_TYPEDEF, IsForward=True, NodeId=typedef, NodeClass=ua.NodeClass.ObjectType
        )

    def _method_refs(self, ids: Sequence[int]) -> list[ua.ReferenceDescription]:
        """HasComponent references to the type's method nodes: browsable, called by NodeId."""
        refs = []
        for i in ids:
            nd = self.aspace.get(NodeId(i))
            if nd is not None:
                refs.append(reference_to(_HAS_COMPONENT, nd, True))
        return refs

    def _set_notifier(self, nd: NodeData, on: AttributeValue) -> None:
        nd.attributes[A.EventNotifier] = on

    def _build_nodes(self) -> None:
        eng, cfg = self.engine, self.engine.config
        self._defs = [self._def_info(a) for a in eng.defs]
        obj = {
            A.NodeClass: self._attr(ua.NodeClass.Object, VT.Int32),
            A.WriteMask: self._attr(0, VT.UInt32),
            A.UserWriteMask: self._attr(0, VT.UInt32),
            A.EventNotifier: self._attr(0, VT.Byte),
        }
        notifier_on = self._attr(ua.EventNotifier.SubscribeToEvents.mask, VT.Byte)
        folder_names = self._names(ALARMS_FOLDER, self.ns)
        shelving_names = self._names("ShelvingState", 0)
        def_names = [self._names(a.name, self.ns) for a in eng.defs]
        def_typedef = [self._typedef_ref(d.etype) for d in self._defs]
        object_typedef = self._typedef_ref(NodeId(OI.BaseObjectType))
        shelving_typedef = self._typedef_ref(NodeId(OI.ShelvedStateMachineType))
        cond_methods = self._method_refs((OI.AcknowledgeableConditionType_Acknowledge, OI.ConditionType_AddComment))
        latch_methods = self._method_refs((OI.AlarmConditionType_Reset, OI.AlarmConditionType_Reset2))
        shelve_methods = self._method_refs(
            (
                OI.AlarmConditionType_ShelvingState_TimedShelve,
                OI.AlarmConditionType_ShelvingState_OneShotShelve,
                OI.AlarmConditionType_ShelvingState_Unshelve,
            )
        )
        # The notifier tree: Server -> City -> commune -> class -> device (HasNotifier).
        server_nd = self.aspace[_SERVER]
        linked: set[ua.NodeId] = set()

        def notify(parent: NodeData, child: NodeData) -> None:
            if child.nodeid in linked:
                return
            linked.add(child.nodeid)
            self._set_notifier(child, notifier_on)
            parent.references.append(reference_to(_HAS_NOTIFIER, child, True))
            child.references.append(reference_to(_HAS_NOTIFIER, parent, False))

        devices = cfg.devices
        self._dev_nodes = [None] * len(devices)
        self._notifiers = [()] * len(devices)
        folders: dict[int, tuple[NodeData, ua.ReferenceDescription, ua.ReferenceDescription, NodeData]] = {}
        self._cond_ids = [None] * eng.n  # type: ignore[list-item]
        city = NodeId("City", self.ns)  # scada.opcua.address_space.ROOT_NAME
        for i in range(eng.n):
            k, di = int(eng.inst_def[i]), int(eng.inst_dev[i])
            d = devices[di]
            if di not in folders:
                cls = cfg.types[d.type].cls
                chain = [
                    NodeId(x, self.ns) for x in ("City", d.commune, f"{d.commune}/{cls}", f"{d.commune}/{cls}/{d.name}")
                ]
                nds = [nd for nd in map(self.aspace.get, chain) if nd is not None]
                if len(nds) < len(chain):
                    raise RuntimeError(f"device {d.name}: no object {chain[-1].to_string()} in the address space")
                parent = server_nd
                for nd in nds:
                    notify(parent, nd)
                    parent = nd
                dev = nds[-1]
                self._dev_nodes[di] = dev.nodeid
                self._notifiers[di] = (_SERVER, city, *chain[1:])
                fid = NodeId(f"{dev.nodeid.Identifier!s}/{ALARMS_FOLDER}", self.ns)
                folder = self._node(fid, {**obj, **folder_names}, [object_typedef])
                folder.references.append(reference_to(_HAS_COMPONENT, dev, False))
                dev.references.append(reference_to(_HAS_COMPONENT, folder, True, NodeId(OI.BaseObjectType)))
                folders[di] = (
                    folder,
                    reference_to(_HAS_COMPONENT, folder, False),
                    reference_to(_HAS_CONDITION, dev, False),
                    dev,
                )
            folder, folder_back, source_back, dev_nd = folders[di]
            info = self._defs[k]
            cid = NodeId(f"{folder.nodeid.Identifier!s}/{eng.defs[k].name}", self.ns)
            sid = NodeId(f"{cid.Identifier!s}/ShelvingState", self.ns)
            cond = self._node(
                cid,
                {**obj, **def_names[k]},
                [def_typedef[k], folder_back, source_back, *cond_methods, *(latch_methods if info.latching else ())],
            )
            shelving = self._node(sid, {**obj, **shelving_names}, [shelving_typedef, *shelve_methods])
            shelving.references.append(reference_to(_HAS_COMPONENT, cond, False))
            cond.references.append(reference_to(_HAS_COMPONENT, shelving, True, NodeId(OI.ShelvedStateMachineType)))
            folder.references.append(reference_to(_HAS_COMPONENT, cond, True, info.etype))
            dev_nd.references.append(reference_to(_HAS_CONDITION, cond, True, info.etype))
            self._cond_ids[i] = cid
            self._by_node[cid] = i
            self._by_node[sid] = i

    def _bind_methods(self) -> None:
        engine = self.engine
        reset = self._operator_method("Reset", engine.reset)
        remove = self._operator_method("RemoveFromService", engine.remove_from_service)
        place = self._operator_method(
            "PlaceInService", engine.return_to_service, State.OUT_OF_SERVICE, SC.BadInvalidState
        )
        unshelve = self._operator_method("Unshelve", engine.unshelve, State.SHELVED, SC.BadConditionNotShelved)
        table = {
            OI.AcknowledgeableConditionType_Acknowledge: self._m_acknowledge,
            OI.ConditionType_AddComment: self._m_add_comment,
            OI.ConditionType_ConditionRefresh: self._m_refresh,
            OI.ConditionType_ConditionRefresh2: self._m_refresh,
            OI.AcknowledgeableConditionType_Confirm: self._m_not_supported,
            OI.ConditionType_Enable: self._m_not_supported,
            OI.ConditionType_Disable: self._m_not_supported,
            OI.AlarmConditionType_Reset: reset,
            OI.AlarmConditionType_Reset2: reset,
            OI.AlarmConditionType_RemoveFromService: remove,
            OI.AlarmConditionType_RemoveFromService2: remove,
            OI.AlarmConditionType_PlaceInService: place,
            OI.AlarmConditionType_PlaceInService2: place,
        }
        for name, fn in (
            ("TimedShelve", self._m_timed_shelve),
            ("OneShotShelve", self._m_one_shot_shelve),
            ("Unshelve", unshelve),
        ):
            for prefix in ("ShelvedStateMachineType_", "AlarmConditionType_ShelvingState_"):
                for suffix in ("", "2"):
                    mid = getattr(OI, prefix + name + suffix, None)
                    if mid is not None:
                        table[mid] = fn
        for mid, fn in table.items():
            if NodeId(mid) in self.aspace:
                self.aspace.add_method_callback(NodeId(mid), fn)

    def _hook_sessions(self) -> None:
        """Make the calling session known to method callbacks (asyncua passes only the ObjectId),
        and remember each session's SessionName for the journal."""
        hook_sessions(self.server, _CALLER, self._session_names)

    def reattach(self) -> None:
        """Listen to the engine again after ``close`` (a supervised restart of ``run``).

        Events of the time between were not seen: resynchronise, and clients are told to
        call ConditionRefresh.
        """
        if not self._attached:
            self.engine.subscribers.append(self._on_alarm_events)
            self._attached = True
        self._resync = True
        self._wake.set()

    def close(self) -> None:
        """Stop listening to the engine (the nodes stay with the server)."""
        if self._attached:
            try:
                self.engine.subscribers.remove(self._on_alarm_events)
            except ValueError:
                pass
            self._attached = False
        for task in list(self._tasks):
            task.cancel()

    # From the engine (synchronous, in the engine's task)

    def _on_alarm_events(self, events: Sequence[AlarmEvent]) -> None:
        if self._resync:
            self.dropped += len(events)
            return
        if len(self._queue) + len(events) > self.queue_size:
            self.dropped += len(self._queue) + len(events)
            self._queue.clear()
            self._resync = True
            self._wake.set()
            return
        eng = self.engine
        status = eng.tagdb.status
        for e in events:
            i = e.instance
            if i < 0:  # a server alarm (AlarmEngine.system_alarm): no instance, no columns
                self._queue.append((e, 0, 0, False))
                continue
            one_shot = e.event == "SHELVE" and bool(eng.one_shot[i])
            self._queue.append((e, int(eng.cond_since[i]), int(status[eng.inst_tag[i]]), one_shot))
        self._wake.set()

    # The sending task

    async def run(self) -> None:
        """Send the queued events to the subscribed clients, until cancelled."""
        sent = 0
        try:
            while True:
                if not self._queue and not self._resync:
                    self._wake.clear()
                    await self._wake.wait()
                if self._resync:
                    await self._resynchronise()
                    continue
                sent += 1
                if sent % YIELD_EVERY == 0:
                    # A storm must not hold the loop (clients' requests, the publisher, the engine).
                    await asyncio.sleep(0)
                    await self._backpressure(list(subscriptions(self.server).values()))
                    if not self._queue:
                        continue
                e, since, quality, one_shot = self._queue.popleft()
                try:
                    if e.instance < 0:
                        await self._emit_system(e)
                    else:
                        await self._emit(e, since, quality, one_shot)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad event must not stop the alarms
                    log.error(
                        "opcua_alarm_event_failed", alarm=e.alarm, device=e.device, alarm_event=e.event, error=repr(exc)
                    )
        finally:
            self.close()

    async def _resynchronise(self) -> None:
        self._resync = False
        self._queue.clear()
        self.resyncs += 1
        self._snapshot_all()
        log.warning(
            "opcua_alarm_events_dropped", dropped=self.dropped, resyncs=self.resyncs, retained=len(self._retained)
        )
        ev = self._system_event(OI.RefreshRequiredEventType, "Alarm events were lost: call ConditionRefresh")
        for sub in list(subscriptions(self.server).values()):
            await self._deliver_bracket(sub, ev, None)

    def _dyn_of(self, i: int) -> _Dyn:
        dyn = self._dyn.get(i)
        if dyn is None:
            dyn = self._dyn[i] = _Dyn()
        return dyn

    async def _emit(self, e: AlarmEvent, since_ns: int, quality: int, one_shot: bool) -> None:
        i = e.instance
        dyn = self._dyn_of(i)
        t = _dt(e.time_ns)
        state = State(e.state)
        keep = retained(state, e.active)
        if keep and i not in self._retained:  # a new occurrence: its comments start afresh
            dyn.comment, dyn.comment_user, dyn.comment_time = "", "", None
        if e.user:  # Part 9 Comment: the last comment an operator gave (not the engine's own texts)
            dyn.comment = f"assigned to {e.comment}" if e.event == "ASSIGN" else e.comment
            dyn.comment_user, dyn.comment_time = e.user, t
        shelving = dyn.shelving
        if state == State.SHELVED:
            if e.event == "SHELVE":
                shelving = "OneShotShelved" if one_shot else "TimedShelved"
            elif shelving == "Unshelved":  # its SHELVE was lost with a dropped queue
                shelving = "OneShotShelved" if self.engine.one_shot[i] else "TimedShelved"
        else:
            shelving = "Unshelved"
        if shelving != dyn.shelving:
            name, nid = _SHELVING_TRANSITION.get((dyn.shelving, shelving), (shelving, 0))
            dyn.shelving_transition = (name, nid, t)
            dyn.shelving = shelving
        ev = self._event(
            i,
            e.message,
            e.severity,
            state,
            e.active,
            t,
            since_ns,
            quality,
            dyn,
            condition_event_id(e.alarm, e.device, e.time_ns, e.seq),
        )
        if keep:
            self._retained[i] = ev
        else:
            self._retained.pop(i, None)
        self.emitted += 1
        await self._deliver(ev, self._notifiers[int(self.engine.inst_dev[i])])

    def _system_condition(self, name: str) -> ua.NodeId:
        """The condition node of a server alarm, made at its first event (Server -HasCondition-> it)."""
        cid = self._system.get(name)
        if cid is None:
            cid = self._system[name] = NodeId(f"Server/Alarms/{name}", self.ns)
            self._system_nodes.add(cid)
            obj = {
                A.NodeClass: self._attr(ua.NodeClass.Object, VT.Int32),
                A.WriteMask: self._attr(0, VT.UInt32),
                A.UserWriteMask: self._attr(0, VT.UInt32),
                A.EventNotifier: self._attr(0, VT.Byte),
            }
            server = self.aspace[_SERVER]
            nd = self._node(
                cid,
                {**obj, **self._names(name, self.ns)},
                [self._typedef_ref(self._system_type()), reference_to(_HAS_CONDITION, server, False)],
            )
            server.references.append(reference_to(_HAS_CONDITION, nd, True, self._system_type()))
        return cid

    def _system_type(self) -> ua.NodeId:
        t = NodeId(getattr(OI, "SystemDiagnosticAlarmType", OI.AlarmConditionType))
        return t if t in self.aspace else NodeId(OI.AlarmConditionType)

    async def _emit_system(self, e: AlarmEvent) -> None:
        """A server alarm (the history spool filling...): its source is the Server object.

        The engine keeps no instance for these, so they cannot be acknowledged or shelved:
        they are shown acknowledged, retained while active, and their methods answer
        BadNotSupported.
        """
        # One condition per alarm and source: each server task has its own server_task_failed.
        key = e.alarm if e.device == "server" else f"{e.alarm}/{e.device}"
        cid = self._system_condition(key)
        etype = self._system_type()
        t = _dt(e.time_ns)
        f = {
            "EventId": _v(self._event_id(), VT.ByteString),
            "EventType": _v(etype, VT.NodeId),
            "NodeId": _v(cid, VT.NodeId),
            "SourceNode": _v(_SERVER, VT.NodeId),
            "SourceName": _v(e.device, VT.String),
            "ConditionName": _v(e.alarm, VT.String),
            "BranchId": _BRANCH_NULL,
            "ConditionClassId": _v(NodeId(OI.SystemConditionClassType), VT.NodeId),
            "ConditionClassName": _text("System"),
            "Time": _v(t, VT.DateTime),
            "ReceiveTime": _v(datetime.now(UTC), VT.DateTime),
            "Message": _text(e.message),
            "Severity": _v(max(1, min(1000, int(e.severity))), VT.UInt16),
            "Retain": _BOOL[e.active],
            "EnabledState": _TEXTS["Enabled"],
            "EnabledState/Id": _TRUE,
            "ActiveState": _TEXTS["Active" if e.active else "Inactive"],
            "ActiveState/Id": _BOOL[e.active],
            "ActiveState/TransitionTime": _v(t, VT.DateTime),
            "AckedState": _TEXTS["Acknowledged"],
            "AckedState/Id": _TRUE,
            "SuppressedOrShelved": _FALSE,
            "ShelvingState/CurrentState": _SHELVING["Unshelved"][0],
            "ShelvingState/CurrentState/Id": _SHELVING["Unshelved"][1],
        }
        ev = ConditionEvent(f, self._type_ancestors(etype))
        if e.active:
            self._system_retained[key] = ev
        else:
            self._system_retained.pop(key, None)
        self.emitted += 1
        await self._deliver(ev, (_SERVER,))

    def _names_of(self, i: int) -> tuple[str, str]:
        eng = self.engine
        return eng.defs[int(eng.inst_def[i])].name, eng.config.devices[int(eng.inst_dev[i])].name

    def _event_id(self) -> bytes:
        return self._prefix + struct.pack(">Q", next(self._seq))

    def _event(
        self,
        i: int,
        message: str,
        severity: int,
        state: State,
        active: bool,
        t: datetime,
        since_ns: int,
        quality: int,
        dyn: _Dyn,
        eid: bytes,
    ) -> ConditionEvent:
        """The condition's event with every Part 9 field this server keeps (see the docstring)."""
        eng = self.engine
        info = self._defs[int(eng.inst_def[i])]
        di = int(eng.inst_dev[i])
        device = eng.config.devices[di]
        acked = bool(is_acked(state))
        if acked != dyn.acked or dyn.acked_time is None:
            dyn.acked, dyn.acked_time = acked, t
        dyn.event_ids.append(eid)
        f = dict(info.static)
        f["EventId"] = _v(eid, VT.ByteString)
        f["NodeId"] = _v(self._cond_ids[i], VT.NodeId)  # ConditionId
        source = self._dev_nodes[di]
        assert source is not None  # a device with an alarm instance has its node (build)
        f["SourceNode"] = _v(source, VT.NodeId)
        f["SourceName"] = _v(device.name, VT.String)
        f["Time"] = _v(t, VT.DateTime)
        f["ReceiveTime"] = _v(datetime.now(UTC), VT.DateTime)
        f["Message"] = _text(message)
        sev = _v(max(1, min(1000, int(severity))), VT.UInt16)
        f["Severity"] = f["LastSeverity"] = sev
        f["Retain"] = _BOOL[retained(state, active)]
        f["Quality"] = _v(StatusCode(quality), VT.StatusCode)
        f["ActiveState"] = _TEXTS["Active" if active else "Inactive"]
        f["ActiveState/Id"] = _BOOL[active]
        f["ActiveState/EffectiveDisplayName"] = f["ActiveState"]
        if since_ns:
            f["ActiveState/TransitionTime"] = _v(_dt(since_ns), VT.DateTime)
        f["AckedState"] = _TEXTS["Acknowledged" if acked else "Unacknowledged"]
        f["AckedState/Id"] = _BOOL[acked]
        f["AckedState/TransitionTime"] = _v(dyn.acked_time, VT.DateTime)
        f["SuppressedState"] = _TEXTS["Suppressed" if state == State.SUPPRESSED else "Unsuppressed"]
        f["SuppressedState/Id"] = _BOOL[state == State.SUPPRESSED]
        f["OutOfServiceState"] = _TEXTS["Out of service" if state == State.OUT_OF_SERVICE else "In service"]
        f["OutOfServiceState/Id"] = _BOOL[state == State.OUT_OF_SERVICE]
        f["SuppressedOrShelved"] = _BOOL[state in _HIDDEN_STATES]
        cur_text, cur_id = _SHELVING[dyn.shelving]
        f["ShelvingState/CurrentState"] = cur_text
        f["ShelvingState/CurrentState/Id"] = cur_id
        if dyn.shelving_transition:
            name, nid, when = dyn.shelving_transition
            f["ShelvingState/LastTransition"] = _text(name)
            if nid:
                f["ShelvingState/LastTransition/Id"] = _v(NodeId(nid), VT.NodeId)
            f["ShelvingState/LastTransition/TransitionTime"] = _v(when, VT.DateTime)
        if state == State.SHELVED:
            until = int(eng.shelved_until[i])
            if until:
                left = max(0.0, (until - eng.clock()) / 1e6)
                f["ShelvingState/UnshelveTime"] = _v(left, VT.Double)
        if info.latching:
            f["LatchedState"] = _TEXTS["Latched" if state == State.LATCHED else "Unlatched"]
            f["LatchedState/Id"] = _BOOL[state == State.LATCHED]
        if info.limit_field:
            f[f"{info.limit_field}State"] = _text(info.limit_field) if active else _NULL
            f[f"{info.limit_field}State/Id"] = _BOOL[active]
        if info.point:
            f["InputNode"] = _v(NodeId(f"{source.Identifier!s}/{info.point}", self.ns), VT.NodeId)
        if dyn.comment_time is not None:
            f["Comment"] = _text(dyn.comment)
            f["Comment/SourceTimestamp"] = _v(dyn.comment_time, VT.DateTime)
            f["ClientUserId"] = _v(dyn.comment_user, VT.String)
        return ConditionEvent(f, info.ancestors)

    def _snapshot_all(self) -> None:
        """Rebuild the retained conditions from the engine's columns (start, after a loss)."""
        eng = self.engine
        self._retained.clear()
        now = eng.clock()
        status = eng.tagdb.status
        for i in range(eng.n):
            state, active = State(int(eng.state[i])), bool(eng.cond[i])
            if not retained(state, active):
                continue
            dyn = self._dyn_of(i)
            if state != State.SHELVED:
                dyn.shelving = "Unshelved"
            else:  # the engine's flag, persisted: a one-shot shelve stays one after a restart
                dyn.shelving = "OneShotShelved" if eng.one_shot[i] else "TimedShelved"
            d = eng.describe(i)
            sev = eng.defs[int(eng.inst_def[i])].severity
            # The instance's last event, as the engine numbered it (and persisted it): its EventId
            # and Time are the ones its clients received, before a restart as well.
            last = int(eng.last_event_ns[i])
            eid = condition_event_id(d["alarm"], d["device"], last, int(eng.event_seq[i]))
            self._retained[i] = self._event(
                i,
                d["message"],
                sev,
                state,
                active,
                _dt(last or now),
                int(eng.cond_since[i]),
                int(status[eng.inst_tag[i]]),
                dyn,
                eid,
            )

    # Delivery to asyncua's subscriptions

    def _system_event(self, etype: int, message: str) -> ConditionEvent:
        now = datetime.now(UTC)
        f = {
            "EventId": _v(self._event_id(), VT.ByteString),
            "EventType": _v(NodeId(etype), VT.NodeId),
            "SourceNode": _v(_SERVER, VT.NodeId),
            "SourceName": _v("Server", VT.String),
            "Time": _v(now, VT.DateTime),
            "ReceiveTime": _v(now, VT.DateTime),
            "Message": _text(message),
            "Severity": _v(1, VT.UInt16),
        }
        return ConditionEvent(f, self._type_ancestors(NodeId(etype)))

    async def _backpressure(self, subs) -> None:
        """Wait while a subscription has MAX_PENDING events waiting for its publish (see above)."""
        waited = 0.0
        while True:
            busy = [s for s in subs if pending_events(s) >= MAX_PENDING and id(s) not in self._slow]
            for s in subs:  # a slow one that caught up is waited for again
                if id(s) in self._slow and pending_events(s) < MAX_PENDING:
                    self._slow.discard(id(s))
            if not busy:
                return
            if waited >= SLOW_AFTER_S:
                for s in busy:
                    self._slow.add(id(s))
                    log.warning(
                        "opcua_alarm_subscription_slow", subscription=s.data.SubscriptionId, pending=pending_events(s)
                    )
                return
            await asyncio.sleep(0.02)
            waited += 0.02

    def _where(self, evaluator) -> SubtypeWhere | None:
        if evaluator is None:
            return None
        w = self._where_cache.get(evaluator)
        if w is None:
            w = SubtypeWhere.of(evaluator, self.aspace)
            self._where_cache[evaluator] = w
        return w

    async def _send(self, sub, mid: int, ev: ConditionEvent, filtered: bool) -> None:
        md = monitored_item(sub, mid)
        if md is None or md.filter is None:
            return
        if filtered:
            where = self._where(md.where_clause_evaluator)
            if where is not None and not where.eval(ev):
                return
        fields = ua.EventFieldList(
            ClientHandle=md.client_handle, EventFields=ev.to_event_fields(md.filter.SelectClauses)
        )
        await sub.enqueue_event(mid, fields, md.queue_size)

    async def _deliver(
        self, ev: ConditionEvent, notifiers: tuple[ua.NodeId, ...], subs=None, only_mid: int | None = None
    ) -> None:
        """To the event monitored items on any of ``notifiers``, where clauses applied."""
        for sub in list(subscriptions(self.server).values()) if subs is None else subs:
            watched = event_items(sub)
            for node in notifiers:
                for mid in list(watched.get(node, ())):
                    if only_mid is None or mid == only_mid:
                        await self._send(sub, mid, ev, True)

    async def _deliver_bracket(self, sub, ev: ConditionEvent, only_mid: int | None) -> None:
        """Refresh start/end/required: to every event item of ``sub``, bypassing filters (Part 9 4.5)."""
        for mids in list(event_items(sub).values()):
            for mid in list(mids):
                if only_mid is None or mid == only_mid:
                    await self._send(sub, mid, ev, False)

    # Method callbacks (asyncua: callback(ObjectId, *input Variants) -> outputs | StatusCode)

    def _user(self) -> str:
        session = _CALLER.get()
        if session is None:
            return "opcua:server"
        name = getattr(getattr(session, "user", None), "name", None)
        if name:
            return str(name)
        peer = session.name
        addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        sname = self._session_names.get(session)
        return f"opcua:{sname}@{addr}" if sname else f"opcua:{addr}"

    @staticmethod
    def _str(arg) -> str:
        value = getattr(arg, "Value", arg)
        if isinstance(value, ua.LocalizedText):
            return value.Text or ""
        return "" if value is None else str(value)

    def _instance(self, parent: ua.NodeId) -> int | None:
        return self._by_node.get(parent)

    def _not_a_condition(self, parent: ua.NodeId) -> ua.StatusCode:
        # The engine's server alarms have no instance: nothing to acknowledge, shelve or reset.
        return StatusCode(SC.BadNotSupported if parent in self._system_nodes else SC.BadNodeIdUnknown)

    def _known_event(self, i: int, event_id) -> bool:
        dyn = self._dyn.get(i)
        return dyn is not None and isinstance(event_id, bytes) and event_id in dyn.event_ids

    def _act(self, name: str, fn, *args):
        """Run an engine action; its errors become status codes (see the callers)."""
        try:
            fn(*args)
        except IllegalTransition:
            raise
        except KeyError as exc:
            log.warning("opcua_alarm_method_refused", method=name, error=str(exc))
            return StatusCode(SC.BadNodeIdUnknown)
        log.info("opcua_alarm_method", method=name, alarm=args[0], device=args[1], user=args[2])
        return []

    async def _guard(self, name: str, fn, parent, args):
        try:
            return fn(parent, args)
        except IllegalTransition:
            return StatusCode(SC.BadInvalidState)
        except Exception as exc:  # noqa: BLE001 - a client must get a status, the session must live
            log.error("opcua_alarm_method_failed", method=name, object=parent.to_string(), error=repr(exc))
            return StatusCode(SC.BadInternalError)

    async def _m_not_supported(self, parent: ua.NodeId, *args):
        return StatusCode(SC.BadNotSupported)

    async def _m_acknowledge(self, parent: ua.NodeId, *args):
        return await self._guard("Acknowledge", self._acknowledge, parent, args)

    def _event_instance(self, parent, args) -> int | ua.StatusCode:
        """The instance a method with (EventId, Comment) arguments is called on, or why it cannot be."""
        i = self._instance(parent)
        if i is None:
            return self._not_a_condition(parent)
        if len(args) < 2:
            return StatusCode(SC.BadArgumentsMissing)
        if not self._known_event(i, args[0].Value):
            return StatusCode(SC.BadEventIdUnknown)
        return i

    def _acknowledge(self, parent, args):
        i = self._event_instance(parent, args)
        if isinstance(i, ua.StatusCode):
            return i
        if int(self.engine.state[i]) not in (State.UNACK_ACTIVE, State.RTN_UNACK):
            return StatusCode(SC.BadConditionBranchAlreadyAcked)
        try:
            return self._act("Acknowledge", self.engine.ack, *self._names_of(i), self._user(), self._str(args[1]))
        except IllegalTransition:
            return StatusCode(SC.BadConditionBranchAlreadyAcked)

    async def _m_add_comment(self, parent: ua.NodeId, *args):
        return await self._guard("AddComment", self._add_comment, parent, args)

    def _add_comment(self, parent, args):
        i = self._event_instance(parent, args)
        if isinstance(i, ua.StatusCode):
            return i
        text = self._str(args[1]).strip()
        if not text:
            return StatusCode(SC.BadInvalidArgument)
        return self._act("AddComment", self.engine.note, *self._names_of(i), self._user(), text)

    async def _m_timed_shelve(self, parent: ua.NodeId, *args):
        return await self._guard("TimedShelve", self._shelve, parent, (False, *args))

    async def _m_one_shot_shelve(self, parent: ua.NodeId, *args):
        return await self._guard("OneShotShelve", self._shelve, parent, (True, *args))

    def _shelve(self, parent, args):
        one_shot, *args = args
        i = self._instance(parent)
        if i is None:
            return self._not_a_condition(parent)
        if one_shot:
            ms, comment = MAX_SHELVE_MS, self._str(args[0]) if args else ""
        else:
            if not args:
                return StatusCode(SC.BadArgumentsMissing)
            try:
                ms = float(args[0].Value)
            except (TypeError, ValueError):
                return StatusCode(SC.BadTypeMismatch)
            comment = self._str(args[1]) if len(args) > 1 else ""
        if self.engine.state[i] == State.SHELVED:
            return StatusCode(SC.BadConditionAlreadyShelved)
        if not 0 < ms <= MAX_SHELVE_MS:
            return StatusCode(SC.BadShelvingTimeOutOfRange)
        # The engine wants a reason; TimedShelve / OneShotShelve (v1) carry none.
        method = "OneShotShelve" if one_shot else "TimedShelve"
        reason = comment.strip() or f"{method} via OPC UA (no reason given)"
        try:
            return self._act(
                method, self.engine.shelve, *self._names_of(i), self._user(), reason, ms / 1000.0, one_shot
            )
        except ValueError:
            return StatusCode(SC.BadShelvingTimeOutOfRange)

    def _operator_method(self, name: str, action, required: State | None = None, refusal: int = 0):
        """An OPC UA method that is one engine action on the condition it is called on.

        ``required``: the state the condition must be in, else ``refusal`` (a Bad status code).
        The method's optional argument is the operator's comment.
        """

        def act(parent, args):
            i = self._instance(parent)
            if i is None:
                return self._not_a_condition(parent)
            if required is not None and self.engine.state[i] != required:
                return StatusCode(refusal)
            return self._act(name, action, *self._names_of(i), self._user(), self._str(args[0]) if args else "")

        async def method(parent: ua.NodeId, *args):
            return await self._guard(name, act, parent, args)

        return method

    async def _m_refresh(self, parent: ua.NodeId, *args):
        try:
            return await self._refresh(args)
        except Exception as exc:  # noqa: BLE001
            log.error("opcua_condition_refresh_failed", error=repr(exc))
            return StatusCode(SC.BadInternalError)

    async def _refresh(self, args):
        """ConditionRefresh(SubscriptionId) / ConditionRefresh2(SubscriptionId, MonitoredItemId)."""
        if not args:
            return StatusCode(SC.BadArgumentsMissing)
        subs = subscriptions(self.server)
        try:
            sub_id = int(args[0].Value)
        except (TypeError, ValueError):
            return StatusCode(SC.BadTypeMismatch)
        sub = subs.get(sub_id)
        session = _CALLER.get()
        if sub is None or (session is not None and sub.session_id != session.session_id):
            return StatusCode(SC.BadSubscriptionIdInvalid)
        only_mid = None
        watched = event_items(sub)
        if len(args) > 1:
            only_mid = int(args[1].Value)
            if not any(only_mid in mids for mids in watched.values()):
                return StatusCode(SC.BadMonitoredItemIdInvalid)
        elif not any(watched.values()):
            return StatusCode(SC.BadNothingToDo)
        if sub_id in self._refreshing:
            return StatusCode(SC.BadRefreshInProgress)
        self._refreshing.add(sub_id)
        # The retained conditions as they are now; each bracket is one event (one EventId)
        # copied to every notifier item of the subscription (Part 9 5.5.7).
        inst_dev = self.engine.inst_dev
        items = [(ev, self._notifiers[int(inst_dev[i])]) for i, ev in self._retained.items()]
        items += [(ev, (_SERVER,)) for ev in self._system_retained.values()]
        try:
            await self._deliver_bracket(
                sub, self._system_event(OI.RefreshStartEventType, "ConditionRefresh start"), only_mid
            )
        except BaseException:
            self._refreshing.discard(sub_id)
            raise
        # The rest is sent after the call returns: the client's next Publish requests queue up
        # behind this Call on its connection, so waiting here for them to drain (backpressure)
        # would wait for nothing.
        task = asyncio.get_running_loop().create_task(
            self._refresh_rest(sub, sub_id, only_mid, items), name=f"opcua-condition-refresh-{sub_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("opcua_condition_refresh", subscription=sub_id, retained=len(items), user=self._user())
        return []

    async def _refresh_rest(self, sub, sub_id: int, only_mid: int | None, items) -> None:
        try:
            for n, (ev, notifiers) in enumerate(items, 1):
                await self._deliver(ev, notifiers, subs=(sub,), only_mid=only_mid)
                if n % YIELD_EVERY == 0:
                    await self._backpressure([sub])
            await self._deliver_bracket(
                sub, self._system_event(OI.RefreshEndEventType, "ConditionRefresh end"), only_mid
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("opcua_condition_refresh_failed", subscription=sub_id, error=repr(exc))
        finally:
            self._refreshing.discard(sub_id)

    # Diagnostics

    def stats(self) -> dict:
        return {
            "conditions": self.engine.n,
            "retained": len(self._retained) + len(self._system_retained),
            "emitted": self.emitted,
            "queued": len(self._queue),
            "dropped": self.dropped,
            "resyncs": self.resyncs,
        }

    def condition_id(self, alarm: str, device: str) -> ua.NodeId:
        """The ConditionId (condition node) of an alarm instance."""
        return self._cond_ids[self.engine.instance(alarm, device)]
