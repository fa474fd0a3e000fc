"""A whole (tiny) simulated city in its own process, met by independent peers and by the server:

mbpoll reads a cabinet's registers; mosquitto_sub sees bollard states on a real Mosquitto;
an asyncua client browses and reads the traffic simulator; the server supervises the
generated configuration, and a fault injected through the control port (and a scenario)
reaches its OPC UA clients.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from asyncua import Client, ua

from scada.opcua.address_space import NAMESPACE_URI as SCADA_NS
from simulators.adapters.opcua_traffic import NAMESPACE_URI as TRAFFIC_NS
from simulators.city import generate

from .helpers import (
    DEADLINE,
    ROOT,
    Mosquitto,
    Process,
    fault,
    free_port,
    free_port_range,
    scada_run_args,
    until_read,
    wait_port,
)

pytestmark = pytest.mark.integration


async def test_tiny_city_with_independent_peers_faults_and_the_server(tmp_path):
    broker = Mosquitto(tmp_path / "mqtt")
    base = free_port_range(6)
    opc_sim, opc_scada, control = free_port(), free_port(), free_port()
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "- {at: 0, fault: door_open, device: LC-DIJ-002}\n- {at: 1, fault: conflict_fault, device: J-DIJ-001}\n"
    )
    config = tmp_path / "config"
    sim = Process(
        [
            "-m",
            "simulators",
            "city",
            "--preset",
            "tiny",
            "--base-port",
            str(base),
            "--opcua-port",
            str(opc_sim),
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--control-port",
            str(control),
            "--config-out",
            str(config),
            "--types-from",
            str(ROOT / "tags.yaml"),
            "--scenario",
            str(scenario),
            "--log-json",
        ],
        tmp_path / "sim.log",
    )
    server = None
    try:
        wait_port(control, proc=sim)
        city = generate("tiny", base_port=base)
        cab = city.cabinets[0]

        # mbpoll, an independent Modbus master, reads the cabinet's lamp count (input register 6).
        # -o 10: its longest response timeout (1 s by default: short for a simulator on a loaded machine).
        mbpoll = ["mbpoll", "-m", "tcp", "-a", "1", "-0", "-r", "6", "-t", "3", "-c", "1", "-1", "-o", "10"]
        out = subprocess.run(
            [*mbpoll, "-p", str(cab.port), "127.0.0.1"], capture_output=True, text=True, timeout=DEADLINE
        )
        read = re.search(r"\[6\]:\s+(\d+)", out.stdout)
        assert read and int(read.group(1)) == city.lamps[0], out.stdout

        # mosquitto_sub sees the bollards' retained states.
        # -W: mosquitto_sub's own deadline, the shared one (it ends as soon as it has every state).
        sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "city/bollards/+/state", "-v"]
        got = subprocess.run(
            [*sub, "-C", str(len(city.bollards)), "-W", str(int(DEADLINE))],
            capture_output=True,
            text=True,
            timeout=DEADLINE + 30,
        )
        states = {
            line.split(" ", 1)[0].split("/")[2]: json.loads(line.split(" ", 1)[1]) for line in got.stdout.splitlines()
        }
        assert set(states) == {b.name for b in city.bollards}
        assert all(s["position"] in ("up", "down", "rising", "lowering") for s in states.values())

        # An asyncua client browses the traffic simulator; the scenario's conflict fault shows.
        # watchdog_intervall: asyncua probes the server every interval, each probe given that long
        # (1 s by default): on a loaded machine one slow probe marked the client disconnected.
        async with Client(f"opc.tcp://127.0.0.1:{opc_sim}/traffic/", timeout=DEADLINE, watchdog_intervall=DEADLINE) as c:
            ns = await c.get_namespace_index(TRAFFIC_NS)
            j = city.junctions[0]
            assert await c.get_node(ua.NodeId(f"Junctions/{j.commune}", ns)).get_children()
            await until_read(
                c.get_node(ua.NodeId(f"{j.name}.ConflictFault", ns)).read_value,
                lambda v: v is True,
                what="scenario conflict fault",
            )

        # The server supervises the generated configuration.
        endpoint = f"opc.tcp://127.0.0.1:{opc_scada}/scada/"
        server = Process(scada_run_args(config, tmp_path / "data", endpoint), tmp_path / "server.log")
        wait_port(opc_scada, proc=server)
        async with Client(endpoint, timeout=DEADLINE, watchdog_intervall=DEADLINE) as c:
            ns = await c.get_namespace_index(SCADA_NS)

            def node(device, point):
                n = c.get_node(ua.NodeId(f"{device.commune}/lighting/{device.name}/{point}", ns))

                async def good_value():  # None until the first Good value
                    dv = await n.read_data_value(raise_on_bad_status=False)
                    return dv.Value.Value if dv.StatusCode.is_good() else None

                n.good_value = good_value
                return n

            await until_read(node(cab, "lamp_count").good_value, lambda v: v == city.lamps[0], what="lamp count")
            # The scenario opened LC-DIJ-002's door.
            await until_read(node(city.cabinets[1], "door_open").good_value, lambda v: v is True, what="door open")
            # A fault through the control port: 3 lamps fail, then mains loss.
            assert fault(control, "lamp_failure", cab.name, "count=3").returncode == 0
            await until_read(node(cab, "failed_lamps").good_value, lambda v: v == 3, what="failed lamps")
            assert fault(control, "mains_loss", cab.name).returncode == 0
            await until_read(node(cab, "mains_fault").good_value, lambda v: v is True, what="mains fault")
            assert await node(cab, "power").good_value() == 0
            # A cabinet that stops answering goes Bad_CommunicationError.
            assert fault(control, "device_silent", city.cabinets[2].name).returncode == 0
            await until_read(
                lambda: node(city.cabinets[2], "power").read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.value == ua.StatusCodes.BadCommunicationError,
                what="silent",
            )
            # The junctions (OPC UA) and bollards (MQTT) of the generated configuration too.
            j, b = city.junctions[0], city.bollards[0]
            conflict = c.get_node(ua.NodeId(f"{j.commune}/traffic/{j.name}/conflict_fault", ns))
            await until_read(
                lambda: conflict.read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.is_good() and d.Value.Value is True,
                what="junction via OPC UA",
            )
            position = c.get_node(ua.NodeId(f"{b.commune}/bollard/{b.name}/position", ns))
            await until_read(
                lambda: position.read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.is_good() and d.Value.Value in (0, 1, 2, 3),
                what="bollard via MQTT",
            )
        # Bad requests are refused with a reason, and change nothing.
        r = fault(control, "lamp_failure", "LC-NOPE-001", "count=1", check=False)
        assert r.returncode == 1 and "unknown device" in r.stderr
        r = fault(control, "conflict_fault", cab.name, check=False)
        assert r.returncode == 1 and "does not apply to a lighting device" in r.stderr
        r = fault(control, "lamp_failure", cab.name, check=False)
        assert r.returncode == 1 and "missing count" in r.stderr
    finally:
        if server:
            assert server.stop() == 0, server.output()
        assert sim.stop() == 0, sim.output()
        broker.stop()
    log = sim.output()
    assert "city_simulator_started" in log and "scenario_done" in log
