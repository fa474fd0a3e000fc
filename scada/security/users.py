"""The users file: who may log in to the HMI server, with which password, roles and communes.

One YAML file (``SecuritySettings.users``, default ``<data>/users.yaml``), mode 0600, written by
``scada user`` (scada/security/user_cli.py) and read by the server's login (scada/opcua/login.py),
which follows its changes without a restart::

    users:
      - name: alice
        password: scrypt$14$8$1$<salt, base64>$<hash, base64>
        roles: [Operator]
        communes: [Talant]          # optional: every commune when absent
        see_other_communes: false   # optional: the settings' default when absent
        disabled: false
        certificates: [<SHA-1 thumbprint, hex>]   # optional: X.509 user tokens of this user

Passwords are kept as scrypt hashes (n = 2**14, r = 8, p = 1, a 16-byte random salt), each a
self-describing string so that stronger parameters can come later without breaking old
entries. Writes go to a temporary file in the same folder, synced, then renamed over the old
one: a failed write (full disk, killed process) leaves the previous file whole.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from scada.security.identity import Identity, Role, roles_of

SCHEME = "scrypt"
LOG2_N, R, P = 14, 8, 1  # ~100 ms and 16 MiB per hash on the server's machine
SALT_BYTES, KEY_BYTES = 16, 32
# Bounds on what a hash string may ask for: a hand-edited file must not make a login cost minutes.
_MAX_LOG2_N, _MAX_R, _MAX_P = 20, 32, 16
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_THUMBPRINT = re.compile(r"^[0-9a-f]{40}$")
_KEYS = {"name", "password", "roles", "communes", "see_other_communes", "disabled", "certificates"}


class UsersError(Exception):
    """A users file that cannot be read or written, or a bad user: the message names the file."""


def hash_password(password: str) -> str:
    """``password``'s scrypt hash as ``scrypt$14$8$1$<salt>$<hash>`` (salt and hash in base64)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, LOG2_N, R, P, KEY_BYTES)
    return f"{SCHEME}${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Does ``password`` match the hash ``encoded``? (constant-time comparison; False for a
    malformed hash, never an exception: a login check must refuse, not fail open or crash)."""
    try:
        log2_n, r, p, salt, key = _parse_hash(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(key)), key)


@cache
def dummy_hash() -> str:
    """A hash no password is checked against for real: an unknown user name costs the same
    scrypt as a known one, so that the time of a refusal does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def check_hash(encoded: str) -> None:
    """ValueError saying what is wrong with the hash string ``encoded``."""
    _parse_hash(encoded)


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"not a {SCHEME}$log2n$r$p$salt$hash string")
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError(f"malformed {SCHEME} hash: {exc}") from None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(f"{SCHEME} parameters out of bounds (log2 n <= {_MAX_LOG2_N}, r <= {_MAX_R}, p <= {_MAX_P})")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError(f"{SCHEME} salt or hash too short")
    return log2_n, r, p, salt, key


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log2_n
    # OpenSSL refuses more memory than maxmem: give it what these parameters need (128·r·n, plus slack).
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n * p)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclasses.dataclass(frozen=True)
class User:
    """One entry of the users file. ``communes`` None: every commune; ``see_other_communes``
    None: the settings' default; ``certificates``: SHA-1 thumbprints (lowercase hex) of the
    X.509 user certificates that log in as this user."""

    name: str
    password_hash: str
    roles: frozenset[Role]
    communes: frozenset[str] | None = None
    see_other_communes: bool | None = None
    disabled: bool = False
    certificates: frozenset[str] = frozenset()

    def identity(self, see_other_communes: bool = True) -> Identity:
        """The identity a session of this user has (``see_other_communes``: the settings' default)."""
        see = self.see_other_communes if self.see_other_communes is not None else see_other_communes
        return Identity(self.name, self.roles, self.communes, see, anonymous=False)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "password": self.password_hash,
            "roles": sorted(r.value for r in self.roles),
        }
        if self.communes is not None:
            out["communes"] = sorted(self.communes)
        if self.see_other_communes is not None:
            out["see_other_communes"] = self.see_other_communes
        out["disabled"] = self.disabled
        if self.certificates:
            out["certificates"] = sorted(self.certificates)
        return out


