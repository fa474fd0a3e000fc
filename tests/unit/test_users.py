"""The users file (scada/security/users.py) and the failed-login throttle (login_throttle.py)."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from scada.security import users as U
from scada.security.identity import Role
from scada.security.login_throttle import LoginThrottle
from scada.security.settings import LoginSettings


@pytest.fixture(scope="module")
def pw_hash() -> str:
    return U.hash_password("s3cret é")


def test_hash_format_and_verify(pw_hash):
    scheme, log2_n, r, p, salt, key = pw_hash.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32
    assert U.verify_password("s3cret é", pw_hash)
    assert not U.verify_password("s3cret e", pw_hash)
    assert U.hash_password("s3cret é") != pw_hash  # a fresh salt each time


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "scrypt$14$8$1$abc",
        "bcrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$30$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",
    ],
)
def test_a_malformed_or_costly_hash_never_verifies(bad):
    assert not U.verify_password("x", bad)  # no exception: a check refuses
    with pytest.raises(ValueError):
        U.check_hash(bad)


def test_round_trip_and_mode_0600(tmp_path, pw_hash):
    path = tmp_path / "users.yaml"
    users = {
        "alice": U.make_user("alice", pw_hash, ["operator", "Observer"], ["Talant", "Dijon"], False),
        "root": U.make_user("root", pw_hash, ["security_admin"], certificates=["AB:" * 19 + "CD"]),
    }
    U.save_users(path, users)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = U.load_users(path)
    assert back == users
    assert back["alice"].roles == {Role.OPERATOR, Role.OBSERVER}
    ident = back["alice"].identity(see_other_communes=True)
    assert ident.communes == {"Talant", "Dijon"} and not ident.see_other_communes
    assert back["root"].identity(see_other_communes=False).see_other_communes is False  # the default applies
    assert back["root"].certificates == {"ab" * 19 + "cd"}
    assert "s3cret" not in path.read_text()


def test_missing_file_is_no_users(tmp_path):
    assert U.load_users(tmp_path / "none.yaml") == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("users: [\n  - name: a\n    password: [", "not a valid users file"),
        ("people: []\n", "one mapping 'users:'"),
        ("users:\n  - name: a\n    roles: [Observer]\n", "required"),
        ("users:\n  - {name: a, password: 'scrypt$x', roles: [Observer]}\n", "user 'a'"),
        ("users:\n  - {name: a, password: 'p', roles: [Pilot]}\n", "unknown role"),
        ("users:\n  - {name: a, password: 'p', roles: [Observer], admin: true}\n", "unknown key"),
    ],
)
def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path, text, says):
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(U.UsersError) as err:
        U.load_users(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_a_name_twice_is_an_error(tmp_path, pw_hash):
    path = tmp_path / "users.yaml"
    entry = f"  - {{name: a, password: '{pw_hash}', roles: [Observer]}}\n"
    path.write_text("users:\n" + entry + entry)
    with pytest.raises(U.UsersError, match="twice"):
        U.load_users(path)


def test_a_failed_write_loses_no_user(tmp_path, pw_hash, monkeypatch):
    path = tmp_path / "users.yaml"
    U.save_users(path, {"alice": U.make_user("alice", pw_hash, ["operator"])})
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(U.UsersError, match="unchanged"):
        U.save_users(path, {"bob": U.make_user("bob", pw_hash, ["observer"])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["users.yaml"]  # no temporary left behind


def test_store_follows_the_file_and_fails_closed(tmp_path, pw_hash):
    path = tmp_path / "users.yaml"
    store = U.UserStore(path)
    assert store.get("alice") is None
    U.save_users(path, {"alice": U.make_user("alice", pw_hash, ["operator"])})
    assert store.get("alice") is not None
    path.write_text("users: [")
    with pytest.raises(U.UsersError):
        store.get("alice")  # not the old users: nobody logs in on a file that cannot be read


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_throttle_delays_and_locks():
    clock = Clock()
    t = LoginThrottle(LoginSettings(max_failures=3, lockout_s=60, delay_s=0.5, max_delay_s=1.5), clock)
    assert t.delay("alice", "10.0.0.1:5000") == 0
    t.failed("alice", "10.0.0.1:5000")
    assert t.delay("alice", "10.0.0.9:1") == 0.5  # per user
    assert t.delay(None, "10.0.0.1:6000") == 0.5  # per client machine, whatever the port
    t.failed("alice", "10.0.0.1:5000")
    assert t.delay("alice", "10.0.0.9:1") == 1.0
    assert not t.locked("alice")
    t.failed("alice", "10.0.0.1:5000")
    assert t.locked("alice") and t.delay(None, "10.0.0.1:1") == 1.5  # capped
    t.failed("alice", "10.0.0.1:5000")  # while locked: the lock is not extended
    assert t.locked_until("alice") == 1060.0
    clock.t = 1060.0
    assert not t.locked("alice")
    t.succeeded("alice")
    assert t.delay("alice", "10.0.0.9:1") == 0
    clock.t = 1200.0
    assert t.delay(None, "10.0.0.1:1") == 0  # the address forgotten lockout_s after its last failure


def test_throttle_memory_is_bounded():
    t = LoginThrottle(LoginSettings(), Clock(), max_addresses=100)
    for i in range(1000):
        t.failed(None, f"10.0.{i // 256}.{i % 256}:1")  # unknown names: no per-user entry
    assert len(t._addresses) == 100 and not t._users
