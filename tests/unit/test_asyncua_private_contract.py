"""Contract of scada/opcua/asyncua_private.py with the installed asyncua.

That module is the only place the OPC UA side touches asyncua's private or internal API
(node table, attribute values, subscriptions' tables, the where clause evaluator, the
HistoryRead entry point, the session factory, the external sessions). Each test here checks
one group of what it relies on -- names, signatures, and behaviour on a real server and a
real client on loopback -- and fails saying what changed. When one fails after an asyncua
upgrade: adapt asyncua_private.py (nothing else should need it), then widen the asyncua pin
in pyproject.toml to the versions this file passes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib.metadata
import inspect
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.server.history import HistoryManager
from asyncua.server.internal_server import InternalServer

from scada.opcua import asyncua_private as P
from scada.opcua.publisher import Watchers
from scada.opcua.server import stop_asyncua_server
from tests.integration.helpers import ROOT, plain_asyncua_server, until
from tests.more_notifications import record_more_notifications
from tests.private_uses import internal_uses

VERSION = importlib.metadata.version("asyncua")
A = ua.AttributeIds
OI = ua.ObjectIds
SC = ua.StatusCodes


def relies(ok: bool, what: str) -> None:
    """Fail naming the asyncua internal that changed."""
    assert ok, f"asyncua {VERSION}: {what} -- scada/opcua/asyncua_private.py relies on it"


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# -- only one module touches asyncua internals ------------------------------------------------


def test_no_other_opcua_module_touches_asyncua_internals():
    """Outside asyncua_private.py, scada/opcua imports only ``asyncua`` itself and never reaches
    into ``server.iserver``: a new use of an internal goes through the module and its contract."""
    found = internal_uses(ROOT / "scada" / "opcua", "asyncua_private.py", "asyncua", names={"iserver"})
    assert not found, "asyncua internals used outside scada/opcua/asyncua_private.py: " + "; ".join(found)


# -- names and signatures -------------------------------------------------------------------


def test_node_table_classes_have_the_shape_relied_on():
    nid = ua.NodeId("contract", 1)
    nd = P.NodeData(nid)
    relies(nd.nodeid == nid, "NodeData(nodeid).nodeid")
    relies(
        isinstance(nd.attributes, dict) and isinstance(nd.references, list),
        "NodeData.attributes (dict) / .references (list)",
    )
    av = P.AttributeValue(ua.DataValue(ua.Variant(1.5)))
    relies(av.value.Value.Value == 1.5, "AttributeValue(DataValue).value")
    for name in ("value_callback", "value_setter"):
        relies(hasattr(av, name) and getattr(av, name) is None, f"AttributeValue.{name} (None by default)")
    relies(isinstance(av.datachange_callbacks, dict), "AttributeValue.datachange_callbacks (a dict)")
    for name in (
        "get",
        "__getitem__",
        "__setitem__",
        "__contains__",
        "__delitem__",
        "add_method_callback",
        "add_datachange_callback",
        "delete_datachange_callback",
    ):
        relies(callable(getattr(P.AddressSpace, name, None)), f"AddressSpace.{name}")
    relies(
        params(P.AddressSpace.add_method_callback)[1:] == ["methodid", "callback"],
        "AddressSpace.add_method_callback(methodid, callback)",
    )
    relies(
        params(P.AddressSpace.delete_datachange_callback)[1:] == ["handle"],
        "AddressSpace.delete_datachange_callback(handle)",
    )


def test_subscription_session_and_history_internals_have_the_signatures_relied_on():
    relies(
        params(P.WhereClauseEvaluator.__init__)[1:] == ["logger", "aspace", "whereclause"],
        "WhereClauseEvaluator(logger, aspace, whereclause)",
    )
    relies(
        params(P.WhereClauseEvaluator._eval_el)[1:] == ["index", "event"], "WhereClauseEvaluator._eval_el(index, event)"
    )
    relies(params(P.WhereClauseEvaluator._eval_op)[1:] == ["op", "event"], "WhereClauseEvaluator._eval_op(op, event)")
    relies(
        params(P.InternalSubscription.enqueue_event)[1:] == ["mid", "eventdata", "maxsize"],
        "InternalSubscription.enqueue_event(mid, eventdata, maxsize)",
    )
    md = P.MonitoredItemData()
    for name in ("filter", "where_clause_evaluator", "client_handle", "queue_size"):
        relies(hasattr(md, name), f"MonitoredItemData.{name}")
    relies(params(P.InternalSession.call)[1:] == ["params"], "InternalSession.call(params)")
    relies(params(P.InternalSession.create_session)[1] == "params", "InternalSession.create_session(params, ...)")
    relies("delete_subs" in params(P.InternalSession.close_session), "InternalSession.close_session(delete_subs)")
    relies(params(InternalServer.create_session)[1:2] == ["name"], "InternalServer.create_session(name, ...)")
    relies(params(HistoryManager.read_history)[1:] == ["params"], "HistoryManager.read_history(params)")
    relies(
        issubclass(P.ServiceError, Exception) and P.ServiceError(SC.BadInternalError).code == SC.BadInternalError,
        "asyncua.common.utils.ServiceError(code).code",
    )


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


# -- behaviour on a real server and client ---------------------------------------------------


class Handler:
    """A client subscription handler that queues what arrives."""

    def __init__(self) -> None:
        self.values: asyncio.Queue = asyncio.Queue()
        self.events: asyncio.Queue = asyncio.Queue()

    def datachange_notification(self, node, val, data) -> None:
        self.values.put_nowait(val)

    def event_notification(self, event) -> None:
        self.events.put_nowait(event)


def _dv(value, vtype: ua.VariantType) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype))


def insert_variable(aspace, nodeid: ua.NodeId, value: float) -> P.AttributeValue:
    """A Double variable under Objects, written into the node table as scada.opcua's builders do."""
    objects = aspace[ua.NodeId(OI.ObjectsFolder)]
    value_attr = P.AttributeValue(_dv(value, ua.VariantType.Double))
    read = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask
    nd = P.NodeData(nodeid)
    nd.attributes = {
        A.NodeId: P.AttributeValue(_dv(nodeid, ua.VariantType.NodeId)),
        A.NodeClass: P.AttributeValue(_dv(ua.NodeClass.Variable, ua.VariantType.Int32)),
        A.BrowseName: P.AttributeValue(
            _dv(ua.QualifiedName("contract", nodeid.NamespaceIndex), ua.VariantType.QualifiedName)
        ),
        A.DisplayName: P.AttributeValue(_dv(ua.LocalizedText("contract"), ua.VariantType.LocalizedText)),
        A.DataType: P.AttributeValue(_dv(ua.NodeId(OI.Double), ua.VariantType.NodeId)),
        A.ValueRank: P.AttributeValue(_dv(ua.ValueRank.Scalar, ua.VariantType.Int32)),
        A.AccessLevel: P.AttributeValue(_dv(read, ua.VariantType.Byte)),
        A.UserAccessLevel: P.AttributeValue(_dv(read, ua.VariantType.Byte)),
        A.WriteMask: P.AttributeValue(_dv(0, ua.VariantType.UInt32)),
        A.UserWriteMask: P.AttributeValue(_dv(0, ua.VariantType.UInt32)),
        A.MinimumSamplingInterval: P.AttributeValue(_dv(0.0, ua.VariantType.Double)),
        A.Historizing: P.AttributeValue(_dv(True, ua.VariantType.Boolean)),
        A.Value: value_attr,
    }
    nd.references = [
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.HasTypeDefinition),
            IsForward=True,
            NodeId=ua.NodeId(OI.BaseDataVariableType),
            NodeClass=ua.NodeClass.VariableType,
        ),
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.Organizes),
            IsForward=False,
            NodeId=objects.nodeid,
            NodeClass=ua.NodeClass.Object,
        ),
    ]
    aspace[nodeid] = nd
    objects.references.append(
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.Organizes),
            IsForward=True,
            NodeId=nodeid,
            BrowseName=ua.QualifiedName("contract", nodeid.NamespaceIndex),
            DisplayName=ua.LocalizedText("contract"),
            NodeClass=ua.NodeClass.Variable,
            TypeDefinition=ua.NodeId(OI.BaseDataVariableType),
        )
    )
    return value_attr


