"""The one place that touches asyncua's private and internal server API.

asyncua's public API (``Server``, ``Node``, ``ua``) builds nodes one coroutine at a time,
sends events only through its own event generators, and has no hook on HistoryRead, on the
calling session of a method, or on the sessions still open at shutdown. Where the OPC UA
side needs more (the tag tree at city scale, the fast publisher, Alarms & Conditions,
HistoryRead, a clean stop), it goes through the names below and nothing else: the rest of
scada/opcua imports asyncua's public API and this module only.

Each name says what it relies on. ``tests/unit/test_asyncua_private_contract.py`` checks
every one of them against the installed asyncua (attributes, signatures and behaviour, on a
real server and client on loopback), so a release that changes them fails there, by name,
and not somewhere deep in a reload or an alarm storm. pyproject.toml pins asyncua to the
range that test passed on.

Hot paths (the tree builder, the publisher, event delivery) take the internal objects or
classes from here once and then loop over them directly: no wrapper call per node or value.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, cast

from asyncua import Server, ua
from asyncua.common.utils import Buffer as _Buffer

# Internal modules: their classes are re-exported as they are (no wrapper on hot paths).
from asyncua.common.utils import ServiceError
from asyncua.server import uaprocessor as _uaprocessor
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData
from asyncua.server.internal_session import InternalSession
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemData, MonitoredItemService, WhereClauseEvaluator
from asyncua.server.uaprocessor import UaProcessor as _UaProcessor
from asyncua.ua.ua_binary import Primitives as _Primitives
from asyncua.ua.ua_binary import get_string_encoding as _get_string_encoding
from asyncua.ua.ua_binary import list_to_binary as _list_to_binary
from asyncua.ua.ua_binary import nodeid_to_binary as _nodeid_to_binary
from asyncua.ua.ua_binary import struct_from_binary as _stock_struct_from_binary
from asyncua.ua.ua_binary import struct_to_binary

from scada.opcua.datachange import notification_body
from scada.opcua.typed_ua import NodeId, StatusCode

__all__ = [
    "AddressSpace",
    "AttributeValue",
    "InternalSession",
    "InternalSubscription",
    "MonitoredItemData",
    "NodeData",
    "ServiceError",
    "SubtypeWhere",
    "DataChangeSource",
    "address_space",
    "datachange_item",
    "datachange_subscription",
    "discard_oldest",
    "fast_queue",
    "hook_datachange_publish",
    "hook_browse_reftypes",
    "hook_monitored_items",
    "hook_read",
    "hook_browse_encoding",
    "nodeid_binary",
    "string_binary",
    "datetime_binary",
    "PreEncoded",
    "StructDecoder",
    "decode_struct",
    "hook_request_decoding",
    "string_encoding",
    "ReadAnswers",
    "max_notifications",
    "take_queued_datachanges",
    "event_items",
    "external_sessions",
    "hook_more_notifications",
    "hook_session_closed",
    "hook_sessions",
    "hook_subscription_created",
    "monitored_item",
    "node_table",
    "pending_events",
    "requeue_datachanges",
    "stock_historized",
    "subscriptions",
    "swap_item_service_logger",
    "wrap_history_read",
]

# What each re-exported class is relied on for (checked by the contract test):
#
# * ``NodeData(nodeid)``: a node of the address space, with ``attributes`` (a dict
#   AttributeIds -> AttributeValue, which we set whole and share between nodes) and
#   ``references`` (a list of ReferenceDescription, edited in place). asyncua has no public
#   way to insert a node without its AddNodes service (a coroutine and a reference scan of the
#   parent per node: quadratic under a large folder).
# * ``AttributeValue(DataValue)``: one attribute; ``value`` is read by the attribute service
#   (a Read, a new monitored item's first value), ``value_callback``/``value_setter`` are
#   consulted on read/write, ``datachange_callbacks`` is the dict asyncua fills with
#   ``[handle] = callback`` and empties with ``pop(handle)`` (scada.opcua.publisher.TagValue
#   replaces it with a dict that keeps the publisher's watched mask in step).
# * ``AddressSpace``: the server's node table: ``get``, ``[]``, ``in``, ``del``,
#   ``add_method_callback`` (a method node's ``call``), ``add/delete_datachange_callback``.
# * ``ServiceError(code)``: raised from a service handler (HistoryRead here), asyncua answers
#   the request with a ServiceFault of that code.
# * ``InternalSubscription``: ``data.SubscriptionId``, ``session_id``, ``monitored_item_srv``
#   and ``enqueue_event(mid, EventFieldList, queue_size)`` (events are delivered by us, see
#   scada/opcua/conditions/delivery.py for why).
# * ``MonitoredItemData``: ``filter`` (EventFilter), ``where_clause_evaluator``,
#   ``client_handle``, ``queue_size``.
# * ``InternalSession``: ``session_id``, ``call``, ``create_session``, ``close_session``.
# * ``MonitoredItemData`` again, for the fast data change path (scada/opcua/fastqueue.py):
#   ``mode``, ``read_value_id`` (``IndexRange``), ``callback_handle``, ``monitored_item_id``;
#   ``queue_size`` 0 means the subscription's ``max_queue_size``.


def address_space(server: Server) -> AddressSpace:
    """The server's node table (``server.iserver.aspace``), to read, insert and remove nodes directly.

    The public ``Node`` API costs a coroutine and a service round trip per attribute or node;
    the tag tree and the conditions are hundreds of thousands of nodes.
    """
    return server.iserver.aspace


def subscriptions(server: Server) -> MutableMapping[int, InternalSubscription]:
    """SubscriptionId -> subscription (``iserver.subscription_service.subscriptions``).

    Condition events are delivered to the subscriptions' event items by us (asyncua's event
    generator matches OfType by exact type and copies per item); there is no public list.
    """
    return server.iserver.subscription_service.subscriptions


def event_items(sub: InternalSubscription) -> dict[ua.NodeId, list[int]]:
    """Notifier NodeId -> ids of the subscription's event monitored items on it.

    ``monitored_item_srv._monitored_events``: asyncua's own table of event items, kept by its
    CreateMonitoredItems/DeleteMonitoredItems services.
    """
    return sub.monitored_item_srv._monitored_events


def monitored_item(sub: InternalSubscription, mid: int) -> MonitoredItemData | None:
    """The monitored item ``mid`` of a subscription (filter, where clause, client handle, queue
    size), or None once deleted (``monitored_item_srv._monitored_items``)."""
    return sub.monitored_item_srv._monitored_items.get(mid)


def pending_events(sub: InternalSubscription) -> int:
    """Events queued in a subscription and not yet published (``_triggered_events``).

    The alarm sender's backpressure: without it an alarm storm fills the subscription faster
    than Publish empties it and the client's watchdog drops the link.
    """
    return sum(len(v) for v in sub._triggered_events.values())


class SubtypeWhere(WhereClauseEvaluator):
    """asyncua's where clause evaluator, with OfType true for subtypes too (Part 4 7.7.3).

    Overrides the private ``_eval_el(index, event)`` and calls ``_eval_op(operand, event)``;
    ``event.ancestors`` is the set of the event's type and its supertypes (our events carry it).
    """

    def _eval_el(self, index: int, event: Any) -> Any:
        el = self.elements[index]
        if el.FilterOperator == ua.FilterOperator.OfType:
            return self._eval_op(el.FilterOperands[0], event) in event.ancestors
        return super()._eval_el(index, event)

    @classmethod
    def of(cls, evaluator: WhereClauseEvaluator, aspace: AddressSpace) -> SubtypeWhere:
        """The same where clause as asyncua's ``evaluator`` (its ``logger`` and ``elements``)."""
        return cls(evaluator.logger, aspace, ua.ContentFilter(Elements=evaluator.elements))


