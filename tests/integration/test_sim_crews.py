"""The simulated city's crews on a real Mosquitto: work orders published with mosquitto_pub are
answered (accepted, en route, on site, repaired: mosquitto_sub sees each, with its correlation
id), the vehicle's position topic shows it, and the injected faults are repaired in the models:
a cabinet's failed lamps, a junction's latched conflict, a bollard's fault. Garbage orders are
ignored; a busy crew refuses another order."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid

import pytest

from simulators.city import generate
from simulators.runner import CitySimulator

from .helpers import DEADLINE, free_port, free_port_range, until

pytestmark = pytest.mark.integration


class Watch:
    """mosquitto_sub on ``topic`` (every message, with its topic), read line by line in a thread
    until the test has what it waits for. A retained marker tells when the subscription is in
    place (the broker answers a subscription with the retained messages)."""

    def __init__(self, broker, topic: str) -> None:
        assert shutil.which("mosquitto_sub"), "mosquitto_sub is missing: `make test` installs mosquitto-clients"
        self.marker = f"test/subscribed/{uuid.uuid4().hex}"
        publish(broker, ["ready"], self.marker, retain=True)
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-t", self.marker, "-v",
             "-W", str(int(DEADLINE))],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.seen: list[tuple[str, str]] = []

    async def until(self, predicate, what: str) -> list[tuple[str, str]]:
        """Read until ``predicate(topic, payload)`` holds for a message; every message so far."""
        while True:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            assert line, f"mosquitto_sub ended before {what}; seen: {self.seen}"
            topic, _, payload = line.rstrip("\n").partition(" ")
            if topic == self.marker:
                continue
            self.seen.append((topic, payload))
            if predicate(topic, payload):
                return self.seen

    async def ready(self) -> None:
        while True:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            assert line, "mosquitto_sub ended before its subscription was in place"
            topic, _, payload = line.rstrip("\n").partition(" ")
            if topic == self.marker:
                return
            self.seen.append((topic, payload))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=DEADLINE)


def publish(broker, lines: list[str], topic: str, retain: bool = False) -> None:
    """mosquitto_pub: each of ``lines`` one message on ``topic``, in order on one connection (-l)."""
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-q", "1", "-l",
         *(["-r"] if retain else [])],
        input="\n".join(lines) + "\n",
        text=True,
        check=True,
        timeout=DEADLINE,
    )


async def test_crews_take_orders_drive_repair_the_faults_and_answer(broker):
    city = generate("tiny", base_port=free_port_range(6))
    # 600 simulated seconds a real one: the drives and the repairs (up to an hour) take seconds.
    sim = CitySimulator(
        city,
        opcua_endpoint=f"opc.tcp://127.0.0.1:{free_port()}/traffic/",
        mqtt=("127.0.0.1", broker.port),
        control_port=None,
        acceleration=600.0,
        failure_rate=0.0,
        seed=4,
    )
    await sim.start()
    watch = None
    try:
        assert sim.fleet is not None and sim.traffic is not None and sim.bollards is not None
        await until(lambda: sim.fleet.link.connected, what="fleet gateway connected")
        cab, junction, bollard = city.cabinets[2], city.junctions[0], city.bollards[0]
        await sim.inject("lamp_failure", cab.name, count=4)
        await sim.inject("conflict_fault", junction.name)
        await sim.inject("bollard_fault", bollard.name)
        assert sim.lighting.state.failed[2] == 4
        assert sim.faulty() == {cab.name, junction.name, bollard.name}

        watch = Watch(broker, "city/vehicles/#")
        await watch.ready()
        v1, v2, v3 = city.vehicles

        def order(n: int, site, service: str) -> dict:
            return {"order_id": f"WO-00000{n}", "correlation_id": f"corr-{n}", "action": "assign",
                    "service": service, "device": site.name, "lat": site.lat, "lon": site.lon,
                    "priority": "high", "description": "fault", "ts": "2026-12-05T19:00:00Z"}

        # An order for a vehicle the fleet does not have; then, on one connection, in order:
        # garbage, the order, another order for the now busy crew.
        publish(broker, [json.dumps(order(9, cab, "lighting_maintenance"))], "city/vehicles/V-999/order")
        publish(broker, ["{not json", json.dumps(order(1, cab, "lighting_maintenance")),
                         json.dumps(order(4, junction, "traffic_control"))], f"city/vehicles/{v1}/order")
        publish(broker, [json.dumps(order(2, junction, "traffic_control"))], f"city/vehicles/{v2}/order")
        publish(broker, [json.dumps(order(3, bollard, "security"))], f"city/vehicles/{v3}/order")

        repaired: set[str] = set()

        def all_repaired(topic: str, payload: str) -> bool:
            if topic.endswith("/order_status") and json.loads(payload)["status"] == "repaired":
                repaired.add(json.loads(payload)["order_id"])
            return len(repaired) == 3

        seen = await watch.until(all_repaired, "three repairs")
        answers = [(t.split("/")[2], json.loads(p)) for t, p in seen if t.endswith("/order_status")]
        by_vehicle = {v: [(a["order_id"], a["correlation_id"], a["status"]) for w, a in answers if w == v]
                      for v in city.vehicles}
        assert by_vehicle[v1] == [
            ("WO-000001", "corr-1", "accepted"),
            ("WO-000001", "corr-1", "en_route"),
            ("WO-000004", "corr-4", "refused"),
            ("WO-000001", "corr-1", "on_site"),
            ("WO-000001", "corr-1", "repaired"),
        ]
        for v, n in ((v2, 2), (v3, 3)):
            assert [s for _, c, s in by_vehicle[v] if c == f"corr-{n}"] == ["accepted", "en_route", "on_site", "repaired"]
        refusal = next(a for _, a in answers if a["order_id"] == "WO-000004")
        assert refusal["reason"] == "busy with WO-000001"
        assert all(a["ts"].endswith("Z") for _, a in answers)
        assert sim.fleet.invalid_orders == 2  # the garbage and V-999's: logged and ignored, nothing answered
        assert not any(a["order_id"] == "WO-000009" for _, a in answers)

        # The position topic shows the crew en route, then on site at the cabinet while it works.
        def at(status: str) -> int:
            return next(k for k, (t, p) in enumerate(seen)
                        if t == f"city/vehicles/{v1}/order_status" and json.loads(p)["status"] == status)

        during = [json.loads(p) for t, p in seen[at("accepted"):at("repaired")] if t == f"city/vehicles/{v1}/position"]
        statuses = [p["status"] for p in during]
        assert statuses[0] == "en_route" and statuses[-1] == "on_site"
        assert statuses == sorted(statuses, key=["en_route", "on_site"].index)  # never available meanwhile
        at_work = [p for p in during if p["status"] == "on_site"]
        assert all((p["lat"], p["lon"]) == (round(cab.lat, 6), round(cab.lon, 6)) for p in at_work)

        # The models: the lamps work, the junction's latch is released, the bollard is out of fault.
        await until(lambda: sim.stats()["crew_repairs"] == 3, what="three repairs applied")
        lights = sim.lighting.state
        assert lights.failed[2] == 0 and not lights.lum_failed[lights.lum_cabinet == 2].any()
        assert not sim.traffic.state.conflict[0] and not sim.traffic.state.conflict_present[0]
        assert not sim.bollards.state.fault[0]
        assert sim.faulty() == set()
        assert sim.fleet.state.jobs == (None, None, None)  # every crew free again
    finally:
        if watch is not None:
            watch.stop()
        await sim.stop()
