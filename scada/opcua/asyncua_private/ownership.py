"""asyncua internals: a subscription is its session's (scada/opcua/authorise.py); checked by
tests/unit/test_asyncua_private_ownership.py.

asyncua's subscription services take any SubscriptionId from any session: one session could
modify, delete, republish, acknowledge or take over another's subscriptions. Each session's
services are wrapped as the session is made (``iserver.create_session``, over whatever factory
is there), so every check knows the calling session (``self``) without a lookup; the wrappers
then call the session's own service, which goes on to the subscription service and its hooks
(datachange.py, sessions.py) as before.

Relied on: ``InternalSession``: ``session_id``, ``subscription_service``, ``publish(acks)``,
``republish(params)``, ``modify_subscription(params)`` (sync), ``delete_subscriptions(ids)``,
``create_subscription(params, callback, request_callback=)``, ``create_monitored_items``,
``modify_monitored_items``, ``delete_monitored_items``, ``set_monitoring_mode`` (params with
``SubscriptionId``), ``set_publishing_mode`` (params with ``SubscriptionIds``),
``transfer_subscriptions(params, callback)``; ``InternalSubscription.session_id``;
``close_session`` deletes the session's subscriptions through its own ``delete_subscriptions``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server.internal_session import InternalSession
from asyncua.server.internal_subscription import InternalSubscription

from scada.opcua.typed_ua import StatusCode

__all__ = ["Refused", "SameOwner", "hook_ownership", "owner_of"]

# (service name, subscription id, status code) of each refusal: audited by the caller.
Refused = Callable[[str, int, int], None]
# May ``session`` take over ``sub`` (TransferSubscriptions)? Given the owner recorded at creation.
SameOwner = Callable[[InternalSession, Any], bool]

_HOOKED = "_scada_ownership_hooked"
_OWNER = "_scada_owner"  # on an InternalSubscription: what ``owner(session)`` said at its creation

_INVALID = ua.StatusCodes.BadSubscriptionIdInvalid


def owner_of(sub: InternalSubscription) -> Any:
    """What was recorded as the owner of ``sub`` when it was created (None: not recorded)."""
    return getattr(sub, _OWNER, None)


def hook_ownership(
    server: Server, owner: Callable[[InternalSession], Any], may_take: SameOwner, refused: Refused
) -> None:
    """Only the owner session may use its subscriptions; idempotent per server.

    ``owner(session)`` is recorded on each subscription it creates (the user, for transfers);
    ``may_take(session, recorded)`` decides a TransferSubscriptions (else BadUserAccessDenied).
    Any other service naming another session's subscription is answered as if it did not exist
    (BadSubscriptionIdInvalid), per subscription where the service answers per subscription.
    """
    iserver = server.iserver
    # The mark is on the server, not on the factory: other hooks wrap the factory over ours.
    if getattr(iserver, _HOOKED, False):
        return
    setattr(iserver, _HOOKED, True)
    iserver.create_session = _Guarded(iserver.create_session, lambda s: _guard(s, owner, may_take, refused))  # type: ignore[method-assign]


class _Guarded:
    """asyncua's session factory, each session it makes guarded before anyone can use it."""

    def __init__(self, factory: Callable[..., InternalSession], guard: Callable[[InternalSession], None]) -> None:
        self.factory, self.guard = factory, guard

    def __call__(self, *args: Any, **kwargs: Any) -> InternalSession:
        made = self.factory(*args, **kwargs)
        self.guard(made)
        return made


