"""The demo's HMI users: one per role (and an operator of one commune), with fresh passwords.

``scada demo`` sets them in the users file of its data folder at each start and prints them:
anyone trying the demo can log in with each role without reading a manual. Other users of
that file are left as they are. A real server never has these: its users are made with
``scada user add`` (README, "Users and roles").
"""

from __future__ import annotations

import secrets
from pathlib import Path

from scada.security.users import User, hash_password, load_users, make_user, save_users

# (name, roles, communes): one user per role, and an operator limited to one commune
DEMO_USERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None], ...] = (
    ("observer", ("Observer",), None),
    ("operator", ("Operator",), None),
    ("talant", ("Operator",), ("Talant",)),
    ("engineer", ("Engineer",), None),
    ("supervisor", ("Supervisor",), None),
    ("secadmin", ("SecurityAdmin",), None),
)


def ensure_demo_users(path: Path) -> list[tuple[User, str]]:
    """Add or reset the demo users in the users file ``path`` with new random passwords;
    each (user, its password)."""
    users = load_users(path)
    made = []
    for name, roles, communes in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        users[name] = make_user(name, hash_password(password), roles, communes)
        made.append((users[name], password))
    save_users(path, users)
    return made


def describe(made: list[tuple[User, str]], path: Path) -> str:
    """The demo users and their passwords, as printed at the demo's start."""
    lines = [f"demo HMI users (UserName login; {path}, new passwords at each start):"]
    for user, password in made:
        scope = f", commune {', '.join(sorted(user.communes))}" if user.communes is not None else ""
        roles = ", ".join(sorted(r.value for r in user.roles))
        lines.append(f"  {user.name:<11} {password}   {roles}{scope}")
    return "\n".join(lines)
