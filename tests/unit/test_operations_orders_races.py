"""Races of the work-order service (review of issue 16): two assignments of one order, an act
whose requester goes away during the send, answers that wait for a send that fails. The unit
rig of test_operations_orders.py with a crew board whose sends wait on the test's gates."""

from __future__ import annotations

import asyncio

from scada.control.model import BAD_INVALID_STATE, BAD_NO_COMMUNICATION, GOOD
from scada.driver_api import DeviceUnreachable
from scada.operations.model import OpsRequest, OrderState
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
