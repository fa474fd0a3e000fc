"""The work-order service on a real alarm engine (the alarm tests' rig: a real TagDB, journal and
engine on a clock the test moves), a real SQLite order journal under tmp_path, and a fake crew
board (the crews' MQTT side is tested with the real driver elsewhere): every path of an order,
the operators' refusals, citizen reports and the restart."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from scada.control.model import (
    BAD_INVALID_ARGUMENT,
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_NODE_ID_UNKNOWN,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    Caller,
)
from scada.driver_api import DeviceUnreachable
from scada.operations.journal import OrderJournal
from scada.operations.model import (
    CitizenReport,
    CrewDef,
    Delays,
    DispatchSettings,
    OperationsConfig,
    OpsRequest,
    OrderState,
    ServiceDef,
)
from scada.operations.orders import LATE_ALARM, WorkOrderService
from scada.security.audit import MemoryAudit
from tests.alarm_rig import SERVICES, AlarmRig, Clock

S = 1_000_000_000

ALARMS = (
    SERVICES
    + """
alarms:
  - {name: mains_loss, type: lighting_cabinet, point: mains_voltage, condition: low, limit: 180,
     priority: critical, message: "{device}: mains {value} V", service: lighting_maintenance}
  - {name: lamps_failed, type: lighting_cabinet, point: failed_lamps, condition: high, limit: 0,
     priority: medium, message: "{device}: {value} failed lamps", service: lighting_maintenance,
     suppressed_by: [mains_loss]}
  - {name: conflict_fault, type: traffic_junction, point: conflict_fault, condition: state, states: [1],
     priority: critical, message: "{device}: conflict", service: traffic_control, latching: true}
"""
)
# LC-1 (Talant) and LC-2 (Dijon) both sit at 47.3, 5.0 in the rig: one more cabinet 1 km north.
DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}
  - {name: LC-2, type: lighting_cabinet, commune: Dijon, lat: 47.309, lon: 5.0, endpoint: "10.0.0.2:502"}
  - {name: TJ-1, type: traffic_junction, commune: Dijon, lat: 47.32, lon: 5.0, endpoint: "opc.tcp://10.0.0.9:4840/"}
"""


def ops_config(auto_assign: bool = True, answer_timeout_s: float = 300.0) -> OperationsConfig:
    delays = {
        p: Delays(on_site_s=3600.0, repaired_s=4 * 3600.0, warn_before_s=600.0)
        for p in ("low", "medium", "high", "critical")
    }
    return OperationsConfig(
        services={
            "lighting_maintenance": ServiceDef(
                "lighting_maintenance", ("lighting",), delays, open311_code="streetlight", default_priority="medium"
            ),
            "traffic_control": ServiceDef("traffic_control", ("traffic",), delays, open311_code="traffic_signal"),
        },
        crews={
            "V-1": CrewDef("V-1", ("lighting_maintenance",)),
            "V-2": CrewDef("V-2", ("lighting_maintenance",)),
            "V-3": CrewDef("V-3", ("traffic_control",)),
        },
        dispatch=DispatchSettings(auto_assign=auto_assign, answer_timeout_s=answer_timeout_s),
    )


class FakeCrews:
    """service.Crews for a unit test of the dispatch logic: proposes the crews with the skill in a
    fixed order, records what is sent, fails sends while ``down``."""

    def __init__(self, ops: OperationsConfig) -> None:
        self.ops = ops
        self.sent: list[tuple[str, str | None, str, str]] = []  # (order, crew, action, correlation id)
        self.down = False
        self.available = set(ops.crews)
        self.held: set[str] = set()  # what the service last told busy()

    def busy(self, vehicles) -> None:
        self.held = set(vehicles)

    def propose(self, order, limit: int = 3):
        return [(c, 60.0 * n) for n, c in enumerate(self.ops.crews_for(order.service)) if c in self.available][:limit]

    async def send(self, order, action: str) -> None:
        if self.down:
            raise DeviceUnreachable(f"{order.crew}: broker unreachable")
        self.sent.append((order.id, order.crew, action, order.correlation_id))


