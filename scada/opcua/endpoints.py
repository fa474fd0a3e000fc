"""Endpoints and the server's certificate: which security policies and modes are offered, which
identity tokens, and which client application certificates are let in (scada.security.settings,
scada.security.pki).

Secure policies need the server's certificate and key (made in the PKI folder on first start):
without them asyncua would silently offer the None endpoint only, so the server refuses to start
instead. Client certificates are checked when the secure channel opens (asyncua_private.channels)
and again at CreateSession (with the client's ApplicationUri); each refusal is audited. A channel
whose policy and mode are not offered (asyncua accepts a None channel even when None is not
offered, for GetEndpoints) serves discovery only: anything else is refused with
BadSecurityPolicyRejected, audited, and the connection closed.
"""

from __future__ import annotations

import datetime as dt

import structlog
from asyncua import Server, ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scada.opcua.asyncua_private.channels import ServiceError, hook_channel_certificates
from scada.security.audit import AuditSink, record_of
from scada.security.context import RequestContext
from scada.security.identity import Identity
from scada.security.pki import CertificateVerifier, Pki, PkiError, Verdict, application_uri, thumbprint
from scada.security.refusal_audit import refusal_audit_for
from scada.security.settings import SecuritySettings

log = structlog.get_logger("scada.opcua.endpoints")

# security.yaml's policy names -> the prefix of asyncua's SecurityPolicyType members.
_POLICY_TYPES = {
    "Basic256Sha256": "Basic256Sha256",
    "Aes128_Sha256_RsaOaep": "Aes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "Aes256Sha256RsaPss",
}
_UNKNOWN_CLIENT = Identity(user="", roles=frozenset(), anonymous=True)


class EndpointError(Exception):
    """The endpoints asked for cannot be offered (a secure policy without a usable certificate)."""


def policy_types(settings: SecuritySettings) -> list[ua.SecurityPolicyType]:
    """The asyncua policy types of ``settings``: each policy with each mode, then None if allowed."""
    out = [getattr(ua.SecurityPolicyType, f"{_POLICY_TYPES[p]}_{m}") for p in settings.policies for m in settings.modes]
    if settings.allow_none:
        out.append(ua.SecurityPolicyType.NoSecurity)
    return out


def identity_tokens(settings: SecuritySettings) -> list[type]:
    """The identity token types offered: UserName (and X509) with secure endpoints, Anonymous only
    when anonymous sessions have roles."""
    tokens: list[type] = []
    if settings.anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    if settings.policies or not tokens:  # a None-only server without anonymous: UserName, refused in clear
        tokens.append(ua.UserNameIdentityToken)
    if settings.policies:
        tokens.append(ua.X509IdentityToken)
    return tokens


