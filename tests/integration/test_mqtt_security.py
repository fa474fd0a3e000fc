"""The MQTT driver against a real Mosquitto that speaks only TLS and lets in only the users of
its password file (issue 14, field side); mosquitto_pub, over TLS with its own login, is the
device publishing.

Values flow over TLS with the right password, including messages larger than a TLS record and
bursts longer than one read's budget; a wrong password and a broker certificate from an unknown
CA are refused, said once in the log, the devices kept Bad_NoCommunication and the link retried
with a growing backoff, while another type on the same broker with the right login goes on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import structlog
from cryptography import x509

from city_scada import load_config
from drivers.mqtt.driver import MqttDriver
from scada import status as st

from .helpers import DriverHarness, MosquittoTLS, TlsFiles, make_tls_files, until

pytestmark = pytest.mark.integration

USERS = {"scada": "s3cret-scada", "sensor": "s3cret-sensor"}
BIG = 40_000  # bytes of a text payload: more than two TLS records (16 KiB each)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("mqtt-pki") / "pki")


@pytest.fixture
def tls_broker(tmp_path, pki):
    """A Mosquitto on loopback: TLS only (the module's CA), logins from its password file only."""
    b = MosquittoTLS(tmp_path / "mosquitto", pki, USERS)
    yield b
    b.stop()


def sensor_type(name: str, security: str) -> str:
    block = "    broker_security:\n" + "".join(f"      {line}\n" for line in security.splitlines()) if security else ""
    return f"""\
  {name}:
    class: sensor
    driver: mqtt
{block}    points:
      level: {{topic: "city/{name}/{{device}}/state", json: level}}
      blob: {{topic: "city/{name}/{{device}}/blob", type: text}}
"""


def config(folder: Path, port: int, types: dict[str, str]):
    """tags.yaml: one sensor type per entry of ``types`` (name: its broker_security lines), one device each."""
    folder.mkdir(parents=True, exist_ok=True)
    devices = "".join(
        f'  - {{name: {name}-1, type: {name}, commune: Dijon, lat: 47.32, lon: 5.04, endpoint: "127.0.0.1:{port}"}}\n'
        for name in types
    )
    text = "equipment_types:\n" + "".join(sensor_type(n, s) for n, s in types.items()) + "devices:\n" + devices
    (folder / "tags.yaml").write_text(text)
    return load_config(folder)


def login(folder: Path, pki: TlsFiles, user: str, password: str, ca: Path | None = None) -> str:
    """broker_security lines: TLS with ``ca`` (the broker's CA by default), ``user`` with ``password`` in a file."""
    folder.mkdir(parents=True, exist_ok=True)
    pw = folder / f"{user}.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    return f"ca: {ca or pki.ca}\nusername: {user}\npassword_file: {pw}\n"


def publish(broker: MosquittoTLS, user: str, topic: str, lines: list[bytes]) -> None:
    """mosquitto_pub over TLS as ``user``: each of ``lines`` one message, QoS 0, in one connection."""
    subprocess.run(
        ["mosquitto_pub", *broker.client_args(user), "-t", topic, "-q", "0", "-l"],
        input=b"\n".join(lines) + b"\n",
        check=True,
        timeout=60,
    )


async def publish_until(h: DriverHarness, broker: MosquittoTLS, device: str, topic: str, level: float) -> None:
    """Publish ``level`` until it lands: the driver subscribes once its login is accepted."""
    for _ in range(100):
        await asyncio.to_thread(publish, broker, "sensor", topic, [json.dumps({"level": level}).encode()])
        try:
            await until(lambda: h.status(device, "level") == st.GOOD, timeout=0.5, what="first value")
            return
        except AssertionError:
            continue
    raise AssertionError(f"{device}: no value over TLS")


async def test_values_flow_over_tls_with_a_login_large_messages_and_bursts(tmp_path, pki, tls_broker):
    cfg = config(tmp_path / "c", tls_broker.port, {"s": login(tmp_path / "secrets", pki, "scada", USERS["scada"])})
    async with DriverHarness(cfg, MqttDriver) as h:
        await publish_until(h, tls_broker, "s-1", "city/s/s-1/state", 1.0)
        (broker,) = h.driver.brokers.values()
        assert broker.link is not None and broker.link.connected
        assert broker.client.socket().version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        # Messages larger than a TLS record, then a burst longer than one read's budget (READ_BURST):
        # every one is read, the last of each is the value kept.
        blobs = [bytes([65 + k % 26]) * BIG for k in range(30)]
        await asyncio.to_thread(publish, tls_broker, "sensor", "city/s/s-1/blob", blobs)
        await until(lambda: h.tagdb.text.get(h.tag("s-1", "blob")) == blobs[-1].decode(), what="the last large message")
        received = h.driver.received
        levels = [json.dumps({"level": float(k)}).encode() for k in range(3000)]
        await asyncio.to_thread(publish, tls_broker, "sensor", "city/s/s-1/state", levels)
        await until(lambda: h.value("s-1", "level") == 2999.0, what="the burst's last value")
        await until(lambda: h.driver.received >= received + len(levels), what="every message of the burst")
        assert h.driver.garbage == 0 and h.driver.dropped == 0


async def test_a_wrong_password_is_refused_and_another_login_on_the_broker_goes_on(tmp_path, pki, tls_broker):
    secrets = tmp_path / "secrets"
    good = login(secrets / "good", pki, "scada", USERS["scada"])
    bad = login(secrets / "bad", pki, "scada", "not-the-password")
    cfg = config(tmp_path / "c", tls_broker.port, {"good": good, "bad": bad})
    with structlog.testing.capture_logs() as logs:
        async with DriverHarness(cfg, MqttDriver) as h:
            assert len(h.driver.brokers) == 2  # one connection per login
            await publish_until(h, tls_broker, "good-1", "city/good/good-1/state", 2.0)
            refused = next(b for b in h.driver.brokers.values() if b.security.password == "not-the-password")
            await until(lambda: refused.link is not None and refused.link.failures >= 3, what="three refusals")
            assert not refused.connected
            assert h.status("bad-1", "level") == st.BAD_NO_COMMUNICATION
            assert "refused the login of user 'scada'" in str(h.driver.devices[1].last_error)
            assert h.status("good-1", "level") == st.GOOD  # the other login goes on
    failures = [e for e in logs if e["event"] == "mqtt_connect_failed"]
    assert len(failures) == 1, failures  # once per distinct reason, not once per retry
    assert failures[0]["log_level"] == "error"
    assert "refused the login of user 'scada'" in failures[0]["error"]
    assert f"file {secrets / 'bad' / 'scada.pw'}" in failures[0]["error"]
    assert "not-the-password" not in repr(logs)  # never the password


async def test_a_broker_certificate_from_an_unknown_ca_is_refused(tmp_path, pki, tls_broker):
    other = make_tls_files(tmp_path / "other-pki", ca_name="another-ca")
    security = login(tmp_path / "secrets", pki, "scada", USERS["scada"], ca=other.ca)
    cfg = config(tmp_path / "c", tls_broker.port, {"s": security})
    with structlog.testing.capture_logs() as logs:
        async with DriverHarness(cfg, MqttDriver) as h:
            (broker,) = h.driver.brokers.values()
            await until(lambda: broker.link is not None and broker.link.failures >= 3, what="three refusals")
            assert h.status("s-1", "level") == st.BAD_NO_COMMUNICATION
            assert not broker.connected
    failures = [e for e in logs if e["event"] == "mqtt_connect_failed"]
    assert len(failures) == 1, failures
    assert failures[0]["log_level"] == "error"
    assert "the broker's certificate is refused" in failures[0]["error"]
    # OpenSSL's reason: the broker sends its CA along, or only its own certificate
    assert any(
        why in failures[0]["error"]
        for why in ("self-signed certificate in certificate chain", "unable to get local issuer certificate")
    ), failures[0]["error"]


async def test_a_broker_certificate_that_names_another_host_is_refused(tmp_path):
    elsewhere = make_tls_files(tmp_path / "pki", server_names=(x509.DNSName("broker.elsewhere.lan"),))
    broker = MosquittoTLS(tmp_path / "mosquitto", elsewhere, USERS)
    try:
        cfg = config(
            tmp_path / "c", broker.port, {"s": login(tmp_path / "secrets", elsewhere, "scada", USERS["scada"])}
        )
        with structlog.testing.capture_logs() as logs:
            async with DriverHarness(cfg, MqttDriver) as h:
                (b,) = h.driver.brokers.values()
                await until(lambda: b.link is not None and b.link.failures >= 2, what="two refusals")
                assert not b.connected and h.status("s-1", "level") == st.BAD_NO_COMMUNICATION
    finally:
        broker.stop()
    (failure,) = [e for e in logs if e["event"] == "mqtt_connect_failed"]
    assert "IP address mismatch" in failure["error"] and "names 127.0.0.1" in failure["error"], failure


async def test_a_client_certificate_when_the_broker_requires_one(tmp_path, pki):
    broker = MosquittoTLS(tmp_path / "mosquitto", pki, USERS, require_certificate=True)
    try:
        secrets = tmp_path / "secrets"
        security = login(secrets, pki, "scada", USERS["scada"])
        with_cert = security + f"certificate: {pki.client_cert}\nprivate_key: {pki.client_key}\n"
        cfg = config(tmp_path / "c", broker.port, {"s": with_cert})
        async with DriverHarness(cfg, MqttDriver) as h:
            (b,) = h.driver.brokers.values()
            await until(lambda: b.connected, what="connected with our certificate")
    finally:
        broker.stop()
