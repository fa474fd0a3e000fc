"""Alarms end to end: the tiny simulated city and the server as processes, faults injected
through the simulator's control port, the alarms read back from the journal the server
writes (and through `scada journal` / `scada alarms`), and a restart of the server.
"""

from __future__ import annotations

import csv
import functools
import io
import subprocess
import sys

import pytest
from asyncua import Client, ua

from .helpers import (
    DEADLINE,
    ROOT,
    Process,
    fault,
    journal_until,
    refresh_conditions,
    scada_run_args,
    start_tiny_city,
    until_read,
    wait_port,
)

pytestmark = pytest.mark.integration


def scada(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "city_scada", *args], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


async def polled(endpoint: str, tags: list[str]) -> None:
    """Wait until the server shows every tag Good: a server starts with every tag
    Bad_NoCommunication, so Good means this server process has polled it."""
    async with Client(endpoint, timeout=DEADLINE) as client:
        ns = await client.get_namespace_index("urn:city-scada:tags")
        for tag in tags:
            node = client.get_node(ua.NodeId(tag, ns))
            await until_read(
                functools.partial(node.read_data_value, raise_on_bad_status=False),
                lambda dv: dv.StatusCode.is_good(),
                what=f"{tag} polled",
            )


def events(rows, alarm: str, device: str) -> list[tuple[str, str]]:
    return [(r.event, r.state) for r in rows if r.alarm == alarm and r.device == device]


async def test_lamp_failure_and_mains_loss_alarms_suppression_journal_and_restart(tmp_path):
    city = start_tiny_city(tmp_path)
    sim, control, opc_scada, config, data = city.sim, city.control, city.opc_scada, city.config, tmp_path / "data"
    server_args = scada_run_args(config, data, city.endpoint)
    server = None
    path = data / "alarms.sqlite"
    try:
        wait_port(control, proc=sim)
        (config / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
        server = Process(server_args, tmp_path / "server.log")
        wait_port(opc_scada, proc=server)
        a, b = "LC-DIJ-001", "LC-DIJ-002"
        endpoint = f"opc.tcp://127.0.0.1:{opc_scada}/scada/"
        watched = [f"Dijon/lighting/{d}/{p}" for d in (a, b) for p in ("mains_voltage", "failed_lamps")]
        await polled(endpoint, watched)  # the alarms start from healthy cabinets

        # Cabinet A loses its mains, then 3 of its lamps fail: the lamp alarm is suppressed by
        # the mains loss. Cabinet B's 2 failed lamps are announced.
        fault(control, "mains_loss", a)
        fault(control, "lamp_failure", a, "count=3")
        fault(control, "lamp_failure", b, "count=2")
        rows = await journal_until(
            path,
            lambda rows: (
                ("ACTIVATE", "UNACK_ACTIVE") in events(rows, "mains_loss", a) and events(rows, "lamps_failed", b)
            ),
            what="mains loss and lamp alarms",
        )
        assert events(rows, "lamps_failed", b) == [("ACTIVATE", "UNACK_ACTIVE")]
        lamps_a = events(rows, "lamps_failed", a)
        assert lamps_a and all(state == "SUPPRESSED" for _, state in lamps_a), lamps_a
        assert events(rows, "mains_loss", b) == []
        row = next(r for r in rows if r.alarm == "mains_loss")
        assert (row.commune, row.priority, row.severity, row.service) == (
            "Dijon",
            "critical",
            900,
            "lighting_maintenance",
        )
        assert row.message == f"Dijon {a}: mains voltage 0 V"

        # The journal through the command line: CSV filtered by device and priority.
        out = scada("journal", "--data", str(data), "--device", a, "--priority", "critical")
        table = list(csv.DictReader(io.StringIO(out)))
        assert [(r["alarm"], r["event"]) for r in table] == [("mains_loss", "ACTIVATE")]
        listing = scada("alarms", "--data", str(data))
        assert a in listing and "mains_loss" in listing and "lamps_failed" in listing

        # An HMI connects late: ConditionRefresh gives it the announced conditions (not the
        # suppressed lamp alarm of A); it acknowledges the mains loss through the standard method.
        async with Client(f"opc.tcp://127.0.0.1:{opc_scada}/scada/", timeout=DEADLINE) as client:
            client_events, sub, refreshed = await refresh_conditions(client)
            shown = {(e.SourceName, e.ConditionName): e for e in refreshed if e.ConditionName}
            assert (a, "mains_loss") in shown and (b, "lamps_failed") in shown
            # A's lamp alarm is retained (queryable) but marked suppressed, for the HMI to hide.
            assert shown[(a, "lamps_failed")].SuppressedOrShelved is True
            assert shown[(b, "lamps_failed")].SuppressedOrShelved is False
            mains = next(e for e in refreshed if (e.SourceName, e.ConditionName) == (a, "mains_loss"))
            assert mains.Severity == 900 and mains.Message.Text == f"Dijon {a}: mains voltage 0 V"
            await client.get_node(mains.NodeId).call_method(
                ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(mains.EventId, ua.VariantType.ByteString),
                ua.LocalizedText("crew sent"),
            )
            acked = await client_events.next_event(lambda e: e.ConditionName == "mains_loss" and e.SourceName == a)
            assert acked.AckedState.Text in ("Acknowledged", "Acked") or getattr(acked, "AckedState/Id") is True
        rows = await journal_until(
            path, lambda rows: ("ACK", "ACK_ACTIVE") in events(rows, "mains_loss", a), what="acknowledgement journaled"
        )
        ack = next(r for r in rows if r.alarm == "mains_loss" and r.event == "ACK")
        # The anonymous session of the open test profile, with its address (never a client-chosen name).
        assert ack.user.startswith("anonymous@127.0.0.1:") and ack.comment == "crew sent"

        # Restart the server: nothing lost, nothing announced twice.
        assert server.stop() == 0
        before = len(rows)
        server = Process(server_args, tmp_path / "server2.log")
        wait_port(opc_scada, proc=server)
        await polled(endpoint, watched)  # the restarted server has fresh data of A and B
        # A positive marker instead of a pause: B loses its mains now. mains_loss has the longest
        # on_delay of these alarms (2 s), so once B's loss is journaled the engine has evaluated
        # A's and B's fresh data (change batches are processed in order) and let every delay
        # that data could have started expire: a re-announcement would be in the journal by then.
        fault(control, "mains_loss", b)
        after = await journal_until(
            path,
            lambda rows: ("ACTIVATE", "UNACK_ACTIVE") in events(rows[before:], "mains_loss", b),
            what="marker: B's mains loss announced after the restart",
        )
        new = [(r.alarm, r.device, r.event) for r in after[before:]]
        assert not [
            x
            for x in new
            if x[2] == "ACTIVATE" and x[0] in ("mains_loss", "lamps_failed") and x[:2] != ("mains_loss", b)
        ], new
        assert "alarm_states_restored" in server.output()

        # The mains come back: the mains alarm clears and A's lamp
        # alarm, still active, is announced at last.
        fault(control, "mains_restore", a)
        rows = await journal_until(
            path,
            lambda rows: ("UNSUPPRESS", "UNACK_ACTIVE") in events(rows, "lamps_failed", a),
            what="lamp alarm announced after the mains return",
        )
        assert ("CLEAR", "NORMAL") in events(rows, "mains_loss", a)  # acknowledged from the HMI above
    finally:
        if server:
            server.stop()
        sim.stop()