class HistoryRead(Protocol):
    """asyncua's HistoryRead entry point: parameters in, one result per node to read out."""

    def __call__(self, params: ua.HistoryReadParameters) -> Awaitable[list[ua.HistoryReadResult]]: ...


def wrap_history_read(server: Server, read: HistoryRead) -> HistoryRead:
    """Make ``read`` the server's HistoryRead and return the handler it replaces.

    ``iserver.history_manager.read_history`` is the one function asyncua's HistoryRead service
    calls; asyncua's public history API only historises nodes into its own storage.
    """
    manager = server.iserver.history_manager
    previous: HistoryRead = manager.read_history
    # An instance attribute over the method: asyncua looks it up on the instance per request.
    manager.read_history = read  # type: ignore[method-assign,assignment]
    return previous


def stock_historized(server: Server) -> set[ua.NodeId]:
    """Nodes historised by asyncua's own HistoryManager (``history_manager._handlers``)."""
    return {node.nodeid for node in server.iserver.history_manager._handlers}


def external_sessions(server: Server) -> list[InternalSession]:
    """The sessions of connected clients (``iserver._external_sessions``).

    asyncua 2.1's ``Server.stop`` leaves them (their watchdog and subscription tasks) running
    until the session timeout; the public API cannot list them.
    """
    return list(server.iserver._external_sessions.values())


