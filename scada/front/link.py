"""The core's side of the OPC UA front process: start it, feed it, answer it, restart it.

Why a process: measured on one event loop, one HMI client monitoring 60,000 items delayed
thousands of polls and stalled the loop for 1.2 s; a client's work must never reach the
field. So the OPC UA server (``scada.opcua``) runs in ``python -m scada.front.process``,
and the core only does, per change batch, one write of its raw columns to a socketpair:

* **Values**: the tag columns live in shared memory (``TagDB(shared=True)``); the front reads
  them for a snapshot, and receives each change batch (:func:`scada.front.wire.encode_batch`)
  in order. When the front does not read fast enough (its socket buffer above
  ``HIGH_WATER``), batches are dropped here, never queued without bound, and the front is
  told to resynchronise from the shared columns (a ``resync`` message with the text values).
* **Alarms**: each engine event is forwarded as the items the conditions need
  (:func:`scada.alarms.remote.event_items`); dropped the same way, then an ``alarm_resync``
  carries the engine's whole state.
* **Requests** from the front (operator actions on alarms, the historian's points not stored
  yet) run here as plain synchronous handlers, cheap by design, and are answered in order.
  A request that waits on the field (a command: its driver write and read-back take seconds)
  has a coroutine handler (:meth:`FrontLink._async_handlers`): it runs in a task of its own and
  is answered when done, replies matched by id, so that the read loop never waits for it. At
  most ``MAX_IN_FLIGHT`` run at once per front; beyond, the handler's own "busy" answer
  (a command: BadTooManyOperations) goes back at once.
  A refusal travels as ``(kind, payload)`` (:class:`scada.alarms.remote.RemoteAlarmError`, whose
  kinds are generic: "illegal", "key", "value", "error") and is raised again in the front. An
  action's alarm events are written before its reply, on the same stream: the front's mirror
  is current when the reply arrives.
* **Work orders** (scada/operations/orders.py, when the server runs them): the front's requests
  model.REQUEST_WORK_ORDER (an operator's act), REQUEST_CITIZEN_REPORT (an Open311 POST) and
  REQUEST_REPORTS (Open311 GETs) are coroutine requests like commands. Every change of an order is
  pushed as ``(PUSH_ORDERS, [WorkOrder.to_wire()], [OrderEvent.to_wire()])``, coalesced per turn
  of the event loop (a storm of alarms makes one message, not one per order); the open orders come
  whole in the INIT state and a reload's state (key PUSH_ORDERS_SNAPSHOT), as a
  ``(PUSH_ORDERS_SNAPSHOT, [WorkOrder.to_wire()])`` message right after INIT, and so again after
  pushes were dropped above HIGH_WATER. Citizens'
  contact details never cross: orders hold none, reports go out public.
* **Audit**: the front's audit records (refused logins, method calls...) come as
  fire-and-forget ``("audit", record)`` messages, checked field by field
  (:func:`scada.security.audit.from_wire`; a malformed one is refused and counted, never
  written), then given to the core's trail (``app.audit``, a bounded writer: see
  scada/security/audit_log.py).
* **Figures**: every ``STATS_INTERVAL`` the core's health figures go to the front
  (:func:`push_stats`, ``model.PUSH_STATS``) for its HTTP ``/metrics``; the contract's live
  KPIs as the app computes them (:meth:`FrontLink.push_kpis`, ``model.PUSH_KPIS``), the latest
  sent again to a new front.
* **Supervision**: :meth:`FrontLink.run` is one supervised task (``opcua-front``): it returns
  (raising :class:`FrontExited`) when the process dies, and the server's supervisor restarts
  it with backoff, raising ``server_task_failed`` meanwhile. The field goes on regardless.
  The front exits by itself when the socketpair closes (the core stopped or died).
* **Reload**: the front follows a new configuration without a restart (its clients keep
  their sessions): :meth:`FrontLink.reload` sends the new configuration and waits for the
  front's answer. A front that fails to follow is restarted on the current configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from scada.alarms.remote import RemoteAlarmError
from scada.front import wire
from scada.front.orders import clock_anchor
from scada.operations.model import (
    CONTACT_FIELDS,
    PUSH_KPIS,
    PUSH_ORDERS,
    PUSH_ORDERS_SNAPSHOT,
    REQUEST_CITIZEN_REPORT,
    REQUEST_REPORTS,
    REQUEST_WORK_ORDER,
    CitizenReport,
    OpsRequest,
    OpsResult,
)
from scada.security.audit import from_wire
from scada.security.settings import SecuritySettings
from scada.tagdb import Consumer, TagDB

log = structlog.get_logger("scada.front")

HIGH_WATER = 32 << 20  # bytes waiting for the front: beyond, batches are dropped (then a resync)
LOW_WATER = 1 << 20  # the resync is sent once the front has read its backlog down to this
RESYNC_CHECK = 0.2  # s: how often a pending resync is looked at when the field is quiet
READY_TIMEOUT = 300.0  # s for a front to build its address space (a million tags: under 60 s)
STOP_TIMEOUT = 10.0  # s for a front to stop cleanly before it is killed
RELOAD_TIMEOUT = 120.0
MAX_REQUEST = 16 << 20  # a front's request is small; a larger frame is a bug or an attack
MAX_IN_FLIGHT = 256  # coroutine requests (commands) running at once for one front
STATS_INTERVAL = 5.0  # s between two pushes of the core's figures to the front (/metrics)


class FrontExited(RuntimeError):
    """The front process ended (crashed, killed, or exited on an error it logged)."""


@dataclasses.dataclass(frozen=True)
class FrontSettings:
    """How to start a front: what ``scada run`` was given."""

    endpoint: str
    name: str = "City supervision server"
    log_json: bool = False
    log_level: str = "INFO"
    event_loop: str = "uvloop"
    security: SecuritySettings | None = None  # None: no security layer (see scada.opcua.server.HmiServer)
    # The HTTP server's address when ``scada run --http`` gives one (None with http_set: none),
    # instead of operations.yaml's http.listen; kept across reloads and front restarts.
    http: tuple[str, int] | None = None
    http_set: bool = False
    # The same for the internal listener (the map feed, /metrics): ``scada run --http-internal``.
    http_internal: tuple[str, int] | None = None
    http_internal_set: bool = False


def front_config(config, settings: FrontSettings | None = None) -> Any:
    """The configuration as the front gets it: without the drivers' registry (the front has no
    drivers, and must not import them), nor the types' and points' driver options: they hold the
    field's secrets (an MQTT broker's password, an OPC UA client's private key), which a process
    that faces the HMI clients has no use for."""
    types = {
        name: dataclasses.replace(t, io=None, points=tuple(dataclasses.replace(p, io=None) for p in t.points))
        for name, t in config.types.items()
    }
    return with_http_settings(dataclasses.replace(config, drivers={}, types=types), settings)


def with_http_settings(config, settings: FrontSettings | None) -> Any:
    """``config`` with the HTTP addresses ``scada run --http``/``--http-internal`` gave, if any,
    instead of operations.yaml's: what the front process serves, and the inline server too."""
    if settings is None or not (settings.http_set or settings.http_internal_set):
        return config
    ops = config.operations
    http = ops.http
    if settings.http_set:
        http = dataclasses.replace(http, listen=settings.http)
    if settings.http_internal_set:
        http = dataclasses.replace(http, internal=settings.http_internal)
    return dataclasses.replace(config, operations=dataclasses.replace(ops, http=http))


