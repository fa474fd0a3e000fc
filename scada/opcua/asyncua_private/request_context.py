"""asyncua internals: the request being served, and a gate in front of every request and every
method of a Call (scada/opcua/authorise.py); checked by tests/unit/test_asyncua_private_request_context.py.

Relied on:

* ``UaProcessor._process_message(self, typeid, requesthdr, seqhdr, body)``: called once per
  decoded request of a connection, with the request's type NodeId and its undecoded parameters
  (a ``Buffer``); whatever it awaits (the session's services, method callbacks, the HistoryRead
  handler, the subscription service) runs in its context. ``UaProcessor.process_message``
  answers a ``ServiceError`` raised there with a ServiceFault of its code, any other exception
  with ``BadInternalError`` (a gate that fails refuses).
* ``UaProcessor``: ``iserver``, ``session``, ``name`` (the peer address),
  ``_connection.security_policy`` (``Mode``, ``URI``, ``peer_certificate``).
* ``iserver.method_service.call(methods)``: every Call of a client, one list of
  ``CallMethodRequest`` in, one ``CallMethodResult`` each out.
* ``Server._permission_ruleset``: the ruleset ``Server.start`` gives every endpoint's security
  policy (asyncua's own per-role service check, run after the gate). The gate decides instead: its
  ruleset lets through what the gate let through (asyncua's would refuse everything to a session
  of ``UserRole.Anonymous``, an anonymous Observer included, and audit nothing).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor

from scada.security.context import REQUEST, RequestContext
from scada.security.identity import Identity

__all__ = [
    "SESSION",
    "Buffer",
    "Gate",
    "MethodCheck",
    "ServiceError",
    "hook_method_calls",
    "hook_requests",
]

# The asyncua session of the request being served (None before CreateSession, and outside a
# client's request): the subscription owner checks compare it with a subscription's.
SESSION: ContextVar[InternalSession | None] = ContextVar("scada_request_session", default=None)

# Given the request's context, its type (the Identifier of its ns=0 encoding NodeId) and its
# undecoded parameters (read a copy): returns to let it through, raises ServiceError to refuse.
Gate = Callable[[RequestContext, int, Buffer], None]

# One method of a Call: None lets it through, a StatusCode is its result (it is not called).
MethodCheck = Callable[[ua.CallMethodRequest], ua.StatusCode | None]

_GATE = "_scada_request_gate"  # on the InternalServer: (identify, gate) of a server with security
_CONTEXT = "_scada_request_context"  # on a UaProcessor: (session, user, thumbprint source, context)
_WRAPPED = "_scada_request_context_hooked"  # on UaProcessor, once its _process_message is wrapped
_METHOD_CHECK = "_scada_method_check"  # on a server's method service: its check


def hook_requests(server: Server, identify: Callable[[Any], Identity], gate: Gate) -> None:
    """Serve each request of ``server``'s clients with :data:`scada.security.context.REQUEST`
    (and :data:`SESSION`) set, after ``gate`` let it through.

    ``identify(session)`` gives the identity of an asyncua session (None before CreateSession).
    The wrapper of ``UaProcessor._process_message`` is installed once per process; it does
    nothing more than one attribute lookup for servers without a gate. Installing again on the
    same server replaces its gate (idempotent). Install before the server starts.
    """
    setattr(server.iserver, _GATE, (identify, gate))
    server._permission_ruleset = _GateDecides()
    # Marked on the class, not on the function: other hooks wrap _process_message over ours.
    if getattr(UaProcessor, _WRAPPED, False):
        return
    original = UaProcessor._process_message

    # wraps: what reads asyncua's source or signature (contract tests) still reads asyncua's.
    @functools.wraps(original)
    async def _process_message(self: UaProcessor, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        hooks = getattr(self.iserver, _GATE, None)
        if hooks is None:
            return await original(self, typeid, requesthdr, seqhdr, body)
        ctx = _context(self, hooks[0])
        token, stoken = REQUEST.set(ctx), SESSION.set(self.session)
        try:
            # Only ns=0 requests exist; anything else is refused by asyncua (BadServiceUnsupported).
            kind = typeid.Identifier if typeid.NamespaceIndex == 0 and isinstance(typeid.Identifier, int) else -1
            hooks[1](ctx, kind, body)
            return await original(self, typeid, requesthdr, seqhdr, body)
        finally:
            SESSION.reset(stoken)
            REQUEST.reset(token)

    setattr(UaProcessor, _WRAPPED, True)
    UaProcessor._process_message = _process_message  # type: ignore[method-assign]


class _GateDecides(SimpleRoleRuleset):
    """asyncua's per-role service check, left to the gate (which ran first, and audits)."""

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return True


def _context(proc: UaProcessor, identify: Callable[[Any], Identity]) -> RequestContext:
    """The processor's request context, made again only when its session or user changed (a
    Publish-heavy client must not pay a dataclass and a SHA-1 per request)."""
    session = proc.session
    user = getattr(session, "user", None)
    policy = proc._connection.security_policy
    cert = policy.peer_certificate
    cached = getattr(proc, _CONTEXT, None)
    if cached is not None and cached[0] is session and cached[1] is user and cached[2] is cert:
        return cached[3]
    peer = proc.name
    address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "")
    mode = getattr(policy, "Mode", ua.MessageSecurityMode.None_)
    ctx = RequestContext(
        identity=identify(session),
        session_id="" if session is None else session.session_id.to_string(),
        client_address=address,
        security_mode="None" if mode == ua.MessageSecurityMode.None_ else ua.MessageSecurityMode(mode).name,
        security_policy=str(policy.URI).rsplit("#", 1)[-1],
        cert_thumbprint=hashlib.sha1(cert).hexdigest() if cert else "",
    )
    setattr(proc, _CONTEXT, (session, user, cert, ctx))
    return ctx


def hook_method_calls(
    server: Server, check: MethodCheck, done: Callable[[ua.CallMethodRequest, ua.CallMethodResult], None] | None = None
) -> None:
    """Ask ``check`` about each method of every Call before it runs (``method_service.call``);
    tell ``done(method, result)`` each allowed method's result once it ran.

    A refused method gets the StatusCode ``check`` returned and is not called; the others run in
    order, as asyncua runs them. Idempotent per server (replaces the check and ``done``).
    """
    service = server.iserver.method_service
    # The check and the mark are on the service: another hook may wrap its call over ours.
    first = getattr(service, _METHOD_CHECK, None) is None
    setattr(service, _METHOD_CHECK, (check, done))
    if not first:
        return
    call: Callable[[list[ua.CallMethodRequest]], Awaitable[list[ua.CallMethodResult]]] = service.call

    async def checked_call(methods: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        judge, told = getattr(service, _METHOD_CHECK)
        verdicts = [judge(m) for m in methods]
        allowed = [m for m, v in zip(methods, verdicts) if v is None]
        ran = await call(allowed) if allowed else []
        if told is not None:
            for m, r in zip(allowed, ran):
                told(m, r)
        results = iter(ran)
        return [next(results) if v is None else ua.CallMethodResult(StatusCode=v) for v in verdicts]

    service.call = checked_call  # type: ignore[method-assign]
