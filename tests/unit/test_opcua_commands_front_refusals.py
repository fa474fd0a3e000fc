"""What the front decides alone about commands, Writes and group actions (scada/opcua/commands.py,
writes.py, group_actions.py), on a real asyncua server with its security layer, real logins and a
scripted core (tests/unit/test_opcua_commands.py's Core):

* a NaN, an infinity or a value outside Int32 for an int or enum argument is a type mismatch
  (BadInvalidArgument, the argument's result BadTypeMismatch), never BadInternalError, and is
  audited like the front's other refusals;
* a Write the front refuses (not a number, an array, an IndexRange, another attribute) is audited;
* a group's progress: Done counts every device finished, Failed those that failed, the event's
  message and Progress (0-100) agree;
* a group action's answer never names a device of a commune the caller does not see.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import pytest_asyncio
from asyncua import Client, ua

from scada.control.model import BAD_USER_ACCESS_DENIED, GOOD, CommandResult, ZoneDef
from scada.opcua.server import HmiServer
from scada.security.audit import MemoryAudit
from scada.security.users import hash_password, make_user, save_users
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving, until
from tests.integration.test_opcua_authorisation import logged_in, password, settings

from .test_opcua_commands import DEVICES, Core, control

SC = ua.StatusCodes
V = ua.VariantType
A = ua.AttributeIds

USERS = {  # name: (roles, communes, see_other_communes)
    "opal": (["operator"], None, None),  # every commune
    "oscar": (["operator"], ["Dijon"], True),  # acts on Dijon, sees the others (read-only)
    "dora": (["operator"], ["Dijon"], False),  # acts on Dijon, does not see the others
}


class GroupCore(Core):
    """The scripted core, answering a group action with ``group_answer`` (per device)."""

    def __init__(self) -> None:
        super().__init__()
        self.group_answer = [CommandResult("LC-2", GOOD), CommandResult("LC-3", GOOD)]

    async def request(self, op: str, payload: tuple) -> object:
        if op == "group_command":
            self.requests.append((op, payload))
            return [r.to_wire() for r in self.group_answer]
        return await super().request(op, payload)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory):
    folder = tmp_path_factory.mktemp("front_refusals")
    config = configs.write_config(folder / "cfg", DEVICES, "alarms: []\n")
    base = control()
    zones = {
        **base.zones,
        "across": ZoneDef("across", devices=("LC-1", "LC-2")),  # Talant and Dijon
        "talant": ZoneDef("talant", devices=("LC-1",)),
    }
    config = dataclasses.replace(config, control=dataclasses.replace(base, zones=zones))
    (folder / "data").mkdir()
    security = settings(folder / "data")
    save_users(
        security.users,
        {
            name: make_user(name, hash_password(password(name)), roles, communes, see_other_communes=see)
            for name, (roles, communes, see) in USERS.items()
        },
    )
    core, audit = GroupCore(), MemoryAudit()
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=security,
        audit=audit,
        commands=core.request,
    )
    async with serving(hmi):
        yield hmi, core, audit


on_front = pytest.mark.asyncio(loop_scope="module")


async def call(client: Client, hmi: HmiServer, obj: str, method: str, *inputs: ua.Variant) -> ua.CallMethodResult:
    res = await client.uaclient.call(
        [
            ua.CallMethodRequest(
                ObjectId=ua.NodeId(obj, hmi.ns), MethodId=ua.NodeId(method, hmi.ns), InputArguments=list(inputs)
            )
        ]
    )
    return res[0]


def strict_json(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


SET_MODE = "_types/lighting_cabinet/_commands/SetMode"
SET_DIM = "_types/lighting_cabinet/_commands/SetDimLevel"
SET_PLAN = "_types/traffic_junction/_commands/SetPlan"
DIM_ALL = "_types/_groups/DimAll"
CORRIDOR = "_types/_groups/SetCorridorPlan"


@on_front
async def test_nan_inf_or_outside_int32_for_an_int_or_enum_argument_is_a_type_mismatch_and_audited(front):
    hmi, core, audit = front
    n, before = len(core.requests), len(audit.records)
    client = await logged_in(hmi.endpoint, "opal")
    try:
        bad = [
            ua.Variant(float("nan"), V.Double),
            ua.Variant(float("inf"), V.Double),
            ua.Variant(float("-inf"), V.Double),
            ua.Variant(2**40, V.Int64),  # a whole number no Int32 holds
            ua.Variant(-1e300, V.Double),
        ]
        for value in bad:
            for obj, method in (("Dijon/lighting/LC-2", SET_MODE), ("Dijon/traffic/TJ-1", SET_PLAN)):
                res = await call(client, hmi, obj, method, value)
                assert res.StatusCode.value == SC.BadInvalidArgument, (method, value)
                assert [c.value for c in res.InputArgumentResults] == [SC.BadTypeMismatch]
        # A float argument: NaN is no number either (the core would say BadTypeMismatch too).
        res = await call(client, hmi, "Dijon/lighting/LC-2", SET_DIM, bad[0], ua.Variant(None, V.Null))
        assert res.StatusCode.value == SC.BadInvalidArgument
        assert res.InputArgumentResults[0].value == SC.BadTypeMismatch
        # The group action's argument goes through the same check (SetCorridorPlan's plan is an enum).
        res = await call(client, hmi, "Dijon", CORRIDOR, bad[0])
        assert res.StatusCode.value == SC.BadInvalidArgument
        assert [c.value for c in res.InputArgumentResults] == [SC.BadTypeMismatch]
        # Int32's bounds themselves are an Int32: they reach the core, which judges the enumeration.
        res = await call(client, hmi, "Dijon/traffic/TJ-1", SET_PLAN, ua.Variant(2**31 - 1, V.Int64))
        assert res.StatusCode.is_good()
        assert core.last().args == {"plan": 2**31 - 1}
    finally:
        await client.disconnect()
    assert len(core.requests) == n + 1  # only the last one
    refused = [r for r in audit.records[before:] if r.user == "opal" and r.result == "BadInvalidArgument"]
    commands = [r for r in refused if r.action == "command"]
    assert len(commands) == 2 * len(bad) + 1
    assert {r.target for r in commands} == {"LC-2", "TJ-1"}
    args = [json.loads(r.arguments, parse_constant=strict_json) for r in commands]  # NaN is no JSON
    assert {a["command"] for a in args} == {"SetMode", "SetPlan", "SetDimLevel"}
    assert {a["arguments"][0] for a in args} == {"nan", "inf", "-inf", 2**40, -1e300}
    assert [r.target for r in refused if r.action == "group_command"] == ["Dijon"]


@on_front
async def test_a_write_the_front_refuses_alone_is_audited(front):
    hmi, core, audit = front
    n, before = len(core.requests), len(audit.records)
    client = await logged_in(hmi.endpoint, "opal")
    setpoint = ua.NodeId("Dijon/lighting/LC-3/dim_setpoint", hmi.ns)
    writes = [
        (ua.WriteValue(NodeId=setpoint, AttributeId=A.Value, Value=ua.DataValue(ua.Variant("40"))), SC.BadTypeMismatch),
        (
            ua.WriteValue(NodeId=setpoint, AttributeId=A.Value, Value=ua.DataValue(ua.Variant([40.0, 50.0], V.Double))),
            SC.BadTypeMismatch,
        ),
        (
            ua.WriteValue(
                NodeId=setpoint, AttributeId=A.Value, Value=ua.DataValue(ua.Variant(40.0, V.Double)), IndexRange="0"
            ),
            SC.BadWriteNotSupported,
        ),
        (
            ua.WriteValue(
                NodeId=setpoint,
                AttributeId=A.DisplayName,
                Value=ua.DataValue(ua.Variant(ua.LocalizedText("x"), V.LocalizedText)),
            ),
            SC.BadNotWritable,
        ),
    ]
    try:
        params = ua.WriteParameters()
        params.NodesToWrite = [w for w, _ in writes]
        results = await client.uaclient.write(params)
    finally:
        await client.disconnect()
    assert [r.value for r in results] == [code for _, code in writes]
    assert len(core.requests) == n  # none reached the core
    records = [r for r in audit.records[before:] if r.user == "opal" and r.action == "command"]
    assert sorted(r.result for r in records) == sorted(ua.StatusCode(code).name for _, code in writes)
    for rec in records:
        assert rec.target == "LC-3"
        args = json.loads(rec.arguments)
        assert (args["command"], args["point"], args["origin"]) == ("Write", "dim_setpoint", "write")
    by_result = {r.result: json.loads(r.arguments) for r in records}
    assert by_result["BadWriteNotSupported"]["index_range"] == "0"
    assert by_result["BadNotWritable"]["attribute"] == "DisplayName"


@on_front
async def test_group_progress_counts_each_finished_device_once(front):
    hmi, core, audit = front
    seen: list[tuple[str, object]] = []

    class Handler:
        def datachange_notification(self, n, val, data):
            seen.append((n.nodeid.Identifier.rsplit("/", 1)[1], val))

        def event_notification(self, event):
            seen.append(("event", (event.Message.Text, event.Progress)))

    client = await logged_in(hmi.endpoint, "opal")
    try:
        base = "Dijon/lighting/GroupAction/"
        sub = await client.create_subscription(20, Handler())
        await sub.subscribe_data_change([client.get_node(ua.NodeId(base + n, hmi.ns)) for n in ("Done", "Failed")])
        await sub.subscribe_events(client.nodes.server, ua.ObjectIds.ProgressEventType)
        # The core's messages (scada/control/groups.py): done counts every device finished,
        # failed those of them not Good. Here 4 devices: 2 finished (both failed), then all 4.
        hmi.groups.progress("Dijon/lighting", "DimAll", "opal", 4, 2, 2, False)
        await until(lambda: any(k == "event" for k, _ in seen), 10, "a running event")
        hmi.groups.progress("Dijon/lighting", "DimAll", "opal", 4, 4, 2, True)
        await until(lambda: any(k == "event" and "finished" in v[0] for k, v in seen), 10, "the final event")
        events = [v for k, v in seen if k == "event"]
        assert events[0] == ("DimAll on Dijon/lighting by opal: running, 2/4 done, 2 failed", 50)
        assert events[-1] == ("DimAll on Dijon/lighting by opal: finished, 4/4 done, 2 failed", 100)
        assert all(0 <= progress <= 100 for _, progress in events)
        assert await client.get_node(ua.NodeId(base + "Done", hmi.ns)).read_value() == 4
        assert await client.get_node(ua.NodeId(base + "Failed", hmi.ns)).read_value() == 2
        desc = await client.get_node(ua.NodeId(base + "Done", hmi.ns)).read_description()
        assert "confirmed or failed" in desc.Text
        await sub.delete()
    finally:
        await client.disconnect()


@on_front
async def test_a_group_s_answer_never_names_devices_of_communes_the_caller_does_not_see(front):
    hmi, core, audit = front
    # The core commands the zone's devices; LC-1 (Talant) it refuses to a Dijon operator.
    core.group_answer = [CommandResult("LC-1", BAD_USER_ACCESS_DENIED, "Talant"), CommandResult("LC-2", GOOD)]
    level = ua.Variant(40.0, V.Double)
    try:
        # Who sees Talant (read-only) gets every device, LC-1 with its refusal.
        oscar = await logged_in(hmi.endpoint, "oscar")
        try:
            res = await call(oscar, hmi, "_zones/across", DIM_ALL, level)
        finally:
            await oscar.disconnect()
        assert res.StatusCode.is_good()
        assert res.OutputArguments[0].Value == ["LC-1", "LC-2"]
        # Who does not see Talant: LC-1 left out, as everywhere else.
        dora = await logged_in(hmi.endpoint, "dora")
        try:
            res = await call(dora, hmi, "_zones/across", DIM_ALL, level)
            assert res.StatusCode.is_good()
            devices, statuses = (v.Value for v in res.OutputArguments)
            assert devices == ["LC-2"]
            assert [s.value for s in statuses] == [GOOD]
            # A zone of hidden devices only: refused, no name given.
            core.group_answer = [CommandResult("LC-1", BAD_USER_ACCESS_DENIED, "Talant")]
            res = await call(dora, hmi, "_zones/talant", DIM_ALL, level)
            assert res.StatusCode.value == SC.BadUserAccessDenied
            assert not res.OutputArguments
            # A folder of a hidden commune: as if it did not exist, and the core is not asked.
            n = len(core.requests)
            for folder in ("Talant", "Talant/lighting"):
                res = await call(dora, hmi, folder, DIM_ALL, level)
                assert res.StatusCode.value == SC.BadNodeIdUnknown
            assert len(core.requests) == n
        finally:
            await dora.disconnect()
    finally:
        core.group_answer = [CommandResult("LC-2", GOOD), CommandResult("LC-3", GOOD)]
    refused = [r for r in audit.records if r.user == "dora" and r.action == "group_command"]
    assert sorted(r.target for r in refused) == ["Talant", "Talant/lighting"]
    assert {r.result for r in refused} == {"BadNodeIdUnknown"}
