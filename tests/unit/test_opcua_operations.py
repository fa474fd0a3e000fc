"""The Operations folder (scada/opcua/operations.py) on a real asyncua server in this process, the
core played by :class:`Core`: a script that answers each work-order request as the core's service
(scada/operations/orders.py ``WorkOrders.apply``) does, from the states table, and pushes the
changed order and its event back as the core's link would (model.PUSH_ORDERS).

Checked here: the folder from a snapshot, the pushes' transitions, the removal of closed orders,
a resync, a burst shown in one pass, the contract's variables, the methods' arguments and the
requests they send, and the per-method permission map (scada/opcua/authorise.py). Real clients,
logins and events: tests/integration/test_opcua_operations.py.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.ua import uaerrors

from scada.control.model import BAD_INVALID_STATE, BAD_NODE_ID_UNKNOWN, GOOD
from scada.opcua import operations as opsmod
from scada.opcua.authorise import Authorisation
from scada.opcua.operations import (
    CONTRACT_PATH,
    FOLDER_PATH,
    NO_TIME,
    ArgumentRefused,
    event_message,
    method_arguments,
    order_path,
)
from scada.opcua.server import HmiServer
from scada.opcua.typed_ua import NodeId
from scada.operations.model import (
    REQUEST_WORK_ORDER,
    IllegalTransition,
    OperationsConfig,
    OpsRequest,
    OpsResult,
    OrderEvent,
    OrderState,
    ServiceDef,
    WorkOrder,
    next_state,
)
from scada.security.audit import MemoryAudit
from scada.security.context import REQUEST, RequestContext
from scada.security.identity import Identity, Permission, Role
from scada.security.settings import SecuritySettings
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving, until

SC = ua.StatusCodes
DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.33, lon: 5.00, endpoint: "10.0.0.1:502"}
  - {name: LC-2, type: lighting_cabinet, commune: Dijon, lat: 47.32, lon: 5.04, endpoint: "10.0.0.2:502"}
"""
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def operations_config() -> OperationsConfig:
    """Work orders on (a service routed): the core runs them, the front shows the folder."""
    service = ServiceDef("lighting_maintenance", ("lighting",), {})
    return OperationsConfig(services={"lighting_maintenance": service})


def order(oid: str = "WO-000001", commune: str = "Dijon", **changes) -> WorkOrder:
    base = WorkOrder(
        id=oid,
        source="alarm",
        service="lighting_maintenance",
        priority="high",
        device="LC-2" if commune == "Dijon" else "LC-1",
        commune=commune,
        lat=47.32,
        lon=5.04,
        cause="lamp_failure",
        description="lamps out",
        state=OrderState.NEW,
        origin_ns=T0,
        created_ns=T0,
        created_by="server",
        on_site_due_ns=T0 + 4 * 3600 * 10**9,
        repaired_due_ns=T0 + 24 * 3600 * 10**9,
    )
    return dataclasses.replace(base, **changes)


class Core:
    """The core's work-order service seen from the front, scripted (module docstring)."""

    def __init__(self) -> None:
        self.requests: list[OpsRequest] = []
        self.orders: dict[str, WorkOrder] = {}
        self.hmi: HmiServer | None = None  # where the changes are pushed
        self.seq = 100

    def push(self, o: WorkOrder, event: str, user: str, from_state: OrderState, detail: str = "") -> None:
        self.orders[o.id] = o
        ev = OrderEvent(time.time_ns(), o.id, event, from_state, o.state, user, o.crew, detail)
        if self.hmi is not None and self.hmi.operations is not None:
            self.hmi.operations.apply([o.to_wire()], [ev.to_wire()])  # as the link's message carries them

    async def request(self, op: str, payload: tuple) -> tuple:
        assert op == REQUEST_WORK_ORDER, op
        req = OpsRequest.from_wire(payload)
        self.requests.append(req)
        user, args = req.caller.user, req.args
        if req.op == "create":
            self.seq += 1
            o = order(f"WO-{self.seq:06d}", source="operator", created_by=user, description=args["description"])
            self.push(o, "create", user, OrderState.NEW)
            return OpsResult(GOOD, "created", o.id).to_wire()
        o = self.orders.get(args["order"])
        if o is None:
            return OpsResult(BAD_NODE_ID_UNKNOWN, f"no work order {args['order']!r}", args["order"]).to_wire()
        if req.op == "propose":
            return OpsResult(GOOD, "", o.id, {"crews": [("V-7", 120.0), ("V-9", 300.5)]}).to_wire()
        try:
            state = next_state(o.id, o.state, req.op)
        except IllegalTransition as exc:
            return OpsResult(BAD_INVALID_STATE, str(exc), o.id).to_wire()
        crew = (args.get("crew") or "V-7") if req.op == "assign" else o.crew
        new = dataclasses.replace(o, state=state, crew=crew)
        self.push(new, req.op, user, o.state, str(args.get("reason") or args.get("note") or ""))
        return OpsResult(GOOD, req.op, o.id, {"crew": crew} if req.op == "assign" else {}).to_wire()