@contextlib.asynccontextmanager
async def running():
    """A started asyncua server with a node inserted through the module, hooks installed
    before start as scada.opcua installs them, and a connected client."""
    server, url, ns = await plain_asyncua_server("contract", "urn:contract")
    aspace = P.address_space(server)
    nodeid = ua.NodeId("contract/value", ns)
    value_attr = insert_variable(aspace, nodeid, 42.0)
    caller: contextvars.ContextVar = contextvars.ContextVar("caller", default=None)
    names: dict = {}
    P.hook_sessions(server, caller, names)
    P.hook_sessions(server, caller, names)  # idempotent: a reload builds the conditions again

    async def who(parent):
        session = caller.get()
        return [ua.Variant(names.get(session, "") if session is not None else "", ua.VariantType.String)]

    await server.nodes.objects.add_method(ns, "Who", who, [], [ua.VariantType.String])
    history_calls: list[ua.HistoryReadParameters] = []
    refuse = []

    async def read_history(p: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        history_calls.append(p)
        if refuse:
            raise P.ServiceError(refuse[0])
        if p.NodesToRead[0].NodeId != nodeid:
            return await previous(p)
        data = ua.HistoryData(
            DataValues=[ua.DataValue(ua.Variant(7.0), SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC))]
        )
        return [ua.HistoryReadResult(StatusCode=ua.StatusCode(SC.Good), HistoryData=data)]

    previous = P.wrap_history_read(server, read_history)
    await server.start()
    client = Client(url)
    await client.connect()
    try:
        yield SimpleNamespace(
            server=server,
            client=client,
            ns=ns,
            aspace=aspace,
            nodeid=nodeid,
            value_attr=value_attr,
            caller=caller,
            names=names,
            history_calls=history_calls,
            refuse=refuse,
            previous=previous,
        )
    finally:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - the server may have closed the session first
            pass
        await stop_asyncua_server(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live():
    """One server for the behaviour tests (an asyncua server takes seconds to load its nodeset)."""
    async with running() as ctx:
        yield ctx


on_live = pytest.mark.asyncio(loop_scope="module")


@on_live
async def test_a_node_written_into_the_node_table_is_read_and_browsed_by_a_client(live):
    node = live.client.get_node(live.nodeid)
    assert await node.read_value() == 42.0
    children = await live.client.nodes.objects.get_children()
    assert live.nodeid in [c.nodeid for c in children]
    assert live.nodeid in live.aspace and live.aspace.get(live.nodeid).nodeid == live.nodeid


@on_live
async def test_datachange_callbacks_are_registered_and_removed_through_the_attribute_dict(live):
    """The publisher's Watchers mask follows asyncua's ``[handle] = cb`` and ``pop(handle)``;
    calling a registered callback with a DataValue notifies the client."""
    watchers = Watchers()
    watchers.mask, watchers.tag = np.zeros(1, bool), 0
    live.value_attr.datachange_callbacks = watchers
    handler = Handler()
    sub = await live.client.create_subscription(20, handler)
    handle = await sub.subscribe_data_change(live.client.get_node(live.nodeid))
    await until(
        lambda: watchers.mask[0],
        30,
        "asyncua registers a monitored item's callback as attr.datachange_callbacks[handle] = cb",
    )
    assert await asyncio.wait_for(handler.values.get(), 30) == 42.0
    [(h, callback)] = list(watchers.items())
    await callback(h, ua.DataValue(ua.Variant(43.0, ua.VariantType.Double)))
    assert await asyncio.wait_for(handler.values.get(), 30) == 43.0
    await sub.unsubscribe(handle)
    await until(lambda: not watchers.mask[0], 30, "asyncua removes a monitored item's callback with pop(handle)")
    await sub.delete()


@on_live
async def test_events_are_delivered_through_the_subscription_tables(live):
    handler = Handler()
    sub = await live.client.create_subscription(20, handler)
    await sub.subscribe_events(live.client.nodes.server, ua.ObjectIds.BaseEventType)
    server_id = ua.NodeId(OI.Server)
    subs = P.subscriptions(live.server)
    [isub] = [s for s in subs.values() if P.event_items(s).get(server_id)]
    relies(
        isinstance(isub, P.InternalSubscription) and isub.data.SubscriptionId == sub.subscription_id,
        "subscription_service.subscriptions: SubscriptionId -> InternalSubscription",
    )
    relies(
        isub.session_id in {s.session_id for s in P.external_sessions(live.server)},
        "InternalSubscription.session_id is its session's session_id",
    )
    [mid] = P.event_items(isub)[server_id]
    md = P.monitored_item(isub, mid)
    relies(md is not None and isinstance(md.filter, ua.EventFilter), "monitored_item_srv._monitored_items[mid].filter")
    relies(isinstance(md.where_clause_evaluator, P.WhereClauseEvaluator), "MonitoredItemData.where_clause_evaluator")
    relies(P.monitored_item(isub, mid + 1000) is None, "monitored_item_srv._monitored_items.get(unknown) is None")
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


@on_live
async def test_a_method_callback_knows_its_calling_session_and_its_name(live):
    name = await live.client.nodes.objects.call_method(f"{live.ns}:Who")
    [session] = P.external_sessions(live.server)
    relies(isinstance(session, P.InternalSession), "iserver._external_sessions: auth token -> InternalSession")
    assert live.names.get(session), "the session factory hook did not record the SessionName"
    assert name == live.names[session]


@on_live
async def test_history_read_goes_through_the_wrapped_entry_point(live):
    node = live.client.get_node(live.nodeid)
    calls = len(live.history_calls)
    [dv] = await node.read_raw_history(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert dv.Value.Value == 7.0
    assert len(live.history_calls) == calls + 1
    # What is not ours goes on to asyncua's own handler, which knows its historised nodes.
    stock = await live.server.nodes.objects.add_variable(live.ns, "stock", 1.0)
    await live.server.historize_node_data_change(stock, count=10)
    relies(stock.nodeid in P.stock_historized(live.server), "history_manager._handlers: Node -> handler")
    await live.client.get_node(stock.nodeid).read_raw_history(
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert len(live.history_calls) == calls + 2
    live.refuse.append(SC.BadTimestampsToReturnInvalid)
    try:
        with pytest.raises(ua.UaStatusCodeError) as err:
            await node.read_raw_history(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    finally:
        live.refuse.clear()
    relies(
        err.value.code == SC.BadTimestampsToReturnInvalid,
        "a ServiceError raised by the HistoryRead handler is the request's fault",
    )


async def test_stopping_closes_the_external_sessions():
    async with running() as own:
        assert len(P.external_sessions(own.server)) == 1
        await stop_asyncua_server(own.server)
        relies(P.external_sessions(own.server) == [], "InternalSession.close_session unregisters the external session")


def test_the_asyncua_pin_names_this_contract():
    text = (ROOT / "pyproject.toml").read_text()
    line = next(li for li in text.splitlines() if li.strip().startswith('"asyncua'))
    lo, hi = line.split('"')[1].removeprefix("asyncua").split(",")
    major_minor = tuple(int(x) for x in VERSION.split(".")[:2])
    assert tuple(int(x) for x in lo.removeprefix(">=").split(".")[:2]) <= major_minor, line
    assert major_minor < tuple(int(x) for x in hi.removeprefix("<").split(".")[:2]), line
    assert "asyncua_private" in text, "pyproject's asyncua pin comment should point at scada/opcua/asyncua_private.py"


# -- the fast data change path (hook_datachange_publish, hook_monitored_items) ---------------


def test_fast_datachange_internals_have_the_shape_relied_on():
    from asyncua.server.internal_subscription import InternalSubscription
    from asyncua.server.monitored_item_service import MonitoredItemService
    from asyncua.server.subscription_service import SubscriptionService
    from asyncua.ua.ua_binary import struct_to_binary

    relies(
        params(InternalSubscription._pop_triggered_datachanges) == ["self", "result"],
        "InternalSubscription._pop_triggered_datachanges(result) builds the DataChangeNotification",
    )
    src = inspect.getsource(InternalSubscription)
    relies(
        "self._triggered_datachanges or self._triggered_events" in src,
        "has_published_results tests _triggered_datachanges for truth",
    )
    relies("self._pop_triggered_datachanges(result)" in src, "_pop_publish_result calls _pop_triggered_datachanges")
    relies(
        params(InternalSubscription._pop_publish_result) == ["self"]
        and "result = self._pop_publish_result()" in inspect.getsource(InternalSubscription.publish_results),
        "publish_results builds its PublishResult with self._pop_publish_result() (hook_more_notifications)",
    )
    relies(
        "result.MoreNotifications = False" in inspect.getsource(InternalSubscription._pop_publish_result),
        "_pop_publish_result writes MoreNotifications itself (hook_more_notifications sets it after)",
    )
    relies(
        params(InternalSubscription.publish_results) == ["self", "requestdata"],
        "publish_results(requestdata=None) takes a queued Publish request or waits for the next",
    )
    relies("self._closing" in inspect.getsource(InternalSubscription.__init__), "InternalSubscription._closing")
    for name in ("pub_request_callback", "max_queue_size", "_triggered_datachanges", "data", "monitored_item_srv"):
        relies(f"self.{name}" in inspect.getsource(InternalSubscription.__init__), f"InternalSubscription.{name}")
    relies(
        params(MonitoredItemService.datachange_callback)[:3] == ["self", "handle", "value"],
        "MonitoredItemService.datachange_callback(handle, value) is the registered callback",
    )
    init = inspect.getsource(MonitoredItemService.__init__)
    for name in ("isub", "_monitored_items", "_monitored_datachange"):
        relies(f"self.{name}" in init, f"MonitoredItemService.{name}")
    item = P.MonitoredItemData()
    for name in ("mode", "read_value_id", "callback_handle", "monitored_item_id", "client_handle", "queue_size"):
        relies(hasattr(item, name), f"MonitoredItemData.{name}")
    for name, args in (
        ("create_subscription", ["self", "params", "callback", "session_id", "request_callback"]),
        ("modify_subscription", ["self", "params"]),
        ("create_monitored_items", ["self", "params"]),
        ("modify_monitored_items", ["self", "params"]),
        ("set_monitoring_mode", ["self", "params"]),
    ):
        relies(params(getattr(SubscriptionService, name)) == args, f"SubscriptionService.{name}{tuple(args[1:])}")
    body = b"\x01\x02\x03"
    ext = ua.ExtensionObject(TypeId=ua.NodeId(OI.DataChangeNotification_Encoding_DefaultBinary), Body=body)
    relies(
        struct_to_binary(ext).endswith(len(body).to_bytes(4, "little") + body),
        "an ExtensionObject's Body is written as it is",
    )


def watch(own) -> Watchers:
    """The test variable's datachange callbacks, as scada.opcua's tag variables keep them."""
    watchers = Watchers()
    watchers.mask, watchers.tag = np.zeros(1, bool), 0
    own.value_attr.datachange_callbacks = watchers
    return watchers


def subscription_params(interval: float, max_notifications: int) -> ua.CreateSubscriptionParameters:
    """A subscription that publishes nothing before the test looks."""
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval,
        RequestedLifetimeCount=1000,
        RequestedMaxKeepAliveCount=10,
        MaxNotificationsPerPublish=max_notifications,
        PublishingEnabled=False,
    )


class _Rows:
    """A stand-in for scada.opcua.fastqueue.DataChangeQueue: fixed encoded rows, popped once."""

    def __init__(self, client_handle: int, values: list[float]) -> None:
        from scada.opcua.datachange import DOUBLE, encode_items

        n = len(values)
        self.items = encode_items(
            np.full(n, client_handle), np.full(n, DOUBLE), np.array(values), np.zeros(n), np.zeros(n), np.zeros(n)
        )
        self.count = n
        self.budgets: list[int | None] = []

    def ready(self) -> bool:
        return self.count > 0

    def pop(self, budget: int | None = None) -> tuple[int, bytes]:
        self.budgets.append(budget)
        out, self.count, self.items = (self.count, self.items), 0, b""
        return out


async def test_fast_datachange_hooks_on_a_live_server():
    """Items are found from their callbacks, the services are hooked (DiscardOldest and
    MaxNotificationsPerPublish recorded, ``changed`` called), and bytes from our queue reach the
    client in the same DataChangeNotification as asyncua's own notifications."""
    async with running() as own:
        changed: list[tuple[object, list[int]]] = []
        P.hook_monitored_items(own.server, lambda sub, mids: changed.append((sub, mids)))
        P.hook_monitored_items(own.server, lambda sub, mids: None)  # idempotent
        watchers = watch(own)
        handler = Handler()
        params_ = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=20,
            RequestedLifetimeCount=1000,
            RequestedMaxKeepAliveCount=10,
            MaxNotificationsPerPublish=7,
            PublishingEnabled=False,  # nothing is sent before we look
        )
        sub = await own.client.create_subscription(params_, handler)
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=own.nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=201, QueueSize=5, DiscardOldest=False),
        )
        [mid] = await sub.create_monitored_items([request])
        relies(isinstance(mid, int), "CreateMonitoredItems through the hooked service")
        [(handle, callback)] = list(watchers.items())
        isub = P.datachange_subscription(callback)
        relies(
            isub is not None and isub.data.SubscriptionId == sub.subscription_id,
            "the datachange callback is bound to the subscription's MonitoredItemService",
        )
        item = P.datachange_item(isub, handle)
        relies(
            item is not None and item.client_handle == 201 and item.monitored_item_id == mid,
            "_monitored_datachange maps the callback handle to the monitored item",
        )
        relies(changed == [(isub, [mid])], "the create hook reports the created items")
        relies(
            not P.discard_oldest(item) and P.max_notifications(isub) == 7,
            "DiscardOldest and MaxNotificationsPerPublish are recorded",
        )
        queued = P.take_queued_datachanges(isub, mid)
        relies(
            [n.Value.Value.Value for n in queued] == [42.0],
            "the first value of a new item is queued in _triggered_datachanges[mid]",
        )
        relies(P.datachange_subscription(lambda h, dv: None) is None, "a callback of anything else is not a client's")
        await sub.set_monitoring_mode(ua.MonitoringMode.Reporting)
        relies(changed[-1] == (isub, [mid]), "the SetMonitoringMode hook reports the items")
        rows = _Rows(201, [1.0, 2.0, 3.0])
        P.hook_datachange_publish(isub, rows)
        await callback(handle, ua.DataValue(ua.Variant(0.5, ua.VariantType.Double)))  # asyncua's own path, first
        await sub.set_publishing_mode(True)
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(4)]
        relies(got == [0.5, 1.0, 2.0, 3.0], f"asyncua's notifications then our encoded rows, in one publish: {got}")
        relies(rows.budgets and rows.budgets[0] == 6, "the queue's budget is MaxNotificationsPerPublish less asyncua's")
        await sub.delete()


