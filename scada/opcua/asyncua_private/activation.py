"""asyncua internals: session activation (logins); checked by tests/unit/test_asyncua_private_activation.py.

asyncua verifies a user in ``UserManager.get_user``, which it calls synchronously inside
``InternalSession.activate_session``: a slow password hash there would stop the whole event
loop. It also never compares the server nonce inside an encrypted password, accepts rsa-1_5
and plaintext passwords on any channel, makes sequential authentication tokens, and lets a
fresh connection re-attach any live session by its token as any user (research §0, findings
1, 3, 4). :func:`hook_activation` moves the verdict before asyncua's activation:

- each ActivateSession is decoded first and given, with what the channel says (client
  address, security mode and policy, client certificate), to an async ``check`` that returns
  the session's user or raises :class:`ServiceError` (the refusal's status code); meanwhile
  only this connection waits;
- asyncua's activation then runs with that verdict: the user manager installed here returns
  it (no password work on the loop), the password is not decrypted a second time;
- ``outcome`` hears how each activation ended (the user and Good, or the status code);
- authentication tokens are 32 random bytes, and the certificate of the channel that created
  each session is remembered (a re-attach must come with the same one);
- a session revoked with :func:`revoke_session` (its user disabled or removed) gets
  BadUserAccessDenied for any request (one attribute look-up per request of a hooked server).

Relied on: ``UaProcessor._process_message(typeid, requesthdr, seqhdr, body)``, its ``iserver``,
``session``, ``name`` (peer address) and ``_connection.security_policy`` (``Mode``, ``URI``,
``peer_certificate``), ``_connection._policies`` (the offered policy factories, ``matches(uri,
mode)``); ``InternalServer``: ``create_session``, ``lookup_external_session``,
``_external_sessions`` (keyed by ``auth_token``), ``set_user_manager``, ``decrypt_user_token``,
``private_key``; ``InternalSession``: ``auth_token``, ``nonce``, ``user``, ``state``,
``session_id``, ``is_activated``; ``Buffer.cur_pos``/``rewind``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import secrets
import struct
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError  # re-exported: a check refuses by raising it
from asyncua.crypto.permission_rules import User
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from scada.opcua.typed_ua import NodeId

__all__ = [
    "OAEP_SHA1",
    "OAEP_SHA256",
    "RSA15",
    "Activation",
    "ServiceError",
    "created_certificate",
    "decrypt_password",
    "hook_activation",
    "revoke_session",
]

OAEP_SHA1 = "http://www.w3.org/2001/04/xmlenc#rsa-oaep"
OAEP_SHA256 = "http://opcfoundation.org/UA/security/rsa-oaep-sha2-256"
RSA15 = "http://www.w3.org/2001/04/xmlenc#rsa-1_5"
_OAEP = {
    OAEP_SHA1: padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    OAEP_SHA256: padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
}
_ACTIVATE = ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary
_CREATE = ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary
_SESSION_SERVICES = frozenset({_ACTIVATE, _CREATE})
_MODES = {
    ua.MessageSecurityMode.None_: "None",
    ua.MessageSecurityMode.Sign: "Sign",
    ua.MessageSecurityMode.SignAndEncrypt: "SignAndEncrypt",
}


@dataclasses.dataclass
class Activation:
    """One ActivateSession request, before asyncua acts on it.

    ``session`` None: the token names no live session (asyncua answers BadSessionIdInvalid).
    ``reattach``: the session was created on another channel (Part 4 §6.7 reconnect, or a
    stolen token). ``token``: the UserIdentityToken (a null one is given as anonymous).
    ``claimed``: the user name the check settled on (for the outcome and the audit).
    ``offered``: the channel's policy and mode are among the server's offered ones (False by
    default: an activation nobody placed is refused). ``counted``: the check counted this
    attempt's failure already (the outcome must not count it twice)."""

    session: InternalSession | None
    reattach: bool
    client_address: str
    security_mode: str
    security_policy: str
    peer_certificate: bytes | None
    token: Any
    token_signature: Any
    claimed: str = ""
    offered: bool = False
    counted: bool = False

    @property
    def session_id(self) -> str:
        return self.session.session_id.to_string() if self.session is not None else ""

    @property
    def session_activated(self) -> bool:
        """Was the session activated before (a first activation must come on its own channel)?"""
        return self.session is not None and self.session.is_activated()

    @property
    def session_user(self) -> Any:
        """The user the session has now (asyncua's default before its first activation)."""
        return self.session.user if self.session is not None else None

    @property
    def cert_thumbprint(self) -> str:
        """SHA-1 hex of the channel's client certificate ("" on a channel without one)."""
        return hashlib.sha1(self.peer_certificate).hexdigest() if self.peer_certificate else ""


