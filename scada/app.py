"""The server process: configuration -> tag database -> drivers and OPC UA server, one event loop.

Every long-running task is registered by name with a :class:`~scada.supervisor.Supervisor`
(``driver:<name>``, ``alarms``, ``historian``, ``opcua-publisher``, ``opcua-alarm-events``,
``staleness``, ``status``, ``loop-lag``, ``control-readback``, ``operations``): one task's failure is logged, raises the server
alarm ``server_task_failed`` for it, and the task restarts with backoff; the rest of the
server keeps running.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from common.gcfreeze import freeze_built, refreeze
from common.limits import raise_open_file_limit
from scada import status as st
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal
from scada.config import Config, Device
from scada.control.pipeline import CommandPipeline
from scada.control.schedules import ScheduleClock, ScheduleRunner
from scada.driver_api import Driver
from scada.front.link import FrontLink, FrontSettings
from scada.historian.service import Historian, InfluxSettings
from scada.opcua.history import history_source
from scada.opcua.server import DEFAULT_ENDPOINT, HmiServer
from scada.operations.journal import JOURNAL_FILE as ORDER_JOURNAL
from scada.operations.journal import OrderJournal
from scada.operations.orders import WorkOrderService
from scada.security.audit import AuditFanout
from scada.security.audit_log import AuditTrail
from scada.security.settings import SecuritySettings
from scada.supervisor import HEALTHY_AFTER_S, Supervisor
from scada.tagdb import TagDB

log = structlog.get_logger("scada")

# Where the OPC UA server runs: "process" (the default: its own process, fed from shared
# memory, so that no client can slow the field; scada/front/link.py), or "inline" (in the
# core's event loop: one process, for tests and small benches).
FRONTS = ("process", "inline")
# s between two live computations of the contract KPIs (`scada run --kpi-interval`): they read the
# month's history and journals, a few seconds of a worker thread for the whole city; the figures
# are month-to-date, a minute late is on time.
KPI_INTERVAL = 60.0
# s a stop waits for the work orders' running acts: an MQTT send waits for the broker's answer
# at most 5 device timeouts; a stop (systemd gives 90 s) is not held up longer than this.
SETTLE_ACTS_S = 10.0


def build_drivers(config: Config, tagdb: TagDB) -> list[Driver]:
    """One driver object per driver kind, polling every device of that kind into ``tagdb``;
    built by the plugins the configuration was read with (``config.drivers``)."""
    by_driver: defaultdict[str, list[Device]] = defaultdict(list)
    for d in config.devices:
        by_driver[config.types[d.type].driver].append(d)
    return [config.drivers[name].create(config, devs, tagdb) for name, devs in by_driver.items()]


def drivers_by_name(drivers: list[Driver]) -> dict[str, Driver]:
    """The running drivers by the name tags.yaml gives them (EquipmentType.driver)."""
    return {d.name: d for d in drivers}


class Application:
    """Everything the server runs, wired once from a loaded configuration."""

    def __init__(
        self,
        config: Config,
        opcua_endpoint: str = DEFAULT_ENDPOINT,
        status_interval: float = 5.0,
        data_dir: str | Path = "var",
        influx: InfluxSettings | None = None,
        supervisor: Supervisor | None = None,
        front: str = "process",
        front_settings: FrontSettings | None = None,
        schedule_clock: ScheduleClock | None = None,
        kpi_interval: float = KPI_INTERVAL,
    ) -> None:
        if front not in FRONTS:
            raise ValueError(f"unknown OPC UA front {front!r}: choose one of {', '.join(FRONTS)}")
        self.front = front
        self.front_settings = front_settings  # what scada run was given (the inline HTTP server reads it)
        self.config = config
        self.tagdb = self.new_tagdb(config)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.data_dir / "alarms.sqlite")
        self.alarms = AlarmEngine(config, self.tagdb, self.journal)
        restored = self.alarms.restore()
        if restored:
            log.info("alarm_states_restored", instances=restored, journal=str(self.journal.path))
        self.influx = influx
        self.historian = self._make_historian()
        self.drivers: list[Driver] = build_drivers(config, self.tagdb)
        # The audit trail (scada/security/audit_log.py): the front's records, reloads, ...
        security = front_settings.security if front_settings is not None else None
        self.audit = AuditTrail((security or SecuritySettings.defaults(self.data_dir)).audit)
        # The command pipeline (scada/control/pipeline.py): the front's "command" requests, the
        # group actions and the schedules all go through it; it audits into the same trail.
        self.commands = CommandPipeline(config, self.tagdb, drivers_by_name(self.drivers), self.audit)
        # The schedules' clock is the operations' too: in a simulated run the crews drive and the
        # contract's delays count in the simulated city's time.
        self.schedule_clock = schedule_clock or ScheduleClock()
        # Its line (real instant, reading, acceleration) into the data folder at each anchor: the
        # contract KPIs and `scada report` map the history's real stamps into it (clockmap.py).
        self.schedule_clock.when_anchored(self._record_clock)
        # The work orders (scada/operations/orders.py): when operations.yaml routes services.
        self.operations: WorkOrderService | None = self._make_operations()
        self.hmi: HmiServer | FrontLink
        if front == "inline":
            self.hmi = HmiServer(
                config,
                self.tagdb,
                opcua_endpoint,
                alarms=self.alarms,
                history=self.historian,
                security=security,
                audit=AuditFanout(self.audit),
            )
        else:
            self.hmi = FrontLink(self, front_settings or FrontSettings(opcua_endpoint))
        self.status_interval = status_interval
        self.kpi_interval = kpi_interval  # s between two live computations of the contract KPIs; 0: none
        self.supervisor = supervisor or Supervisor(self._task_alarm, healthy_after=HEALTHY_AFTER_S)
        if self.supervisor.on_alarm is None:
            self.supervisor.on_alarm = self._task_alarm
        self.started = asyncio.Event()
        self.max_loop_lag = 0.0  # s: the event loop's longest late wake-up since the last status line
        self._tg: asyncio.TaskGroup | None = None  # while running: where a reload request runs
        self._reload_lock = asyncio.Lock()
        # The lighting schedules (scada/control/schedules.py), on their own clock (simulated time
        # with `scada run --clock-start/--acceleration`), through the command service.
        self.schedules = ScheduleRunner(self.commands, self.audit, self.schedule_clock)

    def _record_clock(self, segment: tuple[int, int, float]) -> None:
        from scada.control.clockmap import Segment, append_segment

        try:
            append_segment(self.data_dir, Segment(*segment))
        except OSError as exc:
            # Called where the clock is first read (the schedules, the orders): never stop them.
            # The live KPIs still follow this run's clock; a later `scada report` reads real time.
            log.warning("clock_record_failed", path=str(self.data_dir), error=str(exc))

    def _make_operations(self) -> WorkOrderService | None:
        """The work-order service of the running configuration, subscribed to the alarm engine and
        to the crews' answers; None when operations.yaml routes no service."""
        if not self.config.operations.services:
            return None
        crews = self._make_crews()
        service = WorkOrderService(
            self.config,
            self.alarms,
            OrderJournal(self.data_dir / ORDER_JOURNAL),
            self.audit,
            crews,
            self.schedule_clock.now_ns,
        )
        self.alarms.subscribers.append(service.on_alarm_events)
        if crews is not None:
            crews.start(service.crew_answer)
        return service

    def _make_crews(self) -> Any:
        """The crews' board (scada/operations/crews.py), None where that part is not installed:
        orders are then created and followed, not dispatched."""
        try:
            from scada.operations.crews import CrewBoard  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            log.warning("crew_board_missing", error=str(exc), note="work orders are not dispatched")
            return None
        return CrewBoard(self.config, self.tagdb, self.drivers, self.schedule_clock.now_ns)

    def _reload_operations(self) -> None:
        """The work orders follow the running configuration, alarm engine, tag table and drivers
        (after a reload, applied or rolled back); the orders stay."""
        ops = self.operations
        if ops is None:
            self.operations = self._make_operations()  # operations.yaml gained services
            if self.operations is not None:
                if isinstance(self.hmi, FrontLink):
                    self.hmi.attach_orders()
                if self._tg is not None:
                    self.start_tasks()
            return
        if ops.crews is not None:
            ops.crews.reload(self.config, self.tagdb, self.drivers)  # type: ignore[attr-defined]
        ops.reload(self.config, self.alarms)

    def new_tagdb(self, config: Config) -> TagDB:
        """The tag table of ``config``; its columns in shared memory when the front is a process."""
        names, kinds, deadbands = config.tag_table()
        return TagDB(names, kinds, deadbands, config.max_ages(), shared=self.front == "process")

    def _spool_alarm(self, active: bool, status) -> None:
        self.alarms.system_alarm(
            "history_spool_filling",
            active,
            f"InfluxDB unreachable: history spool {100 * status.fill_ratio:.0f} % full "
            f"({status.backlog_entries} batches waiting); when full the oldest are dropped"
            if active
            else "history spool below 70 %",
            priority="high",
        )

    def _task_alarm(self, task: str, active: bool, message: str) -> None:
        self.alarms.system_alarm("server_task_failed", active, message, priority="high", source=task)

    def driver_tag_ids(self, name: str) -> np.ndarray:
        """The tags the driver ``name`` feeds (its devices' tags in the running configuration)."""
        config = self.config
        return np.concatenate(
            [config.tag_ids(d) for d in config.devices if config.types[d.type].driver == name]
            or [np.zeros(0, np.int64)]
        )

    def _driver_failed(self, name: str) -> None:
        """A driver's task failed: its tags keep their last values, no longer Good.

        Tags that never had a value stay Bad_NoCommunication, as a driver leaves them.
        """
        ids = self.driver_tag_ids(name)
        ids = ids[self.tagdb.status[ids] != st.BAD_NO_COMMUNICATION]
        self.tagdb.set_status(ids, st.BAD_COMMUNICATION_ERROR)

    def _publisher_restart(self) -> None:
        assert isinstance(self.hmi, HmiServer), "the inline front's publisher"
        # Batches queued while it was down are older than the snapshot it starts from (run()
        # sends one at every start but the first after a reload: Publisher.primed).
        publisher = self.hmi.publisher
        assert publisher is not None, "the HMI server starts before its tasks"
        consumer = publisher.consumer
        consumer.overflowed = True
        consumer.take_overflow()

    def _run_publisher(self) -> Coroutine[Any, Any, None]:
        """One attempt of the OPC UA publisher: the current one (a reload replaces it)."""
        assert isinstance(self.hmi, HmiServer), "the inline front's publisher"
        publisher = self.hmi.publisher
        assert publisher is not None, "the HMI server starts before its tasks"
        return publisher.run()

    def _conditions(self):
        assert isinstance(self.hmi, HmiServer) and self.hmi.conditions is not None, "the inline front's conditions"
        return self.hmi.conditions

    def _make_historian(self, config: Config | None = None, tagdb: TagDB | None = None) -> Historian:
        """A historian of this configuration and tag table (by default the running ones)."""
        return Historian(
            config or self.config,
            tagdb or self.tagdb,
            self.data_dir,
            self.influx,
            self._spool_alarm,
            on_storage_alarm=self._storage_alarm,
        )

    def _set_historian(self, new: Historian) -> None:
        """Make ``new`` the running historian: the OPC UA history reads follow it."""
        self.historian = new
        if isinstance(self.hmi, HmiServer):  # a front process asks for the running one
            self.hmi.history = new
            if self.hmi.tag_history is not None:
                self.hmi.tag_history.source = history_source(new)

    def _storage_alarm(self, source: str, active: bool, message: str) -> None:
        """The history store or spool cannot write (disk full, read-only...): one alarm per storage."""
        self.alarms.system_alarm("storage_failing", active, message, priority="high", source=source)

    def _historian_restart(self) -> None:
        """A failed historian closed its store on the way out: a new one, primed from the store.

        Its compressor starts again from the last stored points (its state is rebuilt, not
        trusted); the OPC UA history reads follow it. Changes during the outage are not
        recorded. It takes over what the failed one could not write (a full disk) and its
        storage alarms, so that they clear when the disk takes the values again.
        """
        new = self._make_historian()
        new.take_over(self.historian)
        self._set_historian(new)

    def _components(self) -> dict[str, dict]:
        """The tasks that follow the configuration (a reload stops and starts them), by name:
        what one attempt runs (looked up when it starts: a reload replaces the objects) and
        what its failure and restart do."""
        out = {
            f"driver:{drv.name}": {"factory": drv.run, "on_failure": lambda _exc, n=drv.name: self._driver_failed(n)}
            for drv in self.drivers
        }
        hmi = self.hmi
        if isinstance(hmi, FrontLink):
            # One task: the front process (it restarts on its own components, fed anew).
            out["opcua-front"] = {"factory": hmi.run}
        else:
            out["opcua-publisher"] = {"factory": self._run_publisher, "on_restart": self._publisher_restart}
            if hmi.conditions is not None:
                # Looked up at each start: a reload replaces the conditions.
                out["opcua-alarm-events"] = {
                    "factory": lambda: self._conditions().run(),
                    "on_restart": lambda: self._conditions().reattach(),
                }
        # The engine's run evaluates every instance again when it starts: a restart catches up.
        out["alarms"] = {"factory": lambda: self.alarms.run()}
        # Wakes the commands waiting for their read-back (it follows a reload's new tag table).
        out["control-readback"] = {"factory": lambda: self.commands.run()}
        out["historian"] = {"factory": lambda: self.historian.run(), "on_restart": self._historian_restart}
        # A restart applies the steps in force again: the city is put back in its scheduled state.
        out["schedules"] = {"factory": self.schedules.run}
        if self.operations is not None:
            # Deadlines, dispatch and the alarms' orders; a restart goes on from the orders in memory.
            out["operations"] = {"factory": lambda: self._operations().run()}
            if self.kpi_interval > 0:
                out["contract-kpis"] = {"factory": self._kpi_loop}
        if self.front == "inline" and self._inline_http():
            # Open311, the map feed and /metrics on this loop (a front process serves them itself),
            # on the addresses scada run --http/--http-internal gave, as a front process would.
            out["http"] = {"factory": self._serve_http}
        return out

    def _inline_http(self) -> bool:
        """The inline front serves HTTP: operations run and a citizens' address is set."""
        return self._http_addresses() is not None

    def _http_addresses(self) -> tuple[Any, Any] | None:
        """The inline HTTP server's (citizens', internal) addresses in the running configuration
        and ``scada run --http/--http-internal``; None: no HTTP server."""
        from scada.front.link import with_http_settings

        ops = with_http_settings(self.config, self.front_settings).operations
        return (ops.http.listen, ops.http.internal) if ops.services and ops.http.listen else None

    def _serve_http(self) -> Coroutine[Any, Any, None]:
        from scada.operations.http import serve_inline

        self._http_serving = self._http_addresses()  # what this attempt listens on
        return serve_inline(self)

    async def _follow_http(self) -> None:
        """``--front inline`` after a reload: HTTP addresses changed, or HTTP turned off or on,
        restart the inline HTTP task on what the configuration now asks for (the alarm of a
        listener that no longer exists clears with the task); other changes it follows itself."""
        task = asyncio.current_task()
        if self.front != "inline" or self._tg is None or (task is not None and task.cancelling()):
            return
        if "http" in self.supervisor.tasks and self._http_addresses() != getattr(self, "_http_serving", None):
            await self.stop_tasks(["http"])
        self.start_tasks()

    async def _kpi_loop(self) -> None:
        """The contract's live KPIs (month to date, scada/operations/kpi_service.py), computed in a
        worker thread from the server's own files every ``kpi_interval`` s and shown on the OPC UA
        Operations folder's Contract object. On the schedules' clock: in a simulated run the month,
        the energy, the availability and the delays are the simulated city's (the history's real
        stamps mapped through the clock's record). A file that cannot be read fails the task
        (logged, a server alarm, retried with backoff)."""
        from scada.operations.kpi_service import ContractKpis

        while True:
            now = self.schedule_clock.now_ns()  # (read first: it anchors a clock not read yet)
            # Built each time: a reload replaces the configuration (communes, targets, delays).
            kpis = ContractKpis(self.config, self.data_dir, current=self.schedule_clock.segment)
            values = await kpis.live(now)
            hmi = self.hmi
            if isinstance(hmi, FrontLink):
                hmi.push_kpis(values)
            elif hmi.operations is not None:
                hmi.operations.kpis(values)
            await asyncio.sleep(self.kpi_interval)

    def _operations(self) -> WorkOrderService:
        assert self.operations is not None, "the operations task runs only with the service"
        return self.operations

    def _register_tasks(self) -> None:
        """Every long-running task, by name, with the supervisor."""
        self.start_tasks()
        sup = self.supervisor
        sup.add("staleness", self._staleness_loop)
        if self.status_interval > 0:
            sup.add("status", self._status_loop)
            sup.add("loop-lag", self._lag_loop)

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
            **(
                {
                    "orders_open": len(self.operations.orders),
                    "orders_breached": self.operations.stats()["orders_breached"],
                }
                if self.operations is not None
                else {}
            ),
            "task_restarts": self.supervisor.restarts,
            "tasks_failed": sorted(n for n, t in self.supervisor.status().items() if t["failed"]),
        }

    async def _lag_loop(self, period: float = 0.1) -> None:
        """Measure how late the event loop wakes up: a stalled loop delays every poll and notification."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period)
            self.max_loop_lag = max(self.max_loop_lag, time.monotonic() - t0 - period)

    async def _status_loop(self) -> None:
        tagdb = self.tagdb
        last_changes, last_t = tagdb.changes, time.monotonic()
        while True:
            await asyncio.sleep(self.status_interval)
            now = time.monotonic()
            # A reload may have replaced the tag table: the new one carries the old one's counter
            # as of the carry, and the old one may count a few more changes until the drivers
            # move. The larger of the two: never negative, exact unless the old one moved on.
            changes = max(tagdb.changes, self.tagdb.changes)
            rate = (changes - last_changes) / (now - last_t)
            tagdb = self.tagdb
            last_changes, last_t = tagdb.changes, now
            s = self.status()
            log.info(
                "status",
                tags=s["tags"],
                changes_per_s=round(rate, 1),
                devices=f"{s['devices_online']}/{s['devices_total']}",
                late_polls=s["late_polls"],
                missed_cycles=s["missed_cycles"],
                demoted=s["demoted"],
                loop_lag_ms=round(1000 * self.max_loop_lag, 1),
                alarms=s["alarms_announced"],
                alarms_10min=s["alarms_10min"],
                task_restarts=s["task_restarts"],
                tasks_failed=s["tasks_failed"],
                alarm_flood=s["alarms_10min"] > 10,
                history_stored=s["history_stored"],
                **{k: v for k, v in s.items() if k.startswith(("influx_", "history_")) and k != "history_stored"},
                **{k: s[k] for k in ("orders_open", "orders_breached") if k in s},
                opcua_dropped=self._opcua_dropped(),
                **(self.hmi.stats() if isinstance(self.hmi, FrontLink) else {}),
                **self.audit.stats(),
            )
            self.max_loop_lag = 0.0

    def _opcua_dropped(self) -> int:
        """Change batches the OPC UA side lost (then resynchronised from the tag table)."""
        hmi = self.hmi
        if isinstance(hmi, FrontLink):
            return hmi.dropped_batches
        return hmi.publisher.consumer.dropped_batches if hmi.publisher else 0

    async def _staleness_loop(self) -> None:
        """Once a second: Good values older than their max_age turn Uncertain_LastUsableValue."""
        while True:
            await asyncio.sleep(1.0)
            self.tagdb.mark_stale()

    # Configuration reload (scada/reload.py)

    def task_names(self) -> list[str]:
        """The supervised tasks, by name."""
        return list(self.supervisor.tasks)

    def start_tasks(self) -> None:
        """Supervise every component of the configuration that is not supervised yet (started at
        once when the server runs)."""
        for name, spec in self._components().items():
            if name not in self.supervisor.tasks:
                self.supervisor.add(name, **spec)

    async def stop_tasks(self, names) -> None:
        """Stop these components' tasks and wait until each has cleaned up. The OPC UA alarm
        events follow the publisher: a reload rebuilds both."""
        names = list(names)
        if "opcua-publisher" in names:
            names.append("opcua-alarm-events")
        for n in names:
            if n in self.supervisor.tasks:
                await self.supervisor.remove(n)

    async def reload(self, config: Config):
        """Apply a validated configuration without a restart; one reload at a time."""
        from scada.reload import apply

        async with self._reload_lock:
            try:
                return await apply(self, config)
            finally:
                self.schedules.reload(self.config)  # the configuration applied, or the old one put back
                self._reload_operations()
                await self._follow_http()
                refreeze()  # the new configuration's objects are long-lived; the old ones go

    def request_reload(self, directory: str | Path) -> bool:
        """Reload the files of ``directory`` in a task of the server (SIGHUP); False before start."""
        from scada.reload import reload_from_files, write_result

        if self._tg is None:
            log.warning("reload_ignored", reason="the server is not running yet (or is stopping)")
            write_result(self.data_dir, False, "the server is starting or stopping: nothing reloaded, try again")
            return False
        self._tg.create_task(reload_from_files(self, directory), name="reload")
        return True

    async def _before_stop(self) -> None:
        """The first step of a stop, before the supervisor cancels the tasks: the work orders'
        running acts (an Assign waiting for the broker) end while the drivers still run, so that
        a crew never holds an order the journal does not show it has (bounded: a stop is never
        held up for long; what is left is logged)."""
        if self.operations is not None:
            await self.operations.settle(SETTLE_ACTS_S)

    async def run(self) -> None:
        """Run until cancelled; stop every part cleanly on the way out."""
        raise_open_file_limit()
        await self.hmi.start()
        # The operations clock starts before any task (a simulated one starts when first read):
        # the history's first points then follow this run's line (clock.json), not the last run's.
        self.schedule_clock.now_ns()
        self._register_tasks()
        freeze_built()  # the configuration, tag table and drivers live as long as the server
        try:
            # The supervisor runs every long-running task; the group also holds a reload in progress.
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.supervisor.run(), name="supervisor")
                self.started.set()
                try:
                    await asyncio.Future()  # until the server is stopped (cancelled)
                except asyncio.CancelledError:
                    await self._before_stop()  # the drivers still run: what was begun is seen through
                    raise
        finally:
            self._tg = None
            await self.hmi.stop()
            if self.operations is not None:
                self.operations.close()  # what waits is written (a bounded wait: the disk may be failing)
            self.audit.close()  # what waits is written (a bounded wait: the disk may be failing)
            self.journal.close()
            self.tagdb.close_shared()
