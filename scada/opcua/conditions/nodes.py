"""The condition nodes: the engine's alarm instances in the address space, and their types.

Under each device object: an ``Alarms`` object holding one condition object per alarm of the
device (NodeId ``<commune>/<class>/<device>/Alarms/<alarm>``), typed with the fitting subtype of
AlarmConditionType (table :data:`EVENT_TYPES`), with its ``ShelvingState`` object, and a
``HasCondition`` reference from the device (the event source) to it. Measured with asyncua 2.1
(bench/bench_opcua_alarms.py): instantiating an OffNormalAlarmType the stock way
(``add_object(objecttype=...)``) creates 99 nodes and costs 590 KiB and 0.12 s (50 conditions)
to 0.42 s (200: it grows with the count); 5,000 conditions would take more than 10 minutes and
2.8 GiB. Written directly as asyncua ``NodeData`` (two per condition, sharing every identical
attribute and reference) they still cost 3.3 KiB a condition, 1.1 KB per tag of a city of lighting
cabinets. So they are not stored at all: :class:`scada.opcua.conditions.space.ConditionSpace`
makes them on access from the engine's instance table and a few objects per alarm definition
(~0 bytes and ~20 us a condition at build). The condition's state is not a set of variables
under it: it is carried by its events and returned by ConditionRefresh, which Part 9 allows
("it is up to the Server whether condition instances are also exposed in the AddressSpace");
the node gives the condition its identity (ConditionId), a place to browse, and the ObjectId of
its methods. The engine's server alarms (``AlarmEngine.system_alarm``: no instance) are
conditions of the Server object, stored nodes made at their first event.

The Server object, the City folder, the device's commune and class folders and the device
object are event notifiers, linked by ``HasNotifier`` from the Server down to the devices
(delivery: :mod:`scada.opcua.conditions.delivery`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from asyncua import ua

from scada.alarms.config import LIMIT_CONDITIONS, AlarmDef
from scada.opcua.address_space import reference_to
from scada.opcua.asyncua_private.nodes import AttributeValue, NodeData, node_table
from scada.opcua.conditions.base import ConditionsBase
from scada.opcua.conditions.space import ALARMS_FOLDER, ConditionIds, ConditionSpace, DefinitionNodes
from scada.opcua.conditions.variants import _BRANCH_NULL, _FALSE, _TEXTS, _TRUE, VT, _text, _v
from scada.opcua.typed_ua import NodeId
from scada.opcua.virtual_nodes import NodeTable

OI = ua.ObjectIds
A = ua.AttributeIds
MAX_SHELVE_MS = 86_400_000.0  # the engine's limit: a shelve lasts at most 24 h

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


@dataclass(frozen=True, slots=True)
class _DefInfo:
    """Per alarm definition: its event type and the fields common to all its instances."""

    etype: ua.NodeId
    ancestors: frozenset
    static: dict[str, Any]
    point: str | None
    latching: bool
    limit_field: str | None


class ConditionNodes(ConditionsBase):
    """Builds the condition and notifier nodes, and knows the event types' ancestry."""

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

    def _def_info(self, a: AlarmDef) -> _DefInfo:
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

    def _object_attrs(self) -> dict:
        """The attributes every object node of the conditions has (shared by them, never written)."""
        return {
            A.NodeClass: self._attr(ua.NodeClass.Object, VT.Int32),
            A.WriteMask: self._attr(0, VT.UInt32),
            A.UserWriteMask: self._attr(0, VT.UInt32),
            A.EventNotifier: self._attr(0, VT.Byte),
        }

    def _set_notifier(self, nd: NodeData, on: AttributeValue) -> None:
        nd.attributes[A.EventNotifier] = on

    def _build_nodes(self) -> None:
        eng, cfg = self.engine, self.engine.config
        self._defs = [self._def_info(a) for a in eng.defs]
        obj = self._object_attrs()
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
        dev_nds: list[NodeData | None] = [None] * len(devices)
        # Devices in the order of their first instance: the notifier references' order.
        devs, first = np.unique(np.asarray(eng.inst_dev), return_index=True)
        for di in devs[np.argsort(first, kind="stable")].tolist():
            d = devices[di]
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
            dev_nds[di] = nds[-1]
            self._dev_nodes[di] = nds[-1].nodeid
            # The folders' own NodeIds: one object per commune and class, not per device.
            self._notifiers[di] = (_SERVER, *(nd.nodeid for nd in nds))
        defs = [
            DefinitionNodes(
                a.name,
                self.ns,
                info.etype,
                {**obj, **def_names[k]},
                [def_typedef[k], *cond_methods, *(latch_methods if info.latching else ())],
            )
            for k, (a, info) in enumerate(zip(eng.defs, self._defs, strict=True))
        ]
        self.space = ConditionSpace(
            node_table(self.aspace, NodeTable, lambda stored: NodeTable(stored, self.ns)),
            self.ns,
            eng,
            dev_nds,
            defs,
            {**obj, **folder_names},
            object_typedef,
            {**obj, **shelving_names},
            [shelving_typedef, *shelve_methods],
        )
        self.space.attach()
        self.node_count += self.space.count()
        self._cond_ids = ConditionIds(self.space)

    def _system_condition(self, name: str) -> ua.NodeId:
        """The condition node of a server alarm, made at its first event (Server -HasCondition-> it)."""
        cid = self._system.get(name)
        if cid is None:
            cid = self._system[name] = NodeId(f"Server/Alarms/{name}", self.ns)
            self._system_nodes.add(cid)
            server = self.aspace[_SERVER]
            nd = self._node(
                cid,
                {**self._object_attrs(), **self._names(name, self.ns)},
                [self._typedef_ref(self._system_type()), reference_to(_HAS_CONDITION, server, False)],
            )
            server.references.append(reference_to(_HAS_CONDITION, nd, True, self._system_type()))
        return cid

    def _system_type(self) -> ua.NodeId:
        t = NodeId(getattr(OI, "SystemDiagnosticAlarmType", OI.AlarmConditionType))
        return t if t in self.aspace else NodeId(OI.AlarmConditionType)
