"""Work orders end to end: the tiny simulated city and ``scada run`` as processes (the OPC UA
front in its own process, which receives the orders' pushes), a lamp failure injected through
the simulator's control port, the order read back with ``scada workorders`` from the journal the
server writes, with its contractual deadlines; then a restart of the server: the order is loaded
again, not created twice.

Needs the configuration part of the operations issue (``Config.operations`` from the
operations.yaml that the simulator copies beside its tags.yaml); skipped before it is there.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.request

import pytest

from .helpers import DEADLINE, ROOT, Process, fault, free_port, scada_run_args, start_tiny_city, until, wait_port

pytestmark = pytest.mark.integration

S = 1_000_000_000


def scada(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "city_scada", *args], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def orders_of(data, device: str) -> list[dict]:
    """The orders of ``device`` (every state) as ``scada workorders --csv`` gives them."""
    rows = csv.DictReader(io.StringIO(scada("workorders", "--data", str(data), "--all", "--device", device, "--csv")))
    return list(rows)


def map_names(port: int) -> set[str]:
    """The names of the features of the server's GeoJSON map feed."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/map.geojson", timeout=DEADLINE) as r:
            return {f["properties"]["name"] for f in json.load(r)["features"]}
    except OSError:  # not serving yet
        return set()


def has_order(data, device: str) -> bool:
    """An order of ``device`` is in the journal (read directly: cheap enough to poll)."""
    from scada.operations.journal import OrderJournal, OrderJournalError

    try:
        with OrderJournal(data / "workorders.sqlite", readonly=True) as journal:
            return bool(journal.orders(device=device))
    except OrderJournalError:  # not created yet
        return False


async def test_lamp_failure_makes_one_order_with_its_deadlines_kept_over_a_restart(tmp_path):
    from city_scada import load_config
    city = start_tiny_city(tmp_path)
    sim, control, config, data = city.sim, city.control, city.config, tmp_path / "data"
    server = None
    try:
        wait_port(control, proc=sim)
        (config / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
        ops = load_config(config).operations
        assert "lighting_maintenance" in ops.services  # the simulated city's operations.yaml routes it
        delays = ops.services["lighting_maintenance"].delays["medium"]  # lamps_failed's priority
        http_port = free_port()
        args = scada_run_args(config, data, city.endpoint)
        args[args.index("--http") + 1] = f"127.0.0.1:{http_port}"  # the test's own ports
        map_port = free_port()
        args += ["--http-internal", f"127.0.0.1:{map_port}"]  # the map feed's listener
        server = Process(args, tmp_path / "server.log")
        wait_port(city.opc_scada, proc=server)
        a, b = "LC-DIJ-001", "LC-DIJ-002"
        fault(control, "lamp_failure", a, "count=3")
        await until(lambda: has_order(data, a), what=f"a work order for {a}")
        (order,) = orders_of(data, a)
        assert (order["source"], order["service"], order["cause"], order["priority"], order["commune"]) == (
            "alarm",
            "lighting_maintenance",
            "lamps_failed",
            "medium",
            "Dijon",
        )
        origin = int(order["origin_ns"])
        assert int(order["on_site_due_ns"]) == origin + int(delays.on_site_s * S)
        assert int(order["repaired_due_ns"]) == origin + int(delays.repaired_s * S)
        # The alarm journal's activation is the order's origin: the contract counts from the fault.
        alarm = list(csv.DictReader(io.StringIO(scada("journal", "--data", str(data), "--device", a))))
        assert [r["time_ns"] for r in alarm if r["alarm"] == "lamps_failed" and r["event"] == "ACTIVATE"] == [
            str(origin)
        ]
        # The front process got the order (the core's push): the map feed shows it.
        wait_port(map_port, proc=server)
        await until(lambda: order["id"] in map_names(map_port), what="the order on the map feed")
        listing = scada("workorders", "--data", str(data))
        assert order["id"] in listing and a in listing
        events = scada("workorders", "--data", str(data), "--order", order["id"], "--csv")
        assert [r["event"] for r in csv.DictReader(io.StringIO(events))][0] == "create"

        # Restart: the order is loaded again; the still active alarm is not announced again, so
        # no second order. A marker instead of a pause: B's lamps fail after the restart; once
        # its order exists, the engine has evaluated A's fresh data too (batches in order).
        assert server.stop() == 0
        server = Process(args, tmp_path / "server2.log")
        wait_port(city.opc_scada, proc=server)
        fault(control, "lamp_failure", b, "count=2")
        await until(lambda: has_order(data, b), what=f"marker: the order of {b} after the restart")
        assert [o["id"] for o in orders_of(data, a)] == [order["id"]]
        assert "work_orders_restored" in server.output()
        assert server.proc.poll() is None  # the front took the pushes: the server runs on
    finally:
        if server:
            server.stop()
        sim.stop()
