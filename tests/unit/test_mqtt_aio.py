"""The event-loop paho link against a scripted broker on loopback: buffered reads that cut
packets anywhere, every packet parsed, other tasks served between bursts, end of stream seen;
with the fast path, QoS-0 messages split by the link and the rest read by paho, in stream order,
keep-alive informed, malformed packets refused as paho refuses them."""

from __future__ import annotations

import asyncio
import contextlib
import time

import paho.mqtt.client as mqtt
import pytest

from drivers.mqtt.aio import READ_BURST, AsyncioMqtt
from tests.unit.test_mqtt_frames import publish as any_publish


def publish(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 0, of less than 16 KiB (a remaining length of 1 or 2 bytes)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    n = len(body)
    assert n < 128 * 128
    return b"\x30" + (bytes([n]) if n < 128 else bytes([n % 128 | 128, n // 128])) + body


async def until(predicate, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


class ScriptedBroker:
    """Accepts one client, answers its CONNECT, then sends what the test writes."""

    def __init__(self, connack: bytes = b"\x20\x02\x00\x00") -> None:  # accepted (MQTT 3.1.1)
        self.connack = connack
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(1)
        assert header == b"\x10"  # CONNECT
        length, mult = 0, 1
        while True:
            b = (await reader.readexactly(1))[0]
            length += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        await reader.readexactly(length)
        writer.write(self.connack)
        await writer.drain()
        self.reader, self.writer = reader, writer
        self.connections += 1
        self.connected.set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        if self.writer is not None:
            self.writer.close()
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def linked(client: mqtt.Client, connack: bytes = b"\x20\x02\x00\x00", **options):
    """``client`` connected through the event-loop link to a scripted broker: (broker, link)."""
    async with ScriptedBroker(connack) as broker:
        link = AsyncioMqtt(client, "127.0.0.1", broker.port, **options)
        link.start()
        try:
            await asyncio.wait_for(broker.connected.wait(), 10)
            await until(lambda: link.connected, what="CONNACK read")
            yield broker, link
        finally:
            await link.stop()


async def send_cut(writer: asyncio.StreamWriter, stream: bytes) -> None:
    """Write ``stream`` cut mid fixed header, mid remaining length, mid topic, mid payload, and
    in pieces larger than one recv() buffer."""
    cuts = [1, 1, 2, 3, 5, 7, 11, 64, 100, 1000, 4096, 70_000]
    pos, k = 0, 0
    while pos < len(stream):
        size = cuts[k % len(cuts)]
        writer.write(stream[pos:pos + size])
        await writer.drain()
        await asyncio.sleep(0.001 if size < 100 else 0)
        pos, k = pos + size, k + 1


async def test_buffered_reads_parse_every_packet_wherever_the_stream_is_cut():
    got: list[tuple[str, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    async with linked(client) as (broker, link):
        # Payloads of 0 to 300 bytes: remaining lengths of one and two bytes.
        sent = [(f"city/t/{k}", bytes([k % 251]) * (k % 301)) for k in range(3000)]
        await send_cut(broker.writer, b"".join(publish(t, p) for t, p in sent))
        await until(lambda: len(got) >= len(sent), what="every packet")
        assert got == sent
        # The broker goes away: the link sees the end of the stream.
        broker.writer.close()
        await until(lambda: not link.connected, what="end of stream")


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fast-path"])
async def test_a_backlog_is_read_in_bursts_that_leave_other_tasks_their_turn(fast):
    got: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(1)
    options = {"on_messages": lambda msgs: got.extend([1] * len(msgs))} if fast else {}
    turns: list[int] = []
    stop = asyncio.Event()

    async def other_task():  # what the driver's drain task is: it must run between bursts
        while not stop.is_set():
            turns.append(len(got))
            await asyncio.sleep(0)

    async with linked(client, **options) as (broker, link):
        # 8-byte packets: each recv() holds many bursts, and the kernel holds more recv()s,
        # so that epoll and the buffer both ask for reads at every turn of the loop.
        count = 100 * READ_BURST
        ticker = asyncio.create_task(other_task())
        broker.writer.write(publish("t", b"x") * count)
        await broker.writer.drain()
        await until(lambda: len(got) >= count, what="backlog read")
        stop.set()
        await ticker
        steps = [b - a for a, b in zip(turns, turns[1:])]
        # At most one burst from epoll and one resumed from the buffer per turn of the loop.
        assert max(steps) <= 2 * READ_BURST, max(steps)


# The fast path


async def test_fast_path_and_paho_deliver_in_the_order_of_the_stream_wherever_it_is_cut():
    got: list[tuple[str, str, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(("paho", m.topic, m.payload))
    fast = lambda msgs: got.extend(("fast", t, p) for t, p, _ in msgs)
    async with linked(client, on_messages=fast) as (broker, link):
        # QoS 0 data with a QoS 1 last will every 50 messages and a PINGRESP now and then:
        # paho's packets must keep their places between the fast path's. The payloads are
        # made of PUBLISH packets: the fast path must never split a packet that paho has begun.
        phantoms = publish("phantom", b"!") * 30
        sent, stream = [], bytearray()
        for k in range(3000):
            if k % 50 == 25:
                sent.append(("paho", f"city/b/{k}/status", b"offline"))
                stream += any_publish(f"city/b/{k}/status", b"offline", qos=1, mid=1 + k % 60000)
            elif k % 700 == 3:
                stream += b"\xd0\x00"  # PINGRESP: read by paho, delivers nothing
            else:
                sent.append(("fast", f"city/t/{k}", phantoms[k % 12:k % 12 + k % 301]))
                stream += publish(f"city/t/{k}", sent[-1][2])
        await send_cut(broker.writer, bytes(stream))
        await until(lambda: len(got) >= len(sent), what="every message")
        # Paths may differ only where a QoS-0 packet was cut by a read (paho finishes those).
        assert [(t, p) for _, t, p in got] == [(t, p) for _, t, p in sent]
        assert all(path == "paho" for path, t, _ in got if t.endswith("/status"))
        assert sum(path == "fast" for path, _, _ in got) > 0.5 * len(sent)
        # Each QoS 1 message acknowledged by paho, in order.
        acks = 3000 // 50
        data = await asyncio.wait_for(broker.reader.readexactly(4 * acks), 10)
        assert [data[i:i + 2] for i in range(0, len(data), 4)] == [b"\x40\x02"] * acks
        assert [int.from_bytes(data[i + 2:i + 4], "big") for i in range(0, len(data), 4)] == \
            [1 + k % 60000 for k in range(3000) if k % 50 == 25]
        # The end of the stream, met by the fast path's read, reaches paho: the link goes down.
        broker.writer.close()
        await until(lambda: not link.connected, what="end of stream")


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fast-path"])
async def test_a_link_that_receives_stays_alive_while_a_pingresp_is_late(fast):
    """paho (2.2) counts received bytes as life: a PINGRESP that waits behind a backlog must not
    cost the connection. The fast path, which paho does not see, keeps paho's clock told."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    got: list[int] = []
    client.on_message = lambda c, u, m: got.append(1)
    client.on_disconnect = lambda *a: got.append(-1)
    options = {"on_messages": lambda msgs: got.extend([1] * len(msgs))} if fast else {}
    async with linked(client, keepalive=1, **options) as (broker, link):
        loop = asyncio.get_running_loop()

        pings = 0

        async def late_pingresps():  # each PINGRESP 1.5 keep-alive periods after its PINGREQ
            nonlocal pings
            while (await broker.reader.readexactly(2)) == b"\xc0\x00":
                pings += 1
                loop.call_later(1.5, broker.writer.write, b"\xd0\x00")

        answering = asyncio.create_task(late_pingresps())
        try:
            # Data every 50 ms until paho has sent four PINGREQs, each answered late: three
            # keep-alive checks with a PINGRESP overdue, counted rather than timed.
            sent, deadline = 0, time.monotonic() + 60
            while pings < 4:
                assert time.monotonic() < deadline, f"only {pings} PINGREQs"
                broker.writer.write(publish("t", b"x"))
                await broker.writer.drain()
                sent += 1
                await asyncio.sleep(0.05)
            await until(lambda: len(got) >= sent or -1 in got, what="every message delivered")
            assert link.connected and -1 not in got and broker.connections == 1
            assert len(got) == sent
        finally:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)


@pytest.mark.parametrize("bad", [b"\x30\x05\x00\x09abc", b"\x30\x03\x00\x00x", b"\x30\xff\xff\xff\xff\x01"],
                         ids=["topic-beyond-packet", "empty-topic", "5-length-bytes"])
async def test_a_malformed_packet_is_a_protocol_error_after_the_messages_before_it(bad):
    got: list[str] = []
    reasons: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(m.topic)
    client.on_disconnect = lambda c, u, f, rc, p: reasons.append(rc)
    async with linked(client, on_messages=lambda msgs: got.extend(t for t, _, _ in msgs)) as (broker, _link):
        broker.writer.write(publish("a", b"1") + bad + publish("z", b"9"))
        await broker.writer.drain()
        await until(lambda: reasons, what="protocol error")
        assert got == ["a"] and reasons[0].is_failure  # "z", after the broken frame, is never read
        await until(lambda: broker.connections == 2, what="reconnected with backoff")


async def test_fast_path_refuses_an_unknown_protocol_version_loudly():
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client._protocol = 6
    with pytest.raises(ValueError, match="protocol"):
        AsyncioMqtt(client, "127.0.0.1", 1883, on_messages=lambda msgs: None)
    AsyncioMqtt(client, "127.0.0.1", 1883)  # paho alone: its own business


async def test_mqtt5_messages_without_properties_take_the_fast_path():
    got: list[tuple[str, str]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(("paho", m.topic))
    fast = lambda msgs: got.extend(("fast", t) for t, _, _ in msgs)

    # A MQTT 5 CONNACK: flags, reason code, no properties.
    async with linked(client, b"\x20\x03\x00\x00\x00", on_messages=fast) as (broker, _link):
        no_properties, payload_format = b"\x00", b"\x02\x01\x01"
        broker.writer.write(any_publish("a", b"1", properties=no_properties)
                            + any_publish("b", b"1", properties=payload_format)
                            + any_publish("c", b"1", properties=no_properties))
        await broker.writer.drain()
        await until(lambda: len(got) == 3, what="three messages")
        assert got == [("fast", "a"), ("paho", "b"), ("fast", "c")]
