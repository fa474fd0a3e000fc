"""The whole loop of a work order in the simulated city, every part real and on loopback: a
Mosquitto broker, the tiny city's simulators (the fleet plays the crews) and ``scada run``, both on
accelerated time. A lamp failure is injected; its alarm makes an order, the order goes to the
nearest lighting crew over MQTT, the crew accepts, drives, arrives, repairs the simulated cabinet
and says so, the alarm clears and the server closes the order: all journaled, in that order.

Needs the other parts of the operations issue (the crews' board, the fleet's crews, operations.yaml);
skipped before they are there.
"""

from __future__ import annotations

import pytest

from .helpers import Mosquitto, Process, fault, scada_run_args, start_tiny_city, until, wait_port

pytestmark = pytest.mark.integration

ACCELERATION = 600  # simulated seconds per real second: a 30-minute repair takes 3 s


def order_events(data, device: str) -> tuple[str, list]:
    """The first order of ``device`` and its events ("", [] before there is one)."""
    from scada.operations.journal import OrderJournal, OrderJournalError

    try:
        with OrderJournal(data / "workorders.sqlite", readonly=True) as journal:
            orders = journal.orders(device=device)
            return (orders[0].id, journal.events(orders[0].id)) if orders else ("", [])
    except OrderJournalError:  # not created yet
        return "", []


async def test_lamp_failure_order_crew_repair_alarm_clear_closed(tmp_path):
    broker = Mosquitto(tmp_path / "mqtt")
    city = start_tiny_city(tmp_path, mqtt=f"127.0.0.1:{broker.port}", acceleration=ACCELERATION)
    data = tmp_path / "data"
    server = None
    try:
        wait_port(city.control, proc=city.sim)
        assert (city.config / "operations.yaml").is_file()  # the simulated city runs operations
        args = [*scada_run_args(city.config, data, city.endpoint), "--acceleration", str(ACCELERATION)]
        server = Process(args, tmp_path / "server.log")
        wait_port(city.opc_scada, proc=server)
        device = "LC-DIJ-001"
        fault(city.control, "lamp_failure", device, "count=3")
        await until(
            lambda: any(e.event == "close" for e in order_events(data, device)[1]),
            what=f"the order of {device} closed (see {tmp_path}/server.log and sim.log)",
        )
        oid, events = order_events(data, device)
        steps = [e.event for e in events if e.event not in ("note", "dispatch_failed", "warn")]
        # One crew's whole job, in order (a crew that refused first would add refuse/assign).
        assert steps[0] == "create" and steps[-4:] == ["depart", "arrive", "repair", "close"], steps
        assert steps[1:3] == ["assign", "accept"], steps
        crew = next(e.crew for e in events if e.event == "accept")
        assert all(e.user == f"crew:{crew}" for e in events if e.event in ("accept", "depart", "arrive", "repair"))
        close = events[-1]
        assert (close.event, close.user, close.to_state.label) == ("close", "server", "closed")
        assert "breach" not in steps  # a 48 h contract, met in simulated minutes
        times = [e.time_ns for e in events]
        assert times == sorted(times)
    finally:
        if server:
            server.stop()
        city.sim.stop()
        broker.stop()
