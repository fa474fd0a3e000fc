"""Which OPC UA server certificates the client driver trusts: its trust list.

The trust list (tags.yaml ``security.trusted``: a folder, a file, or a list of files) holds
certificates in DER or PEM. A server is trusted when the certificate it shows is one of them
(the usual case in OPC UA: a server's self-signed application certificate, copied from the
server), or is signed directly by one of them that is a CA (a site's own authority); in both
cases it must be within its validity dates. A CA signs the certificates of many devices, so a
certificate it signed must also name the server we dial (Part 4 "Host Name" and "URI" checks):
the endpoint URL's host among its subjectAltName DNS names or IP addresses, and its SAN URI equal
to the ApplicationUri the server states. Otherwise any device holding a certificate of the site CA
could stand in for the field server. Everything else is refused before the secure channel opens,
with the thumbprint to check against the server's.

Read once at load time (a new certificate takes effect with the next reload); the driver
compares bytes and verifies at most a signature per trusted CA per session attempt.
"""

from __future__ import annotations

import hashlib
import ipaddress
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


def refusal(
    trusted: tuple[bytes, ...], shown: bytes, *, host: str, application_uri: str, now: datetime | None = None
) -> str | None:
    """Why the server certificate ``shown`` (DER) is not trusted by ``trusted``; None if it is.

    ``host`` is the host of the endpoint URL we dial, ``application_uri`` the ApplicationUri the
    server states in its endpoint description: a certificate accepted through a CA must name both."""
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
            return _names_refusal(cert, shown, host, application_uri)
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


def _names_refusal(cert: x509.Certificate, shown: bytes, host: str, application_uri: str) -> str | None:
    """Why a CA-signed server certificate is not the one of the server at ``host`` with
    ``application_uri``; None when its subjectAltName names both."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (
            f"the server's certificate (thumbprint {thumbprint(shown)}) is signed by a trusted CA but has no "
            "subjectAltName: it cannot say which server it belongs to"
        )
    who = f"the server's certificate ({cert.subject.rfc4514_string()}, thumbprint {thumbprint(shown)})"
    if not _names_host(san, host):
        names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
        return (
            f"{who} is signed by a trusted CA but is not made for the host {host!r} of the endpoint URL "
            f"(its subjectAltName names {', '.join(names) or 'no host'}): another device holding a certificate "
            "of the CA, or the endpoint URL should use one of those names"
        )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not application_uri or application_uri not in uris:
        return (
            f"{who} is signed by a trusted CA but its URI ({', '.join(uris) or 'none'}) is not the server's "
            f"ApplicationUri {application_uri!r}: another application holding a certificate of the CA"
        )
    return None


def _names_host(san: x509.SubjectAlternativeName, host: str) -> bool:
    """Whether the subjectAltName names ``host`` (an IP address, or a DNS name compared without case
    and trailing dot; no wildcards: an OPC UA application certificate names its own host)."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        return bool(wanted) and any(n.rstrip(".").lower() == wanted for n in san.get_values_for_type(x509.DNSName))
    return address in san.get_values_for_type(x509.IPAddress)
