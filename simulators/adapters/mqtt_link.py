"""One simulated device's MQTT connection: a paho client driven by the event loop.

The simulators publish with paho's public API only, so that the server's MQTT link
(``drivers/mqtt/aio.py``) is tested against an independent client. Why not paho's own
thread (``loop_start()``): it waits with ``select()``, which fails above file descriptor 1023,
and the city simulator's process holds more sockets than that (the Dijon preset serves
1,100 Modbus cabinets, each a listening socket and the server's connection to it), so the
bollards' MQTT sockets land above the limit; and a thread per bollard would be wasteful.
paho's documented external-loop API serves instead: its socket hooks (``on_socket_open``,
``on_socket_close``, ``on_socket_register_write``, ``on_socket_unregister_write``) tell the
event loop (epoll: no such limit) which socket to watch, and ``loop_read`` / ``loop_write`` /
``loop_misc`` do the work. A device publishes a few messages a second: paho reads every
packet itself. The blocking TCP connect runs in a worker thread, so that a dead broker never
blocks the loop; reconnection is ours, with capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

QOS = 1
SocketHook = Callable[[mqtt.Client, Any, Any], None]


class MqttLink:
    """One paho client on the event loop, connected to ``host:port`` until :meth:`stop`;
    its last will (topic, payload; retained) is optional."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        will: tuple[str, str] | None = None,
        on_connect: Callable[[MqttLink], None] | None = None,
        on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None,
        keepalive: int = 10,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if will:
            self.client.will_set(will[0], will[1], qos=QOS, retain=True)
        self._on_connect = on_connect
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        if on_message:
            self.client.on_message = on_message
        self.client.on_socket_open = self._hook(self._watch)
        self.client.on_socket_close = self._hook(self._unwatch)
        self.client.on_socket_register_write = self._hook(self._want_write)
        self.client.on_socket_unregister_write = self._hook(self._no_write)
        self.host, self.port, self.keepalive, self.backoff = host, port, keepalive, backoff
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._sock: socket.socket | None = None
        self._lost = asyncio.Event()
        self._allowed = asyncio.Event()  # cleared while the link is held down (a simulated outage)
        self._allowed.set()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connected = not reason_code.is_failure
        if self.connected and self._on_connect:
            self._on_connect(self)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connected = False

    def _hook(self, on_loop: Callable[[socket.socket], None]) -> SocketHook:
        """A paho socket hook running ``on_loop(sock)`` on the event loop: paho calls them
        from the connecting worker thread too."""

        def hook(client: mqtt.Client, userdata: Any, sock: Any) -> None:
            assert self._loop is not None, "paho opens a socket only once start() runs"
            self._loop.call_soon_threadsafe(on_loop, sock)

        return hook

    def _watch(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:  # else closed again before the loop got to it
            self._sock = sock
            asyncio.get_running_loop().add_reader(sock, self._read)

    def _unwatch(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):  # a socket paho closed already
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._lost.set()

    def _want_write(self, sock: socket.socket) -> None:
        if sock is self._sock and sock.fileno() >= 0:
            asyncio.get_running_loop().add_writer(sock, self._write)

    def _no_write(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_writer(sock)

    def _check(self, rc: mqtt.MQTTErrorCode) -> None:
        """After paho's work on the socket: a failure closed it, stop watching it now."""
        if rc != mqtt.MQTT_ERR_SUCCESS and self._sock is not None:
            self._unwatch(self._sock)

    def _read(self) -> None:
        self._check(self.client.loop_read())

    def _write(self) -> None:
        self._check(self.client.loop_write())

    async def _misc_loop(self) -> None:
        """Keep-alive pings and timeouts: paho's loop_misc, once a second."""
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._check(self.client.loop_misc())

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            await self._allowed.wait()
            self._lost.clear()
            try:
                await asyncio.to_thread(self.client.connect, self.host, self.port, self.keepalive)
                failures = 0
                await self._lost.wait()
            except (OSError, ValueError):
                pass  # refused, unreachable, timed out: try again later
            if self._stopping:
                return
            failures += 1
            base, cap = self.backoff
            await asyncio.sleep(min(cap, base * 2 ** min(failures - 1, 10)) * random.uniform(0.5, 1.0))

    def start(self) -> None:
        """Connect in the background, and reconnect whenever the connection is lost."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._misc_loop())]

    def publish(self, topic: str, payload: str | bytes | dict[str, Any], retain: bool = False) -> None:
        """Publish at QoS 1 (a dict as compact JSON); paho queues it while disconnected."""
        if not isinstance(payload, (str, bytes)):
            payload = json.dumps(payload, separators=(",", ":"))
        self.client.publish(topic, payload, qos=QOS, retain=retain)

    def drop(self) -> None:
        """Lose the network without a goodbye, and stay off: the broker publishes the last will."""
        self._allowed.clear()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """Let a dropped link reconnect."""
        self._allowed.set()

    async def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(OSError, ValueError):  # the connection may be failing already
                self.client.disconnect()
                self.client.loop_write()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock is not None:
            self._unwatch(self._sock)
