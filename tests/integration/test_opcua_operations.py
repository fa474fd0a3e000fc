"""The Operations folder through real asyncua clients logged in as users of the users file, on
an HmiServer inline on loopback, with its security layer.

The core is played by tests/unit/test_opcua_operations.py's ``Core``: a script that answers each
work-order request as the core's service does (the states table decides) and pushes the changed
order and its event to the folder as the core's link would. The real core's service, journal and
link are proven by their own tests; the end-to-end test of the issue runs them all together.

Checked: an Operator browses the folder, creates and assigns an order and receives the events
(WorkOrderEventType, Message "WO-... assigned to V-7 by otto"); a closed order leaves the
folder; an Observer's call is refused BadUserAccessDenied before the core is asked, and audited;
a Dijon dispatcher who does not see other communes neither browses, nor reads, nor acts on, nor
receives the events of a Talant order.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua import uaerrors

from scada.opcua.operations import EVENT_TYPE_PATH, FOLDER_PATH, order_path
from scada.opcua.server import HmiServer
from scada.operations.model import OrderState
from scada.security.audit import MemoryAudit
from scada.security.settings import SecuritySettings
from scada.security.users import hash_password, make_user, save_users
from scada.tagdb import TagDB
from tests import configs
from tests.unit.test_opcua_operations import DEVICES, Core, operations_config, order

from .helpers import free_port, serving, until

pytestmark = pytest.mark.integration

USERS = {  # name: (roles, communes, see_other_communes)
    "otto": (["operator"], None, True),
    "olga": (["observer"], None, True),
    "dina": (["operator"], ["Dijon"], False),  # Dijon's dispatcher, who does not see the other communes
}


def password(name: str) -> str:
    return f"password of {name}"


class Events:
    """An asyncua subscription handler keeping the events' Messages and fields."""

    def __init__(self) -> None:
        self.events: list = []
        self.values: list = []  # (value, status code) of the data changes

    def event_notification(self, event) -> None:
        self.events.append(event)

    def datachange_notification(self, node, val, data) -> None:
        dv = data.monitored_item.Value
        self.values.append((val, dv.StatusCode.value))

    def messages(self) -> list[str]:
        return [e.Message.Text for e in self.events]


async def logged_in(url: str, user: str) -> Client:
    client = Client(url, timeout=10)
    client.set_user(user)
    client.set_password(password(user))
    await client.connect()
    return client


async def children(client: Client, ns: int, path: str) -> set[str]:
    return {(await n.read_browse_name()).Name for n in await client.get_node(ua.NodeId(path, ns)).get_children()}


async def watch(client: Client, ns: int) -> Events:
    """Subscribe to the WorkOrderEventType events of the Operations folder (the HMI's order log)."""
    handler = Events()
    sub = await client.create_subscription(20, handler)
    folder = client.get_node(ua.NodeId(FOLDER_PATH, ns))
    await sub.subscribe_events(folder, client.get_node(ua.NodeId(EVENT_TYPE_PATH, ns)))
    return handler


@pytest.fixture
def users_and_config(tmp_path: Path):
    config = configs.write_config(tmp_path / "cfg", DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, operations=operations_config())
    data = tmp_path / "data"
    data.mkdir()
    settings = dataclasses.replace(SecuritySettings.defaults(data), allow_none=True, anonymous=frozenset())
    save_users(
        settings.users,
        {
            name: make_user(name, hash_password(password(name)), roles, communes, see_other_communes=see)
            for name, (roles, communes, see) in USERS.items()
        },
    )
    return config, settings


async def test_an_operator_browses_creates_assigns_and_receives_the_events(users_and_config):
    config, settings = users_and_config
    core, audit = Core(), MemoryAudit()
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings,
        audit=audit,
        commands=core.request,
    )
    core.hmi = hmi
    async with serving(hmi):
        ns = hmi.ns
        otto = await logged_in(hmi.endpoint, "otto")
        try:
            events = await watch(otto, ns)
            assert {"Create", "Assign", "Cancel", "Close", "Propose", "Contract"} <= await children(
                otto, ns, FOLDER_PATH
            )
            folder = otto.get_node(ua.NodeId(FOLDER_PATH, ns))
            create = ua.NodeId(f"{FOLDER_PATH}/Create", ns)
            oid = await folder.call_method(create, "lighting_maintenance", "", "LC-2", math.nan, math.nan, "dark")
            assert core.requests[-1].caller.user == "otto"
            await until(lambda: oid in hmi.operations.orders, what="the created order shown")
            assert oid in await children(otto, ns, FOLDER_PATH)
            state = otto.get_node(ua.NodeId(f"{order_path(oid, 'Dijon')}/State", ns))
            assert await state.read_value() == "new"
            watched = Events()
            await (await otto.create_subscription(20, watched)).subscribe_data_change(state)
            await until(lambda: watched.values, what="the State's first value")
            assert await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Assign", ns), oid, "V-7") == "V-7"
            await until(lambda: len(events.events) >= 2, what="the create and assign events")
            assert events.messages()[:2] == [f"{oid} created by otto", f"{oid} assigned to V-7 by otto"]
            assigned = events.events[1]
            assert (assigned.OrderId, assigned.Transition, assigned.FromState, assigned.ToState) == (
                oid,
                "assign",
                "new",
                "assigned",
            )
            assert (assigned.User, assigned.Crew) == ("otto", "V-7")
            assert assigned.SourceNode == ua.NodeId(order_path(oid, "Dijon"), ns)
            assert await state.read_value() == "assigned"
            await until(lambda: ("assigned", 0) in watched.values, what="the monitored State's change")
            # The crew arrives and repairs (the core's pushes); the operator closes: it leaves.
            o = core.orders[oid]
            on_site = dataclasses.replace(o, state=OrderState.ON_SITE)
            core.push(on_site, "arrive", "crew:V-7", OrderState.ASSIGNED)
            await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Close", ns), oid, "checked")
            await until(lambda: len(events.events) >= 4, what="the arrive and close events")
            assert events.messages()[2:4] == [f"{oid} on site by V-7", f"{oid} closed by otto: checked"]
            await until(lambda: oid not in hmi.operations.orders, what="the closed order removed")
            assert oid not in await children(otto, ns, FOLDER_PATH)
            with pytest.raises(uaerrors.BadNodeIdUnknown):
                await state.read_value()
            # Its monitored item was told the node is gone, as for a device a reload removes.
            await until(lambda: watched.values[-1][1] == ua.StatusCodes.BadNodeIdUnknown, what="the State's item told")
        finally:
            await otto.disconnect()
    # Allowed calls are audited by the core (work_order), not again by the front as "call".
    assert not [r for r in audit.records if r.user == "otto" and r.action == "call"]


