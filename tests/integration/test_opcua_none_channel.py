"""A None channel on a server that offers no None endpoint (review finding 1): asyncua accepts the
OpenSecureChannel (its connection starts with the None policy, kept when nothing offered matches)
so that clients can ask GetEndpoints; nothing else may pass on it. A raw asyncua client goes past
its own endpoint check and talks to the real server (endpoints, login, authorisation installed as
HmiServer.start does) on loopback."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import pytest
from asyncua import Client, ua

from scada.opcua.authorise import install_authorisation
from scada.opcua.endpoints import configure_endpoints
from scada.opcua.login import install_login
from scada.opcua.server import stop_asyncua_server
from scada.security.audit import MemoryAudit
from scada.security.identity import Role
from scada.security.settings import SecuritySettings

from .helpers import plain_asyncua_server


@dataclasses.dataclass
class Served:
    url: str
    audit: MemoryAudit


@pytest.fixture
async def served(tmp_path) -> AsyncIterator[Served]:
    # The defaults (no None endpoint), with anonymous Observers: the easiest session to get.
    settings = dataclasses.replace(SecuritySettings.defaults(tmp_path / "data"), anonymous=frozenset({Role.OBSERVER}))
    assert not settings.allow_none
    server, url, _ = await plain_asyncua_server("scada", "urn:scada:test")
    audit = MemoryAudit()
    for install in (configure_endpoints, install_login, install_authorisation):  # as HmiServer.start
        await install(server, settings, audit)
    await server.start()
    try:
        yield Served(url, audit)
    finally:
        await stop_asyncua_server(server)


async def none_channel(url: str) -> Client:
    """A client with a None secure channel open (asyncua's Client.connect would stop earlier)."""
    client = Client(url, timeout=5)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    assert client.uaclient.security_policy.URI.endswith("#None")
    return client


def session_params(url: str) -> ua.CreateSessionParameters:
    params = ua.CreateSessionParameters()
    params.ClientDescription = ua.ApplicationDescription(
        ApplicationUri="urn:x", ApplicationType=ua.ApplicationType.Client
    )
    params.EndpointUrl = url
    params.SessionName = "none"
    params.RequestedSessionTimeout = 60000
    params.ClientNonce = b"\0" * 32
    params.MaxResponseMessageSize = 0
    return params


def refusals(audit: MemoryAudit) -> list[tuple[str, str, str]]:
    return [
        (r.action, r.result, json.loads(r.arguments)["reason"]) for r in audit.records if r.action == "secure_channel"
    ]


async def test_create_session_on_a_none_channel_is_refused(served):
    client = await none_channel(served.url)
    try:
        endpoints = await client.uaclient.get_endpoints(ua.GetEndpointsParameters(EndpointUrl=served.url))
        assert endpoints and all(e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)  # discovery works
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.uaclient.create_session(session_params(served.url))
        assert err.value.code == ua.StatusCodes.BadSecurityPolicyRejected
    finally:
        client.disconnect_socket()
    assert refusals(served.audit) == [
        ("secure_channel", "BadSecurityPolicyRejected", "security policy and mode not offered")
    ]
    record = next(r for r in served.audit.records if r.action == "secure_channel")
    assert json.loads(record.arguments)["request"] == ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary


async def test_any_request_on_a_none_channel_is_refused(served):
    """Without a session too (a Read, an ActivateSession): refused for the policy, not let through to
    the session checks (which would audit each one)."""
    for ask in ("read", "activate"):
        client = await none_channel(served.url)
        try:
            with pytest.raises(ua.UaStatusCodeError) as err:
                if ask == "read":
                    await client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value()
                else:
                    params = ua.ActivateSessionParameters()
                    params.UserIdentityToken = ua.AnonymousIdentityToken(PolicyId="anonymous")
                    await client.uaclient.activate_session(params)
            assert err.value.code == ua.StatusCodes.BadSecurityPolicyRejected, ask
        finally:
            client.disconnect_socket()
    assert [r.result for r in served.audit.records] == ["BadSecurityPolicyRejected"] * 2
