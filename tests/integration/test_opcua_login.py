"""Logins on a real asyncua server with our login installed (scada/opcua/login.py), real clients
on loopback: passwords, lockout, plaintext refused, disabled users, anonymous per settings, the
session hijack of research finding 1, X.509 user tokens, and the loop kept free during scrypt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import threading
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import UserRole
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

import scada.opcua.login as login_module
from scada.opcua.login import Login, install_login
from scada.opcua.server import stop_asyncua_server
from scada.opcua.session_identity import identity_of
from scada.security.audit import MemoryAudit
from scada.security.identity import Role, roles_of
from scada.security.settings import LoginSettings, SecuritySettings
from scada.security.users import hash_password, make_user, save_users
from tests.integration.helpers import plain_asyncua_server, until

SC = ua.StatusCodes
PASSWORD = "correct horse battery"
# Fast throttling so that the tests do not wait for it; the lock is what they check.
FAST = LoginSettings(max_failures=3, lockout_s=300.0, delay_s=0.01, max_delay_s=0.05)


@dataclasses.dataclass
class Pair:
    cert: Path
    key: Path
    der: bytes


def _pair(folder: Path, name: str, uri: str) -> Pair:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [
            x509.UniformResourceIdentifier(uri),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    (folder / f"{name}.der").write_bytes(cert.public_bytes(Encoding.DER))
    (folder / f"{name}.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))
    return Pair(folder / f"{name}.der", folder / f"{name}.pem", cert.public_bytes(Encoding.DER))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Pair]:
    folder = tmp_path_factory.mktemp("pki")
    return {
        "server": _pair(folder, "server", "urn:freeopcua:python:server"),
        "client": _pair(folder, "client", "urn:freeopcua:client"),
        "user": _pair(folder, "user", "urn:scada:test:user"),
    }


@dataclasses.dataclass
class Served:
    url: str
    login: Login
    audit: MemoryAudit
    value: ua.NodeId
    server: object
    users: Path


@contextlib.asynccontextmanager
async def login_server(tmp_path: Path, pki, anonymous=(), login: LoginSettings = FAST, thumbprint: str = ""):
    """A stock asyncua server with a certificate, None and Basic256Sha256 SignAndEncrypt
    endpoints, our login on a users file of alice (Operator), bob (Observer, limited to
    Talant) and carol (disabled)."""
    server, url, ns = await plain_asyncua_server("scada", "urn:scada:test")
    await server.load_certificate(str(pki["server"].cert))
    await server.load_private_key(str(pki["server"].key))
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken, ua.X509IdentityToken])
    users = tmp_path / "users.yaml"
    pw = hash_password(PASSWORD)
    save_users(
        users,
        {
            "alice": make_user("alice", pw, ["operator"], certificates=[thumbprint] if thumbprint else []),
            "bob": make_user("bob", pw, ["Observer"], communes=["Talant"], see_other_communes=False),
            "carol": make_user("carol", pw, ["supervisor"], disabled=True),
        },
    )
    settings = SecuritySettings(users=users, anonymous=roles_of(anonymous), login=login)
    audit = MemoryAudit()
    installed = await install_login(server, settings, audit)
    assert installed is not None
    var = await server.nodes.objects.add_variable(ns, "v", 7.0)
    await server.start()
    try:
        yield Served(url, installed, audit, var.nodeid, server, users)
    finally:
        await stop_asyncua_server(server)


async def attempt(url: str, user: str | None = None, password: str | None = None, **kw) -> int:
    """Connect, log in and disconnect: the status code of the activation (Good: 0)."""
    client = await _client(url, user, password, **kw)
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        return exc.code
    await client.disconnect()
    return SC.Good


async def _client(url, user=None, password=None, pki=None, secure=False, user_cert=None) -> Client:
    client = Client(url, timeout=30)
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    if secure:
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(pki["client"].cert),
            str(pki["client"].key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    if user_cert is not None:
        await client.load_client_certificate(str(user_cert.cert))
        await client.load_private_key(str(user_cert.key))
    return client


def hashes_sha1(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA1()).hex()


def activations(audit: MemoryAudit) -> list[tuple[str, str, str]]:
    """(user, result, reason) of each audited activation."""
    import json

    return [
        (r.user, r.result, json.loads(r.arguments).get("reason", ""))
        for r in audit.records
        if r.action == "activate_session"
    ]


async def test_right_password_in_wrong_refused_and_audited(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        client = await _client(s.url, "alice", PASSWORD)
        async with client:
            assert await client.get_node(s.value).read_value() == 7.0
            [session] = [x for x in s.server.iserver._external_sessions.values()]
            ident = identity_of(session)
            assert ident is not None and ident.user == "alice" and ident.roles == {Role.OPERATOR}
            assert session.user.role == UserRole.User  # never asyncua's Admin
        assert await attempt(s.url, "alice", "wrong") == SC.BadUserAccessDenied
        assert await attempt(s.url, "nobody", PASSWORD) == SC.BadUserAccessDenied  # same code: no user enumeration
        got = activations(s.audit)
        assert got[0] == ("alice", "Good", "")
        assert ("alice", "BadUserAccessDenied", "wrong password") in got
        assert ("nobody", "BadUserAccessDenied", "unknown user") in got
        rec = s.audit.records[0]
        assert rec.client_address.startswith("127.0.0.1:") and rec.roles == ("Operator",)


async def test_secure_channel_with_password_and_communes(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        client = await _client(s.url, "bob", PASSWORD, pki=pki, secure=True)
        async with client:
            await client.get_node(s.value).read_value()
            [session] = list(s.server.iserver._external_sessions.values())
            ident = identity_of(session)
            assert ident is not None and ident.communes == {"Talant"} and not ident.see_other_communes
        rec = s.audit.records[-1]
        assert (rec.user, rec.result) == ("bob", "Good")
        assert rec.cert_thumbprint == hashes_sha1(pki["client"].der)


async def test_lockout_after_n_failures_then_refused_even_right_until_it_expires(tmp_path, pki):
    settings = dataclasses.replace(FAST, lockout_s=1.0)
    async with login_server(tmp_path, pki, login=settings) as s:
        for _ in range(settings.max_failures):
            assert await attempt(s.url, "alice", "wrong") == SC.BadUserAccessDenied
        assert s.login.throttle.locked("alice")
        assert await attempt(s.url, "alice", PASSWORD) == SC.BadUserAccessDenied
        assert activations(s.audit)[-1] == ("alice", "BadUserAccessDenied", "locked out after failed logins")
        assert await attempt(s.url, "bob", PASSWORD) == SC.Good  # others are not locked
        await until(lambda: not s.login.throttle.locked("alice"), what="alice's lock expired")
        assert await attempt(s.url, "alice", PASSWORD) == SC.Good


async def test_plaintext_password_on_a_none_channel_refused(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        client = await _client(s.url, "alice", PASSWORD)
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            await client.create_session()
            # A client that ignores the token policy (Basic256Sha256) and sends the password in clear.
            client._policy_ids = [
                dataclasses.replace(p, SecurityPolicyUri="") if p.TokenType == ua.UserTokenType.UserName else p
                for p in client._policy_ids
            ]
            with pytest.raises(ua.UaStatusCodeError) as err:
                await client.activate_session("alice", PASSWORD)
            assert err.value.code == SC.BadIdentityTokenInvalid
        finally:
            client.disconnect_socket()
        assert activations(s.audit)[-1][1:] == ("BadIdentityTokenInvalid", "plaintext password on a None channel")


async def test_disabled_user_refused(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        assert await attempt(s.url, "carol", PASSWORD) == SC.BadUserAccessDenied
        assert activations(s.audit)[-1] == ("carol", "BadUserAccessDenied", "user disabled")


async def test_anonymous_in_or_out_per_settings(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        assert await attempt(s.url) == SC.BadIdentityTokenRejected
        assert activations(s.audit)[-1] == ("anonymous", "BadIdentityTokenRejected", "anonymous logins are not allowed")
    async with login_server(tmp_path / "b", pki, anonymous=["observer"]) as s:
        client = await _client(s.url)
        async with client:
            [session] = list(s.server.iserver._external_sessions.values())
            ident = identity_of(session)
            assert ident is not None and ident.anonymous and ident.roles == {Role.OBSERVER}
        assert activations(s.audit)[-1] == ("anonymous", "Good", "")


async def test_session_tokens_are_random(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        a, b = await _client(s.url, "alice", PASSWORD), await _client(s.url, "bob", PASSWORD)
        async with a, b:
            ta, tb = a.uaclient.session.authentication_token, b.uaclient.session.authentication_token
            assert ta.NodeIdType == tb.NodeIdType == ua.NodeIdType.ByteString
            assert len(ta.Identifier) == len(tb.Identifier) == 32 and ta != tb


async def _reattach(url: str, token, nonce, user=None, password=None) -> int:
    """A fresh connection sending ActivateSession with another connection's session token."""
    client = await _client(url, user, password)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        # The endpoint's token policies, as a client that has seen the GetEndpoints answer knows them.
        endpoints = await client.get_endpoints()
        client._policy_ids = next(
            e for e in endpoints if e.SecurityMode == ua.MessageSecurityMode.None_
        ).UserIdentityTokens
        client.security_policy.peer_certificate = endpoints[0].ServerCertificate
        client.uaclient.session.restore_authentication_token(token)
        client._server_nonce = nonce
        try:
            await client.activate_session(user, password)
        except ua.UaStatusCodeError as exc:
            return exc.code
        return SC.Good
    finally:
        client.disconnect_socket()