class _Chunks:
    """A stand-in for DataChangeQueue: values popped at most ``budget`` at a time; ``more`` after a
    pop that left some."""

    def __init__(self, client_handle: int, values: list[float]) -> None:
        self.client_handle, self.values = client_handle, list(values)
        self.held_back = False

    def ready(self) -> bool:
        return bool(self.values)

    def more(self) -> bool:
        return self.held_back

    def pop(self, budget: int | None = None) -> tuple[int, bytes]:
        from scada.opcua.datachange import DOUBLE, encode_items

        n = len(self.values) if budget is None else min(budget, len(self.values))
        out, self.values = self.values[:n], self.values[n:]
        self.held_back = bool(self.values)
        zeros = np.zeros(n)
        return n, encode_items(np.full(n, self.client_handle), np.full(n, DOUBLE), np.array(out), zeros, zeros, zeros)


async def test_more_notifications_are_flagged_and_sent_at_the_next_publish_request():
    """hook_more_notifications: a NotificationMessage that leaves rows says MoreNotifications, and
    the rest goes with the next Publish request, not at the next publishing interval (100 s here);
    requeue_datachanges puts notifications on asyncua's own queue of an item."""
    async with running() as own:
        P.hook_monitored_items(own.server, lambda sub, mids: None)
        watchers = watch(own)
        handler = Handler()
        sub = await own.client.create_subscription(subscription_params(100_000, 2), handler)
        more = record_more_notifications(own.client, sub.subscription_id)  # MoreNotifications, in order
        request = ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=own.nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=301, QueueSize=5),
        )
        [mid] = await sub.create_monitored_items([request])
        [(_, callback)] = list(watchers.items())
        isub = P.datachange_subscription(callback)
        assert isub is not None
        P.take_queued_datachanges(isub, mid)  # the first value: not part of this test
        chunks = _Chunks(301, [1.0, 2.0, 3.0, 4.0, 5.0])
        P.hook_datachange_publish(isub, chunks)
        P.hook_more_notifications(isub, chunks.more)
        P.hook_more_notifications(isub, chunks.more)  # idempotent
        await sub.set_publishing_mode(True)
        await isub.publish_results()  # one publishing cycle, as the subscription's loop runs it
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(5)]
        relies(got == [1.0, 2.0, 3.0, 4.0, 5.0], f"the rest follows with the next Publish requests: {got}")
        relies(more == [True, True, False], f"MoreNotifications set on the messages that left rows: {more}")
        notes = [
            ua.MonitoredItemNotification(ClientHandle=301, Value=_dv(v, ua.VariantType.Double)) for v in (6.0, 7.0)
        ]
        P.requeue_datachanges(isub, mid, notes)
        relies(isub.has_published_results(), "a requeued notification makes the next cycle publish")
        await isub.publish_results()
        got = [await asyncio.wait_for(handler.values.get(), 30) for _ in range(2)]
        relies(got == [6.0, 7.0], f"requeued notifications are sent by asyncua's path: {got}")
        await sub.delete()


