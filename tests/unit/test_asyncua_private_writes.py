"""Contract of scada/opcua/asyncua_private/writes.py (the Write service routed per node) with the
installed asyncua."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import ua
from asyncua.server.address_space import AttributeService

from scada.opcua.asyncua_private import writes as P
from tests import asyncua_contract
from tests.asyncua_contract import SC, on_live, params, relied_on

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/writes.py")


def test_write_service_has_the_signature_relied_on():
    relies(params(AttributeService.write)[1:] == ["params", "user"], "AttributeService.write(params, user)")


@on_live
async def test_routed_writes_are_answered_by_the_route_and_the_rest_by_asyncua(live):
    routed_to: list[ua.WriteValue] = []
    release = asyncio.Event()

    async def answer(wv: ua.WriteValue) -> ua.StatusCode:
        routed_to.append(wv)
        await release.wait()  # concurrent: both routed writes wait here together
        return ua.StatusCode(SC.BadTimeout if wv.Value.Value.Value == 1.0 else SC.Good)

    def route(wv: ua.WriteValue):
        return answer(wv) if wv.NodeId == live.nodeid else None

    stock = await live.server.nodes.objects.add_variable(live.ns, "writable_stock", 0.0)
    await stock.set_writable()
    P.hook_writes(live.server, route)
    P.hook_writes(live.server, route)  # idempotent: a reload installs again

    def wv(nodeid, value):
        return ua.WriteValue(
            NodeId=nodeid,
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(ua.Variant(value, ua.VariantType.Double)),
        )

    params_ = ua.WriteParameters(NodesToWrite=[wv(live.nodeid, 1.0), wv(stock.nodeid, 5.0), wv(live.nodeid, 2.0)])

    async def let_go():
        while len(routed_to) < 2:
            await asyncio.sleep(0.01)
        release.set()

    results, _ = await asyncio.gather(live.client.uaclient.write(params_), let_go())
    relies([r.value for r in results] == [SC.BadTimeout, SC.Good, SC.Good], "results in request order")
    assert await live.client.get_node(stock.nodeid).read_value() == 5.0  # asyncua's own write
    assert await live.client.get_node(live.nodeid).read_value() == 42.0  # routed: the node untouched
    assert len(routed_to) == 2
    with pytest.raises(ua.UaStatusCodeError):  # the rest keep asyncua's checks (AccessLevel)
        await live.client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).write_value(
            ua.Variant(1, ua.VariantType.Int32)
        )
