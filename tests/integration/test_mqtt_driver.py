"""The MQTT driver on a real Mosquitto, fed by the bollard and vehicle simulators and by
mosquitto_pub (garbage), in one event loop."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scada.driver_api import CommandRejected, DeviceRejected, DeviceTimeout, WriteCommand
from drivers.mqtt.driver import MqttDriver
from scada import status as st
from scada.diagnostics import OFFLINE, ONLINE
from simulators.adapters.mqtt_city import BollardMqttSimulator, FleetMqttSimulator
from simulators.models import bollards as bo
from simulators.models import fleet as fl

from .helpers import DEADLINE, DriverHarness, load, until, write_inventory

pytestmark = pytest.mark.integration




def config(folder: Path, port: int):
    write_inventory(folder, "devices.csv", "name,type,commune,lat,lon,endpoint",
                    [f"B-DIJ-001,access_bollard,Dijon,47.32,5.04,127.0.0.1:{port}",
                     f"B-DIJ-002,access_bollard,Dijon,47.32,5.04,127.0.0.1:{port}",
                     f"V-001,crew_vehicle,Dijon,47.32,5.04,127.0.0.1:{port}"])
    return load(folder)


class Harness(DriverHarness):
    """The MQTT driver over ``cfg``'s devices, its TagDB with the configuration's staleness limits."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg, MqttDriver, max_ages=True)
        self.cfg = cfg


def pub(port, topic, payload: bytes):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-s"],
                   input=payload, check=True, timeout=DEADLINE)


