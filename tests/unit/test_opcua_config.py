"""OPC UA security keys of tags.yaml: the files they name are read and checked at load time.

Certificates are generated in a temporary folder; every mistake is a located ConfigError
naming the key, never a session that silently fails to open at run time.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from city_scada import load_config
from common.yamlsrc import ConfigError
from simulators.pki import make_certificate

SECURITY = "equipment_types.traffic_junction.security"


def tags(folder: Path, security: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tags.yaml").write_text(f"""\
equipment_types:
  traffic_junction:
    class: traffic
    driver: opcua
    namespace: urn:city-scada:traffic-sim
    security:
{security}
    points:
      mode: {{node: "{{device}}.Mode"}}
devices:
  - {{name: J-DIJ-001, type: traffic_junction, commune: Dijon, lat: 47.32, lon: 5.04,
     endpoint: "opc.tcp://127.0.0.1:4841/traffic/"}}
""")
    return folder


def secure(cert: str = "pki/client.der", key: str = "pki/client.pem", extra: str = "",
           policy: str = "Basic256Sha256") -> str:
    """A secure block; the server to trust is the trust list pki/server.der unless ``extra`` pins one."""
    trusted = "" if "server_certificate" in extra or "trusted" in extra else "      trusted: pki/server.der\n"
    return (f"      policy: {policy}\n      mode: Sign\n      certificate: {cert}\n"
            f"      private_key: {key}\n{trusted}{extra}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_certificate(d / "client.der", d / "client.pem", "urn:test:scada", server=False)
    make_certificate(d / "other.der", d / "other.pem", "urn:test:other", server=False)
    make_certificate(d / "server.der", d / "server.pem", "urn:test:traffic", server=True)
    key = serialization.load_pem_private_key((d / "client.pem").read_bytes(), None)
    (d / "client-locked.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    (d / "client-key.der").write_bytes(key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert = x509.load_der_x509_certificate((d / "client.der").read_bytes())
    (d / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "expired.der").write_bytes(_plain_cert(key, days=-1, uri="urn:test:scada"))
    (d / "no-uri.der").write_bytes(_plain_cert(key, days=30, uri=None))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (d / "ec.pem").write_bytes(ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "ec.der").write_bytes(_plain_cert(ec_key, days=30, uri="urn:test:ec"))
    return d


def _plain_cert(key, days: int, uri: str | None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now + dt.timedelta(days=days)))
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def load_error(folder: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    return info.value


def with_pki(tmp_path: Path, pki: Path, security: str) -> Path:
    folder = tags(tmp_path / "site", security)
    (folder / "pki").symlink_to(pki, target_is_directory=True)
    return folder


def test_paths_are_relative_to_tags_yaml_not_to_the_working_directory(tmp_path, pki, monkeypatch):
    folder = with_pki(tmp_path, pki, secure(extra="      server_certificate: pki/server.der\n"))
    monkeypatch.chdir(tmp_path)  # not the configuration folder
    sec = load_config(folder).types["traffic_junction"].io.security
    assert sec.secure and (sec.policy, sec.mode) == ("Basic256Sha256", "Sign")
    assert sec.certificate == (pki / "client.der").read_bytes()
    assert sec.server_certificate == (pki / "server.der").read_bytes()
    assert sec.application_uri == "urn:test:scada"
    assert "private_key" not in repr(sec) and "certificate=" not in repr(sec)  # never a key in a log line


def test_pem_certificate_and_der_key_are_taken(tmp_path, pki):
    folder = with_pki(tmp_path, pki, secure("pki/client-cert.pem", "pki/client-key.der"))
    sec = load_config(folder).types["traffic_junction"].io.security
    assert sec.certificate == (pki / "client.der").read_bytes()  # kept as DER whatever the file


def test_without_security_the_policy_is_none(tmp_path):
    folder = tags(tmp_path, "      policy: None\n")
    sec = load_config(folder).types["traffic_junction"].io.security
    assert not sec.secure and sec.mode == "None"


@pytest.mark.parametrize(("security", "key", "message"), [
    (secure(key="pki/other.pem"), "private_key", "this key does not belong to the certificate pki/client.der"),
    (secure(cert="pki/client.pem"), "certificate", "is not an X.509 certificate (DER or PEM)"),
    (secure(key="pki/client.der"), "private_key", "is not a private key (PEM or DER)"),
    (secure(key="pki/client-locked.pem"), "private_key", "is encrypted"),
    (secure(cert="pki/expired.der"), "certificate", "expired on"),
    (secure(cert="pki/no-uri.der"), "certificate", "names the application URI in its subjectAltName"),
    (secure(cert="pki/ec.der", key="pki/ec.pem"), "private_key", "need an RSA key of 2048 to 4096 bits"),
    (secure(key="pki/missing.pem"), "private_key", "file not found: "),
    (secure(extra="      server_certificate: pki/traffic.der\n"), "server_certificate", "file not found: "),
    (secure(extra="      server_certificate: pki/server.pem\n"), "server_certificate", "is not an X.509 certificate"),
], ids=["key-of-another-certificate", "key-as-certificate", "certificate-as-key", "encrypted-key",
        "expired-certificate", "certificate-without-uri", "ec-key", "missing-key-file", "missing-server-certificate",
        "server-certificate-not-a-certificate"])
def test_file_mistakes_are_located_errors(tmp_path, pki, security, key, message):
    folder = with_pki(tmp_path, pki, security)
    err = load_error(folder)
    assert err.key == f"{SECURITY}.{key}"
    assert err.file == str(folder / "tags.yaml")
    line = (folder / "tags.yaml").read_text().splitlines()[err.line - 1]
    assert line.strip().startswith(f"{key}:"), line  # the line to edit
    assert message in err.message, err


# The trust list: the servers a secure session may open with.


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
def test_trust_list_as_a_folder_a_file_or_files(tmp_path, pki, policy):
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "server.der").write_bytes((pki / "server.der").read_bytes())
    (trust / "other.der").write_bytes((pki / "other.der").read_bytes())
    (trust / "README.txt").write_text("not a certificate: ignored")
    for k, (extra, expected) in enumerate([
        (f"      trusted: {trust}\n", {"server", "other"}),
        ("      trusted: pki/server.der\n", {"server"}),
        ("      trusted: [pki/server.der, pki/client-cert.pem]\n", {"server", "client"}),
    ]):
        folder = with_pki(tmp_path / str(k), pki, secure(extra=extra, policy=policy))
        sec = load_config(folder).types["traffic_junction"].io.security
        assert sec.policy == policy and sec.server_certificate is None
        assert set(sec.trusted) == {(pki / f"{n}.der").read_bytes() for n in expected}
        assert "trusted" not in repr(sec)


def test_a_secure_session_needs_a_server_to_trust(tmp_path, pki):
    folder = tags(tmp_path, "      policy: Basic256Sha256\n      mode: Sign\n      certificate: pki/client.der\n"
                            "      private_key: pki/client.pem\n")
    (folder / "pki").symlink_to(pki, target_is_directory=True)
    err = load_error(folder)
    assert err.key == f"{SECURITY}.policy"
    assert "needs to know which server to trust: give trusted" in err.message and "server_certificate" in err.message


@pytest.mark.parametrize(("trusted", "message"), [
    ("pki/nothing-here", "not found: "),
    ("pki/client.pem", "is not an X.509 certificate"),
    ("pki/expired.der", "expired on"),
    ("empty", "holds no certificate"),
    ("[]", "expected a folder, a file, or a list of files"),
])
def test_trust_list_mistakes_are_located(tmp_path, pki, trusted, message):
    folder = with_pki(tmp_path, pki, secure(extra=f"      trusted: {trusted}\n"))
    (folder / "empty").mkdir()
    err = load_error(folder)
    assert err.key == f"{SECURITY}.trusted", err
    assert message in err.message, err
