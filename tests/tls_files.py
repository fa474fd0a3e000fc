"""A small test PKI in PEM files (a CA and the certificates it issues), for TLS tests on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """A test PKI in PEM files: a CA, a broker certificate it signed, a client certificate it signed."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path, name: str = "test-ca") -> TlsFiles:
    """A new CA called ``name`` and the certificates it issues, in ``folder``: the broker's with
    subjectAltName IP 127.0.0.1 and DNS localhost (server use), a client's (client use)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def write_key(key, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return path

    def build(subject: str, key, issuer_name, issuer_key, ca: bool, eku=None, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        return b.sign(issuer_key, hashes.SHA256())

    def write_cert(cert, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = build(name, ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = build("broker", server_key, ca_name, ca_key, False, ExtendedKeyUsageOID.SERVER_AUTH, san)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = build("scada", client_key, ca_name, ca_key, False, ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        write_cert(ca, folder / "ca.pem"),
        write_key(ca_key, folder / "ca.key"),
        write_cert(server, folder / "broker.pem"),
        write_key(server_key, folder / "broker.key"),
        write_cert(client, folder / "client.pem"),
        write_key(client_key, folder / "client.key"),
    )
