"""Contract of scada/opcua/asyncua_private/concurrent_requests.py (a connection's Calls served
beside its next requests) with the installed asyncua."""

from __future__ import annotations

import asyncio

from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor

from scada.opcua.asyncua_private import concurrent_requests as P
from tests import asyncua_contract
from tests.asyncua_contract import on_live, params, relied_on

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/concurrent_requests.py")


def test_the_processor_has_the_entry_point_relied_on():
    relies(params(UaProcessor.process_message)[1:] == ["seqhdr", "body"], "UaProcessor.process_message(seqhdr, body)")
    relies(hasattr(UaProcessor, "send_response"), "UaProcessor.send_response")


@on_live
async def test_a_waiting_call_does_not_hold_the_connection_s_next_requests(live):
    release = asyncio.Event()

    async def slow(parent):
        await release.wait()  # a command waiting for its read-back
        return [ua.Variant("done", ua.VariantType.String)]

    method = await live.server.nodes.objects.add_method(live.ns, "Slow", slow, [], [ua.VariantType.String])
    P.serve_concurrently(live.server, frozenset({ua.ObjectIds.CallRequest_Encoding_DefaultBinary}), 4)
    P.serve_concurrently(live.server, frozenset({ua.ObjectIds.CallRequest_Encoding_DefaultBinary}), 4)  # idempotent
    call = asyncio.create_task(live.client.nodes.objects.call_method(method))
    try:
        # The same client's Read is answered while its Call waits (asyncua alone serves it after).
        value = await asyncio.wait_for(live.client.get_node(live.nodeid).read_value(), 10)
        relies(value == 42.0 and not call.done(), "a request served while the connection's Call waits")
        release.set()
        relies(await asyncio.wait_for(call, 10) == "done", "the Call's response sent by its own task")
    finally:
        release.set()
        await P.cancel_in_flight(live.server)
        await asyncio.gather(call, return_exceptions=True)
