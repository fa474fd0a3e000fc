"""Every service authorised (issue 14): real asyncua clients logged in as users of different roles
and communes, against an HmiServer with its security layer and the alarm engine behind it.

The users are in the server's users file (scada/security/users.py), logged in by the real login
(scada/opcua/login.py) with their passwords. LC-1 is in Talant, LC-2 and TJ-1 in
Dijon (tests/alarm_rig.py). Every refusal must be the precise status code and be audited.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua import uaerrors

from scada.alarms.states import State
from scada.historian.service import Historian
from scada.opcua.server import HmiServer
from scada.security.audit import MemoryAudit
from scada.security.context import REQUEST, RequestContext
from scada.security.identity import Identity, Role
from scada.security.settings import SecuritySettings
from scada.security.users import hash_password, make_user, save_users

from .test_opcua_alarms import City, ack_args, call, client_events, healthy, running

pytestmark = pytest.mark.integration

OI = ua.ObjectIds
SC = ua.StatusCodes

ANONYMOUS = frozenset({Role.OBSERVER})  # the roles of an anonymous session in these tests


def settings(data: Path) -> SecuritySettings:
    """A None endpoint (the endpoints' own tests use secure channels), anonymous Observers, the
    files in ``data``."""
    return dataclasses.replace(SecuritySettings.defaults(data), allow_none=True, anonymous=ANONYMOUS)


USERS = {  # name: (roles, communes, see_other_communes)
    "olga": (["observer"], None, None),
    "oscar": (["operator"], ["Talant"], None),
    "erin": (["engineer"], None, None),
    # Dijon's observer, who does not see the other communes
    "dora": (["observer"], ["Dijon"], False),
}


def password(name: str) -> str:
    return f"password of {name}"


def write_users(path: Path) -> None:
    """The test's users in the users file the server's login reads."""
    save_users(
        path,
        {
            name: make_user(name, hash_password(password(name)), roles, communes, see_other_communes=see)
            for name, (roles, communes, see) in USERS.items()
        },
    )


class SecureCity(City):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.audit = MemoryAudit()
        (folder / "data").mkdir()
        write_users(settings(folder / "data").users)
        self.historian = Historian(self.config, self.tagdb, folder / "data")
        self.hmi = HmiServer(
            self.config,
            self.tagdb,
            self.url,
            alarms=self.engine,
            history=self.historian,
            security=settings(folder / "data"),
            audit=self.audit,
        )

    def audited(self, action: str, user: str | None = None) -> list:
        return [r for r in self.audit.records if r.action == action and (user is None or r.user == user)]


@pytest.fixture
async def city(tmp_path: Path):
    c = SecureCity(tmp_path / "cfg")
    healthy(c)
    try:
        async with running(c):  # the alarm tests' (it closes the journal)
            yield c
    finally:
        c.historian.store.close()


async def logged_in(url: str, user: str) -> Client:
    """A client connected as ``user`` (its password: :func:`password`); the caller disconnects it."""
    client = Client(url, timeout=10)
    client.set_user(user)
    client.set_password(password(user))
    await client.connect()
    return client


@contextlib.asynccontextmanager
async def session(url: str, user: str | None = None):
    client = Client(url, timeout=10)
    if user is not None:
        client.set_user(user)
        client.set_password(password(user))
    async with client:
        yield client


async def test_an_observer_may_not_acknowledge(city: SecureCity) -> None:
    async with client_events(city.url) as (_, events, _), session(city.url, "olga") as olga:
        city.set("LC-1", temperature=70)
        ev = await events.next(ConditionName="hot")
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await call(
                olga, city.condition("hot"), OI.AcknowledgeableConditionType_Acknowledge, *ack_args(ev.EventId, "seen")
            )
        assert city.state("hot") == State.UNACK_ACTIVE
        assert not [r for r in city.journal.query(alarm="hot") if r.event == "ACK"]
        [rec] = city.audited("call", "olga")  # refused at the service gate, before the method
        assert rec.result == "BadUserAccessDenied" and rec.roles == ("Observer",) and '"seen"' in rec.arguments
        assert rec.target == f"i={OI.AcknowledgeableConditionType_Acknowledge}"
        assert f'"object":"{city.condition("hot").to_string()}"' in rec.arguments


async def test_anonymous_remove_from_service_of_every_condition_is_refused(city: SecureCity) -> None:
    """The issue's first case: one Call taking every condition out of service."""
    conditions = [city.condition(a, d) for d in ("LC-1", "LC-2") for a in ("hot", "door", "comm_loss")]
    conditions.append(city.condition("conflict", "TJ-1"))
    async with session(city.url) as anonymous:
        results = await anonymous.uaclient.call(
            [
                ua.CallMethodRequest(
                    ObjectId=cid,
                    MethodId=ua.NodeId(OI.AlarmConditionType_RemoveFromService),
                    InputArguments=[ua.Variant(ua.LocalizedText("maintenance"))],
                )
                for cid in conditions
            ]
        )
    assert [r.StatusCode.value for r in results] == [SC.BadUserAccessDenied] * len(conditions)
    assert not any(int(s) == State.OUT_OF_SERVICE for s in city.engine.state)
    recs = city.audited("call")
    assert len(recs) == len(conditions) and {r.result for r in recs} == {"BadUserAccessDenied"}
    assert {r.user for r in recs} == {"anonymous"} and all(r.client_address.startswith("127.0.0.1:") for r in recs)


async def test_an_operator_acts_in_its_commune_only_and_is_journaled_by_name(city: SecureCity) -> None:
    async with client_events(city.url) as (_, events, _), session(city.url, "oscar") as oscar:
        city.set("LC-1", temperature=70)  # Talant
        talant = await events.next(ConditionName="hot", SourceName="LC-1")
        city.set("LC-2", temperature=70)  # Dijon
        dijon = await events.next(ConditionName="hot", SourceName="LC-2")
        ack = OI.AcknowledgeableConditionType_Acknowledge
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await call(oscar, city.condition("hot", "LC-2"), ack, *ack_args(dijon.EventId, "not mine"))
        assert city.state("hot", "LC-2") == State.UNACK_ACTIVE
        [refused] = city.audited("alarm_action", "oscar")
        assert refused.target == "hot@LC-2" and refused.result == "BadUserAccessDenied"
        assert '"commune":"Dijon"' in refused.arguments and '"not mine"' in refused.arguments

        oscar.name = "chosen-by-the-client"
        await call(oscar, city.condition("hot", "LC-1"), ack, *ack_args(talant.EventId, "crew informed"))
        assert city.state("hot", "LC-1") == State.ACK_ACTIVE
        [row] = [r for r in city.journal.query(alarm="hot", device="LC-1") if r.event == "ACK"]
        assert row.user == "oscar"  # the authenticated user, nothing the client chose
        acked = await events.next(ConditionName="hot", SourceName="LC-1")
        assert acked.ClientUserId == "oscar"
        done = [r for r in city.audited("alarm_action", "oscar") if r.result == "Good"]
        assert [r.target for r in done] == ["hot@LC-1"]

        # Out of service is an Engineer's, and never without a reason.
        remove = OI.AlarmConditionType_RemoveFromService
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await call(oscar, city.condition("door", "LC-1"), remove, ua.LocalizedText("painting"))
    async with session(city.url, "erin") as erin:
        with pytest.raises(uaerrors.BadInvalidArgument):
            await call(erin, city.condition("door", "LC-1"), remove, ua.LocalizedText("  "))
        assert city.state("door", "LC-1") != State.OUT_OF_SERVICE
        await call(erin, city.condition("door", "LC-1"), remove, ua.LocalizedText("door sensor replaced"))
        assert city.state("door", "LC-1") == State.OUT_OF_SERVICE
        row = city.journal.query(alarm="door", device="LC-1")[-1]
        assert (row.user, row.comment) == ("erin", "door sensor replaced")


async def test_a_session_may_not_touch_another_sessions_subscription(city: SecureCity) -> None:
    async with (
        session(city.url, "olga") as olga,
        session(city.url, "oscar") as oscar,
        session(city.url, "olga") as olga2,
    ):
        sub = await olga.create_subscription(100, None)
        sid = sub.subscription_id
        [res] = await oscar.uaclient.delete_subscriptions([sid])
        assert res.value == SC.BadSubscriptionIdInvalid  # as if it did not exist
        [res] = await oscar.uaclient.set_publishing_mode(ua.SetPublishingModeParameters(SubscriptionIds=[sid]))
        assert res.value == SC.BadSubscriptionIdInvalid
        with pytest.raises(uaerrors.BadSubscriptionIdInvalid):
            await oscar.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(SubscriptionId=sid))
        [res] = await oscar.uaclient.transfer_subscriptions(ua.TransferSubscriptionsParameters(SubscriptionIds=[sid]))
        assert res.StatusCode.value == SC.BadUserAccessDenied  # another user (Part 4 5.13.7)
        recs = city.audited("subscription", "oscar")
        assert [(r.target, r.result) for r in recs] == [
            (f"subscription {sid}", "BadSubscriptionIdInvalid"),
            (f"subscription {sid}", "BadSubscriptionIdInvalid"),
            (f"subscription {sid}", "BadSubscriptionIdInvalid"),
            (f"subscription {sid}", "BadUserAccessDenied"),
        ]
        # Still olga's, still alive; another session of olga's may take it over.
        [res] = await olga2.uaclient.transfer_subscriptions(ua.TransferSubscriptionsParameters(SubscriptionIds=[sid]))
        assert res.StatusCode.is_good()
        [res] = await olga2.uaclient.delete_subscriptions([sid])
        assert res.is_good()


