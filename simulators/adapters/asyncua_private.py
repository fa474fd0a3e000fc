"""The simulators' uses of asyncua's private internals (checked against asyncua 2.1).

The simulators share no code with the server (``scada/opcua/`` has its own such module), so
this stands apart: ``tests/unit/test_sim_asyncua_private.py`` fails here, naming the
attribute, when a release changes it.

* ``InternalServer._external_sessions``: the clients' sessions, by authentication token.
  asyncua's ``Server.stop`` closes the sockets but leaves connected clients' sessions (their
  timeout watchdog and subscription tasks) running until the session timeout: closing them
  first is the only way to stop a server with clients still connected without leaving tasks.
* ``ServiceError(code)``: raised from a user manager's ``get_user`` or the certificate
  validator, asyncua answers the request with a fault of that status code (a user manager that
  returns no user gets BadUserAccessDenied whatever the reason). asyncua's certificate
  validator hook asks for it, but it lives in the internal ``asyncua.common.utils``.
"""

from __future__ import annotations

import asyncio
import logging

from asyncua import Server
from asyncua.common.utils import ServiceError

__all__ = ["ServiceError", "sessions", "stop_server"]

log = logging.getLogger("simulators.opcua")


def sessions(server: Server) -> list:
    """The sessions of the clients connected to ``server`` (asyncua's InternalSession objects)."""
    external = getattr(server.iserver, "_external_sessions", None)
    if not isinstance(external, dict):
        raise TypeError(
            "asyncua's InternalServer._external_sessions is not a dict: see simulators/adapters/asyncua_private.py"
        )
    return list(external.values())


async def stop_server(server: Server, timeout: float = 10.0) -> None:
    """Stop ``server`` and the sessions of clients still connected to it; a stuck session does
    not block the stop beyond ``timeout`` seconds (logged)."""
    try:
        async with asyncio.timeout(timeout):
            for session in sessions(server):
                await session.close_session(delete_subs=True)
            await server.stop()
    except Exception as exc:  # noqa: BLE001  # a simulator's shutdown goes on whatever failed
        log.warning("opcua server stop failed: %r", exc)