Check = Callable[[Activation], Awaitable[User]]
Outcome = Callable[[Activation, User | None, int, BaseException | None], None]

_VERDICT: ContextVar[User | None] = ContextVar("scada_activation_verdict", default=None)
_HOOK = "_scada_activation"  # the hook of a server, on its InternalServer
_MARK = "_scada_activation_hooked"
_REVOKED = "_scada_revoked"  # on an InternalSession: its user may no longer use it
# The client certificate of the channel that created each session (b"" when none).
_CREATED_BY: weakref.WeakKeyDictionary[InternalSession, bytes] = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class _Hook:
    check: Check
    outcome: Outcome


class _VerdictUsers(UserManager):
    """asyncua's user manager: the user the check settled on for the activation being run
    (None, i.e. BadUserAccessDenied, for an activation that did not go through the check)."""

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        return _VERDICT.get()


def created_certificate(session: InternalSession) -> bytes | None:
    """The client certificate of the channel that created ``session`` (b"": none; None: unknown)."""
    return _CREATED_BY.get(session)


def revoke_session(session: InternalSession) -> None:
    """Refuse every further request of ``session`` with BadUserAccessDenied (its user was
    disabled or removed); closing it is the caller's business."""
    setattr(session, _REVOKED, True)


def hook_activation(server: Server, check: Check, outcome: Outcome) -> None:
    """Verify every ActivateSession of ``server`` with ``check`` before asyncua's activation,
    report each ending to ``outcome``; random authentication tokens. Call before ``start``;
    a second call replaces the check and outcome (nothing is wrapped twice).

    ``check(activation)`` returns the session's user (asyncua's ``User``, never the Admin role)
    or raises ServiceError(code); any other exception refuses with BadInternalError (a check
    that fails, refuses). ``outcome(activation, user or None, status code, exception or None)``
    must not raise.
    """
    iserver = server.iserver
    setattr(iserver, _HOOK, _Hook(check, outcome))
    iserver.set_user_manager(_VerdictUsers())
    if not getattr(iserver.decrypt_user_token, _MARK, False):
        iserver.decrypt_user_token = _decrypt_once(iserver.decrypt_user_token)  # type: ignore[method-assign]
    if not getattr(iserver.create_session, _MARK, False):
        iserver.create_session = _random_tokens(iserver, iserver.create_session)  # type: ignore[method-assign]
    setattr(InternalSession, _REVOKED, False)  # a class default: the per-request look-up finds it at once
    if not getattr(UaProcessor._process_message, _MARK, False):
        UaProcessor._process_message = _checked(UaProcessor._process_message)  # type: ignore[method-assign,assignment]


def _decrypt_once(decrypt: Callable[..., Any]) -> Callable[..., Any]:
    """asyncua's decrypt_user_token, skipped when the check has decrypted and verified the
    password already (the user name is all asyncua needs before it asks the user manager)."""

    @functools.wraps(decrypt)
    def decrypt_user_token(isession: Any, token: Any) -> Any:
        if _VERDICT.get() is not None:
            return token.UserName, None
        return decrypt(isession, token)

    setattr(decrypt_user_token, _MARK, True)
    return decrypt_user_token


def _random_tokens(iserver: Any, create: Callable[..., InternalSession]) -> Callable[..., InternalSession]:
    """Sessions with a random 32-byte authentication token (asyncua counts from 1000: the next
    session's token could be guessed and, by a re-attach, the session taken over)."""

    @functools.wraps(create)
    def create_session(*args: Any, **kwargs: Any) -> InternalSession:
        session = create(*args, **kwargs)
        if session.external:
            sessions = iserver._external_sessions
            sessions.pop(session.auth_token, None)
            session.auth_token = NodeId(secrets.token_bytes(32), 0, ua.NodeIdType.ByteString)
            sessions[session.auth_token] = session
        return session

    setattr(create_session, _MARK, True)
    return create_session