async def test_an_observer_is_refused_before_the_core_is_asked(users_and_config):
    config, settings = users_and_config
    core, audit = Core(), MemoryAudit()
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings,
        audit=audit,
        commands=core.request,
    )
    core.hmi = hmi
    async with serving(hmi):
        ns = hmi.ns
        olga = await logged_in(hmi.endpoint, "olga")
        try:
            folder = olga.get_node(ua.NodeId(FOLDER_PATH, ns))
            with pytest.raises(uaerrors.BadUserAccessDenied):
                await folder.call_method(
                    ua.NodeId(f"{FOLDER_PATH}/Create", ns), "lighting_maintenance", "", "LC-2", 0.0, 0.0, ""
                )
            with pytest.raises(uaerrors.BadUserAccessDenied):
                await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Propose", ns), "WO-000001")
            assert {"Create", "Contract"} <= await children(olga, ns, FOLDER_PATH)  # she may look
        finally:
            await olga.disconnect()
    assert core.requests == []
    refused = [r for r in audit.records if r.user == "olga" and r.result == "BadUserAccessDenied"]
    assert len(refused) == 2


async def test_a_dispatcher_sees_and_acts_on_the_orders_of_the_communes_shown_only(users_and_config):
    config, settings = users_and_config
    core, audit = Core(), MemoryAudit()
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings,
        audit=audit,
        commands=core.request,
    )
    core.hmi = hmi
    async with serving(hmi):
        ns = hmi.ns
        dijon, talant = order("WO-000001"), order("WO-000002", commune="Talant")
        nowhere = order("WO-000003", commune="", device=None, lat=None, lon=None)  # everyone's
        core.orders = {o.id: o for o in (dijon, talant, nowhere)}
        hmi.operations.install([dijon, talant, nowhere])
        await until(lambda: len(hmi.operations.orders) == 3, what="the snapshot shown")
        dina, otto = await logged_in(hmi.endpoint, "dina"), await logged_in(hmi.endpoint, "otto")
        try:
            seen_by_dina, seen_by_otto = await watch(dina, ns), await watch(otto, ns)
            names = await children(dina, ns, FOLDER_PATH)
            assert "WO-000001" in names and "WO-000003" in names and "WO-000002" not in names
            with pytest.raises(uaerrors.BadNodeIdUnknown):
                await dina.get_node(ua.NodeId(f"{order_path('WO-000002', 'Talant')}/State", ns)).read_value()
            folder = dina.get_node(ua.NodeId(FOLDER_PATH, ns))
            n = len(core.requests)
            with pytest.raises(uaerrors.BadNodeIdUnknown):  # as for an order that does not exist
                await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Cancel", ns), "WO-000002", "not mine")
            assert len(core.requests) == n
            crews, _ = await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Propose", ns), "WO-000003")
            assert crews == ["V-7", "V-9"]
            # Both orders change: otto gets both events, dina only Dijon's.
            core.push(
                dataclasses.replace(talant, state=OrderState.ASSIGNED, crew="V-9"), "assign", "otto", talant.state
            )
            core.push(dataclasses.replace(dijon, state=OrderState.ASSIGNED, crew="V-7"), "assign", "otto", dijon.state)
            await until(lambda: len(seen_by_otto.events) >= 2, what="otto's events")
            # A later Dijon event: a subscription's events arrive in order, so had Talant's been
            # sent to dina, she would have it before this one.
            assigned = core.orders["WO-000001"]
            core.push(dataclasses.replace(assigned, state=OrderState.ACCEPTED), "accept", "crew:V-7", assigned.state)
            await until(lambda: len(seen_by_dina.events) >= 2, what="dina's events")
            assert seen_by_dina.messages() == ["WO-000001 assigned to V-7 by otto", "WO-000001 accepted by V-7"]
            assert sorted(seen_by_otto.messages()[:2]) == [
                "WO-000001 assigned to V-7 by otto",
                "WO-000002 assigned to V-9 by otto",
            ]
        finally:
            await dina.disconnect()
            await otto.disconnect()
    assert [r.target for r in audit.records if r.user == "dina" and r.result == "BadNodeIdUnknown"] == ["WO-000002"]
