"""Roles, permissions and identities: who a session is and what it may do (pure, no asyncua).

Roles are OPC UA Part 18's well-known roles. Each role grants a set of permissions; a user has
one or more roles and may be limited to some communes: outside them, their actions are refused
(and, when ``see_other_communes`` is false, the other communes' nodes are not shown).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from enum import StrEnum


class Role(StrEnum):
    """OPC UA Part 18 well-known roles (their NodeIds: ``ua.ObjectIds.WellKnownRole_<Name>``)."""

    OBSERVER = "Observer"
    OPERATOR = "Operator"
    ENGINEER = "Engineer"
    SUPERVISOR = "Supervisor"
    SECURITY_ADMIN = "SecurityAdmin"


class Permission(StrEnum):
    """What a service or a method needs."""

    BROWSE = "browse"
    READ = "read"
    SUBSCRIBE = "subscribe"
    HISTORY = "history"
    EVENTS = "events"
    ACKNOWLEDGE = "acknowledge"
    COMMENT = "comment"
    SHELVE = "shelve"
    RESET = "reset"
    COMMAND = "command"  # the control issue's commands and Writes to writable tags
    REMOVE_FROM_SERVICE = "remove_from_service"  # with a reason and an expiry
    RELOAD = "reload"
    USERS = "users"
    PKI = "pki"
    AUDIT = "audit"  # the audit events (Part 5): who logged in, from where, who did what
    DISPATCH = "dispatch"  # work orders: create, assign to a crew, cancel, close (scada/operations)


_OBSERVE = frozenset({Permission.BROWSE, Permission.READ, Permission.SUBSCRIBE, Permission.HISTORY, Permission.EVENTS})
_OPERATE = _OBSERVE | {
    Permission.ACKNOWLEDGE,
    Permission.COMMENT,
    Permission.SHELVE,
    Permission.RESET,
    Permission.COMMAND,
    Permission.DISPATCH,
}
_ENGINEER = _OPERATE | {Permission.REMOVE_FROM_SERVICE, Permission.RELOAD}

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.OBSERVER: _OBSERVE,
    Role.OPERATOR: _OPERATE,
    Role.ENGINEER: _ENGINEER,
    # every operational act (the shift supervisor), and the audit; not users nor PKI
    Role.SUPERVISOR: _ENGINEER | {Permission.AUDIT},
    # may look and audit, may not operate
    Role.SECURITY_ADMIN: _OBSERVE | {Permission.USERS, Permission.PKI, Permission.AUDIT},
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated user (or the anonymous one) as the server sees it.

    ``communes`` None: every commune. ``see_other_communes``: whether the nodes of communes outside
    ``communes`` are shown (read-only) or hidden.
    """

    user: str
    roles: frozenset[Role]
    communes: frozenset[str] | None = None
    see_other_communes: bool = True
    anonymous: bool = False

    @property
    def permissions(self) -> frozenset[Permission]:
        out: frozenset[Permission] = frozenset()
        for role in self.roles:
            out |= ROLE_PERMISSIONS[role]
        return out

    def allows(self, permission: Permission, commune: str | None = None) -> bool:
        """May this identity do ``permission`` (on a device of ``commune``, when given)?"""
        if permission not in self.permissions:
            return False
        return commune is None or self.communes is None or commune in self.communes

    def sees(self, commune: str) -> bool:
        """Are the nodes of ``commune`` shown to this identity?"""
        return self.see_other_communes or self.communes is None or commune in self.communes


def roles_of(names: Iterable[str]) -> frozenset[Role]:
    """Roles from their names (case-insensitive, "security_admin" or "SecurityAdmin"); ValueError names an unknown one."""
    by_name = {r.value.lower(): r for r in Role} | {r.name.lower(): r for r in Role}
    out = set()
    for name in names:
        role = by_name.get(str(name).lower())
        if role is None:
            raise ValueError(f"unknown role {name!r} (roles: {', '.join(r.value for r in Role)})")
        out.add(role)
    return frozenset(out)


SERVER = Identity("server", frozenset(Role), anonymous=False)  # the server's own acts (timers, expiries)
NOBODY = Identity("anonymous", frozenset(), anonymous=True)  # an anonymous session where none is allowed
