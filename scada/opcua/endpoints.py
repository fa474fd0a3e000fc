"""Endpoints and the server's certificate: which security policies and modes are offered, which
identity tokens, on which address (scada.security.settings). Written with the PKI."""

from __future__ import annotations

from asyncua import Server, ua

from scada.security.settings import SecuritySettings


async def configure_endpoints(server: Server, settings: SecuritySettings | None) -> None:
    """Set the server's security policies, certificate and identity tokens before it starts.

    None: no security layer (unit tests, embedding): a None endpoint, as before the security issue."""
    # Until the endpoints and PKI are written (the security issue): a None endpoint either way.
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