async def test_an_allowed_method_call_is_audited_with_its_result(city: SecureCity) -> None:
    """Every method call is audited, allowed or refused: a ConditionRefresh with the status it
    returned (the alarm methods audit their own act as "alarm_action")."""
    async with session(city.url, "olga") as olga:
        sub = await olga.create_subscription(100, None)
        await sub.subscribe_events(olga.nodes.server, OI.BaseEventType)  # something to refresh
        conditions = olga.get_node(ua.NodeId(OI.ConditionType))
        await conditions.call_method(
            ua.NodeId(OI.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32)
        )
        with pytest.raises(uaerrors.BadSubscriptionIdInvalid):  # not hers: refused by the method itself
            await conditions.call_method(
                ua.NodeId(OI.ConditionType_ConditionRefresh), ua.Variant(999_999, ua.VariantType.UInt32)
            )
    refresh = ua.NodeId(OI.ConditionType_ConditionRefresh).to_string()
    done = [(r.target, r.result) for r in city.audited("call", "olga")]
    assert done == [(refresh, "Good"), (refresh, "BadSubscriptionIdInvalid")]


async def test_register_server_is_refused_and_find_servers_unchanged(city: SecureCity) -> None:
    client = Client(city.url, timeout=10)
    before = await client.connect_and_find_servers()
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        fake = ua.RegisteredServer(ServerUri="urn:fake", ServerNames=[ua.LocalizedText("fake")], IsOnline=True)
        with pytest.raises(uaerrors.BadServiceUnsupported):  # no session needed to be refused
            await client.uaclient.register_server(fake)
        with pytest.raises(uaerrors.BadServiceUnsupported):
            await client.uaclient.register_server2(ua.RegisterServer2Parameters(Server=fake))
        await client.close_secure_channel()
    finally:
        client.disconnect_socket()
    after = await Client(city.url, timeout=10).connect_and_find_servers()
    assert [s.ApplicationUri for s in after] == [s.ApplicationUri for s in before]
    assert [(r.target, r.result, r.user) for r in city.audited("register_server")] == [
        ("RegisterServer", "BadServiceUnsupported", "anonymous"),
        ("RegisterServer2", "BadServiceUnsupported", "anonymous"),
    ]


