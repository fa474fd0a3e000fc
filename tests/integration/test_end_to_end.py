"""The walking skeleton end to end, as processes on loopback:

simulated lighting cabinets (Modbus TCP, own process) -> server (own process) -> asyncua client.
A change made in a cabinet by an independent Modbus master (mbpoll) reaches the OPC UA client
with Good status and the right scaled value; killing the simulator turns the tags
Bad_CommunicationError (last value kept); restarting it restores Good.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.opcua.address_space import NAMESPACE_URI
from simulators.inventory import Cabinet

from .helpers import DEADLINE, OPEN_SECURITY, until_read, Process, free_port, free_port_range, wait_port, wait_port_closed, write_cabinets

pytestmark = pytest.mark.integration

POLL, TIMEOUT = 0.3, 0.5


def write_config(folder: Path, base_port: int) -> list[Cabinet]:
    """Three simulated cabinets (two in Dijon) for the real server process, polled fast."""
    return write_cabinets(folder, base_port, "LC-T", POLL, TIMEOUT)



def dv_reader(node):
    """Read a DataValue without raising on a Bad status: the status is what is being tested."""
    return lambda: node.read_data_value(raise_on_bad_status=False)


class Notifications:
    def __init__(self) -> None:
        self.values: list = []

    def datachange_notification(self, node, val, data):
        self.values.append(val)


async def test_cabinet_change_reaches_opcua_client_and_link_loss_is_reported(tmp_path):
    assert shutil.which("mbpoll"), "mbpoll is missing: `make test` installs it (apt-get install mbpoll)"
    base = free_port_range(3)
    cabinets = write_config(tmp_path / "config", base)
    inventory = tmp_path / "config" / "inventory" / "lighting-cabinets.csv"
    opc_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/scada/"

    sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory)], tmp_path / "sim.log")
    server = Process(["-m", "city_scada", "run", "--config", str(tmp_path / "config"), "--opcua-endpoint", endpoint,
                      "--security", str(OPEN_SECURITY),
                      "--status-interval", "1", "--log-json", "--data", str(tmp_path / "data")], tmp_path / "server.log")
    try:
        wait_port(base + 2)
        wait_port(opc_port)
        async with Client(endpoint, timeout=5) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            cab = cabinets[0]

            def node(point: str):
                return client.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/{point}", ns))

            dim, power, mode = node("dim_level"), node("power"), node("mode")
            handler = Notifications()
            sub = await client.create_subscription(50, handler)
            await sub.subscribe_data_change(dim)

            # Values arrive with Good status.
            dv = await until_read(dv_reader(mode), lambda d: d.StatusCode.is_good(), DEADLINE, "first poll")
            assert dv.Value.Value == 0  # auto

            # An independent Modbus master puts the cabinet in manual dimming at 40 %.
            subprocess.run(["mbpoll", "-m", "tcp", "-a", "1", "-0", "-r", "0", "-t", "4", "-p", str(cab.port),
                            "127.0.0.1", "3", "40"], check=True, capture_output=True, timeout=10)
            dv = await until_read(dv_reader(dim), lambda d: d.Value.Value == 40, DEADLINE, "dim level 40 %")
            assert dv.StatusCode.is_good()
            assert dv.SourceTimestamp is not None
            expected_kw = cab.lamps * 60.0 * 0.40 / 1000.0  # luminaires x 60 W x 40 %, in kW (float32)
            dv = await until_read(dv_reader(power), lambda d: d.Value.Value and abs(d.Value.Value - expected_kw) < 1e-4,
                                15, f"power {expected_kw} kW")
            assert dv.StatusCode.is_good()
            assert (await mode.read_value()) == 3
            # The subscription saw the change too (the publisher notifies monitored items).
            await until_read(lambda: asyncio.sleep(0, handler.values), lambda v: 40 in v, DEADLINE, "subscription")

            # The engineering unit travels with the variable.
            eu = await power.get_child(["0:EngineeringUnits"])
            assert (await eu.read_value()).DisplayName.Text == "kW"

            # Kill the simulator: the tags turn Bad_CommunicationError and the last value is kept.
            # (That the first failed poll does it, within poll interval + timeout, is counted in
            # test_modbus_driver; here a generous bound, which a loaded machine cannot break.)
            sim.stop(signal.SIGKILL)
            dv = await until_read(dv_reader(dim),
                                  lambda d: d.StatusCode.value == ua.StatusCodes.BadCommunicationError,
                                  30, "Bad_CommunicationError after the simulator died")
            assert dv.Value.Value == 40
            other = client.get_node(ua.NodeId(f"Talant/lighting/{cabinets[2].name}/mains_voltage", ns))
            await until_read(dv_reader(other), lambda d: d.StatusCode.value == ua.StatusCodes.BadCommunicationError,
                           30, "every cabinet of the dead simulator")

            # Restart it: Good again, without restarting the server.
            wait_port_closed(cab.port)
            sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory)], tmp_path / "sim2.log")
            wait_port(base + 2)
            await until_read(dv_reader(dim), lambda d: d.StatusCode.is_good(), DEADLINE, "Good after restart")
            dv = await until_read(dv_reader(mode), lambda d: d.StatusCode.is_good(), DEADLINE, "mode Good after restart")
            assert dv.Value.Value == 0  # a restarted cabinet comes back in automatic mode
            await sub.delete()
        # Ctrl-C (SIGINT) stops the server cleanly.
        assert server.stop(signal.SIGINT) == 0, server.output()
        log = server.output()
        assert '"event": "opcua_server_started"' in log
        assert '"event": "status"' in log
        assert '"loop_lag_ms"' in log and '"missed_cycles"' in log  # the polling health of the status line
        assert '"device": "LC-T-000"' in log  # structured keys, not text in the message
    finally:
        sim.stop()
        server.stop()