def _guard(
    session: InternalSession, owner: Callable[[InternalSession], Any], may_take: SameOwner, refused: Refused
) -> None:
    subs = session.subscription_service.subscriptions

    def foreign(sub_id: int) -> bool:
        """A subscription that exists and is another session's (audited; answered as unknown)."""
        sub = subs.get(sub_id)
        return sub is not None and sub.session_id != session.session_id

    def one(service: str, sub_id: int) -> None:
        if foreign(sub_id):
            refused(service, sub_id, _INVALID)
            raise ServiceError(_INVALID)

    def split(service: str, ids: list[int]) -> tuple[list[int], list[bool]]:
        """The ids that may go on, and per id whether it is refused."""
        bad = [foreign(i) for i in ids]
        for i, b in zip(ids, bad):
            if b:
                refused(service, i, _INVALID)
        return [i for i, b in zip(ids, bad) if not b], bad

    def merged(results: list[Any], bad: list[bool], refusal: Callable[[], Any]) -> list[Any]:
        done = iter(results)
        return [refusal() if b else next(done) for b in bad]

    create_sub = session.create_subscription
    modify_sub = session.modify_subscription
    delete_subs = session.delete_subscriptions
    publish, republish = session.publish, session.republish
    set_publishing = session.set_publishing_mode
    transfer = session.transfer_subscriptions
    create_items, modify_items = session.create_monitored_items, session.modify_monitored_items
    delete_items, set_monitoring = session.delete_monitored_items, session.set_monitoring_mode

    async def create_subscription(params: Any, *args: Any, **kw: Any) -> Any:
        result = await create_sub(params, *args, **kw)
        sub = subs.get(result.SubscriptionId)
        if sub is not None:
            setattr(sub, _OWNER, owner(session))
        return result

    def modify_subscription(params: Any) -> Any:
        one("ModifySubscription", params.SubscriptionId)
        return modify_sub(params)

    async def delete_subscriptions(ids: list[int]) -> list[ua.StatusCode]:
        ok, bad = split("DeleteSubscriptions", list(ids))
        if not any(bad):
            return await delete_subs(ids)
        return merged(await delete_subs(ok) if ok else [], bad, lambda: StatusCode(_INVALID))

    def publish_(acks: Any = None) -> tuple[int, list[ua.StatusCode]]:
        acks = list(acks or [])
        bad = [foreign(a.SubscriptionId) for a in acks]
        if not any(bad):
            return publish(acks)
        for a, b in zip(acks, bad):
            if b:
                refused("Publish", a.SubscriptionId, _INVALID)
        count, results = publish([a for a, b in zip(acks, bad) if not b])
        return count, merged(results, bad, lambda: StatusCode(_INVALID))

    def republish_(params: Any) -> Any:
        one("Republish", params.SubscriptionId)
        return republish(params)

    async def set_publishing_mode(params: Any) -> list[ua.StatusCode]:
        ids = list(params.SubscriptionIds)
        ok, bad = split("SetPublishingMode", ids)
        if not any(bad):
            return await set_publishing(params)
        inner = ua.SetPublishingModeParameters(PublishingEnabled=params.PublishingEnabled, SubscriptionIds=ok)
        return merged(await set_publishing(inner) if ok else [], bad, lambda: StatusCode(_INVALID))

    def items(service: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def on_own(params: Any) -> Any:
            one(service, params.SubscriptionId)
            return await fn(params)

        return on_own

    async def transfer_subscriptions(params: Any, callback: Any) -> list[ua.TransferResult]:
        ids = [int(i) for i in params.SubscriptionIds]
        verdicts: list[int | None] = []
        for i in ids:
            sub = subs.get(i)
            if sub is None or sub.session_id == session.session_id or may_take(session, owner_of(sub)):
                verdicts.append(None)  # unknown ones are asyncua's to answer (BadSubscriptionIdInvalid)
            else:
                refused("TransferSubscriptions", i, ua.StatusCodes.BadUserAccessDenied)
                verdicts.append(ua.StatusCodes.BadUserAccessDenied)
        if all(v is None for v in verdicts):
            return await transfer(params, callback)
        ok = [i for i, v in zip(ids, verdicts) if v is None]
        inner = ua.TransferSubscriptionsParameters(SubscriptionIds=ok, SendInitialValues=params.SendInitialValues)
        done = iter(await transfer(inner, callback) if ok else [])
        return [next(done) if v is None else ua.TransferResult(StatusCode=StatusCode(v)) for v in verdicts]

    # Instance attributes over the methods: the processor looks them up on the session per request.
    session.create_subscription = create_subscription  # type: ignore[method-assign]
    session.modify_subscription = modify_subscription  # type: ignore[method-assign]
    session.delete_subscriptions = delete_subscriptions  # type: ignore[method-assign]
    session.publish = publish_  # type: ignore[method-assign]
    session.republish = republish_  # type: ignore[method-assign]
    session.set_publishing_mode = set_publishing_mode  # type: ignore[method-assign]
    session.transfer_subscriptions = transfer_subscriptions  # type: ignore[method-assign]
    session.create_monitored_items = items("CreateMonitoredItems", create_items)  # type: ignore[method-assign,assignment]
    session.modify_monitored_items = items("ModifyMonitoredItems", modify_items)  # type: ignore[method-assign,assignment]
    session.delete_monitored_items = items("DeleteMonitoredItems", delete_items)  # type: ignore[method-assign,assignment]
    session.set_monitoring_mode = items("SetMonitoringMode", set_monitoring)  # type: ignore[method-assign,assignment]