def make_user(
    name: str,
    password_hash: str,
    roles: Iterable[str],
    communes: Iterable[str] | None = None,
    see_other_communes: bool | None = None,
    disabled: bool = False,
    certificates: Iterable[str] = (),
) -> User:
    """A checked User; ValueError saying what is wrong (name, roles, hash, thumbprints)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(
            f"bad user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', not starting with a sign"
        )
    role_set = roles_of(list(roles))
    if not role_set:
        raise ValueError(f"user {name!r} has no role")
    check_hash(password_hash)
    commune_set = None
    if communes is not None:
        commune_set = frozenset(str(c) for c in communes)
        if not commune_set or not all(commune_set):
            raise ValueError(f"user {name!r}: communes must be a list of names (leave it out for every commune)")
    prints = frozenset(str(t).lower().replace(":", "") for t in certificates)
    bad = [t for t in prints if not _THUMBPRINT.match(t)]
    if bad:
        raise ValueError(f"user {name!r}: not a SHA-1 thumbprint (40 hex digits): {bad[0]!r}")
    return User(name, password_hash, role_set, commune_set, see_other_communes, bool(disabled), prints)


def load_users(path: Path) -> dict[str, User]:
    """The users of the file ``path`` by name ({} when it does not exist); UsersError naming
    the file and the entry for anything unreadable or wrong (nothing is guessed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersError(f"{path}: cannot read the users file: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsersError(f"{path}: not a valid users file (YAML): {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or set(doc) != {"users"} or not isinstance(doc["users"], list | None):
        raise UsersError(f"{path}: a users file is one mapping 'users:' with a list of users")
    users: dict[str, User] = {}
    for i, entry in enumerate(doc["users"] or [], 1):
        where = f"{path}: user #{i}"
        if not isinstance(entry, dict):
            raise UsersError(f"{where}: a mapping of name, password, roles, ... expected")
        unknown = set(entry) - _KEYS
        if unknown:
            raise UsersError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_KEYS)})")
        if not {"name", "password", "roles"} <= set(entry):
            raise UsersError(f"{where}: name, password and roles are required")
        where = f"{path}: user {entry['name']!r}"
        see = entry.get("see_other_communes")
        if not isinstance(see, bool | None) or not isinstance(entry.get("disabled", False), bool):
            raise UsersError(f"{where}: see_other_communes and disabled are true or false")
        roles, communes, prints = entry["roles"], entry.get("communes"), entry.get("certificates") or []
        if not isinstance(roles, list) or not isinstance(communes, list | None) or not isinstance(prints, list):
            raise UsersError(f"{where}: roles, communes and certificates are lists")
        try:
            user = make_user(
                entry["name"], entry["password"], roles, communes, see, entry.get("disabled", False), prints
            )
        except ValueError as exc:
            raise UsersError(f"{where}: {exc}") from None
        if user.name in users:
            raise UsersError(f"{where}: the name appears twice")
        users[user.name] = user
    return users


def save_users(path: Path, users: Mapping[str, User]) -> None:
    """Write ``users`` to ``path`` atomically, mode 0600: the old file stays whole if anything
    fails (UsersError naming the file)."""
    path = Path(path)
    doc = {"users": [users[n].to_yaml() for n in sorted(users)]}
    text = "# HMI users: edit with `scada user` (passwords are scrypt hashes)\n" + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=None, allow_unicode=True
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsersError(f"{path}: the users file was not written (it is unchanged): {exc}") from None


def _sync_dir(folder: Path) -> None:
    """The rename itself durable (a crash right after keeps the new file, not none)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UserStore:
    """The users file as the server reads it: loaded again when it changes (``scada user``
    needs no restart). A file that became unreadable raises UsersError on each look-up, so
    that logins are refused (fail closed) until it is fixed; the old users are not kept."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._prints: dict[str, User] = {}
        self._error: UsersError | None = None
        self.generation = 0  # one more at each read of the file (or failure to read it)

    def reload(self) -> None:
        """Read the file if it changed since the last look (UsersError if it cannot be read)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp and self._error is None:
            return
        try:
            users = load_users(self.path)
        except UsersError as exc:
            self._stamp, self._error, self._users, self._prints = stamp, exc, {}, {}
            self.generation += 1
            raise
        self._stamp, self._error, self._users = stamp, None, users
        self.generation += 1
        self._prints = {t: u for u in users.values() for t in u.certificates}

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        self.reload()
        return self._users.get(name)

    def loaded(self, name: str) -> User | None:
        """The user called ``name`` as last read, without looking at the file (None also while
        the file is unreadable)."""
        return self._users.get(name)

    def by_thumbprint(self, thumbprint: str) -> User | None:
        """The user whose X.509 user certificates include ``thumbprint`` (SHA-1 hex), or None."""
        self.reload()
        return self._prints.get(thumbprint.lower())

    def names(self) -> list[str]:
        """The users' names (as last read)."""
        return sorted(self._users)
