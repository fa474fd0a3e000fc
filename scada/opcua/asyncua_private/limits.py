"""asyncua internals: what one client may take, checked per session and per request
(scada/opcua/bounds.py); checked by tests/unit/test_asyncua_private_limits.py.

asyncua advertises MaxNodesPer* = 10000 and enforces none; its caps on subscriptions (1000) and
sessions are server-wide, so one client can take them all. Each check here is O(1) per request
(the length of the request's list) or O(this session's subscriptions), never per node.

Relied on: ``InternalServer.create_session(name, user=, external=)`` (``name``: the peer address)
and the server-side limits it holds as plain attributes (``max_monitored_item_queue_size``,
``max_pending_messages_per_connection``);
``InternalSession`` services looked up on the instance per request (``read``, ``write``,
``browse``, ``translate_browsepaths_to_nodeids``, ``call``, ``history_read``,
``create_subscription``, ``create_monitored_items``, ``modify_monitored_items``,
``delete_monitored_items``, ``set_monitoring_mode``, ``set_publishing_mode``,
``delete_subscriptions``, ``transfer_subscriptions``, ``publish``, ``close_session``),
``session_id``, ``name``; ``subscription_service.subscriptions`` (id -> subscription with
``session_id`` and ``monitored_item_srv._monitored_items``); a ``ServiceError(code)`` raised by a
service makes the processor answer a ServiceFault of that code.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError  # re-exported as it is
from asyncua.server.internal_session import InternalSession

__all__ = [
    "Refusal",
    "ServiceError",
    "SessionCaps",
    "hook_session_caps",
    "set_pending_messages_cap",
    "set_queue_size_cap",
]


@dataclasses.dataclass(frozen=True)
class SessionCaps:
    """Per client address and per session caps (see scada.security.settings.Limits)."""

    sessions_per_client: int
    subscriptions_per_session: int
    monitored_items_per_session: int
    nodes_per_request: int  # Read, Write, Browse, TranslateBrowsePaths, Call, monitored items per call...
    history_nodes_per_request: int
    history_values_per_request: int  # in one HistoryRead response, all nodes together
    queue_size: int  # a monitored item's queue, at most


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A request refused: the session (None for a CreateSession), the service, the code, why."""

    session: Any
    client: Any  # the peer address asyncua gave the session
    service: str
    code: int
    why: str


_HOOKED = "_scada_limits_hooked"
_CAPS = "_scada_session_caps"


@dataclasses.dataclass
class _State:
    caps: SessionCaps
    refused: Callable[[Refusal], None]
    per_client: Counter[str] = dataclasses.field(default_factory=Counter)


def set_queue_size_cap(server: Server, size: int) -> None:
    """Clamp new monitored items' QueueSize to ``size`` (asyncua's ``max_monitored_item_queue_size``,
    also the queue of a QueueSize of 0)."""
    server.iserver.max_monitored_item_queue_size = size


def set_pending_messages_cap(server: Server, count: int) -> None:
    """Close a connection with more than ``count`` messages received and not yet processed
    (asyncua's ``max_pending_messages_per_connection``, read when a connection is made): each
    holds up to a chunk, so a connection's backlog holds at most ``count`` receive buffers."""
    server.iserver.max_pending_messages_per_connection = count


def _host(name: Any) -> str:
    return str(name[0]) if isinstance(name, tuple) and name else str(name)


def hook_session_caps(server: Server, caps: SessionCaps, refused: Callable[[Refusal], None]) -> None:
    """Check every new client session and its requests against ``caps``; ``refused`` is told of
    each refusal (it must not raise). Idempotent per server: a later call replaces the caps.

    Wraps the server's session factory (``iserver.create_session``, over what is there); each
    client session's services become instance attributes over asyncua's methods (and over
    nothing else: a hook installed later on the session wraps ours).
    """
    iserver = server.iserver
    old: _State | None = getattr(iserver, _CAPS, None)
    state = _State(caps, refused, old.per_client if old is not None else Counter())
    setattr(iserver, _CAPS, state)
    if getattr(iserver.create_session, _HOOKED, False):
        return
    original = iserver.create_session

    def create_session(name: Any, *args: Any, **kwargs: Any) -> InternalSession:
        st: _State = getattr(iserver, _CAPS)
        external = kwargs.get("external", args[1] if len(args) > 1 else False)
        if not external:
            return original(name, *args, **kwargs)
        host = _host(name)
        cap = st.caps.sessions_per_client
        if st.per_client[host] >= cap:
            why = f"more than {cap} sessions from {host}"
            st.refused(Refusal(None, name, "CreateSession", ua.StatusCodes.BadTooManySessions, why))
            raise ServiceError(ua.StatusCodes.BadTooManySessions)
        session = original(name, *args, **kwargs)
        st.per_client[host] += 1
        _check_session(iserver, session, host)
        return session

    setattr(create_session, _HOOKED, True)
    iserver.create_session = create_session  # type: ignore[method-assign]


def _count(n: Any) -> int:
    return len(n) if n is not None else 0


