"""Contract of scada/opcua/asyncua_private/events.py (condition events delivered to event items)
with the installed asyncua.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from asyncua import ua

from scada.opcua.asyncua_private import events as P
from scada.opcua.asyncua_private import subscriptions as private_subscriptions
from tests import asyncua_contract
from tests.asyncua_contract import (
    OI,
    Handler,
    on_live,
    params,
    relied_on,
    until,
)

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/events.py")


def test_event_internals_have_the_signatures_relied_on():
    relies(
        params(P.WhereClauseEvaluator.__init__)[1:] == ["logger", "aspace", "whereclause"],
        "WhereClauseEvaluator(logger, aspace, whereclause)",
    )
    relies(
        params(P.WhereClauseEvaluator._eval_el)[1:] == ["index", "event"], "WhereClauseEvaluator._eval_el(index, event)"
    )
    relies(params(P.WhereClauseEvaluator._eval_op)[1:] == ["op", "event"], "WhereClauseEvaluator._eval_op(op, event)")


def test_the_subtype_where_clause_matches_subtypes_where_asyncua_matches_the_exact_type():
    base = ua.NodeId(OI.BaseEventType)
    of_type = ua.ContentFilter(
        Elements=[
            ua.ContentFilterElement(
                FilterOperator=ua.FilterOperator.OfType, FilterOperands=[ua.LiteralOperand(Value=ua.Variant(base))]
            )
        ]
    )
    stock = P.WhereClauseEvaluator(None, None, of_type)  # type: ignore[arg-type]
    ours = P.SubtypeWhere.of(stock, None)  # type: ignore[arg-type]
    alarm = SimpleNamespace(EventType=ua.NodeId(OI.AlarmConditionType), ancestors=frozenset({base}))
    relies(not stock.eval(alarm), "WhereClauseEvaluator: OfType compares the exact EventType")
    assert ours.eval(alarm)
    assert ours.eval(SimpleNamespace(EventType=base, ancestors=frozenset({base})))
    assert not ours.eval(SimpleNamespace(EventType=ua.NodeId(OI.AuditEventType), ancestors=frozenset()))


@on_live
async def test_events_are_delivered_through_the_subscription_tables(live):
    handler = Handler()
    sub = await live.client.create_subscription(20, handler)
    await sub.subscribe_events(live.client.nodes.server, ua.ObjectIds.BaseEventType)
    server_id = ua.NodeId(OI.Server)
    subs = private_subscriptions.subscriptions(live.server)
    [isub] = [s for s in subs.values() if P.event_items(s).get(server_id)]
    assert isub.data.SubscriptionId == sub.subscription_id
    [mid] = P.event_items(isub)[server_id]
    md = private_subscriptions.monitored_item(isub, mid)
    relies(md is not None and isinstance(md.filter, ua.EventFilter), "monitored_item_srv._monitored_items[mid].filter")
    relies(isinstance(md.where_clause_evaluator, P.WhereClauseEvaluator), "MonitoredItemData.where_clause_evaluator")
    names = ["/".join(q.Name for q in c.BrowsePath) for c in md.filter.SelectClauses]
    fields = [
        ua.Variant(ua.LocalizedText("contract event"))
        if n == "Message"
        else ua.Variant(ua.NodeId(OI.BaseEventType))
        if n == "EventType"
        else ua.Variant()
        for n in names
    ]
    relies(P.pending_events(isub) == 0, "InternalSubscription._triggered_events (mid -> queued events)")
    await isub.enqueue_event(mid, ua.EventFieldList(ClientHandle=md.client_handle, EventFields=fields), md.queue_size)
    event = await asyncio.wait_for(handler.events.get(), 30)
    assert event.Message.Text == "contract event"
    await until(lambda: P.pending_events(isub) == 0, 30, "published events leave _triggered_events")
    await sub.delete()
