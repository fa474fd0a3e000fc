"""Contract of scada/opcua/asyncua_private/datachange.py (the fast data change path and the
monitored item services it follows) with the installed asyncua.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import numpy as np
from asyncua import ua

from scada.opcua.asyncua_private import datachange as P
from scada.opcua.asyncua_private import sessions as private_sessions
from scada.opcua.asyncua_private import subscriptions as private_subscriptions
from scada.opcua.publisher import Watchers
from tests.asyncua_contract import OI, A, Handler, dv, params, relied_on, running, until
from tests.more_notifications import record_more_notifications

relies = relied_on("scada/opcua/asyncua_private/datachange.py")


def test_fast_datachange_internals_have_the_shape_relied_on():
    from asyncua.server.internal_subscription import InternalSubscription
    from asyncua.server.monitored_item_service import MonitoredItemService
    from asyncua.server.subscription_service import SubscriptionService
    from asyncua.ua.ua_binary import struct_to_binary

    relies(
        params(InternalSubscription._pop_triggered_datachanges) == ["self", "result"],
        "InternalSubscription._pop_triggered_datachanges(result) builds the DataChangeNotification",
    )
    src = inspect.getsource(InternalSubscription)
    relies(
        "self._triggered_datachanges or self._triggered_events" in src,
        "has_published_results tests _triggered_datachanges for truth",
    )
    relies("self._pop_triggered_datachanges(result)" in src, "_pop_publish_result calls _pop_triggered_datachanges")
    relies(
        params(InternalSubscription._pop_publish_result) == ["self"]
        and "result = self._pop_publish_result()" in inspect.getsource(InternalSubscription.publish_results),
        "publish_results builds its PublishResult with self._pop_publish_result() (hook_more_notifications)",
    )
    relies(
        "result.MoreNotifications = False" in inspect.getsource(InternalSubscription._pop_publish_result),
        "_pop_publish_result writes MoreNotifications itself (hook_more_notifications sets it after)",
    )
    relies(
        params(InternalSubscription.publish_results) == ["self", "requestdata"],
        "publish_results(requestdata=None) takes a queued Publish request or waits for the next",
    )
    relies("self._closing" in inspect.getsource(InternalSubscription.__init__), "InternalSubscription._closing")
    for name in ("pub_request_callback", "max_queue_size", "_triggered_datachanges", "data", "monitored_item_srv"):
        relies(f"self.{name}" in inspect.getsource(InternalSubscription.__init__), f"InternalSubscription.{name}")
    relies(
        params(MonitoredItemService.datachange_callback)[:3] == ["self", "handle", "value"],
        "MonitoredItemService.datachange_callback(handle, value) is the registered callback",
    )
    init = inspect.getsource(MonitoredItemService.__init__)
    for name in ("isub", "_monitored_items", "_monitored_datachange"):
        relies(f"self.{name}" in init, f"MonitoredItemService.{name}")
    item = private_subscriptions.MonitoredItemData()
    for name in ("mode", "read_value_id", "callback_handle", "monitored_item_id", "client_handle", "queue_size"):
        relies(hasattr(item, name), f"MonitoredItemData.{name}")
    for name, args in (
        ("create_subscription", ["self", "params", "callback", "session_id", "request_callback"]),
        ("modify_subscription", ["self", "params"]),
        ("create_monitored_items", ["self", "params"]),
        ("modify_monitored_items", ["self", "params"]),
        ("set_monitoring_mode", ["self", "params"]),
    ):
        relies(params(getattr(SubscriptionService, name)) == args, f"SubscriptionService.{name}{tuple(args[1:])}")
    body = b"\x01\x02\x03"
    ext = ua.ExtensionObject(TypeId=ua.NodeId(OI.DataChangeNotification_Encoding_DefaultBinary), Body=body)
    relies(
        struct_to_binary(ext).endswith(len(body).to_bytes(4, "little") + body),
        "an ExtensionObject's Body is written as it is",
    )


def watch(own) -> Watchers:
    """The test variable's datachange callbacks, as scada.opcua's tag variables keep them."""
    watchers = Watchers()
    watchers.mask, watchers.tag = np.zeros(1, bool), 0
    own.value_attr.datachange_callbacks = watchers
    return watchers


def subscription_params(interval: float, max_notifications: int) -> ua.CreateSubscriptionParameters:
    """A subscription that publishes nothing before the test looks."""
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval,
        RequestedLifetimeCount=1000,
        RequestedMaxKeepAliveCount=10,
        MaxNotificationsPerPublish=max_notifications,
        PublishingEnabled=False,
    )


class _Rows:
    """A stand-in for scada.opcua.fastqueue.DataChangeQueue: fixed encoded rows, popped once."""

    def __init__(self, client_handle: int, values: list[float]) -> None:
        from scada.opcua.datachange import DOUBLE, encode_items

        n = len(values)
        self.items = encode_items(
            np.full(n, client_handle), np.full(n, DOUBLE), np.array(values), np.zeros(n), np.zeros(n), np.zeros(n)
        )
        self.count = n
        self.budgets: list[int | None] = []

    def ready(self) -> bool:
        return self.count > 0

    def pop(self, budget: int | None = None) -> tuple[int, bytes]:
        self.budgets.append(budget)
        out, self.count, self.items = (self.count, self.items), 0, b""
        return out


async def test_fast_datachange_hooks_on_a_live_server():
    """Items are found from their callbacks, the services are hooked (DiscardOldest and
    MaxNotificationsPerPublish recorded, ``changed`` called), and bytes from our queue reach the
    client in the same DataChangeNotification as asyncua's own notifications."""
    async with running() as own:
        changed: list[tuple[object, list[int]]] = []
        P.hook_monitored_items(own.server, lambda sub, mids: changed.append((sub, mids)))
        P.hook_monitored_items(own.server, lambda sub, mids: None)  # idempotent
        watchers = watch(own)
        handler = Handler()
        params_ = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=20,
            RequestedLifetimeCount=1000,
            RequestedMaxKeepAliveCount=10,
            MaxNotificationsPerPublish=7,
            PublishingEnabled=False,  # nothing is sent before we look
        )
        sub = await own.client.create_subscription(params_, handler)
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=own.nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=201, QueueSize=5, DiscardOldest=False),
        )
        [mid] = await sub.create_monitored_items([request])
        relies(isinstance(mid, int), "CreateMonitoredItems through the hooked service")
        [(handle, callback)] = list(watchers.items())
        isub = P.datachange_subscription(callback)
        relies(
            isub is not None and isub.data.SubscriptionId == sub.subscription_id,
            "the datachange callback is bound to the subscription's MonitoredItemService",
        )
        item = P.datachange_item(isub, handle)
        relies(
            item is not None and item.client_handle == 201 and item.monitored_item_id == mid,
            "_monitored_datachange maps the callback handle to the monitored item",
        )
        relies(changed == [(isub, [mid])], "the create hook reports the created items")
        relies(
            not P.discard_oldest(item) and P.max_notifications(isub) == 7,
            "DiscardOldest and MaxNotificationsPerPublish are recorded",
        )
        queued = P.take_queued_datachanges(isub, mid)
        relies(
            [n.Value.Value.Value for n in queued] == [42.0],
            "the first value of a new item is queued in _triggered_datachanges[mid]",
        )
        relies(P.datachange_subscription(lambda h, dv: None) is None, "a callback of anything else is not a client's")
        await sub.set_monitoring_mode(ua.MonitoringMode.Reporting)
        relies(changed[-1] == (isub, [mid]), "the SetMonitoringMode hook reports the items")
        rows = _Rows(201, [1.0, 2.0, 3.0])
        P.hook_datachange_publish(isub, rows)
        await callback(handle, ua.DataValue(ua.Variant(0.5, ua.VariantType.Double)))  # asyncua's own path, first
        await sub.set_publishing_mode(True)
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(4)]
        relies(got == [0.5, 1.0, 2.0, 3.0], f"asyncua's notifications then our encoded rows, in one publish: {got}")
        relies(rows.budgets and rows.budgets[0] == 6, "the queue's budget is MaxNotificationsPerPublish less asyncua's")
        await sub.delete()


