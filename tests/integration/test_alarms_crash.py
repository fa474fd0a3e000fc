"""Crash consistency of the alarms, with real processes: the tiny simulated city and the
server; alarms put in every state an operator can leave them in (active unacknowledged,
acknowledged, returned to normal unacknowledged, timed shelve, one-shot shelve, latched),
then the server is killed (SIGKILL: no shutdown code runs) and started again.

After the restart an HMI's ConditionRefresh shows the same conditions with the same EventIds
and states, an EventId received before the crash still acknowledges, no alarm is announced a
second time (the journal has no new activation), and the one-shot shelve is still one-shot
(it ends when its condition clears, the timed one does not).
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from asyncua import Client, ua

from city_scada import load_config

from .helpers import (
    DEADLINE,
    ROOT,
    Notifications,
    Process,
    fault,
    journal_until,
    read_journal,
    scada_run_args,
    start_tiny_city,
    wait_port,
    wait_port_closed,
)

pytestmark = pytest.mark.integration
Ids = ua.ObjectIds

# What ConditionRefresh must give back identical (Time is the condition's last event's).
FIELDS = (
    "EventId",
    "Time",
    "Retain",
    "ActiveState/Id",
    "AckedState/Id",
    "LatchedState/Id",
    "SuppressedOrShelved",
    "ShelvingState/CurrentState/Id",
    "Severity",
)


def has(rows, alarm: str, device: str, event: str, state: str) -> bool:
    return any((r.alarm, r.device, r.event, r.state) == (alarm, device, event, state) for r in rows)


async def refresh(client: Client) -> dict:
    """ConditionRefresh on a new subscription: {(device, alarm): event} of the retained conditions."""
    handler = Notifications()
    sub = await client.create_subscription(50, handler)
    try:
        await sub.subscribe_alarms_and_conditions(client.nodes.server, Ids.AlarmConditionType)
        await client.get_node(ua.NodeId(Ids.ConditionType)).call_method(
            ua.NodeId(Ids.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32)
        )
        shown, started = {}, False
        async with asyncio.timeout(DEADLINE):
            while True:
                e = await handler.events.get()
                if e.EventType == ua.NodeId(Ids.RefreshStartEventType):
                    started = True
                elif e.EventType == ua.NodeId(Ids.RefreshEndEventType):
                    return shown
                elif started and e.ConditionName:
                    shown[(e.SourceName, e.ConditionName)] = e
    finally:
        await sub.delete()


def fields(e) -> dict:
    return {f: getattr(e, f, None) for f in FIELDS}


async def refresh_until(url: str, predicate, timeout: float = DEADLINE, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    shown: dict = {}
    while time.monotonic() < deadline:
        async with Client(url, timeout=DEADLINE) as client:
            shown = await refresh(client)
        if predicate(shown):
            return shown
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s; shown: { {k: fields(e) for k, e in shown.items()} }")


async def test_sigkill_with_alarms_in_every_state_loses_nothing_and_announces_nothing_twice(tmp_path):
    city = start_tiny_city(tmp_path)
    sim, control, opc_scada, config, data = city.sim, city.control, city.opc_scada, city.config, tmp_path / "data"
    url = city.endpoint
    server_args = scada_run_args(config, data, url)
    server = None
    path = data / "alarms.sqlite"
    try:
        wait_port(control, proc=sim)
        (config / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
        cfg = load_config(config)
        cabinets = [d.name for d in cfg.devices if d.type == "lighting_cabinet"]
        junction = next(d.name for d in cfg.devices if d.type == "traffic_junction")
        assert len(cabinets) >= 5, cabinets
        unacked, acked, rtn, timed, one_shot = cabinets[:5]
        server = Process(server_args, tmp_path / "server.log")
        wait_port(opc_scada, proc=server)

        for cab in (unacked, acked, timed, one_shot):
            fault(control, "lamp_failure", cab, "count=2")
        fault(control, "door_open", rtn)
        fault(control, "conflict_fault", junction)
        await journal_until(
            path,
            lambda rows: (
                all(has(rows, "lamps_failed", c, "ACTIVATE", "UNACK_ACTIVE") for c in (unacked, acked, timed, one_shot))
                and has(rows, "door_open", rtn, "ACTIVATE", "UNACK_ACTIVE")
                and has(rows, "conflict_fault", junction, "ACTIVATE", "UNACK_ACTIVE")
            ),
            what="the alarms announced",
        )
        fault(control, "door_close", rtn)
        fault(control, "conflict_clear", junction)

        # The HMI acknowledges, shelves (timed and one-shot) with the standard methods.
        needed = [(c, "lamps_failed") for c in (acked, timed, one_shot)] + [(junction, "conflict_fault")]
        shown = await refresh_until(
            url, lambda shown: all(k in shown for k in needed), what="the HMI sees the announced alarms"
        )
        async with Client(url, timeout=DEADLINE) as client:
            for device, alarm in ((acked, "lamps_failed"), (junction, "conflict_fault")):
                e = shown[(device, alarm)]
                await client.get_node(e.NodeId).call_method(
                    ua.NodeId(Ids.AcknowledgeableConditionType_Acknowledge),
                    ua.Variant(e.EventId, ua.VariantType.ByteString),
                    ua.LocalizedText("seen"),
                )
            for device, method, args in (
                (
                    timed,
                    Ids.AlarmConditionType_ShelvingState_TimedShelve,
                    (ua.Variant(3_600_000.0, ua.VariantType.Double),),
                ),
                (one_shot, Ids.AlarmConditionType_ShelvingState_OneShotShelve, ()),
            ):
                cond = shown[(device, "lamps_failed")].NodeId
                shelving = ua.NodeId(f"{cond.Identifier}/ShelvingState", cond.NamespaceIndex)
                await client.get_node(shelving).call_method(ua.NodeId(method), *args)
        # The latch: the technician resets the controller locally, the condition is gone.
        fault(control, "local_reset", junction)
        rows = await journal_until(
            path,
            lambda rows: (
                has(rows, "door_open", rtn, "CLEAR", "RTN_UNACK")
                and has(rows, "conflict_fault", junction, "CLEAR", "LATCHED")
                and has(rows, "lamps_failed", acked, "ACK", "ACK_ACTIVE")
                and has(rows, "lamps_failed", timed, "SHELVE", "SHELVED")
                and has(rows, "lamps_failed", one_shot, "SHELVE", "SHELVED")
            ),
            what="every state reached",
        )

        expected = {
            (unacked, "lamps_failed"): {"ActiveState/Id": True, "AckedState/Id": False},
            (acked, "lamps_failed"): {"ActiveState/Id": True, "AckedState/Id": True},
            (rtn, "door_open"): {"ActiveState/Id": False, "AckedState/Id": False},
            (timed, "lamps_failed"): {
                "ShelvingState/CurrentState/Id": ua.NodeId(Ids.ShelvedStateMachineType_TimedShelved)
            },
            (one_shot, "lamps_failed"): {
                "ShelvingState/CurrentState/Id": ua.NodeId(Ids.ShelvedStateMachineType_OneShotShelved)
            },
            (junction, "conflict_fault"): {"LatchedState/Id": True, "ActiveState/Id": False, "AckedState/Id": True},
        }

        def in_expected_states(shown: dict) -> bool:
            return all(
                k in shown and all(getattr(shown[k], f, None) == v for f, v in want.items())
                for k, want in expected.items()
            )

        before = await refresh_until(url, in_expected_states, what="the HMI sees every state")
        before_rows = read_journal(path)

        # SIGKILL: no shutdown code, no final save.
        server.stop(signal.SIGKILL)
        # The killed core's OPC UA front (its own process) sees its channel end and stops by
        # itself, closing the endpoint it still serves: until then a client reaching the port
        # talks to that dying front (and loses its connection), not to the restarted server.
        wait_port_closed(opc_scada)
        server = Process(server_args, tmp_path / "server2.log")
        wait_port(opc_scada, proc=server)
        after = await refresh_until(url, lambda shown: set(before) <= set(shown), what="the conditions after restart")
        assert {k: fields(after[k]) for k in before} == {k: fields(e) for k, e in before.items()}

        # An EventId received before the crash still acknowledges (the HMI holds it).
        async with Client(url, timeout=DEADLINE) as client:
            await client.get_node(before[(unacked, "lamps_failed")].NodeId).call_method(
                ua.NodeId(Ids.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(before[(unacked, "lamps_failed")].EventId, ua.VariantType.ByteString),
                ua.LocalizedText("after the restart"),
            )
        # The lamps are repaired: the one-shot shelve ends with its condition, the timed one stays.
        fault(control, "lamp_repair", one_shot)
        fault(control, "lamp_repair", timed)
        rows = await journal_until(
            path,
            lambda rows: (
                has(rows, "lamps_failed", one_shot, "UNSHELVE", "NORMAL")
                and has(rows, "lamps_failed", timed, "CLEAR", "SHELVED")
                and has(rows, "lamps_failed", unacked, "ACK", "ACK_ACTIVE")
            ),
            what="repairs and acknowledgement",
        )
        new = rows[len(before_rows) :]
        assert [(r.alarm, r.device) for r in rows[: len(before_rows)]] == [(r.alarm, r.device) for r in before_rows]
        # Nothing announced twice: no activation since the crash, the server's own alarms (no commune) aside.
        assert [(r.alarm, r.device) for r in new if r.event == "ACTIVATE" and r.commune] == []
        assert [r.event for r in new if (r.alarm, r.device) == ("lamps_failed", timed)] == ["CLEAR"]
        assert "alarm_states_restored" in server.output()
    finally:
        if server:
            server.stop()
        sim.stop()
