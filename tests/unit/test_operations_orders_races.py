"""Races of the work-order service (review of issue 16): two assignments of one order, an act
whose requester goes away during the send, answers that wait for a send that fails. The unit
rig of test_operations_orders.py with a crew board whose sends wait on the test's gates."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import structlog.testing

from scada.alarms.remote import RemoteAlarmError
from scada.control.model import BAD_INVALID_STATE, BAD_NO_COMMUNICATION, BAD_NODE_ID_UNKNOWN, BAD_SHUTDOWN, GOOD
from scada.driver_api import DeviceUnreachable
from scada.operations.journal import OrderJournal
from scada.operations.model import REQUEST_REPORTS, CitizenReport, OpsRequest, OrderState
from scada.operations.orders import ANSWER_LOG_BURST, LATE_ALARM, MAX_READS
from tests.unit.test_operations_orders import DISPATCHER, FakeCrews, Rig, ops_config

DEADLINE = 10.0  # safety net: every wait below is for an event


class GatedCrews(FakeCrews):
    """An "assign" is published at once (the crew has it), then waits for its crew's gate (the
    broker's PUBACK); a crew in ``fail`` gets a send error after its gate."""

    def __init__(self, ops) -> None:
        super().__init__(ops)
        self.gates: dict[str, asyncio.Event] = {}
        self.sending: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    def gate(self, crew: str) -> asyncio.Event:
        return self.gates.setdefault(crew, asyncio.Event())

    def started(self, crew: str) -> asyncio.Event:
        return self.sending.setdefault(crew, asyncio.Event())

    async def send(self, order, action: str) -> None:
        if action == "assign":
            self.sent.append((order.id, order.crew, action, order.correlation_id))
            self.started(order.crew).set()
            await self.gate(order.crew).wait()
            if order.crew in self.fail:
                raise DeviceUnreachable(f"{order.crew}: broker lost before PUBACK")
            return
        await super().send(order, action)


def assign(rig: Rig, oid: str, crew: str) -> asyncio.Task:
    return asyncio.create_task(rig.service.apply(OpsRequest("assign", {"order": oid, "crew": crew}, DISPATCHER)))


