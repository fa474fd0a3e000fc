"""Contract of scada/opcua/asyncua_private/channels.py (the client certificate checked when a
secure channel opens, and CreateSession bound to it) with the installed asyncua.
"""

from __future__ import annotations

import pytest
from asyncua import Client, Server, ua
from asyncua.crypto import security_policies as sp
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor

from scada.opcua.asyncua_private import channels as P
from scada.opcua.server import stop_asyncua_server
from scada.security.pki import Pki
from tests import pki_certs as pc
from tests.asyncua_contract import SC, params, relied_on
from tests.integration.helpers import free_port

relies = relied_on("scada/opcua/asyncua_private/channels.py")


def test_channel_internals_have_the_signatures_relied_on():
    relies(
        params(UaProcessor.open_secure_channel)[1:] == ["algohdr", "seqhdr", "body"],
        "UaProcessor.open_secure_channel(algohdr, seqhdr, body)",
    )
    relies(
        params(InternalSession.create_session)[1:3] == ["params", "sockname"],
        "InternalSession.create_session(params, sockname)",
    )
    relies(P.NONE_URI == sp.SecurityPolicyNone.URI, "SecurityPolicyNone.URI")
    relies(
        issubclass(P.ServiceError, Exception)
        and P.ServiceError(SC.BadSecurityChecksFailed).code == SC.BadSecurityChecksFailed,
        "asyncua.common.utils.ServiceError(code).code",
    )


async def _secure_server(tmp_path, check) -> tuple[Server, str, Pki]:
    pki = Pki(tmp_path / "pki")
    pki.ensure_server_certificate()
    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/contract/"
    server.set_endpoint(url)
    await server.load_certificate(str(pki.cert_path))
    await server.load_private_key(str(pki.key_path))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    P.hook_channel_certificates(server, check)
    P.hook_channel_certificates(server, check)  # idempotent per server
    await server.start()
    return server, url, pki


async def _client(tmp_path, url: str, pki: Pki, cert: pc.Cert) -> Client:
    c, k = cert.write(tmp_path / "client", cert.thumbprint)
    client = Client(url, timeout=10)
    client.application_uri = cert.uri
    await client.set_security(sp.SecurityPolicyBasic256Sha256, str(c), str(k), server_certificate=str(pki.cert_path))
    return client


async def test_the_check_sees_the_channel_certificate_and_its_refusal_closes_the_channel(tmp_path):
    seen: list[tuple[bytes, str]] = []
    good, bad = pc.make("good"), pc.make("bad", key_index=2)

    def check(der: bytes, peer: str) -> int:
        seen.append((der, peer))
        return SC.Good if der == good.der else SC.BadCertificateUntrusted

    server, url, pki = await _secure_server(tmp_path, check)
    try:
        client = await _client(tmp_path, url, pki, bad)
        with pytest.raises(Exception):  # noqa: B017 - an ErrorMessage, then the connection closed
            await client.connect()
        await client.disconnect()
        relies(seen[-1][0] == bad.der, "algohdr.SenderCertificate is the client's certificate (DER)")
        relies(seen[-1][1].startswith("127.0.0.1:"), "UaProcessor.name is the peer (host, port)")
        async with await _client(tmp_path, url, pki, good) as client:
            relies(P.channel_count(server) >= 1, "UaProcessor._connection kept per peer")
            state = await client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value()
            assert state == ua.ServerState.Running
            relies(len(seen) == 2, "open_secure_channel checked once per channel (renewals are not)")
    finally:
        await stop_asyncua_server(server)


async def test_create_session_must_carry_the_channel_certificate(tmp_path):
    good = pc.make("good")
    server, url, pki = await _secure_server(tmp_path, lambda der, peer: SC.Good)
    try:
        client = await _client(tmp_path, url, pki, good)
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            client.security_policy.host_certificate = None
            with pytest.raises(ua.UaStatusCodeError) as err:
                await client.create_session()
        finally:
            client.disconnect_socket()
        relies(
            err.value.code == SC.BadSecurityChecksFailed,
            "InternalSession.create_session: params.ClientCertificate; security_policy.peer_certificate",
        )
    finally:
        await stop_asyncua_server(server)


async def test_a_check_that_raises_refuses(tmp_path):
    def broken(der: bytes, peer: str) -> int:
        raise RuntimeError("bug")

    server, url, pki = await _secure_server(tmp_path, broken)
    try:
        client = await _client(tmp_path, url, pki, pc.make("good"))
        with pytest.raises(Exception):  # noqa: B017 - refused, never let in
            await client.connect()
        await client.disconnect()
    finally:
        await stop_asyncua_server(server)


def test_discovery_only_internals_have_the_signatures_relied_on():
    relies(params(UaProcessor.process_message)[1:] == ["seqhdr", "body"], "UaProcessor.process_message(seqhdr, body)")
    relies(
        params(UaProcessor.send_response)[1:4] == ["requesthandle", "seqhdr", "response"],
        "UaProcessor.send_response(requesthandle, seqhdr, response)",
    )
    factory = sp.SecurityPolicyFactory(sp.SecurityPolicyNone, ua.MessageSecurityMode.None_)
    relies(
        factory.matches(P.NONE_URI, ua.MessageSecurityMode.None_)
        and not factory.matches(P.NONE_URI, ua.MessageSecurityMode.Sign),
        "SecurityPolicyFactory.matches(uri, mode)",
    )
    relies(sp.SecurityPolicyNone().Mode == ua.MessageSecurityMode.None_, "SecurityPolicyNone().Mode")


async def test_a_none_channel_not_offered_serves_discovery_only(tmp_path):
    refused: list[tuple[str, str, str, int]] = []
    server, url, pki = await _secure_server(tmp_path, lambda der, peer: SC.Good)
    P.hook_channel_certificates(server, lambda der, peer: SC.Good, lambda *args: refused.append(args))
    try:
        client = Client(url, timeout=10)
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()  # None: selected by asyncua although not offered
            relies(
                client.uaclient.security_policy.URI == P.NONE_URI,
                "SecureConnection.select_policy keeps the None policy when nothing offered matches",
            )
            endpoints = await client.uaclient.get_endpoints(ua.GetEndpointsParameters(EndpointUrl=url))
            relies(bool(endpoints), "GetEndpoints served through process_message")
            with pytest.raises(ua.UaStatusCodeError) as err:
                await client.create_session()
        finally:
            client.disconnect_socket()
        relies(err.value.code == SC.BadSecurityPolicyRejected, "process_message: send_response, then False closes")
        relies(
            [r[1:] for r in refused]
            == [(P.NONE_URI, "None", ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)],
            "nodeid_from_binary(body) is the request's TypeId; UaProcessor.name the peer",
        )
    finally:
        await stop_asyncua_server(server)
