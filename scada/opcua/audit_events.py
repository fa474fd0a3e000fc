"""OPC UA audit events (Part 5) on the Server object for each audited act (AuditActivateSessionEventType, AuditWriteUpdateEventType, AuditUpdateMethodEventType).

:func:`install_audit_events` sets ``Server.Auditing`` true and adds an :class:`AuditEvents` sink
to the server's audit sink (an :class:`~scada.security.audit.AuditFanout`: the records still go
to the trail as before). Each record of a matching action becomes one event:

* ``activate_session`` -> AuditActivateSessionEventType (the user token is described by its
  type and user name only: never a password);
* ``write`` -> AuditWriteUpdateEventType (the attribute and the old and new values when the
  record's arguments carry them as ``{"attribute", "old", "value"}``);
* ``call`` and ``alarm_action`` -> AuditUpdateMethodEventType (the method from the record's
  target when it is a NodeId, the input arguments, the status code).

Only to the sessions that may see the audit (:func:`may_see`: the AUDIT permission, held by
Supervisor and SecurityAdmin; an alarm action's event only where its commune is seen): a login,
its address and certificate, other communes' actions are not every Observer's business. A
failed login's event carries no user name (what was typed may be a password).

Delivered by us, not by asyncua's ``EventGenerator.trigger``: asyncua matches a where clause's
``OfType`` by the exact type, so a client subscribed to AuditEventType (the usual filter of an
HMI's audit view) would get none of these subtypes. The events go, with the same
:class:`~scada.opcua.asyncua_private.events.SubtypeWhere` as the conditions' events, to the
event items on the Server object. Records are queued (bounded, dropped and counted beyond)
and sent by a short-lived task: ``record`` never blocks nor raises.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import structlog
from asyncua import Server, ua

from scada.opcua.asyncua_private.events import SubtypeWhere
from scada.opcua.asyncua_private.events import event_items as subscription_event_items
from scada.opcua.asyncua_private.nodes import address_space
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.asyncua_private.subscriptions import monitored_item, subscriptions
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.security.audit import AuditRecord, AuditSink
from scada.security.identity import Identity, Permission
from scada.security.settings import SecuritySettings

log = structlog.get_logger("scada.opcua")

OI = ua.ObjectIds
SERVER = NodeId(OI.Server)
# Action -> (event type, SourceName as Part 5 names the service)
EVENT_TYPES: dict[str, tuple[int, str]] = {
    "activate_session": (OI.AuditActivateSessionEventType, "Session/ActivateSession"),
    "write": (OI.AuditWriteUpdateEventType, "Attribute/Write"),
    "call": (OI.AuditUpdateMethodEventType, "Method/Call"),
    "alarm_action": (OI.AuditUpdateMethodEventType, "Method/Call"),
}
MAX_QUEUED = 1000  # records waiting for their events: a storm of refusals costs bounded memory
SEVERITY_GOOD, SEVERITY_REFUSED = 100, 500
# The audit fields' data types that asyncua's event templates give as a NodeId: how they are encoded.
_BUILTIN = {
    OI.UtcTime: ua.VariantType.DateTime,
    OI.NumericRange: ua.VariantType.String,
    OI.UserIdentityToken: ua.VariantType.ExtensionObject,
    OI.SignedSoftwareCertificate: ua.VariantType.ExtensionObject,
}


class AuditEvents:
    """An AuditSink raising the audit event of each record of a matching action (module docstring)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._templates: dict[int, Any] = {}  # event type -> asyncua's event object for it
        self._ancestors: dict[int, frozenset[ua.NodeId]] = {}
        self._queue: deque[AuditRecord] = deque()
        self._task: asyncio.Task | None = None
        self.sent = 0  # events delivered to at least zero items (one per record)
        self.dropped = 0
        self.errors = 0

    async def install(self) -> None:
        """Make the event templates (once: asyncua browses the type's fields), set Server.Auditing."""
        for etype, _ in EVENT_TYPES.values():
            if etype not in self._templates:
                gen = await self.server.get_event_generator(etype, SERVER)
                self._templates[etype] = _typed(gen.event)
                self._ancestors[etype] = await _ancestors(self.server, NodeId(etype))
        await self.server.write_attribute_value(
            NodeId(OI.Server_Auditing), ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
        )

    def record(self, rec: AuditRecord) -> None:
        if rec.action not in EVENT_TYPES:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the server's loop: no event (the trail still has the record)
            self.dropped += 1
            return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("opcua_audit_events_dropped", dropped=self.dropped)
            return
        self._queue.append(rec)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._send_all(), name="opcua-audit-events")

    async def _send_all(self) -> None:
        while self._queue:
            rec = self._queue.popleft()
            try:
                await self._deliver(self.event_of(rec), _commune(rec))
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the events of the next
                self.errors += 1
                log.error("opcua_audit_event_failed", action=rec.action, error=repr(exc))

    def event_of(self, rec: AuditRecord) -> Any:
        """The event for ``rec`` (an asyncua event object carrying ``ancestors`` for OfType)."""
        etype, source = EVENT_TYPES[rec.action]
        ev = copy.copy(self._templates[etype])
        when = datetime.fromtimestamp(rec.time_ns / 1e9, UTC)
        refused = rec.result != "Good"
        # A failed login's user name is what the client typed (at times a password, or a probe
        # of which accounts exist): the trail keeps it, the events do not.
        user = "" if refused and rec.action == "activate_session" else rec.user
        fields: dict[str, Any] = {
            "EventId": uuid.uuid4().bytes,
            "Time": when,
            "ReceiveTime": datetime.now(UTC),
            "SourceNode": SERVER,
            "SourceName": source,
            "Severity": SEVERITY_REFUSED if refused else SEVERITY_GOOD,
            "Message": ua.LocalizedText(
                " ".join(filter(None, (rec.action, rec.target, f"by {user}: {rec.result}" if user else rec.result)))
            ),
            "ActionTimeStamp": when,
            "Status": not refused,
            "ServerId": self.server.get_application_uri(),
            "ClientAuditEntryId": "",
            "ClientUserId": user,
        }
        args = _arguments(rec.arguments)
        if etype == OI.AuditActivateSessionEventType:
            fields |= {
                "SessionId": _node_id(rec.session),
                "SecureChannelId": "",
                "ClientSoftwareCertificates": [],
                # Who, never how: the token's type and user name only (a password never leaves the login).
                "UserIdentityToken": ua.AnonymousIdentityToken()
                if user in ("", "anonymous")
                else ua.UserNameIdentityToken(UserName=user),
                "CurrentRoleIds": [
                    NodeId(getattr(OI, f"WellKnownRole_{r}")) for r in rec.roles if hasattr(OI, f"WellKnownRole_{r}")
                ],
            }
        elif etype == OI.AuditWriteUpdateEventType:
            given = args if isinstance(args, dict) else {}
            fields |= {
                "AttributeId": int(given.get("attribute", ua.AttributeIds.Value)),
                "IndexRange": "",
                "OldValue": _variant(given.get("old")),
                "NewValue": _variant(given.get("value", args)),
            }
        else:
            inputs = args if isinstance(args, list) else [args]
            status = getattr(ua.StatusCodes, rec.result, ua.StatusCodes.BadUnexpectedError)
            fields |= {
                "MethodId": _node_id(rec.target),
                "InputArguments": [_variant(a) for a in inputs],
                "OutputArguments": [],
                "StatusCodeId": StatusCode(status),
            }
        for name, value in fields.items():
            # A field of this type (asyncua's template lists them), with a type a Variant can take.
            if isinstance(ev.data_types.get(name), ua.VariantType):
                setattr(ev, name, value)
        ev.ancestors = self._ancestors[etype]
        return ev

    async def _deliver(self, ev: Any, commune: str | None = None) -> None:
        """To every event item on the Server object whose where clause the event passes, of a
        subscription whose session may see it (:func:`may_see`)."""
        aspace = address_space(self.server)
        sessions = {s.session_id: s for s in external_sessions(self.server)}
        for sub in list(subscriptions(self.server).values()):
            if not may_see(identity_of(sessions.get(sub.session_id)), commune):
                continue
            for mid in list(subscription_event_items(sub).get(SERVER, ())):
                md = monitored_item(sub, mid)
                if md is None or md.filter is None:
                    continue
                where = md.where_clause_evaluator
                if where is not None and not SubtypeWhere.of(where, aspace).eval(ev):
                    continue
                fields = ua.EventFieldList(
                    ClientHandle=md.client_handle, EventFields=ev.to_event_fields(md.filter.SelectClauses)
                )
                await sub.enqueue_event(mid, fields, md.queue_size)