async def test_a_second_assignment_while_one_is_sent_is_refused(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        first = assign(rig, oid, "V-1")
        await asyncio.wait_for(rig.crews.started("V-1").wait(), DEADLINE)
        second = await asyncio.wait_for(assign(rig, oid, "V-2"), DEADLINE)
        assert second.status == BAD_INVALID_STATE and "being sent" in second.message
        rig.crews.gate("V-1").set()
        assert (await asyncio.wait_for(first, DEADLINE)).status == GOOD
        assert [(c, a) for _, c, a, _ in rig.crews.sent] == [("V-1", "assign")]  # V-2 never sent
        rig.answer(oid, "accepted")
        assert rig.service.orders[oid].state == OrderState.ACCEPTED  # V-1's answer counts
        assert rig.service.answers_ignored == 0
    finally:
        rig.close()


async def test_a_reassignment_cancels_the_crew_that_has_the_order_now(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    rig.crews.gate("V-1").set()
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        assert (await assign(rig, oid, "V-1")).status == GOOD
        task = assign(rig, oid, "V-2")
        await asyncio.wait_for(rig.crews.started("V-2").wait(), DEADLINE)
        rig.clock.advance(3600)  # a deadline mark changes the order during the send
        await rig.service.tick()
        rig.crews.gate("V-2").set()
        assert (await asyncio.wait_for(task, DEADLINE)).status == GOOD
        assert rig.service.orders[oid].crew == "V-2"
        assert ("V-1", "cancel") in [(c, a) for _, c, a, _ in rig.crews.sent]
    finally:
        rig.close()


async def test_an_assignment_completes_when_its_requester_goes_away(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=True))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        task = assign(rig, oid, "V-1")
        await asyncio.wait_for(rig.crews.started("V-1").wait(), DEADLINE)
        task.cancel()  # the front died: FrontLink._cancel_requests
        await asyncio.gather(task, return_exceptions=True)
        rig.crews.gate("V-1").set()  # the PUBACK comes: the core's act goes on
        await asyncio.wait_for(asyncio.gather(*rig.service._acts), DEADLINE)
        order = rig.service.orders[oid]
        assert order.state == OrderState.ASSIGNED and order.crew == "V-1"
        assert ("assign", "assigned", "dora") in rig.events(oid)
        assert [r.result for r in rig.audit.records if r.action == "work_order"] == ["Good"]
        await rig.tick(1)  # auto-dispatch sends it to nobody else
        assert [(c, a) for _, c, a, _ in rig.crews.sent] == [("V-1", "assign")]
    finally:
        rig.close()


async def test_answers_waiting_for_a_failed_reassignment_are_kept(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    rig.crews.gate("V-1").set()
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        assert (await assign(rig, oid, "V-1")).status == GOOD
        rig.answer(oid, "accepted")
        rig.answer(oid, "en_route")
        cid = rig.service.orders[oid].correlation_id
        rig.crews.fail.add("V-2")
        task = assign(rig, oid, "V-2")
        await asyncio.wait_for(rig.crews.started("V-2").wait(), DEADLINE)
        rig.service.crew_answer("V-1", {"order_id": oid, "correlation_id": cid, "status": "on_site"})
        rig.service.crew_answer("V-2", {"order_id": oid, "correlation_id": "stale", "status": "accepted"})
        rig.crews.gate("V-2").set()
        assert (await asyncio.wait_for(task, DEADLINE)).status == BAD_NO_COMMUNICATION
        order = rig.service.orders[oid]
        assert order.state == OrderState.ON_SITE and order.crew == "V-1" and order.on_site_ns
        assert rig.service.answers_ignored == 1  # V-2's answer was judged, and ignored
    finally:
        rig.close()


async def test_an_active_routed_alarm_without_an_order_gets_one_at_the_restart(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.service.writer.submit = lambda *a, **k: None  # the process dies before the order is written
    rig.set("LC-1", failed_lamps=3)
    assert len(rig.service.orders) == 1
    rig.service.close()
    rig.clock.advance(60)
    rig.service = rig.start()  # the alarm engine kept its state; the journal has no order
    try:
        orders = list(rig.service.orders.values())
        assert [(o.key, o.source, o.state) for o in orders] == [(("LC-1", "lamps_failed"), "alarm", OrderState.NEW)]
        i = rig.alarms.engine.instance("lamps_failed", "LC-1")
        assert orders[0].origin_ns == int(rig.alarms.engine.cond_since[i])  # its delays from the alarm
        rig.service.close()
        rig.service = rig.start()  # written this time: not made twice
        assert [o.id for o in rig.service.orders.values()] == [orders[0].id]
    finally:
        rig.close()


async def test_a_reload_routing_a_service_gives_its_active_alarms_orders(tmp_path) -> None:
    full = ops_config(auto_assign=False)
    unrouted = dataclasses.replace(
        full, services={k: v for k, v in full.services.items() if k != "lighting_maintenance"}, crews={}
    )
    rig = Rig(tmp_path, unrouted)
    try:
        rig.set("LC-1", failed_lamps=3)
        assert not rig.service.orders
        rig.service.reload(dataclasses.replace(rig.config, operations=full), rig.alarms.engine)
        assert [o.key for o in rig.service.orders.values()] == [("LC-1", "lamps_failed")]
    finally:
        rig.close()


async def test_an_act_on_an_order_not_open_reads_the_journal_off_the_loop(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # the writer thread inside a commit on a hanging disk
        with rig.service.journal._lock:
            held.set()
            release.wait(DEADLINE)

    threading.Thread(target=hold, daemon=True).start()
    try:
        await asyncio.to_thread(held.wait, DEADLINE)
        task = asyncio.create_task(rig.service.apply(OpsRequest("close", {"order": "WO-424242"}, DISPATCHER)))
        await asyncio.sleep(0)  # the act starts; the loop goes on while the file is busy
        assert not task.done() and not release.is_set()
        release.set()
        result = await asyncio.wait_for(task, DEADLINE)
        assert result.status == BAD_NODE_ID_UNKNOWN
    finally:
        release.set()
        rig.close()


async def test_report_queries_use_their_own_threads_and_a_busy_journal_answers_busy(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    entered, release = threading.Semaphore(0), threading.Event()
    real = rig.service.journal.reports

    def slow_reports(*query):
        entered.release()
        release.wait(DEADLINE)
        return real(*query)

    rig.service.journal.reports = slow_reports  # type: ignore[method-assign]
    try:
        gets = [asyncio.ensure_future(rig.service.reports(None, None, None, None, None, 10)) for _ in range(10)]
        await asyncio.to_thread(lambda: [entered.acquire(timeout=DEADLINE) for _ in range(MAX_READS)])
        # the default executor (the historian's writes) is not held by the GETs waiting on the file
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), DEADLINE) == "free"
        release.set()
        done = await asyncio.wait_for(asyncio.gather(*gets, return_exceptions=True), DEADLINE)
        busy = [r for r in done if isinstance(r, RemoteAlarmError)]
        assert len(busy) == 10 - MAX_READS and [r for r in done if r == []] == [[]] * MAX_READS
    finally:
        release.set()
        rig.close()


async def test_a_citizen_report_is_answered_once_on_disk(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    writing, release = threading.Event(), threading.Event()
    real = rig.service.journal.write

    def slow_write(*a, **k):
        writing.set()
        release.wait(DEADLINE)
        return real(*a, **k)

    rig.service.journal.write = slow_write  # type: ignore[method-assign]
    report = CitizenReport("", "streetlight", "dark street", 47.3, 5.0, "", 0, None, "10.0.0.7", {})
    try:
        task = asyncio.ensure_future(rig.service.citizen_report(report))
        await asyncio.to_thread(writing.wait, DEADLINE)
        await asyncio.sleep(0)
        assert not task.done()  # not answered while the report is not in the file
        release.set()
        status, _message, rid, _order = await asyncio.wait_for(task, DEADLINE)
        assert status == GOOD and rid == "CR-000001"
        assert OrderJournal(tmp_path / "workorders.sqlite").last_numbers()[1] == 1  # a restart goes on after it
    finally:
        release.set()
        rig.close()


async def test_a_report_query_beyond_the_front_s_bound_is_an_error_not_no_report(tmp_path, monkeypatch) -> None:
    from scada.front import link as link_module
    from tests.unit.test_operations_orders_link import linked, replies

    monkeypatch.setattr(link_module, "MAX_IN_FLIGHT", 0)
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)
        link._start_request(link._async_handlers()[REQUEST_REPORTS], 7, REQUEST_REPORTS, (("CR-000001",),))
        ok, payload = replies(writer)[7]
        assert ok is False and payload[0] == "value"  # the front raises it: a 503, not a 404
    finally:
        rig.close()


async def test_a_dispatch_tick_costs_one_proposal_per_service_when_no_crew_is_free(tmp_path) -> None:
    class Counting(FakeCrews):
        proposals = 0

        def propose(self, order, limit: int = 3):
            self.proposals += 1
            return super().propose(order, limit)

    rig = Rig(tmp_path, ops_config(auto_assign=True))
    rig.crews = rig.service.crews = Counting(rig.ops)
    rig.crews.available = set()  # every crew out: a storm of new orders waits
    svc = rig.service
    try:
        service = rig.ops.services["lighting_maintenance"]
        t = rig.ops_clock()
        for i in range(50):
            o = svc._new_order(
                "operator",
                service,
                "medium",
                None,
                "Dijon",
                47.3 + i * 1e-4,
                5.0,
                "x",
                "x",
                origin_ns=t,
                now=t,
                user="u",
            )
            svc.orders[o.id] = o
        held = svc._held
        scans = []
        svc._held = lambda but="": scans.append(but) or held(but)  # type: ignore[method-assign]
        await svc._dispatch_new()
        assert rig.crews.proposals == 1  # not one per new order
        assert len(scans) <= 2  # the held crews once per tick (and the board's view), not per order
        assert all(svc._failed_why.get(o) == "no available crew with the skill" for o in svc.orders)
        rig.crews.available = {"V-1", "V-2"}
        svc._retry_at.clear()
        await svc._dispatch_new()
        assert sorted(o.crew for o in svc.orders.values() if o.crew) == ["V-1", "V-2"]  # one order each
    finally:
        rig.close()


async def test_closing_an_order_on_site_tells_its_crew_and_drops_its_late_alarm_entry(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        await rig.tick(3600)  # the on-site deadline passes: the escalation alarm
        assert rig.late(oid)
        assert (await rig.service.apply(OpsRequest("assign", {"order": oid, "crew": "V-1"}, DISPATCHER))).status == GOOD
        rig.answer(oid, "on_site")
        r = await rig.service.apply(OpsRequest("close", {"order": oid, "note": "done by hand"}, DISPATCHER))
        assert r.status == GOOD
        assert [(c, a) for _, c, a, _ in rig.crews.sent] == [("V-1", "assign"), ("V-1", "cancel")]
        assert (oid, LATE_ALARM) not in rig.alarms.engine._system  # cleared: no entry kept per order
    finally:
        rig.close()


async def test_ignored_crew_answers_are_counted_and_logged_at_a_bounded_rate(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        with structlog.testing.capture_logs() as logs:
            for n in range(100):
                rig.service.crew_answer("V-1", {"garbage": n})
                rig.service.crew_answer("V-1", {"order_id": "WO-999999", "correlation_id": "x", "status": "accepted"})
        assert rig.service.answers_garbage == 100 and rig.service.answers_ignored == 100
        lines = [e["event"] for e in logs]
        assert lines.count("work_order_answer_garbage") == ANSWER_LOG_BURST
        assert lines.count("work_order_answer_stale") == ANSWER_LOG_BURST
    finally:
        rig.close()


async def test_the_stop_waits_for_an_assignment_being_sent_and_refuses_new_acts(tmp_path) -> None:
    """Review of issue 16: an operator's Assign published to the crew and waiting for the broker's
    answer when the server stops must end journaled, before the drivers stop (settle)."""
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    try:
        rig.set("LC-1", failed_lamps=3)
        rig.set("LC-2", failed_lamps=3)
        first, second = sorted(rig.service.orders)
        task = assign(rig, first, "V-1")
        await asyncio.wait_for(rig.crews.started("V-1").wait(), DEADLINE)
        task.cancel()  # the front goes first at a stop
        settling = asyncio.create_task(rig.service.settle(DEADLINE))
        await asyncio.sleep(0)
        assert not settling.done()  # still waiting for the broker
        late = await asyncio.wait_for(assign(rig, second, "V-2"), DEADLINE)
        assert late.status == BAD_SHUTDOWN and "stopping" in late.message
        assert "V-2" not in rig.crews.sending  # nothing was sent for it
        rig.crews.gate("V-1").set()
        assert await asyncio.wait_for(settling, DEADLINE) == []
        assert ("assign", "assigned", "dora") in rig.events(first)  # the crew has it, and the journal says so
        results = [r.result for r in rig.audit.records if r.action == "work_order"]
        assert sorted(results) == ["BadShutdown", "Good"]  # the refusal is audited too
    finally:
        rig.close()


async def test_the_stop_waits_for_the_automatic_dispatch_s_send(tmp_path) -> None:
    """The dispatch task is cancelled at a stop while its send waits for the broker: the send is
    seen through and journaled all the same."""
    rig = Rig(tmp_path, ops_config(auto_assign=True))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        dispatch = asyncio.create_task(rig.service.tick())
        await asyncio.wait_for(rig.crews.started("V-1").wait(), DEADLINE)
        dispatch.cancel()  # the supervisor stops the operations task
        await asyncio.gather(dispatch, return_exceptions=True)
        settling = asyncio.create_task(rig.service.settle(DEADLINE))
        rig.crews.gate("V-1").set()
        assert await asyncio.wait_for(settling, DEADLINE) == []
        assert rig.service.orders[oid].crew == "V-1"
        assert ("assign", "assigned", "server") in rig.events(oid)
        await rig.service.tick()  # stopping: nothing more is dispatched
        assert [(c, a) for _, c, a, _ in rig.crews.sent] == [("V-1", "assign")]
    finally:
        rig.close()


async def test_the_stop_waits_a_bounded_time_and_says_what_is_left(tmp_path) -> None:
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    rig.crews = rig.service.crews = GatedCrews(rig.ops)
    try:
        rig.set("LC-1", failed_lamps=3)
        oid = next(iter(rig.service.orders))
        task = assign(rig, oid, "V-1")
        await asyncio.wait_for(rig.crews.started("V-1").wait(), DEADLINE)
        with structlog.testing.capture_logs() as logs:
            left = await asyncio.wait_for(rig.service.settle(0.05), DEADLINE)  # the broker never answers
        assert left == [f"assign {oid} by dora"]
        assert [e["acts"] for e in logs if e["event"] == "work_order_acts_unsettled_at_stop"] == [left]
        rig.crews.gate("V-1").set()
        assert (await asyncio.wait_for(task, DEADLINE)).status == GOOD
    finally:
        rig.close()
