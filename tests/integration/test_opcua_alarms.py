"""OPC UA Alarms & Conditions end to end: the alarm engine behind a real HmiServer, an asyncua client.

The engine runs on a TagDB the test drives (``tagdb.update`` + ``engine.process``, as the
unit tests do) with a clock the test moves; the server listens on a free loopback port; the
client subscribes to events on the Server object (or a device), receives the transitions,
and acts with the standard Part 9 methods (Acknowledge, AddComment, TimedShelve,
OneShotShelve, Unshelve, Reset, ConditionRefresh). Every action must reach the engine and
its journal with the session's identity; every refusal must be a Bad status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.common.events import get_filter_from_event_type
from asyncua.ua import uaerrors

from scada.alarms.states import State
from scada.opcua.server import HmiServer
from tests.alarm_rig import SERVICES, AlarmRig, Clock

from .helpers import DEADLINE, free_port, serving, until

pytestmark = pytest.mark.integration

O = ua.ObjectIds

ALARMS = SERVICES + """alarms:
  - {name: hot, type: lighting_cabinet, point: temperature, condition: high, limit: 60, deadband: 5,
     priority: high, message: "{device}: {value} {unit} above {limit}", service: lighting_maintenance}
  - {name: door, type: lighting_cabinet, point: door_open, condition: state, states: [1], priority: low,
     message: "{device}: door open", service: lighting_maintenance}
  - {name: comm_loss, type: lighting_cabinet, condition: comm_loss, priority: medium,
     message: "{device}: no communication", service: lighting_maintenance}
  - {name: conflict, type: traffic_junction, point: conflict_fault, condition: state, states: [1],
     priority: critical, message: "{device}: signal conflict", service: traffic_control, latching: true}
