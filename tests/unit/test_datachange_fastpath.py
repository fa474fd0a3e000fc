"""The fast data change path end to end: a real HmiServer on loopback, asyncua's client.

What a client sees through the columnar queues and the vectorised encoder is what it saw
through asyncua's path: every value, status and timestamp written, in order per item; a
slow-path item (a percent deadband) beside fast ones in one subscription; monitoring modes;
a deleted item or a closed session stops at once and frees its rows.

One server serves the module (an asyncua server takes seconds to load its nodeset); each test
has a cabinet of its own, whose points no other test writes or watches, and starts once the
sessions of the tests before it are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Client, ua

from scada import status as st
from scada.opcua.server import HmiServer
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import DEADLINE, free_port, serving, until
from tests.leaks import tasks_left
from tests.more_notifications import record_more_notifications

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CABINETS = 7  # one per test
DEVICES = "\ndevices:\n" + "".join(
    f'  - {{name: LC-{k}, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.{k}:502"}}\n'
    for k in range(1, CABINETS + 1)
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_790_000_000_000_000_000


class Seen:
    """Every notification, in arrival order: (tag name, value, status, source time)."""

    def __init__(self, hmi: Cabinet) -> None:
        self.prefix = hmi.prefix
        self.rows: list[tuple[str, object, int, datetime | None]] = []

    def datachange_notification(self, node, val, data) -> None:
        dv = data.monitored_item.Value
        self.rows.append((str(node.nodeid.Identifier), val, dv.StatusCode.value, dv.SourceTimestamp))

    def of(self, point: str) -> list[tuple[object, int, datetime | None]]:
        return [(v, s, t) for n, v, s, t in self.rows if n == self.prefix + point]


def when(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


class Cabinet:
    """The module's server, seen through one test's cabinet: ``prefix`` names its points."""

    def __init__(self, server: HmiServer, name: str) -> None:
        self.server, self.prefix = server, f"Talant/lighting/{name}/"
        self.tagdb, self.publisher, self.endpoint, self.ns = server.tagdb, server.publisher, server.endpoint, server.ns


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    config = configs.write_config(tmp_path_factory.mktemp("fastpath"), DEVICES, "alarms: []\n")
    tagdb = TagDB(*config.tag_table())
    server = HmiServer(config, tagdb, f"opc.tcp://127.0.0.1:{free_port()}/scada/")
    async with serving(server):
        yield server
    left = await tasks_left()
    assert not left, f"the module's server left asyncio tasks pending: {left}"


@pytest.fixture(scope="module")
def cabinets():
    return itertools.count(1)


@pytest_asyncio.fixture(loop_scope="module")
async def hmi(server: HmiServer, cabinets):
    """A cabinet no test has used, once the sessions of the tests before are closed."""
    k = next(cabinets)
    assert k <= CABINETS, "one more cabinet in DEVICES for the new test"
    await until(lambda: not server.publisher._queues, DEADLINE, "the sessions of the tests before closed")
    return Cabinet(server, f"LC-{k}")


@contextlib.asynccontextmanager
async def client_of(hmi: Cabinet):
    async with Client(hmi.endpoint, timeout=10) as client:
        yield client


def node(client: Client, hmi: Cabinet, point: str):
    return client.get_node(ua.NodeId(hmi.prefix + point, hmi.ns))


def tag(hmi: Cabinet, point: str) -> int:
    return hmi.tagdb.id_of(hmi.prefix + point)


def write(hmi: Cabinet, point: str, value: float, status: int = st.GOOD, at: int = T0) -> None:
    hmi.tagdb.update(np.array([tag(hmi, point)]), np.array([value]), status, at)


async def test_fast_items_see_every_value_status_and_timestamp_in_order(hmi):
    assert hmi.publisher is not None
    seen = Seen(hmi)
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        await sub.subscribe_data_change([node(client, hmi, "power"), node(client, hmi, "lamps_on")], queuesize=100)
        await until(lambda: len(seen.rows) == 2, DEADLINE, "the first values")
        assert hmi.publisher.n_fast[tag(hmi, "power")] == 1 and not hmi.publisher.watched[tag(hmi, "power")]
        written = []
        for k in range(1, 41):
            status = st.BAD_COMMUNICATION_ERROR if k % 7 == 0 else st.GOOD
            write(hmi, "power", float(k) / 4, status, T0 + k * 1_000_123)
            written.append((float(k) / 4, status, when(T0 + k * 1_000_123)))
            write(hmi, "lamps_on", float(k % 2), at=T0 + k * 1_000_123)
            if k % 5 == 0:
                await asyncio.sleep(0)  # let the publisher and the publishes interleave with the writes
        await until(lambda: len(seen.of("power")) == len(seen.of("lamps_on")) == 41, DEADLINE, "every value")
        assert seen.of("power")[1:] == written
        assert [v for v, _, _ in seen.of("lamps_on")[1:]] == [bool(k % 2) for k in range(1, 41)]
        await sub.delete()


async def test_a_slow_path_item_and_fast_items_share_a_subscription(hmi):
    seen = Seen(hmi)
    # asyncua's deadband test fails on a Null previous value (None - float): start from a value.
    published = hmi.publisher.published
    write(hmi, "temperature", 20.0)
    await until(lambda: hmi.publisher.published > published, DEADLINE, "the first temperature published")
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        await sub.subscribe_data_change([node(client, hmi, "power"), node(client, hmi, "Diagnostics/last_error")])
        await sub.deadband_monitor(node(client, hmi, "temperature"), 5.0, deadbandtype=2)  # percent: asyncua's path
        await until(lambda: len(seen.rows) == 3, DEADLINE, "the first values")
        assert hmi.publisher.watched[tag(hmi, "temperature")] and not hmi.publisher.n_fast[tag(hmi, "temperature")]
        write(hmi, "temperature", 21.5)
        write(hmi, "power", 3.5)
        hmi.tagdb.update_text([tag(hmi, "Diagnostics/last_error")], ["no answer"], st.GOOD)
        await until(lambda: len(seen.rows) == 6, DEADLINE, "one more value of each")
        # A status-only change of a text keeps its text (the tag keeps its last value).
        hmi.tagdb.set_status(np.array([tag(hmi, "Diagnostics/last_error")]), st.BAD_COMMUNICATION_ERROR)
        await until(lambda: len(seen.of("Diagnostics/last_error")) == 3, DEADLINE, "the status change")
        assert [v for v, _, _ in seen.of("temperature")] == [20.0, 21.5]
        assert [v for v, _, _ in seen.of("power")][1:] == [3.5]
        assert [(v, s) for v, s, _ in seen.of("Diagnostics/last_error")][1:] == [
            ("no answer", st.GOOD),
            ("no answer", st.BAD_COMMUNICATION_ERROR),
        ]
        await sub.delete()


async def test_monitoring_modes(hmi):
    seen = Seen(hmi)
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        await sub.subscribe_data_change(node(client, hmi, "power"), queuesize=10)
        await until(lambda: len(seen.rows) == 1, DEADLINE, "the first value")
        await sub.set_monitoring_mode(ua.MonitoringMode.Sampling)
        published = hmi.publisher.published
        for v in (1.0, 2.0, 3.0):
            write(hmi, "power", v)
        await until(lambda: hmi.publisher.published >= published + 3, DEADLINE, "the writes published")
        await sub.set_monitoring_mode(ua.MonitoringMode.Reporting)
        await until(lambda: len(seen.rows) == 4, DEADLINE, "what was sampled")
        assert [v for v, _, _ in seen.of("power")] == [None, 1.0, 2.0, 3.0]
        await sub.set_monitoring_mode(ua.MonitoringMode.Disabled)
        write(hmi, "power", 4.0)
        write(hmi, "power", 5.0)
        await until(lambda: hmi.publisher.published >= published + 5, DEADLINE, "the writes published")
        await sub.set_monitoring_mode(ua.MonitoringMode.Reporting)  # its current value, nothing of the pause
        write(hmi, "power", 6.0)
        await until(lambda: len(seen.rows) == 6, DEADLINE, "the value on enabling, then the next")
        assert [v for v, _, _ in seen.of("power")][4:] == [5.0, 6.0]
        await sub.delete()


async def test_a_deleted_item_and_a_closed_session_stop_at_once_and_free_their_rows(hmi):
    pub = hmi.publisher
    seen = Seen(hmi)
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        power, energy = await sub.subscribe_data_change([node(client, hmi, "power"), node(client, hmi, "energy")])
        await until(lambda: len(seen.rows) == 2, DEADLINE, "the first values")
        [queue] = pub._queues.values()
        assert len(queue) == 2
        await sub.unsubscribe(power)
        assert pub.n_fast[tag(hmi, "power")] == 0 and len(queue) == 1
        write(hmi, "power", 9.0)
        write(hmi, "energy", 9.0)
        await until(lambda: len(seen.of("energy")) == 2, DEADLINE, "the energy value written after the power one")
        assert [v for v, _, _ in seen.of("power")] == [None]
    # The session is closed: its subscription, items, rows and queue are gone.
    await until(lambda: not pub._queues, DEADLINE, "the closed session's queue dropped")
    assert not pub.n_fast.any() and queue.n_pending == 0 and queue.items.size == 0


async def test_an_absolute_deadband_and_a_status_trigger_through_a_client(hmi):
    seen = Seen(hmi)
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        await sub.deadband_monitor(node(client, hmi, "mains_voltage"), 1.0, deadbandtype=1, queuesize=10)
        status_only = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.Status)
        await sub._subscribe(node(client, hmi, "dim_level"), mfilter=status_only, queuesize=10)
        await until(lambda: len(seen.rows) == 2, DEADLINE, "the first values")
        assert hmi.publisher.n_fast[[tag(hmi, "mains_voltage"), tag(hmi, "dim_level")]].tolist() == [1, 1]
        for v in (230.0, 230.5, 231.2, 232.0):
            write(hmi, "mains_voltage", v)
            write(hmi, "dim_level", v)
        write(hmi, "mains_voltage", 232.0, st.BAD_COMMUNICATION_ERROR)
        write(hmi, "dim_level", 232.0, st.BAD_COMMUNICATION_ERROR)
        await until(lambda: len(seen.of("dim_level")) == 3, DEADLINE, "the status changes")
        await until(lambda: len(seen.of("mains_voltage")) == 4, DEADLINE, "the voltage beyond its deadband, then its status")
        # 230.5 is within 1.0 of 230; 231.2 is beyond it; 232.0 is within 1.0 of 231.2.
        assert [(v, s) for v, s, _ in seen.of("mains_voltage")][1:] == [
            (230.0, st.GOOD),
            (231.2, st.GOOD),
            (232.0, st.BAD_COMMUNICATION_ERROR),
        ]
        # Status only: the first value (Bad_NoCommunication, no value), Good, then Bad again.
        assert [(v, s) for v, s, _ in seen.of("dim_level")][1:] == [
            (230.0, st.GOOD),
            (232.0, st.BAD_COMMUNICATION_ERROR),
        ]
        await sub.delete()


async def test_max_notifications_per_publish_sets_more_notifications_and_loses_nothing(hmi):
    seen = Seen(hmi)
    points = ["power", "energy", "lamps_on", "mains_voltage", "dim_level"]
    async with client_of(hmi) as client:
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=20,
            RequestedLifetimeCount=1000,
            RequestedMaxKeepAliveCount=10,
            MaxNotificationsPerPublish=2,
            PublishingEnabled=True,
        )
        sub = await client.create_subscription(params, seen)
        more = record_more_notifications(client, sub.subscription_id)  # MoreNotifications, in order
        await sub.subscribe_data_change([node(client, hmi, p) for p in points], queuesize=10)
        await until(lambda: len(seen.rows) == 5, DEADLINE, "the first values")
        assert hmi.publisher.n_fast[[tag(hmi, p) for p in points]].tolist() == [1] * 5
        for k in range(1, 4):
            for p in points:
                write(hmi, p, float(k))
        await until(lambda: len(seen.rows) == 20, DEADLINE, "every value, two per publish")
        for p in points:
            assert [v for v, _, _ in seen.of(p)][1:] in ([1.0, 2.0, 3.0], [True, True, True])
        # The budget held rows back: those messages say so; the last one of a burst does not.
        assert True in more and more[-1] is False
        await sub.delete()


async def test_an_item_modified_to_asyncua_s_path_keeps_its_pending_values(hmi):
    pub = hmi.publisher
    seen = Seen(hmi)
    first = pub.published
    write(hmi, "temperature", 20.0)  # asyncua's percent deadband needs a previous value
    await until(lambda: pub.published > first, DEADLINE, "the first temperature published")
    async with client_of(hmi) as client:
        sub = await client.create_subscription(20, seen)
        mid = await sub.subscribe_data_change(node(client, hmi, "temperature"), queuesize=10)
        await until(lambda: len(seen.rows) == 1, DEADLINE, "the first value")
        assert pub.n_fast[tag(hmi, "temperature")] == 1
        await sub.set_publishing_mode(False)  # the next values wait in the fast queue
        base = pub.published
        for v in (21.0, 22.0, 23.0):
            write(hmi, "temperature", v)
        await until(lambda: pub.published >= base + 3, DEADLINE, "the values queued")
        [client_handle] = [h for h, d in sub._monitored_items.items() if d.server_handle == mid]
        percent = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue, DeadbandType=ua.DeadbandType.Percent, DeadbandValue=5.0
        )
        request = ua.MonitoredItemModifyRequest(
            MonitoredItemId=mid,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=client_handle, QueueSize=10, Filter=percent),
        )
        modify = ua.ModifyMonitoredItemsParameters(SubscriptionId=sub.subscription_id, ItemsToModify=[request])
        [result] = await client.uaclient.modify_monitored_items(modify)
        assert result.StatusCode.is_good()
        # On asyncua's path now (a percent deadband), with the values it had not sent yet.
        assert pub.n_fast[tag(hmi, "temperature")] == 0 and pub.watched[tag(hmi, "temperature")]
        await sub.set_publishing_mode(True)
        await until(lambda: len(seen.rows) == 4, DEADLINE, "the values queued before the modification")
        write(hmi, "temperature", 60.0)  # beyond the deadband: asyncua's path sends it
        await until(lambda: len(seen.rows) == 5, DEADLINE, "a value after the modification")
        assert [v for v, _, _ in seen.of("temperature")] == [20.0, 21.0, 22.0, 23.0, 60.0]
        await sub.delete()
