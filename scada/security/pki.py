"""The server's PKI folder: its own certificate, the trusted and rejected client certificates.

The layout OPC UA stacks use (UA-.NETStandard, node-opcua), under the ``pki`` folder of
security.yaml (default ``<data>/pki``)::

    own/certs/server.der       the server's certificate (made on first start, never overwritten)
    own/private/server.pem     its private key (0600)
    own/old/                   certificates and keys replaced by `scada pki renew`
    trusted/certs, trusted/crl client application certificates (or their CAs) trusted, CRLs of these CAs
    issuers/certs, issuers/crl intermediate CAs (not trusted by themselves), their CRLs
    rejected/certs             client certificates refused as unknown (bounded), for `scada pki trust`

:class:`CertificateVerifier` checks a client application's certificate (at OpenSecureChannel
and CreateSession): parsable, time valid, a chain to a trusted certificate through the issuers
(``cryptography.x509.verification``), not revoked by a CRL whose signature its issuer made,
and the SAN URI equal to the client's ApplicationUri. Each refusal has its precise status code.

Revocation fails closed (Part 4, "Certificate Revocation Unknown"): each certificate of the chain
but the trusted anchor needs a current CRL of its issuer (signature by the issuer, ``nextUpdate``
not past). No such CRL, or any unreadable CRL file (its issuer cannot be known, and a garbled
copy must not un-revoke anything), refuses with BadCertificateRevocationUnknown (the leaf's
issuer) or BadCertificateIssuerRevocationUnknown (an intermediate's). A self-signed certificate
trusted directly has no issuer to ask and needs no CRL. security.yaml's
``accept_unknown_revocation: true`` lets an unknown status pass, logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import structlog
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FOLDERS = ("own/certs", "own/private", "own/old", "trusted/certs", "trusted/crl", "issuers/certs", "issuers/crl")
REJECTED = "rejected/certs"
SERVER_CERT = "own/certs/server.der"
SERVER_KEY = "own/private/server.pem"
MAX_REJECTED = 200  # files kept in rejected/: an attacker sending new certificates cannot fill the disk
MAX_CERT_BYTES = 64 << 10  # a larger file in a trust folder is not read (a mistake, or an attack)
SERVER_CERT_DAYS = 5 * 365
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
CRL_SUFFIXES = (".der", ".pem", ".crl")
MAX_CRL_BYTES = 32 << 20  # a larger CRL file is not read: it counts as unreadable (revocation unknown)
CLOCK_SKEW = dt.timedelta(minutes=5)  # a CRL issued a little "in the future" by a CA whose clock is ahead

log = structlog.get_logger("scada.security.pki")

SC = ua.StatusCodes


class PkiError(Exception):
    """The PKI folder cannot give what is asked (a missing or unreadable certificate or key)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A certificate check's outcome: ``code`` 0 (Good) or the refusal's status code."""

    code: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code == SC.Good

    @property
    def name(self) -> str:
        return "Good" if self.ok else ua.StatusCode(ua.UInt32(self.code)).name


GOOD = Verdict(SC.Good)


def thumbprint(der: bytes) -> str:
    """The SHA-1 thumbprint (hex, lower case) OPC UA names certificates by."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def application_uri(cert: x509.Certificate) -> str | None:
    """The certificate's SAN URI (an OPC UA application's ApplicationUri), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def default_application_uri() -> str:
    """The server's ApplicationUri when it makes its first certificate."""
    return f"urn:{socket.gethostname()}:city-scada"


