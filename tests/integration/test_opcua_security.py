"""Secure OPC UA sessions and server-side deadbands, against real asyncua servers on loopback.

The traffic simulator serves Basic256Sha256 only (Sign and SignAndEncrypt) with a certificate
it makes itself, and trusts one client certificate; certificates are generated once for the
module in a temporary folder, and one simulator serves the tests on a secure server (starting
an asyncua server takes seconds). Our driver must read a junction over both modes, and,
misconfigured (no security, an untrusted certificate, the wrong server certificate), say why
once in the log, keep its tags Bad_NoCommunication and retry with backoff, never raise.

The driver trusts a server only through its trust list (``trusted``: the server's certificate,
or a CA that signed it) or a pinned ``server_certificate``: a server showing another certificate
is refused before any secure channel opens. Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss are
read from a stock asyncua server whose certificate a test CA signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from pathlib import Path

import pytest
import pytest_asyncio
import structlog
from asyncua import Client, Server, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from city_scada import load_config
from drivers.opcua.driver import OpcUaDriver
from scada import status as st
from scada.driver_api import WriteCommand
from scada.opcua.server import stop_asyncua_server
from scada.tagdb import TagDB
from simulators.adapters.opcua_traffic import Junction, ServerSecurity, TrafficOpcUaSimulator
from simulators.models import traffic as tr
from simulators.pki import make_certificate
from tests import tls_files
from tests.leaks import tasks_left

from .helpers import DEADLINE, free_port, until

pytestmark = pytest.mark.integration

JUNCTIONS = [Junction("J-DIJ-001", "Dijon", 47.32, 5.04)]
CLIENT_URI = "urn:city-scada:test-client"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("security") / "pki"
    make_certificate(d / "client.der", d / "client.pem", CLIENT_URI, server=False)
    make_certificate(d / "intruder.der", d / "intruder.pem", "urn:elsewhere:client", server=False)
    make_certificate(d / "impostor.der", d / "impostor.pem", "urn:elsewhere:server", server=True)
    return d


def secure_simulator(url: str, pki: Path) -> TrafficOpcUaSimulator:
    state = tr.create([j.lat for j in JUNCTIONS], [j.lon for j in JUNCTIONS], t=time.time(), mode=tr.FIXED_TIME)
    security = ServerSecurity(pki / "server" / "traffic.der", pki / "server" / "traffic.pem", (pki / "client.der",))
    return TrafficOpcUaSimulator(state, JUNCTIONS, url, step_interval=0.1, security=security)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(pki: Path):
    """The module's secure traffic simulator (it makes its own certificate as it starts)."""
    s = secure_simulator(f"opc.tcp://127.0.0.1:{free_port()}/traffic/", pki)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()
    left = await tasks_left()
    assert not left, f"the module's simulator left asyncio tasks pending: {left}"


on_sim = pytest.mark.asyncio(loop_scope="module")


def config(folder: Path, url: str, security: str):
    """tags.yaml with one junction, its type secured as ``security`` says (YAML lines, or "")."""
    folder.mkdir(parents=True, exist_ok=True)
    block = "    security:\n" + "".join(f"      {line}\n" for line in security.splitlines()) if security else ""
    (folder / "tags.yaml").write_text(f"""\
equipment_types:
  traffic_junction:
    class: traffic
    driver: opcua
    namespace: urn:city-scada:traffic-sim
    publishing_interval: 100
{block}    points:
      mode: {{node: "{{device}}.Mode", writable: true, enum: {{1: flashing_amber, 2: fixed_time, 3: actuated, 4: central}}}}
      plan: {{node: "{{device}}.Plan", writable: true, enum: {{1: day, 2: peak, 3: night}}}}
      cycle_second: {{node: "{{device}}.CycleSecond", unit: s}}
devices:
  - {{name: J-DIJ-001, type: traffic_junction, commune: Dijon, lat: 47.32, lon: 5.04, endpoint: "{url}"}}
""")
    return load_config(folder)


