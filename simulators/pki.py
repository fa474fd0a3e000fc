"""Self-signed OPC UA application instance certificates, for the bench and the simulators.

A real site has its certificates issued by its own authority; a bench needs a pair on the
spot. The certificate follows OPC UA Part 6 (6.2.2): the application URI in subjectAltName
(a client must present the same URI), the host name as a DNS name, client or server use.
"""

from __future__ import annotations

import socket
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


def make_certificate(
    cert_path: str | Path,
    key_path: str | Path,
    application_uri: str,
    *,
    server: bool,
    days: int = 365,
    host: str | None = None,
) -> tuple[Path, Path]:
    """Write a new RSA-2048 key (PEM, unencrypted) and its self-signed certificate (DER)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    host = host or socket.gethostname()
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)]
    if host != "localhost":
        names.append(x509.DNSName("localhost"))
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(key, application_uri, {}, names, extended=use, days=days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path


def ensure_certificate(
    cert_path: str | Path, key_path: str | Path, application_uri: str, *, server: bool
) -> tuple[Path, Path]:
    """The pair at these paths, made when either file is absent (never overwriting one that is there)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    if cert_path.exists() or key_path.exists():
        raise FileExistsError(f"only one of {cert_path} and {key_path} exists: remove it or supply the other")
    return make_certificate(cert_path, key_path, application_uri, server=server)
