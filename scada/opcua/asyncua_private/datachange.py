"""asyncua internals: the fast data change path (scada/opcua/publisher.py, scada/opcua/fastqueue.py)
and the monitored item services it follows; checked by tests/unit/test_asyncua_private_datachange.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, cast

from asyncua import Server, ua
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemData, MonitoredItemService
from asyncua.ua.ua_binary import struct_to_binary

from scada.opcua.asyncua_private.subscriptions import monitored_item
from scada.opcua.datachange import notification_body
from scada.opcua.typed_ua import NodeId, StatusCode

__all__ = [
    "CREATE_CHUNK",
    "DataChangeSource",
    "datachange_item",
    "datachange_subscription",
    "discard_oldest",
    "fast_queue",
    "hook_datachange_publish",
    "hook_monitored_items",
    "hook_more_notifications",
    "max_notifications",
    "requeue_datachanges",
    "take_queued_datachanges",
]

_HOOKED = "_scada_hooked"


# -- the fast data change path (scada/opcua/publisher.py, scada/opcua/fastqueue.py) -----------
#
# asyncua queues a MonitoredItemNotification object per value in a subscription's
# ``_triggered_datachanges`` (monitored item id -> list) and turns them into one
# DataChangeNotification in ``_pop_triggered_datachanges(result)`` when it publishes. Our
# publisher keeps the data changes of supported items in a columnar queue per subscription
# and hooks these two names, per subscription: the queue's rows are encoded by our encoder
# into the same DataChangeNotification (an ExtensionObject whose Body asyncua writes as it
# is), after what asyncua's path queued for the other items. Sequence numbers, the
# retransmission queue, keep-alives and lifetime counts stay asyncua's.

_DATA_CHANGE_BINARY = NodeId(ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary)
_QUEUE = "_scada_fast_queue"
_DISCARD_OLDEST = "_scada_discard_oldest"
_MAX_NOTIFICATIONS = "_scada_max_notifications"


class DataChangeSource(Protocol):
    """What a subscription's hooked publish asks of our queue (scada.opcua.fastqueue.DataChangeQueue)."""

    def ready(self) -> bool: ...

    def pop(self, budget: int | None = None) -> tuple[int, bytes]: ...


class _Triggered(dict):
    """asyncua's ``_triggered_datachanges``, also true when our queue has rows to report:
    ``has_published_results`` tests it to decide between a publish and a keep-alive."""

    __slots__ = ("queue",)

    def __init__(self, queue: DataChangeSource, items: dict[int, list[ua.MonitoredItemNotification]]) -> None:
        super().__init__(items)
        self.queue = queue

    def __bool__(self) -> bool:
        return dict.__len__(self) > 0 or self.queue.ready()


def datachange_subscription(callback: Any) -> InternalSubscription | None:
    """The client subscription whose monitored item registered this datachange callback.

    asyncua registers ``MonitoredItemService.datachange_callback`` (a bound method of the
    subscription's ``monitored_item_srv``, whose ``isub`` is the subscription). None for
    anything else (a test's callback), for a server-internal subscription (no client, no
    ``pub_request_callback``: its results go to Python callbacks that expect objects) and for
    a publishing interval of 0 (asyncua publishes each enqueued value at once).
    """
    service = getattr(callback, "__self__", None)
    if not isinstance(service, MonitoredItemService):
        return None
    sub = service.isub
    if sub.pub_request_callback is None or sub.data.RevisedPublishingInterval <= 0:
        return None
    return sub


def datachange_item(sub: InternalSubscription, handle: int) -> MonitoredItemData | None:
    """The monitored item of a datachange callback handle (``_monitored_datachange``), or None."""
    service = sub.monitored_item_srv
    mid = service._monitored_datachange.get(handle)
    return None if mid is None else service._monitored_items.get(mid)


def take_queued_datachanges(sub: InternalSubscription, mid: int) -> list[ua.MonitoredItemNotification]:
    """Remove and return what asyncua's path queued for an item (its first value, when an item is
    created or enabled, goes through asyncua's own trigger_datachange)."""
    queued: list[ua.MonitoredItemNotification] = sub._triggered_datachanges.pop(mid, [])
    return queued


def fast_queue(sub: InternalSubscription) -> Any:
    """The queue hooked into this subscription's publish, or None."""
    return getattr(sub, _QUEUE, None)


def discard_oldest(item: MonitoredItemData) -> bool:
    """The item's DiscardOldest (asyncua does not keep it; :func:`hook_monitored_items` records it)."""
    return bool(getattr(item, _DISCARD_OLDEST, True))


def max_notifications(sub: InternalSubscription) -> int:
    """The subscription's MaxNotificationsPerPublish (0: no limit), as recorded by :func:`hook_monitored_items`."""
    return int(getattr(sub, _MAX_NOTIFICATIONS, 0))


