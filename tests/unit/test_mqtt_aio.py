"""The event-loop paho link against a scripted broker on loopback: buffered reads that cut
packets anywhere, every packet parsed, other tasks served between bursts, end of stream seen."""

from __future__ import annotations

import asyncio
import contextlib
import time

import paho.mqtt.client as mqtt

from drivers.mqtt.aio import READ_BURST, AsyncioMqtt


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

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

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
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        self.writer = writer
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
async def linked(client: mqtt.Client):
    """``client`` connected through the event-loop link to a scripted broker: (broker, link)."""
    async with ScriptedBroker() as broker:
        link = AsyncioMqtt(client, "127.0.0.1", broker.port)
        link.start()
        try:
            await asyncio.wait_for(broker.connected.wait(), 10)
            await until(lambda: link.connected, what="CONNACK read")
            yield broker, link
        finally:
            await link.stop()


async def test_buffered_reads_parse_every_packet_wherever_the_stream_is_cut():
    got: list[tuple[str, bytes]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    async with linked(client) as (broker, link):
        # Payloads of 0 to 300 bytes: remaining lengths of one and two bytes.
        sent = [(f"city/t/{k}", bytes([k % 251]) * (k % 301)) for k in range(3000)]
        stream = b"".join(publish(t, p) for t, p in sent)
        # Cut mid fixed header, mid remaining length, mid topic, mid payload, and in
        # pieces larger than one recv() buffer.
        cuts = [1, 1, 2, 3, 5, 7, 11, 64, 100, 1000, 4096, 70_000]
        pos, k = 0, 0
        while pos < len(stream):
            size = cuts[k % len(cuts)]
            broker.writer.write(stream[pos:pos + size])
            await broker.writer.drain()
            await asyncio.sleep(0.001 if size < 100 else 0)
            pos, k = pos + size, k + 1
        await until(lambda: len(got) >= len(sent), what="every packet")
        assert got == sent
        # The broker goes away: the link sees the end of the stream.
        broker.writer.close()
        await until(lambda: not link.connected, what="end of stream")


async def test_a_backlog_is_read_in_bursts_that_leave_other_tasks_their_turn():
    got: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(1)
    turns: list[int] = []
    stop = asyncio.Event()

    async def other_task():  # what the driver's drain task is: it must run between bursts
        while not stop.is_set():
            turns.append(len(got))
            await asyncio.sleep(0)

    async with linked(client) as (broker, link):
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
