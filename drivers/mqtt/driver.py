"""MQTT driver: paho-mqtt clients bridged into asyncio, messages decoded into TagDB batches.

One paho client per broker, driven by the event loop (``drivers/mqtt/aio.py``: paho's own
thread waits with ``select()``, which fails once a city's sockets push file descriptors
past 1023). QoS-0 messages, the bulk of the traffic, are split off the link's read buffer
by our own framing (the link's fast path, ~2 µs a message against paho's ~22), everything
else (QoS 1 last wills and acknowledgements, connection and subscription handshakes,
keep-alive) goes through paho, in the order of the stream; ``fast_path=False`` leaves
every packet to paho. Both callbacks only append ``(broker, topic, payload, time, size)`` to a
bounded inbox and wake the drain task: a flood is dropped (counted), never buffered
without bound. The inbox is bounded in messages (``max_queued``) and in bytes
(``inbox_bytes``: topics and payloads plus a fixed cost per message, so that large payloads
cannot fill memory under the message count); beyond either, the newest messages are dropped
and counted (``dropped``): those queued are already in stream order and the drain takes them
as they are, and a device publishing state again soon replaces what was lost. The link
refuses any packet above ``max_packet`` bytes before reading it (``drivers/mqtt/aio.py``). The drain task takes the inbox in batches, groups each batch's messages by
:class:`~drivers.mqtt.codec.Layout` (one equipment type's topic: every bollard's ``state``
shares one), decodes each group with one call of the pure codec, a column per point, and
reports one ``TagDB.update`` per batch, yielding to the loop between batches. A status or
acknowledgement message is handled in its place in the stream: the values before it are
stored first.

Message channels (:class:`~scada.driver_api.MessageChannel`, a type's ``messages:``): ``send``
publishes a JSON object on the channel's ``send`` topic through the broker's one connection
(QoS 1 or 2) and returns once the broker has it (its PUBACK), ``DeviceUnreachable`` when the
link is down or goes down before that. Answers arrive on the ``answers`` topic, subscribed with
the type's other topics, and are handled as acknowledgements are: in their place in the stream,
each one delivered to the ``listen`` callbacks (never coalesced as values are, so that
"accepted" then "en_route" both arrive). A payload that is not a JSON object is garbage: counted,
logged, never delivered.

Status: tags start ``Bad_NoCommunication``; a lost broker link or a device's last will
("offline" on its status topic) turns them ``Bad_CommunicationError`` (last value kept);
the next message of a device makes its tags ``Good`` again. A broker that cannot be reached
with the type's ``broker_security`` (its certificate not signed by the configured CA, a login
refused) leaves its devices' tags ``Bad_NoCommunication``, logs why once
(``mqtt_connect_failed``) and is retried with backoff; other brokers go on. Garbage (invalid JSON, wrong
types, oversized payloads, unknown states, a topic that is not UTF-8) is counted and logged,
and changes no tag. Messages on topics no device reads are ignored, whichever path brought them.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import structlog

from drivers.mqtt import paho_private
from drivers.mqtt.aio import MAX_PACKET, AsyncioMqtt
from drivers.mqtt.codec import Layout, Reader, decode_batch
from drivers.mqtt.config import MqttEndpoint, MqttType
from drivers.mqtt.security import MqttSecurity, tls_context
from scada import status as st
from scada.config import Config, Device
from scada.diagnostics import DeviceDiagnostics
from scada.driver_api import (
    CommandRejected,
    DeviceRejected,
    DeviceTimeout,
    DeviceUnreachable,
    WriteCommand,
    check_point,
    lookup,
)
from scada.ingest import Ingest
from scada.tagdb import TagDB

log = structlog.get_logger("drivers.mqtt")
MAX_QUEUED = 100_000  # messages waiting for the loop; beyond, new ones are dropped and counted
INBOX_BYTES = 64 * 1024 * 1024  # bytes waiting for the loop (MESSAGE_COST each + topic + payload)
MESSAGE_COST = 200  # bytes of Python objects per queued message besides its topic and payload text
BATCH = 5_000  # messages decoded per TagDB update at most


@dataclass(eq=False)
class DeviceState:
    device: Device
    ids: np.ndarray
    points: tuple
    type_io: MqttType
    k: int = 0  # row in the driver's DeviceDiagnostics
    broker: Broker | None = None  # the connection its values come through
    ever: bool = False
    online: bool = False
    garbage: int = 0
    last_error: str = ""


@dataclass(eq=False)
class TopicGroup:
    """The devices whose topic reads through one layout: row ``r`` is ``devices[r]``'s tag ids."""

    layout: Layout
    devices: list[DeviceState] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)  # each row's topic (garbage is reported with it)
    rows: list[np.ndarray] = field(default_factory=list)
    # Built by done() once every device is in:
    ids: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.int64))  # (devices, points)
    ks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # each row's DeviceDiagnostics row

    def add(self, ds: DeviceState, topic: str, ids: np.ndarray) -> int:
        self.devices.append(ds)
        self.topics.append(topic)
        self.rows.append(ids)
        return len(self.devices) - 1

    def done(self) -> None:
        """Every device is in: the rows as one array."""
        self.ids = np.stack(self.rows)
        self.ks = np.array([ds.k for ds in self.devices], np.int64)


