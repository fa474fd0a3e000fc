"""The server process: configuration -> tag database -> drivers and OPC UA server, one event loop."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import structlog

from drivers.base import Driver, create_driver
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal
from scada.config import Config
from scada.historian.service import Historian, InfluxSettings
from scada.limits import raise_open_file_limit
from scada.opcua.server import DEFAULT_ENDPOINT, HmiServer
from scada.tagdb import TagDB

log = structlog.get_logger("scada")


def build_drivers(config: Config, tagdb: TagDB) -> list[Driver]:
    """One driver object per driver kind, polling every device of that kind into ``tagdb``."""
    by_driver = defaultdict(list)
    for d in config.devices:
        by_driver[config.types[d.type].driver].append(d)
    return [create_driver(name, config, devs, tagdb) for name, devs in by_driver.items()]


class Application:
    """Everything the server runs, wired once from a loaded configuration."""

    def __init__(self, config: Config, opcua_endpoint: str = DEFAULT_ENDPOINT, status_interval: float = 5.0,
                 data_dir: str | Path = "var", influx: InfluxSettings | None = None) -> None:
        self.config = config
        names, kinds, deadbands = config.tag_table()
        self.tagdb = TagDB(names, kinds, deadbands, config.max_ages())
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.data_dir / "alarms.sqlite")
        self.alarms = AlarmEngine(config, self.tagdb, self.journal)
        restored = self.alarms.restore()
        if restored:
            log.info("alarm_states_restored", instances=restored, journal=str(self.journal.path))
        self.influx = influx
        self.historian = Historian(config, self.tagdb, self.data_dir, influx, self._spool_alarm)
        self.drivers: list[Driver] = build_drivers(config, self.tagdb)
        self.hmi = HmiServer(config, self.tagdb, opcua_endpoint, alarms=self.alarms, history=self.historian)
        self.status_interval = status_interval
        self.started = asyncio.Event()
        self.max_loop_lag = 0.0  # s: the event loop's longest late wake-up since the last status line
        # The tasks a configuration reload stops and starts again (scada/reload.py), by name.
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._reload_lock = asyncio.Lock()

    def _spool_alarm(self, active: bool, status) -> None:
        self.alarms.system_alarm(
            "history_spool_filling", active,
            f"InfluxDB unreachable: history spool {100 * status.fill_ratio:.0f} % full "
            f"({status.backlog_entries} batches waiting); when full the oldest are dropped" if active
            else "history spool below 70 %", priority="high")

    def status(self) -> dict:
        diags = [d.diagnostics() for d in self.drivers]
        return {
            "tags": len(self.tagdb),
            "devices_online": sum(x["online"] for x in diags),
            "devices_total": sum(x["devices"] for x in diags),
            "late_polls": sum(x.get("late_polls", 0) for x in diags),
            "missed_cycles": sum(x.get("missed_cycles", 0) for x in diags),
            "demoted": sum(x.get("demoted", 0) for x in diags),
            "alarms_announced": len(self.alarms.announced()),
            "alarms_10min": self.alarms.rate(),
            **self.historian.status(),
        }

    async def _lag_loop(self, period: float = 0.1) -> None:
        """Measure how late the event loop wakes up: a stalled loop delays every poll and notification."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period)
            self.max_loop_lag = max(self.max_loop_lag, time.monotonic() - t0 - period)

    async def _status_loop(self) -> None:
        last_changes, last_t = self.tagdb.changes, time.monotonic()
        while True:
            await asyncio.sleep(self.status_interval)
            now = time.monotonic()
            rate = (self.tagdb.changes - last_changes) / (now - last_t)
            last_changes, last_t = self.tagdb.changes, now
            s = self.status()
            log.info("status", tags=s["tags"], changes_per_s=round(rate, 1),
                     devices=f"{s['devices_online']}/{s['devices_total']}",
                     late_polls=s["late_polls"], missed_cycles=s["missed_cycles"], demoted=s["demoted"],
                     loop_lag_ms=round(1000 * self.max_loop_lag, 1),
                     alarms=s["alarms_announced"], alarms_10min=s["alarms_10min"],
                     alarm_flood=s["alarms_10min"] > 10, history_stored=s["history_stored"],
                     **{k: v for k, v in s.items() if k.startswith("influx_")},
                     opcua_dropped=self.hmi.publisher.consumer.dropped_batches if self.hmi.publisher else 0)
            self.max_loop_lag = 0.0

    async def _staleness_loop(self) -> None:
        """Once a second: Good values older than their max_age turn Uncertain_LastUsableValue."""
        while True:
            await asyncio.sleep(1.0)
            self.tagdb.mark_stale()

    # Configuration reload (scada/reload.py)

    def _components(self) -> dict:
        """The parts that follow the configuration, as task name -> coroutine function."""
        out = {f"driver:{drv.name}": drv.run for drv in self.drivers}
        out.update({"opcua-publisher": self.hmi.run, "alarms": self.alarms.run, "historian": self.historian.run})
        return out

    def task_names(self) -> list[str]:
        return list(self._tasks)

    def start_tasks(self) -> None:
        """Start every component whose task is not running."""
        for name, run in self._components().items():
            task = self._tasks.get(name)
            if task is None or task.done():
                self._tasks[name] = self._tg.create_task(run(), name=name)

    async def stop_tasks(self, names) -> None:
        """Cancel these components' tasks and wait until each has cleaned up."""
        tasks = [self._tasks.pop(n) for n in names if n in self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reload(self, config: Config):
        """Apply a validated configuration without a restart; one reload at a time."""
        from scada.reload import apply
        async with self._reload_lock:
            return await apply(self, config)

    def request_reload(self, directory: str | Path) -> bool:
        """Reload the files of ``directory`` in a task of the server (SIGHUP); False before start."""
        from scada.reload import reload_from_files, write_result
        if self._tg is None:
            log.warning("reload_ignored", reason="the server is not running yet (or is stopping)")
            write_result(self.data_dir, False, "the server is starting or stopping: nothing reloaded, try again")
            return False
        self._tg.create_task(reload_from_files(self, directory), name="reload")
        return True

    async def run(self) -> None:
        """Run until cancelled; stop every part cleanly on the way out."""
        raise_open_file_limit()
        await self.hmi.start()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.start_tasks()
                tg.create_task(self._staleness_loop(), name="staleness")
                if self.status_interval > 0:
                    tg.create_task(self._status_loop(), name="status")
                    tg.create_task(self._lag_loop(), name="loop-lag")
                self.started.set()
        finally:
            self._tg = None
            await self.hmi.stop()
            self.journal.close()
