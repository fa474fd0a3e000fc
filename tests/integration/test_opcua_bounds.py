"""The HMI server's bounds, on a real HmiServer on loopback: with security settings, each cap
refuses with its status code, is audited and is what ServerCapabilities advertise; without them
(no security layer), the transport checks still close a connection announcing an oversized chunk.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from scada.opcua.server import HmiServer
from scada.security.audit import MemoryAudit
from scada.security.identity import Role
from scada.security.settings import Limits, SecuritySettings
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving
from tests.opcua_wire import RawClient, error_of, header

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SC = ua.StatusCodes
OL = ua.ObjectIds
DEVICES = (
    "\ndevices:\n"
    '  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}\n'
)
LIMITS = Limits(
    sessions_per_client=3,
    subscriptions_per_session=2,
    monitored_items_per_session=4,
    nodes_per_request=6,
    history_nodes_per_request=2,
    monitored_item_queue_size=5,
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured(tmp_path_factory):
    """An HmiServer with security settings: a None endpoint and anonymous Observers (what the
    demo allows), small limits."""
    folder = tmp_path_factory.mktemp("bounds")
    config = configs.write_config(folder, DEVICES, "alarms: []\n")
    settings = dataclasses.replace(
        SecuritySettings.defaults(folder / "data"),
        allow_none=True,
        anonymous=frozenset({Role.OBSERVER}),
        limits=LIMITS,
    )
    audit = MemoryAudit()
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    hmi = HmiServer(config, TagDB(*config.tag_table()), url, security=settings, audit=audit)
    async with serving(hmi):
        yield hmi, url, audit


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_what_is_enforced_is_advertised(secured):
    _hmi, url, _audit = secured
    async with Client(url, timeout=10) as client:

        async def value(nodeid: int) -> int:
            return await client.get_node(ua.NodeId(nodeid)).read_value()

        for nodeid in (
            OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
            OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerMethodCall,
            OL.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        ):
            assert await value(nodeid) == LIMITS.nodes_per_request
        assert await value(OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData) == 2
        assert await value(OL.Server_ServerCapabilities_MaxSubscriptionsPerSession) == 2
        assert await value(OL.Server_ServerCapabilities_MaxMonitoredItemsQueueSize) == 5


async def test_too_many_operations_are_refused_whole_and_audited(secured):
    hmi, url, audit = secured
    async with Client(url, timeout=10) as client:
        state = client.get_node(ua.NodeId(OL.Server_ServerStatus_State))
        assert len(await client.read_values([state] * LIMITS.nodes_per_request)) == LIMITS.nodes_per_request
        with pytest.raises(UaStatusCodeError) as e:
            await client.read_values([state] * (LIMITS.nodes_per_request + 1))
        assert e.value.code == SC.BadTooManyOperations
        [rec] = [r for r in audit.records if r.target == "Read"]  # counted before the request was decoded
        assert (rec.action, rec.result) == ("limit", "BadTooManyOperations")
        assert rec.client_address.startswith("127.0.0.1:")
        with pytest.raises(UaStatusCodeError) as e:
            await client.browse_nodes([client.nodes.objects] * (LIMITS.nodes_per_request + 1))
        assert e.value.code == SC.BadTooManyOperations
        assert audit.records[-1].target == "Browse" and audit.records[-1].result == "BadTooManyOperations"
        history = ua.HistoryReadParameters(
            HistoryReadDetails=ua.ReadRawModifiedDetails(NumValuesPerNode=10),
            NodesToRead=[ua.HistoryReadValueId(NodeId=state.nodeid)] * (LIMITS.history_nodes_per_request + 1),
        )
        with pytest.raises(UaStatusCodeError) as e:
            await client.uaclient.history_read(history)
        assert e.value.code == SC.BadTooManyOperations
        assert audit.records[-1].target == "HistoryRead"
        subs = [await client.create_subscription(60000, None) for _ in range(LIMITS.subscriptions_per_session)]
        with pytest.raises(UaStatusCodeError) as e:
            await client.create_subscription(60000, None)
        assert e.value.code == SC.BadTooManySubscriptions
        assert audit.records[-1].action == "subscription" and audit.records[-1].result == "BadTooManySubscriptions"
        items = [client.get_node(ua.NodeId(f"Talant/lighting/LC-1/{p}", hmi.ns)) for p in ("power", "mains_voltage")]
        await subs[0].subscribe_data_change(items * 2)
        with pytest.raises(UaStatusCodeError) as e:
            await subs[1].subscribe_data_change(items[:1])
        assert e.value.code == SC.BadTooManyMonitoredItems


async def test_an_oversized_chunk_is_refused_at_once_and_audited(secured):
    _hmi, url, audit = secured
    c = RawClient(url, "127.0.0.1", port_of(url))
    await c.connect()
    await c.hello()
    t0 = time.monotonic()
    c.send(header(b"MSG", 128 << 20) + bytes(65536))
    error = error_of(await c.closed())
    assert error is not None and error.Error.value == SC.BadTcpMessageTooLarge
    assert time.monotonic() - t0 < 5  # at once, not at a timeout
    await c.close()
    rec = audit.records[-1]
    assert (rec.action, rec.target, rec.result) == ("limit", "connection", "BadTcpMessageTooLarge")


async def test_without_security_settings_the_transport_is_checked_all_the_same(tmp_path):
    config = configs.write_config(tmp_path, DEVICES, "alarms: []\n")
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    hmi = HmiServer(config, TagDB(*config.tag_table()), url)
    async with serving(hmi):
        c = RawClient(url, "127.0.0.1", port_of(url))
        await c.connect()
        await c.hello()
        c.send(header(b"MSG", 128 << 20) + bytes(65536))
        error = error_of(await c.closed())
        assert error is not None and error.Error.value == SC.BadTcpMessageTooLarge
        await c.close()
        async with Client(url, timeout=10) as client:  # and nothing else changes for a client
            state = client.get_node(ua.NodeId(OL.Server_ServerStatus_State))
            assert len(await client.read_values([state] * 50)) == 50