on_front = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    """One server for the module's tests (a start costs seconds); ``front`` empties it for each."""
    config = configs.write_config(tmp_path_factory.mktemp("operations"), DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, operations=operations_config())
    core = Core()
    hmi = HmiServer(
        config, TagDB(*config.tag_table()), f"opc.tcp://127.0.0.1:{free_port()}/scada/", commands=core.request
    )
    core.hmi = hmi
    async with serving(hmi):
        yield hmi, core


@pytest_asyncio.fixture(loop_scope="module")
async def front(server):
    hmi, core = server
    ops = hmi.operations
    assert ops is not None
    ops.install([])
    await ops.flush()
    core.requests.clear()
    core.orders.clear()
    ops.passes = ops.awaited_writes = 0
    ops.request = core.request
    changes: list = []

    async def model_changed(c):  # what HmiServer._model_changed would announce
        changes.append(c)

    ops.model_changed = model_changed
    yield hmi, core, changes


async def value(hmi: HmiServer, path: str):
    return await hmi.server.get_node(NodeId(path, hmi.ns)).read_value()


def exists(hmi: HmiServer, path: str) -> bool:
    return NodeId(path, hmi.ns) in hmi.server.iserver.aspace


def browse_names(hmi: HmiServer, path: str) -> set[str]:
    nd = hmi.server.iserver.aspace[NodeId(path, hmi.ns)]
    return {r.BrowseName.Name for r in nd.references if r.IsForward and r.ReferenceTypeId != NodeId(40)}


async def test_no_folder_without_work_orders_nor_without_a_core_to_ask(tmp_path):
    config = configs.write_config(tmp_path, DEVICES, "alarms: []\n")
    for cfg, request in ((config, Core().request), (dataclasses.replace(config, operations=operations_config()), None)):
        hmi = HmiServer(cfg, TagDB(*cfg.tag_table()), f"opc.tcp://127.0.0.1:{free_port()}/scada/", commands=request)
        async with serving(hmi):
            assert hmi.operations is None
            assert not exists(hmi, FOLDER_PATH)


@on_front
async def test_the_folder_shows_a_snapshot_of_open_orders_with_their_variables(front):
    hmi, _, _ = front
    ops = hmi.operations
    unlocated = order("WO-000003", commune="", device=None, lat=None, lon=None, on_site_due_ns=0)
    ops.install([order("WO-000001"), order("WO-000002", commune="Talant").to_wire(), unlocated])
    await ops.flush()
    assert {"Create", "Assign", "Cancel", "Close", "Propose", "Contract", "WO-000001", "WO-000002", "WO-000003"} <= (
        browse_names(hmi, FOLDER_PATH)
    )
    # An order's NodeId begins with its commune (visibility hides it with the commune's devices).
    path = order_path("WO-000002", "Talant")
    assert path == "Talant/_orders/WO-000002"
    assert await value(hmi, f"{path}/State") == "new"
    assert await value(hmi, f"{path}/Commune") == "Talant"
    assert await value(hmi, f"{path}/Device") == "LC-1"
    assert await value(hmi, f"{path}/Latitude") == pytest.approx(47.32)
    assert (await value(hmi, f"{path}/Created")).replace(tzinfo=None) == NO_TIME.replace(year=2026, tzinfo=None)
    assert await value(hmi, f"{path}/Breached") is False
    # No commune: everyone's, under the folder's own path; no position is NaN, no deadline null.
    upath = order_path("WO-000003", "")
    assert upath == f"{FOLDER_PATH}/WO-000003"
    assert math.isnan(await value(hmi, f"{upath}/Latitude"))
    assert await value(hmi, f"{upath}/Device") == ""
    assert (await value(hmi, f"{upath}/OnSiteDue")).year == 1601