def hook_datachange_publish(sub: InternalSubscription, queue: DataChangeSource) -> None:
    """Publish ``queue``'s rows with the subscription's data changes (see the section comment).

    Replaces, on this subscription only, ``_triggered_datachanges`` (by a dict that is also
    true when the queue has rows) and ``_pop_triggered_datachanges`` (which asyncua calls
    from ``_pop_publish_result`` with the PublishResult being built).
    """
    if fast_queue(sub) is queue:
        return
    triggered = _Triggered(queue, sub._triggered_datachanges)
    sub._triggered_datachanges = triggered

    def pop_datachanges(result: ua.PublishResult) -> None:
        slow = [n for queued in triggered.values() for n in queued]
        dict.clear(triggered)
        limit = max_notifications(sub)
        count, items = queue.pop(max(limit - len(slow), 0) if limit else None)
        data = result.NotificationMessage.NotificationData
        if count:
            body = notification_body(len(slow) + count, b"".join(struct_to_binary(n) for n in slow) + items)
            # asyncua writes an ExtensionObject's Body as it is (its ByteString is plain bytes at run time).
            data.append(ua.ExtensionObject(TypeId=_DATA_CHANGE_BINARY, Body=cast(ua.ByteString, body)))
        elif slow:
            data.append(ua.DataChangeNotification(MonitoredItems=slow))

    sub._pop_triggered_datachanges = pop_datachanges  # type: ignore[method-assign]
    setattr(sub, _QUEUE, queue)


_MORE = "_scada_more_notifications"
CREATE_CHUNK = 200  # monitored items created between two yields to the event loop (~20-50 ms)


def hook_more_notifications(sub: InternalSubscription, more: Callable[[], bool]) -> None:
    """Set MoreNotifications when ``more()`` says our queue held rows back (the budget of
    MaxNotificationsPerPublish), and send them at the next Publish request, not the next
    interval (Part 4 5.13.1.1, the state table's "MoreNotifications == TRUE" transition).

    asyncua always writes ``MoreNotifications = False`` at the end of ``_pop_publish_result``:
    its instance attribute is wrapped (on this subscription only), and ``publish_results()``
    is called once more, which takes a queued Publish request or waits for the next one.
    """
    hooked = hasattr(sub, _MORE)
    setattr(sub, _MORE, more)  # the wrapper asks the latest one
    if hooked:
        return
    pop = InternalSubscription._pop_publish_result.__get__(sub)
    tasks: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)

    def held_back() -> bool:
        ask: Callable[[], bool] = getattr(sub, _MORE)
        return ask()

    async def publish_the_rest() -> None:
        # not sent meanwhile, not deleted meanwhile, not disabled meanwhile
        if held_back() and not sub._closing and sub._publishing_enabled:
            await sub.publish_results()

    def pop_publish_result() -> ua.PublishResult:
        result = pop()
        # Only a message that carries data says more is waiting: with publishing disabled the
        # queue is not popped (its flag is stale) and a keep-alive must not claim more.
        if sub._publishing_enabled and result.NotificationMessage.NotificationData and held_back():
            result.MoreNotifications = True
            task = asyncio.get_running_loop().create_task(publish_the_rest())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return result

    sub._pop_publish_result = pop_publish_result  # type: ignore[method-assign]


_CREATING = "_scada_creating"  # chunked CreateMonitoredItems requests in progress on a subscription


def _hold_publishing(sub: InternalSubscription, delta: int) -> None:
    """Count a chunked CreateMonitoredItems in (+1) or out (-1) of ``sub``; while one runs, the
    subscription's ``publish_results`` publishes nothing (returns False: a queued Publish request
    stays queued). Between two chunks its loop would otherwise send the first values of items
    whose ids the client learns only from the Create response: a client that registers its items
    from that response drops them, and a slow tag would show no value until its next change.

    Wraps the instance's ``publish_results`` once (asyncua calls it from the subscription loop,
    from a Publish request and from ``publish_the_rest``: every path goes through it).
    """
    count = getattr(sub, _CREATING, None)
    if count is None:
        publish = sub.publish_results

        async def publish_results(requestdata: Any = None) -> bool:
            if getattr(sub, _CREATING):
                return False
            return await publish(requestdata)

        sub.publish_results = publish_results  # type: ignore[method-assign]
        count = 0
    setattr(sub, _CREATING, count + delta)


def requeue_datachanges(sub: InternalSubscription, mid: int, notifications: list[ua.MonitoredItemNotification]) -> None:
    """Put notifications at the head of an item's queue on asyncua's path (they are older than
    anything asyncua queued for it since): an item leaving our fast queue keeps its rows."""
    if notifications:
        queued = sub._triggered_datachanges
        queued[mid] = [*notifications, *queued.get(mid, [])]


