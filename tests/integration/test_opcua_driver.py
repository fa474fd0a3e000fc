"""The OPC UA client driver against the traffic simulator's server, in one event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from scada.driver_api import CommandRejected, DeviceUnreachable, WriteCommand
from drivers.opcua.driver import OpcUaDriver
from scada import status as st
from city_scada import load_config
from scada.diagnostics import OFFLINE, ONLINE
from scada.tagdb import TagDB
from simulators.adapters.opcua_traffic import Junction, TrafficOpcUaSimulator
from simulators.models import traffic as tr

from .helpers import DEADLINE, free_port, until, write_tags

pytestmark = pytest.mark.integration

GHOST_TYPE = """
  ghost_junction:
    class: traffic
    driver: opcua
    namespace: urn:city-scada:traffic-sim
    points:
      mode: {node: "{device}.Mode"}
      ghost: {node: "{device}.NoSuchNode"}
"""
JUNCTIONS = [Junction("J-DIJ-001", "Dijon", 47.32, 5.04), Junction("J-DIJ-002", "Dijon", 47.33, 5.03)]


def config(folder: Path, url: str):
    write_tags(folder, ["devices.csv"], GHOST_TYPE)
    rows = ["name,type,commune,lat,lon,endpoint",
            f"J-DIJ-001,traffic_junction,Dijon,47.32,5.04,{url}",
            f"J-DIJ-002,ghost_junction,Dijon,47.33,5.03,{url}"]
    (folder / "devices.csv").write_text("\n".join(rows) + "\n")
    return load_config(folder)


def simulator(url: str) -> TrafficOpcUaSimulator:
    state = tr.create([j.lat for j in JUNCTIONS], [j.lon for j in JUNCTIONS], t=time.time(), mode=tr.FIXED_TIME)
    return TrafficOpcUaSimulator(state, JUNCTIONS, url, step_interval=0.1)




async def test_values_refused_node_writes_and_session_recovery(tmp_path):
    url = f"opc.tcp://127.0.0.1:{free_port()}/traffic/"
    cfg = config(tmp_path / "c", url)
    tagdb = TagDB(*cfg.tag_table())
    driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)

    def tag(device, point):
        return tagdb.id_of(f"Dijon/traffic/{device}/{point}")

    def status(device, point):
        return int(tagdb.status[tag(device, point)])

    def value(device, point):
        return float(tagdb.value[tag(device, point)])

    sim = simulator(url)
    await sim.start()
    task = asyncio.create_task(driver.run())
    try:
        await until(lambda: status("J-DIJ-001", "mode") == st.GOOD, what="first notification")
        assert value("J-DIJ-001", "mode") == tr.FIXED_TIME
        assert status("J-DIJ-001", "main_in_occupancy") == st.GOOD
        # A node the server does not have: Bad_ConfigurationError; its neighbours are fine.
        await until(lambda: status("J-DIJ-002", "ghost") == st.BAD_CONFIGURATION_ERROR, what="refused node")
        assert status("J-DIJ-002", "mode") == st.GOOD
        # The cycle runs, through the subscription.
        first = value("J-DIJ-001", "cycle_second")
        await until(lambda: value("J-DIJ-001", "cycle_second") != first, what="cycle second advances")
        assert value("J-DIJ-001", "main_colour") in (tr.RED, tr.AMBER, tr.GREEN)
        # A conflict fault in the field reaches the tag.
        sim.apply(tr.conflict_fault, 0, True)
        await until(lambda: value("J-DIJ-001", "conflict_fault") == 1, what="conflict fault")
        await until(lambda: value("J-DIJ-001", "effective_mode") == tr.FLASHING_AMBER, what="flashing amber")
        # A plan command, confirmed by reading back.
        await driver.write(WriteCommand("Dijon/traffic/J-DIJ-001/plan", 3))
        assert sim.state.central_plan[0] == 3
        with pytest.raises(CommandRejected):
            driver.check(WriteCommand("Dijon/traffic/J-DIJ-001/main_colour", 3))  # never a colour
        with pytest.raises(CommandRejected):
            driver.check(WriteCommand("Dijon/traffic/J-DIJ-001/mode", 7))  # not one of the modes

        # Each junction's diagnostics: online, notifications counted, the session's round trip.
        await until(lambda: value("J-DIJ-001", "Diagnostics/state") == ONLINE, what="diagnostics published")
        assert value("J-DIJ-001", "Diagnostics/successes") > 0
        await until(lambda: value("J-DIJ-001", "Diagnostics/rtt") > 0, what="round trip measured")

        # The server goes away: Bad_CommunicationError, last value kept.
        await sim.stop()
        await until(lambda: status("J-DIJ-001", "mode") == st.BAD_COMMUNICATION_ERROR, what="session lost")
        assert value("J-DIJ-001", "mode") == tr.FIXED_TIME
        await until(lambda: value("J-DIJ-001", "Diagnostics/state") == OFFLINE, what="diagnostics offline")
        assert value("J-DIJ-001", "Diagnostics/failures") >= 1
        assert url in tagdb.text[tag("J-DIJ-001", "Diagnostics/last_error")]
        # It comes back: the session and the subscription are re-created, Good again.
        sim = simulator(url)
        await sim.start()
        await until(lambda: status("J-DIJ-001", "mode") == st.GOOD, timeout=DEADLINE, what="session restored")
        await until(lambda: value("J-DIJ-001", "conflict_fault") == 0, what="fresh values")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def test_read_now_reads_the_nodes_without_waiting_for_a_notification(tmp_path):
    """A Read of the nodes, stored at once: the subscription would only report a change."""
    url = f"opc.tcp://127.0.0.1:{free_port()}/traffic/"
    cfg = config(tmp_path / "c", url)
    tagdb = TagDB(*cfg.tag_table())
    driver = OpcUaDriver(cfg, list(cfg.devices), tagdb, backoff_base=0.2, backoff_cap=1.0)
    mode, plan = (tagdb.id_of(f"Dijon/traffic/J-DIJ-001/{p}") for p in ("mode", "plan"))
    sim = simulator(url)
    await sim.start()
    task = asyncio.create_task(driver.run())
    try:
        await until(lambda: tagdb.status[mode] == st.GOOD and tagdb.status[plan] == st.GOOD, what="first notification")
        # The table says something else than the server (and the server's value does not change,
        # so no notification comes): read_now puts the server's value back before returning.
        tagdb.update(np.array([mode, plan]), np.array([99.0, 99.0]))
        await driver.read_now(["Dijon/traffic/J-DIJ-001/mode", "Dijon/traffic/J-DIJ-001/plan"])
        assert tagdb.value[mode] == tr.FIXED_TIME and tagdb.status[mode] == st.GOOD
        assert tagdb.value[plan] == sim.state.central_plan[0]
        with pytest.raises(CommandRejected, match="unknown tag"):
            await driver.read_now(["Dijon/traffic/J-DIJ-404/mode"])
        await sim.stop()
        await until(lambda: tagdb.status[mode] == st.BAD_COMMUNICATION_ERROR, what="session lost")
        with pytest.raises(DeviceUnreachable):
            await driver.read_now(["Dijon/traffic/J-DIJ-001/mode"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()