async def test_values_garbage_last_will_commands_and_broker_outage(broker, tmp_path):
    cfg = config(tmp_path / "c", broker.port)
    bollards = BollardMqttSimulator(bo.create(2, t=time.time(), arrivals_per_hour=0), ["B-DIJ-001", "B-DIJ-002"],
                                    "127.0.0.1", broker.port, step_interval=0.05, acceleration=4)
    fleet = FleetMqttSimulator(fl.create([(47.32, 5.04), (47.36, 5.02)], 1, t=time.time(), seed=3), ["V-001"],
                               "127.0.0.1", broker.port, acceleration=100, report_interval=10)
    await bollards.start()
    await fleet.start()
    try:
        async with Harness(cfg) as h:
            await until(lambda: h.status("B-DIJ-001", "position") == st.GOOD, what="first state")
            assert h.value("B-DIJ-001", "position") == 2  # up
            assert h.value("B-DIJ-001", "vehicle") == 0
            await until(lambda: h.status("V-001", "lat") == st.GOOD, what="vehicle position")
            assert 47.3 < h.value("V-001", "lat") < 47.4
            # A tracker that goes quiet for more than its points' max_age (60 s in tags.yaml) turns Uncertain.
            stale = h.tagdb.mark_stale(time.time_ns() + 61 * 10**9)
            assert h.tag("V-001", "lat") in stale.ids.tolist()
            assert h.status("V-001", "lat") == st.UNCERTAIN_LAST_USABLE_VALUE
            await until(lambda: h.status("V-001", "lat") == st.GOOD, what="Good again with the next report")
            # Never a command's value before one is sent.
            assert h.status("B-DIJ-001", "command") == st.BAD_NO_COMMUNICATION

            # A text point from the access events.
            bollards.apply(bo.vehicle_arrives, 1, "delivery")
            await until(lambda: h.tagdb.text.get(h.tag("B-DIJ-002", "last_access_class")) == "delivery", what="event")

            # Garbage: counted, logged, and no tag changes.
            before = h.tagdb.value.copy(), h.tagdb.status.copy()
            garbage0 = h.driver.garbage
            for payload in (b"{not json", b'{"position": "sideways"}', b'{"position": 7}', b"\xff" * 10,
                            b"x" * 100_000, b'["up"]'):
                pub(broker.port, "city/bollards/B-DIJ-001/state", payload)
            await until(lambda: h.driver.garbage >= garbage0 + 6, what="garbage counted")
            ids = h.cfg.tag_ids(h.cfg.device("B-DIJ-001"))
            assert np.array_equal(h.tagdb.value[ids], before[0][ids], equal_nan=True)
            assert np.array_equal(h.tagdb.status[ids], before[1][ids])
            # ... and each shows in the device's diagnostics, which stay online.
            await until(lambda: h.value("B-DIJ-001", "Diagnostics/failures") >= 6, what="garbage in diagnostics")
            assert h.value("B-DIJ-001", "Diagnostics/state") == ONLINE
            assert h.value("B-DIJ-001", "Diagnostics/successes") > 0
            assert "city/bollards/B-DIJ-001/state" in h.tagdb.text[h.tag("B-DIJ-001", "Diagnostics/last_error")]

            # A command with a correlation id, confirmed by the acknowledgement.
            await h.driver.write(WriteCommand("Dijon/bollard/B-DIJ-001/command", 0))  # lower
            await until(lambda: h.value("B-DIJ-001", "position") == 0, what="lowered")
            assert h.value("B-DIJ-001", "command") == 0
            await h.driver.write(WriteCommand("Dijon/bollard/B-DIJ-001/command", 2))  # emergency lowering
            with pytest.raises(DeviceRejected, match="emergency"):
                await h.driver.write(WriteCommand("Dijon/bollard/B-DIJ-001/command", 1))  # raise: refused
            with pytest.raises(CommandRejected):
                h.driver.check(WriteCommand("Dijon/bollard/B-DIJ-001/position", 1))  # not writable
            with pytest.raises(CommandRejected):
                h.driver.check(WriteCommand("Dijon/bollard/B-DIJ-001/command", 9))

            # The bollard drops off the network: its last will turns its tags bad, the other's stay good.
            bollards.set_offline(1, True)
            await until(lambda: h.status("B-DIJ-002", "position") == st.BAD_COMMUNICATION_ERROR, what="last will")
            assert h.status("B-DIJ-001", "position") == st.GOOD
            await until(lambda: h.value("B-DIJ-002", "Diagnostics/state") == OFFLINE, what="diagnostics offline")
            assert h.value("B-DIJ-001", "Diagnostics/rtt") > 0  # the command's round trip to its acknowledgement
            bollards.set_offline(1, False)
            await until(lambda: h.status("B-DIJ-002", "position") == st.GOOD, what="back online")

            # The broker dies: every tag goes bad, last values kept; it comes back: good again.
            broker.stop()
            await until(lambda: h.status("B-DIJ-001", "position") == st.BAD_COMMUNICATION_ERROR, what="broker lost")
            assert h.value("B-DIJ-001", "position") == 0
            broker.start()
            await until(lambda: h.status("B-DIJ-001", "position") == st.GOOD, timeout=DEADLINE, what="broker back")
            assert h.driver.dropped == 0
    finally:
        await fleet.stop()
        await bollards.stop()


async def test_works_when_the_process_holds_more_than_1024_sockets(broker, tmp_path):
    """A city's server holds a socket per Modbus cabinet: paho's own select() loop would fail
    on an MQTT socket numbered above 1023. Ours is driven by the event loop."""
    import socket

    from common.limits import raise_open_file_limit
    if raise_open_file_limit() < 1300:
        pytest.fail("cannot raise the open-file limit to 1300 on this machine")
    hog = [socket.socket() for _ in range(1100)]
    try:
        assert hog[-1].fileno() > 1024
        cfg = config(tmp_path / "c", broker.port)
        bollards = BollardMqttSimulator(bo.create(2, t=time.time(), arrivals_per_hour=0),
                                        ["B-DIJ-001", "B-DIJ-002"], "127.0.0.1", broker.port, step_interval=0.05)
        await bollards.start()
        try:
            async with Harness(cfg) as h:
                await until(lambda: h.status("B-DIJ-002", "position") == st.GOOD, what="values despite high fds")
                await h.driver.write(WriteCommand("Dijon/bollard/B-DIJ-002/command", 0))
        finally:
            await bollards.stop()
    finally:
        for s in hog:
            s.close()