def _check_session(iserver: Any, session: InternalSession, host: str) -> None:
    """Wrap ``session``'s services with the caps (read from the server per request: a reload of
    the settings applies to open sessions too)."""
    service = iserver.subscription_service
    own: set[int] = set()  # this session's subscription ids (pruned when gone or transferred)

    def state() -> _State:
        st: _State = getattr(iserver, _CAPS)
        return st

    def refuse(what: str, code: int, why: str) -> None:
        state().refused(Refusal(session, session.name, what, code, why))
        raise ServiceError(code)

    def operations(what: str, n: int, cap: int) -> None:
        if n > cap:
            refuse(what, ua.StatusCodes.BadTooManyOperations, f"{n} operations in one request (at most {cap})")

    def subscriptions() -> list[Any]:
        subs = service.subscriptions
        live = [s for i in own if (s := subs.get(i)) is not None and s.session_id == session.session_id]
        own.intersection_update(s.data.SubscriptionId for s in live)
        return live

    def counted(what: str, method: Callable[..., Any], count: Callable[..., int], cap: Callable[[SessionCaps], int]):
        # A plain function: the original's coroutine (or result) is returned as it is, after the check.
        def checked(*args: Any, **kwargs: Any) -> Any:
            operations(what, count(*args, **kwargs), cap(state().caps))
            return method(*args, **kwargs)

        return checked

    def nodes(c: SessionCaps) -> int:
        return c.nodes_per_request

    plain: dict[str, tuple[str, Callable[..., int]]] = {
        "read": ("Read", lambda p: _count(p.NodesToRead)),
        "write": ("Write", lambda p: _count(p.NodesToWrite)),
        "browse": ("Browse", lambda p: _count(p.NodesToBrowse)),
        "translate_browsepaths_to_nodeids": ("TranslateBrowsePathsToNodeIds", _count),
        "call": ("Call", _count),
        "delete_monitored_items": ("DeleteMonitoredItems", lambda p: _count(p.MonitoredItemIds)),
        "set_monitoring_mode": ("SetMonitoringMode", lambda p: _count(p.MonitoredItemIds)),
        "set_publishing_mode": ("SetPublishingMode", lambda p: _count(p.SubscriptionIds)),
        "delete_subscriptions": ("DeleteSubscriptions", _count),
        "publish": ("Publish", lambda acks=None: _count(acks)),
    }
    for attr, (what, count) in plain.items():
        setattr(session, attr, counted(what, getattr(session, attr), count, nodes))

    history_read = session.history_read

    def history_read_capped(params: ua.HistoryReadParameters) -> Any:
        caps = state().caps
        n = _count(params.NodesToRead)
        if n > caps.history_nodes_per_request:
            refuse(
                "HistoryRead",
                ua.StatusCodes.BadTooManyOperations,
                f"{n} nodes in one request (at most {caps.history_nodes_per_request})",
            )
        details = params.HistoryReadDetails
        if isinstance(details, ua.ReadRawModifiedDetails) and n:
            # The values of one response, all nodes together: the rest comes with continuation points.
            per_node = max(1, caps.history_values_per_request // n)
            if details.NumValuesPerNode == 0 or details.NumValuesPerNode > per_node:
                details.NumValuesPerNode = per_node
        return history_read(params)

    session.history_read = history_read_capped  # type: ignore[method-assign]

    create_subscription = session.create_subscription

    async def create_subscription_capped(params: ua.CreateSubscriptionParameters, *args: Any, **kw: Any) -> Any:
        cap = state().caps.subscriptions_per_session
        if len(subscriptions()) >= cap:
            refuse("CreateSubscription", ua.StatusCodes.BadTooManySubscriptions, f"more than {cap} subscriptions")
        result = await create_subscription(params, *args, **kw)
        own.add(result.SubscriptionId)
        return result

    session.create_subscription = create_subscription_capped  # type: ignore[method-assign]

    transfer = session.transfer_subscriptions

    async def transfer_capped(params: ua.TransferSubscriptionsParameters, *args: Any, **kw: Any) -> Any:
        caps = state().caps
        ids = params.SubscriptionIds or []
        operations("TransferSubscriptions", len(ids), caps.nodes_per_request)
        if len(subscriptions()) + len(ids) > caps.subscriptions_per_session:
            refuse(
                "TransferSubscriptions",
                ua.StatusCodes.BadTooManySubscriptions,
                f"more than {caps.subscriptions_per_session} subscriptions",
            )
        results = await transfer(params, *args, **kw)
        own.update(i for i, r in zip(ids, results, strict=False) if r.StatusCode.is_good())
        return results

    session.transfer_subscriptions = transfer_capped  # type: ignore[method-assign]

    create_items = session.create_monitored_items

    def create_items_capped(params: ua.CreateMonitoredItemsParameters) -> Any:
        caps = state().caps
        n = _count(params.ItemsToCreate)
        operations("CreateMonitoredItems", n, caps.nodes_per_request)
        held = sum(len(s.monitored_item_srv._monitored_items) for s in subscriptions())
        if held + n > caps.monitored_items_per_session:
            refuse(
                "CreateMonitoredItems",
                ua.StatusCodes.BadTooManyMonitoredItems,
                f"{held} monitored items and {n} more (at most {caps.monitored_items_per_session} per session)",
            )
        return create_items(params)

    session.create_monitored_items = create_items_capped  # type: ignore[method-assign]

    modify_items = session.modify_monitored_items

    def modify_items_capped(params: ua.ModifyMonitoredItemsParameters) -> Any:
        caps = state().caps
        operations("ModifyMonitoredItems", _count(params.ItemsToModify), caps.nodes_per_request)
        for item in params.ItemsToModify or ():
            # asyncua clamps QueueSize when an item is created, not when it is modified.
            wanted = item.RequestedParameters
            if wanted.QueueSize == 0 or wanted.QueueSize > caps.queue_size:
                wanted.QueueSize = caps.queue_size
        return modify_items(params)

    session.modify_monitored_items = modify_items_capped  # type: ignore[method-assign]

    close = session.close_session
    counted_host: list[str] = [host]  # emptied when the session's place is given back

    async def close_session(*args: Any, **kwargs: Any) -> None:
        if counted_host:
            counts = state().per_client
            counts[counted_host[0]] -= 1
            if counts[counted_host[0]] <= 0:
                del counts[counted_host[0]]
            counted_host.clear()
        await close(*args, **kwargs)

    session.close_session = close_session  # type: ignore[method-assign]