def host_names(extra: Iterable[str] = ()) -> list[str]:
    """The names and addresses the server's certificate is made for: the host's, loopback's and
    ``extra`` (the endpoint's host)."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", *extra]
    return [n for n in dict.fromkeys(names) if n and n not in ("0.0.0.0", "::")]


def _general_names(uri: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def make_certificate(
    key: rsa.RSAPrivateKey,
    common_name: str,
    uri: str,
    hosts: Iterable[str],
    days: int = SERVER_CERT_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A self-signed OPC UA application certificate (Part 6 6.2.2): SAN URI + host names and
    addresses, EKU server and client authentication, the key usages an OPC UA stack checks."""
    now = now or dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clocks a little apart
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(uri, hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only, atomically (a crash leaves the old file or none)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_certificate_file(path: Path) -> x509.Certificate:
    """A certificate from a DER or PEM file (ValueError when it is neither)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _load_crl_file(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One certificate of the PKI folder, as `scada pki list` shows it."""

    folder: str  # own, trusted, issuers, rejected
    path: Path
    subject: str
    thumbprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    uri: str | None


class Pki:
    """The PKI folder ``root`` (see the module docstring)."""

    def __init__(self, root: Path, max_rejected: int = MAX_REJECTED) -> None:
        self.root = Path(root)
        self.max_rejected = max_rejected

    @property
    def cert_path(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def key_path(self) -> Path:
        return self.root / SERVER_KEY

    def ensure_layout(self) -> None:
        """Make the folders (the private one 0700)."""
        for f in (*FOLDERS, REJECTED):
            (self.root / f).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "own" / "private", 0o700)

    def ensure_server_certificate(self, uri: str | None = None, hosts: Iterable[str] = ()) -> bool:
        """Make the server's certificate and key when neither exists; True when made.

        An existing pair is never replaced (clients trust it: `scada pki renew` replaces it on
        purpose); one without the other is an error, not a reason to make a new pair."""
        self.ensure_layout()
        has_cert, has_key = self.cert_path.exists(), self.key_path.exists()
        if has_cert and has_key:
            return False
        if has_cert or has_key:
            present, missing = (self.cert_path, self.key_path) if has_cert else (self.key_path, self.cert_path)
            raise PkiError(
                f"{present} exists but {missing} does not: restore it, or make a new pair with `scada pki renew`"
            )
        self._make_server_pair(uri or default_application_uri(), hosts)
        return True

    def _make_server_pair(self, uri: str, hosts: Iterable[str]) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = make_certificate(key, f"City supervision server@{socket.gethostname()}", uri, host_names(hosts))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.key_path, pem)  # the key first: a certificate alone is refused at start
        _write_public(self.cert_path, cert.public_bytes(serialization.Encoding.DER))

    def renew(self, hosts: Iterable[str] = ()) -> tuple[Path, Path]:
        """Replace the server's certificate and key (same ApplicationUri); the old pair is kept in
        own/old/ (returned: certificate, key)."""
        self.ensure_layout()
        old = self.server_certificate()
        uri = application_uri(old) or default_application_uri()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        thumb = thumbprint(old.public_bytes(serialization.Encoding.DER))
        old_cert = self.root / "own" / "old" / f"server-{stamp}-{thumb}.der"
        old_key = self.root / "own" / "old" / f"server-{stamp}-{thumb}.pem"
        os.replace(self.cert_path, old_cert)
        os.replace(self.key_path, old_key)
        os.chmod(old_key, 0o600)
        self._make_server_pair(uri, hosts)
        return old_cert, old_key

    def server_certificate(self) -> x509.Certificate:
        """The server's certificate (PkiError when missing or unreadable)."""
        try:
            return load_certificate_file(self.cert_path)
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read the server certificate {self.cert_path}: {exc}") from None

    def check_server_key(self) -> None:
        """PkiError unless the private key is readable and matches the certificate."""
        cert = self.server_certificate()
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise PkiError(f"cannot read the server's private key {self.key_path}: {exc}") from None
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise PkiError(f"the private key {self.key_path} does not belong to the certificate {self.cert_path}")

    # Client certificates

    def _files(self, folder: str, suffixes: tuple[str, ...]) -> list[Path]:
        path = self.root / folder
        if not path.is_dir():
            return []
        return sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())

    def certificates(self, folder: str) -> list[tuple[Path, x509.Certificate]]:
        """The readable certificates of ``folder`` ("trusted/certs", ...); unreadable files are skipped."""
        out = []
        for p in self._files(folder, CERT_SUFFIXES):
            with contextlib.suppress(OSError, ValueError):
                if p.stat().st_size <= MAX_CERT_BYTES:
                    out.append((p, load_certificate_file(p)))
        return out

    def crls(self) -> list[x509.CertificateRevocationList]:
        """The readable CRLs of trusted/crl and issuers/crl."""
        return self.read_crls()[0]

    def read_crls(self) -> tuple[list[x509.CertificateRevocationList], list[tuple[Path, str]]]:
        """The CRLs of trusted/crl and issuers/crl: the readable ones, and the files that are not
        (path, why): the caller must not ignore those (revocation then is unknown)."""
        good: list[x509.CertificateRevocationList] = []
        bad: list[tuple[Path, str]] = []
        for folder in ("trusted/crl", "issuers/crl"):
            for p in self._files(folder, CRL_SUFFIXES):
                try:
                    if p.stat().st_size > MAX_CRL_BYTES:
                        raise ValueError(f"larger than {MAX_CRL_BYTES >> 20} MiB")
                    good.append(_load_crl_file(p))
                except (OSError, ValueError) as exc:
                    bad.append((p, f"{type(exc).__name__}: {exc}"))
        return good, bad

    def entries(self) -> list[Entry]:
        """Every certificate of own, trusted, issuers and rejected, for `scada pki list`."""
        out = []
        for label, folder in (
            ("own", "own/certs"),
            ("trusted", "trusted/certs"),
            ("issuers", "issuers/certs"),
            ("rejected", REJECTED),
        ):
            for p, c in self.certificates(folder):
                out.append(
                    Entry(
                        label,
                        p,
                        c.subject.rfc4514_string(),
                        thumbprint(c.public_bytes(serialization.Encoding.DER)),
                        c.not_valid_before_utc,
                        c.not_valid_after_utc,
                        application_uri(c),
                    )
                )
        return out

    def find(self, folder: str, thumb: str) -> Path:
        """The file of ``folder`` holding the certificate of thumbprint ``thumb`` (KeyError if none)."""
        want = thumb.lower().replace(":", "")
        for p, c in self.certificates(folder):
            if thumbprint(c.public_bytes(serialization.Encoding.DER)) == want:
                return p
        raise KeyError(thumb)

    def move(self, thumb: str, src: str, dst: str) -> Path:
        """Move a certificate between folders (trust: rejected -> trusted); the new path."""
        path = self.find(src, thumb)
        (self.root / dst).mkdir(parents=True, exist_ok=True)
        target = self.root / dst / path.name
        os.replace(path, target)
        return target

    def store_rejected(self, der: bytes) -> Path | None:
        """Keep an unknown certificate in rejected/ for an administrator to trust; None when the
        folder is full (``max_rejected`` files) or not writable: the refusal stands either way."""
        folder = self.root / REJECTED
        path = folder / f"{thumbprint(der)}.der"
        try:
            if path.exists():
                return path
            folder.mkdir(parents=True, exist_ok=True)
            if sum(1 for _ in folder.iterdir()) >= self.max_rejected:
                return None
            _write_public(path, der)
        except OSError:
            return None
        return path

    def verifier(self, accept_unknown_revocation: bool = False) -> CertificateVerifier:
        """A verifier of client certificates reading this folder (again when it changes);
        ``accept_unknown_revocation`` (security.yaml): let a certificate whose issuer's revocation
        status is unknown pass, logged, instead of refusing it."""
        return CertificateVerifier(self, accept_unknown_revocation)