async def test_session_hijack_by_token_refused(tmp_path, pki):
    """Research finding 1: a fresh connection re-attaching alice's session by its token, as
    anonymous or as another user, is refused; alice's subscription stays hers. Alice herself,
    on a new connection with her password (a reconnect), gets it back."""
    async with login_server(tmp_path, pki, anonymous=["observer"]) as s:
        alice = await _client(s.url, "alice", PASSWORD)
        async with alice:
            sub = await alice.create_subscription(100, None)
            token, nonce = alice.uaclient.session.authentication_token, alice._server_nonce
            [session] = list(s.server.iserver._external_sessions.values())
            assert await _reattach(s.url, token, nonce) == SC.BadUserAccessDenied
            assert await _reattach(s.url, token, nonce, "bob", PASSWORD) == SC.BadUserAccessDenied
            reasons = [r for _, _, r in activations(s.audit)]
            assert reasons.count("re-attach by another user") == 2
            assert identity_of(session).user == "alice"
            assert sub.subscription_id in s.server.iserver.subscription_service.subscriptions
            await alice.get_node(s.value).read_value()  # still served on its own channel
            # The real owner reconnecting (Part 4 §6.7): same user, same (no) certificate.
            assert await _reattach(s.url, token, alice._server_nonce, "alice", PASSWORD) == SC.Good


