"""OPC UA client driver: one session and one subscription per server, monitored items in bulk.

Each server (endpoint) has a session task: connect, resolve the namespaces, create one
subscription and every monitored item of its devices in one request, then watch the
connection. Notifications are buffered and reported to the tag database in batches (one
``TagDB.update`` per flush), keeping the server's status codes and source timestamps.
A lost session turns every tag of that server ``Bad_CommunicationError`` (last value
kept) and the task reconnects with capped, jittered backoff, re-creating the session and
the subscription. A node the server refuses is ``Bad_ConfigurationError``.
Library exceptions never leave the driver.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaError

from drivers.base import DeviceRejected, DeviceUnreachable, WriteCommand, check_point, lookup
from drivers.opcua.config import OpcUaEndpoint, OpcUaType
from scada import status as st
from scada.config import Config, Device
from scada.tagdb import TEXT, TagDB

log = structlog.get_logger("drivers.opcua")
FLUSH_S = 0.05
_SESSION_ERRORS = (UaError, OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError)


def _ns(t: datetime | None) -> int:
    return int(t.timestamp() * 1e9) if t is not None else time.time_ns()


@dataclass(eq=False)
class Session:
    url: str
    devices: list[Device] = field(default_factory=list)
    nodes: list[tuple[int, str, str]] = field(default_factory=list)  # (tag id, namespace uri, identifier)
    ids: np.ndarray | None = None
    client: Client | None = None
    connected: bool = False
    ever: bool = False
    failures: int = 0
    last_error: str = ""
    publishing_interval: float = 500.0
    tag_of: dict[Any, int] = field(default_factory=dict)  # NodeId -> tag id, per session
    node_of: dict[int, Any] = field(default_factory=dict)  # tag id -> Node
    vtype: dict[int, ua.VariantType] = field(default_factory=dict)  # tag id -> last variant type seen
    sampling: dict[int, float] = field(default_factory=dict)  # tag id -> sampling interval, ms


class _Handler:
    def __init__(self, driver: "OpcUaDriver", session: Session) -> None:
        self.driver, self.session = driver, session

    def datachange_notification(self, node, val, data) -> None:
        tag = self.session.tag_of.get(node.nodeid)
        if tag is None:
            return
        dv = data.monitored_item.Value
        self.driver._buffer(self.session, tag, dv)

    def status_change_notification(self, status) -> None:
        self.driver._loop.call_soon(self.driver._session_lost, self.session, f"subscription status {status}")


class OpcUaDriver:
    name = "opcua"

    def __init__(self, config: Config, devices: list[Device], tagdb: TagDB,
                 backoff_base: float = 0.5, backoff_cap: float = 15.0) -> None:
        self.config = config
        self.tagdb = tagdb
        self.backoff = (backoff_base, backoff_cap)
        self.sessions: dict[str, Session] = {}
        self._by_tag: dict[str, tuple[Session, Device, Any]] = {}
        for d in devices:
            ep: OpcUaEndpoint = d.io
            s = self.sessions.setdefault(ep.url, Session(ep.url))
            t = config.types[d.type]
            tio: OpcUaType = t.io
            s.publishing_interval = min(s.publishing_interval, tio.publishing_interval)
            s.devices.append(d)
            for tag, p in zip(config.tag_ids(d).tolist(), t.points):
                s.nodes.append((tag, tio.namespace, p.io.node.format(device=d.name)))
                s.sampling[tag] = p.io.sampling_interval
                self._by_tag[config.tag_name(d, p)] = (s, d, p)
        for s in self.sessions.values():
            s.ids = np.array([n[0] for n in s.nodes], np.int64)
        self._pending: list[tuple[int, float | str, int, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notifications = 0

    # notifications -> batches

    def _buffer(self, session: Session, tag: int, dv: ua.DataValue) -> None:
        self.notifications += 1
        v = dv.Value.Value if dv.Value is not None else None
        if dv.Value is not None:
            session.vtype[tag] = dv.Value.VariantType
        code = dv.StatusCode.value if dv.StatusCode is not None else st.GOOD
        src = _ns(dv.SourceTimestamp or dv.ServerTimestamp)
        if isinstance(v, bool):
            v = 1.0 if v else 0.0
        elif isinstance(v, (int, float)):
            v = float(v)
        elif isinstance(v, str) and self.tagdb.kind[tag] == TEXT:
            pass
        elif v is None:
            v = float("nan")
        else:  # a structure or array where a scalar was configured
            v, code = float("nan"), st.BAD_CONFIGURATION_ERROR
        self._pending.append((tag, v, code, src))

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        last: dict[int, tuple] = {}
        for row in pending:  # a tag notified twice in one flush: its last value counts
            last[row[0]] = row
        rows = list(last.values())
        texts = [r for r in rows if isinstance(r[1], str)]
        nums = [r for r in rows if not isinstance(r[1], str)]
        if nums:
            a = np.array([r[0] for r in nums], np.int64)
            self.tagdb.update(a, np.array([r[1] for r in nums], np.float64), np.array([r[2] for r in nums], np.uint32),
                              np.array([r[3] for r in nums], np.int64))
        if texts:
            self.tagdb.update_text([r[0] for r in texts], [r[1] for r in texts],
                                   np.array([r[2] for r in texts], np.uint32), np.array([r[3] for r in texts], np.int64))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    # sessions

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flush_loop(), name="opcua-flush")
            for s in self.sessions.values():
                tg.create_task(self._session_loop(s), name=f"opcua:{s.url}")

    def _session_lost(self, s: Session, reason: str) -> None:
        if s.connected:
            log.warning("opcua_session_lost", endpoint=s.url, error=reason)
        s.connected = False
        s.last_error = reason
        self.flush()
        self.tagdb.set_status(s.ids, st.BAD_COMMUNICATION_ERROR if s.ever else st.BAD_NO_COMMUNICATION)

    async def _session_loop(self, s: Session) -> None:
        while True:
            try:
                await self._session(s)
            except _SESSION_ERRORS as exc:
                self._session_lost(s, f"{type(exc).__name__}: {exc}")
            s.failures += 1
            base, cap = self.backoff
            await asyncio.sleep(min(cap, base * 2 ** min(s.failures - 1, 10)) * random.uniform(0.5, 1.0))

    async def _session(self, s: Session) -> None:
        timeout = max(d.timeout for d in s.devices)
        client = Client(s.url, timeout=max(timeout, 2.0), watchdog_intervall=max(timeout, 2.0))
        s.client = client
        try:
            async with asyncio.timeout(max(timeout, 2.0) * 5):
                await client.connect()
            namespaces = {uri: await client.get_namespace_index(uri) for uri in {n[1] for n in s.nodes}}
            nodes = [client.get_node(ua.NodeId(ident, namespaces[uri])) for _, uri, ident in s.nodes]
            s.tag_of = {node.nodeid: tag for node, (tag, _, _) in zip(nodes, s.nodes)}
            s.node_of = {tag: node for node, (tag, _, _) in zip(nodes, s.nodes)}
            sub = await client.create_subscription(s.publishing_interval, _Handler(self, s))
            # Monitored items in bulk: one request per sampling interval in use.
            by_interval: dict[float, list[int]] = {}
            for k, (tag, _, _) in enumerate(s.nodes):
                by_interval.setdefault(s.sampling[tag], []).append(k)
            refused = []
            for interval, ks in by_interval.items():
                handles = await sub.subscribe_data_change([nodes[k] for k in ks], queuesize=1,
                                                          sampling_interval=interval)
                refused += [s.nodes[k][0] for k, h in zip(ks, handles) if isinstance(h, ua.StatusCode)]
            if refused:
                log.warning("opcua_nodes_refused", endpoint=s.url, count=len(refused),
                            tag=self.tagdb.names[refused[0]])
                self.tagdb.set_status(np.array(refused), st.BAD_CONFIGURATION_ERROR)
            if not s.connected and s.failures:
                log.info("opcua_session_restored", endpoint=s.url, monitored=len(nodes) - len(refused))
            s.connected = s.ever = True
            s.failures = 0
            while True:
                await asyncio.sleep(1.0)
                await client.check_connection()
        finally:
            s.client = None
            try:
                async with asyncio.timeout(2):
                    await client.disconnect()
            except Exception:  # noqa: BLE001 - the session is gone either way
                pass

    # commands

    def _resolve(self, command: WriteCommand):
        return lookup(self._by_tag, command)

    def check(self, command: WriteCommand) -> None:
        check_point(self._resolve(command)[2], command)

    async def write(self, command: WriteCommand) -> None:
        """Write, then confirm by reading back: the server's own value must become the command."""
        self.check(command)
        s, d, p = self._resolve(command)
        tag = self.tagdb.id_of(command.tag)
        node = s.node_of.get(tag)
        if not s.connected or node is None or s.client is None:
            raise DeviceUnreachable(f"{d.name}: no session with {s.url}")
        vtype = s.vtype.get(tag, ua.VariantType.Double)
        value: Any = command.value
        if vtype in (ua.VariantType.Boolean,):
            value = bool(command.value)
        elif vtype not in (ua.VariantType.Double, ua.VariantType.Float):
            value = int(command.value)
        try:
            await node.write_value(ua.DataValue(ua.Variant(value, vtype)))
            deadline = time.monotonic() + max(d.timeout, 1.0) * 3
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if await node.read_value() == value:
                    return
        except ua.UaStatusCodeError as exc:
            raise DeviceRejected(f"{d.name}: the server refused the write: {exc}") from None
        except _SESSION_ERRORS as exc:
            raise DeviceUnreachable(f"{d.name}: {type(exc).__name__}: {exc}") from None
        raise DeviceRejected(f"{d.name}: the server did not apply {command.value} to {p.name} (read-back differs)")

    def diagnostics(self) -> dict[str, Any]:
        online = sum(len(s.devices) for s in self.sessions.values() if s.connected)
        return {"devices": sum(len(s.devices) for s in self.sessions.values()), "online": online,
                "notifications": self.notifications}


def create(config: Config, devices: list[Device], tagdb: TagDB) -> OpcUaDriver:
    return OpcUaDriver(config, devices, tagdb)
