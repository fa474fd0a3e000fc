"""The tag tree in asyncua's address space, built in time and memory linear in the tag count.

Tree: Objects / City / <commune> / <class> / <device> / <point>. NodeIds are strings in the
project's namespace and equal the tag path (``ns=2;s=Dijon/lighting/LC-0001/power``), so an
HMI engineer reads a NodeId and knows the tag.

Why not ``add_folder`` / ``add_variable``: asyncua's AddNodes service scans the parent's
references for every child it adds (quadratic under a large folder), wraps each attribute
in fresh objects, and costs a coroutine round trip per node. This builder writes asyncua's
``NodeData`` directly for the folders, devices and property nodes, and stores no node at all
for the tag variables (one per tag, nearly all the nodes): they are slots of the node table
of :mod:`scada.opcua.virtual_nodes`, made on access from per-(type, point) templates (~0.5 KB
per tag in all, against ~3.2 KB stored). It shares what is identical between nodes:

* the DataValues (and AttributeValues) of static attributes -- DataType, ValueRank,
  AccessLevel, WriteMask... are read-only (WriteMask 0) and never written by the server;
* the HasTypeDefinition reference, identical for every variable of a kind;
* each device's inverse reference, shared by all of its points;
* EngineeringUnits and EURange property nodes, one per (equipment type, point), referenced
  by the variable of that point on every device.

It relies on asyncua's ``NodeData``/``AttributeValue`` internals, through
:mod:`scada.opcua.asyncua_private` (contract-tested, hence the pinned range).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from asyncua import Server, ua

from scada.config import CONTROL_FOLDER, CONTROL_POINTS, DIAG_FOLDER, DIAG_POINTS, Config, EquipmentType, PointDef
from scada.opcua.asyncua_private.nodes import AddressSpace, AttributeValue, NodeData, address_space, node_table
from scada.opcua.publisher import TagValue
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.opcua.virtual_nodes import NodeTable, PointTemplate
from scada.tagdb import ANALOG, TEXT

NAMESPACE_URI = "urn:city-scada:tags"
ROOT_NAME = "City"

A = ua.AttributeIds
_HAS_TYPEDEF = NodeId(ua.ObjectIds.HasTypeDefinition)
_NO_TYPE = NodeId()  # no type definition: one null NodeId for all, shared as the reference types are
_HAS_COMPONENT = NodeId(ua.ObjectIds.HasComponent)
_HAS_PROPERTY = NodeId(ua.ObjectIds.HasProperty)
_ORGANIZES = NodeId(ua.ObjectIds.Organizes)
_FOLDER_TYPE = NodeId(ua.ObjectIds.FolderType)
_OBJECT_TYPE = NodeId(ua.ObjectIds.BaseObjectType)
_DATA_VAR_TYPE = NodeId(ua.ObjectIds.BaseDataVariableType)
_ANALOG_TYPE = NodeId(ua.ObjectIds.BaseAnalogType)
_PROPERTY_TYPE = NodeId(ua.ObjectIds.PropertyType)

# UNECE Recommendation 20 codes for the units technicians write most (OPC UA Part 8).
UNECE = {
    "V": "VLT",
    "A": "AMP",
    "W": "WTT",
    "kW": "KWT",
    "kWh": "KWH",
    "Wh": "WHR",
    "%": "P1",
    "degC": "CEL",
    "°C": "CEL",
    "s": "SEC",
    "min": "MIN",
    "h": "HUR",
    "Hz": "HTZ",
    "km/h": "KMH",
    "m/s": "MTS",
    "lx": "LUX",
    "m": "MTR",
    "km": "KMT",
    "veh/h": "C62",
}
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"


def eu_information(unit: str) -> ua.EUInformation:
    code = UNECE.get(unit)
    unit_id = -1
    if code:
        unit_id = 0
        for ch in code:
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


def _dv(value, vtype: ua.VariantType, is_array: bool = False) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype, is_array=is_array))


def _shared(value, vtype: ua.VariantType) -> AttributeValue:
    return AttributeValue(_dv(value, vtype))


VARIANT_TYPE = {ANALOG: ua.VariantType.Double, TEXT: ua.VariantType.String}


def variant_type(point: PointDef) -> ua.VariantType:
    """Double for analog points, Boolean for two-state, Int32 for enumerations, String for text."""
    if point.kind in VARIANT_TYPE:
        return VARIANT_TYPE[point.kind]
    return ua.VariantType.Int32 if point.enum else ua.VariantType.Boolean


def reference_to(
    reftype: ua.NodeId, nd: NodeData, forward: bool, typedef: ua.NodeId | None = None
) -> ua.ReferenceDescription:
    """A reference to the node ``nd``, with its BrowseName, DisplayName and NodeClass."""
    # Names and NodeClass are static attributes (ours or the nodeset's): always a DataValue of a Variant.
    at: Mapping[ua.AttributeIds, Any] = nd.attributes
    return ua.ReferenceDescription(
        ReferenceTypeId=reftype,
        IsForward=forward,
        NodeId=nd.nodeid,
        BrowseName=at[A.BrowseName].value.Value.Value,
        DisplayName=at[A.DisplayName].value.Value.Value,
        NodeClass=at[A.NodeClass].value.Value.Value,
        TypeDefinition=typedef or _NO_TYPE,
    )


@dataclass
class _Kind:
    """Shared pieces of every variable of one variant type and type definition."""

    static: dict
    typedef_ref: ua.ReferenceDescription
    typedef: ua.NodeId


class AddressSpaceBuilder:
    """Builds the tag tree into a (not yet started or running) asyncua Server."""

    def __init__(self, server: Server, ns: int, writable: bool = False) -> None:
        self.server = server
        # Whether ``writable: true`` points accept Writes (CurrentWrite): only when a command
        # pipeline answers them (scada/opcua/writes.py); else every variable is read-only.
        self.writable = writable
        self.aspace = address_space(server)
        self.ns = ns
        self._kinds: dict[tuple[ua.VariantType, bool], _Kind] = {}
        self._object_static = {
            A.NodeClass: _shared(ua.NodeClass.Object, ua.VariantType.Int32),
            A.WriteMask: _shared(0, ua.VariantType.UInt32),
            A.UserWriteMask: _shared(0, ua.VariantType.UInt32),
            A.EventNotifier: _shared(0, ua.VariantType.Byte),
        }
        self.node_count = 0
        # Tag variables are slots of the node table, not stored nodes (scada.opcua.virtual_nodes).
        self.table = node_table(self.aspace, NodeTable, lambda stored: NodeTable(stored, ns))
        self._diag: tuple[PointTemplate, ...] | None = None
        self._control: tuple[PointTemplate, ...] | None = None
        # A writable point (``writable: true``): its Writes go through the command pipeline.
        rw = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask
        self._read_write = _shared(rw, ua.VariantType.Byte)
        # Shared while this builder works: names' AttributeValues, objects' type references.
        self._names: dict[tuple[str, int], tuple[AttributeValue, AttributeValue]] = {}
        self._typedef_refs: dict[ua.NodeId, ua.ReferenceDescription] = {}
        # Per point-template tuple (a type's points, the diagnostics): template ids, name -> position.
        self._shared: dict[tuple[PointTemplate, ...], tuple[np.ndarray, dict[str, int]]] = {}

    def _kind(self, vtype: ua.VariantType, analog: bool) -> _Kind:
        key = (vtype, analog)
        if key not in self._kinds:
            typedef = _ANALOG_TYPE if analog else _DATA_VAR_TYPE
            datatype = NodeId(getattr(ua.ObjectIds, vtype.name))
            static = {
                A.NodeClass: _shared(ua.NodeClass.Variable, ua.VariantType.Int32),
                A.DataType: _shared(datatype, ua.VariantType.NodeId),
                A.ValueRank: _shared(ua.ValueRank.Scalar, ua.VariantType.Int32),
                A.ArrayDimensions: AttributeValue(_dv([], ua.VariantType.UInt32, is_array=True)),
                # Read-only for now: commands reach devices through the command pipeline.
                A.AccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
                A.UserAccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
                A.WriteMask: _shared(0, ua.VariantType.UInt32),
                A.UserWriteMask: _shared(0, ua.VariantType.UInt32),
                A.MinimumSamplingInterval: _shared(0.0, ua.VariantType.Double),
                A.Historizing: _shared(False, ua.VariantType.Boolean),
            }
            ref = ua.ReferenceDescription(
                ReferenceTypeId=_HAS_TYPEDEF, IsForward=True, NodeId=typedef, NodeClass=ua.NodeClass.VariableType
            )
            self._kinds[key] = _Kind(static, ref, typedef)
        return self._kinds[key]

    def _insert(self, nodeid: ua.NodeId, name: str, attrs: dict, refs: list, name_ns: int | None = None) -> NodeData:
        nd = NodeData(nodeid)
        nd.attributes = attrs
        attrs[A.NodeId] = AttributeValue(_dv(nodeid, ua.VariantType.NodeId))
        key = (name, self.ns if name_ns is None else name_ns)
        names = self._names.get(key)
        if names is None:  # shared by the nodes of one name: every device's "Diagnostics"...
            qname = ua.QualifiedName(*key)
            names = self._names[key] = (
                AttributeValue(_dv(qname, ua.VariantType.QualifiedName)),
                AttributeValue(_dv(ua.LocalizedText(name), ua.VariantType.LocalizedText)),
            )
        attrs[A.BrowseName], attrs[A.DisplayName] = names
        nd.references = refs
        self.aspace[nodeid] = nd
        self.node_count += 1
        return nd

    def add_object(self, parent: NodeData, path: str, name: str, folder: bool, reftype=None) -> NodeData:
        """A folder (commune, class) or a device object under ``parent``."""
        reftype = reftype or (_ORGANIZES if folder else _HAS_COMPONENT)
        typedef = _FOLDER_TYPE if folder else _OBJECT_TYPE
        nodeid = NodeId(path, self.ns)
        attrs = dict(self._object_static)
        typedef_ref = self._typedef_refs.get(typedef)
        if typedef_ref is None:
            typedef_ref = self._typedef_refs[typedef] = ua.ReferenceDescription(
                ReferenceTypeId=_HAS_TYPEDEF, IsForward=True, NodeId=typedef, NodeClass=ua.NodeClass.ObjectType
            )
        nd = self._insert(nodeid, name, attrs, [typedef_ref, reference_to(reftype, parent, False)])
        parent.references.append(reference_to(reftype, nd, True, typedef))
        return nd

    def add_property(
        self, parent: NodeData, path: str, name: str, value, vtype: ua.VariantType, datatype: int
    ) -> NodeData:
        nodeid = NodeId(path, self.ns)
        attrs = {
            A.NodeClass: _shared(ua.NodeClass.Variable, ua.VariantType.Int32),
            A.Value: AttributeValue(_dv(value, vtype)),
            A.DataType: _shared(NodeId(datatype), ua.VariantType.NodeId),
            A.ValueRank: _shared(ua.ValueRank.Scalar, ua.VariantType.Int32),
            A.AccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
            A.UserAccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
            A.WriteMask: _shared(0, ua.VariantType.UInt32),
            A.UserWriteMask: _shared(0, ua.VariantType.UInt32),
        }
        refs = [
            ua.ReferenceDescription(
                ReferenceTypeId=_HAS_TYPEDEF, IsForward=True, NodeId=_PROPERTY_TYPE, NodeClass=ua.NodeClass.VariableType
            ),
            reference_to(_HAS_PROPERTY, parent, False),
        ]
        # Standard properties (EngineeringUnits, EURange) have browse names in namespace 0.
        nd = self._insert(nodeid, name, attrs, refs, name_ns=0)
        parent.references.append(reference_to(_HAS_PROPERTY, nd, True, _PROPERTY_TYPE))
        return nd

    def add_method(
        self,
        parent: NodeData,
        path: str,
        name: str,
        description: str,
        inputs: list[ua.Argument],
        outputs: list[ua.Argument],
    ) -> NodeData:
        """A method node under ``parent`` (HasComponent), with its InputArguments and
        OutputArguments properties: what a client reads to know how to call it."""
        nodeid = NodeId(path, self.ns)
        attrs = {
            A.NodeClass: _shared(ua.NodeClass.Method, ua.VariantType.Int32),
            A.Description: AttributeValue(_dv(ua.LocalizedText(description), ua.VariantType.LocalizedText)),
            A.Executable: _shared(True, ua.VariantType.Boolean),
            A.UserExecutable: _shared(True, ua.VariantType.Boolean),
            A.WriteMask: _shared(0, ua.VariantType.UInt32),
            A.UserWriteMask: _shared(0, ua.VariantType.UInt32),
        }
        nd = self._insert(nodeid, name, attrs, [reference_to(_HAS_COMPONENT, parent, False)])
        parent.references.append(reference_to(_HAS_COMPONENT, nd, True))
        for prop, args in (("InputArguments", inputs), ("OutputArguments", outputs)):
            if args:
                self._argument_property(nd, f"{path}/{prop}", prop, args)
        return nd

    def _argument_property(self, method: NodeData, path: str, name: str, args: list[ua.Argument]) -> None:
        nodeid = NodeId(path, self.ns)
        attrs = {
            A.NodeClass: _shared(ua.NodeClass.Variable, ua.VariantType.Int32),
            A.Value: AttributeValue(_dv(args, ua.VariantType.ExtensionObject, is_array=True)),
            A.DataType: _shared(NodeId(ua.ObjectIds.Argument), ua.VariantType.NodeId),
            A.ValueRank: _shared(ua.ValueRank.OneDimension, ua.VariantType.Int32),
            A.ArrayDimensions: AttributeValue(_dv([len(args)], ua.VariantType.UInt32, is_array=True)),
            A.AccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
            A.UserAccessLevel: _shared(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte),
            A.WriteMask: _shared(0, ua.VariantType.UInt32),
            A.UserWriteMask: _shared(0, ua.VariantType.UInt32),
        }
        refs = [
            ua.ReferenceDescription(
                ReferenceTypeId=_HAS_TYPEDEF, IsForward=True, NodeId=_PROPERTY_TYPE, NodeClass=ua.NodeClass.VariableType
            ),
            reference_to(_HAS_PROPERTY, method, False),
        ]
        nd = self._insert(nodeid, name, attrs, refs, name_ns=0)
        method.references.append(reference_to(_HAS_PROPERTY, nd, True, _PROPERTY_TYPE))

    def add_variable(
        self, parent: NodeData, path: str, name: str, value: Any, vtype: ua.VariantType, description: str = ""
    ) -> NodeData:
        """A stored variable the server updates itself (a group's progress): a few per group."""
        nodeid = NodeId(path, self.ns)
        kind = self._kind(vtype, False)
        attrs = dict(kind.static)
        attrs[A.Value] = AttributeValue(_dv(value, vtype))
        if description:
            attrs[A.Description] = AttributeValue(_dv(ua.LocalizedText(description), ua.VariantType.LocalizedText))
        nd = self._insert(nodeid, name, attrs, [kind.typedef_ref, reference_to(_HAS_COMPONENT, parent, False)])
        parent.references.append(reference_to(_HAS_COMPONENT, nd, True, kind.typedef))
        return nd

    def build(self, config: Config) -> list[TagValue]:
        """Create the whole tree; return the Value attribute of every tag, indexed by tag id.

        The tree is millions of long-lived objects: collections during the build are wasted
        work (half of it, measured), and a full collection over them later would stall the
        event loop for seconds at city scale. So the build runs without the cyclic
        collector, and everything built is then frozen out of its sight (``gc.freeze``):
        it lives as long as the server.
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._build(config)
        finally:
            gc.freeze()
            if enabled:
                gc.enable()

    def _build(self, config: Config) -> list[TagValue]:
        objects = self.aspace[NodeId(ua.ObjectIds.ObjectsFolder)]
        root = self.add_object(objects, ROOT_NAME, ROOT_NAME, folder=True)
        types_folder = self.add_object(root, "_types", "_types", folder=True)
        templates = {name: self._type_templates(types_folder, t) for name, t in config.types.items()}
        folders: dict[str, NodeData] = {}
        # Slots are tag ids: every device's points first, then DIAG_COUNT diagnostics per device,
        # then CONTROL_COUNT control tags per controlled device (Config.total_tag_count).
        first = len(self.table.value_attrs)
        diag_first = first + config.tag_count
        control_first = diag_first + len(DIAG_POINTS) * len(config.devices)
        for d in config.devices:
            t = config.types[d.type]
            commune = folders.get(d.commune)
            if commune is None:
                commune = folders[d.commune] = self.add_object(root, d.commune, d.commune, folder=True)
            cls_path = f"{d.commune}/{t.cls}"
            cls_folder = folders.get(cls_path)
            if cls_folder is None:
                cls_folder = folders[cls_path] = self.add_object(commune, cls_path, t.cls, folder=True)
            dev_path = f"{cls_path}/{d.name}"
            dev = self.add_object(cls_folder, dev_path, d.name, folder=False)
            first = self._add_points(dev, dev_path, templates[d.type], first)
            # Diagnostic tags: their ids follow all the process tags' (Config.diag_ids).
            diag_path = f"{dev_path}/{DIAG_FOLDER}"
            diag = self.add_object(dev, diag_path, DIAG_FOLDER, folder=False)
            diag_first = self._add_points(diag, diag_path, self._diag_templates(), diag_first)
            if config.control.commands.get(d.type):
                # Control tags: their ids follow all the diagnostic tags' (Config.control_ids).
                control_first = self._add_control(dev, dev_path, control_first)
        values = [TagValue() for _ in range(control_first - len(self.table.value_attrs))]
        self.table.commit(values)
        return values

    def _add_control(self, dev: NodeData, dev_path: str, first: int) -> int:
        """The device's Control object (last command, its user, result, state): slots ``first``..."""
        path = f"{dev_path}/{CONTROL_FOLDER}"
        control = self.add_object(dev, path, CONTROL_FOLDER, folder=False)
        return self._add_points(control, path, self._control_templates(), first)

    def _template(self, p: PointDef, props: list[ua.ReferenceDescription]) -> PointTemplate:
        kind = self._kind(variant_type(p), p.kind == ANALOG)
        static = dict(kind.static)
        if p.description or p.enum:
            text = p.description
            if p.enum:
                text = (text + " " if text else "") + "; ".join(f"{k}={v}" for k, v in p.enum)
            static[A.Description] = AttributeValue(_dv(ua.LocalizedText(text), ua.VariantType.LocalizedText))
        if p.writable and self.writable:  # the Write's status is the command pipeline's (scada/opcua/writes.py)
            static[A.AccessLevel] = static[A.UserAccessLevel] = self._read_write
        return PointTemplate(p.name, self.ns, static, kind.typedef_ref, props)

    def _type_templates(self, folder: NodeData, t: EquipmentType) -> tuple[PointTemplate, ...]:
        """The point templates of a type, with its shared EngineeringUnits / EURange nodes."""
        props = self._type_properties(folder, t)
        return tuple(self._template(p, props[p.name]) for p in t.points)

    def _diag_templates(self) -> tuple[PointTemplate, ...]:
        if self._diag is None:
            self._diag = tuple(self._template(p, []) for p in DIAG_POINTS)
        return self._diag

    def _control_templates(self) -> tuple[PointTemplate, ...]:
        if self._control is None:
            self._control = tuple(self._template(p, []) for p in CONTROL_POINTS)
        return self._control

    def _add_points(self, owner: NodeData, path: str, templates: tuple[PointTemplate, ...], first: int) -> int:
        """The point variables of ``owner`` in slots ``first``...; returns the next free slot."""
        shared = self._shared.get(templates)
        if shared is None:
            ids = np.array([self.table.template_id(t) for t in templates], np.int32)
            shared = self._shared[templates] = (ids, {t.name: k for k, t in enumerate(templates)})
        back = reference_to(_HAS_COMPONENT, owner, False)
        self.table.add_owner(owner, path + "/", first, templates, shared[0], shared[1], back)
        self.node_count += len(templates)
        return first + len(templates)

    def _type_properties(self, folder: NodeData, t: EquipmentType) -> dict[str, list[ua.ReferenceDescription]]:
        """EngineeringUnits / EURange property nodes of a type's analog points, built once."""
        out: dict[str, list[ua.ReferenceDescription]] = {}
        tnode = self.add_object(folder, f"_types/{t.name}", t.name, folder=True)
        for p in t.points:
            refs: list[ua.ReferenceDescription] = []
            if p.kind == ANALOG and (p.unit or p.range):
                pnode = self.add_object(tnode, f"_types/{t.name}/{p.name}", p.name, folder=True)
                if p.unit:
                    self.add_property(
                        pnode,
                        f"_types/{t.name}/{p.name}/EngineeringUnits",
                        "EngineeringUnits",
                        eu_information(p.unit),
                        ua.VariantType.ExtensionObject,
                        ua.ObjectIds.EUInformation,
                    )
                if p.range:
                    self.add_property(
                        pnode,
                        f"_types/{t.name}/{p.name}/EURange",
                        "EURange",
                        ua.Range(Low=p.range[0], High=p.range[1]),
                        ua.VariantType.ExtensionObject,
                        ua.ObjectIds.Range,
                    )
                # The same property node is referenced from this point on every device.
                refs = [r for r in pnode.references if r.IsForward and r.ReferenceTypeId == _HAS_PROPERTY]
            out[p.name] = refs
        return out


# -- Changes while the server runs (scada/reload.py) ----------------------------------------

_HIERARCHICAL_DOWN = (_HAS_COMPONENT, _ORGANIZES)


def unlink_nodes(aspace: AddressSpace, gone: set[ua.NodeId]) -> None:
    """Delete the nodes ``gone`` and every reference their neighbours hold to them, telling no
    monitored item (:func:`delete_nodes` tells them first)."""
    parents: set[ua.NodeId] = set()
    for nid in gone:
        nd = aspace.get(nid)
        if nd is not None:
            parents.update(r.NodeId for r in nd.references if r.NodeId not in gone)
            del aspace[nid]
    for pid in parents:
        nd = aspace.get(pid)
        if nd is not None:
            nd.references[:] = [r for r in nd.references if r.NodeId not in gone]


def subtree(aspace: AddressSpace, nodeid: ua.NodeId, ns: int) -> list[ua.NodeId]:
    """``nodeid`` and the nodes below it by HasComponent/Organizes, in our namespace only.

    HasProperty is not followed: a point's EngineeringUnits/EURange nodes are shared by every
    device of its type (``_types``) and outlive any one device; nor are method nodes (the type's
    commands, the group actions: shared by every device or folder that references them).
    """
    out, todo = [], [nodeid]
    while todo:
        nid = todo.pop()
        nd = aspace.get(nid)
        if nd is None:
            continue
        out.append(nid)
        todo.extend(
            r.NodeId
            for r in nd.references
            if r.IsForward
            and r.ReferenceTypeId in _HIERARCHICAL_DOWN
            and r.NodeId.NamespaceIndex == ns
            and r.NodeClass != ua.NodeClass.Method  # a type's or a group's command: shared, never the device's own
        )
    return out


def tag_values(aspace: AddressSpace, names: Iterable[str], ns: int) -> list[TagValue]:
    """The Value attributes of the tag variables ``names``, as :class:`AddressSpaceBuilder` built them."""
    table = node_table(aspace, NodeTable, lambda stored: NodeTable(stored, ns))
    out = []
    for name in names:
        # The table's own list first: building each variable's NodeData would cost ~10x.
        value = table.value(name) or aspace[NodeId(name, ns)].attributes[A.Value]
        if not isinstance(value, TagValue):
            raise TypeError(f"{name}: not a tag variable of this tree")
        out.append(value)
    return out


def set_variable_attributes(
    aspace: AddressSpace, names: Iterable[str], ns: int, attrs: Mapping[ua.AttributeIds, AttributeValue]
) -> int:
    """Set ``attrs`` (shared AttributeValues) on the tag variables ``names``; returns how many.

    The same as ``aspace[NodeId(name, ns)].attributes[attr] = value`` per variable, without
    building each variable's node: the history marks (Historizing, AccessLevel) of a city's
    variables in about a second instead of tens. Names of no tag variable are skipped.
    """
    table = node_table(aspace, NodeTable, lambda stored: NodeTable(stored, ns))
    slots = [slot for slot in map(table.slot, names) if slot is not None]
    table.set_attributes(np.array(slots, np.int64), attrs)
    return len(slots)


async def delete_nodes(aspace: AddressSpace, nodeids: list[ua.NodeId]) -> None:
    """Remove nodes and every reference to them held by the nodes that remain.

    A tag variable's monitored items first get one value with status BadNodeIdUnknown (the
    code Part 4 gives an item whose node is gone), so an HMI shows the point gone, not
    frozen; their callbacks are then unregistered as asyncua's own delete does. (asyncua's
    ``_delete_node_callbacks`` calls the async callback without awaiting it: not used.)
    """
    gone_dv = ua.DataValue(StatusCode=StatusCode(ua.StatusCodes.BadNodeIdUnknown))
    for nid in nodeids:
        nd = aspace.get(nid)
        value = None if nd is None else nd.attributes.get(A.Value)
        if isinstance(value, TagValue):
            for handle, callback in list(value.datachange_callbacks.items()):
                try:
                    await callback(handle, gone_dv)
                except Exception:  # noqa: BLE001 - one client's callback must not stop the change
                    pass
                aspace.delete_datachange_callback(handle)
    unlink_nodes(aspace, set(nodeids))  # only the nodes that pointed at the deleted ones are scanned


class TreeEditor(AddressSpaceBuilder):
    """Adds devices to, and removes them from, a tree that :meth:`build` made (the server runs).

    Returns what changed as (NodeId, type definition, verb) for a GeneralModelChangeEvent.
    """

    def device_path(self, config: Config, d) -> str:
        return f"{d.commune}/{config.types[d.type].cls}/{d.name}"

    async def remove_device(self, config: Config, d) -> list[tuple[ua.NodeId, ua.NodeId, int]]:
        dev = NodeId(self.device_path(config, d), self.ns)
        nd = self.aspace.get(dev)
        if nd is None:
            return []
        parent = next(
            (r.NodeId for r in nd.references if not r.IsForward and r.ReferenceTypeId == _HAS_COMPONENT), None
        )
        await delete_nodes(self.aspace, subtree(self.aspace, dev, self.ns))
        changes: list[tuple[ua.NodeId, ua.NodeId, int]] = [
            (dev, _OBJECT_TYPE, ua.ModelChangeStructureVerbMask.NodeDeleted)
        ]
        # The class and commune folders go with their last device.
        while parent is not None and parent.Identifier != ROOT_NAME:
            pnd = self.aspace.get(parent)
            if pnd is None or any(r.IsForward and r.ReferenceTypeId in _HIERARCHICAL_DOWN for r in pnd.references):
                if pnd is not None:
                    changes.append((parent, _FOLDER_TYPE, ua.ModelChangeStructureVerbMask.ReferenceDeleted))
                break
            up = next((r.NodeId for r in pnd.references if not r.IsForward and r.ReferenceTypeId == _ORGANIZES), None)
            await delete_nodes(self.aspace, [parent])
            changes.append((parent, _FOLDER_TYPE, ua.ModelChangeStructureVerbMask.NodeDeleted))
            parent = up
        return changes

    async def remove_type(self, name: str) -> None:
        """The shared EngineeringUnits/EURange nodes of an equipment type (rebuilt when it changed)."""
        await delete_nodes(self.aspace, subtree(self.aspace, NodeId(f"_types/{name}", self.ns), self.ns))

    def add_devices(self, config: Config, devices) -> list[tuple[ua.NodeId, ua.NodeId, int]]:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._add_devices(config, devices)
        finally:
            gc.freeze()
            if enabled:
                gc.enable()

    def _folder(self, parent: NodeData, path: str, name: str, changes: list) -> NodeData:
        nd = self.aspace.get(NodeId(path, self.ns))
        if nd is None:
            nd = self.add_object(parent, path, name, folder=True)
            changes.append((nd.nodeid, _FOLDER_TYPE, ua.ModelChangeStructureVerbMask.NodeAdded))
        return nd

    def _add_devices(self, config: Config, devices) -> list[tuple[ua.NodeId, ua.NodeId, int]]:
        changes: list = []
        root = self.aspace[NodeId(ROOT_NAME, self.ns)]
        types_folder = self.aspace[NodeId("_types", self.ns)]
        shared: dict[str, tuple[PointTemplate, ...]] = {}
        slot = first = len(self.table.value_attrs)
        for d in devices:
            t = config.types[d.type]
            if d.type not in shared:
                tnode = self.aspace.get(NodeId(f"_types/{t.name}", self.ns))
                if tnode is None:
                    shared[d.type] = self._type_templates(types_folder, t)
                else:  # the type is unchanged: its devices' shared property nodes are there
                    shared[d.type] = tuple(self._template(p, self._existing_props(t, p)) for p in t.points)
            commune = self._folder(root, d.commune, d.commune, changes)
            cls_path = f"{d.commune}/{t.cls}"
            cls_folder = self._folder(commune, cls_path, t.cls, changes)
            dev_path = f"{cls_path}/{d.name}"
            dev = self.add_object(cls_folder, dev_path, d.name, folder=False)
            changes.append((dev.nodeid, _OBJECT_TYPE, ua.ModelChangeStructureVerbMask.NodeAdded))
            changes.append((cls_folder.nodeid, _FOLDER_TYPE, ua.ModelChangeStructureVerbMask.ReferenceAdded))
            slot = self._add_points(dev, dev_path, shared[d.type], slot)
            diag_path = f"{dev_path}/{DIAG_FOLDER}"
            diag = self.add_object(dev, diag_path, DIAG_FOLDER, folder=False)
            slot = self._add_points(diag, diag_path, self._diag_templates(), slot)
            if config.control.commands.get(d.type):
                slot = self._add_control(dev, dev_path, slot)
        # Added slots go after every existing one (a device's points, diagnostics, control).
        self.table.commit([TagValue() for _ in range(slot - first)])
        return changes

    def _existing_props(self, t: EquipmentType, p: PointDef) -> list[ua.ReferenceDescription]:
        pnode = self.aspace.get(NodeId(f"_types/{t.name}/{p.name}", self.ns))
        if pnode is None:
            return []
        return [r for r in pnode.references if r.IsForward and r.ReferenceTypeId == _HAS_PROPERTY]
