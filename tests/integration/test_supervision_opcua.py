"""Supervision seen from OPC UA clients: one client session's failure stays in that session,
and each server task has its own ``server_task_failed`` condition."""

from __future__ import annotations

import pytest
from asyncua import Client, ua
from asyncua.ua import ObjectIds as O

from .test_opcua_alarms import City, ack_args, call, client_events, field, healthy, running

pytestmark = pytest.mark.integration


async def test_a_method_handler_raising_in_one_session_stops_neither_the_server_nor_that_session(tmp_path,
                                                                                                  monkeypatch):
    city = City(tmp_path / "cfg")
    healthy(city)
    async with running(city):
        async with client_events(city.url, name="console-1") as (client, events, _):
            city.set("LC-1", temperature=70)
            ev = await events.next(ConditionName="hot")

            def broken(*_args, **_kwargs):
                raise RuntimeError("a bug in the acknowledge path")

            monkeypatch.setattr(city.engine, "ack", broken)
            with pytest.raises(ua.UaStatusCodeError):  # the client gets a Bad status, not a dead server
                await call(client, city.condition("hot"), O.AcknowledgeableConditionType_Acknowledge,
                           *ack_args(ev.EventId, "x"))
            monkeypatch.undo()

            # The same session goes on: reads, and alarm events keep coming.
            assert (await client.get_node(city.condition("hot")).read_browse_name()).Name == "hot"
            city.set("LC-1", temperature=50)
            cleared = await events.next(ConditionName="hot")
            assert field(cleared, "ActiveState/Id") is False
            # Another client connects and is served.
            async with Client(city.url, timeout=10) as other:
                assert (await other.get_node(city.condition("hot")).read_browse_name()).Name == "hot"
            # And the method works again once the fault is gone.
            city.set("LC-1", temperature=70)
            ev = await events.next(ConditionName="hot")
            await call(client, city.condition("hot"), O.AcknowledgeableConditionType_Acknowledge,
                       *ack_args(ev.EventId, "crew informed"))


async def test_each_task_has_its_own_server_task_failed_condition(tmp_path):
    city = City(tmp_path / "cfg")
    healthy(city)
    async with running(city):
        async with client_events(city.url) as (client, events, sub):
            for task in ("historian", "driver:modbus"):
                city.engine.system_alarm("server_task_failed", True, f"server task {task} failed", source=task)
            raised = {}
            for _ in range(2):
                ev = await events.next(ConditionName="server_task_failed")
                raised[ev.SourceName] = ev
            assert set(raised) == {"historian", "driver:modbus"}
            assert raised["historian"].NodeId != raised["driver:modbus"].NodeId
            assert all(e.SourceNode == ua.NodeId(O.Server) and e.Retain is True for e in raised.values())

            city.engine.system_alarm("server_task_failed", False, "server task historian running again",
                                     source="historian")
            cleared = await events.next(ConditionName="server_task_failed")
            assert cleared.SourceName == "historian" and cleared.Retain is False
            # A refresh shows the one still failing.
            await client.get_node(ua.NodeId(O.ConditionType)).call_method(
                ua.NodeId(O.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
            got = await events.refresh()
            assert [(e.ConditionName, e.SourceName) for e in got[1:-1]] == [("server_task_failed", "driver:modbus")]
        # The journal keeps each task's rows under its own device.
        rows = [(r.device, r.event) for r in city.journal.query(alarm="server_task_failed")]
        assert sorted(rows) == [("driver:modbus", "ACTIVATE"), ("historian", "ACTIVATE"), ("historian", "CLEAR")]
