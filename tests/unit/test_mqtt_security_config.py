"""MQTT broker_security of tags.yaml: the files and the password source are read and checked at
load time; every mistake is a located ConfigError (file:line, key), and a password is never
written in tags.yaml nor echoed in an error or a repr."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from city_scada import load_config
from common.yamlsrc import ConfigError
from tests.tls_files import TlsFiles, make_tls_files

KEY = "equipment_types.sensor.broker_security"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki") / "pki")


def tags(folder: Path, security: str) -> Path:
    """``folder/tags.yaml``: one MQTT sensor type whose broker_security is ``security`` (YAML text)."""
    folder.mkdir(parents=True, exist_ok=True)
    sensor = {"class": "sensor", "driver": "mqtt", "broker_security": yaml.safe_load(security)}
    sensor["points"] = {"level": {"topic": "city/sensors/{device}/state", "json": "level"}}
    device = {
        "name": "S-1",
        "type": "sensor",
        "commune": "Dijon",
        "lat": 47.32,
        "lon": 5.04,
        "endpoint": "127.0.0.1:8883",
    }
    doc = {"equipment_types": {"sensor": sensor}, "devices": [device]}
    (folder / "tags.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def load_error(folder: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    return info.value


def security(folder: Path):
    return load_config(folder).types["sensor"].io.security


def test_tls_and_a_password_file_relative_to_tags_yaml(tmp_path, pki, monkeypatch):
    folder = tags(tmp_path / "site", "ca: pki/ca.pem\nusername: scada\npassword_file: secrets/mqtt.pw")
    (folder / "pki").symlink_to(pki.ca.parent, target_is_directory=True)
    (folder / "secrets").mkdir()
    (folder / "secrets" / "mqtt.pw").write_text("p4ss word\n")  # the first line, without its end
    monkeypatch.chdir(tmp_path)  # not the configuration folder
    sec = security(folder)
    assert sec.tls and sec.ca == str(pki.ca.resolve())
    assert (sec.username, sec.password) == ("scada", "p4ss word")
    assert sec.password_source == f"file {(folder / 'secrets' / 'mqtt.pw').resolve()}"
    assert "p4ss" not in repr(sec) and "p4ss" not in repr(load_config(folder).types["sensor"])


def test_a_password_from_the_environment_and_a_client_certificate(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("SCADA_TEST_MQTT_PW", "from-env")
    folder = tags(
        tmp_path,
        f"ca: {pki.ca}\ncertificate: {pki.client_cert}\nprivate_key: {pki.client_key}\n"
        "username: scada\npassword_env: SCADA_TEST_MQTT_PW",
    )
    sec = security(folder)
    assert sec.password == "from-env" and sec.password_source == "environment variable SCADA_TEST_MQTT_PW"
    assert sec.certificate == str(pki.client_cert) and sec.private_key == str(pki.client_key)


def test_without_ca_the_link_is_plain_with_a_login(tmp_path, monkeypatch):
    monkeypatch.setenv("SCADA_TEST_MQTT_PW", "x")
    sec = security(tags(tmp_path, "username: scada\npassword_env: SCADA_TEST_MQTT_PW"))
    assert not sec.tls and sec.username == "scada"


def test_an_inline_password_is_refused_without_echoing_it(tmp_path):
    folder = tags(tmp_path, "username: scada\npassword: hunter2")
    err = load_error(folder)
    assert (err.file, err.line, err.key) == (str(folder / "tags.yaml"), 7, f"{KEY}.password")
    assert "never written in tags.yaml" in err.message and "password_file" in err.message
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("ca: missing.pem", "ca", "file not found"),
        ("ca: tags.yaml", "ca", "holds no PEM CA certificate"),
        ("username: scada", "username", "a user needs a password: give password_file or password_env"),
        ("username: scada\npassword_file: nowhere.pw", "password_file", "file not found"),
        ("username: scada\npassword_env: SCADA_TEST_UNSET_VARIABLE", "password_env", "is not set"),
        ("password_env: SCADA_TEST_MQTT_PW", "password_env", "a password goes with a username"),
        (
            "username: scada\npassword_env: SCADA_TEST_MQTT_PW\npassword_file: x.pw",
            "password_env",
            "not both",
        ),
        ("username: scada\npassword_env: SCADA_TEST_EMPTY_PW", "password_env", "is empty"),
        ("usrname: scada", "usrname", "did you mean 'username'?"),
        ("ca: {ca}\ncertificate: {cert}", "certificate", "needs its private_key"),
        ("certificate: {cert}\nprivate_key: {key}", "certificate", "give the broker's ca too"),
        ("ca: {ca}\ncertificate: {ca}\nprivate_key: {key}", "certificate", "not a PEM certificate and its"),
        ("ca: {ca}\ncertificate: {cert}\nprivate_key: {locked}", "private_key", "is encrypted"),
    ],
)
def test_mistakes_are_located(tmp_path, pki, monkeypatch, lines, key, message):
    from cryptography.hazmat.primitives import serialization

    monkeypatch.setenv("SCADA_TEST_MQTT_PW", "x")
    monkeypatch.setenv("SCADA_TEST_EMPTY_PW", "")
    monkeypatch.delenv("SCADA_TEST_UNSET_VARIABLE", raising=False)
    locked = tmp_path / "locked.key"
    k = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    locked.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    text = lines.format(ca=pki.ca, cert=pki.client_cert, key=pki.client_key, locked=locked)
    err = load_error(tags(tmp_path, text))
    assert err.key == f"{KEY}.{key}" and err.line is not None and err.line >= 6, err
    assert message in err.message, err
