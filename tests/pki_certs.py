"""Client application certificates for the PKI tests and the security bench, made with
``cryptography``: self-signed ones, a CA and the certificates it signs, CRLs, and the broken ones
(expired, not yet valid, signed by another key than their issuer's)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scada.security.pki import thumbprint

_KEYS: list[rsa.RSAPrivateKey] = []  # RSA keys are slow to make: the tests share a few


def key(i: int = 0) -> rsa.RSAPrivateKey:
    """The ``i``-th shared test key (made on first use)."""
    while len(_KEYS) <= i:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _KEYS[i]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclasses.dataclass
class Cert:
    """A certificate and its key, with files written where a client reads them."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    uri: str

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def thumbprint(self) -> str:
        return thumbprint(self.der)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """(certificate DER file, key PEM file) in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        c, k = folder / f"{name}.der", folder / f"{name}.pem"
        c.write_bytes(self.der)
        k.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return c, k


def make(
    cn: str,
    *,
    key_index: int = 1,
    issuer: Cert | None = None,
    signer: rsa.RSAPrivateKey | None = None,
    ca: bool = False,
    start: dt.timedelta = dt.timedelta(days=-1),
    days: float = 30,
    uri: str | None = None,
) -> Cert:
    """A certificate for ``cn``: self-signed unless ``issuer`` is given; ``signer`` signs instead of
    the issuer's key (a wrongly signed certificate); ``start`` from now, valid ``days``."""
    now = dt.datetime.now(dt.UTC)
    k = key(key_index)
    uri = uri or f"urn:test:{cn}"
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = (
            b.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]),
                critical=False,
            )
            .add_extension(x509.KeyUsage(True, True, True, True, False, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
    sign_with = signer or (issuer.key if issuer else k)
    return Cert(b.sign(sign_with, hashes.SHA256()), k, uri)


def crl(
    issuer: Cert,
    revoked: list[Cert],
    signer: rsa.RSAPrivateKey | None = None,
    next_update: dt.timedelta = dt.timedelta(days=7),
) -> bytes:
    """A DER CRL of ``issuer`` listing ``revoked`` (signed by ``signer`` instead: a forged CRL),
    issued a day ago, its nextUpdate ``next_update`` from now (negative: an expired CRL)."""
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - dt.timedelta(days=1))
        .next_update(now + next_update)
    )
    for c in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(c.cert.serial_number).revocation_date(now).build()
        )
    return b.sign(signer or issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
