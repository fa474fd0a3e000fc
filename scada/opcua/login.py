"""Logins: the users file's users, failed logins slowed and audited, users locked after N failures;
UserName tokens checked (encrypted unless the channel is, with this session's nonce); a session
re-attached from another channel only by the same user.

Every ActivateSession goes through :meth:`Login.check` before asyncua's own activation
(scada/opcua/asyncua_private/activation.py): the password is decrypted and hashed in a worker
thread, one at a time (scrypt costs ~100 ms and 16 MiB: a flood of logins takes one core at
most, and the event loop serving the other clients never waits for it), and only the
connection that logs in waits for its throttling delay.

Open sessions follow the users file (:meth:`Login.follow`, every ``FOLLOW_S`` seconds and at each
login): a session whose user was disabled or removed (or while the file is unreadable: fail
closed) is refused every request with ``BadUserAccessDenied`` and closed; a user whose roles or
communes changed gets the new identity from their next request on. Each is audited
(``user_change``).

Status codes (Part 4 §5.7.3 and Table 176):

- ``BadUserAccessDenied``: the user name or password is wrong, the user is unknown, disabled or
  locked out, or a re-attach comes from another user. One code for all of them, as in the OPC
  Foundation's reference server: a client cannot tell a locked or disabled user, or an unknown
  name, from a wrong password (and a lock gives nothing away to the one who caused it).
- ``BadIdentityTokenInvalid``: a token not valid for this endpoint: a plaintext password on a
  channel that is not encrypted, rsa-1_5, a token that does not decrypt or does not carry this
  session's nonce (a replay), an unreadable user certificate.
- ``BadIdentityTokenRejected``: an anonymous login where the settings allow none.
- ``BadSecurityPolicyRejected``: the channel's security policy and mode are not an offered
  endpoint's (a None channel kept for GetEndpoints when None is not offered).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import weakref
from pathlib import Path
from typing import Any

import structlog
from asyncua import Server, ua
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from scada.opcua.asyncua_private.activation import (
    Activation,
    ServiceError,
    created_certificate,
    decrypt_password,
    hook_activation,
    revoke_session,
)
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.session_identity import ScadaUser, identity_of
from scada.opcua.typed_ua import StatusCode
from scada.security.audit import AuditSink, record_of
from scada.security.context import RequestContext
from scada.security.identity import Identity
from scada.security.login_throttle import LoginThrottle
from scada.security.settings import SecuritySettings
from scada.security.users import User, UsersError, UserStore, dummy_hash, verify_password

log = structlog.get_logger("scada.opcua.login")
SC = ua.StatusCodes
FOLLOW_S = 1.0  # how often the users file is looked at for the open sessions' sake (one stat)


class Refused(ServiceError):
    """A refused activation: the status code the client gets, the reason the audit keeps."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code)
        self.reason = reason


