"""The demo's MQTT broker: which one it picks, and the embedded one (amqtt, in its own
process, started as ``scada demo`` starts it) carrying the bollards and vehicles to the
MQTT driver and to the whole server, as Mosquitto does.

The MQTT driver's and simulators' own tests run a second time here against the embedded
broker (the ``broker`` fixture below replaces Mosquitto's for this module).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from asyncua import Client, ua

from city_scada import demo_broker as db
from city_scada.processes import stop as _stop
from scada.diagnostics import ONLINE
from scada.opcua.address_space import NAMESPACE_URI as SCADA_NS
from simulators.city import generate

from .helpers import DEADLINE, ROOT, Process, free_port, scada_run_args, start_tiny_city, until_read, wait_port, wait_port_closed
# Run again on the embedded broker: values, garbage, last will, commands, broker outage...
from .test_mqtt_driver import test_values_garbage_last_will_commands_and_broker_outage as test_driver_on_embedded  # noqa: F401
# ... and the simulators' reconnection and vehicle reports. (Not the bollard test there: it
# subscribes with mosquitto_sub, sleeps 0.3 s and expects the subscription to be in place, which
# a loaded machine does not promise; the driver's test above and the city's below cover the same.)
from .test_mqtt_simulators import test_bollards_reconnect_after_a_broker_outage as test_reconnect_on_embedded  # noqa: F401
from .test_mqtt_simulators import test_vehicles_report_positions as test_vehicles_on_embedded  # noqa: F401

pytestmark = pytest.mark.integration


class EmbeddedBroker:
    """The demo's embedded broker on a free loopback port, with the Mosquitto fixture's interface."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.choice = db.choose("127.0.0.1", self.port, want=db.EMBEDDED)
        assert self.choice.kind == db.EMBEDDED, f"{self.choice.describe()}: `make test` installs the demo extra"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = db.start(self.choice, self.folder)  # returns once it accepts connections

    def stop(self) -> None:
        _stop(self.proc)
        wait_port_closed(self.port)


@pytest.fixture
def broker(tmp_path):
    b = EmbeddedBroker(tmp_path / "embedded-broker")
    yield b
    b.stop()


def mosquitto_exe() -> str:
    exe = db.find_mosquitto()
    assert exe, "mosquitto is missing: `make test` installs it (apt-get install mosquitto)"
    return exe


def test_choice_follows_the_search_path_and_the_port(tmp_path):
    with_mosquitto, without = tmp_path / "with", tmp_path / "without"
    with_mosquitto.mkdir()
    without.mkdir()
    (with_mosquitto / "mosquitto").symlink_to(mosquitto_exe())
    (without / "python3").symlink_to(sys.executable)  # a machine with only Python
    port = free_port()

    chosen = db.choose("127.0.0.1", port, path=str(with_mosquitto))
    assert (chosen.kind, chosen.exe) == (db.MOSQUITTO, str(with_mosquitto / "mosquitto"))
    assert chosen.endpoint == f"127.0.0.1:{port}" and "Mosquitto" in chosen.describe()
    assert db.choose("127.0.0.1", port, path=str(without)).kind == db.EMBEDDED
    forced = db.choose("127.0.0.1", port, want=db.MOSQUITTO, path=str(without))
    assert forced.kind == db.NONE and forced.endpoint is None and "no mosquitto" in forced.describe()
    assert db.choose("127.0.0.1", port, want=db.NONE).kind == db.NONE
    with pytest.raises(ValueError, match="unknown broker"):
        db.choose("127.0.0.1", port, want="rabbitmq")

    # The Mosquitto it found is started on the demo's terms and answers; once something
    # listens on the port, whatever the search path, that broker is the one used.
    proc = db.start(chosen, tmp_path / "run")
    try:
        assert (tmp_path / "run" / "mosquitto.conf").read_text().startswith(f"listener {port} 127.0.0.1")
        assert db.choose("127.0.0.1", port, path=str(without)).kind == db.RUNNING
        refused = db.choose("127.0.0.1", port, want=db.EMBEDDED)
        assert refused.kind == db.NONE and "already taken" in refused.reason
    finally:
        _stop(proc)
    assert proc.returncode is not None
    wait_port_closed(port)