@on_front
async def test_transitions_update_the_variables_and_a_closed_order_leaves(front):
    hmi, _, changes = front
    ops = hmi.operations
    o = order()
    ops.apply([o.to_wire()], [])
    await ops.flush()
    assert changes[-1][0][0] == NodeId(FOLDER_PATH, hmi.ns)  # the folder is browsed again
    assigned = dataclasses.replace(o, state=OrderState.ASSIGNED, crew="V-7")
    on_site = dataclasses.replace(assigned, state=OrderState.ON_SITE, breached=True)
    ops.apply([assigned], [])
    ops.apply([on_site], [])  # coalesced: the latest state is shown
    await ops.flush()
    path = order_path(o.id, o.commune)
    assert await value(hmi, f"{path}/State") == "on_site"
    assert await value(hmi, f"{path}/Crew") == "V-7"
    assert await value(hmi, f"{path}/Breached") is True
    n = len(changes)
    ops.apply([dataclasses.replace(on_site, state=OrderState.CLOSED)], [])
    await ops.flush()
    assert not exists(hmi, path) and not exists(hmi, f"{path}/State")
    assert "WO-000001" not in browse_names(hmi, FOLDER_PATH)
    assert len(changes) == n + 1
    assert changes[-1][0][2] & ua.ModelChangeStructureVerbMask.ReferenceDeleted


@on_front
async def test_a_snapshot_replaces_the_orders_shown(front):
    hmi, _, _ = front
    ops = hmi.operations
    ops.install([order("WO-000001"), order("WO-000002")])
    await ops.flush()
    ops.install([dataclasses.replace(order("WO-000002"), priority="low"), order("WO-000004")])
    await ops.flush()
    assert set(ops.orders) == {"WO-000002", "WO-000004"}
    assert not exists(hmi, order_path("WO-000001", "Dijon"))
    assert await value(hmi, f"{order_path('WO-000002', 'Dijon')}/Priority") == "low"


@on_front
async def test_a_burst_of_a_thousand_orders_is_one_pass_without_a_write_per_variable(front):
    hmi, _, _ = front
    ops = hmi.operations
    orders = [order(f"WO-{i:06d}") for i in range(1000)]
    ops.apply([o.to_wire() for o in orders], [])
    await ops.flush()
    ops.apply([dataclasses.replace(o, state=OrderState.ASSIGNED, crew="V-1") for o in orders], [])
    await ops.flush()
    assert ops.passes == 2
    assert ops.awaited_writes == 0  # nobody monitors them: set in place, no coroutine per value
    assert await value(hmi, f"{order_path('WO-000999', 'Dijon')}/State") == "assigned"


@on_front
async def test_contract_kpis_become_variables_the_first_time_then_are_written(front):
    hmi, _, _ = front
    ops = hmi.operations
    ops.kpis({"energy.Dijon.kwh": 1200, "availability.lighting": 0.987, 3: 1.0, "bad": "x", "flag": True})
    await ops.flush()
    assert browse_names(hmi, CONTRACT_PATH) == {"energy.Dijon.kwh", "availability.lighting"}
    ops.kpis({"energy.Dijon.kwh": 1250.5})
    await ops.flush()
    assert await value(hmi, f"{CONTRACT_PATH}/energy.Dijon.kwh") == 1250.5
    assert await value(hmi, f"{CONTRACT_PATH}/availability.lighting") == pytest.approx(0.987)  # kept


@on_front
async def test_malformed_pushes_are_skipped_and_counted_the_rest_shown(front, monkeypatch):
    hmi, _, _ = front
    ops = hmi.operations
    good = order("WO-000005")
    event = OrderEvent(T0, good.id, "create", OrderState.NEW, OrderState.NEW, "server")
    ops.apply([("WO-1", "garbage"), good.to_wire(), None], [("bad",), event.to_wire()])
    ops.kpis(["not", "a", "mapping"])
    await ops.flush()
    assert ops.malformed == 4
    assert set(ops.orders) == {"WO-000005"}
    # Events beyond the queue's bound are dropped and counted, never an unbounded backlog.
    monkeypatch.setattr(opsmod, "MAX_QUEUED_EVENTS", 2)
    dropped = ops.events_dropped
    ops.apply([], [event] * 5)
    assert ops.events_dropped == dropped + 3 and len(ops._events) == 2
    await ops.flush()