def may_see(identity: Identity | None, commune: str | None = None) -> bool:
    """May a session of ``identity`` receive an audit event (of an act on a device of ``commune``)?
    Only with the AUDIT permission (Supervisor, SecurityAdmin: Part 18's audit roles) and, for
    an alarm action, a commune it sees. No identity of ours (not logged in): no."""
    if identity is None or Permission.AUDIT not in identity.permissions:
        return False
    return commune is None or identity.sees(commune)


def _commune(rec: AuditRecord) -> str | None:
    """The commune of an alarm action's device (its record's arguments say it); "" when they do
    not (shown only to those who see every commune), None for the other actions."""
    if rec.action != "alarm_action":
        return None
    args = _arguments(rec.arguments)
    commune = args.get("commune") if isinstance(args, dict) else None
    return str(commune) if commune else ""


async def install_audit_events(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer).

    ``audit`` must accept more sinks (``add``: an :class:`~scada.security.audit.AuditFanout`) for
    the events to see its records; another sink gets no events (logged).
    """
    if settings is None:
        return
    events = AuditEvents(server)
    await events.install()
    add = getattr(audit, "add", None)
    if add is None:
        log.warning("opcua_audit_events_not_composed", sink=type(audit).__name__, note="give HmiServer an AuditFanout")
        return
    add(events)


def _typed(event: Any) -> Any:
    """asyncua's template with a VariantType for each field: asyncua records the data type of
    some audit fields as its NodeId (ActionTimeStamp: UtcTime...), which no Variant can be made
    with (every event of the type would fail)."""
    for name, dtype in list(event.data_types.items()):
        if not isinstance(dtype, ua.VariantType):
            builtin = _BUILTIN.get(dtype.Identifier) if dtype.NamespaceIndex == 0 else None
            if builtin is not None:
                event.data_types[name] = builtin
            else:  # unknown: the field stays empty (never set) rather than break every event of the type
                log.warning("opcua_audit_event_field_untyped", field=name, data_type=str(dtype))
                setattr(event, name, None)
    return event


async def _ancestors(server: Server, etype: ua.NodeId) -> frozenset[ua.NodeId]:
    """The type and its supertypes (HasSubtype, inverse), for OfType."""
    out = {etype}
    node = server.get_node(etype)
    while True:
        parents = await node.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse)
        if not parents:
            return frozenset(out)
        node = parents[0]
        out.add(node.nodeid)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else []
    except ValueError:
        return text


def _node_id(text: str) -> ua.NodeId:
    if not text:
        return NodeId()
    try:
        return ua.NodeId.from_string(text)
    except (ua.UaError, ValueError, TypeError, AttributeError):  # not a NodeId (a name, a session's label): null
        return NodeId()


def _variant(value: Any) -> ua.Variant:
    """A JSON value as a Variant (objects as their canonical JSON text)."""
    if isinstance(value, dict):
        value = json.dumps(value, sort_keys=True, separators=(",", ":"))
    try:
        return ua.Variant(value)
    except Exception:  # noqa: BLE001 - a list of mixed types, an integer too large...: as text
        return ua.Variant(json.dumps(value, default=str))