class _Chunks:
    """A stand-in for DataChangeQueue: values popped at most ``budget`` at a time; ``more`` after a
    pop that left some."""

    def __init__(self, client_handle: int, values: list[float]) -> None:
        self.client_handle, self.values = client_handle, list(values)
        self.held_back = False

    def ready(self) -> bool:
        return bool(self.values)

    def more(self) -> bool:
        return self.held_back

    def pop(self, budget: int | None = None) -> tuple[int, bytes]:
        from scada.opcua.datachange import DOUBLE, encode_items

        n = len(self.values) if budget is None else min(budget, len(self.values))
        out, self.values = self.values[:n], self.values[n:]
        self.held_back = bool(self.values)
        zeros = np.zeros(n)
        return n, encode_items(np.full(n, self.client_handle), np.full(n, DOUBLE), np.array(out), zeros, zeros, zeros)


async def test_more_notifications_are_flagged_and_sent_at_the_next_publish_request():
    """hook_more_notifications: a NotificationMessage that leaves rows says MoreNotifications, and
    the rest goes with the next Publish request, not at the next publishing interval (100 s here);
    requeue_datachanges puts notifications on asyncua's own queue of an item."""
    async with running() as own:
        P.hook_monitored_items(own.server, lambda sub, mids: None)
        watchers = watch(own)
        handler = Handler()
        sub = await own.client.create_subscription(subscription_params(100_000, 2), handler)
        more = record_more_notifications(own.client, sub.subscription_id)  # MoreNotifications, in order
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=own.nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=301, QueueSize=5),
        )
        [mid] = await sub.create_monitored_items([request])
        [(_, callback)] = list(watchers.items())
        isub = P.datachange_subscription(callback)
        assert isub is not None
        P.take_queued_datachanges(isub, mid)  # the first value: not part of this test
        chunks = _Chunks(301, [1.0, 2.0, 3.0, 4.0, 5.0])
        P.hook_datachange_publish(isub, chunks)
        P.hook_more_notifications(isub, chunks.more)
        P.hook_more_notifications(isub, chunks.more)  # idempotent
        await sub.set_publishing_mode(True)
        await isub.publish_results()  # one publishing cycle, as the subscription's loop runs it
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(5)]
        relies(got == [1.0, 2.0, 3.0, 4.0, 5.0], f"the rest follows with the next Publish requests: {got}")
        relies(more == [True, True, False], f"MoreNotifications set on the messages that left rows: {more}")
        notes = [ua.MonitoredItemNotification(ClientHandle=301, Value=dv(v, ua.VariantType.Double)) for v in (6.0, 7.0)]
        P.requeue_datachanges(isub, mid, notes)
        relies(isub.has_published_results(), "a requeued notification makes the next cycle publish")
        await isub.publish_results()
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(2)]
        relies(got == [6.0, 7.0], f"requeued notifications are sent by asyncua's path: {got}")
        await sub.delete()


