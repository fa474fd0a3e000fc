"""The traffic simulator's OPC UA server, browsed, read and commanded by an independent asyncua client."""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncua import Client, ua

from simulators.adapters.opcua_traffic import NAMESPACE_URI, Junction, TrafficOpcUaSimulator
from simulators.models import traffic as tr

from .helpers import until_read, free_port

pytestmark = pytest.mark.integration



@pytest.fixture
async def sim():
    junctions = [Junction("J-DIJ-001", "Dijon", 47.32, 5.04), Junction("J-DIJ-002", "Dijon", 47.33, 5.03),
                 Junction("J-TAL-001", "Talant", 47.34, 5.0)]
    state = tr.create([j.lat for j in junctions], [j.lon for j in junctions], t=time.time(), mode=tr.FIXED_TIME)
    s = TrafficOpcUaSimulator(state, junctions, f"opc.tcp://127.0.0.1:{free_port()}/traffic/", step_interval=0.1)
    await s.start()
    yield s
    await s.stop()


async def test_browse_read_and_command_plan_and_mode(sim):
    async with Client(sim.endpoint, timeout=5) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        root = client.get_node(ua.NodeId("Junctions", ns))
        communes = sorted([(await n.read_browse_name()).Name for n in await root.get_children()])
        assert communes == ["Dijon", "Talant"]
        dijon = client.get_node(ua.NodeId("Junctions/Dijon", ns))
        assert sorted([(await n.read_browse_name()).Name for n in await dijon.get_children()]) == ["J-DIJ-001", "J-DIJ-002"]

        def node(j, path):
            return client.get_node(ua.NodeId(f"{j}.{path}", ns))

        # The cycle runs: the main group's colour changes within a cycle.
        colours = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(colours) < 2:
            colours.add(await node("J-DIJ-001", "Groups/main/Colour").read_value())
            await asyncio.sleep(0.05)
        assert colours <= {tr.RED, tr.AMBER, tr.GREEN}

        # The centre selects plan 2: accepted.
        await node("J-DIJ-001", "Plan").write_value(ua.Variant(2, ua.VariantType.Int32))
        await until_read(lambda: asyncio.sleep(0, sim.state.plan[0]), lambda v: v == 2, what="plan 2 in force")
        assert await node("J-DIJ-001", "Plan").read_value() == 2

        # A mode the controller does not have: refused, the node returns to the controller's mode.
        await node("J-DIJ-001", "Mode").write_value(ua.Variant(7, ua.VariantType.Int32))
        await until_read(lambda: asyncio.sleep(0, sim.refused), lambda v: v == 1, what="unknown mode refused")
        await until_read(node("J-DIJ-001", "Mode").read_value, lambda v: v == tr.FIXED_TIME, what="mode restored")
        assert sim.refused == 1 and sim.state.mode[0] == tr.FIXED_TIME

        # Never a colour.
        with pytest.raises(ua.UaStatusCodeError):
            await node("J-DIJ-001", "Groups/main/Colour").write_value(ua.Variant(tr.GREEN, ua.VariantType.Int32))

        # A conflict fault latches flashing amber, visible to the client.
        sim.apply(tr.conflict_fault, 1, True)
        await until_read(node("J-DIJ-002", "EffectiveMode").read_value, lambda v: v == tr.FLASHING_AMBER, what="flash")
        assert await node("J-DIJ-002", "ConflictFault").read_value() is True
        await until_read(node("J-DIJ-002", "Groups/main/Colour").read_value, lambda v: v == tr.FLASHING, what="flash colour")
        # Detectors count.
        assert await node("J-TAL-001", "Detectors/main_in/Occupancy").read_value() > 0