class _AlarmForwarder:
    """An engine subscriber that forwards its events to the front (bound to one engine)."""

    def __init__(self, link: FrontLink, engine) -> None:
        self.link, self.engine = link, engine

    def __call__(self, events) -> None:
        self.link._forward_alarms(self.engine, events)


class FrontLink:
    """One OPC UA front process, seen from the core (``app.hmi`` when the front is a process).

    ``app`` gives the running components (``config``, ``tagdb``, ``alarms``, ``historian``,
    ``data_dir``), looked up when needed: a reload replaces them.
    """

    def __init__(self, app, settings: FrontSettings) -> None:
        self.app = app
        self.settings = settings
        self.endpoint = settings.endpoint
        self.config = app.config  # the configuration the front shows
        self.conditions = None  # the conditions live in the front (scada/reload.py asks)
        self.publisher = None
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._consumer: Consumer | None = None
        self._consumer_db: TagDB | None = None
        self._forwarder: _AlarmForwarder | None = None
        self._orders_source: Any = None  # the work-order service this link listens to
        self._orders_changed: dict[str, Any] = {}  # order id -> its latest wire form, to push
        self._order_events: list[tuple] = []
        self._orders_flush: asyncio.Handle | None = None
        # The contract's latest live figures (push_kpis): a new front gets them at once, not a
        # KPI interval later.
        self._kpis: dict[str, float] = {}
        self._orders_dirty = False
        self._tags_dirty = False
        self._alarms_dirty = False
        self._answering = False  # a request's handler runs: its alarm events are never dropped
        self._reload_alarms = None  # the engine a pending reload installs
        self._waiting: dict[int, asyncio.Future] = {}  # reload answers by id
        self._ids = itertools.count(1)
        self._ready: asyncio.Future | None = None
        self._reader_task: asyncio.Task | None = None
        self._started = False  # start() spawned the first process: run() adopts it
        self._in_flight: set[asyncio.Task] = set()  # coroutine requests being served
        self.node_count = 0
        # Counters for the status line and the benches.
        self.batches_sent = 0
        self.batches_dropped = 0
        self.alarm_events_dropped = 0
        self.order_pushes = 0
        self.order_pushes_dropped = 0
        self.resyncs = 0
        self.requests = 0
        self.requests_busy = 0  # coroutine requests answered "busy" (MAX_IN_FLIGHT reached)
        self.audit_records = 0  # received from the front and given to the trail
        self.audit_refused = 0  # malformed: not written
        self.starts = 0  # processes started
        self.ready_count = 0  # of which listened for clients

    # Lifecycle

    async def start(self) -> None:
        """Start the first front and wait until its OPC UA endpoint listens."""
        await self._spawn()
        self._started = True

    async def run(self) -> None:
        """Run the front until it dies (raise FrontExited) or this task is cancelled (stop it)."""
        try:
            if not self._started or self.proc is None:
                await self._spawn()
            self._started = False
            assert self.proc is not None and self._reader_task is not None
            tasks = [
                self._reader_task,
                asyncio.create_task(self._forward_batches(), name="opcua-front-batches"),
                asyncio.create_task(self.proc.wait(), name="opcua-front-wait"),
                asyncio.create_task(push_stats(self), name="opcua-front-stats"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise FrontExited(f"OPC UA front: {t.exception()!r}") from t.exception()
            raise FrontExited(f"OPC UA front exited (code {self.proc.returncode if self.proc else '?'})")
        finally:
            await self._stop_process()

    async def stop(self) -> None:
        """Stop the front (the server is stopping)."""
        await self._stop_process()

    async def _spawn(self) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "scada.front.process",
                "--fd",
                str(child.fileno()),
                "--event-loop",
                self.settings.event_loop,
                pass_fds=(child.fileno(),),
                cwd=os.getcwd(),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.starts += 1
        self._reader, self._writer = await asyncio.open_connection(sock=parent, limit=1 << 20)
        self._subscribe(self.app.tagdb)
        self._attach_alarms(self.app.alarms)
        self.attach_orders()
        self._tags_dirty = self._alarms_dirty = self._orders_dirty = False
        self._ready = asyncio.get_running_loop().create_future()
        self._send(wire.encode_message("init", self._init()))
        if getattr(self.app, "operations", None) is not None:
            # Also as a message (the front's mirror takes it like a resync's), read after its start.
            self._send(wire.encode_message(PUSH_ORDERS_SNAPSHOT, self._orders_snapshot()))
        if self._kpis:
            self._send(wire.encode_message(PUSH_KPIS, self._kpis))
        # One reader for the process's whole life: a frame is never cut between two readers.
        self._reader_task = asyncio.create_task(self._read(self._reader), name="opcua-front-reader")
        try:
            self.node_count = await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except BaseException:
            await self._stop_process()
            raise
        self.config = self.app.config
        self.ready_count += 1
        log.info("opcua_front_started", pid=self.proc.pid, endpoint=self.endpoint, nodes=self.node_count)

    def _init(self) -> dict[str, Any]:
        app = self.app
        return {
            "settings": self.settings,
            # The operations clock, for the front's HTTP server (scada/front/orders.py clock_anchor).
            # Read only when operations run (the front's HTTP needs it): reading a simulated clock
            # starts it, and the lighting schedules' clock must start when the schedules do.
            "ops_clock": clock_anchor(getattr(app, "schedule_clock", None)) if app.config.operations.services else None,
            **self._state(app.config, app.tagdb, app.alarms, app.historian),
        }

    def _state(self, config, tagdb: TagDB, alarms, historian) -> dict[str, Any]:
        """What the front needs to mirror these components."""
        from scada.alarms.remote import alarm_snapshot

        return {
            "config": front_config(config, self.settings),
            "shm": tagdb.shared_name,
            "texts": dict(tagdb.text),
            "alarms": alarm_snapshot(alarms) if alarms is not None else None,
            "store": str(historian.store.path) if historian is not None else None,
            PUSH_ORDERS_SNAPSHOT: self._orders_snapshot(),
        }

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Read the front's messages until its channel ends (then return)."""
        try:
            await self._read_loop(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(FrontExited("the OPC UA front exited while starting (see its log)"))

    async def _stop_process(self) -> None:
        await self._cancel_requests()
        self._unsubscribe()
        self._detach_alarms()
        self._detach_orders()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(FrontExited("the OPC UA front stopped"))
        self._waiting.clear()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()  # the front sees the end of its channel and stops by itself
        reader_task, self._reader_task = self._reader_task, None
        if reader_task is not None and reader_task is not asyncio.current_task():
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("opcua_front_kill", pid=proc.pid, reason=f"not stopped after {STOP_TIMEOUT} s")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()

    # Values

    def _subscribe(self, tagdb: TagDB) -> None:
        old = self._consumer
        self._unsubscribe()
        self._consumer = tagdb.subscribe("opcua-front", maxsize=4096)
        self._consumer_db = tagdb
        if old is not None:
            # The forwarder may be waiting on the old table's queue, which gets nothing more:
            # wake it up (it sees the switch and takes the new queue).
            with contextlib.suppress(asyncio.QueueFull):
                old.queue.put_nowait(None)

    def _unsubscribe(self) -> None:
        if self._consumer is not None and self._consumer_db is not None:
            with contextlib.suppress(ValueError):
                self._consumer_db.unsubscribe(self._consumer)
        self._consumer = self._consumer_db = None

    def _backlog(self) -> int:
        w = self._writer
        return w.transport.get_write_buffer_size() if w is not None else 0

    def _send(self, data: bytes) -> None:
        if self._writer is None:
            raise FrontExited("the OPC UA front is not running")
        self._writer.write(data)

    async def _forward_batches(self) -> None:
        while True:
            consumer = self._consumer
            if consumer is None:
                await asyncio.sleep(RESYNC_CHECK)
                continue
            # Not only on the next batch: a quiet field must not leave the front behind after a
            # loss (the resync goes as soon as the front has read its backlog).
            batch = await consumer.get_until(time.monotonic() + RESYNC_CHECK)
            self._send_resyncs()
            if consumer is not self._consumer or batch is None:
                continue  # nothing new, or a reload switched tag tables while this waited
            self._forward(consumer, batch)

    def _forward(self, consumer, batch) -> None:
        """One change batch to the front (or, above HIGH_WATER, dropped and resynced later)."""
        if consumer.take_overflow():
            self._tags_dirty = True  # batches lost in the core's own queue
        if self._backlog() > HIGH_WATER:
            self.batches_dropped += 1
            self._tags_dirty = True
            return
        self._send_resyncs()
        self._send(wire.encode_batch(batch))
        self.batches_sent += 1

    def _flush_batches(self) -> None:
        """The change batches already queued for the front, sent now: a command's answer must
        not reach a client before the change that confirmed it (the pipeline saw that change on
        its own queue; the same TagDB update queued it here), or a Read right after a Good call
        would show the old value. The forwarder waiting on the queue then simply waits again."""
        consumer = self._consumer
        if consumer is None or self._writer is None:
            return
        while not consumer.queue.empty():
            batch = consumer.get_nowait()
            if batch is not None:
                self._forward(consumer, batch)

    def _send_resyncs(self) -> None:
        """What the front lost (batches, alarm events, order pushes dropped above HIGH_WATER),
        replaced by the current state, once the front has read its backlog down to LOW_WATER."""
        dirty = self._tags_dirty or self._alarms_dirty or self._orders_dirty
        if self._writer is None or not dirty or self._backlog() > LOW_WATER:
            return
        if self._orders_dirty:
            self._orders_dirty = False
            self._send(wire.encode_message(PUSH_ORDERS_SNAPSHOT, self._orders_snapshot()))
        if self._tags_dirty:
            self._tags_dirty = False
            self.resyncs += 1
            self._send(wire.encode_message("resync", dict(self.app.tagdb.text)))
        if self._alarms_dirty and self._forwarder is not None:
            from scada.alarms.remote import alarm_snapshot

            self._alarms_dirty = False
            self._send(wire.encode_message("alarm_resync", alarm_snapshot(self._forwarder.engine)))

    # Alarms

    def _attach_alarms(self, engine) -> None:
        self._detach_alarms()
        if engine is None:
            return
        self._forwarder = _AlarmForwarder(self, engine)
        engine.subscribers.append(self._forwarder)

    def _detach_alarms(self, *engines) -> None:
        fwd, self._forwarder = self._forwarder, None
        for engine in {id(e): e for e in (*engines, fwd.engine if fwd else None) if e is not None}.values():
            engine.subscribers[:] = [s for s in engine.subscribers if not isinstance(s, _AlarmForwarder)]

    def _forward_alarms(self, engine, events) -> None:
        from scada.alarms.remote import event_items

        if self._writer is None:
            return
        # An operator action's own events are never dropped: the front's reply must find its
        # mirror current (they are a handful); the rest is dropped above HIGH_WATER.
        if self._backlog() > HIGH_WATER and not self._answering:
            self.alarm_events_dropped += len(events)
            self._alarms_dirty = True
            return
        if self._alarms_dirty:
            self._send_resyncs()
            if not self._alarms_dirty:
                return  # the snapshot includes these events' effects
        self._send(wire.encode_message("alarm_events", event_items(engine, events)))

    # Work orders

    def attach_orders(self) -> None:
        """Listen to the running work-order service (none: nothing to push)."""
        ops = getattr(self.app, "operations", None)
        if ops is self._orders_source:
            return
        self._detach_orders()
        if ops is not None:
            ops.listeners.append(self._orders_changed_cb)
            self._orders_source = ops

    def _detach_orders(self) -> None:
        ops, self._orders_source = self._orders_source, None
        if ops is not None:
            ops.listeners[:] = [x for x in ops.listeners if x != self._orders_changed_cb]
        if self._orders_flush is not None:
            self._orders_flush.cancel()
            self._orders_flush = None
        self._orders_changed.clear()
        self._order_events.clear()

    def _orders_snapshot(self) -> list[tuple]:
        ops = getattr(self.app, "operations", None)
        return [o.to_wire() for o in ops.open_orders()] if ops is not None else []

    def _orders_changed_cb(self, orders, events) -> None:
        """The service's listener (called as each change is made): kept for one push per loop turn."""
        if self._writer is None:
            return  # no front: the next one gets the snapshot
        for o in orders:
            self._orders_changed[o.id] = o.to_wire()
        self._order_events.extend(e.to_wire() for e in events)
        if self._orders_flush is None:
            self._orders_flush = asyncio.get_running_loop().call_soon(self._push_orders)

    def _push_orders(self) -> None:
        self._orders_flush = None
        orders, events = list(self._orders_changed.values()), self._order_events
        self._orders_changed, self._order_events = {}, []
        if self._writer is None or not (orders or events):
            return
        if self._backlog() > HIGH_WATER and not self._answering:
            self.order_pushes_dropped += 1
            self._orders_dirty = True  # a snapshot once the front has caught up
            return
        self._send_resyncs()
        with contextlib.suppress(FrontExited):
            self._send(wire.encode_message(PUSH_ORDERS, orders, events))
            self.order_pushes += 1

    def push_kpis(self, kpis: dict[str, float]) -> None:
        """The contract's live figures (model.PUSH_KPIS) to the front: its Operations folder's
        Contract object and its mirror. Kept for the next front; not sent while the front is
        behind (above HIGH_WATER): the next push replaces it."""
        self._kpis = dict(kpis)
        if self._writer is not None and self._backlog() <= HIGH_WATER:
            try:
                self._send(wire.encode_message(PUSH_KPIS, self._kpis))
            except FrontExited:
                pass  # the next front gets them when it starts

    def _operations(self):
        ops = getattr(self.app, "operations", None)
        if ops is None:
            raise RemoteAlarmError("value", "work orders are off: operations.yaml routes no service")
        return ops

    async def _work_order(self, request: Any) -> tuple:
        """An operator's act on the work orders (OPC UA methods), through the core's service."""
        try:
            req = OpsRequest.from_wire(request)
        except (TypeError, ValueError) as exc:
            raise RemoteAlarmError("value", f"malformed work-order request: {exc}") from None
        result = await self._operations().apply(req)
        self._push_orders()  # the change reaches the front before the answer
        return result.to_wire()

    def _work_order_busy(self, limit: int, request: Any) -> tuple:
        from scada.control.model import BAD_TOO_MANY_OPERATIONS

        return OpsResult(BAD_TOO_MANY_OPERATIONS, f"{limit} requests already in progress from this front").to_wire()

    async def _citizen_report(
        self,
        service_code: Any,
        description: Any,
        lat: Any,
        lon: Any,
        address: Any,
        contact: Any,
        client: Any,
        requested_ns: Any,
    ) -> tuple:
        """A validated Open311 request (the front checked it): stored, attached or made an order."""
        try:
            report = CitizenReport(
                "",
                str(service_code),
                str(description),
                None if lat is None else float(lat),
                None if lon is None else float(lon),
                str(address),
                int(requested_ns),
                None,
                str(client),
                {str(k): str(v) for k, v in dict(contact).items() if k in CONTACT_FIELDS},
            )
        except (TypeError, ValueError) as exc:
            raise RemoteAlarmError("value", f"malformed citizen report: {exc}") from None
        status, message, rid, oid = await self._operations().citizen_report(report)
        self._push_orders()
        return status, message, rid, oid

    def _citizen_report_busy(self, limit: int, *_args: Any) -> tuple:
        from scada.control.model import BAD_TOO_MANY_OPERATIONS

        return BAD_TOO_MANY_OPERATIONS, f"{limit} requests already in progress from this front", "", ""

    async def _reports(self, *query: Any) -> list:
        """Open311 GETs: public reports with their order's state (the journal, read in a thread)."""
        return await self._operations().reports(*query)

    def _reports_busy(self, limit: int, *_query: Any) -> list:
        """A GET beyond MAX_IN_FLIGHT: an error (the front answers 503), not "no such report" (404)."""
        raise RemoteAlarmError("value", f"{limit} requests already in progress from this front")

    # Requests from the front

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        from scada.alarms.remote import alarm_snapshot, serve_alarm_action
        from scada.front.history import serve_unstored

        app = self.app
        return {
            # During a reload, actions go to the engine being installed: its state was carried
            # already, and the engine running until the swap is about to be dropped.
            "alarm_action": lambda *a: serve_alarm_action(self._action_engine(), *a),
            "alarm_snapshot": lambda: alarm_snapshot(app.alarms),
            "history_unstored": lambda ids: serve_unstored(app.historian, ids),
        }

    def _async_handlers(self) -> dict[str, tuple[Callable[..., Awaitable[Any]], Callable[..., Any]]]:
        """Requests served by a coroutine, each with its "busy" answer (MAX_IN_FLIGHT reached)."""
        return {
            "command": (self._command, self._command_busy),
            "group_command": (self._group_command, self._group_busy),
            REQUEST_WORK_ORDER: (self._work_order, self._work_order_busy),
            REQUEST_CITIZEN_REPORT: (self._citizen_report, self._citizen_report_busy),
            REQUEST_REPORTS: (self._reports, self._reports_busy),
        }

    async def _command(self, request: Any) -> tuple:
        """One command through the core's pipeline (scada/control/pipeline.py)."""
        from scada.control.model import CommandRequest

        result = await self.app.commands.execute(CommandRequest.from_wire(request))
        return result.to_wire()

    def _command_busy(self, limit: int, request: Any) -> tuple:
        """A command beyond MAX_IN_FLIGHT: BadTooManyOperations at once (never queued), audited."""
        from scada.control.model import BAD_TOO_MANY_OPERATIONS, CommandRequest, CommandResult, status_name
        from scada.security.audit import AuditRecord, canonical

        result = CommandResult("", BAD_TOO_MANY_OPERATIONS, f"{limit} commands already in progress from this front")
        try:
            req = CommandRequest.from_wire(request)
        except (TypeError, ValueError):
            return result.to_wire()  # malformed and beyond the limit: the trail need not hold it
        c = req.caller
        arguments = {"command": req.command, "args": dict(req.args), "phase": req.phase, "origin": req.origin}
        self.app.audit.record(
            AuditRecord(
                time.time_ns(),
                "command",
                c.user,
                tuple(sorted(c.roles)),
                c.session,
                c.client,
                "",
                req.device,
                canonical({**arguments, "message": result.message}),
                status_name(result.status),
            )
        )
        return CommandResult(req.device, result.status, result.message).to_wire()

    # Group actions (scada/control/groups.py)

    async def _group_command(self, request: Any) -> list[tuple]:
        """A group action through the core's command service, its progress told to the front as
        it goes (``("group_progress", group, action, user, total, done, failed, finished)``);
        the answer is one result per device (or one naming the group when it is refused whole)."""
        from scada.control.model import GroupRequest

        try:
            req = GroupRequest.from_wire(request)
        except (TypeError, ValueError) as exc:
            raise RemoteAlarmError("value", f"malformed group request: {exc}") from None
        results = await self.app.commands.run_group(req, self._group_progress)
        return [r.to_wire() for r in results]

    def _group_busy(self, limit: int, request: Any) -> list[tuple]:
        """A group action beyond MAX_IN_FLIGHT: BadTooManyOperations for the group at once, audited."""
        from scada.control.model import BAD_TOO_MANY_OPERATIONS, CommandResult, GroupRequest, status_name
        from scada.security.audit import AuditRecord, canonical

        message = f"{limit} commands already in progress from this front"
        try:
            req = GroupRequest.from_wire(request)
        except (TypeError, ValueError):
            return [CommandResult("", BAD_TOO_MANY_OPERATIONS, message).to_wire()]
        c = req.caller
        self.app.audit.record(
            AuditRecord(
                time.time_ns(),
                "group_command",
                c.user,
                tuple(sorted(c.roles)),
                c.session,
                c.client,
                "",
                req.group,
                canonical({"action": req.action, "args": dict(req.args), "devices": 0, "message": message}),
                status_name(BAD_TOO_MANY_OPERATIONS),
            )
        )
        return [CommandResult(req.group, BAD_TOO_MANY_OPERATIONS, message).to_wire()]

    def _group_progress(
        self, group: str, action: str, user: str, total: int, done: int, failed: int, finished: bool
    ) -> None:
        # To the front running now (one restarted meanwhile gets the rest); none: nobody to tell.
        if self._writer is not None:
            self._send(wire.encode_message("group_progress", group, action, user, total, done, failed, finished))

    def _action_engine(self):
        return self._reload_alarms if self._reload_alarms is not None else self.app.alarms

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        handlers = self._handlers()
        async_handlers = self._async_handlers()
        while True:
            kind, payload = await wire.read_frame(reader, MAX_REQUEST)
            if kind != wire.MESSAGE:
                raise wire.FrameError("the front sent a batch frame")
            msg = wire.decode_message(payload)
            tag = msg[0]
            if tag == "request":
                _, rid, op, args = msg
                self.requests += 1
                if op in async_handlers:
                    self._start_request(async_handlers[op], rid, op, args)
                else:
                    self._answer(handlers, rid, op, args)
            elif tag == "audit":
                self._audit(msg)
            elif tag == "ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(int(msg[1]))
            elif tag == "failed":  # the front could not start its server (the port is taken...)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(OSError(msg[2], msg[3]))
            elif tag == "http_listener":  # (setting, host, port, error): scada/operations/listener.py
                from scada.operations.listener import listener_alarm

                listener_alarm(self.app.alarms, *msg[1:])
            elif tag == "reload_done":
                fut = self._waiting.pop(msg[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg[2:])
            else:
                raise wire.FrameError(f"unknown message {tag!r} from the front")

    def _audit(self, msg: tuple) -> None:
        """One audit record from the front, to the core's trail."""
        try:
            if len(msg) != 2:
                raise ValueError(f"an audit message holds one record, got {len(msg) - 1} fields")
            rec = from_wire(msg[1])
        except ValueError as exc:
            self.audit_refused += 1
            if self.audit_refused <= 10:  # a bug in the front, not a flood of log lines
                log.error("opcua_front_audit_refused", error=str(exc), refused=self.audit_refused)
            return
        self.audit_records += 1
        self.app.audit.record(rec)

    def _answer(self, handlers: dict[str, Callable[..., Any]], rid: int, op: str, args: Sequence[Any]) -> None:
        handler = handlers.get(op)
        self._answering = True
        try:
            if handler is None:
                raise RemoteAlarmError("value", f"unknown request {op!r}")
            reply = ("reply", rid, True, handler(*args))
        except Exception as exc:  # noqa: BLE001 - the front gets the error, the core goes on
            kind, payload = getattr(exc, "kind", "error"), getattr(exc, "payload", repr(exc))
            if kind == "error":
                log.warning("opcua_front_request_failed", op=op, error=repr(exc))
            reply = ("reply", rid, False, (kind, payload))
        finally:
            self._answering = False
        with contextlib.suppress(FrontExited):
            self._send(wire.encode_message(*reply))

    def _start_request(self, handler: tuple[Callable[..., Awaitable[Any]], Callable[..., Any]], rid, op, args) -> None:
        """A coroutine request: its own task, answered when done (or "busy" at once)."""
        serve, busy = handler
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self.requests_busy += 1
            try:
                reply = ("reply", rid, True, busy(MAX_IN_FLIGHT, *args))
            except RemoteAlarmError as exc:  # a busy answer that is an error (the front's 503)
                reply = ("reply", rid, False, (exc.kind, exc.payload))
            with contextlib.suppress(FrontExited):
                self._send(wire.encode_message(*reply))
            return
        task = asyncio.create_task(self._serve(serve, rid, op, args), name=f"front-request-{op}")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _serve(self, serve: Callable[..., Awaitable[Any]], rid: int, op: str, args: Sequence[Any]) -> None:
        try:
            reply = ("reply", rid, True, await serve(*args))
        except Exception as exc:  # noqa: BLE001 - the front gets the error, the core goes on
            kind, payload = getattr(exc, "kind", "error"), getattr(exc, "payload", repr(exc))
            if kind == "error":
                log.warning("opcua_front_request_failed", op=op, error=repr(exc))
            reply = ("reply", rid, False, (kind, payload))
        with contextlib.suppress(FrontExited):
            self._flush_batches()
            self._send(wire.encode_message(*reply))

    async def _cancel_requests(self) -> None:
        """The front is gone: the requests it sent are cancelled (each says so in the audit)."""
        tasks = [t for t in self._in_flight if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Reload (scada/reload.py)

    async def reload(self, config, tagdb: TagDB, removed, added, retyped: list[str], alarms=None, history=None) -> int:
        """Make the front show ``config`` with these components (see HmiServer.reload).

        Returns the number of node changes the front announced. A front that cannot follow is
        stopped: the supervisor starts it again on the components the server then runs.
        """
        if tagdb is not self._consumer_db:
            self._subscribe(tagdb)
        self._detach_alarms(self.app.alarms, alarms)
        self._attach_alarms(alarms)
        self.attach_orders()
        if self._writer is None or self.proc is None:
            self.config = config
            return 0
        rid = next(self._ids)
        fut = self._waiting[rid] = asyncio.get_running_loop().create_future()
        state = self._state(config, tagdb, alarms, history)
        self._send(wire.encode_message("reload", rid, state, list(removed), list(added), list(retyped)))
        self._reload_alarms = alarms
        try:
            ok, result = await asyncio.wait_for(fut, RELOAD_TIMEOUT)
        except BaseException:
            self._waiting.pop(rid, None)
            await self._restart_front("no answer to the reload")
            raise
        finally:
            self._reload_alarms = None
        if not ok:
            await self._restart_front(str(result))
            raise FrontExited(f"the OPC UA front could not follow the new configuration: {result}")
        self.config = config
        return int(result)

    async def _restart_front(self, why: str) -> None:
        log.error("opcua_front_restart", reason=why)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    # Diagnostics

    def stats(self) -> dict[str, int]:
        return {
            "front_starts": self.starts,
            "front_batches_sent": self.batches_sent,
            "front_batches_dropped": self.batches_dropped,
            "front_alarm_events_dropped": self.alarm_events_dropped,
            "front_resyncs": self.resyncs,
            "front_requests": self.requests,
            "front_requests_busy": self.requests_busy,
            "front_audit_records": self.audit_records,
            "front_audit_refused": self.audit_refused,
            "front_order_pushes": self.order_pushes,
            "front_order_pushes_dropped": self.order_pushes_dropped,
        }

    @property
    def dropped_batches(self) -> int:
        consumer = self._consumer
        return self.batches_dropped + (consumer.dropped_batches if consumer is not None else 0)


# The core's figures for the front's /metrics (scada/operations/metrics.py)


def core_stats(app) -> dict[str, Any]:
    """What the front cannot see itself: the status line's figures, each driver's diagnostics,
    the event loop's lag and each consumer's drops (plain numbers, pickled small)."""
    return {
        "status": app.status(),
        "drivers": {
            d.name: {k: v for k, v in d.diagnostics().items() if isinstance(v, int | float)} for d in app.drivers
        },
        "loop_lag_s": float(app.max_loop_lag),
        "consumers": {
            c.name: {"dropped_batches": c.dropped_batches, "dropped_rows": c.dropped_rows} for c in app.tagdb.consumers
        },
    }


async def push_stats(link: FrontLink, interval: float = STATS_INTERVAL) -> None:
    """Push model.PUSH_STATS to the front now and every ``interval`` s. Dropped above HIGH_WATER
    (the next one replaces it); a figure that fails to compute is logged, never fatal."""
    from scada.operations.model import PUSH_STATS

    while True:
        if link._writer is not None and link._backlog() <= HIGH_WATER:
            try:
                link._send(wire.encode_message(PUSH_STATS, core_stats(link.app)))
            except FrontExited:
                pass
            except Exception as exc:  # noqa: BLE001 - metrics must never take the front down
                log.warning("core_stats_failed", error=repr(exc))
        await asyncio.sleep(interval)