_HOOKED = "_scada_hooked"


def hook_sessions(server: Server, caller: ContextVar[Any], names: MutableMapping[Any, str]) -> None:
    """Make the calling session known to method callbacks; remember each session's name.

    asyncua passes a method callback only the ObjectId and the arguments. This wraps the
    server's session factory (``iserver.create_session``): each new session's ``call`` runs
    with ``caller`` set to the session, and its ``create_session`` stores the client's
    SessionName in ``names``. Idempotent per server (a reload builds the conditions again).
    """
    iserver = server.iserver
    if getattr(iserver.create_session, _HOOKED, False):
        return
    original = iserver.create_session

    def create_session(*args: Any, **kwargs: Any) -> InternalSession:
        session = original(*args, **kwargs)
        call, create = session.call, session.create_session

        async def call_with_caller(params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
            token = caller.set(session)
            try:
                return await call(params)
            finally:
                caller.reset(token)

        async def create_and_name(params: ua.CreateSessionParameters, *a: Any, **kw: Any) -> Any:
            if params.SessionName:
                names[session] = params.SessionName
            return await create(params, *a, **kw)

        # Instance attributes over the methods: the session's services look them up per request.
        session.call = call_with_caller  # type: ignore[method-assign]
        session.create_session = create_and_name  # type: ignore[method-assign]
        return session

    setattr(create_session, _HOOKED, True)
    iserver.create_session = create_session  # type: ignore[method-assign]


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


Table = TypeVar("Table", bound=MutableMapping[ua.NodeId, NodeData])


def node_table(aspace: AddressSpace, kind: type[Table], make: Callable[[dict[ua.NodeId, NodeData]], Table]) -> Table:
    """The address space's node table as a ``kind``: on the first call, ``make(the nodes' dict)``
    replaces it (``AddressSpace._nodes``); later calls return the one installed.

    Every service and every AddressSpace method reads the nodes through ``_nodes`` (``get``,
    ``[]``, ``in``, ``del``, ``keys``), and asyncua itself swaps that dict for a lazy mapping in
    ``load_aspace_shelf``: so a mapping that makes nodes on access (the tag variables,
    scada.opcua.virtual_nodes) serves clients as stored nodes do.
    """
    nodes = aspace._nodes
    if isinstance(nodes, kind):
        return nodes
    if type(nodes) is not dict:
        raise TypeError(f"the address space's node table is already a {type(nodes).__name__}")
    table = make(nodes)
    aspace._nodes = table  # type: ignore[assignment]  # asyncua annotates it dict; it uses it as a mapping
    return table


# -- what a closed session leaves behind (scada/opcua/sessions.py) ----------------------------

_CREATED_HOOKED = "_scada_created_hooked"


def hook_subscription_created(server: Server, created: Callable[[InternalSubscription], None]) -> None:
    """Call ``created(subscription)`` after each CreateSubscription that made one. Idempotent per server.

    Wraps the server's ``subscription_service.create_subscription`` (over
    :func:`hook_monitored_items`' own wrapper when it is there: sessions look it up per request).
    """
    service = server.iserver.subscription_service
    if getattr(service.create_subscription, _CREATED_HOOKED, False):
        return
    create_sub = service.create_subscription

    async def create_subscription(params: ua.CreateSubscriptionParameters, *args: Any, **kw: Any) -> Any:
        result = await create_sub(params, *args, **kw)
        sub = service.subscriptions.get(result.SubscriptionId)
        if sub is not None:
            created(sub)
        return result

    setattr(create_subscription, _CREATED_HOOKED, True)
    service.create_subscription = create_subscription  # type: ignore[method-assign]


def swap_item_service_logger(sub: InternalSubscription, logger: logging.Logger) -> logging.Logger:
    """Give a subscription's monitored item service ``logger``; return the one it had.

    asyncua's ``MonitoredItemService.__init__`` makes ``logging.getLogger(f"{__name__}.{id}")``,
    a logger per subscription id, which logging's manager keeps for the life of the process.
    """
    service = sub.monitored_item_srv
    old: logging.Logger = service.logger
    service.logger = logger
    return old


def hook_session_closed(server: Server, closed: Callable[[InternalSession], None]) -> None:
    """Call ``closed(session)`` when a client's session closes (CloseSession, the connection
    lost, its timeout). Idempotent per server.

    Wraps ``iserver.unregister_external_session``, which ``InternalSession.close_session``
    calls once per client session, just before deleting its subscriptions.
    """
    iserver = server.iserver
    if getattr(iserver.unregister_external_session, _HOOKED, False):
        return
    unregister = iserver.unregister_external_session

    def unregister_external_session(session: InternalSession) -> None:
        unregister(session)
        closed(session)

    setattr(unregister_external_session, _HOOKED, True)
    iserver.unregister_external_session = unregister_external_session  # type: ignore[method-assign]


# -- Browse: the reference type test, once per request --------------------------------------
#
# asyncua's ViewService tests each reference against the Browse's ReferenceTypeId with
# ``_suitable_reftype``, which, with IncludeSubtypes, walks the reference type hierarchy
# (``_get_sub_ref``: a recursive generator over the type nodes' references, a new NodeId per
# step) for *every reference* of every node browsed: ~90 % of a Browse of 1,000 devices,
# measured. Within one Browse request the address space cannot change (the service is
# synchronous), so each (wanted type, reference type, IncludeSubtypes) is answered once per
# request by asyncua's own test and remembered until the request ends.

_BROWSE_MEMO = "_scada_browse_memo"
_ENCODED = "_scada_browse_encoded"


def hook_browse_reftypes(server: Server) -> None:
    """Answer the Browse service's reference type test once per distinct question per request.

    Wraps the server's ``view_service.browse`` (the sessions call it per request) and its
    ``_suitable_reftype`` (which ``_is_suitable_ref`` calls per reference, and
    TranslateBrowsePaths too: outside a Browse it runs unremembered, as before). Idempotent.
    """
    view = server.iserver.view_service
    if getattr(view, _BROWSE_MEMO, None) is not None:
        return
    stock_browse, stock_suitable = view.browse, view._suitable_reftype
    memo: list[dict[tuple[ua.NodeId, ua.NodeId, bool], bool]] = []  # the current request's answers

    def suitable_reftype(ref1: ua.NodeId, ref2: ua.NodeId, subtypes: bool) -> bool:
        if not memo:
            return stock_suitable(ref1, ref2, subtypes)
        answers = memo[-1]
        key = (ref1, ref2, subtypes)
        ok = answers.get(key)
        if ok is None:
            ok = answers[key] = stock_suitable(ref1, ref2, subtypes)
        return ok

    def browse(params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        memo.append({})
        try:
            return stock_browse(params)
        finally:
            memo.pop()

    setattr(view, _BROWSE_MEMO, memo)
    # Instance attributes over the methods: looked up per request and per reference.
    view._suitable_reftype = suitable_reftype  # type: ignore[method-assign]
    view.browse = browse  # type: ignore[method-assign]


# -- Read: a batch answer for the values we hold ------------------------------------------


class ReadAnswers(Protocol):
    """Answers for a Read's ReadValueIds, in order; ``None`` where asyncua's path answers."""

    def __call__(self, nodes: list[ua.ReadValueId]) -> list[ua.DataValue | None]: ...


_READ_HOOKED = "_scada_read_answers"


def hook_read(
    server: Server, answers: ReadAnswers, encode: Callable[[list[ua.DataValue]], bytes] | None = None
) -> None:
    """Let ``answers`` answer a Read's items first, the rest by asyncua (``read_attribute_value``);
    with ``encode``, the results are sent encoded by it (a :class:`PreEncoded` list, see
    :func:`hook_browse_encoding`).

    Replaces the server's ``attribute_service.read`` (the session calls it per Read request,
    between its PreRead and PostRead callbacks, which stay). A later call replaces the
    answers and the encoder (a server has one tag table at a time).
    """
    service = server.iserver.attribute_service
    setattr(service, _READ_HOOKED, (answers, encode))
    if encode is not None:
        _wrap_send_response()
    if getattr(service.read, _READ_HOOKED, False):
        return
    read_one = service._aspace.read_attribute_value

    def read(params: ua.ReadParameters) -> list[ua.DataValue]:
        nodes = params.NodesToRead
        answer, encoder = getattr(service, _READ_HOOKED)
        found = answer(nodes)
        out = [dv if dv is not None else read_one(rv.NodeId, rv.AttributeId) for rv, dv in zip(nodes, found)]
        return PreEncoded(out, encoder) if encoder is not None else out

    setattr(read, _READ_HOOKED, True)
    service.read = read  # type: ignore[method-assign]  # an instance attribute over the method


# -- Browse responses encoded by us ---------------------------------------------------------
#
# asyncua encodes every response in ``UaProcessor.send_response`` with its generic
# ``struct_to_binary``: for a Browse of many nodes, most of the service's time (one call per
# field of each ReferenceDescription). A response whose ``Results`` is a :class:`PreEncoded`
# list is written by its own encoder instead (scada/opcua/browse_codec.py, byte-equal to
# asyncua's); the rest of the response (TypeId, ResponseHeader, DiagnosticInfos) and every
# other response stay asyncua's. The processor is one per connection, made by asyncua's
# protocol, so its class's method is wrapped (once per process); a response without a
# PreEncoded list goes to asyncua's method unchanged.

nodeid_binary: Callable[[ua.NodeId], bytes] = _nodeid_to_binary
"""asyncua's encoder of a NodeId or ExpandedNodeId (``ua_binary.nodeid_to_binary``)."""

string_binary: Callable[[str | None], bytes] = _Primitives.String.pack
"""asyncua's encoder of a String (its configured string encoding; None: a null String)."""

datetime_binary: Callable[[Any], bytes] = _Primitives.DateTime.pack
"""asyncua's encoder of a DateTime (a datetime as Int64 100 ns ticks since 1601, clamped)."""

# The responses whose fields are (TypeId, ResponseHeader, Results, DiagnosticInfos), in order.
_RESULTS_RESPONSES = (ua.BrowseResponse, ua.ReadResponse)


class PreEncoded(list):
    """A service's ``Results``, written to the wire by ``encode(results)`` (its list length included)."""

    __slots__ = ("encode",)

    def __init__(self, items: list[Any], encode: Callable[[list[Any]], bytes]) -> None:
        super().__init__(items)
        self.encode = encode


def _encoded_response(response: Any) -> bytes | None:
    """The response's binary body when its Results are PreEncoded, else None (asyncua encodes it)."""
    results = getattr(response, "Results", None)
    if type(results) is not PreEncoded or type(response) not in _RESULTS_RESPONSES:
        return None
    return b"".join(
        (
            nodeid_binary(response.TypeId),
            struct_to_binary(response.ResponseHeader),
            results.encode(results),
            _list_to_binary(ua.DiagnosticInfo, response.DiagnosticInfos),
        )
    )


def _wrap_send_response() -> None:
    stock = _UaProcessor.send_response
    if getattr(stock, _HOOKED, False):
        return

    def send_response(
        self: Any, requesthandle: Any, seqhdr: Any, response: Any, msgtype: Any = ua.MessageType.SecureMessage
    ) -> None:
        if type(getattr(response, "Results", None)) is not PreEncoded:
            return stock(self, requesthandle, seqhdr, response, msgtype)
        response.ResponseHeader.RequestHandle = requesthandle
        body = _encoded_response(response)
        if body is None:
            return stock(self, requesthandle, seqhdr, response, msgtype)
        self._transport.write(
            self._connection.message_to_binary(body, message_type=msgtype, request_id=seqhdr.RequestId)
        )
        return None

    setattr(send_response, _HOOKED, True)
    send_response.__wrapped__ = stock  # type: ignore[attr-defined]  # asyncua's, for the contract test
    _UaProcessor.send_response = send_response  # type: ignore[method-assign]


def hook_browse_encoding(server: Server, encode: Callable[[list[ua.BrowseResult]], bytes]) -> None:
    """Send this server's Browse results encoded by ``encode`` (see the section comment).

    Wraps the server's ``view_service.browse`` (after :func:`hook_browse_reftypes`, if used:
    either order) so that it returns a :class:`PreEncoded` list, and, once per process,
    ``UaProcessor.send_response``. Idempotent per server.
    """
    view = server.iserver.view_service
    if getattr(view.browse, _ENCODED, False):
        return
    _wrap_send_response()
    inner = view.browse

    def browse(params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        return PreEncoded(inner(params), encode)

    setattr(browse, _ENCODED, True)
    view.browse = browse  # type: ignore[method-assign]


# -- Requests decoded by us -------------------------------------------------------------------
#
# asyncua decodes each request in ``UaProcessor._process_message`` with ``struct_from_binary``
# (the name imported into asyncua.server.uaprocessor), its generic dataclass deserializer: for a
# Read or Browse of many nodes, about half of the service's time. That name is replaced, once
# per process, by one that asks a decoder of ours for the parameter classes given (they make
# the same objects: scada/opcua/request_codec.py) and asyncua's own decoder for everything else
# or when ours answers None (a shape it leaves to asyncua, an error asyncua reports).


class StructDecoder(Protocol):
    """Decode a structure from ``data`` at ``pos``: (the object, the position after it), or None."""

    def __call__(self, data: bytes, pos: int) -> tuple[Any, int] | None: ...


_DECODERS: dict[type, StructDecoder] = {}
T = TypeVar("T")


def decode_struct(objtype: type[T], data: bytes, pos: int) -> tuple[T, int]:
    """asyncua's decoding of one ``objtype`` in ``data`` at ``pos``, and the position after it."""
    buf = _Buffer(data, pos)
    obj = _stock_struct_from_binary(objtype, buf)
    return obj, buf.cur_pos


def string_encoding() -> str:
    """The text encoding asyncua writes and reads Strings in (``ua_binary.get_string_encoding``)."""
    return _get_string_encoding()


def _struct_from_binary(objtype: Any, data: Any) -> Any:
    decode = _DECODERS.get(objtype) if isinstance(objtype, type) else None
    if decode is not None and type(data) is _Buffer and type(data._data) is bytes:
        start, whole = data.cur_pos, data._data
        end = start + len(data)
        try:
            out = decode(whole if end == len(whole) else whole[:end], start)  # never past the buffer's end
        except Exception:  # noqa: BLE001 - a defect of ours must not lose the request: asyncua decodes it
            out = None
        if out is not None:
            obj, end = out
            data.skip(end - start)
            return obj
    return _stock_struct_from_binary(objtype, data)


def hook_request_decoding(decoders: Mapping[type, StructDecoder]) -> None:
    """Decode the requests' parameters of these classes with ``decoders`` (see the section comment)."""
    _DECODERS.update(decoders)
    if _uaprocessor.struct_from_binary is not _struct_from_binary:
        _uaprocessor.struct_from_binary = _struct_from_binary
