"""Contract of scada/opcua/asyncua_private/limits.py (per-session caps on sessions and their
requests) with the installed asyncua: the names it relies on, and its behaviour on a real server
and clients on loopback.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.monitored_item_service import MonitoredItemService
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.uaerrors import UaStatusCodeError

from scada.opcua.asyncua_private import history
from scada.opcua.asyncua_private import limits as P
from scada.opcua.server import stop_asyncua_server
from tests.asyncua_contract import on_live, params, relied_on
from tests.integration.helpers import plain_asyncua_server
from tests.opcua_wire import RawClient, read_request

relies = relied_on("scada/opcua/asyncua_private/limits.py")
SC = ua.StatusCodes
# Sessions per client; subscriptions and monitored items per session; nodes per request; history
# nodes and values per request; queue size: small, to be reached by a test.
CAPS = P.SessionCaps(3, 2, 3, 5, 2, 10, 4)
PENDING = 8  # messages received and not yet processed, per connection
STATE = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)


def test_the_session_internals_have_the_shapes_relied_on():
    relies(
        params(InternalServer.create_session)[1:] == ["name", "user", "external"],
        "create_session(name, user, external)",
    )
    relies(
        "self.iserver.create_session(self.name, external=True)" in inspect.getsource(UaProcessor._process_message),
        "the processor creates a client's session with its peer name, external=True",
    )
    source = inspect.getsource(UaProcessor._process_message)
    for call in (
        "self.session.read(params)",
        "self.session.write(params)",
        "self.session.browse(params)",
        "self.session.translate_browsepaths_to_nodeids(params.BrowsePaths)",
        "self.session.call(params.MethodsToCall)",
        "self.session.history_read(params)",
        "self.session.create_subscription(",
        "self.session.create_monitored_items(params)",
        "self.session.modify_monitored_items(params)",
        "self.session.delete_monitored_items(params)",
        "self.session.set_monitoring_mode(params)",
        "self.session.set_publishing_mode(params)",
        "self.session.delete_subscriptions(params.SubscriptionIds)",
        "self.session.transfer_subscriptions(params,",
        "self.session.publish(params.SubscriptionAcknowledgements)",
    ):
        relies(call in source, f"UaProcessor calls {call} on the session instance per request")
    relies(
        "_monitored_items" in inspect.getsource(MonitoredItemService.__init__), "MonitoredItemService._monitored_items"
    )
    relies(
        "maxsize=iserver.max_pending_messages_per_connection" in inspect.getsource(OPCUAProtocol.__init__),
        "OPCUAProtocol.messages: a queue of max_pending_messages_per_connection",
    )
    relies(
        "max_monitored_item_queue_size" in inspect.getsource(InternalServer.__init__),
        "InternalServer.max_monitored_item_queue_size",
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live():
    server, url, _ns = await plain_asyncua_server("limits", "urn:limits")
    refusals: list[P.Refusal] = []
    P.hook_session_caps(server, CAPS, lambda r: None)
    P.hook_session_caps(server, CAPS, refusals.append)  # idempotent: the last caps and sink apply
    P.set_queue_size_cap(server, CAPS.queue_size)
    P.set_pending_messages_cap(server, PENDING)
    seen: list[ua.HistoryReadParameters] = []

    async def read_history(p: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        seen.append(p)
        return [ua.HistoryReadResult(StatusCode=ua.StatusCode(SC.Good)) for _ in p.NodesToRead]

    history.wrap_history_read(server, read_history)
    await server.start()
    client = Client(url)
    await client.connect()
    try:
        yield server, url, client, refusals, seen
    finally:
        await client.disconnect()
        await stop_asyncua_server(server)


def refused_with(e: pytest.ExceptionInfo, code: int) -> bool:
    return isinstance(e.value, UaStatusCodeError) and e.value.code == code


@on_live
async def test_operations_per_request_are_capped_for_the_whole_request(live):
    _server, _url, client, refusals, _seen = live
    nodes = [client.get_node(STATE)] * CAPS.nodes_per_request
    assert len(await client.read_values(nodes)) == CAPS.nodes_per_request
    with pytest.raises(UaStatusCodeError) as e:
        await client.read_values([*nodes, client.get_node(STATE)])
    assert refused_with(e, SC.BadTooManyOperations)
    assert refusals[-1].service == "Read" and refusals[-1].code == SC.BadTooManyOperations
    with pytest.raises(UaStatusCodeError) as e:
        await client.browse_nodes([client.nodes.objects] * (CAPS.nodes_per_request + 1))
    assert refused_with(e, SC.BadTooManyOperations)


@on_live
async def test_subscriptions_and_monitored_items_per_session_are_capped(live):
    _server, _url, client, refusals, _seen = live
    subs = [await client.create_subscription(60000, None) for _ in range(CAPS.subscriptions_per_session)]
    with pytest.raises(UaStatusCodeError) as e:
        await client.create_subscription(60000, None)
    assert refused_with(e, SC.BadTooManySubscriptions)
    assert refusals[-1].service == "CreateSubscription"
    await subs[0].subscribe_data_change([client.get_node(STATE)] * 2, queuesize=100)
    with pytest.raises(UaStatusCodeError) as e:  # 2 + 2 > 3, over two subscriptions of the session
        await subs[1].subscribe_data_change([client.get_node(STATE)] * 2)
    assert refused_with(e, SC.BadTooManyMonitoredItems)
    await subs[1].delete()
    again = await client.create_subscription(60000, None)  # a deleted one gives its place back
    await again.delete()
    await subs[0].delete()


@on_live
async def test_queue_sizes_are_clamped_on_create_and_on_modify(live):
    _server, _url, client, _refusals, _seen = live
    sub = await client.create_subscription(60000, None)
    params = ua.CreateMonitoredItemsParameters(
        SubscriptionId=sub.subscription_id,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        ItemsToCreate=[
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=STATE, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(ClientHandle=1, QueueSize=1_000_000, SamplingInterval=0),
            )
        ],
    )
    [created] = await client.uaclient.create_monitored_items(params)
    assert created.RevisedQueueSize == CAPS.queue_size
    modify = ua.ModifyMonitoredItemsParameters(
        SubscriptionId=sub.subscription_id,
        ItemsToModify=[
            ua.MonitoredItemModifyRequest(
                MonitoredItemId=created.MonitoredItemId,
                RequestedParameters=ua.MonitoringParameters(ClientHandle=1, QueueSize=1_000_000),
            )
        ],
    )
    [modified] = await client.uaclient.modify_monitored_items(modify)
    assert modified.RevisedQueueSize == CAPS.queue_size
    await sub.delete()


@on_live
async def test_history_reads_are_capped_in_nodes_and_values(live):
    _server, _url, client, _refusals, seen = live
    details = ua.ReadRawModifiedDetails(
        StartTime=datetime(2026, 1, 1, tzinfo=UTC), EndTime=datetime(2026, 1, 2, tzinfo=UTC), NumValuesPerNode=0
    )

    def request(n: int) -> ua.HistoryReadParameters:
        return ua.HistoryReadParameters(
            HistoryReadDetails=details,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            NodesToRead=[ua.HistoryReadValueId(NodeId=STATE)] * n,
        )

    await client.uaclient.history_read(request(2))
    assert seen[-1].HistoryReadDetails.NumValuesPerNode == CAPS.history_values_per_request // 2
    with pytest.raises(UaStatusCodeError) as e:
        await client.uaclient.history_read(request(3))
    assert refused_with(e, SC.BadTooManyOperations)


@on_live
async def test_sessions_per_client_address_are_capped(live):
    _server, url, _client, refusals, _seen = live
    more = [Client(url) for _ in range(CAPS.sessions_per_client - 1)]  # the fixture's client holds one
    for c in more:
        await c.connect()
    extra = Client(url)
    with pytest.raises(UaStatusCodeError) as e:
        await extra.connect()
    assert refused_with(e, SC.BadTooManySessions)
    assert refusals[-1].service == "CreateSession" and refusals[-1].session is None
    extra.disconnect_socket()
    await more[0].disconnect()
    again = Client(url)  # a closed session gives its place back
    await again.connect()
    for c in [*more[1:], again]:
        await c.disconnect()


@on_live
async def test_a_connection_with_too_many_messages_waiting_is_closed(live):
    _server, url, _client, _refusals, _seen = live
    c = RawClient(url, "127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
    await c.session()
    # Sent at once, read at once: more than PENDING wait behind the one being processed.
    c.send(b"".join(c.encode(read_request([STATE])) for _ in range(5 * PENDING)))
    answers = await c.closed()
    assert answers.count(b"MSGF") < 5 * PENDING, "every request answered: the connection was not closed"
    await c.close()
