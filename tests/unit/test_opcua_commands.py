"""The front's side of control (scada/opcua/commands.py, group_actions.py, writes.py), on a real
asyncua server and client on loopback, with the core's channel played by a script: what each
call, Write and group action asks the core, and how the core's answer reaches the client.

The core's pipeline itself (authorise, interlocks, select-before-operate, read-back) is proven
end to end in tests/integration/test_opcua_commands*.py; this checks the front's part alone:
the address space, the typed arguments, the request built, the status returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from asyncua import Client, ua

from scada.config import CONTROL_POINTS
from scada.control.model import (
    BAD_INVALID_STATE,
    BAD_OUT_OF_RANGE,
    BAD_TIMEOUT,
    GOOD,
    WRITE,
    ArgDef,
    CommandDef,
    CommandRequest,
    CommandResult,
    ControlConfig,
    GroupRequest,
    Step,
    ZoneDef,
)
from scada.opcua.server import HmiServer
from scada.opcua.typed_ua import NodeId
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving, until

SC = ua.StatusCodes
A = ua.AttributeIds

DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}
  - {name: LC-2, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.2:502"}
  - {name: LC-3, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.3:502"}
  - {name: TJ-1, type: traffic_junction, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "opc.tcp://10.0.0.9:4840/"}
  - {name: BO-1, type: access_bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.3:1883"}
"""

MODES = ((0, "auto"), (1, "forced_on"), (2, "forced_off"), (3, "manual_dim"))


def control() -> ControlConfig:
    """A few commands of each class, as the shipped tags.yaml declares them."""
    level = ArgDef("level", "float", (0.0, 100.0), unit="%")
    until_arg = ArgDef("until", "datetime", description="the override lasts until then")
    lc = {
        "SetDimLevel": CommandDef(
            "SetDimLevel",
            "lighting_cabinet",
            (level, until_arg),
            (Step("mode", 3.0), Step("dim_setpoint", arg="level")),
            (Step("dim_setpoint", arg="level"),),
            5.0,
        ),
        "SetMode": CommandDef(
            "SetMode",
            "lighting_cabinet",
            (ArgDef("mode", "enum", enum=MODES),),
            (Step("mode", arg="mode"),),
            (Step("mode", arg="mode"),),
            5.0,
        ),
    }
    plan = ArgDef("plan", "enum", enum=((1, "day"), (2, "peak"), (3, "night")))
    tj = {"SetPlan": CommandDef("SetPlan", "traffic_junction", (plan,), (Step("plan", arg="plan"),), (), 5.0)}
    bo = {
        "Raise": CommandDef("Raise", "access_bollard", (), (Step("command", 1.0),), (), 5.0, critical=True),
        "Lower": CommandDef("Lower", "access_bollard", (), (Step("command", 0.0),), (), 5.0),
    }
    zones = {"centre": ZoneDef("centre", devices=("LC-2", "BO-1"))}
    return ControlConfig(commands={"lighting_cabinet": lc, "traffic_junction": tj, "access_bollard": bo}, zones=zones)