"""


class City(AlarmRig):
    """Engine + journal + HmiServer on loopback; values set by point name."""

    def __init__(self, folder: Path) -> None:
        # The real time: the client compares the events' times with its own clock.
        super().__init__(folder, ALARMS, folder / "journal.sqlite", Clock(time.time_ns()))
        self.url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
        self.hmi = HmiServer(self.config, self.tagdb, self.url, alarms=self.engine)
        self.ns = 0

    def device_node(self, device: str) -> ua.NodeId:
        d = self.config.device(device)
        return ua.NodeId(f"{d.commune}/{self.config.types[d.type].cls}/{device}", self.ns)

    def condition(self, alarm: str, device: str = "LC-1") -> ua.NodeId:
        return ua.NodeId(f"{self.device_node(device).Identifier}/Alarms/{alarm}", self.ns)


def healthy(c: City) -> None:
    for dev in ("LC-1", "LC-2"):
        c.set(dev, mains_voltage=230, failed_lamps=0, temperature=30, lamps_on=0, power=0, lamp_count=30,
              door_open=0)
    c.set("TJ-1", conflict_fault=0)


@contextlib.asynccontextmanager
async def running(c: City):
    """The HmiServer started and running (its publisher and alarm event task), stopped after."""
    try:
        async with serving(c.hmi):
            c.ns = c.hmi.ns
            yield c
    finally:
        c.journal.close()


@pytest.fixture
async def city(tmp_path: Path):
    c = City(tmp_path / "cfg")
    healthy(c)
    async with running(c):
        yield c


class Events:
    """Subscription handler: every event notification into a queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.mid = 0  # the server's MonitoredItemId of the event item
        self.before_refresh: list = []

    def event_notification(self, event) -> None:
        self.queue.put_nowait(event)

    async def next(self, timeout: float = 5.0, **match):
        """The next event whose fields equal ``match`` (others are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            ev = await asyncio.wait_for(self.queue.get(), max(left, 0.01))
            if all(field(ev, k.replace("__", "/")) == v for k, v in match.items()):
                return ev

    async def upto(self, timeout: float = 5.0, **match) -> tuple[list, object]:
        """The events before the next one whose fields equal ``match``, and that one. "Nothing
        else came" is checked this way, against a later event that is known to come (a marker),
        rather than by waiting some time for nothing."""
        before = []
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.queue.get()
                if all(field(ev, k.replace("__", "/")) == v for k, v in match.items()):
                    return before, ev
                before.append(ev)

    async def refresh(self, timeout: float = 10.0) -> list:
        """The events from the next RefreshStartEvent to its RefreshEndEvent, both included; the
        events that came before the RefreshStartEvent are kept in ``before_refresh``."""
        start, end = ua.NodeId(O.RefreshStartEventType), ua.NodeId(O.RefreshEndEventType)
        self.before_refresh, first = await self.upto(timeout, EventType=start)
        out = [first]
        while out[-1].EventType != end:
            out.append(await asyncio.wait_for(self.queue.get(), timeout))
        return out


def field(ev, name: str):
    return getattr(ev, name, None)


def text(value) -> str | None:
    return value.Text if isinstance(value, ua.LocalizedText) else value


@contextlib.asynccontextmanager
async def client_events(url: str, source=O.Server, evtype=O.AlarmConditionType, name: str = "operator console"):
    """A connected client and an event subscription on ``source``: (client, handler, subscription)."""
    client = Client(url, timeout=10)
    client.name = client.description = name
    async with client:
        handler = Events()
        sub = await client.create_subscription(50, handler)
        handler.mid = await sub.subscribe_alarms_and_conditions(client.get_node(source), evtype)
        yield client, handler, sub


async def call(client: Client, obj: ua.NodeId, method: int, *args):
    return await client.get_node(obj).call_method(ua.NodeId(method), *args)


def ack_args(event_id: bytes, comment: str) -> tuple:
    return ua.Variant(event_id, ua.VariantType.ByteString), ua.LocalizedText(comment)


async def test_activation_is_an_event_with_the_condition_fields(city: City) -> None:
    async with client_events(city.url) as (client, server_events, _), \
            client_events(city.url, source=city.device_node("LC-1")) as (_, lc1_events, _), \
            client_events(city.url, source=city.device_node("LC-2")) as (_, lc2_events, _):
        # The condition is a browsable node of its device, of the documented type.
        cond = client.get_node(city.condition("hot"))
        assert (await cond.read_browse_name()).Name == "hot"
        assert (await cond.read_type_definition()) == ua.NodeId(O.NonExclusiveLevelAlarmType)
        dev = client.get_node(city.device_node("LC-1"))
        assert ua.EventNotifier.SubscribeToEvents in await dev.read_event_notifier()
        refs = await dev.get_referenced_nodes(refs=O.HasCondition)
        assert {r.nodeid for r in refs} == {city.condition(a) for a in ("hot", "door", "comm_loss")}

        before = city.clock()
        city.set("LC-1", temperature=61)
        ev = await server_events.next(ConditionName="hot")
        assert ev.EventType == ua.NodeId(O.NonExclusiveLevelAlarmType)
        assert ev.SourceNode == city.device_node("LC-1") and ev.SourceName == "LC-1"
        assert ev.NodeId == city.condition("hot")  # ConditionId
        assert ev.Severity == 750
        assert text(ev.Message) == "LC-1: 61 degC above 60"
        assert field(ev, "ActiveState/Id") is True and text(ev.ActiveState) == "Active"
        assert field(ev, "AckedState/Id") is False
        assert ev.Retain is True
        assert field(ev, "EnabledState/Id") is True
        assert field(ev, "SuppressedOrShelved") is False
        assert text(field(ev, "ShelvingState/CurrentState")) == "Unshelved"
        assert ev.BranchId in (None, ua.NodeId())
        assert isinstance(ev.EventId, bytes) and len(ev.EventId) >= 8
        assert abs(ev.Time.timestamp() - before / 1e9) < 0.01
        assert ev.ReceiveTime is not None
        assert field(ev, "InputNode") == ua.NodeId(f"{city.device_node('LC-1').Identifier}/temperature", city.ns)
        # The device's notifier has it too, with the same EventId; another device's does not.
        dev_ev = await lc1_events.next(ConditionName="hot")
        assert dev_ev.EventId == ev.EventId

        # Return to normal (an acknowledgement is still owed: retained), then a state alarm.
        city.set("LC-1", temperature=50)
        ev2 = await server_events.next(ConditionName="hot")
        assert field(ev2, "ActiveState/Id") is False and ev2.Retain is True and ev2.EventId != ev.EventId
        city.set("LC-2", door_open=1)
        door = await server_events.next(ConditionName="door")
        assert door.EventType == ua.NodeId(O.OffNormalAlarmType) and door.SourceName == "LC-2"
        # LC-2's notifier: its door alarm is the first event it reports, none of LC-1's came before.
        others, lc2_door = await lc2_events.upto(ConditionName="door")
        assert lc2_door.EventId == door.EventId
        assert [(e.ConditionName, e.SourceName) for e in others] == []


async def test_an_of_type_filter_matches_the_subtypes(city: City) -> None:
    """HMIs filter with OfType(ConditionType): true for every subtype (asyncua's own test is exact)."""
    async with Client(city.url, timeout=10) as client:
        types = [client.get_node(ua.NodeId(O.AlarmConditionType))]
        evfilter = await get_filter_from_event_type(types, where_clause_generation=False)
        of_type = ua.ContentFilterElement(FilterOperator=ua.FilterOperator.OfType, FilterOperands=[
            ua.LiteralOperand(Value=ua.Variant(ua.NodeId(O.ConditionType)))])
        evfilter.WhereClause = ua.ContentFilter(Elements=[of_type])
        handler = Events()
        sub = await client.create_subscription(50, handler)
        await sub.subscribe_events(client.nodes.server, types[0], evfilter=evfilter)
        city.set("LC-1", temperature=61)
        ev = await handler.next(ConditionName="hot")
        assert ev.EventType == ua.NodeId(O.NonExclusiveLevelAlarmType)
        not_alarms = ua.ContentFilterElement(FilterOperator=ua.FilterOperator.OfType, FilterOperands=[
            ua.LiteralOperand(Value=ua.Variant(ua.NodeId(O.AuditEventType)))])
        other = Events()
        sub2 = await client.create_subscription(50, other)
        await sub2.subscribe_events(client.nodes.server, types[0], evfilter=ua.EventFilter(
            SelectClauses=evfilter.SelectClauses, WhereClause=ua.ContentFilter(Elements=[not_alarms])))
        city.set("LC-1", door_open=1)
        await handler.next(ConditionName="door")
        # The door event has been through both subscriptions' filters; a refresh of the second
        # (its brackets bypass filters) is the marker: nothing came before it.
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub2.subscription_id, ua.VariantType.UInt32))
        got = await other.refresh()
        assert other.before_refresh == [] and len(got) == 2, (other.before_refresh, got)


