"""Commands from an HMI to the field, end to end (issue 15): simulated lighting cabinets (Modbus,
own process), the real ``scada run`` (its OPC UA front in its own process, the core's command
pipeline), real asyncua clients logged in as users of the users file.

What the issue asks of the HMI side: an Operator dims a cabinet and the simulator's value
confirms it (read by an independent Modbus master, mbpoll); DimAll over a commune confirms every
cabinet; a Write to a writable tag goes through the pipeline; an Observer is refused; Browse
shows the methods and the Control variables, which show the last command; every attempt is in
the audit trail.

The server, its users and the client helpers: tests/integration/opcua_commands_rig.py. What the
field refuses or leaves unanswered (an interlock, a silent cabinet): test_opcua_commands_field.py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.ua import uaerrors

from scada.opcua.address_space import NAMESPACE_URI
from tests import configs

from .helpers import Process, free_port_range, until, until_read, wait_port, write_cabinets
from .opcua_commands_rig import (
    DIM_LEVEL_REGISTER,
    audited,
    inputs_for,
    modbus_input,
    online,
    scada_server,
    session,
)

pytestmark = pytest.mark.integration

SC = ua.StatusCodes
SELECT_TIMEOUT = 3.0  # s: control.select_timeout of these tests (the default 10 s would make one wait long)
SET_DIM = "_types/lighting_cabinet/_commands/SetDimLevel"
DIM_ALL = "_types/_groups/DimAll"


@pytest.fixture
def city(tmp_path: Path):
    """Three simulated cabinets (two in Dijon), ``scada run`` with users otto (Operator), olga
    (Observer) and erin (Engineer); yields (endpoint, cabinets, data folder)."""
    assert shutil.which("mbpoll"), "mbpoll is missing: `make test` installs it (apt-get install mbpoll)"
    base = free_port_range(3)
    config = tmp_path / "config"
    cabinets = write_cabinets(config, base, "LC-C")
    assert "SetDimLevel" in configs.load(config).control.commands.get("lighting_cabinet", {}), (
        "the shipped tags.yaml must declare the cabinets' SetDimLevel"
    )
    with (config / "tags.yaml").open("a") as f:
        f.write(f"\ncontrol:\n  select_timeout: {SELECT_TIMEOUT}\n")
    inventory = config / "inventory" / "lighting-cabinets.csv"
    sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory)], tmp_path / "sim.log")
    try:
        wait_port(base + 2, proc=sim)
        with scada_server(tmp_path, config) as (endpoint, data):
            yield endpoint, cabinets, data
    finally:
        sim.stop()


def path_of(cab) -> str:
    return f"{cab.commune}/lighting/{cab.name}"


async def test_an_operator_dims_a_cabinet_and_the_simulator_confirms_it(city):
    endpoint, cabinets, data = city
    cab = cabinets[0]
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, path_of(cab))
        dev = otto.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}", ns))
        names = {(await c.read_browse_name()).Name for c in await dev.get_children()}
        assert {"SetDimLevel", "Control", "Diagnostics"} <= names
        result = await dev.call_method(ua.NodeId(SET_DIM, ns), *await inputs_for(otto, ns, SET_DIM, level=40.0))
        assert isinstance(result, str)
        # Confirmed by read-back before the call returned: the field says 40 %.
        assert modbus_input(cab.port, DIM_LEVEL_REGISTER) == 40
        control = f"{cab.commune}/lighting/{cab.name}/Control/"
        user = otto.get_node(ua.NodeId(control + "last_user", ns))
        await until_read(user.read_value, lambda v: v == "otto", 30, "the Control object shows who commanded")
        assert "SetDimLevel" in await otto.get_node(ua.NodeId(control + "last_command", ns)).read_value()
        assert await otto.get_node(ua.NodeId(control + "state", ns)).read_value() == 0  # idle again
    await until(lambda: audited(data, action="command", user="otto"), 30, "the command audited")
    [rec] = audited(data, action="command", user="otto")
    assert rec.result == "Good" and cab.name in rec.target


async def test_dim_all_over_a_commune_confirms_every_cabinet(city):
    endpoint, cabinets, data = city
    dijon = [c for c in cabinets if c.commune == "Dijon"]
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        for cab in dijon:
            await online(otto, ns, path_of(cab))
        res = await otto.uaclient.call(
            [
                ua.CallMethodRequest(
                    ObjectId=ua.NodeId("Dijon/lighting", ns),
                    MethodId=ua.NodeId(DIM_ALL, ns),
                    InputArguments=await inputs_for(otto, ns, DIM_ALL, level=30.0),
                )
            ]
        )
        assert res[0].StatusCode.is_good(), res[0].StatusCode
        devices, statuses = (v.Value for v in res[0].OutputArguments)
        assert sorted(devices) == sorted(c.name for c in dijon)
        assert all(s.is_good() for s in statuses), statuses
        for cab in dijon:
            assert modbus_input(cab.port, DIM_LEVEL_REGISTER) == 30
        done = otto.get_node(ua.NodeId("Dijon/lighting/GroupAction/Done", ns))
        await until_read(done.read_value, lambda v: v == len(dijon), 30, "the group's progress shown")
        assert modbus_input(cabinets[2].port, DIM_LEVEL_REGISTER) != 30  # Talant's cabinet untouched
    await until(lambda: audited(data, action="group_command"), 30, "the group action audited")


async def test_a_write_to_a_writable_tag_goes_through_the_pipeline(city):
    endpoint, cabinets, data = city
    cab = cabinets[1]
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, path_of(cab))
        setpoint = otto.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/dim_setpoint", ns))
        level = (await setpoint.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value
        assert level & ua.AccessLevel.CurrentWrite.mask
        await setpoint.write_value(ua.Variant(55.0, ua.VariantType.Double))
        await until_read(setpoint.read_value, lambda v: v == 55, 30, "the setpoint read back")
        power = otto.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/power", ns))
        with pytest.raises(ua.UaStatusCodeError):  # not writable: refused as before
            await power.write_value(ua.Variant(1.0, ua.VariantType.Double))
    await until(lambda: audited(data, action="command", user="otto"), 30, "the Write audited as a command")


async def test_an_observer_is_refused_and_audited(city):
    endpoint, cabinets, data = city
    cab = cabinets[0]
    async with session(endpoint, "olga") as olga:
        ns = await olga.get_namespace_index(NAMESPACE_URI)
        await online(olga, ns, path_of(cab))
        before = modbus_input(cab.port, DIM_LEVEL_REGISTER)
        dev = olga.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}", ns))
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await dev.call_method(ua.NodeId(SET_DIM, ns), *await inputs_for(olga, ns, SET_DIM, level=10.0))
        assert modbus_input(cab.port, DIM_LEVEL_REGISTER) == before
    await until(
        lambda: [r for r in audited(data, user="olga") if r.result == "BadUserAccessDenied"], 30, "the refusal audited"
    )


RESET = "_types/lighting_cabinet/_commands/ResetTrip"


async def test_select_before_operate_from_the_same_session_within_the_time_and_nothing_else(city):
    endpoint, cabinets, data = city
    cab = cabinets[2]
    path = f"{cab.commune}/lighting/{cab.name}"
    async with session(endpoint, "erin") as a, session(endpoint, "erin") as b:
        ns = await a.get_namespace_index(NAMESPACE_URI)
        await online(a, ns, path_of(cab))
        dev_a, dev_b = a.get_node(ua.NodeId(path, ns)), b.get_node(ua.NodeId(path, ns))
        select, operate, cancel = (ua.NodeId(RESET + s, ns) for s in ("_Select", "_Operate", "_Cancel"))
        state = a.get_node(ua.NodeId(f"{path}/Control/state", ns))
        # Operate without a Select.
        with pytest.raises(ua.UaStatusCodeError) as err:
            await dev_a.call_method(operate, "no-such-token")
        assert err.value.code == SC.BadSequenceNumberInvalid
        # Selected by session a: session b (the same user) may not operate it; a may.
        token = await dev_a.call_method(select)
        assert isinstance(token, str) and token
        await until_read(state.read_value, lambda v: v == 1, 30, "the Control object shows the selection")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await dev_b.call_method(operate, token)
        assert err.value.code == SC.BadSequenceNumberInvalid
        assert isinstance(await dev_a.call_method(operate, token), str)  # reset confirmed: no trip
        with pytest.raises(ua.UaStatusCodeError) as err:  # a token serves once
            await dev_a.call_method(operate, token)
        assert err.value.code == SC.BadSequenceNumberInvalid
        # Cancelled, then operated: refused.
        token = await dev_a.call_method(select)
        await dev_a.call_method(cancel, token)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await dev_a.call_method(operate, token)
        assert err.value.code == SC.BadSequenceNumberInvalid
        # Operated after the select timeout: refused.
        token = await dev_a.call_method(select)
        selected = time.monotonic()
        await until(lambda: time.monotonic() - selected > SELECT_TIMEOUT + 0.5, 30, "the select timeout passed")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await dev_a.call_method(operate, token)
        assert err.value.code == SC.BadSequenceNumberInvalid
    await until(
        lambda: len(audited(data, action="command", user="erin", result="BadSequenceNumberInvalid")) >= 5,
        30,
        "every refused Operate audited",
    )


async def test_writes_beyond_the_device_s_rate_are_refused_at_once(city):
    endpoint, cabinets, data = city
    cab = cabinets[1]
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, path_of(cab))
        nid = ua.NodeId(f"{cab.commune}/lighting/{cab.name}/dim_setpoint", ns)
        # One Write of 10 values to one cabinet: the front sends them to the core at once (a stuck
        # HMI); the device's burst (4 by default) goes through, the rest is BadTooManyOperations.
        write = ua.WriteValue(
            NodeId=nid,
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(ua.Variant(20.0, ua.VariantType.Double)),
        )
        results = await asyncio.wait_for(otto.uaclient.write(ua.WriteParameters(NodesToWrite=[write] * 10)), 120)
    codes = [r.value for r in results]
    assert SC.BadTooManyOperations in codes, codes
    assert any(ua.StatusCode(c).is_good() for c in codes), codes
    await until(
        lambda: audited(data, action="command", user="otto", result="BadTooManyOperations"), 30, "refusals audited"
    )
