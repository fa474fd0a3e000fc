"""The request being served: who sends it, from where, over which channel.

Set for the duration of each request by the OPC UA side (scada/opcua/asyncua_private), read by
whatever the request reaches (methods, history, subscriptions, audit) with :func:`current`.
"""

from __future__ import annotations

import dataclasses
from contextvars import ContextVar

from scada.security.identity import Identity


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """Who and where: the session's identity, the client's address and channel."""

    identity: Identity
    session_id: str = ""  # the session's id as text ("" before a session exists)
    client_address: str = ""  # "host:port"
    security_mode: str = ""  # "None", "Sign", "SignAndEncrypt"
    security_policy: str = ""  # the policy URI's last part: "None", "Basic256Sha256", ...
    cert_thumbprint: str = ""  # SHA-1 hex of the client application's certificate ("" when none)
    application_uri: str = ""


REQUEST: ContextVar[RequestContext | None] = ContextVar("scada_request", default=None)


def current() -> RequestContext | None:
    """The request being served, or None outside a client's request (the server's own acts)."""
    return REQUEST.get()
