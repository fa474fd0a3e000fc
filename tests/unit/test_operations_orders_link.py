"""The core's side of the channel for work orders (scada/front/link.py): the requests
REQUEST_WORK_ORDER, REQUEST_CITIZEN_REPORT and REQUEST_REPORTS served by the real service (on the
real alarm engine and journal of the orders' rig), the changes pushed coalesced, the snapshot in
the INIT state and after pushes were dropped, no contact detail ever on the wire; the contract's
live KPIs pushed, held back above the high-water mark, kept for the next front."""

from __future__ import annotations

import asyncio
import pickle

from scada.control.model import BAD_TOO_MANY_OPERATIONS, GOOD
from scada.front import link as link_module
from scada.front.link import FrontLink, FrontSettings
from scada.operations.model import (
    PUSH_KPIS,
    PUSH_ORDERS,
    PUSH_ORDERS_SNAPSHOT,
    REQUEST_CITIZEN_REPORT,
    REQUEST_REPORTS,
    REQUEST_WORK_ORDER,
    OpsRequest,
    OpsResult,
    OrderEvent,
    OrderState,
    WorkOrder,
)
from tests.unit.test_control_groups_link import Writer
from tests.unit.test_operations_orders import DISPATCHER, Rig, ops_config


class App:
    def __init__(self, rig: Rig) -> None:
        self.config = rig.config
        self.operations = rig.service
        self.audit = rig.audit


