"""No single task's failure stops the server: a crash injected into a driver, the alarm engine,
the historian and the OPC UA publisher of the real application, fed by the tiny simulated city
(Modbus cabinets, OPC UA junctions, MQTT bollards and vehicles, each its own process or server).

For each crash: the server alarm ``server_task_failed`` of that task is raised then cleared,
the task restarts (once, with its TagDB subscription exactly once), the crashed driver's tags
turn Bad_CommunicationError (last value kept) then Good again, and the other parts keep their
cycle (the other drivers keep delivering, the Modbus driver keeps polling).
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from scada.backoff import Backoff
from scada import status as st
from scada.app import Application
from city_scada import load_config
from scada.supervisor import Supervisor

from .helpers import DEADLINE, free_port, start_tiny_city, until, wait_port

pytestmark = pytest.mark.integration


class Watch:
    """Every server alarm event and every status a set of tags goes through, in order."""

    def __init__(self, app: Application, tags: np.ndarray) -> None:
        self.alarms: list[tuple[str, bool]] = []
        self.statuses: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, status) of each batch, in order
        self.tags = tags
        app.alarms.subscribers.append(self._on_alarms)
        self.consumer = app.tagdb.subscribe("test-watch", maxsize=100_000)
        self.task = asyncio.create_task(self._drain(), name="test-watch")

    def _on_alarms(self, events) -> None:
        self.alarms += [(e.device, e.active) for e in events if e.alarm == "server_task_failed"]

    async def _drain(self) -> None:
        while True:
            batch = await self.consumer.get()
            mine = np.isin(batch.ids, self.tags)
            if mine.any():
                self.statuses.append((batch.ids[mine], batch.status[mine]))

    def sequence(self, tags: np.ndarray) -> list[int]:
        """The statuses ``tags`` went through, in order."""
        return [c for ids, status in self.statuses for c in status[np.isin(ids, tags)].tolist()]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_a_crash_in_each_kind_of_task_is_contained_alarmed_and_recovered(tmp_path, broker):
    city = start_tiny_city(tmp_path, mqtt=f"127.0.0.1:{broker.port}", failure_rate=None)
    sim, control, config_dir = city.sim, city.control, city.config
    run = watch = None
    try:
        wait_port(control)
        config = load_config(config_dir)
        # Fast restarts and a short "healthy" period: the test waits for events, not for the defaults.
        sup = Supervisor(backoff=Backoff(base=0.05, cap=0.5), healthy_after=1.0)
        app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", status_interval=0,
                          data_dir=tmp_path / "data", supervisor=sup, front="inline")
        drivers = {d.name: d for d in app.drivers}
        assert set(drivers) == {"modbus", "opcua", "mqtt"}
        driver_tags = {name: app.driver_tag_ids(name) for name in drivers}
        watch = Watch(app, np.concatenate(list(driver_tags.values())))
        run = asyncio.create_task(app.run(), name="app")
        await until(lambda: app.started.is_set() and app.status()["devices_online"] == app.status()["devices_total"],
                    60, f"every device online ({sim.output()[-2000:]})")
        for name, tags in driver_tags.items():
            await until(lambda: (app.tagdb.status[tags] == st.GOOD).any(), DEADLINE, f"{name} values Good")

        def consumers(name: str) -> int:
            return sum(c.name == name for c in app.tagdb.consumers)

        async def crash_and_recover(task: str, keeps_going) -> None:
            """Inject a fault into ``task``; wait for its alarm to clear; ``keeps_going()`` must advance meanwhile."""
            seen = len(watch.alarms)
            before = keeps_going()
            sup.inject_fault(task)
            await until(lambda: (task, True) in watch.alarms[seen:], DEADLINE, f"server_task_failed raised for {task}")
            await until(lambda: keeps_going() > before, DEADLINE, f"the rest of the city keeps its cycle while {task} restarts")
            await until(lambda: (task, False) in watch.alarms[seen:], DEADLINE, f"server_task_failed cleared for {task}")
            assert watch.alarms[seen:] == [(task, True), (task, False)]
            assert sup.status()[task]["restarts"] == 1
            assert "InjectedFault" in sup.status()[task]["last_error"]

        counters = {"modbus": lambda: drivers["modbus"].polls_started, "opcua": lambda: drivers["opcua"].notifications,
                    "mqtt": lambda: drivers["mqtt"].received}

        # Each driver: its tags turn Bad, then Good when it runs again, while
        # the other drivers keep delivering.
        for name, tags in driver_tags.items():
            good_before = app.tagdb.status[tags] == st.GOOD
            watch.statuses.clear()
            others = [c for n, c in counters.items() if n != name]
            await crash_and_recover(f"driver:{name}", lambda: sum(c() for c in others))
            seq = watch.sequence(tags[good_before])
            bad_at = seq.index(st.BAD_COMMUNICATION_ERROR)
            assert st.GOOD in seq[bad_at:], name  # Bad first, then Good: never frozen Good
            was_good = tags[good_before]
            await until(lambda: (app.tagdb.status[was_good] == st.GOOD).all(), DEADLINE, f"{name}'s tags Good again")

        # The consumers: each restarts with its TagDB subscription exactly once, and works again.
        polls = lambda: drivers["modbus"].polls_started  # noqa: E731
        await crash_and_recover("alarms", polls)
        assert consumers("alarms") == 1

        historian = app.historian
        await crash_and_recover("historian", polls)
        assert consumers("historian") == 1
        # A new historian, primed from the store (the failed one closed it), takes the changes again.
        assert app.historian is not historian and app.hmi.history is app.historian
        await until(lambda: app.historian.compressor.received > 0, DEADLINE, "history received after the restart")

        published = app.hmi.publisher.published
        await crash_and_recover("opcua-publisher", polls)
        assert consumers("opcua") == 1
        await until(lambda: app.hmi.publisher.published > published, DEADLINE, "the publisher publishes again")

        # The OPC UA alarm events: listening to the engine again, and clients asked to refresh.
        conditions = app.hmi.conditions
        resyncs = conditions.resyncs
        await crash_and_recover("opcua-alarm-events", polls)
        await until(lambda: conditions.resyncs > resyncs, DEADLINE, "alarm events resynchronised")
        assert app.alarms.subscribers.count(conditions._on_alarm_events) == 1  # attached again, once

        # Nothing else restarted; every device is still online.
        assert sup.restarts == 7
        assert app.status()["tasks_failed"] == []
        await until(lambda: app.status()["devices_online"] == app.status()["devices_total"], DEADLINE, "all devices online")
    finally:
        if watch is not None:
            await watch.close()
        if run is not None:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        sim.stop()
