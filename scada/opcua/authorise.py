"""Every service authorised: the session's identity, role and communes checked; subscriptions their
owner's only; RegisterServer refused; refusals audited.

Where each check sits (README "What each service checks"):

* **the service gate** (:func:`gate`, before asyncua handles any request): each service needs
  one :class:`Permission` (:data:`SERVICE_PERMISSIONS`); AddNodes, DeleteNodes, AddReferences and
  DeleteReferences are refused to everyone (``BadUserAccessDenied``), RegisterServer and
  RegisterServer2 too, with or without a session (``BadServiceUnsupported``: this server is no
  discovery server, so FindServers lists only itself). A refusal is a ServiceFault of the whole
  request, audited.
* **each method of a Call** (:func:`check_method`): the condition methods need their own permission
  (:data:`scada.opcua.conditions.methods.METHOD_PERMISSIONS`), checked again with the device's
  commune by the method itself; a method of our namespace listed in
  ``Authorisation.method_permissions`` needs its own (the work orders' methods: ``DISPATCH``,
  scada/opcua/operations.py); any other method needs ``COMMAND``.
* **subscriptions** (scada/opcua/asyncua_private/ownership.py): only the owner session may touch
  its subscriptions (another's answers ``BadSubscriptionIdInvalid``, as if unknown); a
  TransferSubscriptions only to a session of the same user (``BadUserAccessDenied``).
* **HistoryRead**: the gate (``HISTORY``), then per node the commune (scada/opcua/history.py).
* **communes not shown** (``see_other_communes: false``): Browse, TranslateBrowsePaths, Read,
  CreateMonitoredItems and condition events leave them out (scada/opcua/visibility.py).

Everything below the gate reads the request's :class:`RequestContext` with
:func:`scada.security.context.current`. Each check fails closed: an error in it refuses.
Refusals are audited at a bounded rate per client, target and code (the rest counted in one
summary record per window: scada/security/refusal_audit.py), allowed acts every one.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import structlog
from asyncua import Server, ua

from scada.opcua.asyncua_private.ownership import hook_ownership
from scada.opcua.asyncua_private.request_context import Buffer, ServiceError, hook_method_calls, hook_requests
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import StatusCode
from scada.opcua.visibility import install_visibility
from scada.security.audit import AuditSink, record_of
from scada.security.context import RequestContext, current
from scada.security.identity import NOBODY, Identity, Permission
from scada.security.refusal_audit import refusal_audit_for
from scada.security.settings import SecuritySettings

log = structlog.get_logger("scada.security")

OI = ua.ObjectIds
SC = ua.StatusCodes
P = Permission

# The Permission each service needs, by its request's encoding id (ns 0). None: no identity
# needed (the session's own life cycle and discovery, before or while logging in).
SERVICE_PERMISSIONS: dict[int, Permission | None] = {
    OI.CreateSessionRequest_Encoding_DefaultBinary: None,
    OI.ActivateSessionRequest_Encoding_DefaultBinary: None,
    OI.CloseSessionRequest_Encoding_DefaultBinary: None,
    OI.CloseSecureChannelRequest_Encoding_DefaultBinary: None,
    OI.FindServersRequest_Encoding_DefaultBinary: None,
    OI.GetEndpointsRequest_Encoding_DefaultBinary: None,
    OI.ReadRequest_Encoding_DefaultBinary: P.READ,
    OI.BrowseRequest_Encoding_DefaultBinary: P.BROWSE,
    OI.BrowseNextRequest_Encoding_DefaultBinary: P.BROWSE,
    OI.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary: P.BROWSE,
    OI.RegisterNodesRequest_Encoding_DefaultBinary: P.READ,
    OI.UnregisterNodesRequest_Encoding_DefaultBinary: P.READ,
    OI.HistoryReadRequest_Encoding_DefaultBinary: P.HISTORY,
    OI.HistoryUpdateRequest_Encoding_DefaultBinary: P.COMMAND,  # refused further down (read-only history)
    OI.WriteRequest_Encoding_DefaultBinary: P.COMMAND,  # then each variable's AccessLevel (read-only today)
    OI.CallRequest_Encoding_DefaultBinary: None,  # per method: check_method
    OI.CreateSubscriptionRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.ModifySubscriptionRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.DeleteSubscriptionsRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.TransferSubscriptionsRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.SetPublishingModeRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.PublishRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.RepublishRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.CreateMonitoredItemsRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.ModifyMonitoredItemsRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.DeleteMonitoredItemsRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.SetMonitoringModeRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
    OI.SetTriggeringRequest_Encoding_DefaultBinary: P.SUBSCRIBE,
}

# The Permission of each condition method (Part 9), by its method NodeId (ns 0); the method itself
# checks it again with the condition's commune (scada/opcua/conditions/methods.py). A method not
# listed here needs COMMAND.
METHOD_PERMISSIONS: dict[int, Permission] = {
    OI.AcknowledgeableConditionType_Acknowledge: P.ACKNOWLEDGE,
    OI.AcknowledgeableConditionType_Confirm: P.ACKNOWLEDGE,
    OI.ConditionType_AddComment: P.COMMENT,
    OI.ConditionType_ConditionRefresh: P.EVENTS,
    OI.ConditionType_ConditionRefresh2: P.EVENTS,
    OI.ConditionType_Enable: P.REMOVE_FROM_SERVICE,
    OI.ConditionType_Disable: P.REMOVE_FROM_SERVICE,
    OI.AlarmConditionType_Reset: P.RESET,
    OI.AlarmConditionType_Reset2: P.RESET,
    OI.AlarmConditionType_RemoveFromService: P.REMOVE_FROM_SERVICE,
    OI.AlarmConditionType_RemoveFromService2: P.REMOVE_FROM_SERVICE,
    OI.AlarmConditionType_PlaceInService: P.REMOVE_FROM_SERVICE,
    OI.AlarmConditionType_PlaceInService2: P.REMOVE_FROM_SERVICE,
} | {
    getattr(OI, prefix + name + suffix): P.SHELVE
    for prefix in ("ShelvedStateMachineType_", "AlarmConditionType_ShelvingState_")
    for name in ("TimedShelve", "OneShotShelve", "Unshelve")
    for suffix in ("", "2")
    if hasattr(OI, prefix + name + suffix)
}

# The condition methods audit their own act, allowed or refused ("alarm_action"); ConditionRefresh
# is audited as a call like any other method.
_SELF_AUDITED = frozenset(METHOD_PERMISSIONS) - {OI.ConditionType_ConditionRefresh, OI.ConditionType_ConditionRefresh2}

# The Permission of each alarm action, by the name the condition methods give it.
ACTION_PERMISSIONS: dict[str, Permission] = {
    "Acknowledge": P.ACKNOWLEDGE,
    "AddComment": P.COMMENT,
    "TimedShelve": P.SHELVE,
    "OneShotShelve": P.SHELVE,
    "Unshelve": P.SHELVE,
    "Reset": P.RESET,
    "RemoveFromService": P.REMOVE_FROM_SERVICE,
    "PlaceInService": P.REMOVE_FROM_SERVICE,
}

# Refused to everyone: the address space is the configuration's, never a client's.
NEVER: dict[int, int] = {
    OI.AddNodesRequest_Encoding_DefaultBinary: SC.BadUserAccessDenied,
    OI.DeleteNodesRequest_Encoding_DefaultBinary: SC.BadUserAccessDenied,
    OI.AddReferencesRequest_Encoding_DefaultBinary: SC.BadUserAccessDenied,
    OI.DeleteReferencesRequest_Encoding_DefaultBinary: SC.BadUserAccessDenied,
    # Not a discovery server: nothing to register with it (and no session needed to try).
    OI.RegisterServerRequest_Encoding_DefaultBinary: SC.BadServiceUnsupported,
    OI.RegisterServer2Request_Encoding_DefaultBinary: SC.BadServiceUnsupported,
}

_NAMES = {
    v: k.removesuffix("Request_Encoding_DefaultBinary")
    for k, v in vars(OI).items()
    if k.endswith("Request_Encoding_DefaultBinary")
}


def audit_value(value: Any) -> Any:
    """A method argument as audit records show it (JSON-friendly: bytes as hex, text as text, a
    NaN or an infinity as text)."""
    value = getattr(value, "Value", value) if isinstance(value, ua.Variant) else value
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf", "-inf": the audit's canonical JSON stays JSON
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def service_name(kind: int) -> str:
    """The name of a service from its request's encoding id ("Read", "RegisterServer2"...)."""
    return _NAMES.get(kind, f"i={kind}")