async def test_x509_user_token_mapped_by_thumbprint(tmp_path, pki):
    cert = x509.load_der_x509_certificate(pki["user"].der)
    thumb = cert.fingerprint(hashes.SHA1()).hex()
    async with login_server(tmp_path, pki, thumbprint=thumb) as s:
        client = await _client(s.url, user_cert=pki["user"])
        async with client:
            [session] = list(s.server.iserver._external_sessions.values())
            assert identity_of(session).user == "alice"
        # An unknown user certificate (the client application's own) is refused.
        assert await attempt(s.url, user_cert=pki["client"]) == SC.BadUserAccessDenied


async def test_users_file_changes_followed_without_restart(tmp_path, pki):
    async with login_server(tmp_path, pki) as s:
        assert await attempt(s.url, "dave", "pw-of-dave") == SC.BadUserAccessDenied
        from scada.security.users import load_users

        users = load_users(s.users)
        users["dave"] = make_user("dave", hash_password("pw-of-dave"), ["engineer"])
        save_users(s.users, users)
        assert await attempt(s.url, "dave", "pw-of-dave") == SC.Good


async def test_scrypt_does_not_block_the_loop(tmp_path, pki, monkeypatch):
    """While a password is being checked (held in its worker thread by the test), another
    client's Read is answered: the check runs off the event loop."""
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = login_module.verify_password

    def held(password: str, encoded: str) -> bool:
        entered.set()
        release.wait(20)  # on the loop, this would stop everything (the Read below included)
        ok = real(password, encoded)
        finished.set()
        return ok

    async with login_server(tmp_path, pki) as s:
        reader = await _client(s.url, "bob", PASSWORD)
        async with reader:
            monkeypatch.setattr(login_module, "verify_password", held)
            logging_in = asyncio.create_task(attempt(s.url, "alice", PASSWORD))
            await until(entered.is_set, what="the password check started")
            assert await reader.get_node(s.value).read_value() == 7.0
            assert not finished.is_set(), "the Read was answered only after the password check"
            release.set()
            assert await logging_in == SC.Good


