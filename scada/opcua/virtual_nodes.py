"""Tag variables that are not stored: asyncua's node table, with the variables made on access.

A tag variable is the same for every device of a type but for its NodeId, its parent and its
Value, so storing one asyncua ``NodeData`` per tag (attribute dict, references, NodeId, names,
plus a ReferenceDescription on its device) cost ~3.2 KB per tag. :class:`NodeTable` replaces
the address space's dict (``AddressSpace._nodes``; asyncua's own ``load_aspace_shelf`` swaps
it for a lazy mapping the same way): the nodes that are few (asyncua's standard nodes, our
folders, devices, property nodes) stay real ``NodeData`` in a dict, other sources of nodes made
on access are asked next (:class:`NodeSource`: the alarm conditions), and a tag
variable is a *slot*: a :class:`PointTemplate` shared per (equipment type, point), its owner
(the device or Diagnostics object, whose path prefixes the variable's NodeId string) and its
:class:`TagValue`. A NodeId is found by its owner's path (one dict entry per owner) and the
point's name (one dict per type), so the table holds no name per tag. Looking a variable up
builds its ``NodeData`` from those (the last 16k built are cached); every service (Read,
Browse, TranslateBrowsePaths, CreateMonitoredItems, HistoryRead) goes through the table, so
clients see the stored tree's answers (tests/unit/test_opcua_lean_tree.py compares them all).

State that a node holds outlives the NodeData built for one access:

* the Value attribute is the slot's TagValue (the publisher's list), which holds the
  monitored items' callbacks (``add_datachange_callback``);
* an attribute set on a variable (``nd.attributes[attr] = av``: the history marks Historizing
  and AccessLevel this way) is recorded for the slot as an interned set of overrides (one
  small int per slot: many slots share the same few AttributeValue objects);
* any other change (deleting an attribute, editing a variable's references) *pins* the
  NodeData: it is stored and returned as it is from then on.

A device's forward references to its points are made when iterated (:class:`ChildRefs`, a
list whose stored items are the other references): code that appends to or rewrites a
device's references (the alarm conditions, ``delete_nodes``) keeps working unchanged.

Shared AttributeValues are read-only for clients (WriteMask 0, no remote administrator);
a server-side write to a variable's BrowseName or DisplayName would change every variable
of its point template (the stored tree shared its static attributes too).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import islice
from typing import Any, ClassVar, Protocol, SupportsIndex, TypeVar, cast, overload

import numpy as np
from asyncua import ua

from scada.opcua.asyncua_private.nodes import AttributeValue, NodeData
from scada.opcua.publisher import TagValue
from scada.opcua.typed_ua import NodeId

A = ua.AttributeIds
T = TypeVar("T")
_HAS_COMPONENT = NodeId(ua.ObjectIds.HasComponent)
_VARIABLE = ua.NodeClass.Variable
_REF = ua.ReferenceDescription
_new = object.__new__
_NO_OVERRIDES: dict[ua.AttributeIds, AttributeValue] = {}
CACHE_SIZE = 16_384  # variables kept built (~1.5 KB each): a few HMI screens' worth
REF_CACHE_SIZE = 2_048  # owners whose point references are kept made (~4 KB each)


class NodeSource(Protocol):
    """Nodes other than the tag variables that the table makes on access (the alarm conditions:
    scada.opcua.conditions.virtual). A source returns the same NodeData for a node it pinned."""

    def node(self, nodeid: ua.NodeId) -> NodeData | None:
        """The node ``nodeid`` (None: not one of this source's)."""
        ...

    def __contains__(self, nodeid: object) -> bool: ...

    def nodeids(self) -> Iterator[ua.NodeId]:
        """Every node of the source."""
        ...

    def count(self) -> int:
        """How many nodes :meth:`nodeids` gives."""
        ...

    def discard(self, nodeid: ua.NodeId) -> bool:
        """Delete the node ``nodeid``; False if it is not one of this source's."""
        ...


class TailSource(Protocol):
    """References made on access at the end of an owner's list (:attr:`ChildRefs.tail`)."""

    def tail_refs(self, key: int) -> list[ua.ReferenceDescription]:
        """The references of the owner ``key`` (the source's own numbering)."""
        ...


class PointTemplate:
    """What every variable of one (equipment type, point) shares: its static attributes (names
    and Description included), its references but the one to its owner, its reference on the owner."""

    __slots__ = ("name", "qname", "ltext", "static", "typedef", "typedef_ref", "props")

    def __init__(
        self,
        name: str,
        ns: int,
        static: Mapping[ua.AttributeIds, AttributeValue],
        typedef_ref: ua.ReferenceDescription,
        props: Sequence[ua.ReferenceDescription],
    ) -> None:
        self.name = name
        self.qname = ua.QualifiedName(name, ns)
        self.ltext = ua.LocalizedText(name)
        self.static = dict(static)
        self.static[A.BrowseName] = AttributeValue(ua.DataValue(ua.Variant(self.qname, ua.VariantType.QualifiedName)))
        self.static[A.DisplayName] = AttributeValue(ua.DataValue(ua.Variant(self.ltext, ua.VariantType.LocalizedText)))
        self.typedef_ref = typedef_ref
        self.typedef = typedef_ref.NodeId
        self.props = tuple(props)

    def child_ref(self, nodeid: ua.NodeId) -> ua.ReferenceDescription:
        """The owner's forward HasComponent reference to the variable ``nodeid``.

        Every field set on a bare instance: the dataclass ``__init__`` costs 4x as much, and a
        Browse of a device makes one per point (the lean tree test compares every field).
        """
        r = _new(_REF)
        r.ReferenceTypeId = _HAS_COMPONENT
        r.IsForward = True
        r.NodeId = nodeid
        r.BrowseName = self.qname
        r.DisplayName = self.ltext
        r.NodeClass = _VARIABLE
        r.TypeDefinition = self.typedef
        return r


class ChildRefs(list[ua.ReferenceDescription]):
    """An owner's references: the stored ones, with its point variables' spliced in at ``at``.

    Stored items are the references that are not to its points (type definition, parent,
    Diagnostics object...). Iteration, ``len`` and indexing see the whole list;
    ``append``/``extend`` store after the points (where the stored tree had them, in order);
    a slice assignment keeps the point references it is given and hides the others; any other
    edit goes through a full rewrite. A ``tail`` (the device's alarm conditions) is made on
    access after everything stored; an edit first stores its references (they are then plain
    stored items).
    """

    __slots__ = (
        "table",
        "prefix",
        "first",
        "templates",
        "positions",
        "at",
        "hidden",
        "back",
        "key",
        "tail",
        "tail_key",
    )

    def __init__(
        self,
        stored: Iterable[ua.ReferenceDescription],
        table: NodeTable,
        prefix: str,
        first: int,
        templates: Sequence[PointTemplate],
        positions: Mapping[str, int],
        back: ua.ReferenceDescription,
    ) -> None:
        super().__init__(stored)
        self.table = table
        self.prefix = prefix  # the owner's path and "/"
        self.first = first  # slot of the first point
        self.templates = templates
        self.positions = positions  # point name -> position in templates (shared by the owners of a type)
        self.at = list.__len__(self)
        self.hidden: set[int] | None = None  # slots whose reference a rewrite removed
        self.back = back  # the points' inverse HasComponent reference to the owner
        self.key = -1  # index among the table's owners (NodeTable.add_owner)
        self.tail: TailSource | None = None
        self.tail_key = -1

    def _tail(self) -> list[ua.ReferenceDescription]:
        return () if self.tail is None else self.tail.tail_refs(self.tail_key)  # type: ignore[return-value]

    def store_tail(self) -> None:
        """Keep the tail's references as stored items from now on (before an edit), and drop the tail."""
        if self.tail is not None:
            refs = self._tail()
            self.tail = None
            list.extend(self, refs)

    def append(self, item: ua.ReferenceDescription) -> None:
        self.store_tail()
        list.append(self, item)

    def extend(self, items: Iterable[ua.ReferenceDescription]) -> None:
        self.store_tail()
        list.extend(self, items)

    def _points(self) -> list[ua.ReferenceDescription]:
        """The references to the live, not hidden points (kept made for the last owners browsed)."""
        cache = self.table.ref_cache
        refs = cache.get(self.key)
        if refs is None:
            first, ns, prefix, hidden = self.first, self.table.ns, self.prefix, self.hidden
            alive = self.table.alive[first : first + len(self.templates)].tolist()
            refs = [
                tpl.child_ref(NodeId(prefix + tpl.name, ns))
                for k, tpl in enumerate(self.templates)
                if alive[k] and (hidden is None or first + k not in hidden)
            ]
            if len(cache) >= REF_CACHE_SIZE:
                cache.clear()
            cache[self.key] = refs
        return refs

    def __iter__(self) -> Iterator[ua.ReferenceDescription]:
        stored = list.__iter__(self)
        yield from islice(stored, self.at)
        yield from self._points()
        yield from stored
        yield from self._tail()

    def __reversed__(self) -> Iterator[ua.ReferenceDescription]:
        return reversed(list(self))

    def __len__(self) -> int:
        return list.__len__(self) + len(self._points()) + len(self._tail())

    def __bool__(self) -> bool:
        return True  # the type definition reference, at least

    def __contains__(self, item: object) -> bool:
        return any(r == item for r in self)

    @overload
    def __getitem__(self, i: SupportsIndex) -> ua.ReferenceDescription: ...
    @overload
    def __getitem__(self, i: slice) -> list[ua.ReferenceDescription]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> ua.ReferenceDescription | list[ua.ReferenceDescription]:
        return list(self)[i]

    def _slot_of(self, r: ua.ReferenceDescription) -> int | None:
        """The slot of a reference to one of this owner's points, else None."""
        nid = r.NodeId
        ident = nid.Identifier
        if not (r.IsForward and r.ReferenceTypeId == _HAS_COMPONENT and nid.NamespaceIndex == self.table.ns):
            return None
        if not (isinstance(ident, str) and ident.startswith(self.prefix)):
            return None
        k = self.positions.get(ident[len(self.prefix) :])
        return None if k is None else self.first + k

    def _assign(self, items: Iterable[ua.ReferenceDescription]) -> None:
        self.tail = None  # ``items`` are the whole list, the tail's references included
        stored: list[ua.ReferenceDescription] = []
        present: set[int] = set()
        at = None
        for r in items:
            slot = self._slot_of(r)
            if slot is None:
                stored.append(r)
            else:
                present.add(slot)
                if at is None:
                    at = len(stored)
        list.__setitem__(self, slice(None), stored)
        self.at = len(stored) if at is None else at
        every = set(range(self.first, self.first + len(self.templates)))
        self.hidden = (every - present) or None
        self.table.ref_cache.pop(self.key, None)

    @overload
    def __setitem__(self, key: SupportsIndex, value: ua.ReferenceDescription) -> None: ...
    @overload
    def __setitem__(self, key: slice, value: Iterable[ua.ReferenceDescription]) -> None: ...
    def __setitem__(self, key: SupportsIndex | slice, value: Any) -> None:
        whole = list(self)
        whole[key] = value
        self._assign(whole)

    def __delitem__(self, key: SupportsIndex | slice) -> None:
        whole = list(self)
        del whole[key]
        self._assign(whole)

    def __iadd__(self, items: Iterable[ua.ReferenceDescription]) -> ChildRefs:  # type: ignore[override,misc]
        self.extend(items)
        return self

    def insert(self, index: SupportsIndex, item: ua.ReferenceDescription) -> None:
        whole = list(self)
        whole.insert(index, item)
        self._assign(whole)

    def remove(self, item: ua.ReferenceDescription) -> None:
        whole = list(self)
        whole.remove(item)
        self._assign(whole)

    def pop(self, index: SupportsIndex = -1) -> ua.ReferenceDescription:
        whole = list(self)
        out = whole.pop(index)
        self._assign(whole)
        return out

    def clear(self) -> None:
        self._assign(())

    def index(self, item: ua.ReferenceDescription, *args: Any) -> int:
        return list(self).index(item, *args)

    def count(self, item: ua.ReferenceDescription) -> int:
        return list(self).count(item)

    def copy(self) -> list[ua.ReferenceDescription]:
        return list(self)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._assign(sorted(self, *args, **kwargs))

    def reverse(self) -> None:
        self._assign(reversed(list(self)))

    def __eq__(self, other: object) -> bool:
        return list(self) == other

    def __repr__(self) -> str:
        return repr(list(self))


class _NodeIdAttr(AttributeValue):
    """A variable's NodeId attribute: its DataValue made when read (an AttributeValue, its
    DataValue and Variant made per built node cost more than the rest of the node).

    ``datachange_callbacks`` is one dict shared by every variable, as the shared static
    attributes' are: a monitored item on a NodeId attribute is never notified (it does not
    change), and asyncua removes it by handle from whichever node it looks up then.
    """

    value_callback = None
    value_setter = None
    datachange_callbacks: ClassVar[dict[int, Any]] = {}  # type: ignore[misc]  # shared on purpose, see above

    def __init__(self, nodeid: ua.NodeId) -> None:  # not AttributeValue's: nothing stored but the NodeId
        self.nodeid = nodeid

    @property
    def value(self) -> ua.DataValue:
        return ua.DataValue(ua.Variant(self.nodeid, ua.VariantType.NodeId))

    @value.setter
    def value(self, dv: ua.DataValue) -> None:
        raise AttributeError("a tag variable's NodeId is its tag name")


def _pin_on_edit(base: type, *names: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: each method ``names`` of ``base`` (an edit of a built variable's attributes
    or references) runs, then pins the node."""

    def pinning(name: str) -> Any:
        method = getattr(base, name)

        def edit(self: _VarAttrs | _VarRefs, *args: Any, **kwargs: Any) -> Any:
            out = method(self, *args, **kwargs)
            self.table.pin(self.slot, self.node(), self)
            return out

        return edit

    def decorate(cls: type[T]) -> type[T]:
        for name in names:
            setattr(cls, name, pinning(name))
        return cls

    return decorate


_ATTR_EDITS = ("__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__")


@_pin_on_edit(dict, *_ATTR_EDITS)
class _VarAttrs(dict[ua.AttributeIds, AttributeValue]):
    """A built variable's attributes: a set attribute is recorded for the slot; other edits pin."""

    __slots__ = ("table", "node", "slot")
    table: NodeTable
    node: weakref.ref[NodeData]  # weak: no cycle, a dropped node is freed at once (no GC work)
    slot: int

    def __setitem__(self, attr: ua.AttributeIds, value: AttributeValue) -> None:
        super().__setitem__(attr, value)
        if attr in (A.Value, A.NodeId):
            self.table.pin(self.slot, self.node(), self)
        else:
            self.table.override(self.slot, attr, value)


_REF_EDITS = (
    "append",
    "extend",
    "insert",
    "remove",
    "pop",
    "clear",
    "sort",
    "reverse",
    "__setitem__",
    "__delitem__",
    "__iadd__",
)


@_pin_on_edit(list, *_REF_EDITS)
class _VarRefs(list[ua.ReferenceDescription]):
    """A built variable's references: any edit pins the node (nothing in the project edits them)."""

    __slots__ = ("table", "node", "slot")
    table: NodeTable
    node: weakref.ref[NodeData]  # weak: no cycle, a dropped node is freed at once (no GC work)
    slot: int


@_pin_on_edit(dict, "__setitem__", *_ATTR_EDITS)
class PinAttrs(dict[ua.AttributeIds, AttributeValue]):
    """A node's attributes, made on access by a :class:`NodeSource`: any edit pins the node there
    (``table.pin(slot, node, part)``, ``table`` being the source and ``slot`` its key)."""

    __slots__ = ("table", "node", "slot")
    table: Any
    node: weakref.ref[NodeData]  # weak: no cycle, a dropped node is freed at once (no GC work)
    slot: Any


@_pin_on_edit(list, *_REF_EDITS)
class PinRefs(list[ua.ReferenceDescription]):
    """A node's references, made on access by a :class:`NodeSource`: any edit pins the node (see :class:`PinAttrs`)."""

    __slots__ = ("table", "node", "slot")
    table: Any
    node: weakref.ref[NodeData]
    slot: Any


def adopt(nd: NodeData, part: dict[ua.AttributeIds, AttributeValue] | list[ua.ReferenceDescription]) -> None:
    """Give a node made anew the edited attributes or references of a copy that is gone."""
    if isinstance(part, dict):
        nd.attributes = part
    else:
        nd.references = part


def made_node(
    source: Any, key: Any, nodeid: ua.NodeId, attrs: Mapping[ua.AttributeIds, AttributeValue], refs: Iterable[_REF]
) -> NodeData:
    """A NodeData made by ``source`` (a :class:`NodeSource` with ``pin(key, node, part)``) that pins
    itself there when edited."""
    nd = NodeData.__new__(NodeData)
    nd.nodeid = nodeid
    nd.call = None
    node = weakref.ref(nd)
    a = PinAttrs(attrs)
    a.table, a.node, a.slot = source, node, key
    r = PinRefs(refs)
    r.table, r.node, r.slot = source, node, key
    nd.attributes, nd.references = a, r
    return nd


class NodeTable(MutableMapping[ua.NodeId, NodeData]):
    """The address space's node table: stored nodes in a dict, tag variables as slots.

    Slots are announced by :meth:`add_owner` (a device's points, or its Diagnostics') and exist
    from :meth:`commit` on; a variable is found by its owner's path prefix (``by_prefix``) and
    its point name. A deleted slot is only marked dead.
    """

    def __init__(self, stored: dict[ua.NodeId, NodeData], ns: int, cache_size: int = CACHE_SIZE) -> None:
        self.stored = stored
        self.ns = ns
        self.by_prefix: dict[str, int] = {}  # owner path + "/" -> index in owners
        self.alive = np.zeros(0, bool)
        self.template = np.zeros(0, np.int32)  # slot -> index in templates
        self.owner = np.zeros(0, np.int32)  # slot -> index in owners
        self.over = np.zeros(0, np.int32)  # slot -> index in overrides (0: none)
        self.templates: list[PointTemplate] = []
        self.owners: list[ChildRefs] = []
        self.value_attrs: list[TagValue | None] = []
        self.overrides: list[dict[ua.AttributeIds, AttributeValue]] = [_NO_OVERRIDES]
        # Interned override sets, by their (attribute, id(value)) pairs; and (set, attribute,
        # id(value)) -> the set it leads to. The values are kept alive by ``overrides``.
        self._override_index: dict[tuple[tuple[int, int], ...], int] = {(): 0}
        self._steps: dict[tuple[int, int, int], int] = {}
        self.pinned: dict[int, NodeData] = {}
        # The last variables built: a Read of several attributes of a node, or an HMI reading
        # the same nodes again, finds them (cleared whole when full: no per-access bookkeeping).
        self.cache: dict[ua.NodeId, NodeData] = {}
        self.cache_size = cache_size
        self.ref_cache: dict[int, list[ua.ReferenceDescription]] = {}  # owner -> its point references
        self._template_index: dict[int, int] = {}
        self._pending: list[tuple[int, int, np.ndarray]] = []  # (first slot, owner, template indexes)
        self.sources: list[NodeSource] = []  # other nodes made on access (the alarm conditions)

    # -- building ------------------------------------------------------------------------

    def template_id(self, tpl: PointTemplate) -> int:
        """The index of ``tpl`` among the table's templates (added on first use)."""
        k = self._template_index.get(id(tpl))
        if k is None:
            k = self._template_index[id(tpl)] = len(self.templates)
            self.templates.append(tpl)
        return k

    def add_owner(
        self,
        owner: NodeData,
        prefix: str,
        first: int,
        templates: Sequence[PointTemplate],
        template_ids: np.ndarray,
        positions: Mapping[str, int],
        back: ua.ReferenceDescription,
    ) -> None:
        """Give ``owner`` the point variables ``templates`` in slots ``first``... (see :meth:`commit`).

        ``template_ids``: the templates' :meth:`template_id`; ``positions``: point name -> position.
        An owner added under the path of a removed one (a reload) takes its place in the index.
        """
        refs = ChildRefs(owner.references, self, prefix, first, templates, positions, back)
        refs.key = len(self.owners)
        owner.references = refs
        self._pending.append((first, len(self.owners), template_ids))
        self.by_prefix[prefix] = len(self.owners)
        self.owners.append(refs)

    def commit(self, values: Sequence[TagValue]) -> None:
        """The slots announced by :meth:`add_owner` since the last commit exist from now on.

        ``values``: their TagValues, in slot order from the current end (every slot announced).
        """
        n0, n = len(self.value_attrs), len(self.value_attrs) + len(values)
        alive, template, owner = np.zeros(n, bool), np.zeros(n, np.int32), np.zeros(n, np.int32)
        alive[:n0], template[:n0], owner[:n0] = self.alive, self.template, self.owner
        for first, k, ids in self._pending:
            alive[first : first + len(ids)] = True
            template[first : first + len(ids)] = ids
            owner[first : first + len(ids)] = k
        over = np.zeros(n, np.int32)
        over[:n0] = self.over
        self.alive, self.template, self.owner, self.over = alive, template, owner, over
        self._pending.clear()
        self.value_attrs.extend(values)

    # -- slots ---------------------------------------------------------------------------

    def slot(self, name: str) -> int | None:
        """The live slot of the variable named ``name``, or None."""
        cut = name.rfind("/") + 1
        k = self.by_prefix.get(name[:cut])
        if k is None:
            return None
        owner = self.owners[k]
        i = owner.positions.get(name[cut:])
        if i is None or not self.alive[owner.first + i]:
            return None
        return owner.first + i

    def name(self, slot: int) -> str:
        """The NodeId string of a slot's variable."""
        return self.owners[int(self.owner[slot])].prefix + self.templates[int(self.template[slot])].name

    def value(self, name: str) -> TagValue | None:
        """The TagValue of the variable ``name`` (None: no such variable), without building it."""
        slot = self.slot(name)
        return None if slot is None else self.value_attrs[slot]

    def _slot_of(self, nodeid: object) -> int | None:
        if not isinstance(nodeid, ua.NodeId) or nodeid.NamespaceIndex != self.ns:
            return None
        ident = nodeid.Identifier
        return self.slot(ident) if isinstance(ident, str) else None

    def build(self, slot: int, nodeid: ua.NodeId | None = None) -> NodeData:
        """The NodeData of a live slot: the pinned one, or a new one from the compact tables."""
        nd = self.pinned.get(slot)
        if nd is not None:
            return nd
        tpl = self.templates[int(self.template[slot])]
        owner = self.owners[int(self.owner[slot])]
        if nodeid is None:
            nodeid = NodeId(owner.prefix + tpl.name, self.ns)
        nd = NodeData.__new__(NodeData)
        nd.nodeid = nodeid
        nd.call = None
        attrs = _VarAttrs(tpl.static)
        dict.update(attrs, self.overrides[int(self.over[slot])])
        dict.__setitem__(attrs, A.NodeId, _NodeIdAttr(nodeid))
        dict.__setitem__(attrs, A.Value, cast(AttributeValue, self.value_attrs[slot]))
        node = weakref.ref(nd)
        attrs.table, attrs.node, attrs.slot = self, node, slot
        refs = _VarRefs((tpl.typedef_ref, owner.back, *tpl.props))
        refs.table, refs.node, refs.slot = self, node, slot
        nd.attributes, nd.references = attrs, refs
        return nd

    def override(self, slot: int, attr: ua.AttributeIds, value: AttributeValue) -> None:
        """Record ``attr = value`` for the slot (interned: slots with the same edits share one entry).

        The edited node is the one just looked up, hence the cached one (asyncua and the project
        edit a node right after looking it up): other copies are not searched for.
        """
        # Marking a city's variables is one edit per attribute per tag: a dict lookup each.
        step = (int(self.over[slot]), int(attr), id(value))
        k = self._steps.get(step)
        if k is None:
            attrs = {**self.overrides[step[0]], attr: value}
            key = tuple(sorted((int(a), id(v)) for a, v in attrs.items()))
            k = self._override_index.get(key)
            if k is None:
                k = self._override_index[key] = len(self.overrides)
                self.overrides.append(attrs)
            self._steps[step] = k
        self.over[slot] = k

    def set_attributes(self, slots: np.ndarray, attrs: Mapping[ua.AttributeIds, AttributeValue]) -> None:
        """``attrs`` on the variables of ``slots`` at once: what :meth:`override` records for one
        slot, done per distinct override set (numpy), not per variable. Pinned nodes get them too."""
        slots = np.asarray(slots, np.int64)
        for k in np.unique(self.over[slots]).tolist():
            sel = slots[self.over[slots] == k]
            first = int(sel[0])
            for attr, value in attrs.items():
                self.override(first, attr, value)
            self.over[sel] = self.over[first]
        for slot in set(self.pinned).intersection(slots.tolist()):
            dict.update(self.pinned[slot].attributes, attrs)
        self.cache.clear()  # built copies would lack the new attributes

    def pin(self, slot: int, nd: NodeData | None, part: _VarAttrs | _VarRefs) -> None:
        """Keep the slot's node as it is from now on (``part`` of it was edited: state the tables
        cannot hold). ``nd`` None: the edited part outlived its node; a node is made around it."""
        self.pinned[slot] = self.build(slot) if nd is None else nd
        if nd is None:
            adopt(self.pinned[slot], part)

    def kill(self, slot: int) -> None:
        self.cache.pop(NodeId(self.name(slot), self.ns), None)
        self.ref_cache.pop(int(self.owner[slot]), None)
        self.alive[slot] = False
        self.value_attrs[slot] = None
        self.pinned.pop(slot, None)

    # -- the Mapping asyncua uses --------------------------------------------------------

    def _built(self, nodeid: ua.NodeId) -> NodeData | None:
        nd = self.cache.get(nodeid)
        if nd is None:
            slot = self._slot_of(nodeid)
            if slot is not None:
                nd = self.build(slot, nodeid)
            else:
                nd = next((n for n in (src.node(nodeid) for src in self.sources) if n is not None), None)
                if nd is None:
                    return None
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[nodeid] = nd
        return nd

    def __getitem__(self, nodeid: ua.NodeId) -> NodeData:
        try:
            return self.stored[nodeid]
        except KeyError:
            nd = self._built(nodeid)
            if nd is None:
                raise
            return nd

    def get(self, nodeid: ua.NodeId, default: Any = None) -> Any:
        nd = self.stored.get(nodeid)
        if nd is None:
            nd = self._built(nodeid)
        return default if nd is None else nd

    def __contains__(self, nodeid: object) -> bool:
        return (
            nodeid in self.stored
            or nodeid in self.cache
            or self._slot_of(nodeid) is not None
            or any(nodeid in src for src in self.sources)
        )

    def __setitem__(self, nodeid: ua.NodeId, nd: NodeData) -> None:
        self.stored[nodeid] = nd

    def __delitem__(self, nodeid: ua.NodeId) -> None:
        if nodeid in self.stored:
            del self.stored[nodeid]
            return
        slot = self._slot_of(nodeid)
        if slot is not None:
            self.kill(slot)
            return
        if not any(src.discard(nodeid) for src in self.sources):
            raise KeyError(nodeid)
        self.cache.pop(nodeid, None)

    def __iter__(self) -> Iterator[ua.NodeId]:
        yield from self.stored
        for slot in np.flatnonzero(self.alive).tolist():
            yield NodeId(self.name(slot), self.ns)
        for src in self.sources:
            yield from src.nodeids()

    def __len__(self) -> int:
        return len(self.stored) + int(np.count_nonzero(self.alive)) + sum(src.count() for src in self.sources)

    def add_source(self, source: NodeSource) -> None:
        """Serve the nodes of ``source`` from now on."""
        self.sources.append(source)

    def remove_source(self, source: NodeSource) -> None:
        """Stop serving the nodes of ``source`` (its built copies are forgotten)."""
        self.sources = [s for s in self.sources if s is not source]
        self.cache.clear()

    def clear(self) -> None:
        self.stored.clear()
        self.alive[:] = False
        self.value_attrs = [None] * len(self.value_attrs)
        self.pinned.clear()
        self.cache.clear()
        self.ref_cache.clear()
        self.sources.clear()
