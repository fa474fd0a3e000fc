"""Endpoints and client certificates on a real server (configure_endpoints + the PKI folder) with
real asyncua clients over secure channels on loopback: every policy and mode, None and anonymous
only when allowed, unknown / expired / not-yet-valid / revoked / wrongly signed certificates
refused (and audited), an unknown one trusted with `scada pki trust`, and the CreateSession
without a certificate that asyncua alone would not check."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client, Server, ua
from asyncua.crypto import security_policies as sp

from scada.opcua.endpoints import EndpointError, configure_endpoints
from scada.opcua.server import stop_asyncua_server
from scada.security.audit import MemoryAudit
from scada.security.identity import Role
from scada.security.pki import Pki
from scada.security.settings import SecuritySettings
from tests import pki_certs as pc

from tests.leaks import tasks_left

from .helpers import free_port

POLICIES = {
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


@dataclasses.dataclass
class Target:
    """A server to connect to: its endpoint URL, its PKI folder, where the client's files go."""

    url: str
    pki: Pki
    tmp: Path


@dataclasses.dataclass
class Served(Target):
    """A server started here, and its audit records."""

    server: Server
    audit: MemoryAudit

    def refusals(self) -> list[tuple[str, str]]:
        return [(r.target, r.result) for r in self.audit.records if r.action == "certificate"]


async def serve(tmp: Path, **overrides) -> Served:
    settings = dataclasses.replace(SecuritySettings.defaults(tmp / "data"), **overrides)
    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    server.set_endpoint(url)
    audit = MemoryAudit()
    await configure_endpoints(server, settings, audit)
    await server.start()
    return Served(url, Pki(settings.pki), tmp, server, audit)