@dataclass(eq=False)
class Broker:
    endpoint: MqttEndpoint
    client: mqtt.Client
    security: MqttSecurity = MqttSecurity()
    readers: dict[str, list[Reader]] = field(default_factory=dict)  # topic -> readers
    routes: dict[str, tuple[TopicGroup, int]] = field(default_factory=dict)  # topic -> (group, row)
    status_topics: dict[str, DeviceState] = field(default_factory=dict)
    ack_topics: dict[str, DeviceState] = field(default_factory=dict)
    answer_topics: dict[str, tuple[DeviceState, str]] = field(default_factory=dict)  # topic -> (device, channel)
    control: frozenset[str] = frozenset()  # status, acknowledgement and answer topics
    devices: list[DeviceState] = field(default_factory=list)
    connected: bool = False
    link: AsyncioMqtt | None = None


class MqttDriver:
    name = "mqtt"

    def __init__(
        self,
        config: Config,
        devices: list[Device],
        tagdb: TagDB,
        fast_path: bool = True,
        max_queued: int = MAX_QUEUED,
        inbox_bytes: int = INBOX_BYTES,
        max_packet: int = MAX_PACKET,
    ) -> None:
        self.config = config
        self.tagdb = tagdb
        self.ingest = Ingest(tagdb)  # flushed by _store, once per batch and before each control message
        self.fast_path = fast_path  # QoS-0 messages framed by the link (False: paho reads every packet)
        self.max_queued, self.inbox_bytes, self.max_packet = max_queued, inbox_bytes, max_packet
        self.brokers: dict[tuple[str, int, MqttSecurity], Broker] = {}  # (host, port, security)
        self.devices: list[DeviceState] = []
        self._by_tag: dict[str, tuple[DeviceState, int]] = {}
        groups: dict[tuple, TopicGroup] = {}
        for d in devices:
            t = config.types[d.type]
            ep: MqttEndpoint = d.io
            type_io: MqttType = t.io or MqttType()
            # One connection per broker and client identity: types logging in differently get their own.
            key = (*ep.connection, type_io.security)
            b = self.brokers.get(key)
            if b is None:
                b = self.brokers[key] = Broker(ep, _client(type_io.security), type_io.security)
            ids = config.tag_ids(d)
            ds = DeviceState(d, ids, t.points, type_io, k=len(self.devices), broker=b)
            self.devices.append(ds)
            b.devices.append(ds)
            for k, p in enumerate(t.points):
                self._by_tag[config.tag_name(d, p)] = (ds, k)
                if p.io.topic is None:
                    continue
                topic = p.io.topic.format(device=d.name)
                labels = {label: value for value, label in p.enum} if p.enum else None
                b.readers.setdefault(topic, []).append(Reader(int(ids[k]), p.io, labels))
            for topic in {p.io.topic.format(device=d.name) for p in t.points if p.io.topic is not None}:
                readers = b.readers[topic]
                key = Layout.key(readers)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = TopicGroup(Layout([Reader(j, r.point, r.labels) for j, r in enumerate(readers)]))
                b.routes[topic] = (g, g.add(ds, topic, np.array([r.tag for r in readers], np.int64)))
            if ds.type_io.status_topic:
                b.status_topics[ds.type_io.status_topic.format(device=d.name)] = ds
            if ds.type_io.ack_topic:
                b.ack_topics[ds.type_io.ack_topic.format(device=d.name)] = ds
            for ch in ds.type_io.messages:
                if ch.answers:
                    b.answer_topics[ch.answers.format(device=d.name)] = (ds, ch.name)
        for g in groups.values():
            g.done()
        self.diag = DeviceDiagnostics(config, devices)
        for b in self.brokers.values():
            b.control = frozenset({*b.status_topics, *b.ack_topics, *b.answer_topics})
        self._inbox: collections.deque = collections.deque()
        self._inbox_size = 0  # bytes in the inbox: the sum of its entries' sizes (_sizes())
        self.peak_inbox_bytes = 0
        self._wake = asyncio.Event()  # bound to no loop until awaited; run() makes its own
        # correlation id -> the write waiting for it; looked up with whatever an acknowledgement carries
        self._pending_acks: dict[object, asyncio.Future] = {}
        self._by_device = {ds.device.name: ds for ds in self.devices}
        self._listeners: dict[str, list[Callable[[str, Mapping[str, Any]], None]]] = {}
        # (broker, message id) -> the send waiting for the broker's PUBACK
        self._pending_sends: dict[tuple[int, int], tuple[Broker, asyncio.Future]] = {}
        self.messages_sent = 0
        self.answers = 0  # answers delivered to the listeners
        self.received = 0
        self.dropped = 0
        self.garbage = 0
        self.bad_topics = 0  # of the garbage: messages whose topic is not UTF-8

    # paho's and the link's callbacks (on the event loop: see drivers/mqtt/aio.py)

    def _on_message(self, client: mqtt.Client, broker: Broker, msg: mqtt.MQTTMessage) -> None:
        # paho's on_message (its userdata is the broker): the cheapest possible, once per message.
        if len(self._inbox) >= self.max_queued:
            self.dropped += 1
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho delivers it; no route can match it (Mosquitto refuses such topics)
            self._bad_topic(broker, getattr(msg, "_topic", b""))
            return
        payload = msg.payload
        [size] = _sizes([(topic, payload, False)])
        if self._inbox_size + size > self.inbox_bytes:
            self.dropped += 1
            return
        self._inbox_size += size
        self.peak_inbox_bytes = max(self.peak_inbox_bytes, self._inbox_size)
        self._inbox.append((broker, topic, payload, time.time_ns(), size))
        self._wake.set()

    def _on_messages(self, broker: Broker, messages: list[tuple[str, bytes, bool]]) -> None:
        """The link's fast path: QoS-0 ``(topic, payload, retain)`` from one read, in stream order."""
        room = self.max_queued - len(self._inbox)
        if room < len(messages):
            room = max(room, 0)
            self.dropped += len(messages) - room
            messages = messages[:room]
            if not messages:
                return
        # Each message measured once: its size goes into its entry, the drain subtracts that.
        sizes = _sizes(messages)
        size = sum(sizes)
        if self._inbox_size + size > self.inbox_bytes:  # rare: keep the leading messages that fit
            running = list(itertools.accumulate(sizes))
            keep = bisect.bisect_right(running, self.inbox_bytes - self._inbox_size)
            self.dropped += len(messages) - keep
            if not keep:
                return
            messages, sizes, size = messages[:keep], sizes[:keep], running[keep - 1]
        self._inbox_size += size
        self.peak_inbox_bytes = max(self.peak_inbox_bytes, self._inbox_size)
        now = time.time_ns()  # one read: one arrival time
        self._inbox.extend([(broker, topic, payload, now, n) for (topic, payload, _), n in zip(messages, sizes)])
        self._wake.set()

    def _bad_topic(self, broker: Broker, topic: bytes) -> None:
        self.garbage += 1
        self.bad_topics += 1
        if self.bad_topics <= 10 or self.bad_topics % 1000 == 0:
            log.warning(
                "mqtt_garbage",
                broker=f"{broker.endpoint.host}:{broker.endpoint.port}",
                topic=repr(topic[:80]),
                error="topic is not UTF-8",
                count=self.bad_topics,
            )

    def _on_connect(self, broker: Broker, reason_code) -> None:
        if reason_code.is_failure:
            if broker.link is not None:
                broker.link.refused(_refusal(broker, reason_code))
            return
        topics = {*broker.readers, *broker.status_topics, *broker.ack_topics, *broker.answer_topics}
        qos = {t: max(r.point.qos for r in rs) for t, rs in broker.readers.items()}
        for t, (ds, name) in broker.answer_topics.items():
            ch = ds.type_io.channel(name)
            qos[t] = ch.qos if ch else 1
        broker.client.subscribe([(t, qos.get(t, 1)) for t in sorted(topics)])
        self._link_up(broker)

    def _on_disconnect(self, broker: Broker) -> None:
        self._link_down(broker, "broker link lost")

    def _connect_failed(self, broker: Broker, reason: str) -> None:
        """An attempt to reach the broker failed: its devices say why (diagnostics), tags unchanged
        (Bad_NoCommunication until a first value, Bad_CommunicationError after one)."""
        for ds in broker.devices:
            self._device_down(ds, reason)

    def _link_up(self, broker: Broker) -> None:
        broker.connected = True
        log.info("broker_connected", broker=f"{broker.endpoint.host}:{broker.endpoint.port}")

    def _link_down(self, broker: Broker, reason: str) -> None:
        if broker.connected:
            log.warning("broker_link_lost", broker=f"{broker.endpoint.host}:{broker.endpoint.port}")
        broker.connected = False
        for key, (b, fut) in list(self._pending_sends.items()):
            if b is broker and not fut.done():
                # Failed for its sender: paho must not publish it again after the reconnection.
                paho_private.forget_publish(broker.client, key[1])
                fut.set_exception(DeviceUnreachable(f"broker {broker.endpoint.host}:{broker.endpoint.port}: {reason}"))
                del self._pending_sends[key]
        for ds in broker.devices:
            self._device_down(ds, reason)

    def _device_down(self, ds: DeviceState, reason: str) -> None:
        ds.online = False
        ds.last_error = reason
        self.diag.link_down([ds.k], reason)
        self.ingest.link_lost(ds.ids, ds.ever)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        for b in self.brokers.values():
            b.client.user_data_set(b)
            b.client.on_message = self._on_message
            b.client.on_connect = lambda c, u, f, rc, p, b=b: self._on_connect(b, rc)
            b.client.on_disconnect = lambda c, u, f, rc, p, b=b: self._on_disconnect(b)
            b.client.on_publish = lambda c, u, mid, rc, p, b=b: self._on_publish(b, mid)
            b.link = AsyncioMqtt(
                b.client,
                b.endpoint.host,
                b.endpoint.port,
                on_messages=functools.partial(self._on_messages, b) if self.fast_path else None,
                max_packet=self.broker_max_packet(b),
                on_failure=functools.partial(self._connect_failed, b),
            )
            b.link.start()
        diag_task = asyncio.create_task(self.diag.run(self.tagdb), name="mqtt-diagnostics")
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._inbox:
                    self._process(self._take_batch())
                    await asyncio.sleep(0)
        finally:
            diag_task.cancel()
            await asyncio.gather(diag_task, return_exceptions=True)
            for b in self.brokers.values():
                b.connected = False  # an orderly stop, not a lost link: nothing to report
                if b.link is not None:
                    await b.link.stop()
            for fut in self._pending_acks.values():
                fut.cancel()
            for b, fut in self._pending_sends.values():
                if not fut.done():  # the sender is not being cancelled: it is told the message did not go
                    fut.set_exception(DeviceUnreachable(f"broker {b.endpoint.host}:{b.endpoint.port}: driver stopped"))

    def _take_batch(self) -> list:
        """The oldest ``BATCH`` messages of the inbox, their bytes no longer counted in it."""
        batch = [self._inbox.popleft() for _ in range(min(BATCH, len(self._inbox)))]
        self._inbox_size -= sum([m[4] for m in batch])  # as counted when they came in
        return batch

    def broker_max_packet(self, broker: Broker) -> int:
        """The link's packet bound: the largest its types allow (tags.yaml max_packet), or the driver's."""
        return max(ds.type_io.max_packet or self.max_packet for ds in broker.devices)

    def _process(self, messages: list) -> None:
        """Store one batch from the inbox: data grouped by layout, control messages in their place."""
        self.received += len(messages)
        pending: dict[TopicGroup, tuple[list, list, list]] = {}
        for broker, topic, payload, t_ns, _ in messages:
            route = broker.routes.get(topic)
            if route is not None:
                group, row = route
                batch = pending.get(group)
                if batch is None:
                    batch = pending[group] = ([], [], [])
                batch[0].append(row)
                batch[1].append(payload)
                batch[2].append(t_ns)
            if topic in broker.control:
                # A last will or an acknowledgement acts after the values that came before it.
                self._store(pending)
                pending = {}
                if topic in broker.status_topics:
                    self._status_message(broker.status_topics[topic], payload)
                if topic in broker.ack_topics:
                    self._ack_message(broker.ack_topics[topic], payload)
                if topic in broker.answer_topics:
                    ds, channel = broker.answer_topics[topic]
                    self._answer_message(ds, channel, payload)
        self._store(pending)

    def _store(self, pending: dict[TopicGroup, tuple[list, list, list]]) -> None:
        """Decode each group's messages with one codec call; one TagDB update for them all."""
        if not pending:
            return
        for group, (rows, payloads, times) in pending.items():
            layout = group.layout
            try:
                got = decode_batch(layout, payloads)
            except Exception as exc:  # noqa: BLE001 - a codec bug loses these messages, not the driver
                log.exception("mqtt_decode_failed", device=group.devices[rows[0]].device.name, messages=len(rows))
                for r in set(rows):
                    self._garbage(group.devices[r], group.topics[r], f"internal decode error: {exc!r}")
                continue
            for i, _, error in got.errors:  # every column of a layout reads the one topic
                self._garbage(group.devices[rows[i]], group.topics[rows[i]], error)
            rows_a = np.asarray(rows, np.intp)
            ids = group.ids[rows_a]
            times_a = np.asarray(times, np.int64)
            cols = layout.number_columns
            if cols:
                if len(cols) < ids.shape[1]:
                    ok, ids_n, values_n = got.ok[:, cols], ids[:, cols], got.values[:, cols]
                else:
                    ok, ids_n, values_n = got.ok, ids, got.values
                # One device may report twice in a batch: the ingest keeps each tag's last value.
                self.ingest.add(ids_n[ok], values_n[ok], st.GOOD, np.broadcast_to(times_a[:, None], ok.shape)[ok])
            for j in layout.text_columns:
                column = got.texts[j]
                rows_ok = np.flatnonzero(got.ok[:, j])
                self.ingest.add_text(ids[rows_ok, j], [column[i] for i in rows_ok.tolist()], st.GOOD, times_a[rows_ok])
            good_rows = rows_a[got.ok.any(axis=1)]
            self.diag.received(group.ks[good_rows])
            for r in np.unique(good_rows).tolist():
                ds = group.devices[r]
                if not ds.online:
                    if ds.ever:
                        log.info("device_online", device=ds.device.name)
                    ds.ever = ds.online = True
        self.ingest.flush()

    def _garbage(self, ds: DeviceState, topic: str, error: str) -> None:
        self.garbage += 1
        ds.garbage += 1
        ds.last_error = error
        self.diag.failure(ds.k, f"{topic}: {error}", offline=False)
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

    # message channels (scada.driver_api.MessageChannel)

    def _answer_message(self, ds: DeviceState, channel: str, payload: bytes) -> None:
        try:
            answer = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            self._garbage(ds, f"messages.{channel}", "answer is not a JSON object")
            return
        self.answers += 1
        for callback in self._listeners.get(channel, ()):
            try:
                callback(ds.device.name, answer)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the driver nor the other listeners
                log.exception("mqtt_listener_failed", device=ds.device.name, channel=channel)

    def listen(self, channel: str, callback: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Call ``callback(device, answer)`` for every answer a device sends on ``channel``, in
        the order they arrive, on the event loop."""
        self._listeners.setdefault(channel, []).append(callback)

    def _on_publish(self, broker: Broker, mid: int) -> None:
        entry = self._pending_sends.pop((id(broker), mid), None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(None)

    async def send(self, device: str, channel: str, payload: Mapping[str, Any]) -> None:
        """Publish ``payload`` (a JSON object) on ``device``'s ``channel``; return once the broker
        has it. CommandRejected for an unknown device or channel or a payload that is not JSON;
        DeviceUnreachable when the broker link is down or is lost before the broker's answer."""
        ds = self._by_device.get(device)
        if ds is None:
            raise CommandRejected(f"unknown device {device!r}")
        ch = ds.type_io.channel(channel)
        if ch is None:
            known = ", ".join(c.name for c in ds.type_io.messages) or "none"
            raise CommandRejected(f"{device}: its type has no message channel {channel!r} (channels: {known})")
        try:
            text = json.dumps(dict(payload), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CommandRejected(f"{device}: the {channel} message is not JSON: {exc}") from None
        broker = ds.broker
        assert broker is not None  # every device is given its broker in __init__
        where = f"broker {broker.endpoint.host}:{broker.endpoint.port}"
        if not broker.connected:
            raise DeviceUnreachable(f"{device}: {where} unreachable")
        info = broker.client.publish(ch.send.format(device=device), text, qos=ch.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            paho_private.forget_publish(broker.client, info.mid)  # paho keeps it for the next connection
            raise DeviceUnreachable(f"{device}: {where}: {mqtt.error_string(info.rc)}")
        fut = asyncio.get_running_loop().create_future()
        key = (id(broker), info.mid)
        self._pending_sends[key] = (broker, fut)
        timeout = max(ds.device.timeout, 1.0) * 5
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            paho_private.forget_publish(broker.client, info.mid)
            raise DeviceUnreachable(
                f"{device}: {where} did not take the {channel} message within {timeout:g} s"
            ) from None
        finally:
            self._pending_sends.pop(key, None)
        self.messages_sent += 1

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
        broker = ds.broker
        assert broker is not None  # every device is given its broker in __init__
        if not broker.connected:
            raise DeviceUnreachable(
                f"{ds.device.name}: broker {broker.endpoint.host}:{broker.endpoint.port} unreachable"
            )
        if ds.type_io.command_topic is None:  # tags.yaml makes no point of such a type writable
            raise DeviceRejected(f"{ds.device.name}: its type has no command_topic")
        command_topic = ds.type_io.command_topic
        correlation = uuid.uuid4().hex
        label = dict(point.enum)[int(command.value)]
        fut = asyncio.get_running_loop().create_future()
        self._pending_acks[correlation] = fut
        try:
            topic = command_topic.format(device=ds.device.name)
            broker.client.publish(
                topic, json.dumps({"command": label, "correlation_id": correlation}), qos=point.io.qos
            )
            timeout = max(ds.device.timeout, 1.0) * 5
            sent = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    ack = await fut
                self.diag.rtt_ms[ds.k] = (time.monotonic() - sent) * 1000.0  # command to acknowledgement
            except TimeoutError:
                raise DeviceTimeout(f"{ds.device.name}: no acknowledgement of {label!r} within {timeout:g} s") from None
        finally:
            self._pending_acks.pop(correlation, None)
        if ack.get("result") != "accepted":
            raise DeviceRejected(f"{ds.device.name} refused {label!r}: {ack.get('reason', 'no reason given')}")
        self.tagdb.update(np.array([self.tagdb.id_of(command.tag)]), np.array([command.value]))

    async def read_now(self, tags: Sequence[str]) -> None:
        """Nothing to read: MQTT devices push their state (retained, and on every change), so
        the broker delivers a new state as soon as the device publishes it; there is no request
        that would make a device publish sooner. Unknown tags are refused as a write's are."""
        for tag in tags:
            lookup(self._by_tag, WriteCommand(tag, 0.0))

    def diagnostics(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "online": sum(ds.online for ds in self.devices),
            "received": self.received,
            "dropped": self.dropped,
            "garbage": self.garbage,
            "messages_sent": self.messages_sent,
            "answers": self.answers,
            "oversize": sum(b.link.oversize for b in self.brokers.values() if b.link is not None),
            "inbox_bytes": self._inbox_size,
            "peak_inbox_bytes": self.peak_inbox_bytes,
        }


def _client(security: MqttSecurity) -> mqtt.Client:
    """A paho client set up with the broker security of its types: TLS context, login."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scada-{uuid.uuid4().hex[:12]}")
    if security.tls:
        client.tls_set_context(tls_context(security))
    if security.username:
        client.username_pw_set(security.username, security.password)
    return client


def _refusal(broker: Broker, reason_code: Any) -> str:
    """Why the broker refused our CONNECT, and what to check."""
    sec = broker.security
    if sec.username:
        return (
            f"the broker refused the login of user {sec.username!r} ({reason_code}): "
            f"check the password in the {sec.password_source} and the broker's password file and ACL"
        )
    return f"the broker refused the connection ({reason_code}): does it require a login? (broker_security username)"


def _sizes(messages: Any) -> list[int]:
    """Bytes the inbox counts for each of ``messages``, ``(topic, payload, retain)`` tuples."""
    return [MESSAGE_COST + len(topic) + len(payload) for topic, payload, _ in messages]


def create(config: Config, devices: list[Device], tagdb: TagDB) -> MqttDriver:
    return MqttDriver(config, devices, tagdb)
