"""Who may command, at the front (scada/opcua/authorise.py with scada/opcua/commands.py): real
logins (the users file), a scripted core. An Observer's command never reaches the core and is
audited as refused; an Operator's reaches it with the caller's identity, and is audited once,
by the core (no "call" record of the front beside the pipeline's "command" record).
"""

from __future__ import annotations

import dataclasses

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.ua import uaerrors

from scada.opcua.server import HmiServer
from scada.security.audit import MemoryAudit
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving
from tests.integration.test_opcua_authorisation import logged_in, settings, write_users

from .test_opcua_commands import DEVICES, Core, control

SET_DIM = "_types/lighting_cabinet/_commands/SetDimLevel"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory):
    folder = tmp_path_factory.mktemp("commands_security")
    config = configs.write_config(folder / "cfg", DEVICES, "alarms: []\n")
    config = dataclasses.replace(config, control=control())
    (folder / "data").mkdir()
    write_users(settings(folder / "data").users)
    core, audit = Core(), MemoryAudit()
    hmi = HmiServer(
        config,
        TagDB(*config.tag_table()),
        f"opc.tcp://127.0.0.1:{free_port()}/scada/",
        security=settings(folder / "data"),
        audit=audit,
        commands=core.request,
    )
    async with serving(hmi):
        yield hmi, core, audit


on_front = pytest.mark.asyncio(loop_scope="module")


@on_front
async def test_an_observer_s_command_and_write_never_reach_the_core_and_are_audited(front):
    hmi, core, audit = front
    n = len(core.requests)
    olga = await logged_in(hmi.endpoint, "olga")
    try:
        dev = olga.get_node(ua.NodeId("Dijon/lighting/LC-2", hmi.ns))
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await dev.call_method(ua.NodeId(SET_DIM, hmi.ns), 10.0, ua.Variant(None, ua.VariantType.Null))
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await olga.get_node(ua.NodeId("Dijon/lighting/LC-2/dim_setpoint", hmi.ns)).write_value(10.0)
    finally:
        await olga.disconnect()
    assert len(core.requests) == n
    refused = [r for r in audit.records if r.user == "olga" and r.result == "BadUserAccessDenied"]
    assert {r.action for r in refused} == {"call", "denied"}  # the Call's method, the Write service


@on_front
async def test_an_operator_s_command_carries_who_calls_and_is_audited_by_the_core_only(front):
    hmi, core, audit = front
    oscar = await logged_in(hmi.endpoint, "oscar")
    try:
        dev = oscar.get_node(ua.NodeId("Talant/lighting/LC-1", hmi.ns))
        assert await dev.call_method(ua.NodeId(SET_DIM, hmi.ns), 10.0, ua.Variant(None, ua.VariantType.Null)) == "Good"
    finally:
        await oscar.disconnect()
    caller = core.last().caller
    assert (caller.user, caller.roles, caller.communes, caller.anonymous) == (
        "oscar",
        ("Operator",),
        ("Talant",),
        False,
    )
    assert caller.session.startswith(("ns=", "i=", "g=", "s=", "b="))  # the session's NodeId: select is per session
    assert caller.client.startswith("127.0.0.1:")
    assert not [r for r in audit.records if r.user == "oscar" and r.action == "call"]