async def test_acknowledge_through_the_client_reaches_engine_and_journal(city: City) -> None:
    async with client_events(city.url, name="console-7") as (client, events, _):
        city.set("LC-1", temperature=70)
        ev = await events.next(ConditionName="hot")
        cid = city.condition("hot")
        with pytest.raises(uaerrors.BadEventIdUnknown):
            await call(client, cid, O.AcknowledgeableConditionType_Acknowledge, *ack_args(b"not-an-event", "x"))
        with pytest.raises(uaerrors.BadEventIdUnknown):  # an EventId of another condition
            await call(client, city.condition("door"), O.AcknowledgeableConditionType_Acknowledge,
                       *ack_args(ev.EventId, "x"))
        assert city.state("hot") == State.UNACK_ACTIVE

        await call(client, cid, O.AcknowledgeableConditionType_Acknowledge, *ack_args(ev.EventId, "crew informed"))
        assert city.state("hot") == State.ACK_ACTIVE
        rows = [r for r in city.journal.query(alarm="hot") if r.event == "ACK"]
        assert len(rows) == 1
        # Without a security layer: the client's address, never the name it chose (its SessionName).
        assert rows[0].user.startswith("opcua:anonymous@127.0.0.1:") and "console-7" not in rows[0].user
        assert rows[0].comment == "crew informed" and rows[0].state == "ACK_ACTIVE"
        acked = await events.next(ConditionName="hot")
        assert field(acked, "AckedState/Id") is True and field(acked, "ActiveState/Id") is True
        assert text(acked.Comment) == "crew informed" and acked.ClientUserId == rows[0].user
        assert acked.Retain is True

        # Nothing is owed any more: a second acknowledgement is a Bad status, not an exception.
        with pytest.raises(uaerrors.BadConditionBranchAlreadyAcked):
            await call(client, cid, O.AcknowledgeableConditionType_Acknowledge, *ack_args(acked.EventId, "again"))
        with pytest.raises(uaerrors.BadNodeIdUnknown):  # not a condition
            await call(client, city.device_node("LC-1"), O.AcknowledgeableConditionType_Acknowledge,
                       *ack_args(acked.EventId, "x"))
        with pytest.raises(uaerrors.BadNotSupported):
            await call(client, cid, O.AcknowledgeableConditionType_Confirm, *ack_args(acked.EventId, "x"))
        # The session survived all of that.
        assert (await client.get_node(cid).read_browse_name()).Name == "hot"
        city.set("LC-1", temperature=50)
        cleared = await events.next(ConditionName="hot")
        assert field(cleared, "ActiveState/Id") is False and cleared.Retain is False


