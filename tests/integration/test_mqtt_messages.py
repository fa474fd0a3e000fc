"""Orders to the crews and their answers over a real Mosquitto, through the real MQTT driver's
message channel and the crew board; mosquitto_sub and mosquitto_pub play the crew's side."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess

import pytest
from structlog.testing import capture_logs

from drivers.mqtt.driver import MqttDriver
from scada import status as st
from scada.driver_api import CommandRejected, DeviceUnreachable
from scada.operations.crews import CrewBoard
from scada.operations.model import CrewDef, OperationsConfig, OrderState, ServiceDef, WorkOrder

from .helpers import DEADLINE, DriverHarness, SilentLink, load, until, write_inventory

pytestmark = pytest.mark.integration
SERVICE = "lighting_maintenance"


def fleet_config(folder, port: int):
    """V-001 and V-002 on the broker; V-001 is a lighting crew, V-002 is not a crew."""
    write_inventory(folder, "vehicles.csv", "name,type,commune,lat,lon,endpoint",
                    [f"V-00{i},crew_vehicle,Dijon,47.32,5.04,127.0.0.1:{port}" for i in (1, 2)])
    cfg = load(folder)
    ops = OperationsConfig(services={SERVICE: ServiceDef(SERVICE, ("lighting",), {})},
                           crews={"V-001": CrewDef("V-001", (SERVICE,))})
    if "operations" in {f.name for f in dataclasses.fields(cfg)}:
        return dataclasses.replace(cfg, operations=ops)
    object.__setattr__(cfg, "operations", ops)  # before the configuration loader has the field
    return cfg


def pub(port: int, topic: str, *payloads: bytes, retain: bool = False) -> None:
    """Publish each payload, in order, over one connection (QoS 1), as a crew's tracker would."""
    for p in payloads:
        assert b"\n" not in p
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-l",
                    *(["-r"] if retain else [])],
                   input=b"\n".join(payloads) + b"\n", check=True, timeout=DEADLINE)


class Sub:
    """``mosquitto_sub -v`` on some topics, its lines read as they come."""

    def __init__(self, port: int, *topics: str) -> None:
        self.port, self.topics = port, topics
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Sub:
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-v", "-q", "1", "-t", "probe/sync"]
        for t in self.topics:
            args += ["-t", t]
        self.proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        # Subscribed once a probe comes back (mosquitto_sub says nothing when it is).
        async with asyncio.timeout(DEADLINE):
            while True:
                await asyncio.to_thread(pub, self.port, "probe/sync", b"probe")
                try:
                    async with asyncio.timeout(1.0):  # not a guess at speed: the probe is sent again
                        if (await self.line())[0] == "probe/sync":
                            return self
                except TimeoutError:
                    continue

    async def line(self) -> tuple[str, str]:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        assert raw, "mosquitto_sub ended"
        topic, _, payload = raw.decode().rstrip("\n").partition(" ")
        return topic, payload

    async def message(self, topic: str) -> dict:
        """The next message on ``topic`` (probes skipped), as JSON."""
        async with asyncio.timeout(DEADLINE):
            while True:
                t, payload = await self.line()
                if t == topic:
                    return json.loads(payload)

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


def order(**kw) -> WorkOrder:
    values = dict(id="WO-000007", source="alarm", service=SERVICE, priority="high", device="LC-DIJ-001",
                  commune="Dijon", lat=47.3301, lon=5.0402, cause="lamps_failed", description="4 lamps out",
                  state=OrderState.ASSIGNED, origin_ns=0, created_ns=0, created_by="server", crew="V-001",
                  correlation_id="corr-1")
    values.update(kw)
    return WorkOrder(**values)


POSITION = b'{"lat": 47.3301, "lon": 5.0400, "speed_kmh": 0, "heading": 0, "status": "available"}'