def _checked(process: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``UaProcessor._process_message`` with ActivateSession checked first (servers without
    the hook: unchanged, one getattr per request)."""

    @functools.wraps(process)
    async def _process_message(self: UaProcessor, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        hook: _Hook | None = getattr(self.iserver, _HOOK, None)
        if hook is None:
            return await process(self, typeid, requesthdr, seqhdr, body)
        if getattr(self.session, _REVOKED, False):  # its user was disabled or removed
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)
        # Every request passes here (Publish, Read...): an int look-up first, NodeId equality never.
        if typeid.Identifier not in _SESSION_SERVICES or typeid.NamespaceIndex != 0:
            return await process(self, typeid, requesthdr, seqhdr, body)
        if typeid.Identifier == _CREATE:
            result = await process(self, typeid, requesthdr, seqhdr, body)
            if self.session is not None:
                _CREATED_BY[self.session] = self._connection.security_policy.peer_certificate or b""
            return result
        run = functools.partial(process, self, typeid, requesthdr, seqhdr, body)
        return await _activate(self, hook, run, requesthdr, body)

    setattr(_process_message, _MARK, True)
    return _process_message


async def _activate(
    proc: UaProcessor, hook: _Hook, run: Callable[[], Awaitable[Any]], requesthdr: Any, body: Any
) -> Any:
    """Decode the ActivateSession of ``body``, ask the check, then ``run`` asyncua's activation."""
    pos = body.cur_pos
    try:
        params = struct_from_binary(ua.ActivateSessionParameters, body)
    finally:
        body.rewind(pos)
    token = params.UserIdentityToken
    if isinstance(token, ua.ExtensionObject) and token.TypeId == NodeId(ua.ObjectIds.Null):
        token = ua.AnonymousIdentityToken()  # Part 4 §5.6.3: a null token is anonymous
    session = proc.session
    reattach = session is None
    if session is None:
        session = proc.iserver.lookup_external_session(requesthdr.AuthenticationToken)
    policy = proc._connection.security_policy
    act = Activation(
        session=session,
        reattach=reattach,
        client_address=_address(proc.name),
        security_mode=_MODES.get(policy.Mode, str(policy.Mode)),
        security_policy=str(policy.URI or "").rpartition("#")[2] or "None",
        peer_certificate=policy.peer_certificate or None,
        token=token,
        token_signature=params.UserTokenSignature,
        offered=any(f.matches(policy.URI, policy.Mode) for f in proc._connection._policies),
    )
    if session is None:  # asyncua refuses it (BadSessionIdInvalid): let it, and say so
        return await _reported(hook, act, None, run)
    try:
        user = await hook.check(act)
    except ServiceError as exc:
        _tell(hook, act, None, exc.code, exc)
        raise
    except Exception as exc:  # a check that fails refuses (fail closed)
        _tell(hook, act, None, ua.StatusCodes.BadInternalError, exc)
        raise ServiceError(ua.StatusCodes.BadInternalError) from exc
    return await _reported(hook, act, user, run)


async def _reported(hook: _Hook, act: Activation, user: User | None, run: Callable[[], Awaitable[Any]]) -> Any:
    """asyncua's activation with the verdict ``user``, its ending told to the hook's outcome."""
    reset = _VERDICT.set(user)
    try:
        result = await run()
    except (ServiceError, ua.UaStatusCodeError) as exc:
        _tell(hook, act, None, exc.code, exc)
        raise
    except Exception as exc:  # asyncua answers BadInternalError (e.g. a bad client signature)
        _tell(hook, act, None, ua.StatusCodes.BadInternalError, exc)
        raise
    finally:
        _VERDICT.reset(reset)
    _tell(hook, act, user, ua.StatusCodes.Good, None)
    return result


def _tell(hook: _Hook, act: Activation, user: User | None, code: int, exc: BaseException | None) -> None:
    with contextlib.suppress(Exception):  # the outcome must not change the answer
        hook.outcome(act, user, code, exc)


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def decrypt_password(server: Server, act: Activation) -> bytes:
    """The password of the encrypted UserName token of ``act``, checked: an allowed algorithm
    (RSA-OAEP, SHA-1 or SHA-256; never rsa-1_5), and the server nonce of this session inside it
    (asyncua strips it without looking: a token captured once could be replayed).
    ServiceError(BadIdentityTokenInvalid) otherwise. Runs no hashing: call it in a worker thread
    (an RSA decryption) if the loop matters."""
    token, session = act.token, act.session
    scheme = _OAEP.get(token.EncryptionAlgorithm or "")
    key = server.iserver.private_key
    nonce = session.nonce if session is not None else None
    if scheme is None or key is None or not nonce:
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)
    try:
        raw = key.decrypt(bytes(token.Password or b""), scheme)
    except Exception:  # noqa: BLE001 - a token we cannot decrypt is invalid, whatever the reason
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid) from None
    if len(raw) < 4:
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)
    (length,) = struct.unpack_from("<I", raw)
    if length != len(raw) - 4 or length < len(nonce):
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)
    secret, tail = raw[4 : 4 + length - len(nonce)], raw[4 + length - len(nonce) :]
    if not secrets.compare_digest(tail, nonce):
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)
    return bytes(secret)