async def test_add_comment_is_a_note_in_the_journal(city: City) -> None:
    async with client_events(city.url, name="console-2") as (client, events, _):
        city.set("LC-1", temperature=65)
        ev = await events.next(ConditionName="hot")
        await call(client, city.condition("hot"), O.ConditionType_AddComment,
                   *ack_args(ev.EventId, "truck 12 on its way"))
        notes = [r for r in city.journal.query(alarm="hot") if r.event == "NOTE"]
        assert [(r.comment, r.state) for r in notes] == [("truck 12 on its way", "UNACK_ACTIVE")]
        assert notes[0].user.startswith("opcua:anonymous@127.0.0.1:")
        commented = await events.next(ConditionName="hot")
        assert text(commented.Comment) == "truck 12 on its way" and field(commented, "AckedState/Id") is False
        assert city.state("hot") == State.UNACK_ACTIVE  # a comment changes no state
        with pytest.raises(uaerrors.BadEventIdUnknown):
            await call(client, city.condition("hot"), O.ConditionType_AddComment, *ack_args(b"\x00" * 16, "x"))
        with pytest.raises(uaerrors.BadInvalidArgument):
            await call(client, city.condition("hot"), O.ConditionType_AddComment, *ack_args(ev.EventId, "  "))


async def test_shelving_methods_shelve_and_unshelve(city: City) -> None:
    async with client_events(city.url, name="console-3") as (client, events, _):
        city.set("LC-1", temperature=80)
        await events.next(ConditionName="hot")
        shelving = ua.NodeId(f"{city.condition('hot').Identifier}/ShelvingState", city.ns)
        duration = ua.Variant(600_000.0, ua.VariantType.Double)  # Duration, ms
        # Version 1 (no comment), called with the instance-declaration method of AlarmConditionType.
        await call(client, shelving, O.AlarmConditionType_ShelvingState_TimedShelve, duration)
        assert city.state("hot") == State.SHELVED
        ev = await events.next(ConditionName="hot")
        assert text(field(ev, "ShelvingState/CurrentState")) == "TimedShelved"
        assert field(ev, "ShelvingState/CurrentState/Id") == ua.NodeId(O.ShelvedStateMachineType_TimedShelved)
        assert 599_000 <= field(ev, "ShelvingState/UnshelveTime") <= 600_000
        assert field(ev, "SuppressedOrShelved") is True and ev.Retain is True
        row = city.journal.query(alarm="hot")[-1]
        assert row.event == "SHELVE" and row.user.startswith("opcua:anonymous@") and "no reason" in row.comment
        with pytest.raises(uaerrors.BadConditionAlreadyShelved):
            await call(client, shelving, O.ShelvedStateMachineType_TimedShelve, duration)

        await call(client, shelving, O.ShelvedStateMachineType_Unshelve)
        assert city.state("hot") == State.UNACK_ACTIVE  # still active: announced again
        ev = await events.next(ConditionName="hot")
        assert text(field(ev, "ShelvingState/CurrentState")) == "Unshelved" and field(ev, "SuppressedOrShelved") is False
        assert city.journal.query(alarm="hot")[-1].event == "UNSHELVE"
        with pytest.raises(uaerrors.BadConditionNotShelved):
            await call(client, shelving, O.ShelvedStateMachineType_Unshelve)
        with pytest.raises(uaerrors.BadShelvingTimeOutOfRange):  # more than 24 h
            await call(client, shelving, O.ShelvedStateMachineType_TimedShelve, ua.Variant(9e7, ua.VariantType.Double))

        # Version 2 carries the reason; the condition node itself is accepted as ObjectId too.
        await call(client, city.condition("door"), O.ShelvedStateMachineType_TimedShelve2,
                   ua.Variant(60_000.0, ua.VariantType.Double), ua.LocalizedText("sensor being replaced"))
        assert city.state("door") == State.SHELVED
        assert city.journal.query(alarm="door")[-1].comment == "sensor being replaced"
        # The shelve expires with the engine's clock.
        city.clock.advance(61)
        city.engine.tick()
        assert city.state("door") == State.NORMAL
        ev = await events.next(ConditionName="door", Retain=False)
        assert text(field(ev, "ShelvingState/CurrentState")) == "Unshelved"