def secure(
    mode: str,
    pki: Path,
    cert: str = "client",
    server: str | None = None,
    trusted: str | None = None,
    policy: str = "Basic256Sha256",
) -> str:
    """Security lines: our certificate ``cert``, the pinned ``server`` or the trust list ``trusted``
    (by default the simulator's own certificate)."""
    lines = f"policy: {policy}\nmode: {mode}\ncertificate: {pki}/{cert}.der\nprivate_key: {pki}/{cert}.pem\n"
    if server:
        return lines + f"server_certificate: {server}\n"
    return lines + f"trusted: {trusted or pki / 'server' / 'traffic.der'}\n"


def status(tagdb: TagDB, point: str) -> int:
    return int(tagdb.status[tagdb.id_of(f"Dijon/traffic/J-DIJ-001/{point}")])


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@on_sim
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_driver_reads_and_commands_a_junction_over_a_secure_session(tmp_path, pki, sim, mode):
    url = sim.endpoint
    server_cert = pki / "server" / "traffic.der"
    assert server_cert.is_file() and (pki / "server" / "traffic.pem").is_file()  # made by the simulator
    # Sign trusts the server through the trust list; SignAndEncrypt pins the server's certificate.
    cfg = config(tmp_path / "c", url, secure(mode, pki, server=str(server_cert) if mode == "SignAndEncrypt" else None))
    tagdb = TagDB(*cfg.tag_table())
    driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)
    task = asyncio.create_task(driver.run())
    try:
        await until(lambda: status(tagdb, "mode") == st.GOOD, timeout=DEADLINE, what="first value over a secure session")
        assert tagdb.value[tagdb.id_of("Dijon/traffic/J-DIJ-001/mode")] == tr.FIXED_TIME
        (session,) = driver.sessions.values()
        policy = session.client.security_policy
        assert policy.URI.endswith("#Basic256Sha256")
        assert policy.Mode == getattr(ua.MessageSecurityMode, mode)
        cycle = tagdb.id_of("Dijon/traffic/J-DIJ-001/cycle_second")
        first = float(tagdb.value[cycle])
        await until(lambda: float(tagdb.value[cycle]) != first, what="values keep coming")
        # A command, read back: a plan other than the one a test before may have set.
        plan = 3 if sim.state.central_plan[0] == 2 else 2
        await driver.write(WriteCommand("Dijon/traffic/J-DIJ-001/plan", plan))
        assert sim.state.central_plan[0] == plan
    finally:
        await stop(task)


@on_sim
async def test_secure_server_refuses_a_session_over_security_none(sim):
    """An independent asyncua client, past its own endpoint check: the server itself refuses."""
    url = sim.endpoint
    client = Client(url, timeout=5)
    endpoints = await client.connect_and_get_server_endpoints()
    assert {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode) for e in endpoints} == {
        ("Basic256Sha256", ua.MessageSecurityMode.Sign),
        ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
    }
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        params = ua.CreateSessionParameters(
            ClientNonce=b"n" * 32,
            SessionName="none",
            RequestedSessionTimeout=10000,
            ClientDescription=ua.ApplicationDescription(
                ApplicationUri=CLIENT_URI, ApplicationType=ua.ApplicationType.Client
            ),
        )
        created = await client.uaclient.create_session(params)
        with pytest.raises(UaStatusCodeError) as refused:
            await client.uaclient.activate_session(
                ua.ActivateSessionParameters(UserIdentityToken=ua.AnonymousIdentityToken(PolicyId="anonymous"))
            )
        assert refused.value.code == ua.StatusCodes.BadSecurityPolicyRejected
        assert created.SessionId is not None
    finally:
        await client.close_secure_channel()
        client.disconnect_socket()


