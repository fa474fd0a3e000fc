"""Which OPC UA server certificates the client driver trusts: its trust list.

The trust list (tags.yaml ``security.trusted``: a folder, a file, or a list of files) holds
certificates in DER or PEM. A server is trusted when the certificate it shows is one of them
(the usual case in OPC UA: a server's self-signed application certificate, copied from the
server), or is signed directly by one of them that is a CA (a site's own authority); in both
cases it must be within its validity dates. Everything else is refused before the secure
channel opens, with the thumbprint to check against the server's.

Read once at load time (a new certificate takes effect with the next reload); the driver
compares bytes and verifies at most a signature per trusted CA per session attempt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")  # files of a trust folder that are read; others are ignored


class TrustListError(ValueError):
    """A trust list file that is not a usable certificate: the message names it."""


def thumbprint(der: bytes) -> str:
    """The SHA-1 thumbprint OPC UA tools show for a certificate (hex)."""
    return hashlib.sha1(der).hexdigest()  # noqa: S324 - OPC UA's thumbprint, not a security check


def read_certificates(path: Path) -> list[bytes]:
    """The certificates of one DER or PEM file (a PEM file may hold several), as DER."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise TrustListError(f"{path} is not an X.509 certificate (DER or PEM)") from None
    return [c.public_bytes(Encoding.DER) for c in certs]


def load(paths: Iterable[Path]) -> tuple[bytes, ...]:
    """Every certificate of ``paths`` (files, or folders whose certificate files are read), DER.

    Raises TrustListError naming the file or folder at fault (unreadable, not a certificate,
    expired, an empty folder), OSError for a path that is not there."""
    out: list[bytes] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CERT_SUFFIXES)
            if not files:
                raise TrustListError(f"the folder {path} holds no certificate ({', '.join(CERT_SUFFIXES)} files)")
        else:
            files = [path]
        for file in files:
            for der in read_certificates(file):
                cert = x509.load_der_x509_certificate(der)
                if cert.not_valid_after_utc < datetime.now(UTC):
                    raise TrustListError(
                        f"the certificate in {file} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
                        "remove it or replace it with the renewed one"
                    )
                out.append(der)
    return tuple(dict.fromkeys(out))  # the same certificate twice counts once


def refusal(trusted: tuple[bytes, ...], shown: bytes, now: datetime | None = None) -> str | None:
    """Why the server certificate ``shown`` (DER) is not trusted by ``trusted``; None if it is."""
    try:
        cert = x509.load_der_x509_certificate(shown)
    except ValueError:
        return "the server shows a certificate that is not valid X.509"
    now = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return (
            f"the server's certificate (thumbprint {thumbprint(shown)}) is valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    if shown in trusted:
        return None
    for der in trusted:
        if _issued_by(cert, x509.load_der_x509_certificate(der)):
            return None
    return (
        f"the server's certificate ({cert.subject.rfc4514_string()}, thumbprint {thumbprint(shown)}) is not in "
        "the trust list, nor signed by a CA in it"
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """``ca`` is a CA that signed ``cert``."""
    if cert.issuer != ca.subject:
        return False
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # a wrong signature, an unsupported key: not issued by it
        return False
    return True
