"""A reload that changes only what the OPC UA front shows (operations.yaml, tags.yaml's zones):
the front follows, the field is not disturbed.

A real Application (its OPC UA front in its own process, or inline), three simulated lighting
cabinets (the lighting simulator in its own process, polled over Modbus), real clients: aiohttp
for Open311, asyncua for the zones. The files are edited while everything runs and reloaded as
``scada reload`` has the server do it (:func:`scada.reload.reload_from_files`, its result file).

Checked: operations.yaml gains an Open311 service -> services.json lists it; tags.yaml gains a
zone -> the Zones folder shows it (a GeneralModelChangeEvent says so) and its DimAll dims its cabinets (read back by mbpoll, an
independent Modbus master); the reload's result names each change; no driver, tag table,
historian nor front process was restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import aiohttp
import pytest
from asyncua import Client, ua

from scada.opcua.address_space import NAMESPACE_URI
from scada.reload import RESULT_FILE, reload_from_files
from tests import configs

from .helpers import (
    DEADLINE,
    Notifications,
    Process,
    free_port,
    free_port_range,
    running_app,
    until_read,
    wait_port,
    write_cabinets,
)
from .opcua_commands_rig import DIM_LEVEL_REGISTER, inputs_for, modbus_input, online

pytestmark = pytest.mark.integration

DIM_ALL = "_types/_groups/DimAll"
ZONE = "reload_zone"
SERVICE = """
  {name}:
    delays:
      default: {{on_site: 48h, repaired: 5d, warn_before: 4h}}
    open311: {{code: {code}, name: {code}}}
"""
OPERATIONS = """
http:
  listen: 127.0.0.1:{port}
  internal: false