async def _refused(tmp_path, sim, security: str, expected: str, sim_check=None) -> None:
    """The driver configured with ``security`` never gets a session; it says ``expected``, once.
    ``sim_check(sim, before)``: what the simulator counted, against its counters before."""
    url = sim.endpoint
    before = {"untrusted": sim.untrusted}
    cfg = config(tmp_path / "c", url, security)
    tagdb = TagDB(*cfg.tag_table())
    driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(driver.run())
        try:
            (session,) = driver.sessions.values()
            await until(lambda: session.attempts >= 3, timeout=DEADLINE, what="three attempts")
            started = session.attempts
            took = await until(lambda: session.attempts >= started + 3, timeout=DEADLINE, what="three more attempts")
            # Backoff (0.2 s doubling, capped at 1 s, jittered down to half): from the third
            # failure on, each wait is at least 0.4 s, then 0.5 s: three more attempts take at
            # least 1 s (a lower bound, which a slow machine only lengthens): no busy loop.
            assert took >= 1.0, took
            assert not task.done()  # nothing escaped the driver
            for point in ("mode", "plan", "cycle_second"):
                assert status(tagdb, point) == st.BAD_NO_COMMUNICATION
        finally:
            await stop(task)
    failures = [e for e in logs if e["event"] == "opcua_connect_failed"]
    assert len(failures) == 1, failures  # once per distinct reason, not once per retry
    assert failures[0]["log_level"] == "error" and failures[0]["endpoint"] == url
    assert expected in failures[0]["error"], failures[0]["error"]
    if sim_check:
        sim_check(sim, before)


@on_sim
async def test_driver_without_security_against_a_secure_only_server(tmp_path, sim):
    await _refused(
        tmp_path,
        sim,
        "",
        "the server offers no endpoint with security None/None (it offers "
        "Basic256Sha256/Sign, Basic256Sha256/SignAndEncrypt)",
    )


@on_sim
async def test_driver_with_an_untrusted_certificate(tmp_path, pki, sim):
    def refused_by_the_server(sim, before):
        assert sim.untrusted >= before["untrusted"] + 3  # each attempt reached the server's trust check

    await _refused(
        tmp_path,
        sim,
        secure("SignAndEncrypt", pki, cert="intruder"),
        f"the server does not trust our certificate {pki}/intruder.der",
        refused_by_the_server,
    )


@on_sim
async def test_driver_refuses_a_server_certificate_not_in_its_trust_list(tmp_path, pki, sim):
    def no_secure_channel(sim, before):
        assert sim.untrusted == before["untrusted"]  # refused before the handshake: the server saw no client cert

    shown = (pki / "server" / "traffic.der").read_bytes()
    await _refused(
        tmp_path,
        sim,
        secure("SignAndEncrypt", pki, trusted=str(pki / "impostor.der")),
        f"thumbprint {hashlib.sha1(shown).hexdigest()}) is not in the trust list, nor signed by a CA in it",
        no_secure_channel,
    )


@on_sim
async def test_driver_with_the_wrong_server_certificate(tmp_path, pki, sim):
    await _refused(
        tmp_path, sim, secure("Sign", pki, server=str(pki / "impostor.der")), "is not the trusted server_certificate"
    )


# Deadband at the source: a DataChangeFilter per monitored item.


class RecordingDriver(OpcUaDriver):
    """Keeps what the server sent, item by item: the deadband is the server's to apply."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[int, list[float]] = {}

    def _ingest(self, items) -> None:
        for item in items:
            self.seen.setdefault(item.ClientHandle, []).append(item.Value.Value.Value)
        super()._ingest(items)


async def plant_server(url: str, policy: ua.SecurityPolicyType = ua.SecurityPolicyType.NoSecurity, pki=None):
    """A stock asyncua server at ``url`` with a Plant folder and its P1.Level variable (10.0),
    serving ``policy``; ``pki``: (application URI, certificate, key) for a secure policy. Not started:
    (server, folder, namespace index, the level variable)."""
    server = Server()
    await server.init()
    server.set_endpoint(url)
    if pki is not None:
        uri, cert, key = pki
        await server.set_application_uri(uri)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
    server.set_security_policy([policy])
    ns = await server.register_namespace("urn:test:plant")
    folder = await server.nodes.objects.add_folder(ua.NodeId("Plant", ns), "Plant")
    level = await folder.add_variable(ua.NodeId("P1.Level", ns), "Level", ua.Variant(10.0, ua.VariantType.Double))
    return server, folder, ns, level


def plant_config(folder: Path, url: str, points: str, security: str = ""):
    """tags.yaml with one pump P1 at ``url``: ``points`` (YAML lines), ``security`` (YAML lines, or "")."""
    folder.mkdir(parents=True, exist_ok=True)
    block = "    security:\n" + "".join(f"      {line}\n" for line in security.splitlines()) if security else ""
    lines = "".join(f"      {line}\n" for line in points.splitlines())
    (folder / "tags.yaml").write_text(f"""\
