"""The identity a session logged in with, as asyncua keeps it.

asyncua stores what the server's user manager returned in the session (``session.user``) and
gives that user to its permission ruleset. Our user manager (scada/opcua/login.py) returns a
:class:`ScadaUser`: asyncua's ``User`` with role ``UserRole.User`` for everyone (never ``Admin``:
asyncua lets an Admin write any attribute and add or delete nodes), and our :class:`Identity`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from asyncua.crypto.permission_rules import User, UserRole

from scada.security.identity import Identity


@dataclasses.dataclass
class ScadaUser(User):
    """asyncua's User, carrying our identity (roles, communes)."""

    identity: Identity | None = None

    @classmethod
    def of(cls, identity: Identity) -> ScadaUser:
        role = UserRole.Anonymous if identity.anonymous else UserRole.User
        return cls(role=role, name=identity.user, identity=identity)


def identity_of(session: Any) -> Identity | None:
    """The identity of an asyncua session (its ``user``), or None when it has none of ours (the
    server's internal session, a server without a security layer)."""
    user = getattr(session, "user", None)
    return user.identity if isinstance(user, ScadaUser) else None
