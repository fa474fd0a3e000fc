"""Contract of scada/opcua/asyncua_private/read.py (the Read service answered in a batch) with
the installed asyncua.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from asyncua import ua

from scada.opcua.asyncua_private import read as P
from tests.asyncua_contract import SC, A, params, relied_on, running

relies = relied_on("scada/opcua/asyncua_private/read.py")


def test_the_read_service_has_the_shape_relied_on():
    from asyncua.server.address_space import AttributeService

    relies(params(AttributeService.read) == ["self", "params"], "AttributeService.read(params)")
    relies("self._aspace" in inspect.getsource(AttributeService.__init__), "AttributeService._aspace")
    relies(
        "read_attribute_value(readvalue.NodeId, readvalue.AttributeId)" in inspect.getsource(AttributeService.read),
        "AttributeService.read answers each item with read_attribute_value(NodeId, AttributeId) and nothing else",
    )


async def test_the_read_hook_answers_as_asyncua_on_a_live_server():
    """A hooked Read takes the answers given and asks asyncua for the others, in order."""
    async with running() as own:
        answered = ua.DataValue(ua.Variant(7.5))
        asked: list[list[ua.ReadValueId]] = []

        def answers(nodes: list[ua.ReadValueId]) -> list[ua.DataValue | None]:
            asked.append(nodes)
            return [answered if rv.NodeId == own.nodeid and rv.AttributeId == A.Value else None for rv in nodes]

        P.hook_read(own.server, answers)
        P.hook_read(own.server, answers)  # a second install replaces the answers, the hook stays one
        node = own.client.get_node(own.nodeid)
        relies(await node.read_value() == 7.5, "a client's Read gets the hook's answer")
        relies((await node.read_attribute(A.NodeId)).Value.Value == own.nodeid, "the others are asyncua's")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await own.client.get_node(ua.NodeId("contract/nothing", own.ns)).read_value()
        relies(err.value.code == SC.BadNodeIdUnknown, "an unknown node is asyncua's BadNodeIdUnknown")
        relies(len(asked) == 3, "one call of the answers per Read request")


async def test_pre_encoded_read_results_reach_the_client_as_asyncua_sends_them():
    from asyncua.ua.ua_binary import list_to_binary

    calls = []

    def encode(results: list[ua.DataValue]) -> bytes:
        calls.append(len(results))
        return list_to_binary(ua.DataValue, results)

    relies(
        [f.name for f in dataclasses.fields(ua.ReadResponse)]
        == ["TypeId", "ResponseHeader", "Results", "DiagnosticInfos"],
        "ReadResponse's fields, in order",
    )
    async with running() as own:
        P.hook_read(own.server, lambda nodes: [None] * len(nodes), encode)
        node = own.client.get_node(own.nodeid)
        relies(await node.read_value() == 42.0, "a client's Read sent through the encoder given")
        relies(await own.client.read_values([node, node]) == [42.0, 42.0], "several values")
        relies(calls == [1, 2], "one encoding per Read response")


def test_create_monitored_items_has_the_shape_relied_on():
    from asyncua.server.internal_session import InternalSession
    from asyncua.server.subscription_service import SubscriptionService

    relies(
        params(SubscriptionService.create_monitored_items) == ["self", "params"],
        "SubscriptionService.create_monitored_items(params)",
    )
    relies(
        "self.subscription_service.create_monitored_items("
        in inspect.getsource(InternalSession.create_monitored_items),
        "InternalSession.create_monitored_items looks up the service's method per request",
    )


async def test_the_monitored_item_visibility_hook_refuses_the_items_named_on_a_live_server():
    """Items the check names get the status given, the others are created by asyncua, in order."""
    hidden_node = ua.NodeId("contract/hidden", 7)
    async with running() as own:

        def hidden(items) -> list[bool] | None:
            return [i.ItemToMonitor.NodeId == hidden_node for i in items]

        refused = ua.StatusCode(SC.BadNodeIdUnknown)
        P.hook_monitored_item_visibility(own.server, lambda items: None, refused)
        P.hook_monitored_item_visibility(own.server, hidden, refused)  # replaces the check, one hook
        sub = await own.client.create_subscription(50, None)
        items = [
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=n, AttributeId=A.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(ClientHandle=k, QueueSize=1),
            )
            for k, n in enumerate((hidden_node, own.nodeid, hidden_node))
        ]
        results = await own.client.uaclient.create_monitored_items(
            ua.CreateMonitoredItemsParameters(SubscriptionId=sub.subscription_id, ItemsToCreate=items)
        )
        codes = [r.StatusCode.value for r in results]
        relies(codes == [SC.BadNodeIdUnknown, SC.Good, SC.BadNodeIdUnknown], "hidden refused, the other created")
        relies(results[1].MonitoredItemId != 0, "the visible item is asyncua's")
        await sub.delete()
