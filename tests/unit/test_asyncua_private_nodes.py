"""Contract of scada/opcua/asyncua_private/nodes.py (the server's node table) with the installed asyncua."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import MutableMapping

import numpy as np
import pytest
from asyncua import ua

from scada.opcua.asyncua_private import nodes as P
from scada.opcua.publisher import Watchers
from tests import asyncua_contract
from tests.asyncua_contract import (
    OI,
    SC,
    A,
    Handler,
    dv,
    on_live,
    params,
    relied_on,
    running,
    until,
)

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/nodes.py")


def test_node_table_classes_have_the_shape_relied_on():
    nid = ua.NodeId("contract", 1)
    nd = P.NodeData(nid)
    relies(nd.nodeid == nid, "NodeData(nodeid).nodeid")
    relies(
        isinstance(nd.attributes, dict) and isinstance(nd.references, list),
        "NodeData.attributes (dict) / .references (list)",
    )
    av = P.AttributeValue(ua.DataValue(ua.Variant(1.5)))
    relies(av.value.Value.Value == 1.5, "AttributeValue(DataValue).value")
    for name in ("value_callback", "value_setter"):
        relies(hasattr(av, name) and getattr(av, name) is None, f"AttributeValue.{name} (None by default)")
    relies(isinstance(av.datachange_callbacks, dict), "AttributeValue.datachange_callbacks (a dict)")
    for name in (
        "get",
        "__getitem__",
        "__setitem__",
        "__contains__",
        "__delitem__",
        "add_method_callback",
        "add_datachange_callback",
        "delete_datachange_callback",
    ):
        relies(callable(getattr(P.AddressSpace, name, None)), f"AddressSpace.{name}")
    relies(
        params(P.AddressSpace.add_method_callback)[1:] == ["methodid", "callback"],
        "AddressSpace.add_method_callback(methodid, callback)",
    )
    relies(
        params(P.AddressSpace.delete_datachange_callback)[1:] == ["handle"],
        "AddressSpace.delete_datachange_callback(handle)",
    )


@on_live
async def test_a_node_written_into_the_node_table_is_read_and_browsed_by_a_client(live):
    node = live.client.get_node(live.nodeid)
    assert await node.read_value() == 42.0
    children = await live.client.nodes.objects.get_children()
    assert live.nodeid in [c.nodeid for c in children]
    assert live.nodeid in live.aspace and live.aspace.get(live.nodeid).nodeid == live.nodeid


@on_live
async def test_datachange_callbacks_are_registered_and_removed_through_the_attribute_dict(live):
    """The publisher's Watchers mask follows asyncua's ``[handle] = cb`` and ``pop(handle)``;
    calling a registered callback with a DataValue notifies the client."""
    watchers = Watchers()
    watchers.mask, watchers.tag = np.zeros(1, bool), 0
    live.value_attr.datachange_callbacks = watchers
    handler = Handler()
    sub = await live.client.create_subscription(20, handler)
    handle = await sub.subscribe_data_change(live.client.get_node(live.nodeid))
    await until(
        lambda: watchers.mask[0],
        30,
        "asyncua registers a monitored item's callback as attr.datachange_callbacks[handle] = cb",
    )
    assert await asyncio.wait_for(handler.values.get(), 30) == 42.0
    [(h, callback)] = list(watchers.items())
    await callback(h, ua.DataValue(ua.Variant(43.0, ua.VariantType.Double)))
    assert await asyncio.wait_for(handler.values.get(), 30) == 43.0
    await sub.unsubscribe(handle)
    await until(lambda: not watchers.mask[0], 30, "asyncua removes a monitored item's callback with pop(handle)")
    await sub.delete()


class MadeOnAccess(MutableMapping):
    """A node table over asyncua's dict that makes the variable ``made`` when it is looked up."""

    def __init__(self, stored: dict, made: ua.NodeId, template: P.NodeData) -> None:
        self.stored, self.made, self.template = stored, made, template
        self.lookups = 0

    def _make(self) -> P.NodeData:
        self.lookups += 1
        nd = P.NodeData(self.made)
        nd.attributes = {**self.template.attributes, A.NodeId: P.AttributeValue(dv(self.made, ua.VariantType.NodeId))}
        nd.references = list(self.template.references)
        return nd

    def __getitem__(self, key):
        if key == self.made:
            return self._make()
        return self.stored[key]

    def __setitem__(self, key, value) -> None:
        self.stored[key] = value

    def __delitem__(self, key) -> None:
        del self.stored[key]

    def __iter__(self):
        yield from self.stored
        yield self.made

    def __len__(self) -> int:
        return len(self.stored) + 1


async def test_a_node_table_installed_in_place_of_the_dict_serves_every_service():
    async with running() as own:
        made = ua.NodeId("contract/made", own.ns)
        made_refs = P.node_table(own.aspace, MadeOnAccess, lambda s: MadeOnAccess(s, made, s[own.nodeid]))
        relies(isinstance(made_refs.stored, dict), "AddressSpace._nodes (a dict of NodeData)")
        assert P.node_table(own.aspace, MadeOnAccess, lambda s: pytest.fail("installed twice")) is made_refs
        objects = own.aspace[ua.NodeId(OI.ObjectsFolder)]
        stored_ref = next(r for r in objects.references if r.NodeId == own.nodeid)
        objects.references.append(dataclasses.replace(stored_ref, NodeId=made))
        node = own.client.get_node(made)
        relies(await node.read_value() == 42.0, "Read goes through AddressSpace._nodes.get")
        relies((await node.read_attribute(A.NodeId)).Value.Value == made, "Read of a made node's attributes")
        relies(
            made in [c.nodeid for c in await own.client.nodes.objects.get_children()],
            "Browse goes through AddressSpace._nodes (in, [])",
        )
        relies(len(await node.get_references()) == 2, "Browse of a made node")
        handler = Handler()
        sub = await own.client.create_subscription(50, handler)
        await sub.subscribe_data_change(node)
        relies(await asyncio.wait_for(handler.values.get(), 30) == 42.0, "CreateMonitoredItems reads the made node")
        await sub.delete()
        with pytest.raises(ua.UaStatusCodeError) as err:
            await own.client.get_node(ua.NodeId("contract/nothing", own.ns)).read_value()
        relies(err.value.code == SC.BadNodeIdUnknown, "an unknown NodeId (not in the table) is BadNodeIdUnknown")
        relies(made_refs.lookups >= 4, "the services looked the node up in the installed table")
        with pytest.raises(TypeError):
            P.node_table(own.aspace, dict, dict)  # another kind over an installed table: refused
