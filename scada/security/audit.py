"""Audit records and where they go (pure: the SQLite trail and the OPC UA events are elsewhere).

Every session activation (success or failure), every write and method call (allowed or refused),
every alarm action, every user and PKI change and every reload is one :class:`AuditRecord`,
given to an :class:`AuditSink`. A sink never blocks the caller and never raises.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from scada.security.context import RequestContext, current

log = structlog.get_logger("scada.security")

ACTIONS = (
    "activate_session",  # result: Good or the refusal's status code name
    "close_session",
    "call",  # a method call: target = method (and object), arguments = inputs
    "write",
    "history_read",
    "subscription",  # a subscription service refused (theft, caps)
    "limit",  # a message or a request beyond a limit (bounds.py): target = connection or service
    "alarm_action",
    "register_server",
    "certificate",  # a client certificate refused, rejected, trusted
    "secure_channel",  # a request on a channel whose security policy and mode are not offered
    "user_change",
    "pki_change",
    "reload",
    "command",  # a command to a device (scada/control/): target = device, arguments = command, args, phase, origin
    "group_command",  # a group action: target = the group; then one "command" record per device
    "schedule",  # a lighting schedule's step (user Scheduler): target = the schedule
    "work_order",  # an operator's act on a work order (scada/operations/): target = the order, arguments = op, args
    "citizen_report",  # an Open311 report stored: target = the report, arguments = service, order (no contact details)
    "audit_lost",  # records a sink had to drop (a storm, a full disk): how many, said in the trail itself
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


FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord))  # the fixed order the hash chain covers


def _finite(value: Any) -> Any:
    """NaN and infinities as text ("nan", "inf", "-inf"): strict JSON has no such numbers, and a
    command's argument may be one (a client sent it; the trail must keep what it sent)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """``value`` as canonical JSON text (what the hash chain covers); always strict JSON."""
    return json.dumps(
        _finite(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
    )


def canonical_record(rec: AuditRecord) -> str:
    """The record as canonical JSON: its fields' values in :data:`FIELDS` order (roles a list)."""
    return canonical([getattr(rec, name) for name in FIELDS])


def to_wire(rec: AuditRecord) -> tuple:
    """The record as a tuple of plain values (a front sends it to the core so)."""
    return dataclasses.astuple(rec)


def from_wire(fields: Sequence[Any]) -> AuditRecord:
    """The record a peer sent (:func:`to_wire`); ValueError names what is wrong, so that a
    malformed message is refused whole (the core does not trust a front's frames blindly)."""
    if not isinstance(fields, (tuple, list)) or len(fields) != len(FIELDS):
        raise ValueError(f"an audit record has {len(FIELDS)} fields, got {fields!r:.200}")
    time_ns, *texts = fields
    if type(time_ns) is not int:
        raise ValueError(f"audit record time_ns is not an integer: {time_ns!r:.50}")
    roles = texts[2]
    if not isinstance(roles, (tuple, list)) or not all(isinstance(r, str) for r in roles):
        raise ValueError(f"audit record roles are not a list of names: {roles!r:.100}")
    for name, value in zip(FIELDS[1:], texts):
        if name != "roles" and not isinstance(value, str):
            raise ValueError(f"audit record {name} is not text: {value!r:.50}")
    return AuditRecord(time_ns, texts[0], texts[1], tuple(roles), *texts[3:])


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


def lost_record(count: int) -> AuditRecord:
    """The record that says, in the trail itself, that ``count`` records were dropped (a storm,
    a full disk): a gap a reader of the trail sees, never a silent one."""
    return AuditRecord(
        time.time_ns(),
        "audit_lost",
        "server",
        (),
        "",
        "",
        "",
        "audit",
        canonical({"dropped": count}),
        "BadResourceUnavailable",
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


class AuditFanout:
    """An AuditSink giving each record to several sinks: the trail (or the channel to the core's
    trail) and the OPC UA audit events (scada/opcua/audit_events.py adds itself with :meth:`add`).

    A sink that raises (a bug: sinks must not) loses that record for that sink only, logged;
    the others still get it and the caller never sees the error.
    """

    def __init__(self, *sinks: AuditSink) -> None:
        self.sinks: list[AuditSink] = list(sinks)
        self.errors = 0

    def add(self, sink: AuditSink) -> None:
        """Give every later record to ``sink`` too."""
        self.sinks.append(sink)

    def record(self, rec: AuditRecord) -> None:
        for sink in self.sinks:
            try:
                sink.record(rec)
            except Exception as exc:  # noqa: BLE001 - an audit sink must never fail the audited request
                self.errors += 1
                log.error("audit_sink_failed", sink=type(sink).__name__, action=rec.action, error=repr(exc))