def value_items(nodeid: ua.NodeId, first_handle: int, n: int) -> list[ua.MonitoredItemCreateRequest]:
    """``n`` items monitoring ``nodeid``'s Value, client handles from ``first_handle``."""
    return [
        ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=nodeid, AttributeId=A.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(ClientHandle=first_handle + k, QueueSize=1),
        )
        for k in range(n)
    ]


async def test_keep_alives_after_publishing_is_disabled_say_no_more_notifications():
    """A message cut by MaxNotificationsPerPublish says MoreNotifications; once the client disables
    publishing, the keep-alives that follow carry no data and must not say it, nor come early
    (review: every keep-alive said TRUE and one more came than MaxKeepAliveCount allows)."""
    data = ua.CreateSubscriptionResult(
        SubscriptionId=1, RevisedPublishingInterval=1000, RevisedLifetimeCount=300, RevisedMaxKeepAliveCount=3
    )
    sent: list[ua.PublishResult] = []

    async def deliver(result: ua.PublishResult, request: object = None) -> None:
        sent.append(result)

    sub = P.InternalSubscription(data, None, deliver, session_id=ua.NodeId(1), request_callback=lambda sid: object())
    chunks = _Chunks(301, [1.0, 2.0, 3.0, 4.0, 5.0])
    P.hook_datachange_publish(sub, chunks)
    P.hook_more_notifications(sub, chunks.more)
    sub._scada_max_notifications = 2
    await sub.publish_results()  # 2 of 5: the rest is held back
    relies(len(sent) == 1 and sent[0].MoreNotifications, "a message cut by the budget says MoreNotifications")
    await sub.set_publishing_mode(False)
    for _ in range(6):  # six publishing cycles, publishing disabled: two keep-alives
        await sub.publish_results()
        await asyncio.sleep(0)  # a pending "publish the rest" runs
    keep_alives = sent[1:]
    relies(all(not r.NotificationMessage.NotificationData for r in keep_alives), "keep-alives carry no data")
    relies(
        [r.MoreNotifications for r in keep_alives] == [False, False],
        f"two keep-alives in six cycles (MaxKeepAliveCount 3), neither says more: "
        f"{[r.MoreNotifications for r in keep_alives]}",
    )


