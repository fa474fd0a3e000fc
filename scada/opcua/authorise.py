"""Every service authorised: the session's identity, role and communes checked; subscriptions their owner's only; RegisterServer refused; refusals audited."""

from __future__ import annotations

from asyncua import Server

from scada.security.audit import AuditSink
from scada.security.settings import SecuritySettings


async def install_authorisation(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer)."""
    if settings is None:
        return
    # not written yet (the security issue): nothing installed