async def test_orders_reach_the_crew_and_its_answers_come_back_in_order(broker, tmp_path):
    cfg = fleet_config(tmp_path / "c", broker.port)
    answers: list[tuple[str, dict]] = []
    async with DriverHarness(cfg, MqttDriver) as h:
        board = CrewBoard(cfg, h.tagdb, [h.driver], lambda: 1_780_000_000 * 10**9)
        board.start(lambda vehicle, payload: answers.append((vehicle, dict(payload))))
        # The crew's tracker (retained, as trackers publish): once its position is a Good tag, the
        # driver's subscriptions (made in one SUBSCRIBE with the answers' topic) are in place.
        pub(broker.port, "city/vehicles/V-001/position", POSITION, retain=True)
        await until(lambda: h.status("V-001", "status") == st.GOOD, what="the crew's position")
        [(crew, eta)] = board.propose(order(crew=None, correlation_id=""))
        assert crew == "V-001" and 0 < eta < 10  # ~15 m at 30 km/h

        async with Sub(broker.port, "city/vehicles/+/order") as sub:
            await board.send(order(), "assign")  # returns once the broker has it
            got = await sub.message("city/vehicles/V-001/order")
        assert got == {"order_id": "WO-000007", "correlation_id": "corr-1", "action": "assign", "service": SERVICE,
                       "device": "LC-DIJ-001", "lat": 47.3301, "lon": 5.0402, "priority": "high",
                       "description": "4 lamps out", "ts": "2026-05-28T20:26:40.000Z"}
        assert h.driver.diagnostics()["messages_sent"] == 1

        # Four answers in a burst, a position report among them: each one delivered, in order.
        statuses = ["accepted", "en_route", "on_site", "repaired"]
        burst = [json.dumps({"order_id": "WO-000007", "correlation_id": "corr-1", "status": s}).encode()
                 for s in statuses]
        pub(broker.port, "city/vehicles/V-001/order_status", *burst)
        await until(lambda: len(answers) >= 4, what="the crew's four answers")
        assert [(v, a["status"]) for v, a in answers] == [("V-001", s) for s in statuses]
        assert all(a["correlation_id"] == "corr-1" for _, a in answers)

        # Garbage answers: counted and logged, never delivered; the device's diagnostics show them.
        garbage0 = h.driver.garbage
        with capture_logs() as logs:
            pub(broker.port, "city/vehicles/V-001/order_status", b"{not json", b"[1, 2]", b"\xff\xfe", b'"accepted"')
            await until(lambda: h.driver.garbage >= garbage0 + 4, what="garbage answers counted")
        assert [(e["event"], e["device"], e["topic"]) for e in logs if e["event"] == "mqtt_garbage"] == [
            ("mqtt_garbage", "V-001", "messages.order")
        ] * 4
        assert len(answers) == 4
        await until(lambda: "messages.order: answer is not a JSON object" in h.diag("V-001", "last_error"),
                    what="garbage in the device's diagnostics")
        # An answer of a vehicle that is no crew goes to no order; the next crew answer still does.
        pub(broker.port, "city/vehicles/V-002/order_status", b'{"order_id": "WO-000007", "status": "accepted"}')
        pub(broker.port, "city/vehicles/V-001/order_status", b'{"order_id": "WO-000007", "status": "repaired"}')
        await until(lambda: len(answers) >= 5, what="the answer after the stranger's")
        assert answers[4][0] == "V-001" and h.driver.diagnostics()["answers"] == 6  # the stranger's included

        # What cannot be addressed is refused before anything goes out.
        with pytest.raises(CommandRejected, match="unknown device"):
            await h.driver.send("V-404", "order", {"x": 1})
        with pytest.raises(CommandRejected, match="no message channel 'orders'"):
            await h.driver.send("V-001", "orders", {"x": 1})
        with pytest.raises(CommandRejected, match="not JSON"):
            await h.driver.send("V-001", "order", {"x": float("nan")})
        assert h.driver.diagnostics()["messages_sent"] == 1

        # The broker goes away: a send says so at once.
        broker.stop()
        await until(lambda: not any(b.connected for b in h.driver.brokers.values()), what="broker link lost")
        with pytest.raises(DeviceUnreachable, match="unreachable"):
            await board.send(order(correlation_id="corr-2"), "assign")

        # It comes back: the next order goes, and the one refused while it was down never does.
        broker.start()
        await until(lambda: any(b.connected for b in h.driver.brokers.values()), what="broker back")
        async with Sub(broker.port, "city/vehicles/+/order") as sub:
            await board.send(order(correlation_id="corr-3"), "cancel")
            got = await sub.message("city/vehicles/V-001/order")
        assert (got["correlation_id"], got["action"]) == ("corr-3", "cancel")


async def test_a_send_in_flight_when_the_link_drops_fails_and_is_not_sent_later(broker, tmp_path):
    """The link goes silent between our PUBLISH and the broker's PUBACK (a proxy that stops
    forwarding), then drops: the send fails with DeviceUnreachable, and once the link is back
    paho does not publish that message after all (its sender was told it did not go)."""
    proxy = SilentLink(broker.port)
    await proxy.start()
    cfg = fleet_config(tmp_path / "c", proxy.port)
    try:
        async with Sub(broker.port, "city/vehicles/+/order") as sub, DriverHarness(cfg, MqttDriver) as h:
            link = next(iter(h.driver.brokers.values()))
            await until(lambda: link.connected, what="connected")
            proxy.silent = True
            sending = asyncio.create_task(h.driver.send("V-001", "order", {"order_id": "WO-1", "action": "assign"}))
            await until(lambda: bool(h.driver._pending_sends), what="the send waits for the broker")
            assert link.link is not None and not sending.done()
            link.link.drop()  # what the keep-alive does with a silent broker, without waiting for it
            with pytest.raises(DeviceUnreachable, match="broker link lost"):
                await sending
            proxy.silent = False
            await until(lambda: link.connected, what="reconnected")
            await h.driver.send("V-001", "order", {"order_id": "WO-2", "action": "assign"})
            first = await sub.message("city/vehicles/V-001/order")
            assert first["order_id"] == "WO-2"
    finally:
        await proxy.stop()