async def test_a_large_create_monitored_items_lets_the_loop_run_between_chunks():
    """hook_monitored_items creates a large request's items in chunks of CREATE_CHUNK with a yield
    between them (other subscriptions publish meanwhile): same items, same results, in order."""
    async with running() as own:
        ticks = 0
        calls: list[tuple[int, int]] = []  # (items reported, ticks then)

        def changed(sub, mids: list[int]) -> None:
            calls.append((len(mids), ticks))

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        P.hook_monitored_items(own.server, changed)
        sub = await own.client.create_subscription(subscription_params(50, 0), Handler())
        n = 2 * P.CREATE_CHUNK + 50
        requests = value_items(own.nodeid, 1000, n)
        task = asyncio.create_task(ticker())
        try:
            mids = await sub.create_monitored_items(requests)
        finally:
            task.cancel()
        assert [count for count, _ in calls] == [P.CREATE_CHUNK, P.CREATE_CHUNK, 50]
        assert calls[0][1] < calls[1][1] < calls[2][1], f"the loop ran between the chunks: {calls}"
        assert len(mids) == n and mids == sorted(mids) and all(isinstance(m, int) for m in mids)
        await sub.delete()


async def test_no_value_of_a_chunked_create_is_published_before_its_response(monkeypatch):
    """While hook_monitored_items creates a large request in chunks, the subscription publishes
    nothing: a client learns its items' ids from the Create response, and one that registers them
    from it would drop values sent before (the reviewer saw 200 of 2,000 go out first)."""
    from asyncua.server.uaprocessor import UaProcessor

    sent: list[str] = []  # the server's responses with data or items, in the order they are written
    keep_alives = received = 0  # Publish responses without data sent; Publish requests received
    send, publish = UaProcessor.send_response, P.InternalSession.publish

    def count(self, *args, **kw):
        nonlocal received
        received += 1
        return publish(self, *args, **kw)

    def spy(self, requesthandle, seqhdr, response, *args, **kw):
        nonlocal keep_alives
        name = type(response).__name__
        if name == "PublishResponse" and not response.Parameters.NotificationMessage.NotificationData:
            keep_alives += 1
        elif name in ("CreateMonitoredItemsResponse", "PublishResponse"):
            sent.append(name)
        return send(self, requesthandle, seqhdr, response, *args, **kw)

    def heavy(sub, mids: list[int]) -> None:
        # Each chunk costs more than a publishing interval, as 10,000 items do in the front:
        # the subscription's loop is due at every yield between two chunks.
        time.sleep(0.015)

    monitored = 3 * P.CREATE_CHUNK
    async with running() as own:
        monkeypatch.setattr(UaProcessor, "send_response", spy)
        monkeypatch.setattr(P.InternalSession, "publish", count)
        P.hook_monitored_items(own.server, heavy)
        handler = Handler()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=10, RequestedLifetimeCount=30000, RequestedMaxKeepAliveCount=10000
        )
        sub = await own.client.create_subscription(params, handler)
        # The server holds a Publish request to publish with while the items are created: one
        # more received than answered (the first answer is the subscription's start; keep-alives
        # are far apart).
        await until(lambda: received > keep_alives >= 1, what="a Publish request waiting in the server")
        requests = value_items(own.nodeid, 2000, monitored)
        await sub.create_monitored_items(requests)
        for _ in range(monitored):  # every first value arrives, after the response
            await asyncio.wait_for(handler.values.get(), 30)
        relies(
            sent and sent[0] == "CreateMonitoredItemsResponse",
            f"the Create response is written before any data of its subscription: {sent[:3]}",
        )
        await sub.delete()


