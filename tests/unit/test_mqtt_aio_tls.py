"""The event-loop paho link over TLS, against a scripted TLS broker on loopback: bytes the TLS
layer has already decrypted (``SSLSocket.pending()``) are read even though epoll, which sees
only the kernel's buffer, never wakes the link for them."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from drivers.mqtt import aio
from drivers.mqtt.aio import AsyncioMqtt
from drivers.mqtt.security import MqttSecurity, tls_context
from tests.tls_files import TlsFiles, make_tls_files
from tests.unit.test_mqtt_aio import ScriptedBroker, publish, until


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls") / "pki")


class TlsScriptedBroker(ScriptedBroker):
    """The scripted broker of test_mqtt_aio, over TLS with the test PKI's broker certificate."""

    def __init__(self, pki: TlsFiles) -> None:
        super().__init__()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.server_cert, pki.server_key)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


async def test_bytes_decrypted_and_held_by_the_tls_socket_are_read_without_a_wake_up(pki, monkeypatch):
    # One read takes 1000 bytes, four packets of 250, and a turn parses four packets: each turn ends
    # with the link's buffer spent while the rest of the TLS record waits, decrypted, in the
    # SSLSocket; the kernel's buffer is empty, so epoll never calls the link again for it.
    monkeypatch.setattr(aio, "RECV_SIZE", 1000)
    monkeypatch.setattr(aio, "READ_BURST", 4)
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.tls_set_context(tls_context(MqttSecurity(ca=str(pki.ca))))
    client.on_message = lambda c, u, m: got.append(m.payload)
    async with TlsScriptedBroker(pki) as broker:
        link = AsyncioMqtt(client, "127.0.0.1", broker.port)
        link.start()
        try:
            await asyncio.wait_for(broker.connected.wait(), 10)
            await until(lambda: link.connected, what="CONNACK read")
            assert isinstance(client.socket(), ssl.SSLSocket)
            packets = [publish("t/x", bytes([48 + k % 10]) * 242) for k in range(40)]
            assert {len(p) for p in packets} == {250}
            assert broker.writer is not None
            broker.writer.write(b"".join(packets))  # 10,000 bytes: one TLS record
            await broker.writer.drain()
            await until(lambda: len(got) == len(packets), timeout=5, what="every packet of the record")
            assert got == [p[8:] for p in packets]
        finally:
            await link.stop()


def test_tls_context_verifies_the_broker_and_refuses_old_protocols(pki: TlsFiles, tmp_path: Path):
    ctx = tls_context(MqttSecurity(ca=str(pki.ca)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    # with our certificate, for a broker that asks for one
    tls_context(MqttSecurity(ca=str(pki.ca), certificate=str(pki.client_cert), private_key=str(pki.client_key)))
