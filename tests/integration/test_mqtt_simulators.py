"""Bollards and vehicles on a real Mosquitto, watched with mosquitto_sub and commanded with mosquitto_pub."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid

import pytest

from simulators.adapters.mqtt_city import BollardMqttSimulator, FleetMqttSimulator
from simulators.models import bollards as bo
from simulators.models import fleet as fl

from .helpers import DEADLINE, until, until_read

pytestmark = pytest.mark.integration




class Sub:
    """mosquitto_sub on ``topic``, plus a marker topic whose retained message tells when the
    subscription is in place (the broker answers a subscription with the retained messages),
    so that a test publishes after that, not after a pause it hopes is long enough."""

    def __init__(self, broker, topic: str, count: int, timeout: float = 30) -> None:
        assert shutil.which("mosquitto_sub"), "mosquitto_sub is missing: `make test` installs mosquitto-clients"
        self.marker = f"test/subscribed/{uuid.uuid4().hex}"
        pub(broker, self.marker, "ready", retain=True)
        # The marker last: a broker handles a connection's subscriptions in order.
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic,
                                      "-t", self.marker, "-v", "-C", str(count + 1), "-W", str(int(timeout))],
                                     stdout=subprocess.PIPE, text=True)
        self.early: list[str] = []  # lines read while waiting for the marker

    async def ready(self) -> None:
        while True:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            assert line, "mosquitto_sub ended before its subscription was in place"
            if line.split(" ", 1)[0] == self.marker:
                return
            self.early.append(line)


def sub(broker, topic: str, count: int) -> Sub:
    return Sub(broker, topic, count)


def pub(broker, topic: str, payload: str, retain: bool = False) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-q", "1",
                    "-m", payload, *(["-r"] if retain else [])], check=True, timeout=30)


async def lines(s: Sub) -> list[tuple[str, str]]:
    out, _ = await asyncio.to_thread(s.proc.communicate)
    return [tuple(line.rstrip("\n").split(" ", 1)) for line in s.early + out.splitlines()
            if line.strip() and line.split(" ", 1)[0] != s.marker]


async def test_bollard_states_commands_acks_and_last_will(broker):
    names = ["B-DIJ-001", "B-DIJ-002"]
    sim = BollardMqttSimulator(bo.create(2, t=time.time(), arrivals_per_hour=0), names, "127.0.0.1", broker.port,
                               step_interval=0.05, acceleration=4.0)
    await sim.start()
    try:
        await until(lambda: all(link.connected for link in sim.links), what="bollards connected")
        # Retained state and status, seen by an independent subscriber.
        got = dict(await lines(sub(broker, "city/bollards/+/status", 2)))
        assert got == {"city/bollards/B-DIJ-001/status": "online", "city/bollards/B-DIJ-002/status": "online"}
        state = dict(await lines(sub(broker, "city/bollards/B-DIJ-001/state", 1)))
        assert json.loads(state["city/bollards/B-DIJ-001/state"])["position"] == "up"

        # A command with a correlation id is answered on the ack topic; the bollard lowers.
        acks = sub(broker, "city/bollards/B-DIJ-001/ack", 2)
        await acks.ready()
        pub(broker, "city/bollards/B-DIJ-001/cmd", json.dumps({"command": "lower", "correlation_id": "c-17"}))
        pub(broker, "city/bollards/B-DIJ-001/cmd", "{not json")
        answered = [json.loads(p) for _, p in await lines(acks)]
        assert answered[0]["correlation_id"] == "c-17" and answered[0]["result"] == "accepted"
        assert answered[1]["result"] == "rejected" and "invalid" in answered[1]["reason"]
        await until(lambda: sim.state.position[0] == bo.DOWN, what="lowered")
        await until(lambda: sim._last is not None and sim._last[0][0] == bo.DOWN, what="published")

        async def retained_position() -> str:
            state = dict(await lines(sub(broker, "city/bollards/B-DIJ-001/state", 1)))
            return json.loads(state["city/bollards/B-DIJ-001/state"])["position"]

        # Handed to the client is not yet retained by the broker: wait for the broker's copy.
        await until_read(retained_position, lambda p: p == "down", what="the broker's retained state: down")

        # An obstruction while rising reverses it.
        pub(broker, "city/bollards/B-DIJ-001/cmd", json.dumps({"command": "raise", "correlation_id": "c-18"}))
        await until(lambda: sim.state.position[0] == bo.RISING, what="rising")
        sim.apply(bo.set_obstruction, 0, True)
        await until(lambda: sim.state.reversals[0] == 1, what="reversed")
        assert sim.state.position[0] in (bo.LOWERING, bo.DOWN)

        # An access event.
        events = sub(broker, "city/bollards/B-DIJ-002/event", 1)
        await events.ready()
        sim.apply(bo.vehicle_arrives, 1, "delivery")
        event = json.loads((await lines(events))[0][1])
        assert event == {"event": "access", "vehicle_class": "delivery", "granted": True, "ts": event["ts"]}

        # The bollard drops off the network: the broker publishes its last will.
        status = sub(broker, "city/bollards/B-DIJ-002/status", 2)  # retained "online", then the will
        await status.ready()
        sim.set_offline(1, True)
        assert [p for _, p in await lines(status)] == ["online", "offline"]
        sim.set_offline(1, False)
        await until(lambda: sim.links[1].connected, what="back online")
    finally:
        await sim.stop()


async def test_vehicles_report_positions(broker):
    places = [(47.322, 5.041), (47.369, 5.021), (47.291, 5.007)]
    names = [f"V-{i:03d}" for i in range(5)]
    sim = FleetMqttSimulator(fl.create(places, 5, t=time.time(), seed=1), names, "127.0.0.1", broker.port,
                             acceleration=50.0, report_interval=10.0)
    watcher = sub(broker, "city/vehicles/+/position", 10)
    await watcher.ready()
    await sim.start()
    try:
        got = await lines(watcher)
        assert len(got) == 10
        for topic, payload in got:
            msg = json.loads(payload)
            assert topic.split("/")[2] in names
            assert 47.2 < msg["lat"] < 47.4 and 4.9 < msg["lon"] < 5.2
            assert msg["status"] in ("available", "en_route", "on_site")
    finally:
        await sim.stop()


async def test_bollards_reconnect_after_a_broker_outage(broker):
    names = ["B-QUE-001"]
    sim = BollardMqttSimulator(bo.create(1, t=time.time(), arrivals_per_hour=0), names, "127.0.0.1", broker.port,
                               step_interval=0.05)
    await sim.start()
    try:
        await until(lambda: sim.links[0].connected, what="connected")
        broker.stop()  # the broker dies (it kept nothing: persistence is off)
        await until(lambda: not sim.links[0].connected, what="link lost")
        broker.start()
        await until(lambda: sim.links[0].connected, timeout=DEADLINE, what="reconnected with backoff")
        # The bollard announced itself and its state again to the new broker.
        got = dict(await lines(sub(broker, "city/bollards/B-QUE-001/+", 2)))
        assert got["city/bollards/B-QUE-001/status"] == "online"
        assert json.loads(got["city/bollards/B-QUE-001/state"])["position"] == "up"
    finally:
        await sim.stop()