def value_items(nodeid: ua.NodeId, first_handle: int, n: int) -> list[ua.MonitoredItemCreateRequest]:
    """``n`` items monitoring ``nodeid``'s Value, client handles from ``first_handle``."""
    return [
        ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=first_handle + k, QueueSize=1),
        )
        for k in range(n)
    ]


async def test_keep_alives_after_publishing_is_disabled_say_no_more_notifications():
    """A message cut by MaxNotificationsPerPublish says MoreNotifications; once the client disables
    publishing, the keep-alives that follow carry no data and must not say it, nor come early
    (review: every keep-alive said TRUE and one more came than MaxKeepAliveCount allows)."""
    data = ua.CreateSubscriptionResult(
        SubscriptionId=1, RevisedPublishingInterval=1000, RevisedLifetimeCount=300, RevisedMaxKeepAliveCount=3
    )
    sent: list[ua.PublishResult] = []

    async def deliver(result: ua.PublishResult, request: object = None) -> None:
        sent.append(result)

    sub = private_subscriptions.InternalSubscription(
        data, None, deliver, session_id=ua.NodeId(1), request_callback=lambda sid: object()
    )
    chunks = _Chunks(301, [1.0, 2.0, 3.0, 4.0, 5.0])
    P.hook_datachange_publish(sub, chunks)
    P.hook_more_notifications(sub, chunks.more)
    sub._scada_max_notifications = 2
    await sub.publish_results()  # 2 of 5: the rest is held back
    relies(len(sent) == 1 and sent[0].MoreNotifications, "a message cut by the budget says MoreNotifications")
    await sub.set_publishing_mode(False)
    for _ in range(6):  # six publishing cycles, publishing disabled: two keep-alives
        await sub.publish_results()
        await asyncio.sleep(0)  # a pending "publish the rest" runs
    keep_alives = sent[1:]
    relies(all(not r.NotificationMessage.NotificationData for r in keep_alives), "keep-alives carry no data")
    relies(
        [r.MoreNotifications for r in keep_alives] == [False, False],
        f"two keep-alives in six cycles (MaxKeepAliveCount 3), neither says more: "
        f"{[r.MoreNotifications for r in keep_alives]}",
    )