class MadeOnAccess(MutableMapping):
    """A node table over asyncua's dict that makes the variable ``made`` when it is looked up."""

    def __init__(self, stored: dict, made: ua.NodeId, template: P.NodeData) -> None:
        self.stored, self.made, self.template = stored, made, template
        self.lookups = 0

    def _make(self) -> P.NodeData:
        self.lookups += 1
        nd = P.NodeData(self.made)
        nd.attributes = {**self.template.attributes, A.NodeId: P.AttributeValue(_dv(self.made, ua.VariantType.NodeId))}
        nd.references = list(self.template.references)
        return nd

    def __getitem__(self, key):
        if key == self.made:
            return self._make()
        return self.stored[key]

    def __setitem__(self, key, value) -> None:
        self.stored[key] = value

    def __delitem__(self, key) -> None:
        del self.stored[key]

    def __iter__(self):
        yield from self.stored
        yield self.made

    def __len__(self) -> int:
        return len(self.stored) + 1


async def test_a_node_table_installed_in_place_of_the_dict_serves_every_service():
    async with running() as own:
        made = ua.NodeId("contract/made", own.ns)
        made_refs = P.node_table(own.aspace, MadeOnAccess, lambda s: MadeOnAccess(s, made, s[own.nodeid]))
        relies(isinstance(made_refs.stored, dict), "AddressSpace._nodes (a dict of NodeData)")
        assert P.node_table(own.aspace, MadeOnAccess, lambda s: pytest.fail("installed twice")) is made_refs
        objects = own.aspace[ua.NodeId(OI.ObjectsFolder)]
        stored_ref = next(r for r in objects.references if r.NodeId == own.nodeid)
        objects.references.append(dataclasses.replace(stored_ref, NodeId=made))
        node = own.client.get_node(made)
        relies(await node.read_value() == 42.0, "Read goes through AddressSpace._nodes.get")
        relies((await node.read_attribute(A.NodeId)).Value.Value == made, "Read of a made node's attributes")
        relies(
            made in [c.nodeid for c in await own.client.nodes.objects.get_children()],
            "Browse goes through AddressSpace._nodes (in, [])",
        )
        relies(len(await node.get_references()) == 2, "Browse of a made node")
        handler = Handler()
        sub = await own.client.create_subscription(50, handler)
        await sub.subscribe_data_change(node)
        relies(await asyncio.wait_for(handler.values.get(), 30) == 42.0, "CreateMonitoredItems reads the made node")
        await sub.delete()
        with pytest.raises(ua.UaStatusCodeError) as err:
            await own.client.get_node(ua.NodeId("contract/nothing", own.ns)).read_value()
        relies(err.value.code == SC.BadNodeIdUnknown, "an unknown NodeId (not in the table) is BadNodeIdUnknown")
        relies(made_refs.lookups >= 4, "the services looked the node up in the installed table")
        with pytest.raises(TypeError):
            P.node_table(own.aspace, dict, dict)  # another kind over an installed table: refused


# -- what a closed session leaves behind (scada/opcua/sessions.py) -----------------------------


