"""Contract of scada/opcua/asyncua_private/ownership.py (a subscription is its session's) with the
installed asyncua: two clients on one stock server, each with its subscription.
"""

from __future__ import annotations

import inspect

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from scada.opcua.asyncua_private import ownership as P
from scada.opcua.asyncua_private.sessions import InternalSession, external_sessions
from scada.opcua.asyncua_private.subscriptions import subscriptions
from scada.opcua.server import stop_asyncua_server
from tests.asyncua_contract import SC, params, relied_on
from tests.integration.helpers import plain_asyncua_server

relies = relied_on("scada/opcua/asyncua_private/ownership.py")


def test_the_session_services_have_the_signatures_relied_on():
    S = InternalSession
    for name in (
        "modify_subscription",
        "republish",
        "create_monitored_items",
        "modify_monitored_items",
        "delete_monitored_items",
        "set_monitoring_mode",
        "set_publishing_mode",
    ):
        relies(params(getattr(S, name))[1:] == ["params"], f"InternalSession.{name}(params)")
    relies(params(S.delete_subscriptions)[1:] == ["ids"], "InternalSession.delete_subscriptions(ids)")
    relies(params(S.publish)[1:] == ["acks"], "InternalSession.publish(acks)")
    relies(params(S.transfer_subscriptions)[1:] == ["params", "callback"], "InternalSession.transfer_subscriptions")
    relies(params(S.create_subscription)[1:3] == ["params", "callback"], "InternalSession.create_subscription")
    relies(
        "await self.delete_subscriptions(" in inspect.getsource(S.close_session),
        "InternalSession.close_session deletes its subscriptions through its own delete_subscriptions",
    )


async def _raw(client: Client, request, response_cls):
    """Send a request the client has no method for; the response (its ServiceResult checked)."""
    from asyncua.ua.ua_binary import struct_from_binary

    data = await client.uaclient.session._send_request(request)
    response = struct_from_binary(response_cls, data)
    response.ResponseHeader.ServiceResult.check()
    return response


@pytest.fixture
async def two():
    server, url, ns = await plain_asyncua_server("owners", "urn:owners")
    refused: list[tuple[str, int, int]] = []
    takers: set[str] = set()

    def owner(session) -> str:
        return "owner-of-" + session.name[1].__str__()  # each client its own "user" (its port)

    def may_take(session, recorded) -> bool:
        return recorded in takers

    P.hook_ownership(server, owner, may_take, lambda *r: refused.append(r))
    P.hook_ownership(server, owner, may_take, lambda *r: refused.append(r))  # idempotent
    await server.start()
    a, b = Client(url), Client(url)
    await a.connect()
    await b.connect()
    try:
        yield server, a, b, refused, takers
    finally:
        for c in (a, b):
            try:
                await c.disconnect()
            except Exception:  # noqa: BLE001 - a test may have taken its subscription
                pass
        await stop_asyncua_server(server)


async def test_only_the_owner_session_uses_its_subscription(two):
    server, a, b, refused, takers = two
    sub = await a.create_subscription(100, None)
    sid = sub.subscription_id
    isub = subscriptions(server)[sid]
    sa = next(s for s in external_sessions(server) if s.session_id == isub.session_id)
    sb = next(s for s in external_sessions(server) if s is not sa)
    relies(P.owner_of(isub) == f"owner-of-{sa.name[1]}", "the owner is recorded as the subscription is made")

    # Delete: per id, as if unknown; the subscription lives on.
    [res] = await b.uaclient.delete_subscriptions([sid])
    assert res.value == SC.BadSubscriptionIdInvalid and sid in subscriptions(server)
    # Modify, Republish, monitored items: the whole request.
    for request, cls in (
        (
            ua.ModifySubscriptionRequest(Parameters=ua.ModifySubscriptionParameters(SubscriptionId=sid)),
            ua.ModifySubscriptionResponse,
        ),
        (
            ua.RepublishRequest(Parameters=ua.RepublishParameters(SubscriptionId=sid, RetransmitSequenceNumber=1)),
            ua.RepublishResponse,
        ),
        (
            ua.DeleteMonitoredItemsRequest(
                Parameters=ua.DeleteMonitoredItemsParameters(SubscriptionId=sid, MonitoredItemIds=[1])
            ),
            ua.DeleteMonitoredItemsResponse,
        ),
        (
            ua.SetMonitoringModeRequest(
                Parameters=ua.SetMonitoringModeParameters(SubscriptionId=sid, MonitoredItemIds=[1])
            ),
            ua.SetMonitoringModeResponse,
        ),
    ):
        with pytest.raises(UaStatusCodeError) as err:
            await _raw(b, request, cls)
        assert err.value.code == SC.BadSubscriptionIdInvalid, type(request).__name__
    with pytest.raises(UaStatusCodeError) as err:
        await b.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(SubscriptionId=sid, ItemsToCreate=[]))
    assert err.value.code == SC.BadSubscriptionIdInvalid
    [res] = await b.uaclient.set_publishing_mode(ua.SetPublishingModeParameters(SubscriptionIds=[sid]))
    assert res.value == SC.BadSubscriptionIdInvalid
    # A Publish acknowledging another's notification: that ack alone refused.
    count, results = sb.publish([ua.SubscriptionAcknowledgement(SubscriptionId=sid, SequenceNumber=1)])
    assert [r.value for r in results] == [SC.BadSubscriptionIdInvalid]
    assert {service for service, *_ in refused} == {
        "DeleteSubscriptions",
        "ModifySubscription",
        "Republish",
        "DeleteMonitoredItems",
        "SetMonitoringMode",
        "CreateMonitoredItems",
        "SetPublishingMode",
        "Publish",
    }
    assert all(r[1] == sid and r[2] == SC.BadSubscriptionIdInvalid for r in refused)

    # Transfer: refused unless may_take says so (the same user), then it is b's.
    refused.clear()
    [res] = await b.uaclient.transfer_subscriptions(ua.TransferSubscriptionsParameters(SubscriptionIds=[sid]))
    assert res.StatusCode.value == SC.BadUserAccessDenied and isub.session_id == sa.session_id
    assert refused == [("TransferSubscriptions", sid, SC.BadUserAccessDenied)]
    takers.add(P.owner_of(isub))
    [res] = await b.uaclient.transfer_subscriptions(ua.TransferSubscriptionsParameters(SubscriptionIds=[sid]))
    relies(res.StatusCode.is_good() and isub.session_id == sb.session_id, "TransferSubscriptions moves it")

    # The owner's own requests go through; a session closing deletes its own.
    [res] = await b.uaclient.delete_subscriptions([sid])
    assert res.is_good() and sid not in subscriptions(server)