equipment_types:
  pump:
    class: water
    driver: opcua
    namespace: urn:test:plant
    publishing_interval: 50
{block}    points:
{lines}devices:
  - {{name: P1, type: pump, commune: Dijon, lat: 47.32, lon: 5.04, endpoint: "{url}"}}
""")
    return load_config(folder)


async def test_deadband_is_applied_by_the_server(tmp_path):
    url = f"opc.tcp://127.0.0.1:{free_port()}/plant/"
    server, folder, ns, level = await plant_server(url)
    flow = await folder.add_variable(ua.NodeId("P1.Flow", ns), "Flow", ua.Variant(10.0, ua.VariantType.Double))
    count = await folder.add_variable(ua.NodeId("P1.Count", ns), "Count", ua.Variant(100, ua.VariantType.Int32))
    await server.start()
    points = 'level: {node: "{device}.Level", deadband: 1.0}\nflow: {node: "{device}.Flow"}\n' + (
        'count: {node: "{device}.Count", deadband: 5}'
    )
    cfg = plant_config(tmp_path / "c", url, points)
    tagdb = TagDB(*cfg.tag_table())
    driver = RecordingDriver(cfg, list(cfg.devices), tagdb)
    ids = {p: tagdb.id_of(f"Dijon/water/P1/{p}") for p in ("level", "flow", "count")}
    task = asyncio.create_task(driver.run())
    try:
        await until(lambda: all(tagdb.status[i] == st.GOOD for i in ids.values()), what="first values")
        steps = [(10.5, 103), (10.9, 109), (12.0, 111), (12.5, 120), (9.0, 118)]
        for lv, n in steps:
            await level.write_value(ua.Variant(lv, ua.VariantType.Double))
            await count.write_value(ua.Variant(n, ua.VariantType.Int32))
            await flow.write_value(ua.Variant(lv, ua.VariantType.Double))
            # Every sample its own: the next step is written once this one's flow (no deadband,
            # written last) has reached the driver, and with it anything notified before it.
            await until(lambda lv=lv: driver.seen.get(ids["flow"], [None])[-1] == lv, timeout=DEADLINE, what=f"flow {lv}")
        await until(lambda: len(driver.seen.get(ids["flow"], [])) == 1 + len(steps), what="every flow change")
        # Without a deadband every change is notified; with one, only moves beyond it (whether the
        # server compares with the last value reported, as Part 4 says, or with the previous sample,
        # as asyncua's does: these steps tell the same).
        assert driver.seen[ids["flow"]] == [10.0, 10.5, 10.9, 12.0, 12.5, 9.0]
        assert driver.seen[ids["level"]] == [10.0, 12.0, 9.0]
        assert driver.seen[ids["count"]] == [100, 109, 120]
        # and the tag database has the last values once the driver's batch is written
        await until(
            lambda: tagdb.value[ids["level"]] == 9.0 and tagdb.value[ids["count"]] == 120,
            timeout=30,
            what="the last values in the tag database",
        )
    finally:
        await stop(task)
        await stop_asyncua_server(server)


# Trust by CA, and the Aes policies, against a stock asyncua server.


def ca_signed_server(
    folder: Path, uri: str, hosts: tuple[x509.GeneralName, ...] = tls_files.LOOPBACK
) -> tuple[Path, Path, Path]:
    """An RSA CA and a server application certificate it signed (URI and ``hosts``, by default
    127.0.0.1 and localhost, in subjectAltName): (the CA's certificate, the server's certificate,
    the server's key), DER, DER, PEM."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, key = tls_files.new_key(use_rsa=True), tls_files.new_key(use_rsa=True)
    ca = tls_files.issue("site CA", ca_key, "site CA", ca_key, ca=True)
    server = tls_files.issue(
        "plant server",
        key,
        "site CA",
        ca_key,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        san=(x509.UniformResourceIdentifier(uri), *hosts),
        usage=tls_files.APPLICATION_USAGE,
    )
    return (
        tls_files.write_certificate(ca, folder / "ca.der"),
        tls_files.write_certificate(server, folder / "plant.der"),
        tls_files.write_key(key, folder / "plant.pem"),
    )


@pytest.mark.parametrize(
    ("policy", "mode", "trust"),
    [
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt", "ca"),
        ("Aes256_Sha256_RsaPss", "Sign", "server"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt", "ca"),
    ],
)
async def test_aes_policies_with_a_server_trusted_through_its_ca_or_its_certificate(tmp_path, pki, policy, mode, trust):
    uri = "urn:test:plant-server"
    ca, server_cert, server_key = ca_signed_server(tmp_path / "plant-pki", uri)
    url = f"opc.tcp://127.0.0.1:{free_port()}/plant/"
    served = getattr(ua.SecurityPolicyType, f"{policy.replace('_', '')}_{mode}")
    server, _, _, level = await plant_server(url, served, (uri, server_cert, server_key))
    await server.start()
    try:
        trusted = str(ca if trust == "ca" else server_cert)
        security = secure(mode, pki, trusted=trusted, policy=policy)
        cfg = plant_config(tmp_path / "c", url, 'level: {node: "{device}.Level"}', security)
        tagdb = TagDB(*cfg.tag_table())
        driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)
        tag = tagdb.id_of("Dijon/water/P1/level")
        task = asyncio.create_task(driver.run())
        try:
            await until(lambda: tagdb.status[tag] == st.GOOD, timeout=DEADLINE, what=f"first value over {policy}")
            (session,) = driver.sessions.values()
            assert session.client.security_policy.URI.endswith(f"#{policy}")
            assert session.client.security_policy.Mode == getattr(ua.MessageSecurityMode, mode)
            await level.write_value(ua.Variant(12.5, ua.VariantType.Double))
            await until(lambda: tagdb.value[tag] == 12.5, what="a new value")
        finally:
            await stop(task)
    finally:
        await stop_asyncua_server(server)


@pytest.mark.parametrize("case", ["another_host", "another_uri"])
async def test_a_certificate_of_the_trusted_ca_made_for_another_server_is_refused(tmp_path, pki, case):
    """Another device of the site holds a certificate of the same CA: it cannot stand in for the
    server of the endpoint URL (its host not in the certificate, or its URI not the server's)."""
    server_uri = "urn:test:plant-server"
    if case == "another_host":  # a consistent impostor: its own URI, another host's names
        cert_uri, hosts = server_uri, (x509.DNSName("pump-7.site"), x509.IPAddress(ipaddress.ip_address("10.9.9.9")))
        expected = (
            "is not made for the host '127.0.0.1' of the endpoint URL (its subjectAltName names pump-7.site, 10.9.9.9)"
        )
    else:
        cert_uri, hosts = "urn:site:pump-7", tls_files.LOOPBACK
        expected = "its URI (urn:site:pump-7) is not the server's ApplicationUri 'urn:test:plant-server'"
    ca, server_cert, server_key = ca_signed_server(tmp_path / "plant-pki", cert_uri, hosts)
    url = f"opc.tcp://127.0.0.1:{free_port()}/plant/"
    server, _, _, _ = await plant_server(
        url, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, (cert_uri, server_cert, server_key)
    )
    if case == "another_uri":
        await server.set_application_uri(server_uri)
    await server.start()
    try:
        cfg = plant_config(
            tmp_path / "c", url, 'level: {node: "{device}.Level"}', secure("SignAndEncrypt", pki, trusted=str(ca))
        )
        tagdb = TagDB(*cfg.tag_table())
        driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)
        tag = tagdb.id_of("Dijon/water/P1/level")
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(driver.run())
            try:
                (session,) = driver.sessions.values()
                await until(lambda: session.attempts >= 3, timeout=DEADLINE, what="three attempts")
                assert not session.ever and tagdb.status[tag] == st.BAD_NO_COMMUNICATION
            finally:
                await stop(task)
        failures = [e for e in logs if e["event"] == "opcua_connect_failed"]
        assert len(failures) == 1 and failures[0]["log_level"] == "error", failures
        assert expected in failures[0]["error"], failures[0]["error"]
        assert "signed by a trusted CA" in failures[0]["error"]
    finally:
        await stop_asyncua_server(server)
