"""The OPC UA front process: ``python -m scada.front.process --fd N`` (started by the core).

It receives everything from the core over the socketpair ``N`` (see
:mod:`scada.front.link`): an INIT with the configuration and where to find the tag columns,
then change batches, alarm events, resyncs and reloads, and it sends requests back, and its
audit records (fire-and-forget, bounded: :class:`ChannelAudit`) for the core's trail. It runs
:class:`scada.opcua.server.HmiServer` on mirrors of the core's components:
:class:`~scada.front.tags.TagMirror` (the shared tag columns and the batches),
:class:`~scada.front.alarms.AlarmMirror` (the engine's state and its events; operator actions
are requests), :class:`~scada.front.history.HistoryMirror` (the history store, read
directly, and the historian's points not stored yet, a request). With
``operations.http.listen`` set it also serves HTTP on the same loop
(:mod:`scada.operations.http`: Open311, the map feed, /metrics) from those mirrors and
:class:`~scada.front.orders.OrdersMirror` (the work orders and figures the core pushes). An HTTP
address that cannot be bound never stops the front: that listener is retried while the rest
serves, and the core is told (``("http_listener", setting, host, port, error)``) to raise its
server alarm (:mod:`scada.operations.listener`).

It stops when its channel ends: the core stopped, or died (a front never outlives its core).
Any failure of its own tasks ends the process with an error: the core's supervisor starts a
new one, with backoff, while the field goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from typing import Any

import structlog

from common import eventloop, logs
from scada.alarms.remote import RemoteAlarmError
from scada.front import wire
from scada.front.orders import OrdersMirror, clock_of
from scada.operations import model as ops_model
from scada.security.audit import AuditFanout, AuditRecord, lost_record, to_wire

log = structlog.get_logger("scada.front")

DRAIN_TIMEOUT = 10.0  # s: alarm events already queued reach the clients before a reload
# The front yields the CPU to the core: when clients ask more than the machine has (measured on
# 2 cores: 5 clients x 29,000 items and a browse, 21 late polls in 30 s at the same priority),
# polls, alarms and history writes go first; the clients get what is left. 10 of the 19
# steps of niceness: a lower priority, not a starved one (Linux gives it ~10 % against a busy
# core, all of an idle one).
FRONT_NICENESS = 10
# Audit records waiting in the channel to the core beyond which they are dropped (counted, and
# said in the trail once the channel drains): a storm of refused requests from a hostile
# client must not grow the front's memory. 1 MiB is thousands of records, far beyond any
# legitimate burst, and small beside the batches the core sends the other way.
AUDIT_HIGH_WATER = 1 << 20


class CoreChannel:
    """The front's end of the socketpair: requests to the core and their replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    def send(self, tag: str, *fields: Any) -> None:
        self.writer.write(wire.encode_message(tag, *fields))

    async def request(self, op: str, *args: Any) -> Any:
        """Ask the core; its handler's result, or RemoteAlarmError(kind, payload) (see link.py)."""
        rid = next(self._ids)
        fut = self._pending[rid] = asyncio.get_running_loop().create_future()
        try:
            self.send("request", rid, op, args)
            return await fut
        finally:
            self._pending.pop(rid, None)

    def backlog(self) -> int:
        """Bytes written to the core and not sent yet."""
        return self.writer.transport.get_write_buffer_size()

    def answer(self, rid: int, ok: bool, value: Any) -> None:
        fut = self._pending.get(rid)
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(RemoteAlarmError(*value))

    def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the core closed the channel"))
        self.writer.close()


class ChannelAudit:
    """The front's AuditSink: each record goes to the core's audit trail as a fire-and-forget
    ``("audit", record)`` message on the channel (no reply, never awaited).

    Bounded: above AUDIT_HIGH_WATER bytes waiting, or with the channel closed, a record is
    dropped and counted; the next record that goes is preceded by an ``audit_lost`` record
    saying how many. Never raises (an audited request must not fail for its audit).
    """

    def __init__(self, channel: CoreChannel) -> None:
        self.channel = channel
        self.sent = 0
        self.dropped = 0
        self._lost = 0  # dropped since the last audit_lost record

    def record(self, rec: AuditRecord) -> None:
        try:
            if self.channel.writer.is_closing() or self.channel.backlog() > AUDIT_HIGH_WATER:
                self._drop()
                return
            if self._lost:
                self.channel.send("audit", to_wire(lost_record(self._lost)))
                self._lost = 0
            self.channel.send("audit", to_wire(rec))
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - a broken channel: the front is about to stop anyway
            self._drop(repr(exc))

    def _drop(self, error: str = "") -> None:
        self.dropped += 1
        self._lost += 1
        if self._lost == 1:  # once per streak: a storm must not become a storm of log lines
            log.warning("audit_records_dropped", reason=error or "the channel to the core is full or closed")


