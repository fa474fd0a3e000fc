"""Bounded: message and chunk sizes checked before buffering; per-client caps on sessions, subscriptions, monitored items, nodes per request, history values, publish requests in flight."""

from __future__ import annotations

from asyncua import Server

from scada.security.audit import AuditSink
from scada.security.settings import SecuritySettings


async def install_bounds(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer)."""
    if settings is None:
        return
    # not written yet (the security issue): nothing installed