async def install_login(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> Login | None:
    """Install on ``server`` before it starts; None settings: nothing (no security layer).

    Reads the users file now (a corrupt one: UsersError naming it, the server does not start)
    and again whenever it changes. Returns the :class:`Login` (its throttle: tests, diagnostics).
    """
    if settings is None:
        return None
    login = Login(server, settings, audit)
    login.users.reload()
    if not login.users.names():
        log.warning("opcua_no_users", file=str(settings.users), anonymous=sorted(settings.anonymous))
    hook_activation(server, login.check, login.outcome)
    login.follow_every(FOLLOW_S)
    return login


class Login:
    """The checks of each activation (:meth:`check`) and what is done with its outcome."""

    def __init__(self, server: Server, settings: SecuritySettings, audit: AuditSink) -> None:
        self.server = server
        self.settings = settings
        self.audit = audit
        self.users = UserStore(Path(settings.users))
        self.throttle = LoginThrottle(settings.login)
        self._hashing = asyncio.Semaphore(1)  # one scrypt at a time: a flood takes one core at most
        self._followed = self.users.generation  # the users file's read the open sessions follow
        self._closing: set[asyncio.Task[None]] = set()  # sessions being closed (a reference kept)

    def follow_every(self, seconds: float) -> None:
        """Call :meth:`follow` every ``seconds`` on the running loop while this Login lives
        (a timer, not a task: nothing is left pending when the loop ends)."""
        loop = asyncio.get_running_loop()
        ref = weakref.ref(self)

        def tick() -> None:
            login = ref()
            if login is None:
                return
            login.follow()
            loop.call_later(seconds, tick)

        loop.call_later(seconds, tick)

    def follow(self) -> None:
        """Read the users file if it changed, and bring the open sessions in line with it."""
        try:
            self.users.reload()
        except UsersError as exc:  # fail closed: the store is empty, every named session revoked
            log.error("opcua_users_file_unreadable", error=str(exc))
        if self.users.generation == self._followed:
            return
        self._followed = self.users.generation
        for session in external_sessions(self.server):
            try:
                self._follow_session(session)
            except Exception:  # noqa: BLE001 - one session's trouble must not spare the others
                log.exception("opcua_session_follow_failed")
                revoke_session(session)

    def _follow_session(self, session: Any) -> None:
        identity = identity_of(session)
        if identity is None or identity.anonymous:
            return
        user = self.users.loaded(identity.user)
        if user is None or user.disabled:
            revoke_session(session)
            # No roles from now on (whatever else looks at the session's identity refuses too).
            session.user = ScadaUser.of(Identity(identity.user, frozenset()))
            reason = "user removed" if user is None else "user disabled"
            self._audit_change(session, identity, "BadUserAccessDenied", reason)
            task = asyncio.get_running_loop().create_task(session.close_session(delete_subs=True))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return
        new = user.identity(self.settings.see_other_communes)
        if new != identity:
            session.user = ScadaUser.of(new)  # the request context follows session.user
            self._audit_change(session, new, "Good", "roles or communes changed")

    def _audit_change(self, session: Any, identity: Identity, result: str, reason: str) -> None:
        sid = session.session_id.to_string()
        ctx = RequestContext(identity=identity, session_id=sid)
        roles = sorted(r.value for r in identity.roles)
        self.audit.record(record_of("user_change", sid, {"reason": reason, "roles": roles}, result, ctx))
        log.warning("opcua_session_user_changed", user=identity.user, session=sid, result=result, reason=reason)

    async def check(self, act: Activation) -> ScadaUser:
        """The user of the activation ``act``, or Refused (see the module's status codes)."""
        self.follow()  # the open sessions follow the file this login reads
        token = act.token
        if not act.offered:  # asyncua_private.channels refuses it first: a second line
            raise Refused(SC.BadSecurityPolicyRejected, f"{act.security_policy}/{act.security_mode} not offered")
        if isinstance(token, ua.AnonymousIdentityToken):
            act.claimed = "anonymous"
            if not self.settings.anonymous:
                raise Refused(SC.BadIdentityTokenRejected, "anonymous logins are not allowed")
            identity = Identity("anonymous", self.settings.anonymous, anonymous=True)
        elif isinstance(token, ua.UserNameIdentityToken):
            identity = await self._password(act)
        elif isinstance(token, ua.X509IdentityToken):
            identity = self._certificate(act)
        else:
            raise Refused(SC.BadIdentityTokenInvalid, f"unknown identity token {type(token).__name__}")
        self._same_owner(act, identity)
        return ScadaUser.of(identity)

    async def _password(self, act: Activation) -> Identity:
        token = act.token
        act.claimed = name = str(token.UserName or "")
        if not token.EncryptionAlgorithm and act.security_mode != "SignAndEncrypt":
            raise Refused(SC.BadIdentityTokenInvalid, f"plaintext password on a {act.security_mode} channel")
        user = self._user(name)
        known = user.name if user is not None else None
        if not self.throttle.admit(known, act.client_address):
            raise Refused(SC.BadUserAccessDenied, "too many attempts waiting")
        try:
            ok = await self._checked(act, user, known)
        finally:
            self.throttle.release(known, act.client_address)
        if user is None:
            raise Refused(SC.BadUserAccessDenied, "unknown user")
        if not ok:
            raise Refused(SC.BadUserAccessDenied, "wrong password")
        if user.disabled:
            raise Refused(SC.BadUserAccessDenied, "user disabled")
        return user.identity(self.settings.see_other_communes)

    async def _checked(self, act: Activation, user: User | None, known: str | None) -> bool:
        """Is the password right? Slowed after failures, the lock checked again when this
        attempt's turn to hash comes (attempts sent in parallel all wait for the first ones), and
        a failure counted as soon as it is known (before the next attempt is let in)."""
        delay = self.throttle.delay(known, act.client_address)
        if delay > 0:
            await asyncio.sleep(delay)  # only this connection waits (asyncua serves each in turn)
        if known is not None and self.throttle.locked(known):
            raise Refused(SC.BadUserAccessDenied, "locked out after failed logins")
        async with self._hashing:
            if known is not None and self.throttle.locked(known):
                raise Refused(SC.BadUserAccessDenied, "locked out after failed logins")
            ok = False  # an invalid token (it raises) is a failure too, counted now
            try:
                ok = await asyncio.to_thread(self._verify, act, user)
            finally:
                if not ok:
                    act.counted = True
                    self.throttle.failed(known, act.client_address)
        return ok and user is not None

    def _verify(self, act: Activation, user: User | None) -> bool:
        """In a worker thread: the token's password against ``user``'s hash (an unknown user
        against a dummy hash: the same time, so that a refusal does not tell names apart)."""
        token = act.token
        raw = decrypt_password(self.server, act) if token.EncryptionAlgorithm else bytes(token.Password or b"")
        try:
            password = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(SC.BadIdentityTokenInvalid, "password not UTF-8") from None
        return verify_password(password, user.password_hash if user is not None else dummy_hash())

    def _certificate(self, act: Activation) -> Identity:
        """An X.509 user token: the user whose thumbprints list its certificate (asyncua then
        checks the token's signature, the proof that the client holds its private key)."""
        try:
            cert = x509.load_der_x509_certificate(bytes(act.token.CertificateData or b""))
        except ValueError:
            raise Refused(SC.BadIdentityTokenInvalid, "unreadable user certificate") from None
        thumb = hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()
        act.claimed = f"x509:{thumb}"
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise Refused(SC.BadIdentityTokenRejected, "user certificate expired or not yet valid")
        user = self._by_thumbprint(thumb)
        if user is None:
            raise Refused(SC.BadUserAccessDenied, "user certificate of no user")
        act.claimed = user.name
        if self.throttle.locked(user.name):
            raise Refused(SC.BadUserAccessDenied, "locked out after failed logins")
        if user.disabled:
            raise Refused(SC.BadUserAccessDenied, "user disabled")
        return user.identity(self.settings.see_other_communes)

    def _same_owner(self, act: Activation, identity: Identity) -> None:
        """A session taken over from another channel (Part 4 §5.7.3): it must have been
        activated on its own channel first, and come back with the same client certificate and
        the same user; else anyone who saw its token could take it (research finding 1)."""
        if not act.reattach or act.session is None:
            return
        if not act.session_activated:
            raise Refused(SC.BadUserAccessDenied, "first activation from another channel")
        if (created_certificate(act.session) or b"") != (act.peer_certificate or b""):
            raise Refused(SC.BadUserAccessDenied, "re-attach with another client certificate")
        owner = identity_of(act.session)
        if owner is None or (owner.user, owner.anonymous) != (identity.user, identity.anonymous):
            raise Refused(SC.BadUserAccessDenied, "re-attach by another user")

    def outcome(self, act: Activation, user: Any, code: int, exc: BaseException | None) -> None:
        """Count the failure or the success, log and audit the activation."""
        good = code == SC.Good
        named = isinstance(act.token, ua.UserNameIdentityToken | ua.X509IdentityToken) and act.claimed
        if named and good:
            self.throttle.succeeded(act.claimed)
        elif named and act.session is not None and not act.counted:
            try:
                known = self.users.get(act.claimed)
            except UsersError:
                known = None
            self.throttle.failed(known.name if known is not None else None, act.client_address)
        identity = getattr(user, "identity", None) or Identity(
            act.claimed or "?", frozenset(), anonymous=isinstance(act.token, ua.AnonymousIdentityToken)
        )
        reason = getattr(exc, "reason", "") or ("" if exc is None else type(exc).__name__)
        result = _status_name(code)
        ctx = RequestContext(
            identity=identity,
            session_id=act.session_id,
            client_address=act.client_address,
            security_mode=act.security_mode,
            security_policy=act.security_policy,
            cert_thumbprint=act.cert_thumbprint,
        )
        token = type(act.token).__name__.removesuffix("IdentityToken")
        args = {"token": token, "reattach": act.reattach}
        if reason:
            args["reason"] = reason
        self.audit.record(record_of("activate_session", act.session_id, args, result, ctx))
        (log.info if good else log.warning)(
            "opcua_activate_session",
            user=identity.user,
            client=act.client_address,
            result=result,
            reason=reason,
            mode=act.security_mode,
            reattach=act.reattach,
        )

    def _user(self, name: str) -> User | None:
        try:
            return self.users.get(name)
        except UsersError as exc:  # fail closed: nobody logs in on a file we cannot read
            log.error("opcua_users_file_unreadable", error=str(exc))
            raise Refused(SC.BadInternalError, "users file unreadable") from None

    def _by_thumbprint(self, thumb: str) -> User | None:
        try:
            return self.users.by_thumbprint(thumb)
        except UsersError as exc:
            log.error("opcua_users_file_unreadable", error=str(exc))
            raise Refused(SC.BadInternalError, "users file unreadable") from None


def _status_name(code: int) -> str:
    try:
        return str(StatusCode(code).name)
    except Exception:  # noqa: BLE001 - a code asyncua does not name
        return f"0x{code:08X}"
