"""The MQTT driver's fast path (QoS-0 PUBLISH packets framed by the link, the rest read by paho)
on a real Mosquitto: the same tag values, statuses and texts as paho alone, in the order of the
stream around QoS-1 last wills; and, against a scripted broker (Mosquitto refuses them), a topic
that is not UTF-8 counted as garbage without losing the link, with or without the fast path."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from drivers.mqtt.frames import remaining_length
from scada import status as st
from tests.unit.test_mqtt_aio import ScriptedBroker
from tests.unit.test_mqtt_frames import publish

from .helpers import until
from .test_mqtt_driver import Harness, config

pytestmark = pytest.mark.integration


def state(device: str, position: str, height: float, vehicle: bool = False) -> bytes:
    doc = {"position": position, "height": height, "vehicle": vehicle, "obstruction": False, "emergency": False,
           "fault": False}
    return publish(f"city/bollards/{device}/state", json.dumps(doc).encode())


def status(device: str, text: str, mid: int) -> bytes:
    return publish(f"city/bollards/{device}/status", text.encode(), qos=1, mid=mid)  # a last will's QoS


def position(lat: float) -> bytes:
    doc = {"lat": lat, "lon": 5.0, "speed_kmh": 30, "heading": 90, "status": "en_route"}
    return publish("city/vehicles/V-001/position", json.dumps(doc).encode())


class RawPublisher:
    """A field device writing pre-encoded packets on one connection, in one order."""

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        var = b"\x00\x04MQTT\x04\x02\x00\x3c" + (7).to_bytes(2, "big") + b"raw-pub"
        self.writer.write(b"\x10" + remaining_length(len(var)) + var)
        assert (await self.reader.readexactly(4))[:2] == b"\x20\x02", "no CONNACK"

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT
        self.writer.close()
        await self.writer.wait_closed()


async def test_fast_path_stores_what_paho_stores_in_the_order_of_the_stream(broker, tmp_path):
    cfg = config(tmp_path / "c", broker.port)
    fast, slow = Harness(cfg), Harness(cfg)
    slow.driver.fast_path = False
    pub = RawPublisher()
    async with fast, slow:
        await pub.connect(broker.port)
        try:
            # Subscribed (both): a QoS-0 position comes through.
            lat = 40.0

            async def sentinel():  # the last message of a round: once stored, all before it are
                nonlocal lat
                lat += 1
                await pub.send(position(lat))
                await until(lambda: fast.value("V-001", "lat") == lat and slow.value("V-001", "lat") == lat,
                            what=f"sentinel {lat}")

            # Sent again until both have it: a QoS-0 message before a subscription is in place is lost.
            deadline = time.monotonic() + 30
            while not fast.status("V-001", "lat") == slow.status("V-001", "lat") == st.GOOD:
                assert time.monotonic() < deadline, "no position through either subscription in 30 s"
                await pub.send(position(lat))
                await asyncio.sleep(0.1)
            # Round 1: last wills (QoS 1, paho) between states (QoS 0, fast path): B-DIJ-001's comes
            # after its state, so it ends offline; B-DIJ-002's before its next one, so it ends online.
            await pub.send(state("B-DIJ-001", "up", 0.1) + state("B-DIJ-002", "up", 0.2)
                           + status("B-DIJ-001", "offline", 1) + status("B-DIJ-002", "offline", 2)
                           + state("B-DIJ-002", "lowering", 0.3))
            await sentinel()
            for h in (fast, slow):
                assert h.status("B-DIJ-001", "position") == st.BAD_COMMUNICATION_ERROR
                assert h.value("B-DIJ-001", "position") == 2 and h.value("B-DIJ-001", "height") == 0.1
                assert h.status("B-DIJ-002", "position") == st.GOOD
                assert h.value("B-DIJ-002", "position") == 3 and h.value("B-DIJ-002", "height") == 0.3
            # Round 2: a flood of states, access events (a text point), garbage, large payloads
            # (remaining lengths of 1 to 3 bytes), a birth message and last wills among them.
            positions = ["down", "rising", "up", "lowering"]
            flood = []
            for k in range(3000):
                device = f"B-DIJ-00{1 + k % 2}"
                if k % 97 == 5:
                    flood.append(publish(f"city/bollards/{device}/state", b"{not json"))
                elif k % 101 == 7:
                    flood.append(publish(f"city/bollards/{device}/event", json.dumps(
                        {"vehicle_class": f"class-{k}", "granted": k % 2 == 0}).encode()))
                elif k % 499 == 11:
                    flood.append(status(device, "offline" if k % 2 else "online", 10 + k))
                elif k % 211 == 13:
                    flood.append(publish(f"city/bollards/{device}/state", b" " * 20_000 + b'{"height": 0.5}'))
                else:
                    flood.append(state(device, positions[k % 4], round(k / 3000, 4), vehicle=k % 3 == 0))
            flood.append(state("B-DIJ-001", "down", 0.0))
            for i in range(0, len(flood), 250):  # as a field would: not all in one go
                await pub.send(b"".join(flood[i:i + 250]))
                await asyncio.sleep(0.01)
            await sentinel()
        finally:
            await pub.close()
        assert np.array_equal(fast.tagdb.value, slow.tagdb.value, equal_nan=True)
        assert np.array_equal(fast.tagdb.status, slow.tagdb.status)
        assert fast.tagdb.text == slow.tagdb.text
        assert fast.tagdb.text.get(fast.tag("B-DIJ-002", "last_access_class"), "").startswith("class-")
        assert fast.status("B-DIJ-001", "position") == st.GOOD and fast.value("B-DIJ-001", "position") == 0
        assert fast.driver.garbage == slow.driver.garbage > 30
        assert fast.driver.dropped == slow.driver.dropped == 0
        fast_link, slow_link = (next(iter(h.driver.brokers.values())).link for h in (fast, slow))
        assert fast_link.fast_messages > 2500 and slow_link.fast_messages == 0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "paho"])
async def test_a_topic_that_is_not_utf8_is_garbage_and_the_link_stays_up(tmp_path, fast_path):
    async with ScriptedBroker() as broker:
        h = Harness(config(tmp_path / "c", broker.port))
        h.driver.fast_path = fast_path
        async with h:
            await asyncio.wait_for(broker.connected.wait(), 10)
            bad = b"\x30\x0b\x00\x09city/\xff\xfe/x"  # 9-byte topic with invalid UTF-8, no payload
            await until(lambda: next(iter(h.driver.brokers.values())).connected, what="CONNACK read")
            broker.writer.write(state("B-DIJ-001", "up", 0.1) + bad + state("B-DIJ-001", "down", 0.4))
            await broker.writer.drain()
            await until(lambda: h.value("B-DIJ-001", "height") == 0.4, what="the message after the bad topic")
            assert h.driver.garbage == h.driver.bad_topics == 1
            assert broker.connections == 1 and h.status("B-DIJ-001", "position") == st.GOOD