class Front:
    """One front: the mirrors, the OPC UA server, and the channel's dispatch."""

    def __init__(self, channel: CoreChannel, settings, ops_clock: Any = None) -> None:
        self.channel = channel
        self.settings = settings
        self.ops_clock = clock_of(ops_clock)  # the core's operations clock (scada/front/orders.py)
        self.hmi: Any = None
        self.tags: Any = None
        self.history: Any = None
        # The core's operations as it pushes them (model.PUSH_*): the HTTP server's map and
        # metrics read them. Kept across reloads: the orders do not change with the configuration.
        self.orders = OrdersMirror(self.ops_clock, wall=time.time_ns)
        self.http: Any = None  # scada.operations.http.OpsHttp, when operations.http.listen is set
        self.tasks: list[asyncio.Task] = []
        self.failed = asyncio.Event()  # one of its tasks failed: the front ends, the core restarts it
        self.failure: BaseException | None = None
        # What the front audits goes to the core's trail; the OPC UA audit events add themselves
        # (scada/opcua/audit_events.py).
        self.audit = AuditFanout(ChannelAudit(channel))

    def _mirrors(self, state: dict[str, Any]):
        """The mirrors of the core's components described by ``state`` (INIT, or a reload's)."""
        from scada.front.alarms import AlarmMirror
        from scada.front.history import HistoryMirror
        from scada.front.tags import TagMirror

        config = state["config"]
        names, kinds, _deadbands = config.tag_table()
        tags = self.tags
        if tags is None or tags.shm_name != state["shm"]:
            tags = TagMirror(names, kinds, state["shm"])
        tags.resync(state["texts"])
        alarms = None
        if state["alarms"] is not None:
            alarms = AlarmMirror(config, len(tags), self.channel.request)
            alarms.load(state["alarms"])
        history = self.history
        if state["store"] is None:
            history = None
        elif history is None or str(history.path) != state["store"]:
            history = HistoryMirror(state["store"], list(names), self.channel.request)
        else:
            history.rebind(list(names))  # the same store: its tag ids follow the new table
        return config, tags, alarms, history

    async def start(self, state: dict[str, Any]) -> int:
        from scada.opcua.server import HmiServer

        config, self.tags, alarms, self.history = self._mirrors(state)
        s = self.settings
        self.hmi = HmiServer(
            config,
            self.tags,
            s.endpoint,
            s.name,
            alarms=alarms,
            history=self.history,
            security=s.security,
            audit=self.audit,
            commands=self.channel.request,  # the core's command pipeline ("command", "group_command")
        )
        await self.hmi.start()
        snapshot = state.get(ops_model.PUSH_ORDERS_SNAPSHOT)
        if snapshot is not None:  # the core's open work orders (none: the core runs no operations)
            self.orders.load(snapshot)
            if self.hmi.operations is not None:
                self.hmi.operations.install(snapshot)
        await self._start_http(config, alarms)
        self._start_tasks()
        return self.hmi.node_count

    async def _reload_http(self, config, tags, alarms) -> None:
        """The HTTP server follows a reload: the same listeners take the new settings; a listener
        address changed (or HTTP turned off or on) stops them and starts what the new
        configuration asks for (an alarm of a listener that no longer exists clears)."""
        from scada.operations.http import internal_of, listen_of, operations_of

        http = self.http
        if http is not None and (http.listen, http.internal) == (listen_of(config), internal_of(config)):
            http.rebind(config, operations_of(config) or http.ops, tags, alarms)
            return
        if http is not None:
            await http.stop()
            self.http = None
        await self._start_http(config, alarms)
        for setting, address in (("listen", listen_of(config)), ("internal", internal_of(config))):
            if address is None:
                self._listener_state(setting, None, "")

    async def _start_http(self, config, alarms) -> None:
        """The HTTP server (Open311, map, metrics) on this loop, if the configuration asks for one.
        Never fails the front: a listener that cannot bind is retried while the OPC UA server runs,
        and the core raises a server alarm meanwhile (scada/operations/listener.py)."""
        from scada.operations.http import OpsHttp, listen_of, operations_of

        listen, ops = listen_of(config), operations_of(config)
        if listen is None or ops is None:
            # No HTTP server in this front: an alarm an earlier front raised has no reason left.
            for setting in ("listen", "internal"):
                self._listener_state(setting, None, "")
            return
        hmi = self.hmi

        def opcua_counts() -> tuple[int, int]:
            from scada.opcua.asyncua_private.sessions import external_sessions
            from scada.opcua.asyncua_private.subscriptions import subscriptions

            return len(external_sessions(hmi.server)), len(subscriptions(hmi.server))

        self.http = OpsHttp(
            config,
            ops,
            listen,
            self.tags,
            alarms,
            self.orders,
            self.channel.request,
            opcua_counts,
            self.ops_clock,
            wall=time.time_ns,
            report=self._listener_state,
        )
        await self.http.start()

    def _listener_state(self, setting: str, address: tuple[str, int] | None, error: str) -> None:
        """Tell the core a listener's state (its server alarm: link.py, "http_listener")."""
        if self.channel.writer.is_closing():
            return  # the core is gone: this front stops
        host, port = address if address is not None else (None, None)
        self.channel.send("http_listener", setting, host, port, error)

    def _start_tasks(self) -> None:
        hmi = self.hmi
        self.tasks = [self._watch(asyncio.create_task(hmi.publisher.run(), name="opcua-publisher"))]
        if hmi.conditions is not None:
            self.tasks.append(self._watch(asyncio.create_task(hmi.conditions.run(), name="opcua-alarm-events")))
        if hmi.groups is not None:
            self.tasks.append(self._watch(asyncio.create_task(hmi.groups.run(), name="opcua-group-progress")))
        if hmi.operations is not None:
            self.tasks.append(self._watch(asyncio.create_task(hmi.operations.run(), name="opcua-operations")))
        if self.http is not None:
            self.tasks.append(self._watch(asyncio.create_task(self.http.run(), name="http")))

    def _watch(self, task: asyncio.Task) -> asyncio.Task:
        def done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                self.failure = t.exception()
                log.error("opcua_front_task_failed", task=t.get_name(), error=repr(self.failure))
                self.failed.set()

        task.add_done_callback(done)
        return task

    async def _stop_tasks(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def reload(self, rid: int, state: dict[str, Any], removed, added, retyped) -> None:
        """Follow the core's new configuration (HmiServer.reload); answer ``reload_done``."""
        try:
            # What is queued reaches the clients first: the alarm events of the old engine, and
            # the batches the publisher has not published yet (a new publisher takes the
            # current values as published: queued ones would never be notified).
            hmi = self.hmi
            conditions, consumer = hmi.conditions, hmi.publisher.consumer
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < deadline and (
                (conditions is not None and conditions._queue) or not consumer.queue.empty()
            ):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # the publisher takes a batch, then publishes it before its next get
            drained = consumer.queue.empty()
            await self._stop_tasks()
            config, tags, alarms, history = self._mirrors(state)
            old_history, self.history = self.history, history
            # From now on the core's batches are the new table's: never given to the old mirror.
            old_tags, self.tags = self.tags, tags
            changes = await self.hmi.reload(config, tags, removed, added, retyped, alarms=alarms, history=history)
            await self._reload_http(config, tags, alarms)
            if not drained:
                # Not everything could be published in time: a first snapshot notifies every
                # watched value instead (nothing is lost, some are sent twice).
                self.hmi.publisher.primed = False
            if old_tags is not tags:
                _close_mirror(old_tags)
            if old_history is not None and old_history is not history:
                old_history.close()
            self._start_tasks()
        except Exception as exc:  # noqa: BLE001 - the core restarts a front that cannot follow
            log.exception("opcua_front_reload_failed")
            self.channel.send("reload_done", rid, False, repr(exc))
            raise
        self.channel.send("reload_done", rid, True, changes)

    def dispatch(self, kind: int, payload: bytes) -> asyncio.Task | None:
        """One frame from the core; a reload runs as a task (its answer is sent when done)."""
        if kind == wire.BATCH:
            self.tags.receive(wire.decode_batch(payload))
            return None
        msg = wire.decode_message(payload)
        tag = msg[0]
        if tag == "reply":
            self.channel.answer(*msg[1:])
        elif tag == "resync":
            self.tags.resync(msg[1])
        elif tag == "alarm_events":
            alarms = self.hmi.alarms
            if alarms is not None:
                alarms.receive(msg[1])
        elif tag == "alarm_resync":
            alarms = self.hmi.alarms
            if alarms is not None:
                alarms.load(msg[1])
                if self.hmi.conditions is not None:
                    self.hmi.conditions.reattach()  # rebuild the retained conditions, tell the clients
        elif tag == "group_progress":  # (group, action, user, total, done, failed, finished)
            if self.hmi.groups is not None:
                self.hmi.groups.progress(*msg[1:])
        elif tag == ops_model.PUSH_ORDERS:  # (name, [WorkOrder wire], [OrderEvent wire])
            self.orders.receive(msg[1], msg[2])
            if self.hmi.operations is not None:
                self.hmi.operations.apply(msg[1], msg[2])
        elif tag == ops_model.PUSH_ORDERS_SNAPSHOT:
            self.orders.load(msg[1])
            if self.hmi.operations is not None:
                self.hmi.operations.install(msg[1])
        elif tag == ops_model.PUSH_STATS:
            self.orders.receive_stats(msg[1])
        elif tag == ops_model.PUSH_KPIS:
            self.orders.receive_kpis(msg[1])
            if self.hmi.operations is not None:
                self.hmi.operations.kpis(msg[1])
        elif tag == "reload":
            # Run to its end before the next frame: the frames after it (batches, alarm events)
            # are the new configuration's, for the new mirrors.
            return self._watch(asyncio.create_task(self.reload(*msg[1:]), name="opcua-front-reload"))
        else:
            raise wire.FrameError(f"unknown message {tag!r} from the core")
        return None

    async def stop(self) -> None:
        await self._stop_tasks()
        if self.http is not None:
            await self.http.stop()
        if self.hmi is not None:
            await self.hmi.stop()
        if self.history is not None:
            self.history.close()


def _close_mirror(tags) -> None:
    """Detach from a tag table the core replaced; a view still held elsewhere keeps it mapped."""
    try:
        tags.close()
    except BufferError:
        log.warning("opcua_front_old_tag_table_still_referenced")


async def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    kind, payload = await wire.read_frame(reader)
    msg = wire.decode_message(payload) if kind == wire.MESSAGE else ("?",)
    if msg[0] != "init":
        print("front: the core's first message is not an init", file=sys.stderr)
        return 2
    state = msg[1]
    settings = state["settings"]
    logs.configure(json=settings.log_json, level=settings.log_level)
    # Its lines share the server's output: say which process wrote them.
    structlog.contextvars.bind_contextvars(process="opcua-front")
    channel = CoreChannel(reader, writer)
    front = Front(channel, settings, state.get("ops_clock"))
    # Frames that arrive while the address space is built wait in the socket (the core drops
    # batches beyond its high-water mark and resynchronises the front afterwards).
    try:
        try:
            nodes = await front.start(state)
        except OSError as exc:
            channel.send("failed", "oserror", exc.errno, exc.strerror or str(exc))
            await writer.drain()
            return 1
        channel.send("ready", nodes)
        log.info("opcua_front_ready", endpoint=settings.endpoint, nodes=nodes)
        await _run(front, reader)
    finally:
        await front.stop()
        channel.close()
    return 0


async def _run(front: Front, reader: asyncio.StreamReader) -> None:
    """Dispatch the core's frames until the channel ends; a failed task ends the front."""
    reading = asyncio.create_task(_read(front, reader), name="opcua-front-channel")
    failed = asyncio.create_task(front.failed.wait(), name="opcua-front-failed")
    try:
        await asyncio.wait((reading, failed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (reading, failed):
            t.cancel()
        await asyncio.gather(reading, failed, return_exceptions=True)
    if front.failure is not None:
        raise RuntimeError("a task of the OPC UA front failed") from front.failure
    if reading.done() and not reading.cancelled():
        reading.result()  # the channel's own failure (a frame that is not ours)


async def _read(front: Front, reader: asyncio.StreamReader) -> None:
    reloads: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)
    while True:
        try:
            kind, payload = await wire.read_frame(reader, wire.MAX_FRAME)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("opcua_front_channel_closed")
            return
        task = front.dispatch(kind, payload)
        if task is not None:
            reloads.add(task)
            task.add_done_callback(reloads.discard)
            await asyncio.wait([task])  # its failure ends the front (Front._watch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scada-front", description="OPC UA front process (started by the server)")
    p.add_argument("--fd", type=int, required=True, help="the socketpair end inherited from the core")
    p.add_argument("--event-loop", default=eventloop.DEFAULT, choices=eventloop.LOOPS)
    args = p.parse_args(argv)
    with contextlib.suppress(OSError):  # a platform without nice(): same priority as the core
        os.nice(FRONT_NICENESS)
    # Ctrl-C in a terminal reaches the whole process group: the core stops its front itself
    # (it closes the channel), in order, after its own clients' work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A terminal's hangup reaches the group too: the core reloads on SIGHUP, the front follows.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        return int(eventloop.run(serve(args.fd), args.event_loop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
