"""asyncua internals: sessions (the calling session of a method, what a closed session leaves
behind, the sessions still open at stop, the server's clock task at stop); checked by
tests/unit/test_asyncua_private_sessions.py.

Relied on: ``InternalSession``: ``session_id``, ``call``, ``create_session``, ``close_session``;
``InternalServer.time_task`` and ``_time_task_stop``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from asyncua import Server, ua
from asyncua.server.internal_session import InternalSession  # re-exported as it is
from asyncua.server.internal_subscription import InternalSubscription

__all__ = [
    "InternalSession",
    "external_sessions",
    "hook_session_closed",
    "hook_sessions",
    "hook_subscription_created",
    "stop_clock",
    "swap_item_service_logger",
]


def external_sessions(server: Server) -> list[InternalSession]:
    """The sessions of connected clients (``iserver._external_sessions``).

    asyncua 2.1's ``Server.stop`` leaves them (their watchdog and subscription tasks) running
    until the session timeout; the public API cannot list them.
    """
    return list(server.iserver._external_sessions.values())


async def stop_clock(server: Server) -> None:
    """Stop the task that writes the server's CurrentTime each second, at once.

    asyncua 2.1's ``InternalServer.stop`` sets a flag and awaits the task, which sees it only
    after its ``asyncio.sleep(1)``: every server stop (a front restart, a reload's rollback, a
    shutdown) would wait up to a second for nothing.
    """
    iserver = server.iserver
    task = getattr(iserver, "time_task", None)
    if task is None:
        return
    iserver._time_task_stop = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    iserver.time_task = None  # InternalServer.stop awaits it when set: a cancelled task would raise


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
