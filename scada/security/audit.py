"""Audit records and where they go (pure: the SQLite trail and the OPC UA events are elsewhere).

Every session activation (success or failure), every write and method call (allowed or refused),
every alarm action, every user and PKI change and every reload is one :class:`AuditRecord`,
given to an :class:`AuditSink`. A sink never blocks the caller and never raises.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Protocol

from scada.security.context import RequestContext, current

ACTIONS = (
    "activate_session",  # result: Good or the refusal's status code name
    "close_session",
    "call",  # a method call: target = method (and object), arguments = inputs
    "write",
    "history_read",
    "subscription",  # a subscription service refused (theft, caps)
    "alarm_action",
    "register_server",
    "certificate",  # a client certificate refused, rejected, trusted
    "user_change",
    "pki_change",
    "reload",
)


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One audited act. ``arguments`` is canonical JSON text (sorted keys, no spaces); ``result``
    is a status code name ("Good", "BadUserAccessDenied", ...)."""

    time_ns: int
    action: str
    user: str
    roles: tuple[str, ...]
    session: str
    client_address: str
    cert_thumbprint: str
    target: str
    arguments: str
    result: str


def canonical(value: Any) -> str:
    """``value`` as canonical JSON text (what the hash chain covers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_of(
    action: str, target: str, arguments: Any, result: str, context: RequestContext | None = None
) -> AuditRecord:
    """An AuditRecord of the request being served (``context``, else :func:`current`; the
    server itself when none)."""
    ctx = context if context is not None else current()
    roles: tuple[str, ...] = ()
    if ctx is None:
        user, session, address, thumb = "server", "", "", ""
    else:
        ident = ctx.identity
        user, roles = ident.user, tuple(sorted(r.value for r in ident.roles))
        session, address, thumb = ctx.session_id, ctx.client_address, ctx.cert_thumbprint
    return AuditRecord(
        time.time_ns(), action, user, roles, session, address, thumb, target, canonical(arguments), result
    )


class AuditSink(Protocol):
    """Where audit records go: must return at once and never raise."""

    def record(self, rec: AuditRecord) -> None: ...


class MemoryAudit:
    """An AuditSink that keeps records in a list (tests, and a server without an audit trail)."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def record(self, rec: AuditRecord) -> None:
        self.records.append(rec)
