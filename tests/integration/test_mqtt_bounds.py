"""MQTT input is bounded in memory (issue 11, point 5), on a real Mosquitto.

A packet announcing more than ``max_packet`` bytes closes the link before paho reads its
body (logged, counted) and the link comes back; a flood of large messages never holds more
than ``inbox_bytes`` in the driver's inbox; and the driver keeps storing values after both.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
from pathlib import Path

import pytest
import structlog

from drivers.mqtt.driver import MESSAGE_COST, MqttDriver
from scada import status as st
from city_scada import load_config
from scada.tagdb import TagDB
from common.yamlsrc import ConfigError

from .helpers import DEADLINE, until, write_tags

pytestmark = pytest.mark.integration

STATE = "city/bollards/B-DIJ-001/state"


def config(folder: Path, port: int):
    write_tags(folder, ["devices.csv"])
    (folder / "devices.csv").write_text("name,type,commune,lat,lon,endpoint\n"
                                        f"B-DIJ-001,access_bollard,Dijon,47.32,5.04,127.0.0.1:{port}\n")
    return load_config(folder)


def state(height: float, pad: int = 0) -> bytes:
    return json.dumps({"position": "up", "height": height, "vehicle": False, "obstruction": False,
                       "emergency": False, "fault": False, "pad": "x" * pad}).encode()


def pub(port: int, topic: str, payload: bytes, *extra: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "0", *extra],
                   input=payload, check=True, timeout=60)


class Harness:
    def __init__(self, cfg, **limits):
        self.cfg = cfg
        self.tagdb = TagDB(*cfg.tag_table(), cfg.max_ages())
        self.driver = MqttDriver(cfg, list(cfg.devices), self.tagdb, **limits)
        self.height = self.tagdb.id_of("Dijon/bollard/B-DIJ-001/height")

    @property
    def link(self):
        return next(iter(self.driver.brokers.values())).link

    async def __aenter__(self):
        self.task = asyncio.create_task(self.driver.run())
        await until(lambda: self.link is not None and self.link.connected, what="connected")
        # Subscribed once a message goes through: publish until one lands.
        for attempt in range(200):
            await asyncio.to_thread(pub, self.cfg.devices[0].io.port, STATE, state(0.5), "-s")
            try:
                await until(lambda: self.tagdb.status[self.height] == st.GOOD, timeout=0.5, what="first state")
                break
            except AssertionError:
                continue
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def stores(self, height: float, port: int) -> None:
        """A fresh state is stored: the driver still works."""
        for _ in range(200):
            await asyncio.to_thread(pub, port, STATE, state(height), "-s")
            try:
                await until(lambda: self.tagdb.value[self.height] == height, timeout=0.5, what="stored")
                return
            except AssertionError:
                continue
        raise AssertionError(f"height {height} never stored")


@pytest.mark.parametrize("fast_path", [True, False])
async def test_an_oversized_packet_closes_the_link_unread_and_the_driver_goes_on(broker, tmp_path, fast_path):
    cfg = config(tmp_path / "c", broker.port)
    async with Harness(cfg, fast_path=fast_path, max_packet=64 * 1024) as h:
        failures = h.link.failures
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
        with structlog.testing.capture_logs() as logs:
            big = tmp_path / "big.bin"
            with big.open("wb") as f:
                f.truncate(48 * 1024 * 1024)  # zeros, never held in this process's memory
            await asyncio.to_thread(pub, broker.port, STATE, b"", "-f", str(big))
            await until(lambda: h.link.oversize == 1, timeout=DEADLINE, what="oversized packet refused")
        refused = [e for e in logs if e["event"] == "mqtt_packet_too_large"]
        assert len(refused) == 1 and refused[0]["log_level"] == "error"
        assert refused[0]["size"] > 48 * 1024 * 1024 and refused[0]["max_packet"] == 64 * 1024
        assert h.driver.diagnostics()["oversize"] == 1
        await until(lambda: h.link.failures > failures, timeout=DEADLINE, what="link closed")
        await until(lambda: h.link.connected, timeout=DEADLINE, what="link back")
        await h.stores(0.25, broker.port)
        # Never read into memory: the process's peak grew by far less than the 48 MiB packet
        # (paho alone would have held it whole, then copied it).
        growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert growth_mib < 24, growth_mib
        assert h.link.oversize == 1


async def test_a_flood_of_large_messages_stays_within_the_inbox_bytes(broker, tmp_path):
    cfg = config(tmp_path / "c", broker.port)
    limit = 512 * 1024
    async with Harness(cfg, inbox_bytes=limit) as h:
        received, dropped = h.driver.received, h.driver.dropped
        n = 3000
        line = state(0.75, pad=20_000).replace(b"\n", b"")
        await asyncio.to_thread(pub, broker.port, STATE, b"\n".join([line] * n) + b"\n", "-l")
        await until(lambda: h.driver.received + h.driver.dropped >= received + dropped + n, timeout=DEADLINE,
                    what="every flood message stored or dropped")
        assert h.driver.peak_inbox_bytes <= limit
        assert h.driver.diagnostics()["inbox_bytes"] == 0  # drained, and the count did not drift
        assert h.driver.garbage == 0
        await h.stores(0.125, broker.port)
        assert h.link.oversize == 0


def test_the_inbox_counts_bytes_and_drops_the_newest(tmp_path):
    """The bound's logic on the fast path's entry (no loop needed): whole messages, in order."""
    cfg = config(tmp_path / "c", 1883)
    driver = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table(), cfg.max_ages()),
                        inbox_bytes=3 * (MESSAGE_COST + len(STATE) + 1000))
    driver._wake = asyncio.Event()
    broker = next(iter(driver.brokers.values()))
    driver._on_messages(broker, [(STATE, bytes([k]) * 1000, False) for k in range(5)])
    assert [m[2][0] for m in driver._inbox] == [0, 1, 2]
    assert driver.dropped == 2 and driver.peak_inbox_bytes == 3 * (MESSAGE_COST + len(STATE) + 1000)


class Measured(bytes):
    """A payload that counts how often its size is taken."""

    calls = 0

    def __len__(self) -> int:
        Measured.calls += 1
        return super().__len__()


def test_each_message_is_measured_once_from_arrival_to_drain(tmp_path):
    """The hot path: the inbox keeps each message's size, the drain does not walk the payloads
    again; a read that only partly fits is measured once too."""
    cfg = config(tmp_path / "c", 1883)
    one = MESSAGE_COST + len(STATE) + 1000
    driver = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table(), cfg.max_ages()), inbox_bytes=3 * one)
    driver._wake = asyncio.Event()
    broker = next(iter(driver.brokers.values()))
    Measured.calls = 0
    driver._on_messages(broker, [(STATE, Measured(bytes([k]) * 1000), False) for k in range(2)])
    driver._on_messages(broker, [(STATE, Measured(bytes([k]) * 1000), False) for k in range(2, 5)])  # 1 fits
    assert [m[2][0] for m in driver._inbox] == [0, 1, 2] and driver.dropped == 2
    assert driver.diagnostics()["inbox_bytes"] == 3 * one
    assert Measured.calls == 5
    assert len(driver._take_batch()) == 3
    assert driver.diagnostics()["inbox_bytes"] == 0 and Measured.calls == 5


def test_max_packet_is_a_type_key_of_tags_yaml(tmp_path):
    folder = tmp_path / "c"
    cfg = config(folder, 1883)
    driver = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table()))
    assert driver.broker_max_packet(next(iter(driver.brokers.values()))) == 256 * 1024  # the default
    tags = (folder / "tags.yaml").read_text()
    line = "    ack_topic: city/bollards/{device}/ack"
    assert line in tags
    (folder / "tags.yaml").write_text(tags.replace(line, line + "\n    max_packet: 4096", 1))
    cfg = load_config(folder)
    driver = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table()))
    assert driver.broker_max_packet(next(iter(driver.brokers.values()))) == 4096
    (folder / "tags.yaml").write_text(tags.replace(line, line + "\n    max_packet: 100", 1))
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    assert info.value.key.endswith("access_bollard.max_packet") and info.value.value == 100
