"""The contract between the MQTT link and paho-mqtt's private internals
(``drivers/mqtt/paho_private.py``), checked against the installed paho: a release that changes
them fails here, naming the attribute, rather than somewhere in the link.

A plain paho client is connected over TCP to a listening socket on loopback (no broker: the
test writes the broker's bytes itself) and read with paho's public ``loop_read()``."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from drivers.mqtt import paho_private

CONNACK = b"\x20\x02\x00\x00"  # MQTT 3.1.1, accepted


def publish(topic: str, payload: bytes) -> bytes:
    """A QoS-0 PUBLISH packet (remaining length below 16 KiB)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    n = len(body)
    return b"\x30" + (bytes([n]) if n < 128 else bytes([n % 128 | 128, n // 128])) + body


@pytest.fixture
def wired() -> Iterator[tuple[mqtt.Client, socket.socket, list[str]]]:
    """A paho client connected to a listening socket on loopback: (client, the broker's end of
    the connection, topics paho delivered)."""
    got: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="contract")
        client.on_message = lambda c, u, m: got.append(m.topic)
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=1)
        peer, _ = server.accept()
        with peer:
            assert read_packet(peer)[0] == 0x10  # CONNECT
            yield client, peer, got
            client.disconnect()


def read_packet(peer: socket.socket) -> bytes:
    """One whole packet the client sent (the broker's side, blocking)."""
    header = peer.recv(1)
    length, mult = 0, 1
    while True:
        byte = peer.recv(1)[0]
        header += bytes([byte])
        length, mult = length + (byte & 127) * mult, mult * 128
        if not byte & 128:
            break
    body = b""
    while len(body) < length:
        body += peer.recv(length - len(body))
    return header + body


def read_when_ready(client: mqtt.Client) -> None:
    """Wait until the client's socket has bytes, then let paho read them (one packet)."""
    sock = client.socket()
    assert sock is not None, "paho has no socket"
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        assert sel.select(timeout=10), "nothing to read within 10 s"
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS


def test_the_client_has_every_internal_the_link_uses() -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    paho_private.check(client, fast_path=True)  # raises naming the attribute that changed
    assert paho_private.between_packets(client)
    assert paho_private.oversize(client, 0) is None


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("_sock_recv", None), ("_in_packet", {"command": 0}), ("_last_bytes_received", None), ("_msgtime_mutex", 1)],
)
def test_a_changed_internal_is_refused_by_name(attribute: str, value: object) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    setattr(client, attribute, value)
    with pytest.raises(paho_private.PahoInternalsChanged, match=attribute):
        paho_private.check(client, fast_path=True)


def test_paho_reads_its_socket_only_through_the_replaced_recv(wired) -> None:
    client, peer, got = wired
    sizes: list[int] = []

    def recv(bufsize: int) -> bytes:
        sizes.append(bufsize)
        return original(bufsize)

    original = paho_private.replace_recv(client, recv)
    peer.sendall(CONNACK)
    read_when_ready(client)
    assert client.is_connected()
    peer.sendall(publish("a/b", b"x" * 10))
    read_when_ready(client)
    assert got == ["a/b"]
    # type, remaining length, body: of each packet, every byte came through recv.
    assert sizes == [1, 1, 2, 1, 1, 15]


def test_the_packet_state_says_between_packets_and_what_a_header_announced(wired) -> None:
    client, _peer, got = wired
    chunks: list[bytes] = []

    def recv(bufsize: int) -> bytes:
        if not chunks:
            raise BlockingIOError  # as a non-blocking socket with nothing to read
        data, rest = chunks[0][:bufsize], chunks[0][bufsize:]
        chunks[0:1] = [rest] if rest else []
        return data

    paho_private.replace_recv(client, recv)
    chunks.append(CONNACK)
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS and client.is_connected()
    assert paho_private.between_packets(client)

    packet = publish("t", b"y" * 297)  # remaining length 300: two bytes
    chunks.append(packet[:1])
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert not paho_private.between_packets(client)
    assert paho_private.oversize(client, 0) is None  # the remaining length is not read yet

    chunks.append(packet[1:3])
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert paho_private.oversize(client, 299) == (0x30, 300)
    assert paho_private.oversize(client, 300) is None

    chunks.append(packet[3:])
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert got == ["t"] and paho_private.between_packets(client)


@pytest.mark.parametrize("marked", [True, False])
def test_marking_bytes_received_keeps_the_keepalive_from_closing_the_link(wired, monkeypatch, marked) -> None:
    """A ping is outstanding and the keep-alive (1 s) has passed: paho closes the link, unless
    bytes were marked received (what the fast path does for the packets it takes past paho)."""
    client, peer, _got = wired
    now = [mqtt.time_func()]
    monkeypatch.setattr(mqtt, "time_func", lambda: now[0])
    peer.sendall(CONNACK)
    read_when_ready(client)
    now[0] += 2
    assert client.loop_misc() == mqtt.MQTT_ERR_SUCCESS  # sends a PINGREQ
    assert client.loop_write() == mqtt.MQTT_ERR_SUCCESS
    assert read_packet(peer) == b"\xc0\x00"  # PINGREQ
    now[0] += 2
    if marked:
        paho_private.mark_received(client)
    client.loop_misc()
    assert (client.socket() is not None) is marked


def test_a_forgotten_publish_is_not_sent_again_after_a_reconnection(wired) -> None:
    """A message channel's send that failed must not reach the device later: paho keeps QoS-1
    messages to send them again once reconnected, unless forget_publish takes them out."""
    client, peer, _got = wired
    published: list[int] = []
    client.on_publish = lambda c, u, mid, rc, p: published.append(mid)
    peer.sendall(CONNACK)
    read_when_ready(client)
    kept = client.publish("orders/kept", b"{}", qos=1)
    gone = client.publish("orders/gone", b"{}", qos=1)
    client.loop_write()
    assert [read_packet(peer)[0] & 0xF0 for _ in range(2)] == [0x30, 0x30]  # both went out once
    assert paho_private.forget_publish(client, gone.mid)
    assert not paho_private.forget_publish(client, gone.mid)  # no longer held
    # A late PUBACK of the forgotten message is ignored; the kept one's is reported.
    for mid in (gone.mid, kept.mid):
        peer.sendall(b"\x40\x02" + mid.to_bytes(2, "big"))
        read_when_ready(client)
    assert published == [kept.mid]
    # What paho would send again after a reconnection: nothing (the kept one was acknowledged).
    held = client.publish("orders/held", b"{}", qos=1)
    client._messages_reconnect_reset_out()  # what reconnect() does with the held messages
    assert list(client._out_messages) == [held.mid]