async def test_one_shot_shelve_ends_when_the_condition_clears(city: City) -> None:
    async with client_events(city.url) as (client, events, _):
        city.set("LC-2", door_open=1)
        await events.next(ConditionName="door")
        await call(client, city.condition("door", "LC-2"), O.ShelvedStateMachineType_OneShotShelve2,
                   ua.LocalizedText("door left open by the crew"))
        ev = await events.next(ConditionName="door")
        assert text(field(ev, "ShelvingState/CurrentState")) == "OneShotShelved"
        assert city.state("door", "LC-2") == State.SHELVED
        city.set("LC-2", door_open=0)  # the condition clears: the one-shot shelve ends
        ev = await events.next(ConditionName="door", **{"ShelvingState__CurrentState": ua.LocalizedText("Unshelved")})
        assert ev.Retain is False
        assert city.state("door", "LC-2") == State.NORMAL
        assert [r.event for r in city.journal.query(alarm="door", device="LC-2")][-3:] == ["SHELVE", "CLEAR", "UNSHELVE"]


async def test_latched_alarm_is_reset_through_the_client(city: City) -> None:
    async with client_events(city.url) as (client, events, _):
        city.set("TJ-1", conflict_fault=1)
        ev = await events.next(ConditionName="conflict")
        assert field(ev, "LatchedState/Id") is False and ev.Severity == 900
        cid = city.condition("conflict", "TJ-1")
        with pytest.raises(uaerrors.BadInvalidState):  # still active, not acknowledged
            await call(client, cid, O.AlarmConditionType_Reset)
        await call(client, cid, O.AcknowledgeableConditionType_Acknowledge, *ack_args(ev.EventId, "seen"))
        city.set("TJ-1", conflict_fault=0)
        latched = await events.next(ConditionName="conflict", **{"LatchedState__Id": True})
        assert latched.Retain is True and field(latched, "ActiveState/Id") is False
        await call(client, cid, O.AlarmConditionType_Reset2, ua.LocalizedText("monitor tested"))
        assert city.state("conflict", "TJ-1") == State.NORMAL
        assert (await events.next(ConditionName="conflict")).Retain is False