async def test_parallel_wrong_passwords_stop_at_the_lock(tmp_path, pki, monkeypatch):
    """Ten wrong passwords for alice sent at once (review finding 4): no more are hashed than the
    lock allows, each attempt re-checks the lock when its turn comes, and nothing stays waiting."""
    hashed: list[str] = []
    real = login_module.verify_password

    def counting(password: str, encoded: str) -> bool:
        hashed.append(password)
        return real(password, encoded)

    monkeypatch.setattr(login_module, "verify_password", counting)
    async with login_server(tmp_path, pki) as s:
        codes = await asyncio.gather(*(attempt(s.url, "alice", f"guess{i}") for i in range(10)))
        assert codes == [SC.BadUserAccessDenied] * 10
        assert len(hashed) <= FAST.max_failures, hashed
        assert s.login.throttle.locked("alice")
        assert s.login.throttle.waiting() == 0
        reasons = {reason for (_, _, reason) in activations(s.audit)}
        assert reasons <= {"wrong password", "locked out after failed logins", "too many attempts waiting"}
        assert await attempt(s.url, "alice", PASSWORD) == SC.BadUserAccessDenied  # locked


def _identities(s) -> dict[str, object]:
    from scada.opcua.asyncua_private.sessions import external_sessions

    return {i.user: i for i in map(identity_of, external_sessions(s.server)) if i is not None}


async def test_open_sessions_follow_the_users_file(tmp_path, pki):
    """Review finding 9: bob disabled while logged in gets BadUserAccessDenied on his next
    request and his session is closed; alice demoted keeps her session with her new roles; both
    changes audited. Nobody reconnects."""
    from scada.security.users import load_users

    async with login_server(tmp_path, pki) as s:
        bob = await _client(s.url, "bob", PASSWORD)
        alice = await _client(s.url, "alice", PASSWORD)
        async with bob, alice:
            assert await bob.get_node(s.value).read_value() == 7.0
            assert _identities(s)["alice"].roles == frozenset({Role.OPERATOR})
            users = load_users(s.users)
            users["bob"] = make_user("bob", users["bob"].password_hash, ["Observer"], disabled=True)
            users["alice"] = make_user("alice", users["alice"].password_hash, ["Observer"])
            save_users(s.users, users)
            await until(lambda: "bob" not in _identities(s), what="bob's session closed")
            with pytest.raises(ua.UaStatusCodeError) as err:
                await bob.get_node(s.value).read_value()
            assert err.value.code == SC.BadUserAccessDenied
            assert _identities(s)["alice"].roles == frozenset({Role.OBSERVER})
            assert await alice.get_node(s.value).read_value() == 7.0
        changes = sorted(
            (r.user, r.result, json.loads(r.arguments)["reason"]) for r in s.audit.records if r.action == "user_change"
        )
        assert changes == [
            ("alice", "Good", "roles or communes changed"),
            ("bob", "BadUserAccessDenied", "user disabled"),
        ]


async def test_activation_on_a_channel_not_offered_is_refused(tmp_path, pki):
    """Second line behind asyncua_private.channels (review finding 1): an activation on a
    channel whose policy and mode the server does not offer is refused before any token work."""
    from scada.opcua.asyncua_private.activation import Activation
    from scada.opcua.login import Refused

    async with login_server(tmp_path, pki, anonymous=["Observer"]) as s:
        act = Activation(None, False, "127.0.0.1:1", "None", "None", None, ua.AnonymousIdentityToken(), None)
        with pytest.raises(Refused) as err:
            await s.login.check(act)
        assert err.value.code == SC.BadSecurityPolicyRejected