class Authorisation:
    """What install_authorisation put on one server: its settings and audit sink."""

    def __init__(self, settings: SecuritySettings, audit: AuditSink) -> None:
        self.settings = settings
        self.audit = audit
        # Refusals at a bounded rate per client, target and code (a flood fills neither the trail
        # nor its queues); allowed acts go to ``audit`` directly, never aggregated.
        self.refusals = refusal_audit_for(audit)
        # Methods of our namespace that audit their own act (the commands and group actions:
        # the core's "command" / "group_command" records): no "call" record again.
        self.self_audited: set[ua.NodeId] = set()
        # Methods of our namespace that need another Permission than COMMAND (the work orders'
        # methods need DISPATCH), by method NodeId; their owner adds and removes them.
        self.method_permissions: dict[ua.NodeId, Permission] = {}

    def refuse(
        self, action: str, target: str, arguments: Any, code: int, context: RequestContext | None = None
    ) -> None:
        """Audit a refusal, at most so many per client, target and code a minute, the others
        counted in one summary record (scada/security/refusal_audit.py). Never raises: a failing
        sink must not turn a refusal into an error."""
        self._record(self.refusals, action, target, arguments, code, context)

    def record(
        self, action: str, target: str, arguments: Any, code: int, context: RequestContext | None = None
    ) -> None:
        """Audit an act and its result (a status code), every one."""
        self._record(self.audit, action, target, arguments, code, context)

    @staticmethod
    def _record(
        sink: AuditSink, action: str, target: str, arguments: Any, code: int, context: RequestContext | None
    ) -> None:
        try:
            sink.record(record_of(action, target, arguments, StatusCode(code).name, context))
        except Exception as exc:  # noqa: BLE001 - the sink's own contract; logged, the act stands
            log.error("audit_record_failed", action=action, target=target, error=repr(exc))

    def gate(self, ctx: RequestContext, kind: int, body: Buffer) -> None:
        """The service gate (see the module docstring): returns, or raises ServiceError."""
        code = NEVER.get(kind)
        if code is None:
            if kind not in SERVICE_PERMISSIONS:
                code = SC.BadServiceUnsupported  # a service we do not know is one we do not allow
            else:
                need = SERVICE_PERMISSIONS[kind]
                if need is None or need in ctx.identity.permissions:
                    return
                code = SC.BadUserAccessDenied
        action = "register_server" if kind in _REGISTER else "denied"
        self.refuse(action, service_name(kind), {}, code, ctx)
        raise ServiceError(code)

    def check_method(self, method: ua.CallMethodRequest) -> ua.StatusCode | None:
        """A method of a Call: its permission (the condition methods check their commune too)."""
        ctx = current()
        if ctx is None:
            return None  # the server's own call
        mid = method.MethodId
        need = METHOD_PERMISSIONS.get(mid.Identifier) if mid.NamespaceIndex == 0 else self.method_permissions.get(mid)
        if (need or P.COMMAND) in ctx.identity.permissions:
            return None
        self.refuse(
            "call",
            mid.to_string(),  # a NodeId: the audit events' MethodId (scada/opcua/audit_events.py)
            {"object": method.ObjectId.to_string(), "arguments": [audit_value(v) for v in method.InputArguments or []]},
            SC.BadUserAccessDenied,
            ctx,
        )
        return StatusCode(SC.BadUserAccessDenied)

    def method_done(self, method: ua.CallMethodRequest, result: ua.CallMethodResult) -> None:
        """An allowed method ran: audited with its result ("call"), except the alarm methods,
        which audit their own act (conditions/methods.py: "alarm_action"), and the commands and
        group actions (``self_audited``: the core's pipeline audits them)."""
        ctx = current()
        mid = method.MethodId
        if ctx is None or (mid.NamespaceIndex == 0 and mid.Identifier in _SELF_AUDITED) or mid in self.self_audited:
            return
        arguments = {
            "object": method.ObjectId.to_string(),
            "arguments": [audit_value(v) for v in method.InputArguments or []],
        }
        self.record("call", mid.to_string(), arguments, result.StatusCode.value, ctx)

    def subscription_refused(self, service: str, sub_id: int, code: int) -> None:
        self.refuse("subscription", f"subscription {sub_id}", {"service": service}, code)


