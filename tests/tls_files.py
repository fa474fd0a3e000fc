"""A small test PKI (a CA and the certificates it issues), for TLS and OPC UA tests on loopback."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"))
# A leaf's key usage as OPC UA application certificates have it (TLS leaves need no more).
APPLICATION_USAGE = x509.KeyUsage(True, True, True, True, False, False, False, False, False)
_CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


@dataclass(frozen=True)
class TlsFiles:
    """A test PKI in PEM files: a CA, a broker certificate it signed, a client certificate it signed."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def new_key(use_rsa: bool = False):
    """A new private key: EC P-256, or RSA 2048 (what OPC UA's policies need)."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if use_rsa
        else ec.generate_private_key(ec.SECP256R1())
    )


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    subject: str,
    key,
    issuer: str,
    issuer_key,
    *,
    ca: bool | None = False,
    eku: x509.ObjectIdentifier | None = None,
    san: Sequence[x509.GeneralName] = (),
    usage: x509.KeyUsage | None = None,
    valid: tuple[datetime.timedelta, datetime.timedelta] = (-datetime.timedelta(minutes=5), datetime.timedelta(days=2)),
) -> x509.Certificate:
    """A certificate for ``key`` named ``subject``, signed by ``issuer_key`` as ``issuer``, valid
    from now + ``valid[0]`` to now + ``valid[1]``; a CA gets CA:true and certificate signing,
    ``ca=None`` no basic constraints at all."""
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid[0])
        .not_valid_after(now + valid[1])
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if ca:
        b = b.add_extension(_CA_USAGE, critical=True)
    elif usage is not None:
        b = b.add_extension(usage, critical=True)
    if ca:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def write_certificate(cert: x509.Certificate, path: Path) -> Path:
    """The certificate in ``path``: DER for a .der file, PEM otherwise."""
    encoding = serialization.Encoding.DER if path.suffix == ".der" else serialization.Encoding.PEM
    path.write_bytes(cert.public_bytes(encoding))
    return path


def write_key(key, path: Path) -> Path:
    """The key in ``path``, PEM, unencrypted, readable by its owner only."""
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def make_tls_files(
    folder: Path, ca_name: str = "test-ca", server_names: Sequence[x509.GeneralName] = LOOPBACK
) -> TlsFiles:
    """A new CA called ``ca_name`` and the certificates it issues, in ``folder``: the broker's with
    subjectAltName ``server_names`` (IP 127.0.0.1 and DNS localhost), server use; a client's, client use."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = new_key(), new_key(), new_key()
    ca = issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    server = issue("broker", server_key, ca_name, ca_key, eku=ExtendedKeyUsageOID.SERVER_AUTH, san=server_names)
    client = issue("scada", client_key, ca_name, ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        write_certificate(ca, folder / "ca.pem"),
        write_key(ca_key, folder / "ca.key"),
        write_certificate(server, folder / "broker.pem"),
        write_key(server_key, folder / "broker.key"),
        write_certificate(client, folder / "client.pem"),
        write_key(client_key, folder / "client.key"),
    )