class Core:
    """The core's end of the channel, scripted: records each request, answers from ``answers``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, tuple]] = []
        self.status = GOOD
        self.message = ""
        self.token = "tok-1"
        self.release: asyncio.Event | None = None  # set: group_command waits for it

    async def request(self, op: str, payload: tuple) -> object:
        self.requests.append((op, payload))
        if op == "command":
            req = CommandRequest.from_wire(payload)
            token = self.token if req.phase == "select" else ""
            return CommandResult(req.device, self.status, self.message, token=token).to_wire()
        if op == "group_command":
            if self.release is not None:
                await self.release.wait()
            return [CommandResult("LC-2", GOOD).to_wire(), CommandResult("LC-3", BAD_TIMEOUT).to_wire()]
        raise AssertionError(op)

    def last(self) -> CommandRequest:
        op, payload = self.requests[-1]
        assert op == "command"
        return CommandRequest.from_wire(payload)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory):
    config = configs.write_config(tmp_path_factory.mktemp("commands"), DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, control=control())
    tagdb = TagDB(*config.tag_table())
    core = Core()
    hmi = HmiServer(config, tagdb, f"opc.tcp://127.0.0.1:{free_port()}/scada/", commands=core.request)
    async with serving(hmi), Client(hmi.endpoint, timeout=10) as client:
        yield hmi, core, client


on_front = pytest.mark.asyncio(loop_scope="module")


def node(client: Client, hmi: HmiServer, path: str):
    return client.get_node(NodeId(path, hmi.ns))


async def children(n) -> dict[str, ua.NodeClass]:
    out = {}
    for ref in await n.get_references(ua.ObjectIds.HierarchicalReferences, ua.BrowseDirection.Forward):
        out[ref.BrowseName.Name] = ref.NodeClass
    return out


@on_front
async def test_browse_shows_each_device_its_type_commands_and_its_control_object(front):
    hmi, core, client = front
    lc = await children(node(client, hmi, "Talant/lighting/LC-1"))
    assert lc["SetDimLevel"] == lc["SetMode"] == ua.NodeClass.Method
    assert lc["Control"] == lc["Diagnostics"] == ua.NodeClass.Object
    assert "Raise_Select" not in lc
    bo = await children(node(client, hmi, "Dijon/bollard/BO-1"))
    assert {k for k, v in bo.items() if v == ua.NodeClass.Method} == {
        "Raise_Select",
        "Raise_Operate",
        "Raise_Cancel",
        "Lower",
    }
    control = await children(node(client, hmi, "Dijon/bollard/BO-1/Control"))
    assert set(control) == {p.name for p in CONTROL_POINTS}
    # Each Control variable reads (its tag: Bad until the core's pipeline writes it).
    dv = await node(client, hmi, "Dijon/bollard/BO-1/Control/last_result").read_data_value(raise_on_bad_status=False)
    assert dv.StatusCode is not None


@on_front
async def test_the_method_nodes_are_one_set_per_type_shared_by_its_devices(front):
    hmi, core, client = front
    refs1 = await node(client, hmi, "Talant/lighting/LC-1").get_references(ua.ObjectIds.HasComponent)
    refs2 = await node(client, hmi, "Dijon/lighting/LC-2").get_references(ua.ObjectIds.HasComponent)
    m1 = {r.NodeId for r in refs1 if r.NodeClass == ua.NodeClass.Method}
    m2 = {r.NodeId for r in refs2 if r.NodeClass == ua.NodeClass.Method}
    assert m1 == m2 and len(m1) == 2
    assert ua.NodeId("_types/lighting_cabinet/_commands/SetDimLevel", hmi.ns) in m1


@on_front
async def test_input_and_output_arguments_are_typed_with_ranges_and_enum_labels(front):
    hmi, core, client = front
    method = node(client, hmi, "_types/lighting_cabinet/_commands/SetDimLevel")
    inputs = await client.get_node(
        ua.NodeId("_types/lighting_cabinet/_commands/SetDimLevel/InputArguments", hmi.ns)
    ).read_value()
    assert [(a.Name, a.DataType) for a in inputs] == [
        ("level", ua.NodeId(ua.ObjectIds.Double)),
        ("until", ua.NodeId(ua.ObjectIds.DateTime)),
    ]
    assert "range [0, 100] %" in inputs[0].Description.Text
    props = {r.BrowseName.Name for r in await method.get_references(ua.ObjectIds.HasProperty)}
    assert props == {"InputArguments", "OutputArguments"}
    [mode] = await client.get_node(
        ua.NodeId("_types/lighting_cabinet/_commands/SetMode/InputArguments", hmi.ns)
    ).read_value()
    assert mode.DataType == ua.NodeId(ua.ObjectIds.Int32)
    assert "3=manual_dim" in mode.Description.Text
    [token] = await client.get_node(
        ua.NodeId("_types/access_bollard/_commands/Raise_Operate/InputArguments", hmi.ns)
    ).read_value()
    assert (token.Name, token.DataType) == ("SelectToken", ua.NodeId(ua.ObjectIds.String))


@on_front
async def test_a_call_is_the_core_s_command_and_its_status_the_result_s(front):
    hmi, core, client = front
    dev = node(client, hmi, "Dijon/lighting/LC-2")
    mid = ua.NodeId("_types/lighting_cabinet/_commands/SetDimLevel", hmi.ns)
    core.status, core.message = GOOD, "confirmed"
    until = datetime(2030, 1, 1, tzinfo=UTC)
    result = await dev.call_method(
        mid, ua.Variant(40.0, ua.VariantType.Double), ua.Variant(until, ua.VariantType.DateTime)
    )
    assert result == "confirmed"
    req = core.last()
    assert (req.device, req.command, req.phase) == ("LC-2", "SetDimLevel", "execute")
    assert req.args == {"level": 40.0, "until": float(int(until.timestamp()) * 10**9)}
    assert req.caller.session == "" or isinstance(req.caller.session, str)
    for status in (BAD_OUT_OF_RANGE, BAD_TIMEOUT, BAD_INVALID_STATE):
        core.status, core.message = status, "refused"
        with pytest.raises(ua.UaStatusCodeError) as err:
            await dev.call_method(mid, 150.0, ua.Variant(datetime(1601, 1, 1, tzinfo=UTC), ua.VariantType.DateTime))
        assert err.value.code == status
    assert core.last().args == {"level": 150.0, "until": 0.0}  # the range is the core's to judge; no time: 0
    core.status = GOOD


@on_front
async def test_arguments_the_front_can_judge_alone_never_reach_the_core(front):
    hmi, core, client = front
    n = len(core.requests)
    lc = node(client, hmi, "Dijon/lighting/LC-2")
    set_mode = ua.NodeId("_types/lighting_cabinet/_commands/SetMode", hmi.ns)
    with pytest.raises(ua.UaStatusCodeError) as err:
        await lc.call_method(set_mode, "manual_dim")  # a string where the enum's number goes
    assert err.value.code == SC.BadInvalidArgument
    with pytest.raises(ua.UaStatusCodeError) as err:
        await lc.call_method(set_mode, 1.5)  # not an integer
    assert err.value.code == SC.BadInvalidArgument
    with pytest.raises(ua.UaStatusCodeError) as err:
        await lc.call_method(set_mode)
    assert err.value.code == SC.BadArgumentsMissing
    with pytest.raises(ua.UaStatusCodeError) as err:
        await lc.call_method(set_mode, 1, 2)
    assert err.value.code == SC.BadTooManyArguments
    # A lighting command called on a junction: not a method of that object.
    with pytest.raises(ua.UaStatusCodeError) as err:
        await node(client, hmi, "Dijon/traffic/TJ-1").call_method(set_mode, 1)
    assert err.value.code == SC.BadMethodInvalid
    assert len(core.requests) == n
    await lc.call_method(set_mode, ua.Variant(3, ua.VariantType.Int32))
    assert core.last().args == {"mode": 3.0}


@on_front
async def test_a_critical_command_is_select_then_operate_or_cancel_with_the_token(front):
    hmi, core, client = front
    bo = node(client, hmi, "Dijon/bollard/BO-1")
    base = "_types/access_bollard/_commands/Raise"
    core.token = "t-42"
    token = await bo.call_method(ua.NodeId(base + "_Select", hmi.ns))
    assert token == "t-42"
    assert core.last().phase == "select"
    core.message = "up"
    assert await bo.call_method(ua.NodeId(base + "_Operate", hmi.ns), "t-42") == "up"
    req = core.last()
    assert (req.command, req.phase, req.token) == ("Raise", "operate", "t-42")
    await bo.call_method(ua.NodeId(base + "_Cancel", hmi.ns), "t-43")
    assert (core.last().phase, core.last().token) == ("cancel", "t-43")
    core.message = ""


@on_front
async def test_a_write_to_a_writable_tag_is_the_write_command_of_its_point(front):
    hmi, core, client = front
    setpoint = node(client, hmi, "Dijon/lighting/LC-3/dim_setpoint")
    level = await setpoint.read_attribute(A.AccessLevel)
    assert level.Value.Value & ua.AccessLevel.CurrentWrite.mask
    core.status = GOOD
    await setpoint.write_value(ua.Variant(25.0, ua.VariantType.Double))
    req = core.last()
    assert (req.device, req.command, req.point, req.args, req.origin) == (
        "LC-3",
        WRITE,
        "dim_setpoint",
        {"value": 25.0},
        "write",
    )
    core.status = BAD_TIMEOUT
    with pytest.raises(ua.UaStatusCodeError) as err:
        await setpoint.write_value(ua.Variant(30.0, ua.VariantType.Double))
    assert err.value.code == BAD_TIMEOUT
    core.status = GOOD
    n = len(core.requests)
    power = node(client, hmi, "Dijon/lighting/LC-3/power")  # not writable: refused as before
    assert not (await power.read_attribute(A.AccessLevel)).Value.Value & ua.AccessLevel.CurrentWrite.mask
    with pytest.raises(ua.UaStatusCodeError):
        await power.write_value(ua.Variant(1.0, ua.VariantType.Double))
    with pytest.raises(ua.UaStatusCodeError) as err:
        await setpoint.write_value(ua.Variant("high", ua.VariantType.String))
    assert err.value.code == SC.BadTypeMismatch
    assert len(core.requests) == n


@on_front
async def test_group_actions_sit_where_their_class_is_and_answer_per_device(front):
    hmi, core, client = front
    dijon = await children(node(client, hmi, "Dijon"))
    assert {k for k, v in dijon.items() if v == ua.NodeClass.Method} == {
        "DimAll",
        "OpenZone",
        "CloseZone",
        "SetCorridorPlan",
    }
    talant = await children(node(client, hmi, "Talant/lighting"))
    assert {k for k, v in talant.items() if v == ua.NodeClass.Method} == {"DimAll"}
    assert "GroupAction" in talant
    zone = await children(node(client, hmi, "_zones/centre"))
    assert {k for k, v in zone.items() if v == ua.NodeClass.Method} == {"DimAll", "OpenZone", "CloseZone"}
    dim_all = ua.NodeId("_types/_groups/DimAll", hmi.ns)
    res = await client.uaclient.call(
        [
            ua.CallMethodRequest(
                ObjectId=ua.NodeId("Dijon/lighting", hmi.ns),
                MethodId=dim_all,
                InputArguments=[ua.Variant(60.0, ua.VariantType.Double)],
            )
        ]
    )
    assert res[0].StatusCode.is_good()
    devices, statuses = (v.Value for v in res[0].OutputArguments)
    assert devices == ["LC-2", "LC-3"]
    assert [s.value for s in statuses] == [GOOD, BAD_TIMEOUT]
    op, payload = core.requests[-1]
    req = GroupRequest.from_wire(payload)
    assert (op, req.group, req.action, req.args) == ("group_command", "Dijon/lighting", "DimAll", {"level": 60.0})
    await node(client, hmi, "_zones/centre").call_method(ua.NodeId("_types/_groups/OpenZone", hmi.ns))
    assert GroupRequest.from_wire(core.requests[-1][1]).group == "zone:centre"
    # SetCorridorPlan is no action of a lighting folder.
    with pytest.raises(ua.UaStatusCodeError) as err:
        await node(client, hmi, "Talant/lighting").call_method(ua.NodeId("_types/_groups/SetCorridorPlan", hmi.ns), 2)
    assert err.value.code == SC.BadMethodInvalid


@on_front
async def test_a_group_s_progress_is_shown_while_it_runs(front):
    hmi, core, client = front
    base = "Dijon/GroupAction/"
    seen: list[tuple[str, object]] = []

    class Handler:
        def datachange_notification(self, n, val, data):
            seen.append((n.nodeid.Identifier.rsplit("/", 1)[1], val))

        def event_notification(self, event):
            seen.append(("event", event.Message.Text))

    sub = await client.create_subscription(20, Handler())
    try:
        await sub.subscribe_data_change([node(client, hmi, base + n) for n in ("Running", "Done", "Failed")])
        await sub.subscribe_events(client.nodes.server, ua.ObjectIds.ProgressEventType)
        hmi.groups.progress("Dijon", "DimAll", "alice", 2, 1, 0, False)
        await until(lambda: ("Running", True) in seen and ("Done", 1) in seen, 10, "progress shown")
        hmi.groups.progress("Dijon", "DimAll", "alice", 2, 2, 1, True)  # done counts the failed one
        await until(lambda: ("Running", False) in seen and ("Failed", 1) in seen, 10, "the end shown")
        await until(lambda: any(k == "event" and "finished" in str(v) for k, v in seen), 10, "a final event")
        assert await node(client, hmi, base + "User").read_value() == "alice"
        hmi.groups.progress("Nowhere", "DimAll", "alice", 1, 1, 0, True)  # not a group of this tree: ignored
    finally:
        await sub.delete()


async def test_history_marks_keep_the_write_bit_of_writable_points_only_with_control(tmp_path):
    from asyncua import Server

    from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder
    from scada.opcua.asyncua_private.nodes import address_space
    from scada.opcua.history import TagHistory
    from scada.opcua.writes import writable_tags

    config = configs.write_config(tmp_path / "cfg", DEVICES, "alarms: []\n")
    read, write, hist = (
        ua.AccessLevel.CurrentRead.mask,
        ua.AccessLevel.CurrentWrite.mask,
        ua.AccessLevel.HistoryRead.mask,
    )
    for with_control in (False, True):
        server = Server()
        await server.init()
        ns = await server.register_namespace(NAMESPACE_URI)
        AddressSpaceBuilder(server, ns, writable=with_control).build(config)
        th = TagHistory(server, ns, config, TagDB(*config.tag_table()), None)
        if with_control:
            th.writable = frozenset(writable_tags(config))
        th.mark_variables()
        aspace = address_space(server)

        def level(name: str) -> int:
            return aspace[NodeId(name, ns)].attributes[A.AccessLevel].value.Value.Value

        assert level("Dijon/lighting/LC-2/dim_setpoint") == read | hist | (write if with_control else 0)
        assert level("Dijon/lighting/LC-2/power") == read | hist


async def test_a_reload_installs_the_commands_again_without_duplicates_and_keeps_the_shared_nodes(tmp_path):
    from asyncua import Server

    from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder, TreeEditor
    from scada.opcua.asyncua_private.nodes import address_space
    from scada.opcua.commands import CommandMethods
    from scada.opcua.group_actions import GroupActions

    config = configs.write_config(tmp_path / "a", DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, control=control())
    server = Server()
    await server.init()
    ns = await server.register_namespace(NAMESPACE_URI)
    AddressSpaceBuilder(server, ns, writable=True).build(config)
    core = Core()
    commands, groups = CommandMethods(server, ns, core.request), GroupActions(server, ns, core.request)
    commands.install(config)
    groups.install(config)
    aspace = address_space(server)

    def methods(path: str) -> list[str]:
        return sorted(
            r.NodeId.Identifier for r in aspace[NodeId(path, ns)].references if r.NodeClass == ua.NodeClass.Method
        )

    set_dim = NodeId("_types/lighting_cabinet/_commands/SetDimLevel", ns)
    # Removing a device leaves its type's method nodes to the others.
    await TreeEditor(server, ns).remove_device(config, config.device("LC-1"))
    assert set_dim in aspace and aspace[set_dim].call is not None
    # A reload: a new device, the commands and groups installed again on the edited tree.
    more = (
        DEVICES
        + '  - {name: LC-9, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.9:502"}\n'
    )
    new = dataclasses.replace(configs.write_config(tmp_path / "b", more, "alarms: []\n"), control=control())
    commands.detach()
    groups.detach()
    assert methods("Dijon/lighting/LC-2") == [] and methods("Dijon") == []
    TreeEditor(server, ns, writable=True).add_devices(new, [new.device("LC-9")])
    commands.install(new)
    groups.install(new)
    assert (
        methods("Dijon/lighting/LC-9")
        == methods("Dijon/lighting/LC-2")
        == [
            "_types/lighting_cabinet/_commands/SetDimLevel",
            "_types/lighting_cabinet/_commands/SetMode",
        ]
    )
    assert methods("Dijon/lighting") == ["_types/_groups/DimAll"]
    assert NodeId("Dijon/lighting/LC-9/Control/last_result", ns) in aspace
    assert aspace[set_dim].call is not None


async def test_in_process_the_request_calls_the_app_s_command_service():
    from scada.opcua.commands import caller_of, in_process

    class Service:
        def __init__(self):
            self.got = []

        async def execute(self, req):
            self.got.append(req)
            return CommandResult(req.device, BAD_TIMEOUT, "no read-back")

        async def run_group(self, req, progress=None):
            self.got.append(req)
            progress(req.group, req.action, req.caller.user, 1, 1, 0, True)
            return [CommandResult("LC-2", GOOD)]

    service, shown = Service(), []
    request = in_process(service, lambda *a: shown.append(a))
    caller = caller_of(None)
    answer = await request("command", CommandRequest("LC-2", "SetDimLevel", {"level": 5.0}, caller).to_wire())
    assert CommandResult.from_wire(answer) == CommandResult("LC-2", BAD_TIMEOUT, "no read-back")
    answer = await request("group_command", GroupRequest("Dijon", "DimAll", {"level": 5.0}, caller).to_wire())
    assert [CommandResult.from_wire(r) for r in answer] == [CommandResult("LC-2", GOOD)]
    assert shown == [("Dijon", "DimAll", "opcua:anonymous", 1, 1, 0, True)]
    assert service.got[0].args == {"level": 5.0}
