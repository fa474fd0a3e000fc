"""Contract of scada/opcua/asyncua_private/subscriptions.py (the server's subscriptions and
their monitored items) with the installed asyncua.
"""

from __future__ import annotations

from scada.opcua.asyncua_private import sessions as private_sessions
from scada.opcua.asyncua_private import subscriptions as P
from tests import asyncua_contract
from tests.asyncua_contract import (
    Handler,
    on_live,
    params,
    relied_on,
    until,
)

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/subscriptions.py")


def test_subscription_internals_have_the_shape_relied_on():
    relies(
        params(P.InternalSubscription.enqueue_event)[1:] == ["mid", "eventdata", "maxsize"],
        "InternalSubscription.enqueue_event(mid, eventdata, maxsize)",
    )
    md = P.MonitoredItemData()
    for name in ("filter", "where_clause_evaluator", "client_handle", "queue_size"):
        relies(hasattr(md, name), f"MonitoredItemData.{name}")


@on_live
async def test_the_subscriptions_and_their_monitored_items_are_found_on_a_live_server(live):
    sub = await live.client.create_subscription(20, Handler())
    handle = await sub.subscribe_data_change(live.client.get_node(live.nodeid))
    isub = P.subscriptions(live.server).get(sub.subscription_id)
    relies(
        isinstance(isub, P.InternalSubscription) and isub.data.SubscriptionId == sub.subscription_id,
        "subscription_service.subscriptions: SubscriptionId -> InternalSubscription",
    )
    relies(
        isub.session_id in {s.session_id for s in private_sessions.external_sessions(live.server)},
        "InternalSubscription.session_id is its session's session_id",
    )
    md = P.monitored_item(isub, handle)
    relies(
        md is not None and md.monitored_item_id == handle,
        "monitored_item_srv._monitored_items: id -> MonitoredItemData",
    )
    relies(P.monitored_item(isub, handle + 1000) is None, "monitored_item_srv._monitored_items.get(unknown) is None")
    await sub.delete()
    await until(lambda: sub.subscription_id not in P.subscriptions(live.server), what="the subscription deleted")