def test_a_broker_that_cannot_start_is_reported_with_its_log(tmp_path):
    # A port something else listens on: refused before anything starts.
    blocker = EmbeddedBroker(tmp_path / "first")
    try:
        with pytest.raises(db.BrokerError, match=f"127.0.0.1:{blocker.port} is already in use"):
            db.start(db.Choice(db.EMBEDDED, "127.0.0.1", blocker.port), tmp_path / "second")
    finally:
        blocker.stop()
    # A port bound but not listening (it answers nobody): the broker process fails to bind
    # and exits; the error says so with the end of its log.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(db.BrokerError, match=f"did not start on 127.0.0.1:{port}.*mqtt-broker.log.*failed"):
            db.start(db.Choice(db.EMBEDDED, "127.0.0.1", port), tmp_path / "third")


def test_retained_messages_go_only_to_their_subscribers(broker):
    """amqtt 0.12.1 sends a new client the retained messages of every client's subscriptions:
    the demo's broker must not (a bollard would take the others' states for commands)."""
    assert shutil.which("mosquitto_sub"), "mosquitto_sub is missing: `make test` installs mosquitto-clients"
    p = ["-h", "127.0.0.1", "-p", str(broker.port)]
    subprocess.run(["mosquitto_pub", *p, "-t", "city/bollards/B-1/state", "-m", "up", "-r", "-q", "1"],
                   check=True, timeout=DEADLINE)
    # A subscriber to the state topics stays connected while another client connects.
    watcher = subprocess.Popen(["mosquitto_sub", *p, "-t", "city/bollards/+/state", "-v", "-W", "60"],
                               stdout=subprocess.PIPE, text=True)
    try:
        first = watcher.stdout.readline()
        assert first.strip() == "city/bollards/B-1/state up"
        # A client of another topic gets nothing in 2 s (-W: mosquitto_sub's own time-out, exit 27).
        other = subprocess.run(["mosquitto_sub", *p, "-t", "city/bollards/B-2/cmd", "-v", "-W", "2"],
                               capture_output=True, text=True, timeout=20)
        assert other.stdout == "" and other.returncode == 27, (other.returncode, other.stdout)
    finally:
        watcher.terminate()
        watcher.wait(10)


def fault(control_port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulators", "fault", "--control-port", str(control_port), *args],
                          capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)


async def test_the_city_and_the_server_on_the_embedded_broker(broker, tmp_path):
    """As ``make demo`` on a machine without Mosquitto: every bollard and vehicle online."""
    tiny = start_tiny_city(tmp_path, mqtt=f"127.0.0.1:{broker.port}", failure_rate=None)
    sim, base, opc_scada, control, config = tiny.sim, tiny.base, tiny.opc_scada, tiny.control, tiny.config
    server = None
    try:
        wait_port(control)
        city = generate("tiny", base_port=base)
        server = Process(scada_run_args(config, tmp_path / "data", tiny.endpoint), tmp_path / "server.log")
        wait_port(opc_scada)
        async with Client(f"opc.tcp://127.0.0.1:{opc_scada}/scada/", timeout=10) as c:
            ns = await c.get_namespace_index(SCADA_NS)

            def read(path: str):
                return c.get_node(ua.NodeId(path, ns)).read_data_value(raise_on_bad_status=False)

            def good(dv) -> bool:
                return dv.StatusCode.is_good()

            for b in city.bollards:
                dv = await until_read(lambda: read(f"{b.commune}/bollard/{b.name}/position"), good, timeout=DEADLINE,
                                      what=f"{b.name} position")
                assert dv.Value.Value in (0, 1, 2, 3)
                await until_read(lambda: read(f"{b.commune}/bollard/{b.name}/Diagnostics/state"),
                                 lambda d: d.Value.Value == ONLINE, timeout=DEADLINE, what=f"{b.name} online")
            for v in city.vehicles:  # filed under the depot's commune, Dijon
                dv = await until_read(lambda: read(f"Dijon/fleet/{v}/lat"), good, timeout=DEADLINE, what=f"{v} position")
                assert 47.0 < dv.Value.Value < 47.6

            # A bollard that drops off the network: the broker announces its last will.
            b = city.bollards[0]
            assert fault(control, "device_offline", b.name).returncode == 0
            await until_read(lambda: read(f"{b.commune}/bollard/{b.name}/position"),
                             lambda d: d.StatusCode.value == ua.StatusCodes.BadCommunicationError, timeout=DEADLINE,
                             what="last will")
            assert fault(control, "device_online", b.name).returncode == 0
            await until_read(lambda: read(f"{b.commune}/bollard/{b.name}/position"), good, timeout=DEADLINE,
                             what="back online")
    finally:
        if server:
            assert server.stop() == 0, server.output()
        assert sim.stop() == 0, sim.output()
