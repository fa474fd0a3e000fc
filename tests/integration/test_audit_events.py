"""OPC UA audit events (Part 5): an HMI client subscribed to audit events on the Server object
receives one for each audited act, whichever way its filter names the audit types, when its
user may see the audit (Supervisor, SecurityAdmin); an Observer, anonymous or not, gets none."""

from __future__ import annotations

import pytest
import pytest_asyncio
from asyncua import Client, ua

from scada.opcua.audit_events import MAX_QUEUED, AuditEvents
from scada.opcua.server import HmiServer
from scada.security.audit import AuditFanout, MemoryAudit, record_of
from scada.security.context import RequestContext
from scada.security.identity import Identity, Role
from scada.security.settings import SecuritySettings
from scada.security.users import hash_password, make_user, save_users
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import DEADLINE, Notifications, free_port, serving, until
from tests.leaks import tasks_left

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

OI = ua.ObjectIds
DEVICES = '\ndevices:\n  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}\n'
ALICE = RequestContext(
    Identity("alice", frozenset({Role.OPERATOR}), frozenset({"Talant"})),
    session_id="ns=1;i=1001",
    client_address="127.0.0.1:50000",
    security_mode="SignAndEncrypt",
    security_policy="Basic256Sha256",
    cert_thumbprint="ab" * 20,
)
METHOD = f"ns=0;i={OI.AcknowledgeableConditionType_Acknowledge}"
USERS = {  # name: (roles, communes, see_other_communes)
    "sue": (["supervisor"], None, None),  # sees the audit
    "sam": (["security_admin"], None, None),  # sees the audit
    "olga": (["observer"], None, None),
    "oscar": (["operator"], None, None),
    "tess": (["supervisor"], ["Talant"], False),  # Talant's supervisor, who does not see Dijon
}


def password(name: str) -> str:
    return f"password of {name}"


def session(url: str, user: str | None = "sue") -> Client:
    """A client logged in as ``user`` (None: anonymous)."""
    client = Client(url, timeout=10)
    if user is not None:
        client.set_user(user)
        client.set_password(password(user))
    return client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hmi(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit_events")
    config = configs.write_config(folder, DEVICES, "alarms: []\n")
    # A None endpoint and anonymous observers (an HMI's audit view only watches): what this test's client needs.
    settings = SecuritySettings(
        allow_none=True,
        anonymous=frozenset({Role.OBSERVER}),
        audit=folder / "audit.sqlite",
        users=folder / "users.yaml",
        pki=folder / "pki",
    )
    save_users(
        settings.users,
        {
            name: make_user(name, hash_password(password(name)), roles, communes, see_other_communes=see)
            for name, (roles, communes, see) in USERS.items()
        },
    )
    server = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings,
        audit=AuditFanout(MemoryAudit()),
    )
    async with serving(server):
        yield server
    left = await tasks_left()
    assert not left, f"the module's server left asyncio tasks pending: {left}"


async def subscribe(client: Client, where: ua.ContentFilter | None = None) -> Notifications:
    """Audit events of the Server object: asyncua's own filter for AuditEventType (an InList
    of its subtypes), or ``where`` instead."""
    handler = Notifications()
    sub = await client.create_subscription(50, handler)
    audit_type = client.get_node(OI.AuditEventType)
    method_type = client.get_node(OI.AuditUpdateMethodEventType)
    session_type = client.get_node(OI.AuditActivateSessionEventType)
    write_type = client.get_node(OI.AuditWriteUpdateEventType)
    types = [audit_type, method_type, session_type, write_type]  # the fields of each selected
    if where is None:
        await sub.subscribe_events(client.get_node(OI.Server), types)
    else:
        from asyncua.common.events import get_filter_from_event_type

        evfilter = await get_filter_from_event_type(types, where_clause_generation=False)
        evfilter.WhereClause = where
        await sub._subscribe(client.get_node(OI.Server), ua.AttributeIds.EventNotifier, evfilter)
    return handler


def of_type(type_id: int) -> ua.ContentFilter:
    """``OfType(type_id)``: true for the type and its subtypes (Part 4 7.7.3)."""
    element = ua.ContentFilterElement(
        FilterOperator=ua.FilterOperator.OfType,
        FilterOperands=[ua.LiteralOperand(Value=ua.Variant(ua.NodeId(type_id)))],
    )
    return ua.ContentFilter(Elements=[element])


