"""The one place in drivers/opcua that touches asyncua's client internals.

asyncua's public subscription API (``Client.create_subscription`` with a handler, or its async
iterator) delivers each value of a notification as its own event object, through one task and
one handler call per value: 1.75x the driver's CPU per value (bench/bench_opcua_client.py).
The driver wants each publish response whole, to decode a DataChangeNotification into arrays
in one loop. asyncua has no public hook for that, so the subscription below replaces
``Subscription.publish_callback``, the method asyncua registers as the session's callback for
the subscription, and keeps up the fields asyncua's own callback maintains.

Everything else in drivers/opcua uses asyncua's public API (``Client``, ``Node``, ``ua``, the
security policies and ``uacrypto``) and this module only.
``tests/unit/test_opcua_client_private_contract.py`` checks every name below against the
installed asyncua (attributes, signatures, and a subscription on a real server on loopback),
so a release that changes them fails there, by name. pyproject.toml pins asyncua to the range
that test passes on. (The server side has its own such module, scada/opcua/asyncua_private.py:
a driver does not import the server front.)

The publish path is hot: one call per publish response, no work per value here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from asyncua import Client, ua
from asyncua.client.ua_session import UaSession
from asyncua.common.subscription import Subscription

__all__ = ["MessageSubscription", "OnMessage", "create_subscription", "keepalive_count", "session_service"]

OnMessage = Callable[[ua.NotificationMessage], object]
"""Called with each NotificationMessage that carries notifications (not with keep-alives)."""

# Passed as the subscription's handler so that asyncua builds no event queue (its iterator
# mode); asyncua never calls it, since publish_callback is replaced.
_NO_HANDLER = object()


def session_service(client: Client) -> UaSession:
    """The client's session service (``client.uaclient.session``, asyncua's ``UaSession``).

    A ``Subscription`` is built on it: it sends CreateSubscription and registers the
    subscription's publish callback in its publish loop. ``Client.create_subscription`` does
    that itself but builds asyncua's own Subscription class; the public API has no way to give
    it ours. ``uaclient`` is a documented attribute of ``Client``; its ``session`` (split out of
    UaClient in asyncua 2.0) is not.
    """
    return client.uaclient.session


def keepalive_count(client: Client, publishing_interval: float) -> int:
    """The MaxKeepAliveCount asyncua asks for at this publishing interval, in ms
    (``Client.get_keepalive_count``: keep-alives at 75% of the session timeout).

    A helper of ``Client.create_subscription``, which the driver does not call (see
    ``create_subscription``); not documented, so its signature is checked.
    """
    return client.get_keepalive_count(publishing_interval)


class MessageSubscription(Subscription):
    """A subscription whose publish results go to ``on_message`` whole, one call per publish.

    Relies on asyncua registering ``self.publish_callback`` as the session's callback for the
    subscription (``Subscription._create``, called by ``init``; ``restore`` registers it again)
    and calling it with each ``PublishResult`` (the session's publish loop, and
    ``inform_subscriptions`` with a StatusChangeNotification when the connection is lost).
    Like asyncua's own callback it keeps ``last_publish_at`` (every response, keep-alives too)
    and ``last_sequence_number`` (responses with notifications) up to date: the client's
    stale-subscription watchdog (``Subscription.is_stale``) and the republish after a reconnect
    (``_republish_gaps``) read them. Values are not looked up in asyncua's table of monitored
    items: the ClientHandle of an item is the caller's to interpret.

    ``on_message`` runs in asyncua's publish loop: it must not raise (asyncua logs and goes on,
    and the values would stay as they were without a word to the caller).
    """

    def __init__(self, session: UaSession, params: ua.CreateSubscriptionParameters, on_message: OnMessage) -> None:
        super().__init__(session, params, handler=_NO_HANDLER)  # type: ignore[arg-type]
        self._on_message = on_message

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if not message.NotificationData:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        self._on_message(message)


async def create_subscription(
    client: Client, params: ua.CreateSubscriptionParameters, on_message: OnMessage
) -> MessageSubscription:
    """Create a ``MessageSubscription`` on the server, as ``Client.create_subscription`` does.

    That is: build it on the session service, ``init`` it (CreateSubscription), and when the
    server revises the parameters, update the subscription with what
    ``Client.get_subscription_revised_params(params, results)`` returns (a keep-alive count in
    step with the revised publishing interval). Unlike ``Client.create_subscription``, the
    subscription is not added to the client's list of subscriptions that asyncua's watchdog and
    reconnect supervisor re-create: the driver re-creates its session and subscription itself.
    """
    sub = MessageSubscription(session_service(client), params, on_message)
    revised = client.get_subscription_revised_params(params, await sub.init())
    if revised:
        await sub.update(revised)
    return sub