def test_a_batch_is_stored_in_the_order_of_the_stream(tmp_path):
    """Messages decoded a layout at a time must still mean what their order says."""
    cfg = config(tmp_path / "c", 1883)  # never connected: batches are handed to the driver directly
    h = Harness(cfg)
    drv = h.driver
    broker = next(iter(drv.brokers.values()))
    t = time.time_ns()

    def state(device, position, height=0.5, vehicle=False):
        return (broker, f"city/bollards/{device}/state",
                json.dumps({"position": position, "height": height, "vehicle": vehicle, "obstruction": False,
                            "emergency": False, "fault": False}).encode(), t, 0)

    def status(device, text):
        return (broker, f"city/bollards/{device}/status", text.encode(), t, 0)

    drv._process([
        state("B-DIJ-001", "up", 0.1), state("B-DIJ-002", "up"), state("B-DIJ-001", "down", 0.2),
        (broker, "city/bollards/B-DIJ-001/state", b"{not json", t, 0),
        (broker, "city/bollards/B-DIJ-002/state", b'{"position": "sideways", "height": 0.9}', t, 0),
        (broker, "city/bollards/B-DIJ-002/event", b'{"vehicle_class": "bus", "granted": true}', t, 0),
        (broker, "city/vehicles/V-001/position", b'{"lat": 47.3, "lon": 5.0, "speed_kmh": 30, "heading": 90,'
                                                 b' "status": "en_route"}', t, 0),
        status("B-DIJ-002", "offline"),  # its last will, after its values: it ends offline
        status("B-DIJ-001", "offline"), state("B-DIJ-001", "lowering", 0.3),  # back: it ends online
    ])
    assert h.value("B-DIJ-001", "position") == 3 and h.value("B-DIJ-001", "height") == 0.3
    assert h.status("B-DIJ-001", "position") == st.GOOD
    assert h.value("B-DIJ-002", "position") == 2  # "sideways" changed nothing
    assert h.value("B-DIJ-002", "height") == 0.9  # the same message's good field did
    assert h.status("B-DIJ-002", "position") == st.BAD_COMMUNICATION_ERROR
    assert h.tagdb.text.get(h.tag("B-DIJ-002", "last_access_class")) == "bus"
    assert h.value("B-DIJ-002", "last_access_granted") == 1
    assert h.value("V-001", "status") == 1 and h.value("V-001", "lat") == 47.3
    assert h.status("V-001", "lat") == st.GOOD
    # Garbage: the whole "{not json" message, and the unknown state plus its 4 missing fields.
    assert drv.garbage == 1 + 5 and drv.received == 10
    assert [ds.online for ds in drv.devices] == [True, False, True]


async def test_read_now_is_nothing_to_do_for_pushed_state(tmp_path):
    """MQTT devices push their state: read_now sends nothing and changes no tag; it refuses unknown tags."""
    cfg = config(tmp_path / "c", 1883)  # never connected: nothing could be sent anyway
    h = Harness(cfg)
    before = h.tagdb.value.copy(), h.tagdb.status.copy()
    await h.driver.read_now(["Dijon/bollard/B-DIJ-001/position", "Dijon/bollard/B-DIJ-002/command"])
    assert np.array_equal(h.tagdb.value, before[0], equal_nan=True) and (h.tagdb.status == before[1]).all()
    with pytest.raises(CommandRejected, match="unknown tag"):
        await h.driver.read_now(["Dijon/bollard/B-DIJ-404/position"])


async def test_a_command_nobody_acknowledges_is_a_timeout_not_a_lost_link(broker, tmp_path):
    """Published on a connected broker, never acknowledged (no bollard listens): DeviceTimeout, the
    device may have acted on it (the pipeline's BadTimeout), not a link that could not send it."""
    cfg = config(tmp_path / "c", broker.port)
    async with Harness(cfg) as h:
        await until(lambda: all(b.connected for b in h.driver.brokers.values()), what="connected to the broker")
        with pytest.raises(DeviceTimeout, match="no acknowledgement of 'lower'"):
            await h.driver.write(WriteCommand("Dijon/bollard/B-DIJ-001/command", 0))
