"""`scada reload` end to end: the tiny simulated city and the server as processes, an OPC UA
client watching, the configuration files edited while everything runs.

One server run goes through: a wrong file (rejected with file:line, nothing changes), then one
reload that adds a device, removes one, changes a point of a type (a scale), adds, removes and
changes alarms. Checked: the nodes come and go with a GeneralModelChangeEvent, the added
device is polled, the changed scale is applied, the unchanged active alarm keeps its state
(not announced again), monitored items and history of kept tags survive.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from asyncua import Client, ua

from .helpers import (DEADLINE, ROOT, Notifications, Process, refresh_conditions, running_app, scada_run_args, start_tiny_city, until_read,
                      wait_port)
from .test_alarms_end_to_end import events, fault, journal_until
from .test_opcua_history import history_read, raw

pytestmark = pytest.mark.integration

CABINETS = "inventory/lighting-cabinets.csv"


def reload(data, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "city_scada", "reload", "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)


async def read(client: Client, path: str) -> ua.DataValue:
    ns = await client.get_namespace_index("urn:city-scada:tags")
    return await client.get_node(ua.NodeId(path, ns)).read_data_value(raise_on_bad_status=False)


async def test_reload_wrong_file_then_devices_points_and_alarms_with_the_city_running(tmp_path):
    city = start_tiny_city(tmp_path)
    sim, control, opc_scada, config, data = city.sim, city.control, city.opc_scada, city.config, tmp_path / "data"
    server = None
    journal = data / "alarms.sqlite"
    try:
        wait_port(control)
        # The server starts without LC-DIJ-004 (simulated all along, as a cabinet just installed).
        inventory = (config / CABINETS).read_text()
        full_inventory = inventory
        new_line = next(ln for ln in inventory.splitlines() if ln.startswith("LC-DIJ-004,"))
        (config / CABINETS).write_text(inventory.replace(new_line + "\n", ""))
        alarms = (ROOT / "alarms.yaml").read_text()
        (config / "alarms.yaml").write_text(alarms)
        tags = (config / "tags.yaml").read_text()
        server = Process(scada_run_args(config, data, city.endpoint), tmp_path / "server.log")
        wait_port(opc_scada)
        a = "LC-DIJ-001"
        async with Client(f"opc.tcp://127.0.0.1:{opc_scada}/scada/", timeout=20) as client:
            ns = await client.get_namespace_index("urn:city-scada:tags")
            watch = Notifications()
            sub = await client.create_subscription(50, watch)
            await sub.subscribe_events(client.nodes.server, ua.ObjectIds.GeneralModelChangeEventType)
            polls = ua.NodeId(f"Dijon/lighting/{a}/Diagnostics/successes", ns)
            await sub.subscribe_data_change(client.get_node(polls))
            lamps_path = "Dijon/lighting/LC-DIJ-002/lamp_count"
            lamps = await until_read(lambda: read(client, lamps_path), lambda dv: dv.StatusCode.is_good()
                                     and dv.Value.Value and dv.Value.Value > 0, timeout=DEADLINE, what="lamp count polled")
            assert (await read(client, "Dijon/lighting/LC-DIJ-004/power")).StatusCode.value == \
                ua.StatusCodes.BadNodeIdUnknown

            # An active alarm before the reload: the mains of A are lost.
            fault(control, "mains_loss", a)
            await journal_until(journal, lambda rows: ("ACTIVATE", "UNACK_ACTIVE") in events(rows, "mains_loss", a),
                                timeout=DEADLINE, what="mains loss announced")
            voltage = ua.NodeId(f"Dijon/lighting/{a}/mains_voltage", ns)

            async def history() -> list[ua.DataValue]:
                (res,) = await history_read(client, raw(10**9, time.time_ns() + 10**9), [voltage])
                return res.HistoryData.DataValues if res.StatusCode.is_good() and res.HistoryData else []
            # The voltage before and after the loss, stored.
            history_before = await until_read(history, lambda h: len(h) >= 2, timeout=DEADLINE, what="voltage history")

            # 1. A wrong file: refused by `scada reload` itself, with its file and line.
            (config / "tags.yaml").write_text(tags.replace("poll_interval: 1.0", "poll_intervall: 1.0", 1))
            r = reload(data)
            assert r.returncode == 2, (r.stdout, r.stderr)
            assert "tags.yaml:" in r.stderr and "poll_intervall" in r.stderr, r.stderr
            # The server validates again when signalled directly (SIGHUP) and keeps running as it was.
            server.proc.send_signal(signal.SIGHUP)
            await until_read(lambda: asyncio.sleep(0, server.output()), lambda out: "reload_rejected" in out,
                             timeout=DEADLINE, what="SIGHUP with a wrong file rejected in the server log")
            assert "tags.yaml:" in server.output().split("reload_rejected", 1)[1].splitlines()[0]
            # Still polling the same devices: the monitored item keeps counting.
            await watch.next_data(polls, lambda dv: True)
            assert (await read(client, "Dijon/lighting/LC-DIJ-004/power")).StatusCode.value == \
                ua.StatusCodes.BadNodeIdUnknown

            # 2. A valid change of devices, of a point and of alarms.
            lamp_count = "      lamp_count:\n        table: input\n        address: 6\n        type: uint16\n"
            assert lamp_count in tags
            (config / "tags.yaml").write_text(tags.replace(lamp_count, lamp_count + "        scale: 2\n", 1))
            talant = next(ln for ln in full_inventory.splitlines() if ln.startswith("LC-TAL-001,"))
            (config / CABINETS).write_text(full_inventory.replace(talant + "\n", ""))
            assert "  - name: door_open\n" in alarms and "    limit: 0\n" in alarms
            changed = (alarms.replace("  - name: door_open\n", "  - name: door_open_removed_below\n", 1)
                       .replace("    limit: 0\n", "    limit: 1\n", 1)  # lamps_failed: a changed limit
                       + "  - name: reload_test_power\n    type: lighting_cabinet\n    point: power\n"
                         "    condition: high\n    limit: -1\n    priority: low\n"
                         "    message: \"{device}: power above -1 kW\"\n    service: lighting_maintenance\n")
            (config / "alarms.yaml").write_text(changed)
            r = reload(data)
            assert r.returncode == 0, (r.stdout, r.stderr)
            assert "configuration reloaded" in r.stdout and "LC-DIJ-004" in r.stdout and "LC-TAL-001" in r.stdout, \
                r.stdout

            # Clients are told, and see the nodes come and go.
            change = await watch.next_event(lambda e: any(
                c.Affected == ua.NodeId("Dijon/lighting/LC-DIJ-004", ns) for c in (e.Changes or [])), timeout=DEADLINE)
            verbs = {c.Affected.Identifier: c.Verb for c in change.Changes}
            assert verbs["Dijon/lighting/LC-DIJ-004"] == ua.ModelChangeStructureVerbMask.NodeAdded
            assert verbs["Talant/lighting/LC-TAL-001"] == ua.ModelChangeStructureVerbMask.NodeDeleted
            # The conditions of the added and removed alarms too; a kept one is no change.
            assert verbs[f"Dijon/lighting/{a}/Alarms/reload_test_power"] == ua.ModelChangeStructureVerbMask.NodeAdded
            assert verbs[f"Dijon/lighting/{a}/Alarms/door_open"] == ua.ModelChangeStructureVerbMask.NodeDeleted
            assert f"Dijon/lighting/{a}/Alarms/mains_loss" not in verbs
            assert (await read(client, "Talant/lighting/LC-TAL-001/power")).StatusCode.value == \
                ua.StatusCodes.BadNodeIdUnknown
            # The added cabinet is polled.
            await until_read(lambda: read(client, "Dijon/lighting/LC-DIJ-004/power"),
                             lambda dv: dv.StatusCode.is_good(), timeout=DEADLINE, what="added cabinet polled")
            # The changed scale applies: the lamp count reads twice what it read.
            await until_read(lambda: read(client, lamps_path), lambda dv: dv.Value.Value == 2 * lamps.Value.Value,
                             timeout=DEADLINE, what="lamp count with the new scale")
            # The monitored item of a kept tag still reports.
            await watch.next_data(polls, lambda dv: True)

            # Alarms: the added one is announced on every cabinet, the added cabinet included;
            # the unchanged active mains loss of A is not announced again.
            rows = await journal_until(journal, lambda rows: events(rows, "reload_test_power", "LC-DIJ-004"),
                                       timeout=DEADLINE, what="added alarm announced on the added cabinet")
            assert events(rows, "mains_loss", a) == [("ACTIVATE", "UNACK_ACTIVE")]
            assert not events(rows, "reload_test_power", "LC-TAL-001")
            # The conditions follow: the removed alarm's node is gone, the added one's is there.
            door = client.get_node(ua.NodeId(f"Dijon/lighting/{a}/Alarms/door_open", ns))
            with pytest.raises(ua.UaStatusCodeError):
                await door.read_browse_name()
            added = client.get_node(ua.NodeId(f"Dijon/lighting/LC-DIJ-004/Alarms/reload_test_power", ns))
            assert (await added.read_browse_name()).Name == "reload_test_power"
            # An HMI's ConditionRefresh: the kept condition as it was (unacknowledged), the added
            # cabinet's new one, nothing of the removed cabinet.
            conds, csub, refreshed = await refresh_conditions(client)
            shown = {(e.SourceName, e.ConditionName): e for e in refreshed if e.ConditionName}
            assert getattr(shown[(a, "mains_loss")], "AckedState/Id") is False
            assert (("LC-DIJ-004", "reload_test_power") in shown and ("LC-TAL-001", "reload_test_power") not in shown
                    and not any(src == "LC-TAL-001" for src, _ in shown)), sorted(shown)
            await csub.delete()
            # History of a kept tag: what was stored before the reload is still there.
            history_after = await history()
            before = [(d.SourceTimestamp, d.Value.Value) for d in history_before]
            after = [(d.SourceTimestamp, d.Value.Value) for d in history_after]
            assert after[:len(before)] == before
            # The mains come back: the kept alarm instance clears as it would have without a reload.
            fault(control, "mains_restore", a)
            rows = await journal_until(journal, lambda rows: ("CLEAR", "RTN_UNACK") in events(rows, "mains_loss", a),
                                       timeout=DEADLINE, what="kept mains alarm returns to normal")
            await sub.delete()
        assert server.stop() == 0
        assert "configuration_reloaded" in server.output()
    finally:
        if server:
            server.stop()
        sim.stop()


async def test_a_reload_that_fails_while_applied_puts_the_running_configuration_back(tmp_path, monkeypatch):
    """A fault inside the switch (not a configuration error: those are refused before) leaves
    the server as it was, every component running; the next reload then applies."""
    from scada import app as app_module
    from city_scada import load_config
    from scada.reload import RESULT_FILE, reload_from_files
    async with running_app(tmp_path) as (app, old, new, _):
        names_before = sorted(app.task_names())
        # A wrong alarms.yaml: refused with its file and line, nothing touched.
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "tags.yaml").write_text((tmp_path / "b" / "tags.yaml").read_text())
        (tmp_path / "bad" / "alarms.yaml").write_text(
            (ROOT / "alarms.yaml").read_text().replace("    priority: critical\n", "    priority: urgent\n", 1))
        tasks = dict(app.supervisor.tasks)
        assert await reload_from_files(app, tmp_path / "bad") is False
        result = json.loads((tmp_path / "data" / RESULT_FILE).read_text())
        assert result["ok"] is False and "alarms.yaml:" in result["message"] and "urgent" in result["message"]
        assert app.config is old and app.supervisor.tasks == tasks
        real = app_module.build_drivers

        def broken(config, tagdb):  # a fault of the new configuration's drivers only
            if config is new:
                raise OSError("injected: no driver for you")
            return real(config, tagdb)
        monkeypatch.setattr(app_module, "build_drivers", broken)
        with pytest.raises(OSError, match="injected"):
            await app.reload(new)
        assert app.config is old and len(app.tagdb) == old.total_tag_count
        assert sorted(app.task_names()) == names_before
        assert all(app.supervisor.supervising(n) for n in names_before)
        monkeypatch.setattr(app_module, "build_drivers", real)
        d = await app.reload(new)
        assert d.devices_added == ["LC-3"] and app.config is new
        assert len(app.tagdb) == new.total_tag_count
        assert all(app.supervisor.supervising(n) for n in app.task_names())
        # The restarted driver polls the added cabinet: its diagnostics count failures.
        fails = app.tagdb.id_of("Dijon/lighting/LC-3/Diagnostics/failures")
        await until_read(lambda: asyncio.sleep(0, app.tagdb.value[fails]), lambda v: v >= 1, timeout=DEADLINE,
                         what="added cabinet polled")
        # Only an alarm changes: the field is not disturbed (same tag table, same driver tasks).
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "tags.yaml").write_text((tmp_path / "b" / "tags.yaml").read_text())
        alarms = (ROOT / "alarms.yaml").read_text()
        assert "    limit: 0\n" in alarms
        (tmp_path / "c" / "alarms.yaml").write_text(alarms.replace("    limit: 0\n", "    limit: 2\n", 1))
        tagdb, engine = app.tagdb, app.alarms
        drivers = {n: app.supervisor.tasks[n] for n in app.task_names() if n.startswith("driver:")}
        d = await app.reload(load_config(tmp_path / "c"))
        assert d.alarms_changed == ["lamps_failed"] and not d.devices_changed
        assert app.tagdb is tagdb and app.alarms is not engine
        assert {n: app.supervisor.tasks[n] for n in app.task_names() if n.startswith("driver:")} == drivers
        assert all(app.supervisor.supervising(n) for n in app.task_names())