async def test_a_late_client_gets_the_active_conditions_by_condition_refresh(city: City) -> None:
    city.set("LC-1", temperature=75)  # active, unacknowledged
    city.set("LC-2", door_open=1)
    city.set("LC-2", door_open=0)  # returned to normal, acknowledgement owed: retained
    city.set("TJ-1", conflict_fault=1)
    city.engine.ack("conflict", "TJ-1", "op", "")  # active, acknowledged: retained
    city.set("LC-2", temperature=80)
    city.set("LC-2", temperature=40)
    city.engine.ack("hot", "LC-2", "op", "")  # cleared and acknowledged: normal, not retained
    # Every transition sent to OPC UA (the engine counts them, the conditions count what they
    # emitted) before the client subscribes: otherwise it could see them live.
    conditions = city.hmi.conditions
    await until(lambda: conditions.emitted >= city.engine.transitions and not conditions._queue, timeout=DEADLINE,
                what="the transitions emitted")
    expected = {("hot", "LC-1"), ("door", "LC-2"), ("conflict", "TJ-1")}
    async with client_events(city.url) as (client, events, sub):
        ctype = client.get_node(ua.NodeId(O.ConditionType))
        await ctype.call_method(ua.NodeId(O.ConditionType_ConditionRefresh),
                                ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        got = await events.refresh()
        assert events.before_refresh == []  # subscribing reports nothing by itself
        types = [ev.EventType for ev in got]
        assert types[0] == ua.NodeId(O.RefreshStartEventType) and types[-1] == ua.NodeId(O.RefreshEndEventType)
        conditions = got[1:-1]
        assert {(c.ConditionName, c.SourceName) for c in conditions} == expected
        assert all(c.Retain for c in conditions)
        hot = next(c for c in conditions if c.ConditionName == "hot")
        assert field(hot, "ActiveState/Id") is True and field(hot, "AckedState/Id") is False
        # The refreshed EventId is a valid one to acknowledge.
        await call(client, city.condition("hot"), O.AcknowledgeableConditionType_Acknowledge,
                   *ack_args(hot.EventId, "seen after refresh"))
        assert city.state("hot") == State.ACK_ACTIVE
        with pytest.raises(uaerrors.BadSubscriptionIdInvalid):
            await ctype.call_method(ua.NodeId(O.ConditionType_ConditionRefresh),
                                    ua.Variant(999_999, ua.VariantType.UInt32))

    # A device's notifier refreshes only that device's conditions (ConditionRefresh2 too).
    async with client_events(city.url, source=city.device_node("LC-2")) as (client, events, sub):
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh2), ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
            ua.Variant(events.mid, ua.VariantType.UInt32))
        got = await events.refresh()
        assert [(ev.ConditionName, ev.SourceName) for ev in got[1:-1]] == [("door", "LC-2")]


async def test_a_full_queue_asks_clients_to_refresh(city: City) -> None:
    async with client_events(city.url) as (client, events, sub):
        conditions = city.hmi.conditions
        conditions.queue_size = 1
        city.set("LC-1", temperature=90, door_open=1)  # two transitions for a queue of one
        ev = await events.next(EventType=ua.NodeId(O.RefreshRequiredEventType))
        assert ev.SourceNode == ua.NodeId(O.Server)
        assert conditions.dropped == 2 and conditions.resyncs == 1
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        got = await events.refresh()
        assert [e.EventType for e in (got[0], got[-1])] == [ua.NodeId(O.RefreshStartEventType),
                                                           ua.NodeId(O.RefreshEndEventType)]
        assert {(e.ConditionName, e.SourceName, e.Retain) for e in got[1:-1]} == {
            ("hot", "LC-1", True), ("door", "LC-1", True)}
        # Back to normal service: the next transitions are events again.
        conditions.queue_size = 100
        city.set("LC-1", door_open=0)
        assert field(await events.next(ConditionName="door"), "ActiveState/Id") is False


