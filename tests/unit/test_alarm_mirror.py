"""AlarmMirror: the engine's columns and actions across a process boundary.

A real engine (tests/alarm_rig.py) is mirrored as an OPC UA front would mirror it: the
snapshot, every notification's event items, every action's arguments and reply go through
pickle.dumps/loads (what the channel does); the actions are served by serve_alarm_action.
After each step the mirror's columns equal the engine's, and a refusal comes back as the
engine's own exception class.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from scada import status as st
from scada.alarms.engine import AlarmEngine
from scada.alarms.remote import (
    COLUMNS,
    RemoteAlarmError,
    alarm_snapshot,
    event_items,
    serve_alarm_action,
)
from scada.alarms.states import Event, IllegalTransition, State
from scada.front.alarms import AlarmMirror
from tests.unit.test_alarm_engine import Bench
from tests.unit.test_alarm_engine import bench as bench  # the engine tests' rig, healthy


def crossed(obj):
    """``obj`` as the other process gets it."""
    return pickle.loads(pickle.dumps(obj))


class Crossing:
    """A mirror of ``engine``, fed and served through pickle (the OPC UA tests use it too)."""

    def __init__(self, engine: AlarmEngine) -> None:
        self.engine = engine
        self.requests: list[tuple] = []
        # The configuration crosses with the front's INIT message; the static tables are built here.
        self.mirror = AlarmMirror(engine.config, len(engine.tagdb), self.request, engine.clock)
        self.mirror.load(crossed(alarm_snapshot(self.engine)))
        self.sent: list = []  # the event items of every notification, as the core built them
        self.seen: list = []  # the same, rebuilt from the mirror by its subscriber
        self.engine.subscribers.append(self.forward)
        self.mirror.subscribers.append(lambda events: self.seen.append(event_items(self.mirror, events)))

    def forward(self, events) -> None:
        items = event_items(self.engine, events)
        self.sent.append(items)
        self.mirror.receive(crossed(items))

    async def request(self, op: str, *args):
        """The channel: a synchronous handler in the core, its reply or its (kind, payload)."""
        assert op == "alarm_action"
        self.requests.append(args)
        try:
            reply = ("ok", serve_alarm_action(self.engine, *crossed(args)))
        except RemoteAlarmError as exc:
            reply = ("error", exc.kind, exc.payload)
        reply = crossed(reply)
        if reply[0] == "error":
            raise RemoteAlarmError(reply[1], reply[2])
        return reply[1]

    def assert_same(self) -> None:
        for name in COLUMNS:
            np.testing.assert_array_equal(getattr(self.mirror, name), getattr(self.engine, name), err_msg=name)
        watched = self.engine.inst_tag
        np.testing.assert_array_equal(self.mirror.tagdb.status[watched], self.engine.tagdb.status[watched])
        assert self.seen == self.sent


async def test_the_mirror_follows_values_and_operator_actions(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)  # active before the mirror: it comes with the snapshot
    x = Crossing(bench.engine)
    m = x.mirror
    x.assert_same()
    assert m.describe(m.instance("hot", "LC-1"))["message"] == "LC-1: 70 degC above 60"

    events = await m.ack("hot", "LC-1", "op1", "crew informed")
    assert [(e.alarm, e.event, e.state) for e in events] == [("hot", "ACK", State.ACK_ACTIVE)]
    x.assert_same()
    with pytest.raises(IllegalTransition) as refused:  # nothing owed any more
        await m.ack("hot", "LC-1", "op1")
    assert (refused.value.state, refused.value.event) == (State.ACK_ACTIVE, Event.ACK)
    assert refused.value.active and not refused.value.latching
    await m.note("hot", "LC-1", "op1", "truck 12 on its way")
    x.assert_same()

    # A one-shot shelve ends when the condition clears (hot has a 3 s off-delay).
    bench.set("LC-2", temperature=75)
    await m.shelve("hot", "LC-2", "op2", "sensor check", 3600, True)
    i = m.instance("hot", "LC-2")
    assert m.state[i] == State.SHELVED and m.one_shot[i] and m.shelved_until[i] > 0
    x.assert_same()
    bench.set("LC-2", temperature=40)
    bench.clock.advance(4)
    assert [e.event for e in bench.engine.tick()] == ["CLEAR", "UNSHELVE"]
    assert m.state[i] == State.NORMAL and not m.one_shot[i] and m.shelved_until[i] == 0
    x.assert_same()

    # A timed shelve of a normal alarm, released by the operator; another one expires.
    await m.shelve("door_lc2", "LC-2", "op2", "door sensor replaced", 60)
    x.assert_same()
    await m.unshelve("door_lc2", "LC-2", "op2")
    await m.shelve("door_lc2", "LC-2", "op2", "door sensor replaced", 10)
    bench.clock.advance(11)
    assert [e.event for e in bench.engine.tick()] == ["SHELVE_EXPIRED"]
    x.assert_same()

    await m.remove_from_service("lamps_failed", "LC-1", "op3", "relamping")
    assert m.state[m.instance("lamps_failed", "LC-1")] == State.OUT_OF_SERVICE
    bench.set("LC-1", failed_lamps=4)  # the condition moves while out of service
    x.assert_same()
    await m.return_to_service("lamps_failed", "LC-1", "op3")
    assert m.state[m.instance("lamps_failed", "LC-1")] == State.UNACK_ACTIVE
    x.assert_same()

    # A latched alarm: acknowledged, its condition gone, reset.
    bench.set("TJ-1", conflict_fault=1)
    await m.ack("conflict", "TJ-1", "op4")
    bench.set("TJ-1", conflict_fault=0)
    assert m.state[m.instance("conflict", "TJ-1")] == State.LATCHED
    await m.reset("conflict", "TJ-1", "op4", "signals checked")
    assert m.state[m.instance("conflict", "TJ-1")] == State.NORMAL
    x.assert_same()

    # The link to LC-2 is lost: the event's quality is the watched tag's status.
    bench.set("LC-2", mode=0)
    bench.engine.process(bench.tagdb.set_status([bench.tag("LC-2", "mode")], st.BAD_COMMUNICATION_ERROR))
    bench.clock.advance(10)  # comm_loss's on-delay
    assert ("comm_loss", "ACTIVATE") in [(e.alarm, e.event) for e in bench.engine.tick()]
    assert x.sent[-1][-1].quality == st.BAD_COMMUNICATION_ERROR
    x.assert_same()


async def test_refusals_come_back_as_the_engines_exceptions(bench: Bench) -> None:
    x = Crossing(bench.engine)
    before = bench.engine.transitions
    m = x.mirror
    with pytest.raises(KeyError, match="no alarm 'hot' on device 'TJ-1'"):
        await m.ack("hot", "TJ-1", "op")
    with pytest.raises(ValueError, match="at most 24 h") as too_long:
        await m.shelve("hot", "LC-1", "op", "why", 90_000)
    assert not isinstance(too_long.value, IllegalTransition)
    with pytest.raises(ValueError, match="needs a reason"):
        await m.shelve("hot", "LC-1", "op", "  ", 60)
    with pytest.raises(IllegalTransition):  # normal: nothing to reset
        await m.reset("conflict", "TJ-1", "op")
    # Anything else crosses as its repr, never as a pickled exception object.
    with pytest.raises(RemoteAlarmError) as other:
        await x.request("alarm_action", "ack", "hot")  # arguments missing
    assert other.value.kind == "error" and "TypeError" in other.value.payload
    assert x.sent == [] and bench.engine.transitions == before  # nothing refused was applied


def test_an_unknown_action_is_refused_and_nothing_is_called(bench: Bench) -> None:
    before = bench.engine.transitions
    with pytest.raises(RemoteAlarmError) as refused:
        serve_alarm_action(bench.engine, "restore")
    assert refused.value.kind == "value" and "unknown alarm action 'restore'" in refused.value.payload
    with pytest.raises(RemoteAlarmError, match="unknown alarm action"):
        serve_alarm_action(bench.engine, "__class__")
    assert bench.engine.transitions == before


def test_bad_snapshots_and_items_are_refused_and_change_nothing(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)
    x = Crossing(bench.engine)
    snap = alarm_snapshot(bench.engine)
    with pytest.raises(ValueError, match="this front's configuration has"):
        x.mirror.load({**snap, "n": snap["n"] + 1})
    with pytest.raises(ValueError, match="malformed"):
        x.mirror.load({**snap, "state": snap["state"][:-1]})
    items = event_items(bench.engine, bench.set("LC-2", temperature=70))
    far = items[0]._replace(event=pickle.loads(pickle.dumps(items[0].event)))
    object.__setattr__(far.event, "instance", bench.engine.n)  # an instance of another configuration
    with pytest.raises(ValueError, match="beyond this front's"):
        x.mirror.receive([items[0], far])
    x.assert_same()