async def test_server_auditing_is_true(hmi: HmiServer) -> None:
    async with session(hmi.endpoint) as client:
        assert await client.get_node(OI.Server_Auditing).read_value() is True


async def test_a_method_call_record_raises_an_audit_update_method_event(hmi: HmiServer) -> None:
    async with session(hmi.endpoint) as client:
        events = await subscribe(client)
        hmi.audit.record(record_of("call", METHOD, ["LC-1 hot", "seen"], "BadUserAccessDenied", ALICE))
        ev = await events.next_event(lambda e: e.EventType == ua.NodeId(OI.AuditUpdateMethodEventType))
    assert ev.SourceNode == ua.NodeId(OI.Server)
    assert ev.SourceName == "Method/Call"
    assert ev.ClientUserId == "alice"
    assert ev.Status is False
    assert ev.MethodId == ua.NodeId(OI.AcknowledgeableConditionType_Acknowledge)
    assert [v.Value for v in ev.InputArguments] == ["LC-1 hot", "seen"]
    assert ev.Message.Text == f"call {METHOD} by alice: BadUserAccessDenied"
    assert ev.Severity == 500


async def test_an_activation_record_raises_an_activate_session_event_without_the_password(hmi: HmiServer) -> None:
    async with session(hmi.endpoint) as client:
        events = await subscribe(client)
        hmi.audit.record(record_of("activate_session", "", {"token": "UserName"}, "Good", ALICE))
        ev = await events.next_event(lambda e: e.EventType == ua.NodeId(OI.AuditActivateSessionEventType))
    assert ev.ClientUserId == "alice" and ev.Status is True
    assert ev.SessionId == ua.NodeId(1001, 1)
    assert ev.UserIdentityToken.UserName == "alice" and ev.UserIdentityToken.Password is None
    assert ev.CurrentRoleIds == [ua.NodeId(OI.WellKnownRole_Operator)]


async def test_an_of_type_audit_event_filter_gets_the_subtypes_and_nothing_else(hmi: HmiServer) -> None:
    """asyncua itself matches OfType by the exact type: an HMI filtering on AuditEventType
    would get no AuditUpdateMethodEvent. Ours honours subtypes, and still filters."""
    async with session(hmi.endpoint) as client:
        audit = await subscribe(client, of_type(OI.AuditEventType))
        sessions_only = await subscribe(client, of_type(OI.AuditSessionEventType))
        hmi.audit.record(record_of("call", METHOD, [], "Good", ALICE))
        hmi.audit.record(record_of("activate_session", "", {}, "BadUserAccessDenied", ALICE))
        first = await audit.next_event(lambda e: True)
        second = await audit.next_event(lambda e: True)
        only = await sessions_only.next_event(lambda e: True)
        assert (first.EventType, second.EventType) == (
            ua.NodeId(OI.AuditUpdateMethodEventType),
            ua.NodeId(OI.AuditActivateSessionEventType),
        )
        # The method event came first: had it passed this filter, it would be this one's first.
        assert only.EventType == ua.NodeId(OI.AuditActivateSessionEventType)


async def test_a_write_record_raises_an_audit_write_update_event(hmi: HmiServer) -> None:
    async with session(hmi.endpoint) as client:
        events = await subscribe(client, of_type(OI.AuditWriteUpdateEventType))
        args = {"attribute": int(ua.AttributeIds.Value), "old": 1.5, "value": 2.5}
        hmi.audit.record(record_of("write", "ns=2;s=Talant/lighting/LC-1/setpoint", args, "Good", ALICE))
        ev = await events.next_event(lambda e: True)
    assert (ev.AttributeId, ev.OldValue, ev.NewValue) == (13, 1.5, 2.5)
    assert ev.ClientUserId == "alice" and ev.SourceName == "Attribute/Write"


async def test_other_actions_raise_no_event(hmi: HmiServer) -> None:
    async with session(hmi.endpoint) as client:
        events = await subscribe(client)
        hmi.audit.record(record_of("reload", "cfg", {}, "Good", ALICE))
        hmi.audit.record(record_of("call", METHOD, [], "Good", ALICE))
        ev = await events.next_event(lambda e: True)
    assert ev.EventType == ua.NodeId(OI.AuditUpdateMethodEventType)  # the reload raised none before it