class ClientCertificates:
    """The checks of client application certificates, with their refusals audited."""

    def __init__(self, verifier: CertificateVerifier, audit: AuditSink) -> None:
        self.verifier = verifier
        # Refusals at a bounded rate per client (a client retrying in a loop must not fill the trail).
        self.audit = refusal_audit_for(audit)

    def _audit(self, der: bytes, address: str, uri: str | None, verdict: Verdict, at: str) -> None:
        thumb = thumbprint(der) if der else ""
        ctx = RequestContext(_UNKNOWN_CLIENT, client_address=address, cert_thumbprint=thumb, application_uri=uri or "")
        rec = record_of("certificate", at, {"reason": verdict.reason, "uri": uri or ""}, verdict.name, ctx)
        self.audit.record(rec)
        log.warning(
            "client_certificate_refused",
            at=at,
            client=address,
            thumbprint=thumb,
            code=verdict.name,
            reason=verdict.reason,
        )

    def channel(self, der: bytes, address: str) -> int:
        """OpenSecureChannel: the channel's certificate (asyncua_private.channels)."""
        verdict = self.verifier.check(der)
        if not verdict.ok:
            self._audit(der, address, None, verdict, "OpenSecureChannel")
        return verdict.code

    def policy_refused(self, address: str, policy_uri: str, mode: str, request: int) -> None:
        """A request on a channel whose policy and mode are not offered (asyncua_private.channels)."""
        policy = policy_uri.rpartition("#")[2] or policy_uri
        ctx = RequestContext(_UNKNOWN_CLIENT, client_address=address, security_mode=mode, security_policy=policy)
        args = {"reason": "security policy and mode not offered", "request": request}
        self.audit.record(record_of("secure_channel", "", args, "BadSecurityPolicyRejected", ctx))
        log.warning("security_policy_rejected", client=address, policy=policy, mode=mode, request=request)

    async def session(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """CreateSession (asyncua's certificate validator): the certificate with the client's
        ApplicationUri. Raises ServiceError with the refusal's code."""
        der = cert.public_bytes(serialization.Encoding.DER)
        uri = app.ApplicationUri if app is not None else None
        verdict = self.verifier.check(der, uri or "")
        if not verdict.ok:
            self._audit(der, "", uri, verdict, "CreateSession")
            raise ServiceError(verdict.code)


async def configure_endpoints(
    server: Server, settings: SecuritySettings | None, audit: AuditSink | None = None
) -> None:
    """Set the server's security policies, certificate and identity tokens before it starts.

    None: no security layer (unit tests, embedding): a None endpoint, as before the security issue.
    Raises EndpointError (a clear message) when a secure policy is asked and the certificate or
    its key is missing, unreadable or mismatched."""
    if settings is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        return
    from scada.security.audit import MemoryAudit

    sink: AuditSink = audit if audit is not None else MemoryAudit()
    policies = policy_types(settings)
    if not policies:
        raise EndpointError("no endpoint to offer: security.yaml lists no policy and no mode, and allow_none is false")
    if settings.policies:
        pki = Pki(settings.pki)
        host = server.endpoint.hostname or ""
        try:
            made = pki.ensure_server_certificate(hosts=[host] if host else [])
            pki.check_server_key()
            cert = pki.server_certificate()
        except (PkiError, OSError) as exc:
            raise EndpointError(f"secure endpoints need the server's certificate and key: {exc}") from None
        uri = application_uri(cert)
        if uri is None:
            raise EndpointError(f"the server certificate {pki.cert_path} has no URI in its subjectAltName")
        if made:
            log.info(
                "server_certificate_created",
                path=str(pki.cert_path),
                uri=uri,
                thumbprint=thumbprint(cert.public_bytes(serialization.Encoding.DER)),
            )
        _warn_validity(cert, pki)
        await server.load_certificate(str(pki.cert_path))
        await server.load_private_key(str(pki.key_path))
        await server.set_application_uri(uri)
        checks = ClientCertificates(pki.verifier(settings.accept_unknown_revocation), sink)
        server.set_certificate_validator(checks.session)
        hook_channel_certificates(server, checks.channel, checks.policy_refused)
    server.set_security_policy(policies)
    server.set_identity_tokens(identity_tokens(settings))
    _warn(settings)


def _warn_validity(cert: x509.Certificate, pki: Pki, soon: dt.timedelta = dt.timedelta(days=30)) -> None:
    """Clients refuse an expired server certificate: say so at start, and a month before."""
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        log.error(
            "server_certificate_time_invalid",
            path=str(pki.cert_path),
            not_before=str(cert.not_valid_before_utc),
            not_after=str(cert.not_valid_after_utc),
            fix="scada pki renew",
        )
    elif cert.not_valid_after_utc - now < soon:
        log.warning(
            "server_certificate_expires_soon",
            path=str(pki.cert_path),
            not_after=str(cert.not_valid_after_utc),
            fix="scada pki renew",
        )


def _warn(settings: SecuritySettings) -> None:
    """Say at start what asyncua's own warnings (silenced by our logging) would have said, and more."""
    if settings.allow_none:
        log.warning(
            "security_none_endpoint",
            detail="a None endpoint is offered: no signature, no encryption",
            source=settings.source or "defaults",
        )
        if not settings.policies:
            log.warning(
                "security_plaintext_passwords",
                detail="no secure policy: user names and passwords could only travel in clear",
            )
    if settings.anonymous:
        log.warning("security_anonymous_sessions", roles=sorted(r.value for r in settings.anonymous))