services:
"""


@contextlib.asynccontextmanager
async def city(tmp_path: Path, front: str):
    """The simulated cabinets and the Application on them; yields (app, config folder, cabinets,
    the OPC UA endpoint, the Open311 base URL, the simulator's process)."""
    from scada.app import Application

    base = free_port_range(3)
    folder = tmp_path / "config"
    cabinets = write_cabinets(folder, base, "LC-R")
    http = free_port()
    (folder / "operations.yaml").write_text(
        OPERATIONS.format(port=http) + SERVICE.format(name="lighting_maintenance", code="streetlight")
    )
    sim = Process(["-m", "simulators", "lighting", "--inventory", str(folder / "inventory/lighting-cabinets.csv")],
                  tmp_path / "sim.log")  # fmt: skip
    try:
        wait_port(base + 2, proc=sim)
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
        app = Application(configs.load(folder), endpoint, 0, tmp_path / "data", front=front)
        task = asyncio.create_task(app.run(), name="core")
        try:
            await asyncio.wait_for(app.started.wait(), DEADLINE)
            yield app, folder, cabinets, endpoint, f"http://127.0.0.1:{http}", sim
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        sim.stop()


def field_of(app) -> dict:
    """What a reload of the front alone must leave as it is: the tag table, the historian, the
    drivers and their supervised tasks (a restart replaces them), the front process."""
    return {
        "tagdb": app.tagdb,
        "historian": app.historian,
        "drivers": tuple(app.drivers),
        "tasks": {n: t for n, t in app.supervisor.tasks.items() if n.startswith(("driver:", "historian"))},
        "restarts": {n: t.restarts for n, t in app.supervisor.tasks.items() if n.startswith(("driver:", "historian"))},
        "front": getattr(getattr(app.hmi, "proc", None), "pid", None),
    }


async def reload(app, folder: Path) -> dict:
    """Reload ``folder`` as SIGHUP / ``scada reload`` do; the result ``scada reload`` prints."""
    assert await reload_from_files(app, folder, trigger="test")
    result = json.loads((app.data_dir / RESULT_FILE).read_text())
    assert result["ok"], result
    return result


async def services(http: aiohttp.ClientSession, base: str) -> list[str] | None:
    """The Open311 service codes, None while the server does not answer yet (it binds in its task)."""
    try:
        async with http.get(f"{base}/open311/v2/services.json") as r:
            return sorted(s["service_code"] for s in await r.json()) if r.status == 200 else None
    except aiohttp.ClientConnectionError:
        return None


async def zones(client: Client, ns: int) -> set[str]:
    folder = client.get_node(ua.NodeId("_zones", ns))
    try:
        return {(await c.read_browse_name()).Name for c in await folder.get_children()}
    except ua.UaStatusCodeError:  # no zone at all: no Zones folder
        return set()


async def test_operations_and_zones_reloaded_alone_reach_the_front_process(tmp_path):
    async with city(tmp_path, "process") as (app, folder, cabinets, endpoint, base, _sim):
        async with aiohttp.ClientSession() as http:
            codes = await until_read(lambda: services(http, base), bool, what="the Open311 server answers")
            assert codes == ["streetlight"]
            field = field_of(app)

            # 1. operations.yaml gains a service offered to citizens.
            with (folder / "operations.yaml").open("a") as f:
                f.write(SERVICE.format(name="traffic_control", code="traffic_signal"))
            result = await reload(app, folder)
            assert result["changes"] == {"operations_changed": ["services"]}, result
            # The front's reload is done when the reload is: no wait.
            assert await services(http, base) == ["streetlight", "traffic_signal"]
            assert field_of(app) == field

        # 2. tags.yaml gains a zone of two of the three cabinets.
        async with Client(endpoint, timeout=30) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            assert ZONE not in await zones(client, ns)
            watch = Notifications()
            sub = await client.create_subscription(50, watch)
            await sub.subscribe_events(client.nodes.server, ua.ObjectIds.GeneralModelChangeEventType)
            for cab in cabinets:
                await online(client, ns, f"{cab.commune}/lighting/{cab.name}")
            zoned = cabinets[:2]
            with (folder / "tags.yaml").open("a") as f:
                f.write(f"\nzones:\n  {ZONE}: {{devices: [{', '.join(c.name for c in zoned)}]}}\n")
            result = await reload(app, folder)
            assert result["changes"] == {"control_changed": ["zones"]}, result
            assert ZONE in await zones(client, ns)
            # Clients are told: the Zones folder and the zone object are added.
            zone = ua.NodeId(f"_zones/{ZONE}", ns)
            change = await watch.next_event(lambda e: any(c.Affected == zone for c in (e.Changes or [])))
            verbs = {c.Affected: c.Verb for c in change.Changes}
            added = ua.ModelChangeStructureVerbMask.NodeAdded
            assert verbs == {zone: added, ua.NodeId("_zones", ns): added}, verbs
            (res,) = await client.uaclient.call(
                [
                    ua.CallMethodRequest(
                        ObjectId=ua.NodeId(f"_zones/{ZONE}", ns),
                        MethodId=ua.NodeId(DIM_ALL, ns),
                        InputArguments=await inputs_for(client, ns, DIM_ALL, level=30.0),
                    )
                ]
            )
            assert res.StatusCode.is_good(), res.StatusCode
            devices, statuses = (v.Value for v in res.OutputArguments)
            assert sorted(devices) == [c.name for c in zoned] and all(s.is_good() for s in statuses), statuses
            for cab in zoned:
                assert modbus_input(cab.port, DIM_LEVEL_REGISTER) == 30
            assert modbus_input(cabinets[2].port, DIM_LEVEL_REGISTER) != 30  # outside the zone
            assert field_of(app) == field

        # 3. Only a comment: nothing to do, but the front's configuration is the running one
        # (a later failed reload judges by it what to undo).
        with (folder / "tags.yaml").open("a") as f:
            f.write("\n# a comment\n")
        assert (await reload(app, folder))["message"] == "configuration unchanged"
        assert app.hmi.config is app.config and field_of(app) == field


async def test_an_inline_front_reloaded_alone_keeps_its_alarm_conditions(tmp_path):
    """``--front inline``: its conditions are rebuilt on the running engine, which is kept: the
    engine has one subscriber of them, the new ones, and their events still reach a client."""
    from scada.opcua.conditions import AlarmConditions

    async with city(tmp_path, "inline") as (app, folder, cabinets, endpoint, _base, sim), \
            Client(endpoint, timeout=30) as client:  # fmt: skip
        ns = await client.get_namespace_index(NAMESPACE_URI)
        for cab in cabinets:
            await online(client, ns, f"{cab.commune}/lighting/{cab.name}")
        watch = Notifications()
        sub = await client.create_subscription(50, watch)
        await sub.subscribe_events(client.nodes.server, ua.ObjectIds.AlarmConditionType)
        field, before = field_of(app), app.hmi.conditions
        with (folder / "operations.yaml").open("a") as f:
            f.write(SERVICE.format(name="traffic_control", code="traffic_signal"))
        assert (await reload(app, folder))["changes"] == {"operations_changed": ["services"]}
        assert app.hmi.config is app.config and app.hmi.alarms is app.alarms
        conditions = [s for s in app.alarms.subscribers if isinstance(getattr(s, "__self__", None), AlarmConditions)]
        assert conditions == [app.hmi.conditions._on_alarm_events] and app.hmi.conditions is not before
        assert {"alarms", "opcua-publisher", "opcua-alarm-events"} <= set(app.supervisor.tasks)
        assert field_of(app) == field
        # The field goes silent: the rebuilt conditions announce the engine's comm_loss alarms.
        sim.stop()
        await watch.next_event(lambda e: e.ConditionName == "comm_loss" and e.SourceName == cabinets[0].name)


async def test_a_front_that_cannot_follow_puts_the_running_configuration_back(tmp_path, monkeypatch):
    """A failure while the front takes a zone (here its history reads, injected): the front goes
    back to the running configuration, on the running engine; the next reload applies."""
    from scada.control.model import ZoneDef
    from scada.opcua import server as server_module
    from scada.opcua.conditions import AlarmConditions

    async with running_app(tmp_path, "inline") as (app, old, _new, _):
        new = dataclasses.replace(old, control=dataclasses.replace(old.control, zones={"z": ZoneDef("z", ("LC-1",))}))
        field = field_of(app)
        real = server_module._rebind_history

        def broken(th, config, tagdb, historian):
            if config is new:
                raise RuntimeError("injected: history not rebound")
            real(th, config, tagdb, historian)

        monkeypatch.setattr(server_module, "_rebind_history", broken)
        with pytest.raises(RuntimeError, match="injected"):
            await app.reload(new)
        for config in (old, new):  # put back, then applied once the fault is gone
            hmi = app.hmi
            assert app.config is config and hmi.config is config and app.commands.config is config
            assert hmi.alarms is app.alarms and hmi.conditions.engine is app.alarms
            listening = [s for s in app.alarms.subscribers if isinstance(getattr(s, "__self__", None), AlarmConditions)]
            assert listening == [hmi.conditions._on_alarm_events]
            assert all(app.supervisor.supervising(n) for n in app.task_names())
            assert {"alarms", "opcua-publisher", "opcua-alarm-events"} <= set(app.task_names())
            assert field_of(app) == field
            monkeypatch.setattr(server_module, "_rebind_history", real)
            if config is old:
                assert (await app.reload(new)).control_changed == ["zones"]