async def test_server_alarms_have_the_server_as_source(city: City) -> None:
    """AlarmEngine.system_alarm (no instance, device "server"): a condition of the Server object."""
    async with client_events(city.url) as (client, events, sub):
        city.engine.system_alarm("history_spool_filling", True, "history spool 85 % full")
        ev = await events.next(ConditionName="history_spool_filling")
        assert ev.SourceNode == ua.NodeId(O.Server) and ev.Retain is True and field(ev, "ActiveState/Id") is True
        assert text(ev.Message) == "history spool 85 % full" and ev.Severity == 750
        assert (await client.get_node(ev.NodeId).read_browse_name()).Name == "history_spool_filling"
        with pytest.raises(uaerrors.BadNotSupported):  # the engine has no acknowledgement for them
            await call(client, ev.NodeId, O.AcknowledgeableConditionType_Acknowledge, *ack_args(ev.EventId, "x"))
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        got = await events.refresh()
        assert [e.ConditionName for e in got[1:-1]] == ["history_spool_filling"]
        city.engine.system_alarm("history_spool_filling", False, "history spool below 70 %")
        ev = await events.next(ConditionName="history_spool_filling")
        assert ev.Retain is False and field(ev, "ActiveState/Id") is False


async def test_alarms_active_before_the_server_started_are_refreshed(tmp_path: Path) -> None:
    """States the engine had before the OPC UA side existed (restored from the journal, or raised
    before ``HmiServer.start``) are retained conditions from the start."""
    c = City(tmp_path / "cfg")
    healthy(c)
    c.set("LC-1", temperature=99)
    c.set("LC-2", door_open=1)
    c.engine.ack("door", "LC-2", "op", "")
    async with running(c), client_events(c.url) as (client, events, sub):
        await client.get_node(ua.NodeId(O.ConditionType)).call_method(
            ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        got = {e.ConditionName: e for e in (await events.refresh())[1:-1]}
        assert set(got) == {"hot", "door"}
        assert field(got["hot"], "AckedState/Id") is False and field(got["door"], "AckedState/Id") is True
        assert text(got["hot"].Message) == "LC-1: 99 degC above 60"
        await call(client, c.condition("hot"), O.AcknowledgeableConditionType_Acknowledge,
                   *ack_args(got["hot"].EventId, "ok"))
        assert c.state("hot") == State.ACK_ACTIVE


async def test_a_subscription_that_stops_publishing_does_not_hold_the_others(city: City, monkeypatch) -> None:
    """Backpressure waits for a client's backlog to drain, but not for ever."""
    from types import SimpleNamespace

    from scada.opcua.conditions import delivery

    monkeypatch.setattr(delivery, "SLOW_AFTER_S", 0.1)
    stuck = SimpleNamespace(_triggered_events={1: [object()] * delivery.MAX_PENDING},
                            data=SimpleNamespace(SubscriptionId=99))
    conditions = city.hmi.conditions
    t0 = asyncio.get_running_loop().time()
    async with asyncio.timeout(30):  # a generous bound: it gives up
        await conditions._backpressure([stuck])
    assert asyncio.get_running_loop().time() - t0 >= 0.1  # after SLOW_AFTER_S, not at once
    assert id(stuck) in conditions._slow
    # Known slow: not waited for again. Were it waited for, an hour would not be enough.
    monkeypatch.setattr(delivery, "SLOW_AFTER_S", 3600.0)
    async with asyncio.timeout(30):
        await conditions._backpressure([stuck])
    stuck._triggered_events = {}
    await conditions._backpressure([stuck])  # caught up: waited for again next time
    assert id(stuck) not in conditions._slow