_REGISTER = (OI.RegisterServerRequest_Encoding_DefaultBinary, OI.RegisterServer2Request_Encoding_DefaultBinary)

_INSTALLED: weakref.WeakKeyDictionary[Server, Authorisation] = weakref.WeakKeyDictionary()


def authorisation(server: Server) -> Authorisation | None:
    """The server's authorisation, or None when it has no security layer (every act allowed)."""
    return _INSTALLED.get(server)


def identify(session: Any) -> Identity:
    """A session's identity; one without ours (not logged in yet, or another user manager's):
    nobody, who may do nothing but log in."""
    if session is None:
        return NOBODY
    ident = identity_of(session)
    return ident if ident is not None else NOBODY


def _owner(session: Any) -> str | None:
    ident = identity_of(session)
    return None if ident is None or ident.anonymous else ident.user


def _may_take(session: Any, owner: str | None) -> bool:
    """TransferSubscriptions (Part 4 5.13.7): to a session of the same (authenticated) user only."""
    ident = identity_of(session)
    return owner is not None and ident is not None and not ident.anonymous and ident.user == owner


async def install_authorisation(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer)."""
    if settings is None:
        return
    authz = Authorisation(settings, audit)
    _INSTALLED[server] = authz
    hook_requests(server, identify, authz.gate)
    hook_method_calls(server, authz.check_method, authz.method_done)
    hook_ownership(server, _owner, _may_take, authz.subscription_refused)
    install_visibility(server)  # the communes a user does not see (see_other_communes: false)