class Rig:
    def __init__(self, tmp_path, ops: OperationsConfig | None = None, crews: bool = True, ops_clock=None) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.ops_clock = ops_clock or self.clock  # the operations clock (simulated time in a simulated run)
        self.alarms = AlarmRig(tmp_path / "cfg", ALARMS, tmp_path / "alarms.sqlite", self.clock, DEVICES)
        self.alarms.set("LC-1", mains_voltage=230, failed_lamps=0)
        self.alarms.set("LC-2", mains_voltage=230, failed_lamps=0)
        self.alarms.set("TJ-1", conflict_fault=0)
        self.ops = ops or ops_config()
        self.config = dataclasses.replace(self.alarms.config, operations=self.ops)
        self.audit = MemoryAudit()
        self.crews = FakeCrews(self.ops) if crews else None
        self.service = self.start()

    def start(self) -> WorkOrderService:
        svc = WorkOrderService(
            self.config,
            self.alarms.engine,
            OrderJournal(self.tmp_path / "workorders.sqlite"),
            self.audit,
            self.crews,
            self.ops_clock,
        )
        self.alarms.engine.subscribers[:] = [svc.on_alarm_events]
        return svc

    def set(self, device: str, **values: float) -> None:
        self.alarms.set(device, **values)
        self.service.process_alarm_events()

    async def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.service.process_alarm_events()
        await self.service.tick()

    def answer(self, order: str, status: str, crew: str | None = None, cid: str | None = None) -> None:
        o = self.service.orders[order]
        self.service.crew_answer(
            crew or o.crew or "", {"order_id": order, "correlation_id": cid or o.correlation_id, "status": status}
        )

    def events(self, order: str) -> list[tuple[str, str, str]]:
        assert self.service.writer.flush()
        return [(e.event, e.to_state.label, e.user) for e in self.service.journal.events(order)]

    def late(self, order: str) -> bool:
        return bool(self.alarms.engine._system.get((order, LATE_ALARM)))

    def close(self) -> None:
        self.service.close()


DISPATCHER = Caller("dora", ("Operator",), None, session="s1", client="10.0.0.5:5000")
TALANT_ONLY = Caller("tim", ("Operator",), ("Talant",), session="s2")
OBSERVER = Caller("olga", ("Observer",), None)


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def only_order(rig: Rig):
    assert len(rig.service.orders) == 1, rig.service.orders
    return next(iter(rig.service.orders.values()))


# -- from alarms to closure ---------------------------------------------------------------------


