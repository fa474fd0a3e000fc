"""``scada user add|passwd|disable|enable|list``: the HMI users (the users file, scada/security/users.py).

A password is never taken from the command line (it would be in the shell history and in
``ps``): it is typed twice (getpass), or read as one line from the standard input with
``--password-stdin`` (scripts, tests). The running server follows the file's changes at its
next login: no restart. Each change is one ``user_change`` audit record (the password never in it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from scada.security.audit import AuditSink, record_of
from scada.security.audit_log import CommandAudit
from scada.security.context import RequestContext
from scada.security.identity import Identity, Role
from scada.security.settings import SecuritySettings
from scada.security.users import NAME, User, UsersError, dummy_hash, hash_password, load_users, make_user, save_users

MIN_PASSWORD = 8


class UserCliError(Exception):
    """A bad request (no such user, passwords that differ, ...): the message says what to do."""


def _trail(args: argparse.Namespace) -> AuditSink:
    """Where ``scada user`` records its changes: the audit trail of the data folder."""
    return CommandAudit(SecuritySettings.defaults(Path(args.data)).audit)


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``user`` on the ``scada`` command's subparsers."""
    p = sub.add_parser("user", help="the HMI users: add, passwd, disable, enable, list")
    p.add_argument("--data", default="var", help="the server's --data folder, where users.yaml is (default: var)")
    p.add_argument(
        "--users",
        help="the users file (default: <data>/users.yaml; give security.yaml's users: here if it names another)",
    )
    ops = p.add_subparsers(dest="op", required=True)
    a = ops.add_parser("add", help="add a user (the password is asked twice)")
    a.add_argument("name")
    a.add_argument(
        "--role",
        action="append",
        required=True,
        help=f"a role (repeat for several): {', '.join(r.value for r in Role)} (case-insensitive)",
    )
    a.add_argument("--commune", action="append", help="limit the user to this commune (repeat); default: all")
    a.add_argument(
        "--hidden-communes", action="store_true", help="the other communes' nodes are hidden, not only read-only"
    )
    a.add_argument("--certificate", action="append", default=[], help="SHA-1 thumbprint of an X.509 user certificate")
    a.add_argument("--password-stdin", action="store_true", help="read the password from the standard input")
    pw = ops.add_parser("passwd", help="set a user's password (asked twice)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from the standard input")
    for op, text in (("disable", "refuse the user's logins"), ("enable", "accept the user's logins again")):
        ops.add_parser(op, help=text).add_argument("name")
    ops.add_parser("list", help="the users, their roles and communes (no password hashes)")
    p.set_defaults(func=cmd_user)
    return p


def cmd_user(
    args: argparse.Namespace, audit: AuditSink | None = None, read_password: Callable[[], str] | None = None
) -> int:
    """Run one ``scada user`` operation; 0 when done, 2 with a message on a bad request."""
    path = Path(args.users) if args.users else SecuritySettings.defaults(Path(args.data)).users
    sink = audit if audit is not None else _trail(args)
    try:
        if args.op == "list":
            _list(load_users(path))
            return 0
        ask = read_password or (lambda: _read_password(args))
        with _locked(path):
            users = load_users(path)
            change = _apply(args, users, ask)
            save_users(path, users)
    except (UsersError, UserCliError, ValueError) as exc:
        print(f"scada user {args.op}: {exc}", file=sys.stderr)
        return 2
    sink.record(record_of("user_change", args.name, change, "Good", _cli_context()))
    print(f"user {args.name}: {args.op} done ({path})")
    return 0


def _apply(args: argparse.Namespace, users: dict[str, User], ask: Callable[[], str]) -> dict:
    """Change ``users`` as ``args`` says; the audit record's arguments (never the password)."""
    name, op = args.name, args.op
    if op == "add":
        if name in users:
            raise UserCliError(f"{name!r} exists already (scada user passwd {name} to change the password)")
        if not NAME.match(name):
            raise UserCliError(f"bad user name {name!r}: letters, digits, '.', '_', '@' or '-', at most 64")
        see = False if args.hidden_communes else None
        # Checked before the password is asked: a typo in a role costs no typing.
        make_user(name, dummy_hash(), args.role, args.commune, see, certificates=args.certificate)
        users[name] = make_user(name, hash_password(ask()), args.role, args.commune, see, certificates=args.certificate)
        u = users[name]
        return {
            "op": "add",
            "roles": sorted(r.value for r in u.roles),
            "communes": sorted(u.communes) if u.communes is not None else None,
            "see_other_communes": u.see_other_communes,
            "certificates": sorted(u.certificates),
        }
    if name not in users:
        raise UserCliError(f"no user {name!r} (scada user list)")
    old = users[name]
    if op == "passwd":
        users[name] = dataclasses.replace(old, password_hash=hash_password(ask()))
    else:
        users[name] = dataclasses.replace(old, disabled=op == "disable")
    return {"op": op}


def _read_password(args: argparse.Namespace) -> str:
    """The new password: one line of the standard input with --password-stdin, else typed twice."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UserCliError("no terminal to type the password: give it on the standard input with --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise UserCliError("the two passwords differ: nothing changed")
    if len(password) < MIN_PASSWORD:
        raise UserCliError(f"a password has at least {MIN_PASSWORD} characters: nothing changed")
    return password


def _list(users: dict[str, User]) -> None:
    rows = [("user", "roles", "communes", "other communes", "state", "certificates")]
    for u in users.values():
        communes = ", ".join(sorted(u.communes)) if u.communes is not None else "all"
        see = "default" if u.see_other_communes is None else ("shown" if u.see_other_communes else "hidden")
        rows.append(
            (
                u.name,
                ", ".join(sorted(r.value for r in u.roles)),
                communes,
                see if u.communes is not None else "-",
                "disabled" if u.disabled else "enabled",
                str(len(u.certificates)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One ``scada user`` change at a time on ``path`` (two at once would lose one of them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _cli_context() -> RequestContext:
    """Who made the change: the operating system's user running ``scada user``."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.getuid())
    return RequestContext(identity=Identity(f"cli:{who}", frozenset()), client_address="local")