async def test_session_cleanup_hooks_on_a_live_server():
    """A created subscription is reported with its monitored item service's own logger, which
    can be swapped; a closed session is reported once, before its subscriptions are deleted."""
    import logging

    from asyncua.server.monitored_item_service import MonitoredItemService

    relies(
        'logging.getLogger(f"{__name__}.{isub.data.SubscriptionId}")'
        in inspect.getsource(MonitoredItemService.__init__),
        "MonitoredItemService.logger is a logger named after the subscription id",
    )
    relies(
        "self.iserver.unregister_external_session(self)" in inspect.getsource(P.InternalSession.close_session),
        "InternalSession.close_session unregisters an external session",
    )
    async with running() as own:
        created: list[P.InternalSubscription] = []
        closed: list[P.InternalSession] = []
        P.hook_subscription_created(own.server, created.append)
        P.hook_subscription_created(own.server, created.append)  # idempotent
        P.hook_session_closed(own.server, closed.append)
        P.hook_session_closed(own.server, closed.append)  # idempotent
        sub = await own.client.create_subscription(50, None)
        [isub] = created
        relies(isub.data.SubscriptionId == sub.subscription_id, "the created subscription is reported")
        own_logger = logging.getLogger(f"asyncua.server.monitored_item_service.{sub.subscription_id}")
        shared = logging.getLogger("contract.shared")
        relies(P.swap_item_service_logger(isub, shared) is own_logger, "MonitoredItemService.logger")
        relies(isub.monitored_item_srv.logger is shared, "MonitoredItemService.logger is replaced")
        [session] = P.external_sessions(own.server)
        await own.client.disconnect()
        await until(lambda: not P.subscriptions(own.server), what="the session's subscription deleted")
        relies(closed == [session], "a closed session is reported once through unregister_external_session")


# -- Browse and Read hooks (scada/opcua/tag_read.py, HmiServer.start) ------------------------


def test_browse_and_read_services_have_the_shape_relied_on():
    from asyncua.server.address_space import AttributeService, ViewService

    relies(params(ViewService.browse) == ["self", "params"], "ViewService.browse(params)")
    relies(
        params(ViewService._suitable_reftype) == ["self", "ref1", "ref2", "subtypes"],
        "ViewService._suitable_reftype(ref1, ref2, subtypes)",
    )
    relies(
        "self._suitable_reftype(" in inspect.getsource(ViewService._is_suitable_ref),
        "ViewService._is_suitable_ref tests the reference type with self._suitable_reftype",
    )
    relies("self._is_suitable_ref(" in inspect.getsource(ViewService._browse), "ViewService._browse filters per ref")
    relies(params(AttributeService.read) == ["self", "params"], "AttributeService.read(params)")
    relies("self._aspace" in inspect.getsource(AttributeService.__init__), "AttributeService._aspace")
    relies(
        "read_attribute_value(readvalue.NodeId, readvalue.AttributeId)" in inspect.getsource(AttributeService.read),
        "AttributeService.read answers each item with read_attribute_value(NodeId, AttributeId) and nothing else",
    )


async def test_browse_and_read_hooks_answer_as_asyncua_on_a_live_server():
    """Browse with the reference type test remembered per request gives asyncua's answers (every
    reference type, with and without subtypes, both directions); a hooked Read takes the answers
    given and asks asyncua for the others, in order."""
    async with running() as own:
        view = own.server.iserver.view_service
        starts = [ua.NodeId(OI.ObjectsFolder), ua.NodeId(OI.Server), own.nodeid, ua.NodeId(OI.RootFolder)]
        reftypes = [
            ua.NodeId(),
            ua.NodeId(OI.HierarchicalReferences),
            ua.NodeId(OI.HasComponent),
            ua.NodeId(OI.Organizes),
        ]
        descs = [
            ua.BrowseDescription(NodeId=n, BrowseDirection=d, ReferenceTypeId=t, IncludeSubtypes=s, NodeClassMask=m)
            for n in starts
            for d in (ua.BrowseDirection.Forward, ua.BrowseDirection.Inverse, ua.BrowseDirection.Both)
            for t in reftypes
            for s in (True, False)
            for m in (0, int(ua.NodeClass.Object))
        ]
        stock = view.browse(ua.BrowseParameters(NodesToBrowse=descs))
        P.hook_browse_reftypes(own.server)
        P.hook_browse_reftypes(own.server)  # idempotent
        hooked = view.browse(ua.BrowseParameters(NodesToBrowse=descs))
        relies(hooked == stock, "Browse answers with the reference type test remembered per request")
        relies(sum(len(r.References) for r in hooked) > len(descs), "the Browse found references")
        folders = await own.client.nodes.objects.get_children()
        relies(own.nodeid in [c.nodeid for c in folders], "a client's Browse through the hooked service")
        # Outside a Browse (TranslateBrowsePaths), the test is asyncua's, not remembered.
        relies(view._suitable_reftype(ua.NodeId(OI.HierarchicalReferences), ua.NodeId(OI.Organizes), True), "subtype")

        answered = ua.DataValue(ua.Variant(7.5))
        asked: list[list[ua.ReadValueId]] = []

        def answers(nodes: list[ua.ReadValueId]) -> list[ua.DataValue | None]:
            asked.append(nodes)
            return [answered if rv.NodeId == own.nodeid and rv.AttributeId == A.Value else None for rv in nodes]

        P.hook_read(own.server, answers)
        P.hook_read(own.server, answers)  # a second install replaces the answers, the hook stays one
        node = own.client.get_node(own.nodeid)
        relies(await node.read_value() == 7.5, "a client's Read gets the hook's answer")
        relies((await node.read_attribute(A.NodeId)).Value.Value == own.nodeid, "the others are asyncua's")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await own.client.get_node(ua.NodeId("contract/nothing", own.ns)).read_value()
        relies(err.value.code == SC.BadNodeIdUnknown, "an unknown node is asyncua's BadNodeIdUnknown")
        relies(len(asked) == 3, "one call of the answers per Read request")


