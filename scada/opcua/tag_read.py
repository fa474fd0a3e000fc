"""The Read service's fast path for tag Values: many tags per request, without building their nodes.

asyncua answers each ReadValueId with ``read_attribute_value``: the node looked up in the node
table (a tag variable is built there, scada/opcua/virtual_nodes.py, ~20 µs when not cached),
then its Value attribute, a :class:`~scada.opcua.publisher.TagValue` whose DataValue the
publisher builds through the dataclasses' ``__init__``/``__post_init__`` (~30 µs). A Read of
1,000 tags spent most of its time there, so for the Value attribute of a tag variable this
module finds the tag's slot in the node table by name, gathers the publisher's columns for
all the request's tags with one numpy take each, and builds the DataValues field by field.

Everything else (other attributes, nodes that are not tag variables, a variable whose node was
pinned by an edit: its Value may be another attribute than the slot's TagValue, an unbound
TagValue) is left to asyncua's path, so the answers are asyncua's: TimestampsToReturn,
IndexRange and DataEncoding are not looked at by asyncua's Read, nor here. A node of a commune
the requester does not see answers ``BadNodeIdUnknown``, whatever its attribute
(scada/opcua/visibility.py).
:func:`tag_values` builds what ``Publisher.current`` builds for the same tags
(tests/unit/test_tag_read.py compares them field by field).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import numpy as np
from asyncua import ua

from scada.opcua.publisher import PublishedValue, Publisher, TagValue
from scada.opcua.virtual_nodes import NodeTable
from scada.opcua.visibility import hidden_mask, request_roots, unknown_data_value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VALUE = ua.AttributeIds.Value
_new = object.__new__
_Double, _Int32, _Boolean, _String, _Null = (
    ua.VariantType.Double,
    ua.VariantType.Int32,
    ua.VariantType.Boolean,
    ua.VariantType.String,
    ua.VariantType.Null,
)


class _Fields(Protocol):
    """A DataValue's fields as asyncua stores them (plain int and datetime: see typed_ua)."""

    Encoding: int
    Value: ua.Variant
    StatusCode: ua.StatusCode
    SourceTimestamp: datetime | None
    ServerTimestamp: datetime | None
    SourcePicoseconds: int | None
    ServerPicoseconds: int | None


def _variant(vt: ua.VariantType, v: float, text: str | None) -> ua.Variant:
    """``scada.opcua.publisher.variant``, every field set on a bare instance (no ``__post_init__``)."""
    var = _new(ua.Variant)
    var.Dimensions = None
    var.is_array = False
    if vt is _String:
        var.Value, var.VariantType = (text, vt) if text is not None else (None, _Null)
    elif v != v or vt not in (_Double, _Int32, _Boolean):  # NaN: no value yet
        var.Value, var.VariantType = None, _Null
    elif vt is _Double:
        var.Value, var.VariantType = v, vt
    elif vt is _Int32:
        var.Value, var.VariantType = int(v), vt
    else:
        var.Value, var.VariantType = bool(v), vt
    return var


def tag_values(source: Publisher, tags: Sequence[int]) -> list[ua.DataValue]:
    """The tags as last published (``Publisher.current`` of each), their columns gathered at once."""
    idx = np.asarray(tags, np.int64)
    values = source._value[idx].tolist()
    statuses = source._status_col[idx].tolist()
    sources = source._source_ns[idx].tolist()
    servers = source._server_ns[idx].tolist()
    vtypes, texts, status_of = source.vtypes, source._text, source._status
    times: dict[int, datetime | None] = {0: None}  # a batch's rows share their server time
    out: list[ua.DataValue] = []
    for n, tag in enumerate(idx.tolist()):
        src, srv = sources[n], servers[n]
        src_t = times.get(src)
        if src_t is None and src:
            src_t = times[src] = _EPOCH + timedelta(microseconds=src // 1000)
        srv_t = times.get(srv)
        if srv_t is None and srv:
            srv_t = times[srv] = _EPOCH + timedelta(microseconds=srv // 1000)
        dv = _new(PublishedValue)
        f = cast(_Fields, dv)
        f.Encoding = 0
        f.Value = _variant(vtypes[tag], values[n], texts.get(tag))
        f.StatusCode = status_of(statuses[n])
        f.SourceTimestamp = src_t
        f.ServerTimestamp = srv_t
        f.SourcePicoseconds = None
        f.ServerPicoseconds = None
        out.append(dv)
    return out


class TagReader:
    """The answers of a Read's tag Values (``None``: asyncua's path answers that one).

    Installed with ``scada.opcua.asyncua_private.read.hook_read``; ``table`` is the address space's
    node table (``virtual_nodes.NodeTable``).
    """

    def __init__(self, table: NodeTable) -> None:
        self.table = table

    def _tag_value(self, nodeid: ua.NodeId) -> TagValue | None:
        """The bound TagValue a Read of ``nodeid``'s Value would read, or None (not a plain tag variable)."""
        table = self.table
        if nodeid in table.stored:  # a stored node of that NodeId is the one served
            return None
        ident = nodeid.Identifier
        if nodeid.NamespaceIndex != table.ns or not isinstance(ident, str):
            return None
        slot = table.slot(ident)
        if slot is None or slot in table.pinned:
            return None
        attr = table.value_attrs[slot]
        return attr if attr is not None and attr.source is not None else None

    def __call__(self, nodes: Sequence[ua.ReadValueId]) -> list[ua.DataValue | None]:
        roots = request_roots()  # None (nearly always): the requester sees every commune
        if roots is not None:
            hidden = hidden_mask([rv.NodeId for rv in nodes], roots)
            if any(hidden):  # as nodes that do not exist (scada/opcua/visibility.py)
                answers = iter(self._answer([rv for rv, h in zip(nodes, hidden, strict=True) if not h]))
                unknown = unknown_data_value()
                return [unknown if h else next(answers) for h in hidden]
        return self._answer(nodes)

    def _answer(self, nodes: Sequence[ua.ReadValueId]) -> list[ua.DataValue | None]:
        out: list[ua.DataValue | None] = [None] * len(nodes)
        found: dict[int, tuple[Publisher, list[int], list[int]]] = {}  # id(publisher) -> its tags, positions
        for k, rv in enumerate(nodes):
            if rv.AttributeId != _VALUE:
                continue
            attr = self._tag_value(rv.NodeId)
            if attr is None or attr.source is None:
                continue
            group = found.get(id(attr.source))
            if group is None:
                group = found[id(attr.source)] = (attr.source, [], [])
            group[1].append(attr.tag)
            group[2].append(k)
        for source, tags, where in found.values():
            for k, dv in zip(where, tag_values(source, tags)):
                out[k] = dv
        return out