def linked(rig: Rig) -> tuple[FrontLink, Writer]:
    link = FrontLink(App(rig), FrontSettings("opc.tcp://127.0.0.1:1/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]
    link.attach_orders()
    return link, writer


async def ask(link: FrontLink, rid: int, op: str, *args) -> None:
    """What the read loop does with a request frame, then the request's task to its end."""
    link._start_request(link._async_handlers()[op], rid, op, args)
    await asyncio.gather(*link._in_flight)


def replies(writer: Writer) -> dict[int, tuple]:
    return {m[1]: m[2:] for m in writer.messages() if m[0] == "reply"}


def pushes(writer: Writer) -> list[tuple]:
    return [m for m in writer.messages() if m[0] == PUSH_ORDERS]


async def test_alarm_orders_are_pushed_once_per_loop_turn_with_their_events(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)
        rig.set("LC-1", failed_lamps=3)
        rig.set("TJ-1", conflict_fault=1)
        rig.set("TJ-1", conflict_fault=0)  # a note on TJ-1's order (its latch waits for a reset)
        assert pushes(writer) == []  # coalesced: nothing before the loop turns
        await asyncio.sleep(0)
        (push,) = pushes(writer)
        orders = [WorkOrder.from_wire(w) for w in push[1]]
        events = [OrderEvent.from_wire(w) for w in push[2]]
        assert sorted(o.device for o in orders) == ["LC-1", "TJ-1"]
        assert [e.event for e in events] == ["create", "create", "note"]
        # The snapshot of a (re)started front: the open orders.
        state = link._state(rig.alarms.config, type("T", (), {"shared_name": "x", "text": {}})(), None, None)
        assert sorted(WorkOrder.from_wire(w).device for w in state[PUSH_ORDERS_SNAPSHOT]) == ["LC-1", "TJ-1"]
    finally:
        rig.close()


async def test_work_order_request_is_answered_after_its_push_and_malformed_ones_refused(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)
        rig.set("LC-1", failed_lamps=3)
        (oid,) = rig.service.orders
        await asyncio.sleep(0)
        await ask(
            link, 1, REQUEST_WORK_ORDER, OpsRequest("assign", {"order": oid, "crew": "V-2"}, DISPATCHER).to_wire()
        )
        await ask(link, 2, REQUEST_WORK_ORDER, ("assign", {"order": oid}))  # two fields instead of three
        msgs = writer.messages()
        ok, result = replies(writer)[1]
        assert ok and OpsResult.from_wire(result).status == GOOD
        assigned = [m for m in msgs if m[0] == PUSH_ORDERS and WorkOrder.from_wire(m[1][0]).crew == "V-2"]
        reply_at = next(i for i, m in enumerate(msgs) if m[:2] == ("reply", 1))
        assert assigned and msgs.index(assigned[0]) < reply_at  # the front's mirror is current first
        ok, (kind, message) = replies(writer)[2]
        assert (ok, kind) == (False, "value") and "malformed work-order request" in message
        assert rig.service.orders[oid].crew == "V-2"
        busy = link._async_handlers()[REQUEST_WORK_ORDER][1](256, None)
        assert OpsResult.from_wire(busy).status == BAD_TOO_MANY_OPERATIONS
    finally:
        rig.close()


async def test_citizen_report_request_and_public_reports_no_contact_on_the_wire(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)
        contact = {"email": "jeanne@example.org", "phone": "0612345678", "password": "x"}
        args = ("streetlight", "lamp out", 47.30927, 5.0, "rue X", contact, "192.0.2.7:5000", 1_800_000_000 * 10**9)
        await ask(link, 1, REQUEST_CITIZEN_REPORT, *args)
        await ask(link, 2, REQUEST_CITIZEN_REPORT, "streetlight", "x", "north", 5.0, "", {}, "c", 0)
        await ask(link, 3, REQUEST_REPORTS, None, "streetlight", None, None, (47.0, 4.0, 48.0, 6.0), 10)
        ok, (status, _message, rid, oid) = replies(writer)[1]
        assert ok and status == GOOD and rid == "CR-000001" and rig.service.orders[oid].device == "LC-2"
        ok, (kind, message) = replies(writer)[2]
        assert (ok, kind) == (False, "value") and "malformed citizen report" in message
        ok, listed = replies(writer)[3]
        assert ok and [(d["id"], d["order"], state) for d, state in listed] == [(rid, oid, "new")]
        wire_bytes = bytes(writer.data)
        assert b"jeanne" not in wire_bytes and b"0612345678" not in wire_bytes and b"192.0.2.7" not in wire_bytes
        assert rig.service.journal.contact(rid) == {"email": "jeanne@example.org", "phone": "0612345678"}
        assert len(rig.service.orders) == 1  # the malformed one stored nothing
    finally:
        rig.close()


async def test_pushes_above_high_water_are_dropped_then_a_snapshot_is_sent(tmp_path, monkeypatch):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)
        backlog = {"n": link_module.HIGH_WATER + 1}
        writer.transport.get_write_buffer_size = lambda: backlog["n"]  # type: ignore[method-assign]
        rig.set("LC-1", failed_lamps=3)
        await asyncio.sleep(0)
        assert pushes(writer) == [] and link.order_pushes_dropped == 1
        backlog["n"] = 0  # the front read its backlog
        rig.set("LC-2", failed_lamps=3)
        await asyncio.sleep(0)
        msgs = writer.messages()
        snap = [m for m in msgs if m[0] == PUSH_ORDERS_SNAPSHOT]
        assert len(snap) == 1 and sorted(WorkOrder.from_wire(w).device for w in snap[0][1]) == ["LC-1", "LC-2"]
        assert msgs.index(snap[0]) < msgs.index(pushes(writer)[0])
        assert all(WorkOrder.from_wire(w).state == OrderState.NEW for w in snap[0][1])
        assert pickle.loads(pickle.dumps(snap))  # plain values only
    finally:
        rig.close()


async def test_kpis_are_pushed_held_back_above_high_water_and_kept_for_the_next_front(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        link, writer = linked(rig)

        def kpis() -> list[dict]:
            return [m[1] for m in writer.messages() if m[0] == PUSH_KPIS]

        link.push_kpis({"energy.all.kwh": 12.5, "delay.x.high.on_site_p50_s": float("nan")})
        (sent,) = kpis()
        assert sent["energy.all.kwh"] == 12.5 and sent["delay.x.high.on_site_p50_s"] != 0
        writer.transport.get_write_buffer_size = lambda: link_module.HIGH_WATER + 1  # type: ignore[method-assign]
        link.push_kpis({"energy.all.kwh": 13.0})
        assert len(kpis()) == 1  # the front is behind: the next push replaces this one
        link._writer = None  # the front died: nothing raised, the figures wait for the next one
        link.push_kpis({"energy.all.kwh": 14.0})
        assert link._kpis == {"energy.all.kwh": 14.0}
    finally:
        rig.close()