async def test_history_nodes_and_writes_need_their_permission(city: SecureCity) -> None:
    tag = ua.NodeId(f"{city.device_node('LC-1').Identifier}/temperature", city.ns)
    async with session(city.url, "erin") as erin, session(city.url, "olga") as olga:
        item = ua.AddNodesItem(
            ParentNodeId=ua.ExpandedNodeId(OI.ObjectsFolder),
            ReferenceTypeId=ua.NodeId(OI.Organizes),
            RequestedNewNodeId=ua.ExpandedNodeId("intruder", city.ns),
            BrowseName=ua.QualifiedName("intruder", city.ns),
            NodeClass=ua.NodeClass.Object,
            TypeDefinition=ua.ExpandedNodeId(OI.BaseObjectType),
        )
        with pytest.raises(uaerrors.BadUserAccessDenied):  # whoever asks
            await erin.uaclient.add_nodes([item])
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await erin.uaclient.delete_nodes(ua.DeleteNodesParameters(NodesToDelete=[ua.DeleteNodesItem(NodeId=tag)]))
        assert (await olga.get_node(tag).read_browse_name()).Name == "temperature"
        write = ua.WriteValue(NodeId=tag, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(ua.Variant(99.0)))
        with pytest.raises(uaerrors.BadUserAccessDenied):  # an Observer: the whole Write refused
            await olga.uaclient.write(ua.WriteParameters(NodesToWrite=[write]))
        # An Engineer passes the gate; the tag variable itself is read-only (as before).
        [res] = await erin.uaclient.write(ua.WriteParameters(NodesToWrite=[write]))
        assert res.value in (SC.BadUserAccessDenied, SC.BadNotWritable)
    denied = {(r.user, r.target, r.result) for r in city.audited("denied")}
    assert {
        ("erin", "AddNodes", "BadUserAccessDenied"),
        ("erin", "DeleteNodes", "BadUserAccessDenied"),
        ("olga", "Write", "BadUserAccessDenied"),
    } <= denied


