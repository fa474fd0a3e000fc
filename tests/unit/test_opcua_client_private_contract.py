"""Contract of drivers/opcua/asyncua_private.py with the installed asyncua (its client side).

That module is the only place the OPC UA client driver touches asyncua's client internals: a
Subscription subclass whose ``publish_callback`` replaces asyncua's, the watchdog fields that
callback keeps, the session service behind ``Client.uaclient``, and the helpers of
``Client.create_subscription``. Each test here checks one group of them -- names, signatures,
and behaviour on a real server and client on loopback -- and fails saying what changed. When
one fails after an asyncua upgrade: adapt drivers/opcua/asyncua_private.py (nothing else in
drivers/opcua should need it), then widen the asyncua pin in pyproject.toml to the versions
this file passes on.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import time
from types import SimpleNamespace

import pytest
from asyncua import Client, ua
from asyncua.client.ua_session import UaSession
from asyncua.common.subscription import Subscription

from drivers.opcua import asyncua_private as P
from tests.integration.helpers import DEADLINE, ROOT, plain_asyncua_server, until
from tests.private_uses import internal_uses

VERSION = importlib.metadata.version("asyncua")
MODULE = "drivers/opcua/asyncua_private.py"
# What only asyncua_private.py may name in drivers/opcua: the internals it stands for.
INTERNAL_NAMES = {
    "uaclient",
    "publish_callback",
    "last_publish_at",
    "last_sequence_number",
    "get_keepalive_count",
    "get_subscription_revised_params",
}


def relies(ok: bool, what: str) -> None:
    """Fail naming the asyncua internal that changed."""
    assert ok, f"asyncua {VERSION}: {what} -- {MODULE} relies on it"


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def subscription_params(interval: float = 50.0, keepalive: int = 3) -> ua.CreateSubscriptionParameters:
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval,
        RequestedLifetimeCount=10000,
        RequestedMaxKeepAliveCount=keepalive,
        MaxNotificationsPerPublish=10000,
        PublishingEnabled=True,
        Priority=0,
    )


class FakeSession:
    """Stands for the session service: records what a subscription registers with it."""

    def __init__(self) -> None:
        self.callback = None
        self.observer = SimpleNamespace(on_subscription_event=lambda *a: None, on_notification=lambda *a: None)

    async def create_subscription(self, params, callback):
        self.callback = callback
        return ua.CreateSubscriptionResult(
            SubscriptionId=5,
            RevisedPublishingInterval=params.RequestedPublishingInterval,
            RevisedLifetimeCount=params.RequestedLifetimeCount,
            RevisedMaxKeepAliveCount=params.RequestedMaxKeepAliveCount,
        )


def publish_result(sequence: int, data: list) -> ua.PublishResult:
    return ua.PublishResult(
        5, NotificationMessage=ua.NotificationMessage(SequenceNumber=sequence, NotificationData=data)
    )


# -- only one module touches asyncua's client internals ---------------------------------------


def test_no_other_driver_module_touches_asyncua_client_internals():
    """Outside asyncua_private.py, drivers/opcua imports ``asyncua`` itself and its public
    security API (``asyncua.crypto``) only, and names none of the internals the module stands for."""
    found = internal_uses(
        ROOT / "drivers" / "opcua", "asyncua_private.py", "asyncua", public={"asyncua.crypto"}, names=INTERNAL_NAMES
    )
    assert not found, f"asyncua client internals used outside {MODULE}: " + "; ".join(found)


# -- names and signatures -------------------------------------------------------------------


def test_the_client_internals_have_the_signatures_relied_on():
    relies(
        params(Subscription.__init__)[1:4] == ["server", "params", "handler"],
        "Subscription(server, params, handler, ...)",
    )
    relies(
        params(Subscription.publish_callback)[1:] == ["publish_result"]
        and inspect.iscoroutinefunction(Subscription.publish_callback),
        "async Subscription.publish_callback(publish_result)",
    )
    relies(params(Subscription.init)[1:] == [], "Subscription.init()")
    relies(params(Subscription.update)[1:] == ["params"], "Subscription.update(params)")
    relies(
        params(UaSession.create_subscription)[1:] == ["params", "callback"],
        "UaSession.create_subscription(params, callback)",
    )
    relies(params(Client.get_keepalive_count)[1:] == ["period"], "Client.get_keepalive_count(period)")
    relies(
        params(Client.get_subscription_revised_params)[1:] == ["params", "results"],
        "Client.get_subscription_revised_params(params, results)",
    )
    client = Client("opc.tcp://127.0.0.1:4840")
    relies(isinstance(P.session_service(client), UaSession), "Client.uaclient.session (a UaSession)")
    relies(
        P.keepalive_count(client, 500.0) == int(client.session_timeout / 500.0 * 0.75),
        "Client.get_keepalive_count: 75% of the session timeout in publishing intervals",
    )


def test_revised_parameters_are_returned_only_when_the_server_revises_the_interval():
    client = Client("opc.tcp://127.0.0.1:4840")
    asked = subscription_params(interval=100.0, keepalive=P.keepalive_count(client, 100.0))
    same = ua.CreateSubscriptionResult(
        SubscriptionId=9,
        RevisedPublishingInterval=100.0,
        RevisedLifetimeCount=asked.RequestedLifetimeCount,
        RevisedMaxKeepAliveCount=asked.RequestedMaxKeepAliveCount,
    )
    relies(
        client.get_subscription_revised_params(asked, same) is None,
        "Client.get_subscription_revised_params: None when nothing is revised",
    )
    slower = ua.CreateSubscriptionResult(
        SubscriptionId=9,
        RevisedPublishingInterval=1000.0,
        RevisedLifetimeCount=asked.RequestedLifetimeCount,
        RevisedMaxKeepAliveCount=asked.RequestedMaxKeepAliveCount,
    )
    revised = client.get_subscription_revised_params(asked, slower)
    relies(
        isinstance(revised, ua.ModifySubscriptionParameters)
        and revised.SubscriptionId == 9
        and revised.RequestedPublishingInterval == 1000.0
        and revised.RequestedMaxKeepAliveCount == P.keepalive_count(client, 1000.0),
        "Client.get_subscription_revised_params: ModifySubscriptionParameters with the keep-alive count of "
        "the revised interval",
    )


async def test_init_registers_the_subscriptions_publish_callback_with_the_session():
    session = FakeSession()
    sub = P.MessageSubscription(session, subscription_params(), lambda message: None)  # type: ignore[arg-type]
    relies(
        getattr(sub, "_event_queue", "missing") is None,
        "Subscription with a handler keeps no event queue (_event_queue is None)",
    )
    await sub.init()
    relies(
        session.callback == sub.publish_callback,
        "Subscription.init/_create registers self.publish_callback with the session's create_subscription",
    )
    relies(sub.subscription_id == 5, "Subscription.subscription_id from CreateSubscription's result")


async def test_asyncua_keeps_the_watchdog_fields_in_publish_callback_and_reads_them():
    """What the module's callback keeps up is what asyncua's own callback keeps and its
    watchdog and republish read."""
    sub = Subscription(FakeSession(), subscription_params(), handler=object())  # type: ignore[arg-type]
    relies(
        sub.last_publish_at is None and sub.last_sequence_number is None,
        "Subscription.last_publish_at / last_sequence_number (None until a publish)",
    )
    sub.subscription_id = 5
    t0 = time.monotonic()
    await Subscription.publish_callback(sub, publish_result(9, [ua.DataChangeNotification(MonitoredItems=[])]))
    relies(
        sub.last_publish_at is not None and sub.last_publish_at >= t0 and sub.last_sequence_number == 9,
        "Subscription.publish_callback sets last_publish_at and last_sequence_number",
    )
    sub.last_publish_at = stamp = time.monotonic() - 60
    await Subscription.publish_callback(sub, publish_result(10, []))  # a keep-alive
    relies(sub.last_publish_at > stamp, "Subscription.publish_callback: a keep-alive sets last_publish_at")
    sub.last_publish_at = time.monotonic() - 3600
    relies(sub.is_stale(1.5), "Subscription.is_stale reads last_publish_at (stale an hour after the last publish)")
    sub.last_publish_at = time.monotonic()
    relies(not sub.is_stale(1.5), "Subscription.is_stale reads last_publish_at (fresh just after a publish)")
    watchdog = getattr(Client, "_stale_watchdog_loop", None)
    relies(
        watchdog is not None and "is_stale" in inspect.getsource(watchdog),
        "Client._stale_watchdog_loop checks Subscription.is_stale",
    )
    republish = getattr(Subscription, "_republish_gaps", None)
    relies(
        republish is not None and "last_sequence_number" in inspect.getsource(republish),
        "Subscription._republish_gaps reads last_sequence_number",
    )


async def test_the_module_callback_hands_over_whole_messages_and_keeps_the_watchdog_fields():
    messages: list[ua.NotificationMessage] = []
    sub = P.MessageSubscription(FakeSession(), subscription_params(), messages.append)  # type: ignore[arg-type]
    await sub.init()
    data = ua.DataChangeNotification(MonitoredItems=[ua.MonitoredItemNotification(ClientHandle=1)])
    t0 = time.monotonic()
    await sub.publish_callback(publish_result(4, [data]))
    assert [m.SequenceNumber for m in messages] == [4] and messages[0].NotificationData == [data]
    assert sub.last_publish_at is not None and sub.last_publish_at >= t0 and sub.last_sequence_number == 4
    sub.last_publish_at = stamp = time.monotonic() - 60
    # A keep-alive: the clock only. (Its SequenceNumber is the next one to come, not a message to
    # republish: unlike asyncua's own callback, which takes it whenever NotificationData is not None.)
    await sub.publish_callback(publish_result(5, []))
    assert len(messages) == 1 and sub.last_sequence_number == 4 and sub.last_publish_at > stamp


# -- behaviour on a real server and client ---------------------------------------------------


@pytest.mark.integration
async def test_a_subscription_made_through_the_module_receives_data_changes_from_a_real_server():
    server, url, ns = await plain_asyncua_server("client-contract", "urn:client-contract")
    variable = await server.nodes.objects.add_variable(ns, "value", 1.0)
    await server.start()
    client = Client(url, timeout=5)
    try:
        await client.connect()
        messages: list[ua.NotificationMessage] = []
        sub = await P.create_subscription(client, subscription_params(interval=50.0, keepalive=3), messages.append)
        relies(
            isinstance(sub, Subscription) and sub.subscription_id is not None,
            "Subscription.init creates the subscription on the server",
        )
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=variable.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=7, SamplingInterval=0, QueueSize=1),
        )
        (handle,) = await sub.create_monitored_items([request])
        assert isinstance(handle, int), f"the server refused the monitored item: {handle}"

        def values() -> list[tuple[int, float]]:
            return [
                (item.ClientHandle, item.Value.Value.Value)
                for m in messages
                for n in m.NotificationData
                if isinstance(n, ua.DataChangeNotification)
                for item in n.MonitoredItems
            ]

        await until(lambda: (7, 1.0) in values(), DEADLINE, "the initial value through the module's callback")
        first = sub.last_sequence_number
        relies(
            first is not None and first == messages[-1].SequenceNumber,
            "the session's publish loop calls publish_callback with each PublishResult (last_sequence_number)",
        )
        await variable.write_value(2.5)
        await until(lambda: (7, 2.5) in values(), DEADLINE, "a server-side change through the module's callback")
        assert sub.last_sequence_number is not None and sub.last_sequence_number > first
        # Keep-alives (3 publishing intervals without data) move the watchdog's clock on.
        stamp, count = sub.last_publish_at, len(messages)
        assert stamp is not None
        await until(
            lambda: sub.last_publish_at is not None and sub.last_publish_at > stamp,
            10,
            "a keep-alive through publish_callback (last_publish_at)",
        )
        assert len(messages) == count, "keep-alives are not handed over"
    finally:
        try:
            async with asyncio.timeout(5):
                await client.disconnect()
        except Exception:  # noqa: BLE001 - the session may be gone already
            pass
        await server.stop()
