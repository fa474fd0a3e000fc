"""The contract between the traffic simulator and asyncua's private internals
(``simulators/adapters/asyncua_private.py``), checked against the installed asyncua with a
real server and client on loopback."""

from __future__ import annotations

import socket
import types

import pytest
from asyncua import Client, Server, ua

from simulators.adapters import asyncua_private


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_stopping_closes_the_sessions_of_connected_clients() -> None:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/contract/"
    server.set_endpoint(endpoint)
    await server.start()
    client = Client(endpoint, timeout=5)
    await client.connect()
    try:
        (session,) = asyncua_private.sessions(server)  # the one connected client's
        assert callable(session.close_session)
        await asyncua_private.stop_server(server)
        assert asyncua_private.sessions(server) == []  # closed, not left to their timeout
    finally:
        await client.disconnect()  # its session is closed already: only its own tasks stop


def test_a_changed_internal_is_refused_by_name() -> None:
    server = types.SimpleNamespace(iserver=types.SimpleNamespace())
    with pytest.raises(TypeError, match="_external_sessions"):
        asyncua_private.sessions(server)  # type: ignore[arg-type]


def test_service_error_carries_its_status_code() -> None:
    """``asyncua.common.utils.ServiceError(code).code``: what asyncua's server answers with when a
    user manager or the certificate validator raises it."""
    error = asyncua_private.ServiceError(ua.StatusCodes.BadCertificateUntrusted)
    assert isinstance(error, Exception), "asyncua.common.utils.ServiceError is no longer an exception"
    assert error.code == ua.StatusCodes.BadCertificateUntrusted, "asyncua.common.utils.ServiceError(code).code"