async def test_a_reload_keeps_the_folder_and_its_orders_and_removes_it_with_the_work_orders(tmp_path):
    config = configs.write_config(tmp_path, DEVICES, "alarms: []\n")
    on = dataclasses.replace(config, operations=operations_config())
    tagdb = TagDB(*on.tag_table())
    hmi = HmiServer(on, tagdb, f"opc.tcp://127.0.0.1:{free_port()}/scada/", commands=Core().request)
    async with serving(hmi):
        ops = hmi.operations
        ops.install([order("WO-000001")])
        await ops.flush()
        await hmi.reload(on, tagdb, [], [], [])
        assert hmi.operations is ops and exists(hmi, f"{order_path('WO-000001', 'Dijon')}/State")
        await hmi.reload(config, tagdb, [], [], [])  # operations.yaml routes no service any more
        assert hmi.operations is None
        assert not exists(hmi, FOLDER_PATH) and not exists(hmi, order_path("WO-000001", "Dijon"))
        await hmi.reload(on, tagdb, [], [], [])  # and back
        assert hmi.operations is not None and exists(hmi, f"{FOLDER_PATH}/Create")


@on_front
async def test_a_pass_that_fails_is_logged_and_the_next_one_shown(front, monkeypatch):
    """run() (started by serving, as the front starts it) outlives a failing pass."""
    hmi, _, _ = front
    ops = hmi.operations
    failures = ops.failures

    def broken(order):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ops, "_add_order", broken)
    ops.apply([order("WO-000007")], [])
    await until(lambda: ops.failures == failures + 1, what="the failed pass counted")
    monkeypatch.undo()
    ops.apply([order("WO-000008")], [])
    await until(lambda: "WO-000008" in ops.orders, what="the next pass shown")


def test_the_method_arguments_are_typed_and_empty_means_none():
    args = method_arguments("Create", ["lighting_maintenance", "", "", 47.3, 5.0, "a lamp"])
    assert args == {
        "service": "lighting_maintenance",
        "priority": None,
        "device": None,
        "lat": 47.3,
        "lon": 5.0,
        "description": "a lamp",
    }
    args = method_arguments("Create", ["s", "high", "LC-2", math.nan, ua.Variant(math.nan, ua.VariantType.Double), ""])
    assert (args["lat"], args["lon"], args["device"]) == (None, None, "LC-2")
    assert method_arguments("Assign", ["WO-000001", ""]) == {"order": "WO-000001", "crew": None}
    with pytest.raises(ArgumentRefused) as err:
        method_arguments("Create", ["s", "high", 3, "north", 5.0, ""])
    assert err.value.status == SC.BadInvalidArgument
    assert err.value.per_argument == [SC.Good, SC.Good, SC.BadTypeMismatch, SC.BadTypeMismatch, SC.Good, SC.Good]
    with pytest.raises(ArgumentRefused) as err:
        method_arguments("Cancel", ["WO-000001"])
    assert err.value.status == SC.BadArgumentsMissing
    with pytest.raises(ArgumentRefused) as err:
        method_arguments("Propose", ["WO-000001", "x"])
    assert err.value.status == SC.BadTooManyArguments
    with pytest.raises(ArgumentRefused) as err:
        method_arguments("Close", ["", "note"])
    assert err.value.per_argument[0] == SC.BadInvalidArgument


