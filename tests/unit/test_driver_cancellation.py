"""The Modbus and MQTT drivers' retry loops stop when their task is cancelled, even when what
they await loses the cancellation: turns it into an ordinary error (as asyncua did under Python
3.11's asyncio.wait_for race, see test_opcua_driver_edge) or returns as if nothing happened
(wait_for returning an inner result that races with the cancellation; a timeout answered as an
unreachable device). Before, each loop took that for one more failure and retried for ever, so
stopping the driver, then the server, hung."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest

from city_scada import load_config
from drivers.modbus.driver import ModbusDriver
from drivers.mqtt.aio import AsyncioMqtt
from scada.backoff import Backoff
from scada.tagdb import TagDB
from tests.integration.helpers import free_port, write_inventory


class LosingModbusDriver(ModbusDriver):
    """A poll that, cancelled while waiting for its device, raises an error or simply returns."""

    def __init__(self, *args, lose: str | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lose
        self.polled = asyncio.Event()
        self.polls = 0

    async def poll(self, ds, group=None) -> None:
        self.polls += 1
        self.polled.set()
        try:
            await asyncio.Event().wait()  # waiting for the answer: only a cancellation ends this
        except asyncio.CancelledError:
            if self.lose is None:
                raise
            if self.lose == "error":
                raise ConnectionResetError("connection lost while polling") from None
            # "return": the cancellation is lost, the poll ends as a poll would


@pytest.mark.parametrize("lose", ["error", "return"])
async def test_a_modbus_poll_loop_stops_when_its_cancellation_is_lost_inside_the_poll(tmp_path, lose):
    write_inventory(
        tmp_path,
        "devices.csv",
        "name,type,commune,lat,lon,endpoint,unit",
        ["LC-1,lighting_cabinet,Dijon,47.3,5.0,127.0.0.1:1,1"],
    )
    config = load_config(tmp_path)
    driver = LosingModbusDriver(config, list(config.devices), TagDB(*config.tag_table()), lose=lose)
    ds = driver.devices[0]
    group = ds.groups[0]
    group.interval = 0.05  # the first poll's phase is a share of the interval: soon
    task = asyncio.create_task(driver._poll_loop(ds, group))
    await asyncio.wait_for(driver.polled.wait(), 10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)  # before the fix: polled again, never ended
    if not done:
        driver.lose = None  # a poll that keeps the cancellation: the loop this test could not stop ends
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task in done, f"the poll loop went on after its cancellation ({driver.polls} polls)"
    assert task.cancelled() and driver.polls == 1


class LosingLink(AsyncioMqtt):
    """A connect that, cancelled while it waits for the broker, raises an OSError."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attempted = asyncio.Event()
        self.attempts = 0

    async def _connect(self, first: bool) -> None:
        self.attempts += 1
        self.attempted.set()
        try:
            await asyncio.Event().wait()  # connecting: only a cancellation ends this
        except asyncio.CancelledError:
            raise ConnectionRefusedError("connection lost while connecting") from None


async def test_an_mqtt_link_stops_reconnecting_when_its_cancellation_came_back_as_an_error():
    link = LosingLink(
        mqtt.Client(mqtt.CallbackAPIVersion.VERSION2), "127.0.0.1", free_port(), backoff=Backoff(0.01, 0.01)
    )
    link.start()
    try:
        await asyncio.wait_for(link.attempted.wait(), 10)
        assert link._task is not None
        task = link._task
        task.cancel()  # cancelled without stop(): the loop's shutdown, a task group
        done, _ = await asyncio.wait({task}, timeout=10)  # before the fix: reconnected, never ended
        assert task in done, f"the link went on connecting after its cancellation ({link.attempts} attempts)"
        assert task.cancelled() and link.attempts == 1
    finally:
        await link.stop()