async def test_history_of_a_hidden_commune_is_refused_per_node(city: SecureCity) -> None:
    talant = ua.NodeId(f"{city.device_node('LC-1').Identifier}/temperature", city.ns)
    dijon = ua.NodeId(f"{city.device_node('LC-2').Identifier}/temperature", city.ns)
    details = ua.ReadRawModifiedDetails(NumValuesPerNode=10, StartTime=datetime(2020, 1, 1, tzinfo=UTC))
    history = ua.HistoryReadParameters(
        HistoryReadDetails=details,
        TimestampsToReturn=ua.TimestampsToReturn.Source,
        NodesToRead=[ua.HistoryReadValueId(NodeId=talant), ua.HistoryReadValueId(NodeId=dijon)],
    )
    async with session(city.url, "dora") as dora, session(city.url, "oscar") as oscar:
        hidden, own = await dora.uaclient.history_read(history)
        assert hidden.StatusCode.value == SC.BadUserAccessDenied and own.StatusCode.is_good()
        # Limited to Talant but shown the others (read-only): both answered.
        assert all(r.StatusCode.is_good() for r in await oscar.uaclient.history_read(history))


async def test_condition_methods_check_on_their_own_behind_the_gate(city: SecureCity) -> None:
    """The methods do not rely on the service gate: called in a request of a user without the
    permission (as a gate letting it through by mistake would), they refuse and audit."""
    async with client_events(city.url) as (_, events, _):
        city.set("LC-1", temperature=70)
        ev = await events.next(ConditionName="hot")
        conditions = city.hmi.conditions
        assert conditions is not None
        # Identities as a gate would pass them (nora: no role at all, which no users file allows).
        identities = {"olga": Identity("olga", frozenset({Role.OBSERVER})), "nora": Identity("nora", frozenset())}
        for user in ("olga", "nora"):
            token = REQUEST.set(RequestContext(identities[user], session_id="ns=1;i=9", client_address="10.0.0.7:4000"))
            try:
                ack = await conditions._m_acknowledge(
                    city.condition("hot"), *map(ua.Variant, ack_args(ev.EventId, "x"))
                )
                refresh = await conditions._m_refresh(
                    ua.NodeId(OI.ConditionType),
                    ua.Variant(999_999, ua.VariantType.UInt32),  # none: the permission is checked first
                )
            finally:
                REQUEST.reset(token)
            assert ack.value == SC.BadUserAccessDenied
            assert refresh.value == (SC.BadUserAccessDenied if user == "nora" else SC.BadSubscriptionIdInvalid)
        assert city.state("hot") == State.UNACK_ACTIVE
        assert [(r.action, r.user, r.result) for r in city.audit.records if r.client_address == "10.0.0.7:4000"] == [
            ("alarm_action", "olga", "BadUserAccessDenied"),
            ("alarm_action", "nora", "BadUserAccessDenied"),
            ("call", "nora", "BadUserAccessDenied"),
        ]
