"""OPC UA client driver: one session and one subscription per server, monitored items in bulk.

Each server (endpoint, and the security of the types read from it) has a session task:
discover the server's endpoints, connect (secured when the type says so), resolve the
namespaces, create one subscription and every monitored item of its devices in bulk (one
CreateMonitoredItems request per server limit of items per call, each item with its sampling
interval and, for a numeric point with a ``deadband``, an absolute-deadband DataChangeFilter
so that the server filters at the source), then watch the connection.

Notifications take a short path: each publish response comes whole to the driver
(drivers/opcua/asyncua_private.py, the one place that touches asyncua's client internals), which
turns each DataChangeNotification into arrays at once (``codec.decode``; the ClientHandle of an item *is*
its tag id), and a flush every ``FLUSH_S`` hands them to the tag database in one
``TagDB.update``, keeping the server's status codes and source timestamps. asyncua's own
delivery (one task and one handler call per notification) costs 1.75x more CPU per value
(bench/bench_opcua_client.py).

A lost session turns every tag of that server ``Bad_CommunicationError`` (last value kept) and
the task reconnects with capped, jittered backoff, re-creating the session and the
subscription. A session that cannot open (server down, security refused, certificate not
trusted) leaves its tags ``Bad_NoCommunication`` and logs why, once per distinct reason. A
node the server refuses is ``Bad_ConfigurationError``. Library exceptions never leave the
driver.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import structlog
from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto

from drivers.opcua import codec, trust
from drivers.opcua.asyncua_private import create_subscription, keepalive_count
from drivers.opcua.config import NO_SECURITY, OpcUaEndpoint, OpcUaSecurity, OpcUaType
from scada import status as st
from scada.backoff import Backoff
from scada.config import Config, Device
from scada.diagnostics import DeviceDiagnostics
from scada.driver_api import CommandRejected, DeviceRejected, DeviceUnreachable, WriteCommand, check_point, lookup
from scada.ingest import Ingest
from scada.tagdb import TEXT, TagDB

log = structlog.get_logger("drivers.opcua")
FLUSH_S = 0.05
ITEMS_PER_CALL = 5000  # monitored items per CreateMonitoredItems request when the server sets no limit
_SESSION_ERRORS = (ua.UaError, OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError)
# The policies we speak (every name of config.SECURITY_POLICIES but None), as asyncua's concrete classes.
_Policy = (
    type[security_policies.SecurityPolicyBasic256Sha256]
    | type[security_policies.SecurityPolicyAes128Sha256RsaOaep]
    | type[security_policies.SecurityPolicyAes256Sha256RsaPss]
)
_POLICIES: dict[str, _Policy] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MAX_ITEMS_PER_CALL = ua.NodeId(
    ua.Int32(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
)
# Why a server refuses us, in words a technician acts on (the status code stays in the message).
_HINTS = {
    "BadCertificateUntrusted": "the server does not trust our certificate {cert}: add it to the server's trusted "
    "certificates",
    "BadSecurityPolicyRejected": "the server refuses this security policy",
    "BadCertificateUriInvalid": "the application URI of our certificate {cert} is refused by the server",
    "BadCertificateTimeInvalid": "our certificate {cert} is expired or not yet valid for the server",
    "BadCertificateRevoked": "the server has revoked our certificate {cert}",
    "BadCertificateUseNotAllowed": "our certificate {cert} is not allowed for a client (key usage)",
    "BadCertificateInvalid": "the server finds our certificate {cert} invalid",
    "BadSecurityChecksFailed": "the server's security checks failed (certificates or keys do not match)",
    "BadUserAccessDenied": "the server refuses the session (access denied)",
    "BadIdentityTokenRejected": "the server refuses anonymous sessions",
}


class SecurityMismatch(Exception):
    """The server cannot be reached with the configured security: a configuration matter."""


@dataclass(eq=False)
class Session:
    url: str
    security: OpcUaSecurity = NO_SECURITY
    devices: list[Device] = field(default_factory=list)
    nodes: list[tuple[int, str, str]] = field(default_factory=list)  # (tag id, namespace uri, identifier)
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # every tag, once all devices are in
    client: Client | None = None
    connected: bool = False
    ever: bool = False
    up: bool = False  # this connection attempt reached its subscription
    failures: int = 0  # connection attempts that failed in a row
    attempts: int = 0  # every connection attempt, for diagnostics
    last_error: str = ""
    publishing_interval: float = 500.0
    node_of: dict[int, Any] = field(default_factory=dict)  # tag id -> Node
    vtype: dict[int, ua.VariantType] = field(default_factory=dict)  # tag id -> node data type, this session
    sampling: dict[int, float] = field(default_factory=dict)  # tag id -> sampling interval, ms
    deadband: dict[int, float] = field(default_factory=dict)  # tag id -> absolute deadband asked of the server

    @property
    def name(self) -> str:
        return self.url if not self.security.secure else f"{self.url} ({self.security.policy}/{self.security.mode})"


class OpcUaDriver:
    name = "opcua"

    def __init__(
        self, config: Config, devices: list[Device], tagdb: TagDB, backoff_base: float = 0.5, backoff_cap: float = 15.0
    ) -> None:
        self.config = config
        self.tagdb = tagdb
        self.backoff = Backoff(backoff_base, backoff_cap)
        # One session per server and client identity: two types on one endpoint with different
        # security cannot share a session.
        self.sessions: dict[tuple[str, OpcUaSecurity], Session] = {}
        self._by_tag: dict[str, tuple[Session, Device, Any]] = {}
        for d in devices:
            ep: OpcUaEndpoint = d.io
            t = config.types[d.type]
            tio: OpcUaType = t.io
            s = self.sessions.setdefault((ep.url, tio.security), Session(ep.url, tio.security))
            s.publishing_interval = min(s.publishing_interval, tio.publishing_interval)
            s.devices.append(d)
            for tag, p in zip(config.tag_ids(d).tolist(), t.points):
                s.nodes.append((tag, tio.namespace, p.io.node.format(device=d.name)))
                s.sampling[tag] = p.io.sampling_interval
                if p.deadband > 0 and p.io.type == "number":
                    s.deadband[tag] = p.deadband
                self._by_tag[config.tag_name(d, p)] = (s, d, p)
        for s in self.sessions.values():
            s.ids = np.array([n[0] for n in s.nodes], np.int64)
        # Diagnostics: per device; a notification counts for the device of its tag.
        self.diag = DeviceDiagnostics(config, devices)
        self._device_of_tag = np.full(len(tagdb), -1, np.int64)
        self._session_devices: dict[int, np.ndarray] = {}
        position = {d.name: k for k, d in enumerate(devices)}
        for d in devices:
            self._device_of_tag[config.tag_ids(d)] = position[d.name]
        for s in self.sessions.values():
            self._session_devices[id(s)] = np.array([position[d.name] for d in s.devices], np.int64)
        self._text = tagdb.kind == TEXT
        # The ClientHandles this driver gave its monitored items: anything else from the field is refused.
        self._known = np.zeros(len(tagdb), bool)
        for s in self.sessions.values():
            self._known[s.ids] = True
        self.rejected_items = 0  # notifications whose ClientHandle is not one of our items
        self.ingest = Ingest(tagdb, on_stored=lambda tags: self.diag.received(self._device_of_tag[tags]))
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notifications = 0

    # notifications -> batches

    def _on_message(self, s: Session, message: ua.NotificationMessage) -> None:
        """One publish response of a session's subscription (called in asyncua's publish loop)."""
        for notification in message.NotificationData:
            try:
                if isinstance(notification, ua.DataChangeNotification):
                    self._ingest(notification.MonitoredItems)
                elif isinstance(notification, ua.StatusChangeNotification):
                    self._session_lost(s, f"subscription status {notification.Status}")
            except Exception:  # noqa: BLE001 - the rest of the message would be lost, the values frozen Good
                log.exception("opcua_notification_failed", endpoint=s.url)

    def _ingest(self, items: list[ua.MonitoredItemNotification]) -> None:
        """One DataChangeNotification: its items become arrays, kept until the next flush."""
        if not items:
            return
        self.notifications += len(items)
        d = codec.decode(items, self._text, known=self._known)
        if d.rejected:
            self.rejected_items += d.rejected
            if self.rejected_items <= 10 or self.rejected_items % 1000 < d.rejected:  # a flood must not flood the log
                log.warning(
                    "opcua_unknown_client_handle",
                    client_handle=repr(d.bad_handle)[:40],
                    count=d.rejected,
                    total=self.rejected_items,
                )
        if d.keep_last.any():  # a Bad status without a value: the last value stays beside it
            d.values[d.keep_last] = self.tagdb.value[d.tags[d.keep_last]]
        self.ingest.add(d.tags, d.values, d.status, d.source_time)
        if d.texts:
            tags, texts, codes, times = zip(*d.texts)
            self.ingest.add_text(tags, texts, np.array(codes, np.uint32), np.array(times, np.int64))

    def flush(self) -> None:
        """Store the notifications since the last flush; a tag notified twice: its last value counts."""
        self.ingest.flush()

    # sessions

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ingest.run(FLUSH_S), name="opcua-flush")
            tg.create_task(self.diag.run(self.tagdb), name="opcua-diagnostics")
            for s in self.sessions.values():
                tg.create_task(self._session_loop(s), name=f"opcua:{s.url}")

    def _session_lost(self, s: Session, reason: str) -> None:
        if s.connected:
            log.warning("opcua_session_lost", endpoint=s.url, error=reason)
        s.connected = False
        self.ingest.link_lost(s.ids, s.ever)
        self.diag.link_down(self._session_devices[id(s)], f"{s.url}: {reason}")

    def _describe(self, s: Session, exc: BaseException) -> tuple[str, bool]:
        """A failure in words, and whether it is a configuration/security matter (an error, not a warning)."""
        if isinstance(exc, SecurityMismatch):
            return str(exc), True
        cert = s.security.certificate_path or "(none)"
        if isinstance(exc, ua.UaStatusCodeError):
            name = ua.StatusCode(exc.code).name
            if name in _HINTS:
                return f"{_HINTS[name].format(cert=cert)} ({name})", True
            return f"{name}: {exc}", False
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if "No matching endpoints" in text:
            return f"the server offers no endpoint with {s.security.policy}/{s.security.mode} ({text})", True
        return text, False

    async def _session_loop(self, s: Session) -> None:
        task = asyncio.current_task()
        while True:
            s.attempts += 1
            s.up = False
            try:
                await self._session(s)
            except Exception as exc:  # noqa: BLE001 - no library exception leaves the driver
                if task is not None and task.cancelling():
                    # We were cancelled, but asyncua turned the CancelledError into another error
                    # (Python 3.11's asyncio.wait_for loses a cancellation that races with the
                    # inner call's end): stop as asked, or the driver would retry for ever and
                    # a server shutdown would hang (seen under load: 2,000 retries in 30 min).
                    raise asyncio.CancelledError from exc
                reason, config_matter = self._describe(s, exc)
                self._session_lost(s, reason)
                if not s.up and reason != s.last_error:  # once per distinct reason, not once per retry
                    (log.error if config_matter else log.warning)(
                        "opcua_connect_failed",
                        endpoint=s.url,
                        security=f"{s.security.policy}/{s.security.mode}",
                        error=reason,
                        attempt=s.attempts,
                    )
                s.last_error = reason
            s.failures += 1
            await asyncio.sleep(self.backoff.delay(s.failures))

    async def _secure(self, client: Client, s: Session) -> None:
        """Find the server's endpoint for our policy and mode, check its certificate, set up security.

        The endpoints are read over an unsecured discovery channel, which every server keeps;
        a missing endpoint or a server certificate we do not trust (not the pinned one, not in
        the trust list) is said plainly here, before any secure channel opens. asyncua then
        refuses a server whose CreateSession shows another certificate than this one.
        """
        sec = s.security
        endpoints = await client.connect_and_get_server_endpoints()
        mode = ua.MessageSecurityMode.None_ if not sec.secure else getattr(ua.MessageSecurityMode, sec.mode)
        uri = _POLICIES[sec.policy].URI if sec.secure else security_policies.SecurityPolicyNone.URI
        match = [e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == uri]
        if not match:
            offered = sorted(
                {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}" for e in endpoints}
            )
            raise SecurityMismatch(
                f"the server offers no endpoint with security {sec.policy}/{sec.mode} "
                f"(it offers {', '.join(offered) or 'none'}): set security in tags.yaml to one of them"
            )
        if not sec.secure:
            return
        shown = uacrypto.der_from_x509(uacrypto.x509_from_der(match[0].ServerCertificate))
        if not shown:
            raise SecurityMismatch("the server shows no certificate on its secure endpoint")
        if sec.server_certificate is not None and shown != sec.server_certificate:
            raise SecurityMismatch(
                f"the server's certificate (thumbprint {trust.thumbprint(shown)}) is not the trusted "
                f"server_certificate (thumbprint {trust.thumbprint(sec.server_certificate)}): "
                "the server was re-keyed, or this is not the expected server"
            )
        if sec.server_certificate is None:
            host = urlparse(s.url).hostname or ""
            why = trust.refusal(sec.trusted, shown, host=host, application_uri=match[0].Server.ApplicationUri or "")
            if why is not None:
                raise SecurityMismatch(
                    f"{why}: if this is the expected server, add its certificate (or its CA) to the type's "
                    "security.trusted, or it is not the expected server"
                )
        client.application_uri = sec.application_uri  # the URI our certificate carries, as Part 6 requires
        await client.set_security(
            _POLICIES[sec.policy], sec.certificate, sec.private_key, server_certificate=shown, mode=mode
        )

    async def _subscribe(self, client: Client, s: Session, nodes: list) -> list[int]:
        """One subscription; every monitored item in bulk. Returns the tags the server refused."""
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=s.publishing_interval,
            RequestedLifetimeCount=10000,
            RequestedMaxKeepAliveCount=keepalive_count(client, s.publishing_interval),
            MaxNotificationsPerPublish=10000,
            PublishingEnabled=True,
            Priority=0,
        )
        sub = await create_subscription(client, params, functools.partial(self._on_message, s))
        requests = []
        for node, (tag, _, _) in zip(nodes, s.nodes):
            mparams = ua.MonitoringParameters(
                ClientHandle=tag, SamplingInterval=s.sampling[tag], QueueSize=1, DiscardOldest=True
            )
            if tag in s.deadband:
                mparams.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=ua.DeadbandType.Absolute,
                    DeadbandValue=s.deadband[tag],
                )
            requests.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=mparams,
                )
            )
        per_call = ITEMS_PER_CALL
        try:
            limit = await client.get_node(_MAX_ITEMS_PER_CALL).read_value()
            if isinstance(limit, int) and limit > 0:
                per_call = min(per_call, limit)
        except (ua.UaError, TimeoutError):
            pass  # the server does not publish its operation limits
        refused = []
        for i in range(0, len(requests), per_call):
            chunk = requests[i : i + per_call]
            results = await sub.create_monitored_items(chunk)
            refused += [
                r.RequestedParameters.ClientHandle for r, h in zip(chunk, results) if isinstance(h, ua.StatusCode)
            ]
        return refused

    async def _session(self, s: Session) -> None:
        timeout = max(d.timeout for d in s.devices)
        client = Client(s.url, timeout=max(timeout, 2.0), watchdog_intervall=max(timeout, 2.0))
        s.client = client
        try:
            async with asyncio.timeout(max(timeout, 2.0) * 5):
                await self._secure(client, s)
                await client.connect()
            namespaces = {uri: await client.get_namespace_index(uri) for uri in {n[1] for n in s.nodes}}
            nodes = [
                client.get_node(ua.NodeId(ua.String(ident), ua.Int16(namespaces[uri]))) for _, uri, ident in s.nodes
            ]
            s.node_of = {tag: node for node, (tag, _, _) in zip(nodes, s.nodes)}
            s.vtype.clear()
            refused = await self._subscribe(client, s, nodes)
            if refused:
                log.warning("opcua_nodes_refused", endpoint=s.url, count=len(refused), tag=self.tagdb.names[refused[0]])
                self.tagdb.set_status(np.array(refused), st.BAD_CONFIGURATION_ERROR)
            if not s.connected and s.failures:
                log.info("opcua_session_restored", endpoint=s.url, monitored=len(nodes) - len(refused))
            s.connected = s.ever = s.up = True
            s.failures = 0
            s.last_error = ""
            self.diag.link_up(self._session_devices[id(s)])
            while True:
                await asyncio.sleep(1.0)
                t0 = time.monotonic()
                await client.check_connection()  # a read of the server's state: a round trip
                self.diag.link_up(self._session_devices[id(s)], time.monotonic() - t0)
        finally:
            s.client = None
            try:
                async with asyncio.timeout(2):
                    await client.disconnect()
            except Exception:  # noqa: BLE001 - the session is gone either way
                pass

    # commands

    async def read_now(self, tags: Sequence[str]) -> None:
        """One Read of these tags' nodes per session, stored as notifications are.

        The subscription reports a change within its publishing interval (500 ms for the
        junctions): a command's read-back would wait that long for a value the server already
        has. A tag whose session is down is not read (DeviceUnreachable): the session task
        says what the link is.
        """
        by_session: dict[int, tuple[Session, list[int]]] = {}
        for name in tags:
            found = self._by_tag.get(name)
            if found is None:
                raise CommandRejected(f"unknown tag {name!r}")
            by_session.setdefault(id(found[0]), (found[0], []))[1].append(self.tagdb.id_of(name))
        for s, ids in by_session.values():
            client = s.client
            nodes = [s.node_of[tag] for tag in ids if tag in s.node_of]
            if not s.connected or client is None or len(nodes) != len(ids):
                raise DeviceUnreachable(f"no session with {s.url}")
            try:
                values = await client.read_attributes(nodes)
            except ua.UaStatusCodeError as exc:
                raise DeviceRejected(f"{s.url}: the server refused the read: {exc}") from None
            except _SESSION_ERRORS as exc:
                raise DeviceUnreachable(f"{s.url}: {type(exc).__name__}: {exc}") from None
            if len(values) != len(ids):
                raise DeviceRejected(f"{s.url}: {len(values)} values read for {len(ids)} nodes")
            items = [ua.MonitoredItemNotification(ClientHandle=tag, Value=dv) for tag, dv in zip(ids, values)]
            self._ingest(items)
            self.flush()

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
        try:
            vtype = s.vtype.get(tag)
            if vtype is None:  # the node's own data type: an Int32 node refuses a Double
                vtype = s.vtype[tag] = await node.read_data_type_as_variant_type()
            value = codec.variant(command.value, vtype)
            await node.write_value(ua.DataValue(value))
            deadline = time.monotonic() + max(d.timeout, 1.0) * 3
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if await node.read_value() == value.Value:
                    return
        except ua.UaStatusCodeError as exc:
            raise DeviceRejected(f"{d.name}: the server refused the write: {exc}") from None
        except _SESSION_ERRORS as exc:
            raise DeviceUnreachable(f"{d.name}: {type(exc).__name__}: {exc}") from None
        except (ValueError, TypeError) as exc:  # a value the node's type cannot hold
            raise DeviceRejected(f"{d.name}: {p.name} cannot take {command.value}: {exc}") from None
        raise DeviceRejected(f"{d.name}: the server did not apply {command.value} to {p.name} (read-back differs)")

    def diagnostics(self) -> dict[str, Any]:
        online = sum(len(s.devices) for s in self.sessions.values() if s.connected)
        return {
            "devices": sum(len(s.devices) for s in self.sessions.values()),
            "online": online,
            "notifications": self.notifications,
            "rejected_items": self.rejected_items,
        }


def create(config: Config, devices: list[Device], tagdb: TagDB) -> OpcUaDriver:
    return OpcUaDriver(config, devices, tagdb)