def hook_monitored_items(server: Server, changed: Callable[[InternalSubscription, list[int]], None]) -> None:
    """Call ``changed(subscription, monitored item ids)`` after CreateMonitoredItems,
    ModifyMonitoredItems and SetMonitoringMode; record what asyncua drops on the way
    (DiscardOldest, MaxNotificationsPerPublish). Idempotent per server.

    Wraps the server's ``subscription_service`` methods of those services and of
    CreateSubscription / ModifySubscription (sessions look them up per request).
    """
    service = server.iserver.subscription_service
    if getattr(service.create_monitored_items, _HOOKED, False):
        return
    create_sub, modify_sub = service.create_subscription, service.modify_subscription
    create, modify, set_mode = (
        service.create_monitored_items,
        service.modify_monitored_items,
        service.set_monitoring_mode,
    )

    async def create_subscription(params: ua.CreateSubscriptionParameters, *args: Any, **kw: Any) -> Any:
        result = await create_sub(params, *args, **kw)
        sub = service.subscriptions.get(result.SubscriptionId)
        if sub is not None:
            setattr(sub, _MAX_NOTIFICATIONS, int(params.MaxNotificationsPerPublish))
        return result

    def modify_subscription(params: ua.ModifySubscriptionParameters) -> ua.ModifySubscriptionResult:
        result = modify_sub(params)
        setattr(
            service.subscriptions[params.SubscriptionId], _MAX_NOTIFICATIONS, int(params.MaxNotificationsPerPublish)
        )
        return result

    def record(sub_id: int, requests: list[tuple[int, ua.MonitoringParameters]], ok: list[bool]) -> None:
        sub = service.subscriptions.get(sub_id)
        if sub is None:
            return
        mids = []
        for (mid, wanted), good in zip(requests, ok, strict=True):
            item = monitored_item(sub, mid) if good else None
            if item is not None:
                setattr(item, _DISCARD_OLDEST, bool(wanted.DiscardOldest))
                mids.append(mid)
        changed(sub, mids)

    async def create_monitored_items(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        # asyncua creates a request's items without yielding: 10,000 at once held the front's
        # loop for seconds, every other subscription's publishes with it. In chunks, with a
        # yield between them, the same items and results in the same order.
        items, results = params.ItemsToCreate, []
        sub = service.subscriptions.get(params.SubscriptionId) if len(items) > CREATE_CHUNK else None
        if sub is not None:  # nothing of this subscription is published before the response
            _hold_publishing(sub, +1)
        try:
            for start in range(0, max(len(items), 1), CREATE_CHUNK):
                part = dataclasses.replace(params, ItemsToCreate=items[start : start + CREATE_CHUNK])
                if start:
                    await asyncio.sleep(0)
                    if params.SubscriptionId not in service.subscriptions:  # deleted meanwhile
                        gone = StatusCode(ua.StatusCodes.BadSubscriptionIdInvalid)
                        results += [ua.MonitoredItemCreateResult(StatusCode=gone) for _ in part.ItemsToCreate]
                        continue
                done = await create(part)
                record(
                    params.SubscriptionId,
                    [(r.MonitoredItemId, i.RequestedParameters) for i, r in zip(part.ItemsToCreate, done, strict=True)],
                    [r.StatusCode.is_good() for r in done],
                )
                results += done
        finally:
            if sub is not None:
                _hold_publishing(sub, -1)
        return results

    def modify_monitored_items(params: ua.ModifyMonitoredItemsParameters) -> list[ua.MonitoredItemModifyResult]:
        results = modify(params)
        record(
            params.SubscriptionId,
            [(i.MonitoredItemId, i.RequestedParameters) for i in params.ItemsToModify],
            [r.StatusCode.is_good() for r in results],
        )
        return results

    async def set_monitoring_mode(params: ua.SetMonitoringModeParameters) -> list[ua.StatusCode]:
        results = await set_mode(params)
        sub = service.subscriptions.get(params.SubscriptionId)
        if sub is not None:
            changed(sub, [mid for mid, r in zip(params.MonitoredItemIds, results, strict=True) if r.is_good()])
        return results

    setattr(create_monitored_items, _HOOKED, True)
    # Instance attributes over the methods: the sessions look them up per request.
    service.create_subscription = create_subscription  # type: ignore[method-assign]
    service.modify_subscription = modify_subscription  # type: ignore[method-assign]
    service.create_monitored_items = create_monitored_items  # type: ignore[method-assign]
    service.modify_monitored_items = modify_monitored_items  # type: ignore[method-assign]
    service.set_monitoring_mode = set_monitoring_mode  # type: ignore[method-assign]
