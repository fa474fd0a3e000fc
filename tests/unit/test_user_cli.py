"""``scada user`` (scada/security/user_cli.py): users added and changed, passwords never on argv
nor in the output or the audit, each change audited."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest

from scada.security import user_cli
from scada.security.audit import MemoryAudit
from scada.security.identity import Role
from scada.security.users import load_users, verify_password
from tests.integration.helpers import DEADLINE, ROOT


def run(tmp_path, *argv: str, password: str = "", audit: MemoryAudit | None = None, monkeypatch=None) -> int:
    parser = argparse.ArgumentParser()
    user_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["user", "--data", str(tmp_path), *argv])
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    return user_cli.cmd_user(args, audit=audit)


def test_add_passwd_disable_enable_list(tmp_path, monkeypatch, capsys):
    audit = MemoryAudit()
    pw = "first password"
    assert run(tmp_path, "add", "alice", "--role", "operator", "--role", "Observer", "--commune", "Talant",
               "--hidden-communes", "--password-stdin", password=pw, audit=audit, monkeypatch=monkeypatch) == 0  # fmt: skip
    alice = load_users(tmp_path / "users.yaml")["alice"]
    assert alice.roles == {Role.OPERATOR, Role.OBSERVER} and alice.communes == {"Talant"}
    assert alice.see_other_communes is False and verify_password(pw, alice.password_hash)
    assert run(tmp_path, "passwd", "alice", "--password-stdin", password="second password", audit=audit,
               monkeypatch=monkeypatch) == 0  # fmt: skip
    assert verify_password("second password", load_users(tmp_path / "users.yaml")["alice"].password_hash)
    assert run(tmp_path, "disable", "alice", audit=audit) == 0
    assert load_users(tmp_path / "users.yaml")["alice"].disabled
    assert run(tmp_path, "enable", "alice", audit=audit) == 0
    assert not load_users(tmp_path / "users.yaml")["alice"].disabled
    capsys.readouterr()
    assert run(tmp_path, "list") == 0
    out = capsys.readouterr().out
    assert "alice" in out and "Operator" in out and "Talant" in out and "scrypt" not in out
    ops = [json.loads(r.arguments)["op"] for r in audit.records]
    assert ops == ["add", "passwd", "disable", "enable"]
    assert {r.action for r in audit.records} == {"user_change"} and {r.target for r in audit.records} == {"alice"}
    assert all(r.user.startswith("cli:") for r in audit.records)
    text = " ".join(r.arguments for r in audit.records)
    assert "password" not in text and "scrypt" not in text


def test_refusals_change_nothing(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "add", "bob", "--role", "observer", "--password-stdin", password="long enough",
               monkeypatch=monkeypatch) == 0  # fmt: skip
    before = (tmp_path / "users.yaml").read_bytes()
    assert run(tmp_path, "add", "bob", "--role", "observer", "--password-stdin", password="long enough",
               monkeypatch=monkeypatch) == 2  # fmt: skip
    assert run(tmp_path, "add", "eve", "--role", "pilot", "--password-stdin", password="long enough",
               monkeypatch=monkeypatch) == 2  # fmt: skip
    assert run(tmp_path, "passwd", "bob", "--password-stdin", password="short", monkeypatch=monkeypatch) == 2
    assert run(tmp_path, "disable", "nobody") == 2
    assert (tmp_path / "users.yaml").read_bytes() == before
    err = capsys.readouterr().err
    assert "exists already" in err and "unknown role" in err and "at least" in err and "no user" in err


def test_passwords_typed_twice_must_match(tmp_path, monkeypatch):
    typed = iter(["one password", "another one"])
    monkeypatch.setattr(user_cli.getpass, "getpass", lambda prompt="": next(typed))
    monkeypatch.setattr(sys, "stdin", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    assert run(tmp_path, "add", "carol", "--role", "engineer") == 2
    assert not (tmp_path / "users.yaml").exists() or "carol" not in load_users(tmp_path / "users.yaml")


def test_no_password_on_the_command_line():
    """No option takes a password: argparse refuses one."""
    parser = argparse.ArgumentParser()
    user_cli.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["user", "add", "x", "--role", "observer", "--password", "secret"])


def test_scada_user_command_line(tmp_path):
    """Through ``python -m city_scada user`` as a script would run it."""
    cmd = [sys.executable, "-m", "city_scada", "user", "--data", str(tmp_path)]
    done = subprocess.run([*cmd, "add", "dave", "--role", "supervisor", "--password-stdin"], input="pw of dave\n",
                          text=True, capture_output=True, cwd=ROOT, timeout=DEADLINE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify_password("pw of dave", load_users(tmp_path / "users.yaml")["dave"].password_hash)


def test_demo_users_one_per_role_fresh_passwords_others_kept(tmp_path, monkeypatch):
    from city_scada import demo_users

    monkeypatch.setattr(sys, "stdin", io.StringIO("a real user's password\n"))
    assert run(tmp_path, "add", "zoe", "--role", "observer", "--password-stdin") == 0
    path = tmp_path / "users.yaml"
    first = demo_users.ensure_demo_users(path)
    users = load_users(path)
    assert "zoe" in users  # a real user of the same file stays
    assert {r for u, _ in first for r in u.roles} == set(Role)
    assert all(verify_password(pw, users[u.name].password_hash) for u, pw in first)
    assert users["talant"].communes == {"Talant"}
    again = demo_users.ensure_demo_users(path)
    assert [pw for _, pw in again] != [pw for _, pw in first]  # new passwords at each start
    text = demo_users.describe(again, path)
    assert all(u.name in text and pw in text for u, pw in again)


def test_a_change_without_a_given_sink_is_in_the_data_folders_audit_trail(tmp_path, monkeypatch):
    from scada.security.audit_log import AuditLog

    assert run(tmp_path, "add", "carol", "--role", "engineer", "--password-stdin", password="long enough pw",
               monkeypatch=monkeypatch) == 0  # fmt: skip
    with AuditLog(tmp_path / "audit.sqlite") as log:
        [entry] = log.query(action="user_change")
        assert log.verify() == []
    assert entry.record.target == "carol" and "long enough" not in entry.record.arguments
