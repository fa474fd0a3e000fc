"""Roles, permissions and communes (scada/security/identity.py) and audit records (audit.py)."""

from __future__ import annotations

import json

import pytest

from scada.security.audit import MemoryAudit, record_of
from scada.security.context import REQUEST, RequestContext
from scada.security.identity import NOBODY, Identity, Permission, Role, roles_of


def test_each_role_grants_what_the_issue_says():
    observer = Identity("olga", frozenset({Role.OBSERVER}))
    operator = Identity("oscar", frozenset({Role.OPERATOR}))
    engineer = Identity("eve", frozenset({Role.ENGINEER}))
    admin = Identity("sam", frozenset({Role.SECURITY_ADMIN}))
    for p in (Permission.BROWSE, Permission.READ, Permission.SUBSCRIBE, Permission.HISTORY, Permission.EVENTS):
        assert observer.allows(p) and operator.allows(p) and engineer.allows(p)
    assert not observer.allows(Permission.ACKNOWLEDGE)
    assert operator.allows(Permission.ACKNOWLEDGE) and operator.allows(Permission.SHELVE)
    assert operator.allows(Permission.COMMAND) and not operator.allows(Permission.REMOVE_FROM_SERVICE)
    assert engineer.allows(Permission.REMOVE_FROM_SERVICE) and engineer.allows(Permission.RELOAD)
    assert admin.allows(Permission.USERS) and admin.allows(Permission.PKI)
    assert not admin.allows(Permission.ACKNOWLEDGE) and not engineer.allows(Permission.USERS)
    assert not NOBODY.allows(Permission.READ)


def test_a_user_limited_to_communes_acts_only_there():
    talant = Identity("tom", frozenset({Role.OPERATOR}), communes=frozenset({"Talant"}), see_other_communes=False)
    assert talant.allows(Permission.ACKNOWLEDGE, "Talant")
    assert not talant.allows(Permission.ACKNOWLEDGE, "Dijon")
    assert talant.sees("Talant") and not talant.sees("Dijon")
    everywhere = Identity("ann", frozenset({Role.OPERATOR}))
    assert everywhere.allows(Permission.ACKNOWLEDGE, "Dijon") and everywhere.sees("Dijon")


def test_roles_are_named_as_in_part_18_or_in_snake_case():
    assert roles_of(["observer", "SecurityAdmin", "security_admin"]) == {Role.OBSERVER, Role.SECURITY_ADMIN}
    with pytest.raises(ValueError, match="unknown role 'root'"):
        roles_of(["root"])


def test_an_audit_record_names_the_request_being_served():
    sink = MemoryAudit()
    sink.record(record_of("call", "Acknowledge", {"b": 1, "a": "é"}, "Good"))
    ident = Identity("oscar", frozenset({Role.OPERATOR, Role.OBSERVER}))
    token = REQUEST.set(RequestContext(ident, "ns=1;i=7", "10.0.0.5:51000", cert_thumbprint="ab12"))
    try:
        sink.record(record_of("call", "Acknowledge", [1], "BadUserAccessDenied"))
    finally:
        REQUEST.reset(token)
    server, oscar = sink.records
    assert (server.user, server.roles, server.arguments) == ("server", (), '{"a":"é","b":1}')
    assert (oscar.user, oscar.roles, oscar.session) == ("oscar", ("Observer", "Operator"), "ns=1;i=7")
    assert (oscar.client_address, oscar.cert_thumbprint, oscar.result) == ("10.0.0.5:51000", "ab12", "BadUserAccessDenied")
    assert json.loads(oscar.arguments) == [1]


def test_the_audit_is_the_supervisors_and_the_security_admins():
    """Audit events name users, addresses and every commune's actions: Part 18's audit roles only."""
    sees = {role for role in Role if Identity("u", frozenset({role})).allows(Permission.AUDIT)}
    assert sees == {Role.SUPERVISOR, Role.SECURITY_ADMIN}
    assert not NOBODY.allows(Permission.AUDIT)