async def test_a_large_create_monitored_items_lets_the_loop_run_between_chunks():
    """hook_monitored_items creates a large request's items in chunks of CREATE_CHUNK with a yield
    between them (other subscriptions publish meanwhile): same items, same results, in order."""
    async with running() as own:
        ticks = 0
        calls: list[tuple[int, int]] = []  # (items reported, ticks then)

        def changed(sub, mids: list[int]) -> None:
            calls.append((len(mids), ticks))

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        P.hook_monitored_items(own.server, changed)
        sub = await own.client.create_subscription(subscription_params(50, 0), Handler())
        n = 2 * P.CREATE_CHUNK + 50
        requests = value_items(own.nodeid, 1000, n)
        task = asyncio.create_task(ticker())
        try:
            mids = await sub.create_monitored_items(requests)
        finally:
            task.cancel()
        assert [count for count, _ in calls] == [P.CREATE_CHUNK, P.CREATE_CHUNK, 50]
        assert calls[0][1] < calls[1][1] < calls[2][1], f"the loop ran between the chunks: {calls}"
        assert len(mids) == n and mids == sorted(mids) and all(isinstance(m, int) for m in mids)
        await sub.delete()


async def test_no_value_of_a_chunked_create_is_published_before_its_response(monkeypatch):
    """While hook_monitored_items creates a large request in chunks, the subscription publishes
    nothing: a client learns its items' ids from the Create response, and one that registers them
    from it would drop values sent before (the reviewer saw 200 of 2,000 go out first)."""
    from asyncua.server.uaprocessor import UaProcessor

    sent: list[str] = []  # the server's responses with data or items, in the order they are written
    keep_alives = received = 0  # Publish responses without data sent; Publish requests received
    send, publish = UaProcessor.send_response, private_sessions.InternalSession.publish

    def count(self, *args, **kw):
        nonlocal received
        received += 1
        return publish(self, *args, **kw)

    def spy(self, requesthandle, seqhdr, response, *args, **kw):
        nonlocal keep_alives
        name = type(response).__name__
        if name == "PublishResponse" and not response.Parameters.NotificationMessage.NotificationData:
            keep_alives += 1
        elif name in ("CreateMonitoredItemsResponse", "PublishResponse"):
            sent.append(name)
        return send(self, requesthandle, seqhdr, response, *args, **kw)

    def heavy(sub, mids: list[int]) -> None:
        # Each chunk costs more than a publishing interval, as 10,000 items do in the front:
        # the subscription's loop is due at every yield between two chunks.
        time.sleep(0.015)

    monitored = 3 * P.CREATE_CHUNK
    async with running() as own:
        monkeypatch.setattr(UaProcessor, "send_response", spy)
        monkeypatch.setattr(private_sessions.InternalSession, "publish", count)
        P.hook_monitored_items(own.server, heavy)
        handler = Handler()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=10, RequestedLifetimeCount=30000, RequestedMaxKeepAliveCount=10000
        )
        sub = await own.client.create_subscription(params, handler)
        # The server holds a Publish request to publish with while the items are created: one
        # more received than answered (the first answer is the subscription's start; keep-alives
        # are far apart).
        await until(lambda: received > keep_alives >= 1, what="a Publish request waiting in the server")
        requests = value_items(own.nodeid, 2000, monitored)
        await sub.create_monitored_items(requests)
        for _ in range(monitored):  # every first value arrives, after the response
            await asyncio.wait_for(handler.values.get(), 30)
        relies(
            sent and sent[0] == "CreateMonitoredItemsResponse",
            f"the Create response is written before any data of its subscription: {sent[:3]}",
        )
        await sub.delete()
