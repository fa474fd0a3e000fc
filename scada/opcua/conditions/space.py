"""The condition nodes, made on access: nothing is stored per condition.

A condition node is the same for every instance of its alarm definition but for its NodeId and
its device, and its ``ShelvingState`` and its device's ``Alarms`` folder are the same for every
condition but for those: all of it follows from the engine's instance table (definition and
device of each instance) and a few objects per definition. Stored, each condition cost ~3.3 KB
(two NodeData, their NodeId attributes, six ReferenceDescriptions, two table entries); here the
node table (:class:`scada.opcua.virtual_nodes.NodeTable`) asks :class:`ConditionSpace` for the
nodes it does not hold, and a device's references to its folder and conditions are the tail of
its reference list (:attr:`scada.opcua.virtual_nodes.ChildRefs.tail`), made when iterated.

What clients see is the stored nodes' tree, reference for reference and attribute for attribute
(tests/unit/test_opcua_lean_tree.py). The nodes hold no state: a condition's state travels in its
events (scada.opcua.conditions.events). A node edited on the server side (an attribute set, a
reference added) is pinned: stored as it is from then on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from asyncua import ua

from scada.opcua.address_space import reference_to
from scada.opcua.asyncua_private.nodes import AttributeValue, NodeData
from scada.opcua.typed_ua import NodeId
from scada.opcua.virtual_nodes import ChildRefs, NodeTable, adopt, made_node

if TYPE_CHECKING:
    from scada.alarms.remote import AlarmSource

OI = ua.ObjectIds
A = ua.AttributeIds
ALARMS_FOLDER = "Alarms"
SHELVING = "ShelvingState"
_FOLDER_SUFFIX = "/" + ALARMS_FOLDER
_COND_INFIX = _FOLDER_SUFFIX + "/"
_SHELVING_SUFFIX = "/" + SHELVING
_HAS_COMPONENT = NodeId(OI.HasComponent)
_HAS_CONDITION = NodeId(OI.HasCondition)
_OBJECT = ua.NodeClass.Object
_NULL_ID = NodeId()  # no type definition: shared as the reference types are (never mutated)
_TAIL_CACHE = 2_048  # devices whose condition references are kept made (a few HMI screens)
_REF = ua.ReferenceDescription
_new = object.__new__


def _ref(reftype: ua.NodeId, forward: bool, target: ua.NodeId, qname: Any, ltext: Any, typedef: ua.NodeId) -> _REF:
    """A ReferenceDescription to an Object, every field set on a bare instance (the dataclass
    ``__init__`` costs several times as much, and a Browse of a device makes one per condition)."""
    r = _new(_REF)
    r.ReferenceTypeId = reftype
    r.IsForward = forward
    r.NodeId = target
    r.BrowseName = qname
    r.DisplayName = ltext
    r.NodeClass = _OBJECT
    r.TypeDefinition = typedef
    return r


class DefinitionNodes:
    """What the condition nodes of one alarm definition share."""

    __slots__ = ("name", "qname", "ltext", "etype", "attrs", "refs")

    def __init__(
        self,
        name: str,
        ns: int,
        etype: ua.NodeId,
        attrs: Mapping[ua.AttributeIds, AttributeValue],
        refs: Sequence[_REF],
    ) -> None:
        self.name = name
        self.qname = ua.QualifiedName(name, ns)
        self.ltext = ua.LocalizedText(name)
        self.etype = etype
        self.attrs = dict(attrs)  # but the NodeId
        self.refs = tuple(refs)  # the type definition, then the methods: between the parent's and the ShelvingState


class ConditionSpace:
    """The engine's condition nodes, their ShelvingState and their devices' Alarms folders, made
    on access (a :class:`~scada.opcua.virtual_nodes.NodeSource` of the node table).

    ``devices``: per device of the configuration, its object's NodeData (None: no condition);
    ``defs``: per alarm definition; ``folder_attrs``/``shelving_attrs``: those nodes' attributes
    but the NodeId; ``folder_typedef``/``shelving_refs``: their references before the parent's.
    """

    def __init__(
        self,
        table: NodeTable,
        ns: int,
        engine: AlarmSource,
        devices: Sequence[NodeData | None],
        defs: Sequence[DefinitionNodes],
        folder_attrs: Mapping[ua.AttributeIds, AttributeValue],
        folder_typedef: _REF,
        shelving_attrs: Mapping[ua.AttributeIds, AttributeValue],
        shelving_refs: Sequence[_REF],
    ) -> None:
        self.table = table
        self.ns = ns
        self.engine = engine
        self.inst_def = np.asarray(engine.inst_def)
        self.inst_dev = np.asarray(engine.inst_dev)
        # A device's instances, in instance order (the order the stored tree added them in).
        self.by_device = np.argsort(self.inst_dev, kind="stable")
        self.dev_start = np.searchsorted(self.inst_dev[self.by_device], np.arange(len(devices) + 1))
        self.devices = list(devices)
        self.device_names = [d.name for d in engine.config.devices]
        self.by_path: dict[str, int] = {
            str(nd.nodeid.Identifier): di for di, nd in enumerate(devices) if nd is not None
        }
        self.defs = list(defs)
        self.folder_attrs = dict(folder_attrs)
        self.folder_typedef = folder_typedef
        self.shelving_attrs = dict(shelving_attrs)
        self.shelving_refs = tuple(shelving_refs)
        self.folder_qname = ua.QualifiedName(ALARMS_FOLDER, ns)
        self.folder_ltext = ua.LocalizedText(ALARMS_FOLDER)
        self.shelving_qname = ua.QualifiedName(SHELVING, 0)
        self.shelving_ltext = ua.LocalizedText(SHELVING)
        self.shelving_type = NodeId(OI.ShelvedStateMachineType)
        self.object_type = NodeId(OI.BaseObjectType)
        self.deleted: set[ua.NodeId] = set()
        self.pinned: dict[ua.NodeId, NodeData] = {}
        self.tail_cache: dict[int, list[_REF]] = {}

    # -- names ---------------------------------------------------------------------------

    def device_path(self, di: int) -> str:
        nd = self.devices[di]
        assert nd is not None, "a device with conditions"
        return str(nd.nodeid.Identifier)

    def condition_id(self, i: int) -> ua.NodeId:
        """The NodeId of instance ``i``'s condition (its ConditionId)."""
        di, k = int(self.inst_dev[i]), int(self.inst_def[i])
        return NodeId(f"{self.device_path(di)}{_COND_INFIX}{self.defs[k].name}", self.ns)

    def folder_id(self, di: int) -> ua.NodeId:
        """The NodeId of device ``di``'s Alarms folder."""
        return NodeId(self.device_path(di) + _FOLDER_SUFFIX, self.ns)

    def instances(self, di: int) -> list[int]:
        """The instances of device ``di``, in instance order."""
        return self.by_device[self.dev_start[di] : self.dev_start[di + 1]].tolist()

    def _condition(self, text: str) -> int | None:
        """The instance whose condition NodeId string is ``text``, else None."""
        cut = text.rfind(_COND_INFIX)
        if cut < 0:
            return None
        di = self.by_path.get(text[:cut])
        if di is None:
            return None
        try:
            i = self.engine.instance(text[cut + len(_COND_INFIX) :], self.device_names[di])
        except KeyError:
            return None
        return i if int(self.inst_dev[i]) == di else None

    def parse(self, nodeid: object) -> tuple[str, int] | None:
        """("folder", device) or ("condition" | "shelving", instance) for a live node of the space."""
        if not isinstance(nodeid, ua.NodeId) or nodeid.NamespaceIndex != self.ns:
            return None
        text = nodeid.Identifier
        if not isinstance(text, str) or ALARMS_FOLDER not in text or nodeid in self.deleted:
            return None
        if text.endswith(_SHELVING_SUFFIX):
            i = self._condition(text[: -len(_SHELVING_SUFFIX)])
            if i is not None:
                return ("shelving", i)
        if text.endswith(_FOLDER_SUFFIX):
            di = self.by_path.get(text[: -len(_FOLDER_SUFFIX)])
            if di is not None and self.dev_start[di] < self.dev_start[di + 1]:
                return ("folder", di)
        i = self._condition(text)
        return None if i is None else ("condition", i)

    def instance_of(self, nodeid: ua.NodeId) -> int | None:
        """The instance of a condition or ShelvingState NodeId (a method's ObjectId), else None."""
        hit = self.parse(nodeid)
        return None if hit is None or hit[0] == "folder" else hit[1]

    # -- references ----------------------------------------------------------------------

    def _dev_back(self, reftype: ua.NodeId, di: int) -> _REF:
        dev = self.devices[di]
        assert dev is not None, "a device with conditions"
        return reference_to(reftype, dev, False)

    def tail_refs(self, key: int) -> list[_REF]:
        """Device ``key``'s references to its Alarms folder and (as event source) its conditions."""
        refs = self.tail_cache.get(key)
        if refs is None:
            refs = [
                _ref(_HAS_COMPONENT, True, self.folder_id(key), self.folder_qname, self.folder_ltext, self.object_type)
            ]
            for i in self.instances(key):
                d = self.defs[int(self.inst_def[i])]
                refs.append(_ref(_HAS_CONDITION, True, self.condition_id(i), d.qname, d.ltext, d.etype))
            if len(self.tail_cache) >= _TAIL_CACHE:
                self.tail_cache.clear()
            self.tail_cache[key] = refs
        return refs

    def attach(self) -> None:
        """Serve the nodes, and give each device its condition references."""
        self.table.add_source(self)
        for di, nd in enumerate(self.devices):
            if nd is None:
                continue
            refs = nd.references
            if isinstance(refs, ChildRefs) and refs.tail is None:
                refs.tail, refs.tail_key = self, di
            else:  # a device without point variables (or already tailed): stored references
                refs.extend(self.tail_refs(di))

    def detach(self) -> None:
        """Stop serving the nodes; the devices lose their references to them."""
        self.table.remove_source(self)
        for nd in self.devices:
            if nd is None:
                continue
            refs = nd.references
            if isinstance(refs, ChildRefs) and refs.tail is self:
                refs.tail = None
            elif any(self.parse(r.NodeId) is not None for r in refs):  # stored since (an edit)
                refs[:] = [r for r in refs if self.parse(r.NodeId) is None]
        self.tail_cache.clear()
        self.pinned.clear()

    # -- the NodeSource ------------------------------------------------------------------

    def _attrs(self, static: Mapping[ua.AttributeIds, AttributeValue], nodeid: ua.NodeId) -> dict:
        attrs = dict(static)
        attrs[A.NodeId] = AttributeValue(ua.DataValue(ua.Variant(nodeid, ua.VariantType.NodeId)))
        return attrs

    def node(self, nodeid: ua.NodeId) -> NodeData | None:
        """The folder, condition or ShelvingState node ``nodeid``, made now (or the pinned one)."""
        nd = self.pinned.get(nodeid)
        if nd is not None:
            return nd
        hit = self.parse(nodeid)
        if hit is None:
            return None
        kind, n = hit
        if kind == "folder":
            refs = [self.folder_typedef, self._dev_back(_HAS_COMPONENT, n)]
            for i in self.instances(n):
                d = self.defs[int(self.inst_def[i])]
                refs.append(_ref(_HAS_COMPONENT, True, self.condition_id(i), d.qname, d.ltext, d.etype))
            return made_node(self, nodeid, nodeid, self._attrs(self.folder_attrs, nodeid), refs)
        di, d = int(self.inst_dev[n]), self.defs[int(self.inst_def[n])]
        if kind == "condition":
            folder = _ref(_HAS_COMPONENT, False, self.folder_id(di), self.folder_qname, self.folder_ltext, _NULL_ID)
            shelving = _ref(
                _HAS_COMPONENT,
                True,
                NodeId(str(nodeid.Identifier) + _SHELVING_SUFFIX, self.ns),
                self.shelving_qname,
                self.shelving_ltext,
                self.shelving_type,
            )
            refs = [d.refs[0], folder, self._dev_back(_HAS_CONDITION, di), *d.refs[1:], shelving]
            return made_node(self, nodeid, nodeid, self._attrs(d.attrs, nodeid), refs)
        cond = _ref(_HAS_COMPONENT, False, self.condition_id(n), d.qname, d.ltext, _NULL_ID)
        return made_node(self, nodeid, nodeid, self._attrs(self.shelving_attrs, nodeid), [*self.shelving_refs, cond])

    def pin(self, key: ua.NodeId, nd: NodeData | None, part: Any) -> None:
        """Keep an edited node as it is from now on (``nd`` None: the edited part outlived its node)."""
        if nd is None:
            nd = self.node(key)
            if nd is None:  # deleted meanwhile
                return
            adopt(nd, part)
        self.pinned[key] = nd

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self.pinned or self.parse(nodeid) is not None

    def _folders(self) -> list[int]:
        return [
            di for di, nd in enumerate(self.devices) if nd is not None and self.dev_start[di] < self.dev_start[di + 1]
        ]

    def nodeids(self) -> Iterator[ua.NodeId]:
        for di in self._folders():
            nids = [self.folder_id(di)]
            for i in self.instances(di):
                cid = self.condition_id(i)
                nids += [cid, NodeId(f"{cid.Identifier!s}{_SHELVING_SUFFIX}", self.ns)]
            yield from (nid for nid in nids if nid not in self.deleted)

    def count(self) -> int:
        return len(self._folders()) + 2 * len(self.inst_def) - len(self.deleted)

    def discard(self, nodeid: ua.NodeId) -> bool:
        if self.parse(nodeid) is None:
            return False
        self.deleted.add(nodeid)
        self.pinned.pop(nodeid, None)
        return True


class ConditionIds(Sequence[ua.NodeId]):
    """Each instance's ConditionId, made when asked (a stored list cost a NodeId per condition)."""

    def __init__(self, space: ConditionSpace) -> None:
        self.space = space

    def __len__(self) -> int:
        return len(self.space.inst_def)

    @overload
    def __getitem__(self, i: int) -> ua.NodeId: ...
    @overload
    def __getitem__(self, i: slice) -> list[ua.NodeId]: ...
    def __getitem__(self, i: int | slice) -> ua.NodeId | list[ua.NodeId]:
        if isinstance(i, slice):
            return [self.space.condition_id(j) for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.space.condition_id(i % len(self))
