"""Each shipped command (tags.yaml) is confirmed by its read-back on the simulators.

No pipeline here (authorisation, interlocks, select-before-operate are its tests): the test
writes a command's ``writes`` through the real driver, in order, and waits for its ``confirm``
points to read what the command says, within its own timeout. So a command declared with a
point the simulator never moves, a value it refuses or a timeout shorter than the equipment
needs fails here.
"""

from __future__ import annotations

import time

import pytest

from drivers.modbus.driver import ModbusDriver
from drivers.mqtt.driver import MqttDriver
from drivers.opcua.driver import OpcUaDriver
from scada import status as st
from scada.backoff import Backoff
from scada.control.model import CommandDef
from scada.driver_api import WriteCommand
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.adapters.mqtt_city import BollardMqttSimulator
from simulators.adapters.opcua_traffic import Junction, TrafficOpcUaSimulator
from simulators.models import bollards as bo
from simulators.models import lighting
from simulators.models import traffic as tr

from .helpers import DriverHarness, free_port, free_port_range, load, until, write_inventory

pytestmark = pytest.mark.integration


async def run(h: DriverHarness, device: str, name: str, **args: float) -> float:
    """Write the command's points through the driver, then wait for its read-back; the seconds
    the confirmation took (fails past the command's timeout)."""
    d = h.config.device(device)
    command: CommandDef = h.config.control.commands[d.type][name]
    t = h.config.types[d.type]
    t0 = time.monotonic()
    for step in command.writes:
        await h.driver.write(WriteCommand(f"{d.commune}/{t.cls}/{device}/{step.point}", step.resolve(args)))

    def confirmed() -> bool:
        return all(
            h.status(device, s.point) == st.GOOD and abs(h.value(device, s.point) - s.resolve(args)) <= command.tolerance
            for s in command.confirm
        )

    await until(confirmed, command.timeout, f"{device} {name}{args} confirmed by {command.confirm}")
    return time.monotonic() - t0


async def test_cabinet_commands_are_confirmed(tmp_path):
    base = free_port_range(1)
    sim = LightingModbusSimulator(lighting.create([47.3], [5.0], [30], t=time.time()), "127.0.0.1", base, 1)
    await sim.start()
    folder = write_inventory(tmp_path / "c", "devices.csv", "name,type,commune,lat,lon,endpoint,unit,poll_interval",
                             [f"LC-1,lighting_cabinet,Dijon,47.3,5.0,127.0.0.1:{base},1,0.2"])
    cfg = load(folder)
    try:
        async with DriverHarness(cfg, lambda c, ds, db: ModbusDriver(c, ds, db, Backoff(base=0.1, cap=0.5))) as h:
            await until(lambda: h.status("LC-1", "mode") == st.GOOD, what="first poll")
            await run(h, "LC-1", "SetMode", mode=1, until=0)  # forced_on
            assert sim.state.mode[0] == lighting.FORCED_ON
            await run(h, "LC-1", "SetDimLevel", level=40, until=0)
            assert sim.state.mode[0] == lighting.MANUAL_DIM and sim.state.dim_level[0] == 40
            sim.state = lighting.trip_earth_leakage(sim.state, 0)
            await until(lambda: h.value("LC-1", "earth_leakage_trip") == 1, what="trip seen")
            await run(h, "LC-1", "ResetTrip")
            assert not sim.state.leakage_trip[0]
            await run(h, "LC-1", "SetMode", mode=0, until=0)  # auto
    finally:
        await sim.stop()


async def test_junction_commands_are_confirmed(tmp_path):
    url = f"opc.tcp://127.0.0.1:{free_port()}/traffic/"
    state = tr.create([47.32], [5.04], t=time.time())  # actuated, as the city's junctions start
    sim = TrafficOpcUaSimulator(state, [Junction("J-1", "Dijon", 47.32, 5.04)], url, step_interval=0.1)
    await sim.start()
    folder = write_inventory(tmp_path / "c", "devices.csv", "name,type,commune,lat,lon,endpoint",
                             [f"J-1,traffic_junction,Dijon,47.32,5.04,{url}"])
    cfg = load(folder)
    try:
        async with DriverHarness(cfg, lambda c, ds, db: OpcUaDriver(c, ds, db, backoff_base=0.2, backoff_cap=1.0)) as h:
            await until(lambda: h.status("J-1", "effective_mode") == st.GOOD, what="first notification")
            await run(h, "J-1", "SetPlan", plan=2)  # peak, under central control
            assert sim.state.mode[0] == tr.CENTRAL and sim.state.plan[0] == 2
            await run(h, "J-1", "SetMode", mode=1)  # flashing
            await run(h, "J-1", "SetMode", mode=0)  # off: the signals go dark
            assert (sim.state.colour[0] == tr.OFF).all()
            await run(h, "J-1", "SetMode", mode=3)  # normal: actuated by its detectors
            assert sim.state.effective_mode[0] == tr.ACTUATED
    finally:
        await sim.stop()


async def test_bollard_commands_are_confirmed(broker, tmp_path):
    folder = write_inventory(tmp_path / "c", "devices.csv", "name,type,commune,lat,lon,endpoint",
                             [f"B-1,access_bollard,Dijon,47.32,5.04,127.0.0.1:{broker.port}"])
    cfg = load(folder)
    # Real time (acceleration 1): the commands' timeouts are for the real bollard's travel.
    sim = BollardMqttSimulator(bo.create(1, t=time.time(), arrivals_per_hour=0), ["B-1"], "127.0.0.1", broker.port,
                               step_interval=0.05)
    await sim.start()
    try:
        async with DriverHarness(cfg, MqttDriver) as h:
            await until(lambda: h.status("B-1", "position") == st.GOOD, what="first state")
            assert h.value("B-1", "position") == bo.UP
            took = await run(h, "B-1", "Lower")
            assert took >= bo.LOWER_S * 0.8  # it really travelled
            await run(h, "B-1", "Raise")
            await run(h, "B-1", "EmergencyLower")
            assert sim.state.emergency[0]
            await run(h, "B-1", "Reset")
            await run(h, "B-1", "Raise")
    finally:
        await sim.stop()
