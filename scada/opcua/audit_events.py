"""OPC UA audit events (Part 5) on the Server object for each audited act (AuditActivateSessionEventType, AuditWriteUpdateEventType, AuditUpdateMethodEventType)."""

from __future__ import annotations

from asyncua import Server

from scada.security.audit import AuditSink
from scada.security.settings import SecuritySettings


async def install_audit_events(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer)."""
    if settings is None:
        return
    # not written yet (the security issue): nothing installed