def test_responses_are_sent_as_relied_on_for_pre_encoded_results():
    from asyncua.server.uaprocessor import UaProcessor

    # asyncua's own, under our wrapper when a test before this one started a server
    src = inspect.getsource(inspect.unwrap(UaProcessor.send_response))
    relies(
        params(UaProcessor.send_response) == ["self", "requesthandle", "seqhdr", "response", "msgtype"],
        "UaProcessor.send_response(requesthandle, seqhdr, response, msgtype)",
    )
    for part in (
        "response.ResponseHeader.RequestHandle = requesthandle",
        "self._connection.message_to_binary(",
        "struct_to_binary(response), message_type=msgtype, request_id=seqhdr.RequestId",
        "self._transport.write(data)",
    ):
        relies(part in src, f"UaProcessor.send_response: {part}")
    relies(
        [f.name for f in dataclasses.fields(ua.BrowseResponse)]
        == ["TypeId", "ResponseHeader", "Results", "DiagnosticInfos"],
        "BrowseResponse's fields, in order",
    )


async def test_pre_encoded_browse_results_reach_the_client_as_asyncua_sends_them():
    from asyncua.ua.ua_binary import list_to_binary

    calls = []

    def encode(results: list[ua.BrowseResult]) -> bytes:
        calls.append(len(results))
        return list_to_binary(ua.BrowseResult, results)

    async with running() as own:
        before = [(r.NodeId, r.BrowseName, r.DisplayName) for r in await own.client.nodes.objects.get_references()]
        P.hook_browse_encoding(own.server, encode)
        P.hook_browse_encoding(own.server, encode)  # idempotent
        P.hook_browse_reftypes(own.server)  # either order
        after = [(r.NodeId, r.BrowseName, r.DisplayName) for r in await own.client.nodes.objects.get_references()]
        relies(calls == [1], "a client's Browse is sent through the encoder given")
        relies(after == before and own.nodeid in [a[0] for a in after], "the client decodes the same references")
        relies(await own.client.get_node(own.nodeid).read_value() == 42.0, "other responses are asyncua's")
        [res] = await own.server.iserver.isession.browse(
            ua.BrowseParameters(NodesToBrowse=[ua.BrowseDescription(NodeId=ua.NodeId(OI.ObjectsFolder))])
        )
        relies(own.nodeid in [r.NodeId for r in res.References], "an internal session's Browse gets a plain list")


def test_requests_are_decoded_through_the_name_relied_on():
    from asyncua.server import uaprocessor
    from asyncua.ua import ua_binary

    src = inspect.getsource(uaprocessor.UaProcessor._process_message)
    for cls in ("ReadParameters", "BrowseParameters"):
        relies(f"struct_from_binary(ua.{cls}, body)" in src, f"UaProcessor._process_message decodes {cls} by name")
    relies(
        uaprocessor.struct_from_binary in (ua_binary.struct_from_binary, P._struct_from_binary),
        "asyncua.server.uaprocessor.struct_from_binary is ua_binary's",
    )
    relies(params(ua_binary.struct_from_binary) == ["objtype", "data"], "struct_from_binary(objtype, data)")
    buf = P._Buffer(b"abcdef", 1, 4)
    relies((buf.cur_pos, len(buf), buf._data) == (1, 4, b"abcdef"), "Buffer(data, start, size): cur_pos, len, _data")
    buf.skip(2)
    relies((buf.cur_pos, len(buf)) == (3, 2), "Buffer.skip(n)")


async def test_decoded_requests_reach_the_services_and_the_rest_is_asyncuas():
    from asyncua.server import uaprocessor

    seen: list[int] = []

    def decode(data: bytes, pos: int) -> tuple[ua.ReadParameters, int] | None:
        obj, end = P.decode_struct(ua.ReadParameters, data, pos)
        seen.append(len(obj.NodesToRead))
        return (obj, end) if len(obj.NodesToRead) == 1 else None  # None: asyncua decodes it

    def broken(data: bytes, pos: int) -> None:
        raise RuntimeError("a defect of the decoder")

    async with running() as own:
        before = P._DECODERS.copy()
        try:
            P.hook_request_decoding({ua.ReadParameters: decode, ua.BrowseParameters: broken})
            P.hook_request_decoding({ua.ReadParameters: decode, ua.BrowseParameters: broken})  # idempotent
            relies(uaprocessor.struct_from_binary is P._struct_from_binary, "the processor's decoder is replaced")
            node = own.client.get_node(own.nodeid)
            relies(await node.read_value() == 42.0, "a Read decoded by ours")
            values = await own.client.read_values([node, node])
            relies(values == [42.0, 42.0], "a Read left to asyncua (ours answered None)")
            relies(seen == [1, 2], "the decoder saw each Read's parameters")
            children = await own.client.nodes.objects.get_children()
            relies(own.nodeid in [c.nodeid for c in children], "a decoder that raises: asyncua decodes the request")
        finally:
            P._DECODERS.clear()
            P._DECODERS.update(before)


async def test_pre_encoded_read_results_reach_the_client_as_asyncua_sends_them():
    from asyncua.ua.ua_binary import list_to_binary

    calls = []

    def encode(results: list[ua.DataValue]) -> bytes:
        calls.append(len(results))
        return list_to_binary(ua.DataValue, results)

    relies(
        [f.name for f in dataclasses.fields(ua.ReadResponse)]
        == ["TypeId", "ResponseHeader", "Results", "DiagnosticInfos"],
        "ReadResponse's fields, in order",
    )
    async with running() as own:
        P.hook_read(own.server, lambda nodes: [None] * len(nodes), encode)
        node = own.client.get_node(own.nodeid)
        relies(await node.read_value() == 42.0, "a client's Read sent through the encoder given")
        relies(await own.client.read_values([node, node]) == [42.0, 42.0], "several values")
        relies(calls == [1, 2], "one encoding per Read response")