@pytest.fixture
async def served(tmp_path):
    s = await serve(tmp_path, anonymous=frozenset({Role.OBSERVER}))
    try:
        yield s
    finally:
        await stop_asyncua_server(s.server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served_once(tmp_path_factory):
    """The ``served`` server shared by the tests that only connect with certificates they trust
    and read: they change nothing another one sees but the trusted folder (each its own
    certificate) and the audit records (cleared before each). Building a server costs seconds
    (asyncua's standard address space, the server's key)."""
    s = await serve(tmp_path_factory.mktemp("pki"), anonymous=frozenset({Role.OBSERVER}))
    try:
        yield s
    finally:
        await stop_asyncua_server(s.server)
    left = await tasks_left()
    assert not left, f"the module's server left asyncio tasks pending: {left}"


@pytest.fixture
def served_clean(served_once):
    served_once.audit.records.clear()
    return served_once


on_served_once = pytest.mark.asyncio(loop_scope="module")


async def secure_client(s: Target, cert: pc.Cert, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt"):
    c_path, k_path = cert.write(s.tmp / "client", cert.thumbprint)
    client = Client(s.url, timeout=10)
    client.application_uri = cert.uri
    await client.set_security(
        POLICIES[policy], str(c_path), str(k_path), server_certificate=str(s.pki.cert_path), mode=MODES[mode]
    )
    return client


async def read_server_state(client: Client) -> int:
    return await client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value()


def trust(s: Served, cert: pc.Cert, folder: str = "trusted/certs") -> None:
    (s.pki.root / folder).mkdir(parents=True, exist_ok=True)
    (s.pki.root / folder / f"{cert.thumbprint}.der").write_bytes(cert.der)


async def refused(s: Served, cert: pc.Cert) -> None:
    client = await secure_client(s, cert)
    with pytest.raises(Exception):  # noqa: B017 - the client sees a closed connection; the code is audited
        await client.connect()
    await client.disconnect()


@on_served_once
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("policy", list(POLICIES))
async def test_each_policy_and_mode_connects_with_a_trusted_certificate(served_clean, policy, mode):
    served = served_clean
    cert = pc.make("hmi")
    trust(served, cert)
    async with await secure_client(served, cert, policy, mode) as client:
        assert await read_server_state(client) == ua.ServerState.Running
    assert served.refusals() == []


@on_served_once
async def test_the_endpoints_offered_follow_the_settings(served_clean):
    served = served_clean
    endpoints = await Client(served.url, timeout=10).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in endpoints}
    assert offered == {(p, m) for p in POLICIES for m in MODES}
    tokens = {t.TokenType for t in endpoints[0].UserIdentityTokens}
    assert tokens == {ua.UserTokenType.Anonymous, ua.UserTokenType.UserName, ua.UserTokenType.Certificate}
    cert = served.pki.server_certificate()
    assert all(e.Server.ApplicationUri == served.server.get_application_uri() for e in endpoints)
    from scada.security.pki import application_uri

    assert served.server.get_application_uri() == application_uri(cert)


async def test_none_is_refused_unless_allowed(tmp_path):
    s = await serve(tmp_path, anonymous=frozenset({Role.OBSERVER}))
    try:
        with pytest.raises(Exception):  # noqa: B017 - no None endpoint: the channel is refused
            async with Client(s.url, timeout=5) as client:
                await read_server_state(client)
    finally:
        await stop_asyncua_server(s.server)
    s = await serve(tmp_path / "open", anonymous=frozenset({Role.OBSERVER}), allow_none=True)
    try:
        async with Client(s.url, timeout=5) as client:
            assert await read_server_state(client) == ua.ServerState.Running
    finally:
        await stop_asyncua_server(s.server)


async def test_anonymous_is_refused_unless_configured(tmp_path):
    s = await serve(tmp_path)  # the defaults: no anonymous roles
    cert = pc.make("hmi")
    trust(s, cert)
    try:
        client = await secure_client(s, cert)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.connect()
        await client.disconnect()
        assert err.value.code == ua.StatusCodes.BadIdentityTokenRejected  # no Anonymous token offered
    finally:
        await stop_asyncua_server(s.server)


async def test_an_unknown_certificate_lands_in_rejected_and_is_accepted_once_trusted(served):
    from scada.security import pki_cli

    cert = pc.make("new-hmi")
    await refused(served, cert)
    assert served.refusals() == [("OpenSecureChannel", "BadCertificateUntrusted")]
    assert (served.pki.root / "rejected" / "certs" / f"{cert.thumbprint}.der").read_bytes() == cert.der
    audit = MemoryAudit()
    assert (
        pki_cli.trust(served.pki, cert.thumbprint, audit)
        == served.pki.root / "trusted/certs" / f"{cert.thumbprint}.der"
    )
    assert [(r.action, r.target, r.result) for r in audit.records] == [
        ("pki_change", f"trust {cert.thumbprint}", "Good")
    ]
    async with await secure_client(served, cert) as client:
        assert await read_server_state(client) == ua.ServerState.Running


@pytest.mark.parametrize(
    "case",
    ["expired", "not_yet_valid", "revoked", "wrongly_signed"],
)
async def test_broken_certificates_are_refused_with_their_code(served, case):
    ca = pc.make("city-ca", key_index=2, ca=True, days=3650)
    trust(served, ca)
    code = {
        "expired": "BadCertificateTimeInvalid",
        "not_yet_valid": "BadCertificateTimeInvalid",
        "revoked": "BadCertificateRevoked",
        "wrongly_signed": "BadCertificateInvalid",
    }[case]
    if case == "expired":
        cert = pc.make("hmi", issuer=ca, start=dt.timedelta(days=-30), days=10)
    elif case == "not_yet_valid":
        cert = pc.make("hmi", issuer=ca, start=dt.timedelta(days=2))
    elif case == "revoked":
        cert = pc.make("hmi", issuer=ca)
    else:
        cert = pc.make("hmi", issuer=ca, signer=pc.key(3))
    # The CA's current CRL (listing the certificate when revoked): without one, the revocation of
    # every certificate it issued is unknown (test_a_ca_without_a_current_crl_...).
    (served.pki.root / "trusted" / "crl" / "ca.crl").write_bytes(pc.crl(ca, [cert] if case == "revoked" else []))
    await refused(served, cert)
    assert served.refusals() == [("OpenSecureChannel", code)]
    assert not (served.pki.root / "rejected" / "certs" / f"{cert.thumbprint}.der").exists()
    good = pc.make("hmi-ok", issuer=ca)
    async with await secure_client(served, good) as client:  # the CA's other certificates still pass
        assert await read_server_state(client) == ua.ServerState.Running


async def test_a_ca_without_a_current_readable_crl_makes_its_certificates_refused(served):
    ca = pc.make("city-ca", key_index=2, ca=True, days=3650)
    trust(served, ca)
    cert = pc.make("hmi", issuer=ca)
    await refused(served, cert)  # no CRL of the CA at all
    crl = served.pki.root / "trusted" / "crl" / "ca.crl"
    crl.write_bytes(pc.crl(ca, [], next_update=-dt.timedelta(minutes=1)))  # past its nextUpdate
    await refused(served, cert)
    crl.write_bytes(pc.crl(ca, []))  # current: the certificate is accepted
    async with await secure_client(served, cert) as client:
        assert await read_server_state(client) == ua.ServerState.Running
    older = crl.with_name("older.crl")  # an older list, still current, without the revocation
    crl.rename(older)
    crl.write_bytes(pc.crl(ca, [cert]))
    await refused(served, cert)
    crl.write_bytes(b"garbled in transfer")  # must not fall back on the older list: unknown
    await refused(served, cert)
    alone = pc.make("alone", key_index=3)  # a self-signed certificate trusted directly needs no CRL
    trust(served, alone)
    async with await secure_client(served, alone) as client:
        assert await read_server_state(client) == ua.ServerState.Running
    unknown = "BadCertificateRevocationUnknown"
    assert served.refusals() == [
        ("OpenSecureChannel", unknown),
        ("OpenSecureChannel", unknown),
        ("OpenSecureChannel", "BadCertificateRevoked"),
        ("OpenSecureChannel", unknown),
    ]
    reasons = [json.loads(r.arguments)["reason"] for r in served.audit.records if r.action == "certificate"]
    assert "no CRL signed by CN=city-ca" in reasons[0] and "expired" in reasons[1]
    assert "unreadable CRL file" in reasons[3] and str(crl) in reasons[3]


async def test_unknown_revocation_is_accepted_only_when_configured(tmp_path):
    s = await serve(tmp_path, accept_unknown_revocation=True, anonymous=frozenset({Role.OBSERVER}))
    try:
        ca = pc.make("city-ca", key_index=2, ca=True, days=3650)
        trust(s, ca)
        cert = pc.make("hmi", issuer=ca)
        async with await secure_client(s, cert) as client:  # no CRL: accepted, as configured
            assert await read_server_state(client) == ua.ServerState.Running
        (s.pki.root / "trusted" / "crl" / "ca.crl").write_bytes(pc.crl(ca, [cert]))
        await refused(s, cert)  # a known revocation still refuses
        assert s.refusals() == [("OpenSecureChannel", "BadCertificateRevoked")]
    finally:
        await stop_asyncua_server(s.server)


async def _create_session_without_certificate(s: Served, cert: pc.Cert) -> None:
    """OpenSecureChannel with ``cert``, then CreateSession with an empty ClientCertificate."""
    client = await secure_client(s, cert)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        client.security_policy.host_certificate = None  # CreateSession.ClientCertificate empty
        await client.create_session()
    finally:
        client.disconnect_socket()


async def test_an_empty_create_session_certificate_does_not_bypass_the_check(served):
    untrusted = pc.make("intruder")
    with pytest.raises(Exception):  # noqa: B017 - refused at OpenSecureChannel already
        await _create_session_without_certificate(served, untrusted)
    assert served.refusals() == [("OpenSecureChannel", "BadCertificateUntrusted")]
    trusted = pc.make("hmi")
    trust(served, trusted)
    with pytest.raises(ua.UaStatusCodeError) as err:  # a trusted channel, but not its certificate
        await _create_session_without_certificate(served, trusted)
    assert err.value.code == ua.StatusCodes.BadSecurityChecksFailed


async def test_a_certificate_uri_other_than_the_application_uri_is_refused_at_create_session(served):
    cert = pc.make("hmi")
    trust(served, cert)
    client = await secure_client(served, cert)
    client.application_uri = "urn:someone:else"
    with pytest.raises(ua.UaStatusCodeError) as err:
        await client.connect()
    await client.disconnect()
    assert err.value.code == ua.StatusCodes.BadCertificateUriInvalid
    assert served.refusals() == [("CreateSession", "BadCertificateUriInvalid")]


async def test_a_secure_policy_without_a_usable_key_refuses_to_start(tmp_path):
    settings = SecuritySettings.defaults(tmp_path)
    Pki(settings.pki).ensure_server_certificate()
    Pki(settings.pki).key_path.write_text("not a key")
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{free_port()}/scada/")
    with pytest.raises(EndpointError, match="cannot read the server's private key"):
        await configure_endpoints(server, settings, MemoryAudit())


async def test_scada_run_is_secure_by_default_and_the_demo_profile_opens_none(tmp_path):
    """The real `scada run` (front in its own process): the defaults refuse a None client and take a
    trusted certificate; the demo's profile lets an anonymous None client read."""
    from city_scada.demo import DEMO_SECURITY

    from .helpers import ROOT, Process, scada_run_args, wait_port

    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/scada/"
    data = tmp_path / "data"
    cert = pc.make("hmi")
    (data / "pki" / "trusted" / "certs").mkdir(parents=True)
    (data / "pki" / "trusted" / "certs" / "hmi.der").write_bytes(cert.der)
    secure = tmp_path / "security.yaml"
    secure.write_text("anonymous: [Observer]\n")  # secure endpoints only (the defaults), anonymous allowed on them
    server = Process(scada_run_args(ROOT, data, url, secure), tmp_path / "secure.log")
    try:
        wait_port(port, proc=server)
        with pytest.raises(Exception):  # noqa: B017 - no None endpoint
            async with Client(url, timeout=10) as client:
                await read_server_state(client)
        async with await secure_client(Target(url, Pki(data / "pki"), tmp_path), cert) as client:
            assert await read_server_state(client) == ua.ServerState.Running
    finally:
        server.stop()
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/scada/"
    demo = Process(scada_run_args(ROOT, tmp_path / "demo-data", url, DEMO_SECURITY), tmp_path / "demo.log")
    try:
        wait_port(port, proc=demo)
        async with Client(url, timeout=10) as client:
            assert await read_server_state(client) == ua.ServerState.Running
    finally:
        demo.stop()