async def test_lamp_alarm_creates_an_order_with_its_deadlines_and_attaches_later_activations(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        t0 = rig.clock()
        rig.set("LC-1", failed_lamps=3)
        order = only_order(rig)
        assert (order.source, order.service, order.priority, order.device, order.cause) == (
            "alarm",
            "lighting_maintenance",
            "medium",
            "LC-1",
            "lamps_failed",
        )
        assert (order.commune, order.lat, order.lon, order.state) == ("Talant", 47.3, 5.0, OrderState.NEW)
        assert order.origin_ns == t0 and order.alarms == 1
        assert (order.on_site_due_ns, order.repaired_due_ns) == (t0 + 3600 * S, t0 + 4 * 3600 * S)
        # A crew is on its way; the alarm clears and comes back before anyone repaired it: the
        # same order, two alarms.
        r = await rig.service.apply(OpsRequest("assign", {"order": order.id, "crew": "V-1"}, DISPATCHER))
        assert r.status == GOOD
        rig.clock.advance(10)
        rig.set("LC-1", failed_lamps=0)
        rig.clock.advance(10)
        rig.set("LC-1", failed_lamps=2)
        again = only_order(rig)
        assert again.id == order.id and again.alarms == 2
        assert [e for e, _, _ in rig.events(order.id)] == ["create", "assign", "note", "attach"]
    finally:
        rig.close()


async def test_a_fault_gone_before_dispatch_cancels_its_order_unless_its_alarm_latches(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        rig.set("LC-1", failed_lamps=3)
        rig.set("TJ-1", conflict_fault=1)
        lamp, conflict = (next(o for o in rig.service.orders.values() if o.device == d) for d in ("LC-1", "TJ-1"))
        rig.set("LC-1", failed_lamps=0)
        rig.set("TJ-1", conflict_fault=0)  # the latch stays: a technician must reset it on site
        assert list(rig.service.orders) == [conflict.id]
        assert rig.events(lamp.id)[-1] == ("cancel", "cancelled", "server")
        assert rig.events(conflict.id)[-1] == ("note", "new", "server")
    finally:
        rig.close()


async def test_in_a_simulated_run_times_are_in_the_operations_clock(tmp_path):
    """The alarm engine stamps real time; a simulated run's operations clock is a day ahead here:
    the order's origin, deadlines and events are all in the simulated time."""
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    sim = Clock(rig.clock() + 86400 * S)
    rig.close()
    rig = Rig(tmp_path / "sim", ops_config(auto_assign=False), ops_clock=sim)
    try:
        rig.set("LC-1", failed_lamps=3)
        order = only_order(rig)
        assert order.origin_ns == sim() and order.created_ns == sim()
        assert order.on_site_due_ns == sim() + 3600 * S
        await rig.service.tick()
        assert not rig.service.orders[order.id].breached  # a real-time origin would be a day late
        status, _m, rid, _o = await rig.service.citizen_report(report(47.3, 5.0, requested_ns=time.time_ns()))
        (listed, _state), *_ = await rig.service.reports([rid], None, None, None, None, None)
        assert abs(listed["requested_ns"] - sim()) < 5 * S
        # The front bounds a GET by the operations clock it is given (scada/front/orders.py):
        # found by id and in the window of the last hour of that clock.
        (by_id, state), *_ = await rig.service.reports([rid], None, 0, sim(), None, 1)
        assert (by_id["id"], state) == (rid, "new")
        recent = await rig.service.reports(None, None, sim() - 3600 * S, sim(), None, 10)
        assert [d["id"] for d, _state in recent] == [rid]
        # Real-time bounds would be a day behind the stored times: nothing.
        assert await rig.service.reports(None, None, time.time_ns() - 3600 * S, time.time_ns(), None, 10) == []
    finally:
        rig.close()


async def test_unrouted_server_and_suppressed_alarms_make_no_order(tmp_path):
    ops = ops_config(auto_assign=False)
    ops = dataclasses.replace(ops, services={"traffic_control": ops.services["traffic_control"]})
    rig = Rig(tmp_path, ops)
    try:
        rig.set("LC-1", failed_lamps=3)  # lighting_maintenance is not in operations.yaml here
        rig.alarms.engine.system_alarm("server_task_failed", True, "x", service="traffic_control")
        rig.service.process_alarm_events()
        assert rig.service.orders == {}
    finally:
        rig.close()
    rig = Rig(tmp_path / "b", ops_config(auto_assign=False))
    try:
        # The mains loss (the cause) gets the order; the lamps it darkens are suppressed: none for them.
        rig.set("LC-2", mains_voltage=0, failed_lamps=5)
        assert [o.cause for o in rig.service.orders.values()] == ["mains_loss"]
    finally:
        rig.close()


async def test_the_whole_loop_auto_dispatch_crew_answers_repair_and_clear_closes(rig):
    rig.set("LC-1", failed_lamps=3)
    await rig.tick()
    order = only_order(rig)
    assert (order.state, order.crew) == (OrderState.ASSIGNED, "V-1")
    assert rig.crews.sent == [(order.id, "V-1", "assign", order.correlation_id)] and order.correlation_id
    for status, state in (
        ("accepted", OrderState.ACCEPTED),
        ("en_route", OrderState.EN_ROUTE),
        ("on_site", OrderState.ON_SITE),
    ):
        rig.clock.advance(60)
        rig.answer(order.id, status)
        assert rig.service.orders[order.id].state == state
    await rig.tick()
    assert rig.crews.held == {"V-1"}
    rig.clock.advance(60)
    rig.answer(order.id, "repaired")
    # The alarm is still active (the next poll has not come): repaired, waiting for the clear;
    # the crew is free for another order meanwhile.
    assert rig.service.orders[order.id].state == OrderState.REPAIRED
    await rig.tick()
    assert rig.crews.held == set()
    rig.clock.advance(5)
    rig.set("LC-1", failed_lamps=0)
    assert rig.service.orders == {} and rig.service.by_key == {}
    assert rig.events(order.id) == [
        ("create", "new", "server"),
        ("assign", "assigned", "server"),
        ("accept", "accepted", "crew:V-1"),
        ("depart", "en_route", "crew:V-1"),
        ("arrive", "on_site", "crew:V-1"),
        ("repair", "repaired", "crew:V-1"),
        ("close", "closed", "server"),
    ]
    (closed,) = rig.service.journal.orders(ids=[order.id])
    assert closed.on_site_ns == order.assigned_ns + 180 * S and closed.closed_ns == closed.repaired_ns + 5 * S
    # The next failure of the same cabinet is a new order.
    rig.set("LC-1", failed_lamps=1)
    assert only_order(rig).id != order.id


async def test_latching_alarm_order_closes_on_the_condition_not_the_reset(rig):
    rig.set("TJ-1", conflict_fault=1)
    await rig.tick()
    order = only_order(rig)
    assert (order.priority, order.crew) == ("critical", "V-3")
    for status in ("accepted", "on_site"):
        rig.answer(order.id, status)
    rig.set("TJ-1", conflict_fault=0)  # repaired on site: the condition clears, the alarm stays LATCHED
    assert rig.alarms.state("conflict_fault", "TJ-1").name in ("LATCHED", "RTN_UNACK")  # owes a reset
    assert rig.service.orders[order.id].state == OrderState.ON_SITE  # a clear before the repair: a note
    rig.answer(order.id, "repaired")  # the condition is already clear: closed at once
    assert rig.service.orders == {}
    assert [e for e, _, _ in rig.events(order.id)][-3:] == ["note", "repair", "close"]


async def test_repaired_order_reopens_when_its_alarm_activates_again(rig):
    rig.set("LC-1", failed_lamps=3)
    await rig.tick()
    order = only_order(rig)
    rig.set("LC-1", failed_lamps=0)  # the alarm clears before the repair (a note)
    for status in ("on_site", "repaired"):
        rig.answer(order.id, status)
    # closed at once: the condition was clear at the repair
    assert rig.service.orders == {}
    rig.set("LC-2", failed_lamps=2)
    await rig.tick()
    o2 = only_order(rig)
    rig.answer(o2.id, "on_site")
    rig.answer(o2.id, "repaired")
    assert rig.service.orders[o2.id].state == OrderState.REPAIRED  # LC-2's lamps still failed
    # The engine sees the lamps fine, then failed again before the order was closed? The clear
    # closes it; so the reopening comes from an activation without a clear in between: a
    # suppression ending (the mains came back with the lamps still failed).
    rig.set("LC-2", mains_voltage=0)  # suppresses lamps_failed (its cause)
    rig.set("LC-2", mains_voltage=230)  # UNSUPPRESS: lamps_failed shown again, still active
    reopened = rig.service.orders[o2.id]
    assert (reopened.state, reopened.crew, reopened.alarms) == (OrderState.NEW, None, 2)
    assert ("reopen", "new", "server") in rig.events(o2.id)
    await rig.tick()
    assert rig.service.orders[o2.id].state == OrderState.ASSIGNED


# -- crews: answers, failures, timeouts --------------------------------------------------------


async def test_stale_and_garbage_answers_are_ignored_and_never_raise(rig):
    rig.set("LC-1", failed_lamps=3)
    await rig.tick()
    order = only_order(rig)
    rig.answer(order.id, "accepted", cid="an-earlier-assignment")
    rig.answer(order.id, "accepted", crew="V-2")  # not its crew
    for garbage in (
        None,
        "accepted",
        {"order_id": order.id},
        {"order_id": 5, "correlation_id": "x", "status": "on_site"},
    ):
        rig.service.crew_answer("V-1", garbage)  # type: ignore[arg-type]
    rig.service.crew_answer("V-1", {"order_id": order.id, "correlation_id": order.correlation_id, "status": "lunch"})
    assert rig.service.orders[order.id].state == OrderState.ASSIGNED
    assert (rig.service.answers_ignored, rig.service.answers_garbage) == (2, 5)
    rig.answer(order.id, "repaired")  # not allowed from assigned: logged, ignored
    assert rig.service.orders[order.id].state == OrderState.ASSIGNED and rig.service.answers_ignored == 3


async def test_no_crew_or_a_failed_send_leaves_the_order_new_and_it_is_retried(rig, monkeypatch):
    import scada.operations.orders as orders

    rig.crews.down = True
    rig.set("LC-1", failed_lamps=3)
    await rig.tick()
    order = only_order(rig)
    assert order.state == OrderState.NEW and order.crew is None
    assert rig.events(order.id)[-1][0] == "dispatch_failed"
    rig.crews.down = False
    await rig.tick()  # not before DISPATCH_RETRY_S
    assert rig.service.orders[order.id].state == OrderState.NEW
    later = [1e12]  # the retries' clock, moved by the test
    monkeypatch.setattr(orders.time, "monotonic", lambda: later[0])
    await rig.tick()
    assert rig.service.orders[order.id].state == OrderState.ASSIGNED
    # A traffic order when its only crew is unavailable: dispatch_failed with the reason.
    rig.crews.available.discard("V-3")
    rig.set("TJ-1", conflict_fault=1)
    await rig.tick()
    tj = next(o for o in rig.service.orders.values() if o.device == "TJ-1")
    failed = (
        [e for e in rig.service.journal.events(tj.id) if e.event == "dispatch_failed"]
        if rig.service.writer.flush()
        else []
    )
    assert tj.state == OrderState.NEW and failed and "no available crew" in failed[0].detail
    later[0] += orders.NO_CREW_RETRY_S
    await rig.tick()  # tried again: still no crew, not journaled again
    assert rig.service.writer.flush()
    assert [e.event for e in rig.service.journal.events(tj.id)].count("dispatch_failed") == 1
    rig.crews.available.add("V-3")
    later[0] += orders.NO_CREW_RETRY_S
    await rig.tick()
    assert rig.service.orders[tj.id].crew == "V-3"


async def test_one_dispatch_pass_gives_each_free_crew_one_order_and_scans_the_orders_per_send(rig, monkeypatch):
    # Four lighting orders, two lighting crews: one pass assigns two orders to two crews, the
    # others wait. The busy crews are computed once per pass and after each send, not per order
    # (a scan per waiting order stalled the core's loop with 1,000 orders: bench_operations.py).
    for k in range(4):
        res = await rig.service.apply(
            OpsRequest(
                "create",
                {"service": "lighting_maintenance", "lat": 47.3 + k / 100, "lon": 5.0, "description": f"lamp {k}"},
                DISPATCHER,
            )
        )
        assert res.status == GOOD, res
    scans = []
    held = rig.service._held
    monkeypatch.setattr(rig.service, "_held", lambda but="": scans.append(but) or held(but))
    await rig.tick()
    crews = sorted(o.crew for o in rig.service.orders.values() if o.state == OrderState.ASSIGNED)
    assert crews == ["V-1", "V-2"]
    assert sum(o.state == OrderState.NEW for o in rig.service.orders.values()) == 2
    assert len(scans) <= 4  # the board's view, the pass, one per send: not one per order


async def test_refused_or_unanswered_assignment_goes_to_another_crew(tmp_path):
    rig = Rig(tmp_path, ops_config(answer_timeout_s=120.0))
    try:
        rig.set("LC-1", failed_lamps=3)
        await rig.tick()
        order = only_order(rig)
        assert order.crew == "V-1"
        rig.answer(order.id, "refused")
        refused = rig.service.orders[order.id]
        assert (refused.state, refused.crew, refused.correlation_id) == (OrderState.NEW, None, "")
        await rig.tick()
        order = only_order(rig)
        assert order.crew == "V-2"
        # V-2 never answers: after answer_timeout_s the server takes it back, V-2 is told to
        # cancel; both crews refused once: asked again, nearest first.
        await rig.tick(119)
        assert only_order(rig).crew == "V-2"
        await rig.tick(2)
        assert [s[1:3] for s in rig.crews.sent[-2:]] == [("V-2", "cancel"), ("V-1", "assign")]
        assert rig.events(order.id)[-2:] == [("refuse", "new", "server"), ("assign", "assigned", "server")]
        assert only_order(rig).crew == "V-1"
    finally:
        rig.close()


async def test_answers_during_the_send_wait_for_it(rig):
    """A crew that answers before the publish call returns (a fast simulator): the answer is
    applied after the assignment, never lost as stale."""

    async def send(order, action):
        rig.crews.sent.append((order.id, order.crew, action, order.correlation_id))
        rig.service.crew_answer(
            order.crew, {"order_id": order.id, "correlation_id": order.correlation_id, "status": "accepted"}
        )
        await asyncio.sleep(0)

    rig.crews.send = send  # type: ignore[method-assign]
    rig.set("LC-1", failed_lamps=3)
    await rig.tick()
    order = only_order(rig)
    assert order.state == OrderState.ACCEPTED
    assert [e for e, _, _ in rig.events(order.id)] == ["create", "assign", "accept"]


# -- deadlines ----------------------------------------------------------------------------------


async def test_deadline_warning_breach_and_escalation_alarm_cleared_at_closure(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        rig.set("LC-1", failed_lamps=3)
        order = only_order(rig)
        await rig.tick(3600 - 601)
        assert not rig.service.orders[order.id].warned
        await rig.tick(2)  # 599 s before on_site_due
        assert rig.service.orders[order.id].warned and not rig.late(order.id)
        await rig.tick(598)
        assert not rig.service.orders[order.id].breached
        await rig.tick(1)  # at the deadline
        late = rig.service.orders[order.id]
        assert late.breached and rig.late(order.id)
        await rig.tick(10)  # once
        assert [e for e, _, _ in rig.events(order.id)] == ["create", "warn", "breach"]
        assert rig.service.stats()["orders_breached"] == 1
        # The crew arrives late; the repaired deadline (4 h) gets its own warning, then the close.
        r = await rig.service.apply(OpsRequest("assign", {"order": order.id, "crew": "V-2"}, DISPATCHER))
        assert r.status == GOOD, r
        rig.answer(order.id, "on_site")
        await rig.tick(3 * 3600 - 599 - 10)
        assert [e for e, _, _ in rig.events(order.id)][-1] == "warn"
        rig.answer(order.id, "repaired")
        rig.set("LC-1", failed_lamps=0)
        assert rig.service.orders == {} and not rig.late(order.id)
    finally:
        rig.close()


# -- operators ----------------------------------------------------------------------------------


async def test_operator_create_assign_cancel_close_and_the_audit(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        svc = rig.service
        r = await svc.apply(
            OpsRequest(
                "create", {"service": "lighting_maintenance", "device": "LC-2", "description": "pole bent"}, DISPATCHER
            )
        )
        assert r.status == GOOD and r.order
        order = svc.orders[r.order]
        assert (order.source, order.commune, order.priority, order.created_by) == (
            "operator",
            "Dijon",
            "medium",
            "dora",
        )
        p = await svc.apply(OpsRequest("propose", {"order": r.order}, DISPATCHER))
        assert p.status == GOOD and [c for c, _ in p.data["crews"]] == ["V-1", "V-2"]
        a = await svc.apply(OpsRequest("assign", {"order": r.order, "crew": ""}, DISPATCHER))  # the proposed one
        assert (a.status, a.data["crew"]) == (GOOD, "V-1")
        a = await svc.apply(OpsRequest("assign", {"order": r.order, "crew": "V-2"}, DISPATCHER))  # reassigned
        assert a.status == GOOD and svc.orders[r.order].crew == "V-2"
        assert rig.crews.sent[-2:] == [
            (r.order, "V-2", "assign", svc.orders[r.order].correlation_id),
            (r.order, "V-1", "cancel", rig.crews.sent[-1][3]),
        ]
        rig.answer(r.order, "on_site")
        c = await svc.apply(OpsRequest("close", {"order": r.order, "note": "fixed, confirmed by phone"}, DISPATCHER))
        assert c.status == GOOD and r.order not in svc.orders
        assert rig.events(r.order)[-1] == ("close", "closed", "dora")
        # A second one, cancelled.
        r2 = await svc.apply(OpsRequest("create", {"service": "traffic_control", "lat": 47.32, "lon": 5.0}, DISPATCHER))
        assert svc.orders[r2.order].commune == "Dijon" and svc.orders[r2.order].device is None
        x = await svc.apply(OpsRequest("cancel", {"order": r2.order, "reason": "duplicate"}, DISPATCHER))
        assert x.status == GOOD and rig.events(r2.order)[-1] == ("cancel", "cancelled", "dora")
        actions = [(a.action, a.user, a.target, a.result) for a in rig.audit.records if a.action == "work_order"]
        assert actions[0] == ("work_order", "dora", r.order, "Good") and len(actions) == 7
        assert all(a.client_address == "10.0.0.5:5000" for a in rig.audit.records if a.action == "work_order")
    finally:
        rig.close()


async def test_operator_refusals_each_with_its_status_and_audited(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        svc = rig.service
        rig.set("LC-1", failed_lamps=3)  # Talant
        rig.set("LC-2", failed_lamps=3)  # Dijon
        talant = next(o.id for o in svc.orders.values() if o.commune == "Talant")
        dijon = next(o.id for o in svc.orders.values() if o.commune == "Dijon")
        cases = [
            (OpsRequest("cancel", {"order": talant}, OBSERVER), BAD_USER_ACCESS_DENIED, "may not cancel"),
            (OpsRequest("cancel", {"order": dijon}, TALANT_ONLY), BAD_USER_ACCESS_DENIED, "outside their communes"),
            (OpsRequest("cancel", {"order": "WO-999999"}, DISPATCHER), BAD_NODE_ID_UNKNOWN, "no work order"),
            (OpsRequest("assign", {"order": talant, "crew": "V-9"}, DISPATCHER), BAD_NODE_ID_UNKNOWN, "no crew"),
            (OpsRequest("assign", {"order": talant, "crew": "V-3"}, DISPATCHER), BAD_INVALID_ARGUMENT, "does not work"),
            (OpsRequest("close", {"order": talant}, DISPATCHER), BAD_INVALID_STATE, "is new: close is not allowed"),
            (OpsRequest("fly", {"order": talant}, DISPATCHER), BAD_INVALID_ARGUMENT, "unknown work-order operation"),
            (OpsRequest("cancel", {"order": talant, "x": 1}, DISPATCHER), BAD_INVALID_ARGUMENT, "unknown argument"),
            (OpsRequest("create", {"service": "gardening"}, DISPATCHER), BAD_INVALID_ARGUMENT, "unknown service"),
            (
                OpsRequest(
                    "create", {"service": "traffic_control", "priority": "urgent", "device": "TJ-1"}, DISPATCHER
                ),
                BAD_INVALID_ARGUMENT,
                "unknown priority",
            ),
            (
                OpsRequest("create", {"service": "traffic_control", "device": "XX"}, DISPATCHER),
                BAD_NODE_ID_UNKNOWN,
                "no device",
            ),
            (
                OpsRequest("create", {"service": "traffic_control", "lat": 95, "lon": 5}, DISPATCHER),
                BAD_INVALID_ARGUMENT,
                "not a position",
            ),
            (
                OpsRequest("create", {"service": "traffic_control", "lat": "x", "lon": 5}, DISPATCHER),
                BAD_INVALID_ARGUMENT,
                "numbers",
            ),
            (OpsRequest("create", {"service": "traffic_control"}, DISPATCHER), BAD_INVALID_ARGUMENT, "is required"),
            (
                OpsRequest("create", {"service": "traffic_control", "device": "TJ-1"}, TALANT_ONLY),
                BAD_USER_ACCESS_DENIED,
                "outside their communes",
            ),
        ]
        before = {o.id: o for o in svc.orders.values()}
        for request, status, text in cases:
            r = await svc.apply(request)
            assert (hex(r.status), text in r.message) == (hex(status), True), (request, r)
        assert {o.id: o for o in svc.orders.values()} == before  # nothing changed
        assert len([a for a in rig.audit.records if a.action == "work_order" and a.result != "Good"]) == len(cases)
        # A closed order: BadInvalidState naming its state.
        rig.answer(talant, "on_site") if svc.orders[talant].crew else None
        ok = await svc.apply(OpsRequest("cancel", {"order": talant}, DISPATCHER))
        assert ok.status == GOOD
        again = await svc.apply(OpsRequest("cancel", {"order": talant}, DISPATCHER))
        assert again.status == BAD_INVALID_STATE and "is cancelled" in again.message
        # A crew board that cannot send: BadNoCommunication, the order unchanged.
        rig.crews.down = True
        r = await svc.apply(OpsRequest("assign", {"order": dijon, "crew": "V-1"}, DISPATCHER))
        assert r.status == BAD_NO_COMMUNICATION and svc.orders[dijon].state == OrderState.NEW
    finally:
        rig.close()


# -- citizen reports ----------------------------------------------------------------------------


def report(
    lat: float | None, lon: float | None, code: str = "streetlight", requested_ns: int = 0, **contact: str
) -> CitizenReport:
    return CitizenReport("", code, "lamp out", lat, lon, "rue X", requested_ns, None, "192.0.2.7", contact)


async def test_citizen_reports_attach_create_on_equipment_or_unlocated_and_contacts_are_purged(tmp_path):
    ops = dataclasses.replace(
        ops_config(auto_assign=False),
        open311=dataclasses.replace(OperationsConfig().open311, radius_m=50.0, purge_contact_after_s=3600.0),
    )
    rig = Rig(tmp_path, ops)
    try:
        svc = rig.service
        rig.set("LC-1", failed_lamps=3)
        alarm_order = only_order(rig)
        # 20 m from LC-1's faulty cabinet: attached to its order.
        status, _msg, rid, oid = await svc.citizen_report(report(47.30018, 5.0, email="a@b.fr", phone="0600"))
        assert (status, oid) == (GOOD, alarm_order.id) and rid == "CR-000001"
        assert svc.orders[oid].reports == (rid,)
        # 30 m from LC-2 (no order there): a citizen order on LC-2.
        status, _msg, rid2, oid2 = await svc.citizen_report(report(47.30927, 5.0, email="c@d.fr"))
        o2 = svc.orders[oid2]
        assert (o2.source, o2.device, o2.commune, o2.cause, o2.reports) == (
            "citizen",
            "LC-2",
            "Dijon",
            "streetlight",
            (rid2,),
        )
        # Far from any lighting cabinet: unlocated, in the nearest device's commune.
        _s, _m, rid3, oid3 = await svc.citizen_report(report(47.40, 5.0))
        assert (svc.orders[oid3].device, svc.orders[oid3].commune) == (None, "Dijon")
        # Without coordinates: unlocated, no commune.
        _s, _m, _r, oid4 = await svc.citizen_report(report(None, None))
        assert (svc.orders[oid4].device, svc.orders[oid4].commune, svc.orders[oid4].lat) == (None, "", None)
        bad = await svc.citizen_report(report(47.3, 5.0, code="graffiti"))
        assert bad[0] == BAD_INVALID_ARGUMENT and len(svc.orders) == 4
        # What the front gets: no contact, no client address; the order's state.
        listed = await svc.reports([rid, rid2], None, None, None, None, None)
        assert [(d["id"], d["contact"], d["client"], state) for d, state in listed] == [
            (rid, {}, "", "new"),
            (rid2, {}, "", "new"),
        ]
        # Purge: not while the order is open, nor before purge_contact_after_s after its closure.
        assert await svc.purge() == 0
        await svc.apply(OpsRequest("cancel", {"order": alarm_order.id}, DISPATCHER))
        rig.clock.advance(3599)
        assert await svc.purge() == 0 and svc.journal.contact(rid) == {"email": "a@b.fr", "phone": "0600"}
        rig.clock.advance(2)
        assert await svc.purge() == 1
        assert svc.writer.flush()
        assert svc.journal.contact(rid) == {} and svc.journal.contact(rid2) == {"email": "c@d.fr"}
        assert [e.event for e in svc.journal.events(alarm_order.id)][-1] == "purge"
    finally:
        rig.close()


# -- restart ------------------------------------------------------------------------------------


async def test_restart_loads_open_orders_and_closes_repaired_ones_whose_alarm_is_gone(tmp_path):
    rig = Rig(tmp_path)
    rig.set("LC-1", failed_lamps=3)
    rig.set("TJ-1", conflict_fault=1)
    await rig.tick()
    lamp = next(o for o in rig.service.orders.values() if o.device == "LC-1")
    conflict = next(o for o in rig.service.orders.values() if o.device == "TJ-1")
    for s in ("on_site", "repaired"):
        rig.answer(lamp.id, s)
    rig.answer(conflict.id, "accepted")
    await rig.tick(3600)  # the conflict order breaches its on-site deadline
    assert rig.late(conflict.id)
    rig.service.close()
    # While the server is down the lamps are repaired: the engine sees the alarm gone.
    rig.set("LC-1", failed_lamps=0)
    rig.alarms.engine._system.clear()  # a new process: no server alarm is kept
    rig.service = rig.start()
    svc = rig.service
    assert list(svc.orders) == [conflict.id]
    assert svc.orders[conflict.id].state == OrderState.ACCEPTED and svc.orders[conflict.id].crew == "V-3"
    assert rig.late(conflict.id)  # raised again
    assert rig.events(lamp.id)[-1] == ("close", "closed", "server")
    # The deadline marks came back: no second breach; numbering goes on.
    await rig.tick(10)
    assert [e for e, _, _ in rig.events(conflict.id)].count("breach") == 1
    r = await svc.apply(OpsRequest("create", {"service": "traffic_control", "device": "TJ-1"}, DISPATCHER))
    assert r.order == "WO-000003"
    rig.close()
