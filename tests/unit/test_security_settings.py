"""security.yaml: the loader (file:line errors, unknown keys refused, paths in the data folder),
its JSON Schema, and `scada run --security` (a bad file: a clear error, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

import city_scada
from city_scada.demo import DEMO_SECURITY
from common.yamlsrc import ConfigError
from scada.app import Application
from scada.schema import SCHEMAS_DIR, security_schema
from scada.security.identity import Role
from scada.security.settings import LoginSettings, SecuritySettings, load_security, security_file
from tests.integration.helpers import OPEN_SECURITY, ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "security.yaml"
    path.write_text(text)
    return path


def test_absent_the_defaults_are_secure(tmp_path):
    s = load_security(None, tmp_path / "data")
    assert s == SecuritySettings.defaults(tmp_path / "data")
    assert not s.allow_none and not s.anonymous
    assert s.policies == ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
    assert s.pki == tmp_path / "data" / "pki"
    assert not s.accept_unknown_revocation  # a CA's certificates without a current CRL are refused


def test_a_full_file_is_read_with_paths_in_the_data_folder(tmp_path):
    path = write(
        tmp_path,
        "endpoint: opc.tcp://10.1.2.3:4840/scada/\n"
        "policies: [Aes256_Sha256_RsaPss]\nmodes: [SignAndEncrypt]\n"
        "allow_none: false\nanonymous: [Observer]\nsee_other_communes: false\n"
        "pki: certs/pki\naccept_unknown_revocation: true\nusers: u.yaml\naudit: a.sqlite\n"
        "login: {max_failures: 3, lockout_s: 60, delay_s: 1, max_delay_s: 4}\n"
        "limits: {sessions_per_client: 2}\n",
    )
    s = load_security(path, tmp_path / "data")
    assert s.endpoint == "opc.tcp://10.1.2.3:4840/scada/"
    assert (s.policies, s.modes) == (("Aes256_Sha256_RsaPss",), ("SignAndEncrypt",))
    assert s.anonymous == frozenset({Role.OBSERVER}) and not s.see_other_communes
    assert (s.pki, s.users, s.audit) == (
        tmp_path / "data" / "certs/pki",
        tmp_path / "data" / "u.yaml",
        tmp_path / "data" / "a.sqlite",
    )
    assert s.login == LoginSettings(3, 60.0, 1.0, 4.0)
    assert s.limits.sessions_per_client == 2 and s.limits.subscriptions_per_session == 50
    assert s.accept_unknown_revocation
    assert s.source == str(path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("allow_none: true\npolcies: [Basic256Sha256]\n", 2, "polcies: unknown key, did you mean 'policies'?"),
        ("policies: [Basic256Sha256, Basic128Rsa15]\n", 1, "unknown security policy 'Basic128Rsa15'"),
        ("modes: [Sign, Encrypt]\n", 1, "unknown message security mode 'Encrypt'"),
        ("anonymous: [Admin]\n", 1, "unknown role 'Admin'"),
        ("endpoint: 10.1.2.3:4840\n", 1, "endpoint: expected an OPC UA endpoint URL"),
        ("\nlogin:\n  max_failures: 0\n", 3, "login.max_failures: must be greater than 0"),
        ("limits:\n  sessions_per_clients: 3\n", 2, "limits.sessions_per_clients: unknown key"),
        ("policies: []\n", 1, "no endpoint left"),
        ("allow_none: maybe\n", 1, "allow_none: expected true or false"),
        ("pki: pki\naccept_unknown_revocation: yes please\n", 2, "accept_unknown_revocation: expected true or false"),
        ("policies: [Basic256Sha256\n", None, "YAML syntax error"),
    ],
)
def test_a_mistake_is_a_located_error(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_security(path, tmp_path)
    assert message in str(err.value)
    if line is not None:
        assert str(err.value).startswith(f"{path}:{line}: ")


def test_the_file_used_is_the_one_given_else_the_configuration_folders(tmp_path):
    assert security_file(tmp_path, None) is None
    (tmp_path / "security.yaml").write_text("allow_none: true\n")
    assert security_file(tmp_path, None) == tmp_path / "security.yaml"
    assert security_file(tmp_path, "other.yaml") == Path("other.yaml")


def test_the_shipped_profiles_load_and_pass_the_schema():
    validator = Draft7Validator(security_schema())
    for path, anonymous, policies in ((OPEN_SECURITY, Role.SUPERVISOR, ()), (DEMO_SECURITY, Role.OBSERVER, None)):
        s = load_security(path, Path("var"))
        assert s.allow_none and s.anonymous == frozenset({anonymous})
        assert policies is None or s.policies == policies
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text())))
    assert list(validator.iter_errors({"polcies": []})), "an unknown key is refused by the schema too"
    shipped = json.loads((SCHEMAS_DIR / "security.schema.json").read_text())
    assert shipped == security_schema(), "run `scada schema`"


def test_run_with_a_bad_security_file_exits_2_with_the_location(tmp_path, monkeypatch, capsys):
    async def never(self):  # the server must not start
        raise AssertionError("started despite a bad security.yaml")

    monkeypatch.setattr(Application, "run", never)
    bad = write(tmp_path, "allow_none: true\nanonymous: [Observer, Nobody]\n")
    code = city_scada.main(["run", "--config", str(ROOT), "--data", str(tmp_path / "data"), "--security", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"security configuration error: {bad}:2: anonymous: unknown role 'Nobody'" in err


def test_run_refuses_secure_endpoints_without_a_usable_key(tmp_path, monkeypatch, capsys):
    async def never(self):
        raise AssertionError("started without a usable key")

    monkeypatch.setattr(Application, "run", never)
    key = tmp_path / "data" / "pki" / "own" / "private" / "server.pem"
    key.parent.mkdir(parents=True)
    key.write_text("not a key")
    code = city_scada.main(["run", "--config", str(ROOT), "--data", str(tmp_path / "data")])
    assert code == 2
    assert "cannot offer secure endpoints" in capsys.readouterr().err
