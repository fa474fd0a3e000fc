"""The conditions' methods: Part 9 method calls turned into the alarm engine's operator actions.

The standard method NodeIds, called with the condition (or its ShelvingState) as ObjectId:
Acknowledge, AddComment, TimedShelve(2), OneShotShelve(2), Unshelve(2), Reset(2) (a latched
alarm), RemoveFromService(2) / PlaceInService(2); ConditionRefresh(2) on the ConditionType
(sent by :mod:`scada.opcua.conditions.delivery`). A refused action is a Bad status code of the
call, never an exception (BadEventIdUnknown, BadConditionBranchAlreadyAcked,
BadConditionAlreadyShelved, BadConditionNotShelved, BadShelvingTimeOutOfRange,
BadInvalidState...). Confirm, Enable and Disable answer BadNotSupported.

**Who may act** (a server with a security layer, scada/opcua/authorise.py): each action needs its
permission (``ACTION_PERMISSIONS``) on the condition's device's commune, checked before anything
about the condition is said; refused: ``BadUserAccessDenied``. RemoveFromService needs a reason
(its Comment) and lasts a week at most (``MAX_OUT_OF_SERVICE_S``: the engine returns the alarm to
service then, as the user "server"). Every action, allowed or refused, is audited ("alarm_action"). **The user
journaled** is the authenticated user (the request's identity; ``<user>@<client address>`` for an
anonymous one), never anything the client chose (its SessionName); without a security layer, the
session's user name when its user manager gave one, else ``opcua:anonymous@<client address>``.

An engine action may be a coroutine (a front process's AlarmMirror asks the core): it is
awaited, and its refusals (IllegalTransition, KeyError, ValueError) map to the same status
codes as the engine's own.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import Any

import structlog
from asyncua import ua

from scada.alarms.states import IllegalTransition, State
from scada.opcua.asyncua_private.sessions import hook_sessions
from scada.opcua.authorise import ACTION_PERMISSIONS, authorisation
from scada.opcua.conditions.events import ConditionEvents
from scada.opcua.conditions.nodes import MAX_SHELVE_MS
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.security.context import current

log = structlog.get_logger("scada.opcua")

OI = ua.ObjectIds
SC = ua.StatusCodes

# The calling session of the method being run (set around InternalSession.call).
_CALLER: contextvars.ContextVar[Any] = contextvars.ContextVar("opcua_caller", default=None)


class ConditionMethods(ConditionEvents):
    """The method callbacks (asyncua: callback(ObjectId, *input Variants) -> outputs | StatusCode)."""

    async def _m_refresh(self, parent: ua.NodeId, *args: Any) -> Any:
        """ConditionRefresh(2): :class:`scada.opcua.conditions.delivery.ConditionDelivery`'s."""
        raise NotImplementedError

    def _user(self) -> str:
        """Who acts, for the journal: never a name the client chose (see the module docstring)."""
        ctx = current()
        if ctx is not None:
            ident = ctx.identity
            return f"{ident.user}@{ctx.client_address}" if ident.anonymous else ident.user
        session = _CALLER.get()
        if session is None:
            return "opcua:server"
        known = identity_of(session)
        if known is not None:
            return known.user
        name = getattr(getattr(session, "user", None), "name", None)
        if name:
            return str(name)
        peer = session.name
        addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        return f"opcua:anonymous@{addr}"

    def _commune(self, i: int) -> str:
        eng = self.engine
        return str(eng.config.devices[int(eng.inst_dev[i])].commune)

    def _refused(self, name: str, i: int, args: Any, reason_needed: bool = False) -> ua.StatusCode | None:
        """Why the request's identity may not do ``name`` on instance ``i`` (audited), or None.

        No security layer, or the server's own act (no request): allowed.
        """
        authz = authorisation(self.server)
        ctx = current()
        if authz is None or ctx is None:
            return None
        commune = self._commune(i)
        code = 0
        if not ctx.identity.allows(ACTION_PERMISSIONS[name], commune):
            code = SC.BadUserAccessDenied
        elif reason_needed and not (self._str(args[0]).strip() if args else ""):
            code = SC.BadInvalidArgument  # out of service without a reason: nobody would know why
        if not code:
            return None
        alarm, device = self._names_of(i)
        authz.refuse("alarm_action", f"{alarm}@{device}", self._audit_args(name, commune, args), code, ctx)
        return StatusCode(code)

    def _audit_args(self, name: str, commune: str, args: Any) -> dict[str, Any]:
        return {
            "method": name,
            "commune": commune,
            "arguments": [self._str(a) for a in args if not isinstance(a, bool)],
        }

    def _audit_done(self, name: str, alarm: str, device: str, args: Any, code: int) -> None:
        authz = authorisation(self.server)
        ctx = current()
        if authz is not None and ctx is not None:
            commune = str(self.engine.config.device(device).commune)
            authz.record("alarm_action", f"{alarm}@{device}", self._audit_args(name, commune, args), code, ctx)

    @staticmethod
    def _str(arg) -> str:
        value = getattr(arg, "Value", arg)
        if isinstance(value, ua.LocalizedText):
            return value.Text or ""
        return "" if value is None else str(value)

    def _instance(self, parent: ua.NodeId) -> int | None:
        return None if self.space is None else self.space.instance_of(parent)

    def _not_a_condition(self, parent: ua.NodeId) -> ua.StatusCode:
        # The engine's server alarms have no instance: nothing to acknowledge, shelve or reset.
        return StatusCode(SC.BadNotSupported if parent in self._system_nodes else SC.BadNodeIdUnknown)

    def _known_event(self, i: int, event_id) -> bool:
        dyn = self._dyn.get(i)
        return dyn is not None and isinstance(event_id, bytes) and event_id in dyn.event_ids

    async def _act(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an engine action, awaited when it is a coroutine (a mirror's request to the core);
        its errors become status codes (see the callers)."""
        alarm, device, rest = args[0], args[1], args[3:]
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except IllegalTransition:
            self._audit_done(name, alarm, device, rest, SC.BadInvalidState)
            raise
        except KeyError as exc:
            log.warning("opcua_alarm_method_refused", method=name, error=str(exc))
            return StatusCode(SC.BadNodeIdUnknown)
        except ValueError:
            self._audit_done(name, alarm, device, rest, SC.BadInvalidArgument)
            raise
        log.info("opcua_alarm_method", method=name, alarm=alarm, device=device, user=args[2])
        self._audit_done(name, alarm, device, rest, SC.Good)
        return []

    async def _guard(self, name: str, fn, parent, args):
        try:
            return await fn(parent, args)
        except IllegalTransition:
            return StatusCode(SC.BadInvalidState)
        except Exception as exc:  # noqa: BLE001 - a client must get a status, the session must live
            log.error("opcua_alarm_method_failed", method=name, object=parent.to_string(), error=repr(exc))
            return StatusCode(SC.BadInternalError)

    async def _m_not_supported(self, parent: ua.NodeId, *args):
        return StatusCode(SC.BadNotSupported)

    async def _m_acknowledge(self, parent: ua.NodeId, *args):
        return await self._guard("Acknowledge", self._acknowledge, parent, args)

    def _event_instance(self, name: str, parent, args) -> int | ua.StatusCode:
        """The instance a method with (EventId, Comment) arguments is called on, or why it cannot be."""
        i = self._instance(parent)
        if i is None:
            return self._not_a_condition(parent)
        refused = self._refused(name, i, args[1:])
        if refused is not None:
            return refused
        if len(args) < 2:
            return StatusCode(SC.BadArgumentsMissing)
        if not self._known_event(i, args[0].Value):
            return StatusCode(SC.BadEventIdUnknown)
        return i

    async def _acknowledge(self, parent, args):
        i = self._event_instance("Acknowledge", parent, args)
        if isinstance(i, ua.StatusCode):
            return i
        if int(self.engine.state[i]) not in (State.UNACK_ACTIVE, State.RTN_UNACK):
            return StatusCode(SC.BadConditionBranchAlreadyAcked)
        try:
            return await self._act("Acknowledge", self.engine.ack, *self._names_of(i), self._user(), self._str(args[1]))
        except IllegalTransition:
            return StatusCode(SC.BadConditionBranchAlreadyAcked)

    async def _m_add_comment(self, parent: ua.NodeId, *args):
        return await self._guard("AddComment", self._add_comment, parent, args)

    async def _add_comment(self, parent, args):
        i = self._event_instance("AddComment", parent, args)
        if isinstance(i, ua.StatusCode):
            return i
        text = self._str(args[1]).strip()
        if not text:
            return StatusCode(SC.BadInvalidArgument)
        return await self._act("AddComment", self.engine.note, *self._names_of(i), self._user(), text)

    async def _m_timed_shelve(self, parent: ua.NodeId, *args):
        return await self._guard("TimedShelve", self._shelve, parent, (False, *args))

    async def _m_one_shot_shelve(self, parent: ua.NodeId, *args):
        return await self._guard("OneShotShelve", self._shelve, parent, (True, *args))

    async def _shelve(self, parent, args):
        one_shot, *args = args
        i = self._instance(parent)
        if i is None:
            return self._not_a_condition(parent)
        refused = self._refused("OneShotShelve" if one_shot else "TimedShelve", i, args)
        if refused is not None:
            return refused
        if one_shot:
            ms, comment = MAX_SHELVE_MS, self._str(args[0]) if args else ""
        else:
            if not args:
                return StatusCode(SC.BadArgumentsMissing)
            try:
                ms = float(args[0].Value)
            except (TypeError, ValueError):
                return StatusCode(SC.BadTypeMismatch)
            comment = self._str(args[1]) if len(args) > 1 else ""
        if self.engine.state[i] == State.SHELVED:
            return StatusCode(SC.BadConditionAlreadyShelved)
        if not 0 < ms <= MAX_SHELVE_MS:
            return StatusCode(SC.BadShelvingTimeOutOfRange)
        # The engine wants a reason; TimedShelve / OneShotShelve (v1) carry none.
        method = "OneShotShelve" if one_shot else "TimedShelve"
        reason = comment.strip() or f"{method} via OPC UA (no reason given)"
        try:
            return await self._act(
                method, self.engine.shelve, *self._names_of(i), self._user(), reason, ms / 1000.0, one_shot
            )
        except ValueError:
            return StatusCode(SC.BadShelvingTimeOutOfRange)

    def _operator_method(self, name: str, action, required: State | None = None, refusal: int = 0):
        """An OPC UA method that is one engine action on the condition it is called on.

        ``required``: the state the condition must be in, else ``refusal`` (a Bad status code).
        The method's optional argument is the operator's comment.
        """

        async def act(parent, args):
            i = self._instance(parent)
            if i is None:
                return self._not_a_condition(parent)
            refused = self._refused(name, i, args, reason_needed=name == "RemoveFromService")
            if refused is not None:
                return refused
            if required is not None and self.engine.state[i] != required:
                return StatusCode(refusal)
            return await self._act(name, action, *self._names_of(i), self._user(), self._str(args[0]) if args else "")

        async def method(parent: ua.NodeId, *args):
            return await self._guard(name, act, parent, args)

        return method

    def _bind_methods(self) -> None:
        engine = self.engine
        reset = self._operator_method("Reset", engine.reset)
        remove = self._operator_method("RemoveFromService", engine.remove_from_service)
        place = self._operator_method(
            "PlaceInService", engine.return_to_service, State.OUT_OF_SERVICE, SC.BadInvalidState
        )
        unshelve = self._operator_method("Unshelve", engine.unshelve, State.SHELVED, SC.BadConditionNotShelved)
        table = {
            OI.AcknowledgeableConditionType_Acknowledge: self._m_acknowledge,
            OI.ConditionType_AddComment: self._m_add_comment,
            OI.ConditionType_ConditionRefresh: self._m_refresh,
            OI.ConditionType_ConditionRefresh2: self._m_refresh,
            OI.AcknowledgeableConditionType_Confirm: self._m_not_supported,
            OI.ConditionType_Enable: self._m_not_supported,
            OI.ConditionType_Disable: self._m_not_supported,
            OI.AlarmConditionType_Reset: reset,
            OI.AlarmConditionType_Reset2: reset,
            OI.AlarmConditionType_RemoveFromService: remove,
            OI.AlarmConditionType_RemoveFromService2: remove,
            OI.AlarmConditionType_PlaceInService: place,
            OI.AlarmConditionType_PlaceInService2: place,
        }
        for name, fn in (
            ("TimedShelve", self._m_timed_shelve),
            ("OneShotShelve", self._m_one_shot_shelve),
            ("Unshelve", unshelve),
        ):
            for prefix in ("ShelvedStateMachineType_", "AlarmConditionType_ShelvingState_"):
                for suffix in ("", "2"):
                    mid = getattr(OI, prefix + name + suffix, None)
                    if mid is not None:
                        table[mid] = fn
        for mid, fn in table.items():
            if NodeId(mid) in self.aspace:
                self.aspace.add_method_callback(NodeId(mid), fn)

    def _hook_sessions(self) -> None:
        """Make the calling session known to method callbacks (asyncua passes only the ObjectId),
        and remember each session's SessionName for the journal."""
        hook_sessions(self.server, _CALLER, self._session_names)
