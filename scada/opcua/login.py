"""Logins: the users file's users, failed logins slowed and audited, users locked after N failures; UserName tokens checked (encrypted, this session's nonce)."""

from __future__ import annotations

from asyncua import Server

from scada.security.audit import AuditSink
from scada.security.settings import SecuritySettings


async def install_login(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer)."""
    if settings is None:
        return
    # not written yet (the security issue): nothing installed
