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

from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from asyncua import Server, ua

# Internal modules: their classes are re-exported as they are (no wrapper on hot paths).
from asyncua.common.utils import ServiceError
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData
from asyncua.server.internal_session import InternalSession
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemData, WhereClauseEvaluator

__all__ = [
    "AddressSpace",
    "AttributeValue",
    "InternalSession",
    "InternalSubscription",
    "MonitoredItemData",
    "NodeData",
    "ServiceError",
    "SubtypeWhere",
    "address_space",
    "event_items",
    "external_sessions",
    "hook_sessions",
    "monitored_item",
    "node_table",
    "pending_events",
    "stock_historized",
    "subscriptions",
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
#   scada/opcua/alarms.py for why).
# * ``MonitoredItemData``: ``filter`` (EventFilter), ``where_clause_evaluator``,
#   ``client_handle``, ``queue_size``.
# * ``InternalSession``: ``session_id``, ``call``, ``create_session``, ``close_session``.


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