@on_front
async def test_each_method_sends_its_request_and_answers_with_the_core_s_status(front):
    hmi, core, _ = front
    folder = hmi.server.get_node(NodeId(FOLDER_PATH, hmi.ns))

    def m(name: str) -> ua.NodeId:
        return NodeId(f"{FOLDER_PATH}/{name}", hmi.ns)

    oid = await folder.call_method(m("Create"), "lighting_maintenance", "high", "LC-2", math.nan, math.nan, "dark")
    assert oid == "WO-000101"
    req = core.requests[-1]
    assert (req.op, dict(req.args)) == (
        "create",
        {"service": "lighting_maintenance", "priority": "high", "device": "LC-2", "lat": None, "lon": None,
         "description": "dark"},
    )  # fmt: skip
    assert await folder.call_method(m("Assign"), oid, "") == "V-7"
    assert dict(core.requests[-1].args) == {"order": oid, "crew": None}
    crews = await folder.call_method(m("Propose"), oid)
    assert crews == [["V-7", "V-9"], [120.0, 300.5]]
    with pytest.raises(uaerrors.BadInvalidState):  # the core's refusal is the call's status
        await folder.call_method(m("Close"), oid, "phoned")
    await folder.call_method(m("Cancel"), oid, "duplicate")
    assert (core.requests[-1].op, dict(core.requests[-1].args)) == ("cancel", {"order": oid, "reason": "duplicate"})
    with pytest.raises(uaerrors.BadNodeIdUnknown):
        await folder.call_method(m("Cancel"), "WO-999999", "")
    n = len(core.requests)
    with pytest.raises(uaerrors.BadInvalidArgument):  # the front refuses a mistyped call alone
        await folder.call_method(m("Assign"), oid, ua.Variant(7, ua.VariantType.Int32))
    with pytest.raises(uaerrors.BadMethodInvalid):  # on another object than the folder
        await hmi.server.get_node(NodeId(CONTRACT_PATH, hmi.ns)).call_method(m("Propose"), oid)
    assert len(core.requests) == n


@on_front
async def test_a_core_that_is_gone_answers_bad_shutdown(front):
    hmi, core, _ = front

    async def gone(op, payload):
        raise ConnectionError("the channel closed")

    hmi.operations.request = gone
    folder = hmi.server.get_node(NodeId(FOLDER_PATH, hmi.ns))
    with pytest.raises(uaerrors.BadShutdown):
        await folder.call_method(NodeId(f"{FOLDER_PATH}/Propose", hmi.ns), "WO-000001")


def test_event_messages_say_who_did_what():
    def ev(event, user, crew=None, detail="", a=OrderState.NEW, b=OrderState.ASSIGNED):
        return OrderEvent(T0, "WO-000012", event, a, b, user, crew, detail)

    assert event_message(ev("assign", "olga", "V-007")) == "WO-000012 assigned to V-007 by olga"
    assert event_message(ev("accept", "crew:V-007", "V-007")) == "WO-000012 accepted by V-007"
    assert event_message(ev("breach", "server", detail="on site by 10:00")) == (
        "WO-000012 missed its deadline: on site by 10:00"
    )
    assert event_message(ev("cancel", "olga", detail="duplicate")) == "WO-000012 cancelled by olga: duplicate"


def test_the_permission_map_gives_a_method_its_own_permission(tmp_path):
    """check_method: a mapped method needs its permission, not COMMAND; the others COMMAND."""
    authz = Authorisation(SecuritySettings.defaults(tmp_path), MemoryAudit())
    mapped, other = NodeId("City/Operations/Create", 2), NodeId("_types/x/_commands/Y", 2)
    # AUDIT, which an Operator lacks and a SecurityAdmin (who may not COMMAND) holds, shows the map decides.
    authz.method_permissions[mapped] = Permission.AUDIT

    def check(role: Role, method: ua.NodeId):
        token = REQUEST.set(RequestContext(Identity("u", frozenset({role}))))
        try:
            return authz.check_method(ua.CallMethodRequest(ObjectId=NodeId(FOLDER_PATH, 2), MethodId=method))
        finally:
            REQUEST.reset(token)

    assert check(Role.SECURITY_ADMIN, mapped) is None
    assert check(Role.OPERATOR, mapped).value == SC.BadUserAccessDenied
    assert check(Role.OPERATOR, other) is None
    assert check(Role.SECURITY_ADMIN, other).value == SC.BadUserAccessDenied


async def test_the_work_order_methods_need_dispatch_and_are_audited_by_the_core(tmp_path):
    config = configs.write_config(tmp_path / "cfg", DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, operations=operations_config())
    (tmp_path / "data").mkdir()
    settings = dataclasses.replace(SecuritySettings.defaults(tmp_path / "data"), allow_none=True)
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings,
        audit=MemoryAudit(),
        commands=Core().request,
    )
    async with serving(hmi):
        authz = opsmod.authorisation(hmi.server)
        methods = set(hmi.operations.methods.values())
        assert len(methods) == 5
        assert {authz.method_permissions[m] for m in methods} == {Permission.DISPATCH}
        assert methods <= authz.self_audited
        hmi.operations.detach()  # a reload that turns work orders off: nothing left behind
        assert not methods & set(authz.method_permissions) and not methods & authz.self_audited
        assert not exists(hmi, FOLDER_PATH)
