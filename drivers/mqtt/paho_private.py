"""Every use of paho-mqtt's private internals, in one place (checked against paho-mqtt 2.2.0).

The MQTT link (``drivers/mqtt/aio.py``) drives paho through its public external-loop API,
except for what its buffered reads and fast path need, which paho does not publish:

* ``Client._sock_recv(bufsize)``: the one place paho reads its socket (since 1.x). The link
  replaces it on its client instance with a read from its own 64 KiB buffer
  (:func:`replace_recv`), so that one ``recv()`` feeds many packets.
* ``Client._in_packet``: paho's packet being parsed, a dict rebuilt after every packet.
  ``"command"`` is 0 between packets (the fast path may split then: :func:`between_packets`);
  ``"have_remaining"`` and ``"remaining_length"`` say what a fixed header announced (the
  oversize check: :func:`oversize`).
* ``Client._msgtime_mutex`` and ``Client._last_bytes_received`` with the module's
  ``time_func``: paho's keep-alive clock. Packets the fast path takes past paho must still
  count as traffic, or paho would think the link silent and drop it (:func:`mark_received`).
* ``Client._out_messages`` (mid -> message, under ``Client._out_message_mutex``) and
  ``Client._inflight_messages``: the QoS 1/2 messages paho keeps to send again after a
  reconnection. A message channel's send that failed (DeviceUnreachable) is taken out of them
  (:func:`forget_publish`): its sender was told it did not go, so it must not go later.

:func:`check` verifies all of them on a client, once, naming what differs;
``tests/unit/test_paho_private_contract.py`` checks them, and the behaviour the link relies
on, against the installed paho. pyproject.toml pins ``paho-mqtt>=2.2,<3`` for them.
"""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt
import paho.mqtt.client as mqtt

Recv = Callable[[int], bytes]
PACKET_KEYS = ("command", "have_remaining", "remaining_length")  # the keys of _in_packet read here


class PahoInternalsChanged(TypeError):
    """The installed paho-mqtt's private internals are not those this module was written for."""


def check(client: mqtt.Client, *, fast_path: bool) -> None:
    """Raise :class:`PahoInternalsChanged`, naming the attribute, if ``client`` lacks what the
    link uses: the receive hook always, the packet state and keep-alive clock for the fast path."""
    if not callable(getattr(client, "_sock_recv", None)):
        _changed("Client._sock_recv is not a method")
    packet = getattr(client, "_in_packet", None)
    if not isinstance(packet, dict) or any(key not in packet for key in PACKET_KEYS):
        _changed(f"Client._in_packet is not a dict with keys {PACKET_KEYS}")
    if not fast_path:
        return
    if not isinstance(getattr(client, "_last_bytes_received", None), float):
        _changed("Client._last_bytes_received is not a float")
    mutex = getattr(client, "_msgtime_mutex", None)
    if not (hasattr(mutex, "__enter__") and hasattr(mutex, "__exit__")):
        _changed("Client._msgtime_mutex is not a lock")
    if not callable(getattr(mqtt, "time_func", None)):
        _changed("paho.mqtt.client.time_func is not a function")


def _changed(what: str) -> None:
    raise PahoInternalsChanged(
        f"paho-mqtt {paho.mqtt.__version__}'s internals differ from 2.2 ({what}): see drivers/mqtt/paho_private.py; "
        "pin paho-mqtt>=2.2,<3, or run without the fast path (on_messages=None)"
    )


def replace_recv(client: mqtt.Client, recv: Recv) -> Recv:
    """Make ``recv`` the client's socket read (paho's ``_sock_recv``); return paho's own."""
    original: Recv = client._sock_recv
    client._sock_recv = recv  # type: ignore[method-assign,assignment]  # this instance only, on purpose
    return original


def between_packets(client: mqtt.Client) -> bool:
    """paho has no packet half-read: the next byte of the stream starts a packet."""
    return client._in_packet["command"] == 0


def oversize(client: mqtt.Client, max_packet: int) -> tuple[int, int] | None:
    """``(command byte, remaining length)`` of the packet paho is reading if its complete fixed
    header announces more than ``max_packet`` bytes; None otherwise (or before that)."""
    packet = client._in_packet
    if packet["have_remaining"] and packet["remaining_length"] > max_packet:
        return packet["command"], packet["remaining_length"]
    return None


def mark_received(client: mqtt.Client) -> None:
    """Tell paho's keep-alive that bytes came in now (as paho does after each packet it reads)."""
    with client._msgtime_mutex:
        client._last_bytes_received = mqtt.time_func()


def forget_publish(client: mqtt.Client, mid: int) -> bool:
    """Take message ``mid`` out of what paho would publish again after a reconnection; False
    when paho no longer holds it (acknowledged meanwhile). A later PUBACK for it is ignored by
    paho (it checks the mid is still held)."""
    with client._out_message_mutex:
        msg = client._out_messages.pop(mid, None)
        if msg is None:
            return False
        if msg.state in (mqtt.mqtt_ms_wait_for_puback, mqtt.mqtt_ms_wait_for_pubrec) and client._inflight_messages > 0:
            client._inflight_messages -= 1  # as paho counts an acknowledged one
        return True