async def test_a_storm_of_records_queues_a_bounded_number_of_events(hmi: HmiServer) -> None:
    events = next(s for s in hmi.audit.sinks if isinstance(s, AuditEvents))
    dropped, sent = events.dropped, events.sent
    for _ in range(MAX_QUEUED + 10):  # in one go: the sending task has not run yet
        hmi.audit.record(record_of("call", METHOD, [], "BadUserAccessDenied", ALICE))
    assert events.dropped == dropped + 10
    await until(lambda: events.sent == sent + MAX_QUEUED, DEADLINE, "the queued events sent")
    assert events.errors == 0


async def watch(client: Client) -> Notifications:
    """Audit events of the Server object and, in the same subscription, ServiceLevel's changes
    (the sentinel of :func:`settled`)."""
    handler = await subscribe(client)
    sub = await client.create_subscription(50, handler)
    await sub.subscribe_data_change(client.get_node(OI.Server_ServiceLevel))
    await handler.next_data(ua.NodeId(OI.Server_ServiceLevel), lambda v: True)  # its initial value
    return handler


async def settled(hmi: HmiServer, handlers: list[Notifications]) -> None:
    """Every subscription has published after what was delivered so far: ServiceLevel changed twice
    and each change seen by each handler (whatever was queued before the first change went out
    at the latest with the second)."""
    for level in (201, 202):
        value = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))
        await hmi.server.write_attribute_value(ua.NodeId(OI.Server_ServiceLevel), value)
        for handler in handlers:
            await handler.next_data(ua.NodeId(OI.Server_ServiceLevel), lambda v, n=level: v.Value.Value == n)


def audit_events(handler: Notifications) -> list:
    out = []
    while not handler.events.empty():
        out.append(handler.events.get_nowait())
    return out


async def test_only_users_who_may_see_the_audit_get_its_events(hmi: HmiServer) -> None:
    """Review finding 7: an anonymous Observer saw every login (its claimed name, its address)."""
    names = ["sue", "sam", "olga", "oscar", None]
    clients = [session(hmi.endpoint, name) for name in names]
    for c in clients:
        await c.connect()
    try:
        handlers = [await watch(c) for c in clients]
        hmi.audit.record(record_of("call", METHOD, [], "BadUserAccessDenied", ALICE))
        hmi.audit.record(record_of("activate_session", "", {}, "Good", ALICE))
        for handler in handlers[:2]:  # the Supervisor and the SecurityAdmin
            await handler.next_event(lambda e: e.EventType == ua.NodeId(OI.AuditActivateSessionEventType))
        await settled(hmi, handlers)
        # The Observer, the Operator and the anonymous Observer: nothing of the audit.
        assert [audit_events(h) for h in handlers[2:]] == [[], [], []]
    finally:
        for c in clients:
            await c.disconnect()


async def test_an_alarm_action_event_only_where_its_commune_is_seen(hmi: HmiServer) -> None:
    async with session(hmi.endpoint, "sue") as sue, session(hmi.endpoint, "tess") as tess:
        everywhere, talant = await watch(sue), await watch(tess)

        def action(commune: str) -> None:
            args = {"method": "Acknowledge", "commune": commune, "arguments": ["seen"]}
            hmi.audit.record(record_of("alarm_action", f"hot@{commune}-1", args, "Good", ALICE))

        action("Dijon")
        action("Talant")
        assert (await talant.next_event(lambda e: True)).Message.Text.startswith("alarm_action hot@Talant-1")
        first = await everywhere.next_event(lambda e: True)
        assert first.Message.Text.startswith("alarm_action hot@Dijon-1")  # Dijon's: to Sue only
        await settled(hmi, [talant])
        assert audit_events(talant) == []


async def test_a_failed_login_event_carries_no_user_name(hmi: HmiServer) -> None:
    """What a client types as a user name may be a password: the trail keeps it, the events not."""
    async with session(hmi.endpoint) as client:
        events = await subscribe(client)
        typed = RequestContext(Identity("hunter2", frozenset(), anonymous=True), client_address="10.0.0.9:5000")
        hmi.audit.record(record_of("activate_session", "", {"reason": "unknown user"}, "BadUserAccessDenied", typed))
        ev = await events.next_event(lambda e: e.EventType == ua.NodeId(OI.AuditActivateSessionEventType))
    assert ev.Status is False and ev.ClientUserId == ""
    assert "hunter2" not in ev.Message.Text and getattr(ev.UserIdentityToken, "UserName", None) in (None, "")
