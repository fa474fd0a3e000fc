"""MQTT driver: paho-mqtt clients bridged into asyncio, messages decoded into TagDB batches.

One paho client per broker, driven by the event loop (``drivers/mqtt/aio.py``: paho's own
thread waits with ``select()``, which fails once a city's sockets push file descriptors
past 1023). The message callback only appends ``(topic, payload, time)`` to a bounded
inbox and wakes the drain task: a flood is dropped (counted), never buffered without
bound. The drain task decodes each message with the pure codec and reports one
``TagDB.update`` per batch, yielding to the loop between batches.

Status: tags start ``Bad_NoCommunication``; a lost broker link or a device's last will
("offline" on its status topic) turns them ``Bad_CommunicationError`` (last value kept);
the next message of a device makes its tags ``Good`` again. Garbage (invalid JSON, wrong
types, oversized payloads, unknown states) is counted and logged, and changes no tag.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import structlog

from drivers.base import DeviceRejected, DeviceUnreachable, WriteCommand, check_point, lookup
from drivers.mqtt.aio import AsyncioMqtt
from drivers.mqtt.codec import GarbageError, Reader, decode
from drivers.mqtt.config import MqttEndpoint, MqttType
from scada import status as st
from scada.config import Config, Device
from scada.tagdb import TagDB

log = structlog.get_logger("drivers.mqtt")
MAX_QUEUED = 100_000  # messages waiting for the loop; beyond, new ones are dropped and counted
BATCH = 5_000  # messages decoded per TagDB update


@dataclass(eq=False)
class DeviceState:
    device: Device
    ids: np.ndarray
    points: tuple
    type_io: MqttType
    ever: bool = False
    online: bool = False
    garbage: int = 0
    last_error: str = ""


@dataclass(eq=False)
class Broker:
    endpoint: MqttEndpoint
    client: mqtt.Client
    readers: dict[str, list[Reader]] = field(default_factory=dict)  # topic -> readers
    owner: dict[str, DeviceState] = field(default_factory=dict)  # topic -> device
    status_topics: dict[str, DeviceState] = field(default_factory=dict)
    ack_topics: dict[str, DeviceState] = field(default_factory=dict)
    devices: list[DeviceState] = field(default_factory=list)
    connected: bool = False
    link: AsyncioMqtt | None = None


class MqttDriver:
    name = "mqtt"

    def __init__(self, config: Config, devices: list[Device], tagdb: TagDB) -> None:
        self.config = config
        self.tagdb = tagdb
        self.brokers: dict[tuple[str, int], Broker] = {}
        self.devices: list[DeviceState] = []
        self._by_tag: dict[str, tuple[DeviceState, int]] = {}
        for d in devices:
            t = config.types[d.type]
            ep: MqttEndpoint = d.io
            b = self.brokers.get(ep.connection)
            if b is None:
                client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scada-{uuid.uuid4().hex[:12]}")
                b = self.brokers[ep.connection] = Broker(ep, client)
            ids = config.tag_ids(d)
            ds = DeviceState(d, ids, t.points, t.io or MqttType())
            self.devices.append(ds)
            b.devices.append(ds)
            for k, p in enumerate(t.points):
                self._by_tag[config.tag_name(d, p)] = (ds, k)
                if p.io.topic is None:
                    continue
                topic = p.io.topic.format(device=d.name)
                labels = {label: value for value, label in p.enum} if p.enum else None
                b.readers.setdefault(topic, []).append(Reader(int(ids[k]), p.io, labels))
                b.owner[topic] = ds
            if ds.type_io.status_topic:
                b.status_topics[ds.type_io.status_topic.format(device=d.name)] = ds
            if ds.type_io.ack_topic:
                b.ack_topics[ds.type_io.ack_topic.format(device=d.name)] = ds
        self._inbox: collections.deque = collections.deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_acks: dict[str, asyncio.Future] = {}
        self.received = 0
        self.dropped = 0
        self.garbage = 0

    # paho's callbacks (on the event loop: see drivers/mqtt/aio.py)

    def _on_message(self, broker: Broker, msg: mqtt.MQTTMessage) -> None:
        if len(self._inbox) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._inbox.append((broker, msg.topic, msg.payload, time.time_ns()))
        self._wake.set()

    def _on_connect(self, broker: Broker, reason_code) -> None:
        if reason_code.is_failure:
            return
        topics = {*broker.readers, *broker.status_topics, *broker.ack_topics}
        qos = {t: max(r.point.qos for r in rs) for t, rs in broker.readers.items()}
        broker.client.subscribe([(t, qos.get(t, 1)) for t in sorted(topics)])
        self._link_up(broker)

    def _on_disconnect(self, broker: Broker) -> None:
        self._link_down(broker, "broker link lost")

    def _link_up(self, broker: Broker) -> None:
        broker.connected = True
        log.info("broker_connected", broker=f"{broker.endpoint.host}:{broker.endpoint.port}")

    def _link_down(self, broker: Broker, reason: str) -> None:
        if broker.connected:
            log.warning("broker_link_lost", broker=f"{broker.endpoint.host}:{broker.endpoint.port}")
        broker.connected = False
        for ds in broker.devices:
            self._device_down(ds, reason)

    def _device_down(self, ds: DeviceState, reason: str) -> None:
        ds.online = False
        ds.last_error = reason
        self.tagdb.set_status(ds.ids, st.BAD_COMMUNICATION_ERROR if ds.ever else st.BAD_NO_COMMUNICATION)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for b in self.brokers.values():
            b.client.on_message = lambda c, u, msg, b=b: self._on_message(b, msg)
            b.client.on_connect = lambda c, u, f, rc, p, b=b: self._on_connect(b, rc)
            b.client.on_disconnect = lambda c, u, f, rc, p, b=b: self._on_disconnect(b)
            b.link = AsyncioMqtt(b.client, b.endpoint.host, b.endpoint.port)
            b.link.start()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._inbox:
                    self._process([self._inbox.popleft() for _ in range(min(BATCH, len(self._inbox)))])
                    await asyncio.sleep(0)
        finally:
            for b in self.brokers.values():
                b.connected = False  # an orderly stop, not a lost link: nothing to report
                await b.link.stop()
            for fut in self._pending_acks.values():
                fut.cancel()

    def _process(self, messages: list) -> None:
        ids: list[int] = []
        values: list[float] = []
        times: list[int] = []
        text_ids: list[int] = []
        texts: list[str] = []
        text_times: list[int] = []
        for broker, topic, payload, t_ns in messages:
            self.received += 1
            readers = broker.readers.get(topic)
            if readers is not None:
                ds = broker.owner[topic]
                try:
                    tag_ids, vals, errors = decode(payload, readers)
                except GarbageError as exc:
                    self._garbage(ds, topic, str(exc))
                    continue
                for e in errors:
                    self._garbage(ds, topic, e)
                for tag, v in zip(tag_ids, vals):
                    if isinstance(v, str):  # the codec returns str for text points only
                        text_ids.append(tag)
                        texts.append(str(v))
                        text_times.append(t_ns)
                    else:
                        ids.append(tag)
                        values.append(v)
                        times.append(t_ns)
                if tag_ids:
                    if not ds.online and ds.ever:
                        log.info("device_online", device=ds.device.name)
                    ds.ever = ds.online = True
            if topic in broker.status_topics:
                self._status_message(broker.status_topics[topic], payload)
            if topic in broker.ack_topics:
                self._ack_message(broker.ack_topics[topic], payload)
        if ids:
            # One device may report twice in a batch: keep each tag's last value only.
            arr = np.asarray(ids, np.int64)
            _, last = np.unique(arr[::-1], return_index=True)
            keep = len(arr) - 1 - last
            self.tagdb.update(arr[keep], np.asarray(values)[keep], st.GOOD, np.asarray(times, np.int64)[keep])
        if text_ids:
            seen: dict[int, int] = {}
            for k, tag in enumerate(text_ids):
                seen[tag] = k
            order = list(seen.values())
            self.tagdb.update_text([text_ids[k] for k in order], [texts[k] for k in order], st.GOOD,
                                   np.asarray([text_times[k] for k in order], np.int64))

    def _garbage(self, ds: DeviceState, topic: str, error: str) -> None:
        self.garbage += 1
        ds.garbage += 1
        ds.last_error = error
        if ds.garbage <= 10 or ds.garbage % 1000 == 0:  # a flood of garbage must not flood the log
            log.warning("mqtt_garbage", device=ds.device.name, topic=topic, error=error, count=ds.garbage)

    def _status_message(self, ds: DeviceState, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if text == ds.type_io.offline_payload:
            log.warning("device_offline", device=ds.device.name, reason="last will")
            self._device_down(ds, "device announced offline")
        elif text == ds.type_io.online_payload:
            # Its tags turn Good with its next message (a retained state arrives at once).
            log.info("device_announced_online", device=ds.device.name)
        else:
            self._garbage(ds, "status", f"unknown status payload {text[:40]!r}")

    def _ack_message(self, ds: DeviceState, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            fut = self._pending_acks.get(ack.get("correlation_id")) if isinstance(ack, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            self._garbage(ds, "ack", "acknowledgement is not a JSON object")
            return
        if fut is not None and not fut.done():
            fut.set_result(ack)

    # commands

    def _resolve(self, command: WriteCommand) -> tuple[DeviceState, Any]:
        ds, k = lookup(self._by_tag, command)
        return ds, ds.points[k]

    def check(self, command: WriteCommand) -> None:
        # tags.yaml guarantees a writable MQTT point is a command point with an enum.
        check_point(self._resolve(command)[1], command)

    async def write(self, command: WriteCommand) -> None:
        """Publish the command with a correlation id; return once the device acknowledges it."""
        self.check(command)
        ds, point = self._resolve(command)
        broker = self.brokers[ds.device.io.connection]
        if not broker.connected:
            raise DeviceUnreachable(f"{ds.device.name}: broker {broker.endpoint.host}:{broker.endpoint.port} unreachable")
        correlation = uuid.uuid4().hex
        label = dict(point.enum)[int(command.value)]
        fut = self._loop.create_future()
        self._pending_acks[correlation] = fut
        try:
            topic = ds.type_io.command_topic.format(device=ds.device.name)
            broker.client.publish(topic, json.dumps({"command": label, "correlation_id": correlation}),
                                  qos=point.io.qos)
            timeout = max(ds.device.timeout, 1.0) * 5
            try:
                async with asyncio.timeout(timeout):
                    ack = await fut
            except TimeoutError:
                raise DeviceUnreachable(f"{ds.device.name}: no acknowledgement of {label!r} within {timeout:g} s") from None
        finally:
            self._pending_acks.pop(correlation, None)
        if ack.get("result") != "accepted":
            raise DeviceRejected(f"{ds.device.name} refused {label!r}: {ack.get('reason', 'no reason given')}")
        self.tagdb.update(np.array([self.tagdb.id_of(command.tag)]), np.array([command.value]))

    def diagnostics(self) -> dict[str, Any]:
        return {"devices": len(self.devices), "online": sum(ds.online for ds in self.devices),
                "received": self.received, "dropped": self.dropped, "garbage": self.garbage}


def create(config: Config, devices: list[Device], tagdb: TagDB) -> MqttDriver:
    return MqttDriver(config, devices, tagdb)