def _stamp(paths: Iterable[Path]) -> tuple:
    out = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


class CertificateVerifier:
    """Checks client application certificates against the PKI folder (module docstring).

    The folders are read again when a file is added, removed or changed (compared by their
    listing's mtimes and sizes: one stat per folder and file per check, certificates being
    checked once per secure channel, not per request)."""

    def __init__(self, pki: Pki, accept_unknown_revocation: bool = False) -> None:
        self.pki = pki
        self.accept_unknown_revocation = accept_unknown_revocation
        self._stamp: tuple | None = None
        self._anchors: list[x509.Certificate] = []
        self._issuers: list[x509.Certificate] = []
        self._crls: list[x509.CertificateRevocationList] = []
        self._bad_crls: list[tuple[Path, str]] = []
        # (CRL index, issuer DER) -> whether the issuer signed it: one RSA verification per pair
        # and reload, not per secure channel. Emptied with each reload.
        self._signed: dict[tuple[int, bytes], bool] = {}
        self._warned: set[str] = set()  # unknown revocations accepted, logged once per reload

    def _folders_stamp(self) -> tuple:
        folders = [self.pki.root / f for f in ("trusted/certs", "trusted/crl", "issuers/certs", "issuers/crl")]
        files = [p for f in folders if f.is_dir() for p in f.iterdir()]
        return _stamp([*folders, *files])

    def reload_if_changed(self) -> None:
        stamp = self._folders_stamp()
        if stamp != self._stamp:
            self._anchors = [c for _, c in self.pki.certificates("trusted/certs")]
            self._issuers = [c for _, c in self.pki.certificates("issuers/certs")]
            self._crls, self._bad_crls = self.pki.read_crls()
            self._signed.clear()
            self._warned.clear()
            self._stamp = stamp
            for path, why in self._bad_crls:  # once per change of the folders, not per client
                log.error(
                    "crl_unreadable",
                    path=str(path),
                    error=why,
                    effect="certificates issued by a CA are refused (revocation unknown) until it is fixed",
                )

    def check(self, der: bytes, uri: str | None = None, now: dt.datetime | None = None) -> Verdict:
        """Whether the client certificate ``der`` may be used; ``uri`` the client's ApplicationUri
        (None: not checked). An unknown certificate is kept in rejected/. Fails closed: an
        unexpected error refuses (BadSecurityChecksFailed)."""
        try:
            return self._check(der, uri, now or dt.datetime.now(dt.UTC))
        except Exception as exc:  # a bug or an odd certificate must refuse, never allow
            return Verdict(SC.BadSecurityChecksFailed, f"certificate check failed: {type(exc).__name__}: {exc}")

    def _check(self, der: bytes, uri: str | None, now: dt.datetime) -> Verdict:
        if not der:
            return Verdict(SC.BadCertificateInvalid, "no certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            return Verdict(SC.BadCertificateInvalid, f"not a DER certificate: {exc}")
        if now < cert.not_valid_before_utc:
            return Verdict(
                SC.BadCertificateTimeInvalid, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
            )
        if now > cert.not_valid_after_utc:
            return Verdict(SC.BadCertificateTimeInvalid, f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
        self.reload_if_changed()
        chain = self._chain(cert, now)
        if chain is None:
            return self._untrusted(cert, der)
        revoked = self._revocation(chain, now)
        if revoked is not None:
            return revoked
        if uri is not None:
            cert_uri = application_uri(cert)
            if cert_uri is None:
                return Verdict(SC.BadCertificateInvalid, "no URI in the certificate's subjectAltName")
            if cert_uri != uri:
                return Verdict(
                    SC.BadCertificateUriInvalid, f"certificate URI {cert_uri!r} is not the ApplicationUri {uri!r}"
                )
        return GOOD

    def _chain(self, cert: x509.Certificate, now: dt.datetime) -> list[x509.Certificate] | None:
        if not self._anchors:
            return None
        builder = (
            xv.PolicyBuilder()
            .store(xv.Store(self._anchors))
            .time(now)
            .extension_policies(
                # OPC UA application certificates are self-signed and often marked CA (asyncua's
                # own): the web PKI's rules on the leaf do not apply; a CA must say it is one.
                ca_policy=xv.ExtensionPolicy.permit_all().require_present(
                    x509.BasicConstraints, xv.Criticality.AGNOSTIC, _is_ca
                ),
                ee_policy=xv.ExtensionPolicy.permit_all(),
            )
        )
        try:
            return list(builder.build_client_verifier().verify(cert, self._issuers).chain)
        except xv.VerificationError:
            return None

    def _untrusted(self, cert: x509.Certificate, der: bytes) -> Verdict:
        """Not chained to a trusted certificate: wrongly signed when a known CA has its issuer's
        name (its signature then does not verify), else unknown: kept in rejected/."""
        named = [ca for ca in (*self._anchors, *self._issuers) if ca.subject == cert.issuer]
        if cert.issuer != cert.subject and named and not any(_signed_by(cert, ca) for ca in named):
            return Verdict(SC.BadCertificateInvalid, f"not signed by the CA it names ({cert.issuer.rfc4514_string()})")
        if cert.issuer == cert.subject and not _signed_by(cert, cert):
            return Verdict(SC.BadCertificateInvalid, "its self-signature does not verify")
        where = self.pki.store_rejected(der)
        kept = f"kept in {where}" if where is not None else "rejected/ full: not kept"
        return Verdict(SC.BadCertificateUntrusted, f"unknown certificate {thumbprint(der)} ({kept})")

    def _revocation(self, chain: list[x509.Certificate], now: dt.datetime) -> Verdict | None:
        """Each certificate of the chain but its anchor, against its issuer's CRLs (signature
        checked): revoked by any of them (even one past its nextUpdate: a revocation stands), else
        a current one is needed, or the status is unknown (module docstring)."""
        for depth, (cert, issuer) in enumerate(zip(chain, chain[1:], strict=False)):
            crls = self._crls_of(issuer)
            for crl in crls:
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    code = SC.BadCertificateRevoked if depth == 0 else SC.BadCertificateIssuerRevoked
                    return Verdict(code, f"serial {cert.serial_number:x} revoked by {issuer.subject.rfc4514_string()}")
            unknown = self._unknown(issuer, crls, now)
            if unknown is None:
                continue
            code = SC.BadCertificateRevocationUnknown if depth == 0 else SC.BadCertificateIssuerRevocationUnknown
            reason = f"revocation of serial {cert.serial_number:x} unknown: {unknown}"
            if not self.accept_unknown_revocation:
                return Verdict(code, reason)
            if reason not in self._warned:  # accepted as configured: said once per reload, not per channel
                self._warned.add(reason)
                log.warning(
                    "certificate_revocation_unknown_accepted", reason=reason, setting="accept_unknown_revocation"
                )
        return None

    def _crls_of(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """The CRLs ``issuer`` named and signed (a CRL with its name but another key's signature is
        nobody's: it neither revokes nor vouches)."""
        der = issuer.public_bytes(serialization.Encoding.DER)
        out = []
        for i, crl in enumerate(self._crls):
            if crl.issuer != issuer.subject:
                continue
            signed = self._signed.get((i, der))
            if signed is None:
                try:
                    signed = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
                except Exception:  # an unsupported key or algorithm: not a signature we can trust
                    signed = False
                self._signed[(i, der)] = signed
            if signed:
                out.append(crl)
        return out

    def _unknown(
        self, issuer: x509.Certificate, crls: list[x509.CertificateRevocationList], now: dt.datetime
    ) -> str | None:
        """Why ``issuer``'s revocation list cannot vouch at ``now``; None when one does."""
        if self._bad_crls:  # its issuer unknown, it may be this CA's newest list
            files = ", ".join(str(p) for p, _ in self._bad_crls)
            return f"unreadable CRL file(s) {files}: fix or remove them"
        name = issuer.subject.rfc4514_string()
        if not crls:
            return f"no CRL signed by {name} in trusted/crl or issuers/crl"
        for crl in crls:
            if crl.next_update_utc is not None and crl.next_update_utc > now >= crl.last_update_utc - CLOCK_SKEW:
                return None
        ends = [c.next_update_utc for c in crls if c.next_update_utc is not None]
        if ends and max(ends) <= now:
            return f"the CRL of {name} expired on {max(ends):%Y-%m-%d %H:%M}Z (nextUpdate): publish a new one"
        return f"no current CRL of {name} (none with a nextUpdate to come and a thisUpdate past)"


def _is_ca(_policy: object, _cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is None or not ext.ca:
        raise ValueError("an issuer must be a CA (basicConstraints ca=true)")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key made ``cert``'s signature (any failure: no)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, an unsupported key or algorithm: not signed by it
        return False
    return True
