"""Drive a paho-mqtt client from the asyncio event loop instead of paho's own thread.

Why not ``loop_start()``: paho's network thread waits with ``select.select``, which cannot
watch a file descriptor above 1023. A process supervising (or simulating) a city holds
more than a thousand sockets (one per Modbus cabinet), so its MQTT socket lands above that
limit and paho's thread fails. Here the socket is watched by the event loop (epoll:
no such limit) with paho's documented external-loop hooks (``on_socket_open`` and friends,
``loop_read`` / ``loop_write`` / ``loop_misc``). The blocking TCP connect runs in a worker
thread so that a dead broker never blocks the loop; reconnection is ours, with capped,
jittered exponential backoff.

Reads are buffered. paho parses a packet with a ``recv()`` per field: one byte of packet
type, one per byte of remaining length, then the rest: three to four system calls per
message, about a third of paho's receive time here (bench/README.md, bench_mqtt.py).
The client's ``_sock_recv`` (the one place paho reads its socket, since 1.x) is replaced on
this instance by a read from a 64 KiB buffer (paho's private internals used here are all in
``drivers/mqtt/paho_private.py``), refilled with one ``recv()`` when empty, so
that a wake-up of the loop parses every packet the kernel holds with one or two system calls.

Fast path (``on_messages``): paho spends ~22 µs of CPU on a message, more than the 20 µs
that 50,000 messages per second allow. When paho is between packets, the link splits the
QoS-0 PUBLISH packets at the front of its buffer itself (``frames.split_publishes``, ~2 µs
a message) and hands them, as ``(topic, payload, retain)`` lists in stream order, to
``on_messages`` (paho's ``on_message`` and ``message_callback_add`` never see them). The
first packet that is anything else (CONNACK, SUBACK, PINGRESP, a QoS 1/2 PUBLISH and its
handshake, DISCONNECT, a malformed or an incomplete packet) stops the split, and paho reads
it from the same buffer before the split resumes after it: the two paths deliver in the
order of the stream. paho's clock of the last bytes received is set after every split, so
that its keep-alive sees a link that is alive. Without ``on_messages`` paho reads every packet.

Bounded packets: paho reads a packet's whole remaining length into memory, whatever it
announces (up to 256 MiB). Once paho has read a fixed header announcing more than
``max_packet`` bytes, the next read of its body raises instead (paho then reports the link
lost and closes the socket): the oversized packet is never buffered beyond the one 64 KiB
read that held its header, the refusal is logged (``mqtt_packet_too_large``) and counted
(``oversize``), and the link reconnects with backoff. The fast path leaves such a packet to
paho, so both paths meet the one check.

TLS: paho wraps the socket (``tls_set_context``) while connecting in the worker thread; the
link then reads the ``ssl.SSLSocket`` as any socket (paho's ``_sock_recv`` turns "no whole TLS
record yet" into ``BlockingIOError``). Bytes the TLS layer has already decrypted are held in the
``SSLSocket``, where epoll cannot see them: a read that stops for its budget comes back for them
as it does for bytes left in its own buffer (``SSLSocket.pending()``).

Failed attempts (refused, unreachable, a TLS handshake refused, a login the broker refuses:
:meth:`AsyncioMqtt.refused`) are logged once per distinct reason (``mqtt_connect_failed``, with
the broker) and retried with backoff; a refused login does not reset the backoff.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt
import structlog

from drivers.mqtt import paho_private
from drivers.mqtt.frames import Message, split_publishes
from scada.backoff import Backoff

log = structlog.get_logger("drivers.mqtt")
MAX_PACKET = 256 * 1024  # bytes after the fixed header: device messages are a few hundred bytes
READ_BURST = 500  # packets parsed per turn of the loop at most (paho's and the fast path's): other tasks get theirs
RECV_SIZE = 65536  # bytes per recv(): many packets; beyond 128 KiB malloc maps and unmaps each buffer


class AsyncioMqtt:
    """Connects ``client`` to ``host:port`` and keeps it connected until :meth:`stop`."""

    _loop: asyncio.AbstractEventLoop  # the running loop, from start() on

    def __init__(
        self,
        client: mqtt.Client,
        host: str,
        port: int,
        keepalive: int = 15,
        backoff: Backoff = Backoff(0.5, 30.0),
        on_messages: Callable[[list[Message]], None] | None = None,
        max_packet: int = MAX_PACKET,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """``on_failure(reason)``: called on the loop after each failed attempt to connect."""
        self.client = client
        self.max_packet = max_packet
        self.oversize = 0  # packets refused for their announced size (each closed the connection)
        self.host, self.port, self.keepalive = host, port, keepalive
        self.backoff = backoff
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._misc: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self._allowed = asyncio.Event()  # cleared while the link is held down (a simulated outage)
        self._allowed.set()
        self._stopping = False
        self.failures = 0
        self.last_error = ""  # why the last attempt failed ("" once a link is up): logged once per reason
        self._refused: str | None = None  # the broker's CONNACK refused this attempt: why
        self._on_failure = on_failure
        self._pending: Callable[[], int] | None = None  # the TLS socket's count of decrypted bytes held
        self.fast_messages = 0  # QoS-0 messages delivered by the fast path, paho bypassed
        self._buf = b""  # bytes received from the socket and not yet handed to paho
        self._pos = 0
        self._buf_sock: object = None  # the socket they came from (compared by identity only)
        self._paho_socket = client.socket  # paho's current socket (bound once: called per read)
        self._starved = False  # the last refill found the socket empty
        self._resume: asyncio.Handle | None = None  # a read scheduled for bytes left in the buffer
        # paho's private state the link reads and writes: checked once, loudly.
        paho_private.check(client, fast_path=on_messages is not None)
        self._deliver = on_messages
        self._v5 = False
        if on_messages is not None:
            protocol = client.protocol
            if protocol not in (mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5):
                raise ValueError(f"fast path: unknown MQTT protocol version {protocol!r}")
            self._v5 = protocol == mqtt.MQTTv5
        self._recv_raw = paho_private.replace_recv(client, self._recv_buffered)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # paho's hooks: may be called from the connecting worker thread, so hop onto the loop.

    def _call(self, fn: Callable, *args) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._call(self._attach, sock)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._call(self._detach, sock)

    def _on_register_write(self, client, userdata, sock) -> None:
        self._call(self._watch_write, sock, True)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        self._call(self._watch_write, sock, False)

    # on the loop

    def _attach(self, sock) -> None:
        if sock.fileno() < 0:  # closed again before the loop got to it
            return
        self._sock = sock
        self._pending = sock.pending if isinstance(sock, ssl.SSLSocket) else None
        self._loop.add_reader(sock, self._read)

    def _detach(self, sock) -> None:
        for remove in (self._loop.remove_reader, self._loop.remove_writer):
            try:
                remove(sock)
            except (ValueError, OSError):
                pass
        if sock is self._sock:
            self._sock = None
            self._lost.set()
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None

    def _watch_write(self, sock, on: bool) -> None:
        if on:
            if sock.fileno() >= 0 and sock is self._sock:
                self._loop.add_writer(self._sock, self._write)
        else:
            try:
                self._loop.remove_writer(sock)
            except (ValueError, OSError):
                pass

    def _refill(self) -> bytes:
        """Replace the spent buffer with one recv() from paho's socket (b"": end of stream).

        Raises as recv() does (BlockingIOError: nothing there, and the link is starved)."""
        self._buf, self._pos, self._buf_sock = b"", 0, self._paho_socket()  # old bytes never feed a new connection
        try:
            self._buf = self._recv_raw(RECV_SIZE)
        except BlockingIOError:
            self._starved = True
            raise
        return self._buf

    def _recv_buffered(self, bufsize: int) -> bytes:
        """paho's ``_sock_recv``: up to ``bufsize`` bytes, from the buffer while it lasts."""
        # paho reads a body with one recv() of its whole remaining length first: only a read of
        # more than max_packet bytes can be an oversized packet's (the common reads skip the check).
        if bufsize > self.max_packet:
            refused = paho_private.oversize(self.client, self.max_packet)
            if refused is not None:
                self._refuse_oversize(*refused)
        pos, buf = self._pos, self._buf
        if pos >= len(buf) or self._buf_sock is not self._paho_socket():
            buf, pos = self._refill(), 0
            if len(buf) <= bufsize:
                self._pos = len(buf)
                return buf  # b"": closed by the peer, as paho expects
        end = pos + bufsize
        self._pos = end
        return buf[pos:end]

    def _refuse_oversize(self, command: int, size: int) -> None:
        """Refuse a packet announcing ``size`` bytes: paho, whose read this raises in, closes
        the link (MQTT has no way to skip a packet; reading it through would buffer it)."""
        self.oversize += 1
        self._buf, self._pos = b"", 0  # what was read of it is dropped with the connection
        log.error(
            "mqtt_packet_too_large",
            broker=f"{self.host}:{self.port}",
            packet_type=command >> 4,
            size=size,
            max_packet=self.max_packet,
            count=self.oversize,
        )
        raise ConnectionAbortedError(f"packet of {size} bytes, more than max_packet {self.max_packet}")

    def _split(self, limit: int, deliver: Callable[[list[Message]], None]) -> int | None:
        """The fast path: deliver the QoS-0 PUBLISH packets at the front of the buffer (refilled
        when spent), ``limit`` at most; how many. None: the socket is empty. 0: paho's turn."""
        client = self.client
        if self._pos >= len(self._buf) or self._buf_sock is not self._paho_socket():
            try:
                if not self._refill():
                    return 0  # end of stream: paho's next recv() meets it too, and reports it
            except BlockingIOError:
                return None
            except OSError:
                return 0  # paho's next recv() meets the error, or the end of stream it leaves
        messages, self._pos = split_publishes(
            self._buf, self._pos, v5=self._v5, limit=limit, max_packet=self.max_packet
        )
        if messages:
            paho_private.mark_received(client)  # paho's keep-alive: bytes did come in
            self.fast_messages += len(messages)
            deliver(messages)
        return len(messages)

    def _read(self) -> None:
        # paho's loop_read() parses one packet: parse all that has arrived in one wake-up
        # rather than one trip round the event loop per message.
        sock = self._sock
        if sock is None:
            return
        self._starved = False
        client, budget, deliver = self.client, READ_BURST, self._deliver
        while budget > 0:
            if deliver is not None and paho_private.between_packets(client):
                n = self._split(budget, deliver)
                if n is None or self._sock is not sock:
                    return  # kernel and buffer both empty (epoll wakes us again), or socket gone
                if n:
                    budget -= n
                    continue
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                if self._sock is not None:
                    self._detach(self._sock)
                return
            if self._sock is not sock or self._starved:
                return  # socket gone, or kernel and buffer both empty: epoll wakes us again
            budget -= 1
        if self._resume is None and (self._pos < len(self._buf) or (self._pending is not None and self._pending())):
            # Bytes wait in our buffer or, decrypted, in the TLS socket, where epoll cannot see
            # them: come back after the other ready callbacks (once: epoll's own call, if the
            # kernel holds more, is the other).
            self._resume = self._loop.call_soon(self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self._read()

    def _write(self) -> None:
        if self.client.loop_write() != mqtt.MQTT_ERR_SUCCESS and self._sock is not None:
            self._detach(self._sock)

    async def _misc_loop(self) -> None:
        """Keep-alive pings and timeouts: paho's loop_misc, once a second."""
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None and self.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                self._detach(self._sock)

    async def _connect(self, first: bool) -> None:
        """paho's blocking connect (the first time) or reconnect, in a worker thread."""
        if first:
            await asyncio.to_thread(self.client.connect, self.host, self.port, self.keepalive)
        else:
            await asyncio.to_thread(self.client.reconnect)

    async def _run(self) -> None:
        first = True
        task = asyncio.current_task()
        while not self._stopping:
            await self._allowed.wait()
            self._lost.clear()
            self._refused = None
            try:
                await self._connect(first)
                first = False
                await self._lost.wait()
                if self._refused is None:
                    self.failures = 0  # the link was up: a new run of failures starts
                    self.last_error = ""
                else:
                    self._failed(self._refused, error=True)
            except (OSError, mqtt.WebsocketConnectionError, ValueError) as exc:
                if not self._stopping:  # refused, unreachable, timed out, TLS refused: try again later
                    self._failed(*_describe(exc, self.host))
            if self._stopping:
                return
            if task is not None and task.cancelling():
                # Cancelled without stop() (the loop's shutdown, a task group), and the
                # cancellation came back as one of those errors or was lost on the way: stop as
                # asked, or the link would reconnect for ever and whoever cancelled it would hang.
                raise asyncio.CancelledError
            self.failures += 1
            await asyncio.sleep(self.backoff.delay(self.failures))

    def refused(self, reason: str) -> None:
        """The broker refused the connection in its CONNACK (a login, an authorisation): this
        attempt failed, whatever the socket did; call from paho's ``on_connect``."""
        self._refused = reason

    def _failed(self, reason: str, error: bool) -> None:
        """One failed attempt: logged when the reason is new, reported to ``on_failure``."""
        if reason != self.last_error:
            (log.error if error else log.warning)(
                "mqtt_connect_failed", broker=f"{self.host}:{self.port}", error=reason, attempt=self.failures + 1
            )
            self.last_error = reason
        if self._on_failure is not None:
            self._on_failure(reason)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.host}:{self.port}")
        self._misc = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc:{self.host}:{self.port}")

    def drop(self) -> None:
        """Lose the network without a goodbye (tests, simulated faults): the broker sends the last will."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold_down(self, down: bool) -> None:
        """Take the link down and keep it down (``True``), or let it reconnect (``False``)."""
        if down:
            self._allowed.clear()
            self.drop()
        else:
            self._allowed.set()

    @property
    def connected(self) -> bool:
        return self._sock is not None and self.client.is_connected()

    async def stop(self) -> None:
        self._stopping = True
        try:
            if self._sock is not None:
                self.client.disconnect()
                self.client.loop_write()
        except (OSError, ValueError):
            pass
        for task in (self._task, self._misc):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._misc) if t is not None), return_exceptions=True)
        if self._sock is not None:
            self._detach(self._sock)


def _describe(exc: BaseException, host: str) -> tuple[str, bool]:
    """Why an attempt to connect failed, in words a technician acts on; and whether it is a
    configuration error (TLS) rather than a broker out of reach."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker's certificate is refused ({exc.verify_message}): check broker_security.ca "
            f"(the CA that signed it) and that the certificate names {host}",
            True,
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}): does the broker speak TLS 1.2 or later on this port?", True
    return f"{type(exc).__name__}: {exc}", False
