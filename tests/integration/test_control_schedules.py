"""A lighting schedule dims a commune's cabinets at the right simulated time, end to end.

The lighting simulator (Modbus TCP, own process) and ``scada run`` (own process) on loopback,
the server's schedules on a simulated clock (``--clock-start 22:45 --acceleration 300``, no
origin: the clock reads 22:45 when the schedules start, so the 23:00 step comes three real
seconds later, however long the server took to start). The schedule's step goes through
the command pipeline as the user Scheduler: the Dijon cabinets' dim level reads 40 % through
OPC UA, their Control/last_user reads "Scheduler", the Talant cabinet is left alone, and the
audit trail holds the step (due 22:00 UTC, not applied as the step in force at start) with its
counts, and one "command" record per cabinet.
"""

from __future__ import annotations

import json
import time

import pytest
from asyncua import Client, ua

from scada.control.clockmap import read_segments
from scada.control.schedules import parse_clock_start
from scada.opcua.address_space import NAMESPACE_URI
from scada.security.audit_log import AuditLog

from .helpers import Process, free_port, free_port_range, scada_run_args, until, until_read, wait_port, write_cabinets

pytestmark = pytest.mark.integration

START = "2026-12-05T22:45:00+01:00"  # Paris: the 23:00 step is 15 simulated minutes away
ACCELERATION = 300  # ... three real seconds

SCHEDULE = """
control:
  timezone: Europe/Paris
schedules:
  - name: dijon_late_evening
    communes: [Dijon]
    steps:
      - {at: "23:00", command: SetDimLevel, arguments: {level: 40}}
      - {at: "sunrise", command: SetMode, arguments: {mode: auto}}
"""


def dv_reader(node):
    return lambda: node.read_data_value(raise_on_bad_status=False)


async def test_a_schedule_dims_a_communes_cabinets_at_the_right_simulated_time(tmp_path):
    base = free_port_range(3)
    config = tmp_path / "config"
    cabinets = write_cabinets(config, base, "LC-SCH")  # LC-SCH-000 and -001 in Dijon, -002 in Talant
    with (config / "tags.yaml").open("a", encoding="utf-8") as fh:
        fh.write(SCHEDULE)
    opc_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/scada/"
    data = tmp_path / "data"
    clock = ["--clock-start", START, "--acceleration", str(ACCELERATION)]

    sim = Process(
        [
            "-m",
            "simulators",
            "lighting",
            "--inventory",
            str(config / "inventory" / "lighting-cabinets.csv"),
            "--start",
            START,
            "--acceleration",
            str(ACCELERATION),
        ],
        tmp_path / "sim.log",
    )
    launched, launched_ns = time.monotonic(), time.time_ns()
    server = Process([*scada_run_args(config, data, endpoint), *clock, "--log-json"], tmp_path / "server.log")
    try:
        wait_port(base + 2, proc=sim)
        wait_port(opc_port, proc=server)
        async with Client(endpoint, timeout=5) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)

            def node(cab, point: str):
                return client.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/{point}", ns))

            for cab in cabinets[:2]:
                await until_read(
                    dv_reader(node(cab, "dim_level")),
                    lambda d: d.StatusCode.is_good() and d.Value.Value == 40,
                    what=f"{cab.name} dimmed to 40 % by the schedule",
                )
                user = await until_read(
                    dv_reader(node(cab, "Control/last_user")),
                    lambda d: d.Value.Value == "Scheduler",
                    what=f"{cab.name} Control/last_user",
                )
                assert user.StatusCode.is_good()
            dimmed_after = time.monotonic() - launched
            # The schedules' clock read 22:45 when they started, after the launch: the 23:00 step
            # could not come sooner than (23:00 - 22:45) / 300 = 3 real seconds after the launch.
            assert dimmed_after >= 15 * 60 / ACCELERATION
            talant = cabinets[2]
            setpoint = await node(talant, "dim_setpoint").read_data_value(raise_on_bad_status=False)
            mode = await node(talant, "mode").read_data_value(raise_on_bad_status=False)
            assert setpoint.StatusCode.is_good() and setpoint.Value.Value == 100  # untouched
            assert mode.Value.Value == 0  # auto, as the simulator starts it

        audit_path = data / "audit.sqlite"

        def schedule_records():
            if not audit_path.exists():
                return []
            with AuditLog(audit_path, read_only=True) as log:
                return [e.record for e in log.query(action="schedule")]

        await until(
            lambda: any(json.loads(r.arguments)["step"] == "23:00" for r in schedule_records()),
            what="the 23:00 step in the audit trail",
        )
        step = next(r for r in schedule_records() if json.loads(r.arguments)["step"] == "23:00")
        args = json.loads(step.arguments)
        assert step.user == "Scheduler" and step.target == "dijon_late_evening"
        assert args["due"] == "2026-12-05T22:00:00+00:00" and args["in_force_at_start"] is False
        assert args["command"] == "SetDimLevel" and args["args"]["level"] == 40.0
        assert json.loads(step.result) == {"devices": 2, "confirmed": 2, "failed": 0, "skipped_override": 0}
        with AuditLog(audit_path, read_only=True) as log:
            commands = [e.record for e in log.query(action="command") if e.record.user == "Scheduler"]
        assert {r.target for r in commands if '"SetDimLevel"' in r.arguments} >= {c.name for c in cabinets[:2]}
        # The clock's line is in the data folder (the contract KPIs and `scada report` map the
        # history's real stamps with it): it read START when first read, at x300.
        (segment,) = read_segments(data)
        assert segment.clock_ns == parse_clock_start(START) and segment.acceleration == ACCELERATION
        assert launched_ns <= segment.real_ns <= time.time_ns()
    finally:
        server.stop()
        sim.stop()
