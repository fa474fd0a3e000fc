"""Contract of scada/opcua/asyncua_private/activation.py (the check before asyncua's session
activation, random session tokens, the password of an encrypted UserName token) with the
installed asyncua.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import Primitives
from cryptography.hazmat.primitives.asymmetric import padding

from scada.opcua.asyncua_private import activation as P
from scada.opcua.server import stop_asyncua_server
from tests.asyncua_contract import SC, params, relied_on
from tests.integration.helpers import plain_asyncua_server

relies = relied_on("scada/opcua/asyncua_private/activation.py")


def test_activation_internals_have_the_signatures_relied_on():
    relies(
        params(UaProcessor._process_message) == ["self", "typeid", "requesthdr", "seqhdr", "body"],
        "UaProcessor._process_message(typeid, requesthdr, seqhdr, body)",
    )
    relies(
        params(InternalServer.decrypt_user_token)[1:] == ["isession", "token"], "decrypt_user_token(isession, token)"
    )
    relies(params(InternalServer.set_user_manager)[1:] == ["user_manager"], "InternalServer.set_user_manager")
    relies(params(InternalServer.lookup_external_session)[1:] == ["auth_token"], "lookup_external_session(token)")
    relies(params(UserManager.get_user)[1:] == ["iserver", "username", "password", "certificate"], "get_user")
    relies(
        params(InternalSession.activate_session)[1:] == ["params", "peer_certificate"],
        "InternalSession.activate_session(params, peer_certificate)",
    )


def wrappers_of_ours(fn) -> int:
    """How many of the functions chained by ``__wrapped__`` from ``fn`` are this module's wrapper
    (other hooks wrap _process_message too, with functools.wraps, which copies our marker)."""

    async def stock(*args):
        return None

    ours = P._checked(stock).__code__
    count = 0
    while fn is not None:
        count += getattr(fn, "__code__", None) is ours
        fn = getattr(fn, "__wrapped__", None)
    return count


@contextlib.asynccontextmanager
async def hooked(check):
    """A started stock server (None, anonymous and UserName tokens) with the hook; the outcomes."""
    server, url, _ = await plain_asyncua_server("activation", "urn:contract:activation")
    outcomes: list = []
    P.hook_activation(server, check, lambda act, user, code, exc: outcomes.append((act, user, code, exc)))
    P.hook_activation(server, check, lambda act, user, code, exc: outcomes.append((act, user, code, exc)))
    relies(wrappers_of_ours(UaProcessor._process_message) == 1, "UaProcessor._process_message wrapped once")
    await server.start()
    try:
        yield server, url, outcomes
    finally:
        await stop_asyncua_server(server)


async def test_the_check_decides_and_the_outcome_is_told():
    seen: list[P.Activation] = []

    async def check(act: P.Activation) -> User:
        seen.append(act)
        if isinstance(act.token, ua.UserNameIdentityToken) and act.token.UserName == "mallory":
            raise P.ServiceError(SC.BadUserAccessDenied)
        return User(role=UserRole.User, name="checked")

    async with hooked(check) as (server, url, outcomes):
        client = Client(url)
        async with client:
            [session] = list(server.iserver._external_sessions.values())
            relies(session.user.name == "checked", "the user manager's get_user gives the session its user")
            token = client.uaclient.session.authentication_token
            relies(
                token.NodeIdType == ua.NodeIdType.ByteString and len(token.Identifier) == 32,
                "the session's auth_token, as registered in _external_sessions, is what the client uses",
            )
            relies(server.iserver.lookup_external_session(token) is session, "_external_sessions keyed by auth_token")
            relies(P.created_certificate(session) == b"", "CreateSession on a None channel: no client certificate")
        act = seen[0]
        relies(isinstance(act.token, ua.AnonymousIdentityToken), "a client without user: anonymous token")
        relies(act.client_address.startswith("127.0.0.1:"), "UaProcessor.name is the peer (host, port)")
        relies((act.security_mode, act.security_policy) == ("None", "None"), "security_policy.Mode and URI")
        relies(not act.reattach and outcomes[0][2] == SC.Good, "outcome Good on its own channel")
        refused = Client(url)
        refused.set_user("mallory")
        refused.set_password("x")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await refused.connect()
        relies(err.value.code == SC.BadUserAccessDenied, "a ServiceError from the check is the client's answer")
        relies(outcomes[-1][2] == SC.BadUserAccessDenied and outcomes[-1][1] is None, "the refusal is told")


async def test_a_failing_check_refuses():
    async def check(act: P.Activation) -> User:
        raise RuntimeError("bug in a check")

    async with hooked(check) as (_, url, outcomes):
        with pytest.raises(ua.UaStatusCodeError) as err:
            await Client(url).connect()
        relies(err.value.code == SC.BadInternalError, "a check that fails refuses (BadInternalError)")
        relies(outcomes[-1][2] == SC.BadInternalError, "told as BadInternalError")


def _encrypted(key, password: bytes, nonce: bytes, policy_uri: str) -> ua.UserNameIdentityToken:
    """A UserName token encrypted as asyncua's client encrypts it (Client._encrypt_password)."""
    data, uri = security_policies.encrypt_asymmetric(
        key.public_key(), Primitives.Bytes.pack(password + nonce), policy_uri
    )
    return ua.UserNameIdentityToken(UserName="u", Password=data, EncryptionAlgorithm=uri)


def test_decrypt_password_checks_the_nonce_and_the_algorithm():
    key = cert_gen.generate_private_key()
    nonce = b"n" * 32
    server = SimpleNamespace(iserver=SimpleNamespace(private_key=key))

    def act(token, session_nonce=nonce):
        return P.Activation(SimpleNamespace(nonce=session_nonce), False, "", "None", "None", None, token, None)  # type: ignore[arg-type]

    for uri in (
        security_policies.SecurityPolicyBasic256Sha256.URI,
        security_policies.SecurityPolicyAes256Sha256RsaPss.URI,
    ):
        token = _encrypted(key, "pässword".encode(), nonce, uri)
        relies(token.EncryptionAlgorithm in (P.OAEP_SHA1, P.OAEP_SHA256), f"{uri}: an RSA-OAEP token")
        assert P.decrypt_password(server, act(token)) == "pässword".encode()  # type: ignore[arg-type]
        # What asyncua itself makes of it (it strips the nonce by length, without looking).
        isession = SimpleNamespace(nonce=nonce)
        stock = InternalServer.decrypt_user_token(SimpleNamespace(private_key=key, logger=None), isession, token)  # type: ignore[arg-type]
        relies(stock == ("u", "pässword"), "decrypt_user_token's layout: length, password, server nonce")
        with pytest.raises(P.ServiceError) as err:  # a replay: the nonce of an earlier activation
            P.decrypt_password(server, act(token, b"m" * 32))  # type: ignore[arg-type]
        assert err.value.code == SC.BadIdentityTokenInvalid
    rsa15 = key.public_key().encrypt(Primitives.Bytes.pack(b"x" + nonce), padding.PKCS1v15())
    old = ua.UserNameIdentityToken(UserName="u", Password=rsa15, EncryptionAlgorithm=P.RSA15)
    with pytest.raises(P.ServiceError):  # rsa-1_5 (Bleichenbacher): never, though asyncua takes it
        P.decrypt_password(server, act(old))  # type: ignore[arg-type]
