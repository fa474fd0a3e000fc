"""The OPC UA server HMI clients connect to: asyncua Server + tag tree + publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import structlog
from asyncua import Server, ua

from scada.config import Config
from scada.opcua import DEFAULT_ENDPOINT
from scada.opcua.address_space import (
    NAMESPACE_URI,
    ROOT_NAME,
    AddressSpaceBuilder,
    TreeEditor,
    tag_values,
    variant_type,
)
from scada.opcua.asyncua_private.browse import hook_browse_encoding, hook_browse_reftypes
from scada.opcua.asyncua_private.concurrent_requests import cancel_in_flight, serve_concurrently
from scada.opcua.asyncua_private.datachange import hook_monitored_items
from scada.opcua.asyncua_private.nodes import address_space
from scada.opcua.asyncua_private.read import hook_read
from scada.opcua.asyncua_private.request_decoding import hook_request_decoding
from scada.opcua.asyncua_private.sessions import external_sessions, stop_clock
from scada.opcua.audit_events import install_audit_events
from scada.opcua.authorise import install_authorisation
from scada.opcua.bounds import install_bounds
from scada.opcua.browse_codec import browse_results
from scada.opcua.commands import CommandMethods, Request
from scada.opcua.conditions import _HAS_NOTIFIER, _SERVER, AlarmConditions
from scada.opcua.endpoints import configure_endpoints
from scada.opcua.group_actions import ZONES_PATH, GroupActions
from scada.opcua.history import TagHistory, history_source
from scada.opcua.login import install_login
from scada.opcua.operations import Operations
from scada.opcua.publisher import Publisher
from scada.opcua.read_codec import data_values
from scada.opcua.request_codec import browse_parameters, read_parameters
from scada.opcua.sessions import SessionCleanup
from scada.opcua.tag_read import TagReader
from scada.opcua.typed_ua import NodeId
from scada.opcua.writes import TagWrites, writable_tags
from scada.security.audit import AuditSink, MemoryAudit
from scada.security.settings import SecuritySettings
from scada.tagdb import TagDB

log = structlog.get_logger("scada.opcua")
_REF_ADDED = ua.ModelChangeStructureVerbMask.ReferenceAdded
_REF_DELETED = ua.ModelChangeStructureVerbMask.ReferenceDeleted
_NODE_ADDED = ua.ModelChangeStructureVerbMask.NodeAdded
_NODE_DELETED = ua.ModelChangeStructureVerbMask.NodeDeleted
# A command's Call or Write waits for the field's read-back (seconds): served beside the session's
# other requests (its Publish, Read, keep-alive), at most this many at once per connection.
CONCURRENT_COMMANDS = 16
# A command's answer waits at most this long for the publisher to show what confirmed it
# (HmiServer._command): milliseconds normally; beyond, the answer goes (a Read may be stale).
CATCH_UP_TIMEOUT = 2.0


class HmiServer:
    """Owns the asyncua server; ``start`` builds the tree, ``run`` publishes until cancelled."""

    def __init__(
        self,
        config: Config,
        tagdb: TagDB,
        endpoint: str = DEFAULT_ENDPOINT,
        name: str = "City supervision server",
        alarms=None,
        history=None,
        security: SecuritySettings | None = None,
        audit: AuditSink | None = None,
        commands: Request | None = None,
    ) -> None:
        self.config = config
        self.tagdb = tagdb
        self.alarms = alarms  # an AlarmSource (the engine, or a front's AlarmMirror), shown as OPC UA conditions
        # Served as OPC UA HistoryRead: a Historian (in-process) or a HistorySource (a front's mirror).
        self.history = history
        # None: no security layer (unit tests, embedding); `scada run` always gives its settings.
        self.security = security
        self.audit: AuditSink = audit if audit is not None else MemoryAudit()
        self.tag_history: TagHistory | None = None
        self.endpoint = endpoint
        self.name = name
        self.server = Server()
        self.publisher: Publisher | None = None
        self.conditions: AlarmConditions | None = None  # OPC UA Alarms & Conditions of the engine
        self.ns = 0
        self.node_count = 0
        self.sessions = SessionCleanup(self.server)  # what closed sessions leave behind, given back
        # Control: the core's command pipeline, reached by ``commands`` (the front's channel
        # request); None: no control from this server (every Write refused, no command method).
        self.commands_request = commands
        self.commands: CommandMethods | None = None
        self.groups: GroupActions | None = None
        self.writes: TagWrites | None = None
        # The work orders' folder (scada/opcua/operations.py): when the core runs them (operations.yaml
        # routes services) and answers this server's requests.
        self.operations: Operations | None = None

    async def start(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name(self.name)
        # Endpoints, logins, authorisation, bounds and audit events: each its module (scada/security
        # holds the settings, identities and audit records they share).
        await configure_endpoints(self.server, self.security, self.audit)
        await install_login(self.server, self.security, self.audit)
        await install_authorisation(self.server, self.security, self.audit)
        await install_bounds(self.server, self.security, self.audit)
        await install_audit_events(self.server, self.security, self.audit)
        # asyncua makes any session logging in as "admin" (any password) an administrator, whose
        # Writes skip the AccessLevel check: no remote administrator until roles exist.
        self.server.allow_remote_admin(False)
        self.ns = await self.server.register_namespace(NAMESPACE_URI)
        builder = AddressSpaceBuilder(self.server, self.ns, writable=self.commands_request is not None)
        values = builder.build(self.config)
        self.node_count = builder.node_count
        if self.commands_request is not None:
            self._install_control()
            await self._install_operations(self.config)
        if self.alarms is not None:
            self.conditions = AlarmConditions(self.server, self.ns, self.alarms)
            self.conditions.build()
            self.node_count += self.conditions.node_count
        if self.history is not None:
            self.tag_history = TagHistory(self.server, self.ns, self.config, self.tagdb, self.history)
            self.tag_history.writable = self._writable_names(self.config)
            await self.tag_history.install()
        vtypes = [variant_type(p) for p in self.config.point_defs()]
        self.publisher = Publisher(self.tagdb, values, vtypes)
        hook_monitored_items(self.server, self._items_changed)
        self.sessions.install()
        # Many nodes per Browse or Read (an HMI's tree walk, a screen's values): see each hook.
        hook_browse_reftypes(self.server)
        hook_browse_encoding(self.server, browse_results)
        hook_read(self.server, TagReader(builder.table), data_values)
        hook_request_decoding({ua.ReadParameters: read_parameters, ua.BrowseParameters: browse_parameters})
        await self.server.start()
        log.info(
            "opcua_server_started",
            endpoint=self.endpoint,
            namespace=NAMESPACE_URI,
            ns=self.ns,
            nodes=self.node_count,
            tags=len(values),
        )

    def _writable_names(self, config: Config) -> frozenset[str]:
        """The tag variables that accept Writes: the writable points, when control is installed."""
        return frozenset(writable_tags(config)) if self.commands_request is not None else frozenset()

    def _install_control(self) -> None:
        """The command methods on the devices, the group actions, the Writes of writable tags."""
        assert self.commands_request is not None
        self.commands = CommandMethods(self.server, self.ns, self._command)
        self.commands.install(self.config)
        self.groups = GroupActions(self.server, self.ns, self._command)
        self.groups.install(self.config)
        self.writes = TagWrites(self.server, self.ns, self._command)
        self.writes.install(self.config)
        kinds = frozenset(
            {ua.ObjectIds.CallRequest_Encoding_DefaultBinary, ua.ObjectIds.WriteRequest_Encoding_DefaultBinary}
        )
        serve_concurrently(self.server, kinds, CONCURRENT_COMMANDS)
        self.node_count += self.commands.node_count + self.groups.node_count

    async def _install_operations(self, config: Config) -> None:
        """The Operations folder, when the configuration has work orders (the core runs them then)."""
        if self.operations is not None or self.commands_request is None or not config.operations.services:
            return
        self.operations = Operations(
            self.server, self.ns, self.commands_request, config.operations, self._model_changed
        )
        await self.operations.build()
        self.node_count += self.operations.node_count

    async def _command(self, op: str, *args: Any) -> Any:
        """A command, group action or Write sent to the core's pipeline; its answer once this
        server shows what confirmed it.

        The ordering, end to end: the core's pipeline calls a command Good once the change
        batch holding the confirming read-back has been dispatched to its consumers
        (scada/control/pipeline.py ``_seen``); the front link sends the batches queued for the
        front before the answer (scada/front/link.py ``_flush_batches``), so the front's mirror
        has received that batch when the answer arrives (``tagdb.seq``; in the core's own loop,
        the TagDB has offered it). But a Read serves the publisher's columns, and a monitored
        item gets what the publisher queues for it, and the publisher takes batches from its
        queue in its own task, which may be batches behind (a busy front is niced). So the
        answer waits here until the publisher has published every batch received so far:
        then a Read sent after the answer shows the confirmed value, and the subscriptions'
        next notifications hold it (the stale Reads bench/bench_control.py found).
        """
        assert self.commands_request is not None
        answer = await self.commands_request(op, *args)
        publisher = self.publisher
        if publisher is not None:
            await publisher.caught_up(self.tagdb.seq, CATCH_UP_TIMEOUT)
        return answer

    def _items_changed(self, sub, mids: list[int]) -> None:
        if self.publisher is not None:  # the publisher of the current tag table (a reload replaces it)
            self.publisher.items_changed(sub, mids)

    async def run(self) -> None:
        assert self.publisher is not None, "start() first"
        if self.conditions is None and self.groups is None and self.operations is None:
            await self.publisher.run()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.publisher.run(), name="opcua-publisher")
            if self.conditions is not None:
                tg.create_task(self.conditions.run(), name="opcua-alarm-events")
            if self.groups is not None:
                tg.create_task(self.groups.run(), name="opcua-group-progress")
            if self.operations is not None:
                tg.create_task(self.operations.run(), name="opcua-operations")

    async def reload(
        self, config: Config, tagdb: TagDB, removed, added, retyped: list[str], alarms=None, history=None
    ) -> int:
        """Follow a new configuration while clients stay connected (scada/reload.py).

        Call with the publisher's task stopped. ``removed`` and ``added`` are the devices whose
        nodes go and come (a changed device whose tree differs is in both); ``retyped``: the
        equipment types whose shared property nodes must be rebuilt. The nodes of everything
        else stay, with their monitored items. The tag variables are then bound to the new
        tag table by name, and the alarm conditions rebuilt for the new engine. Clients are
        told with one GeneralModelChangeEvent from the Server object; returns its change count.
        """
        editor = TreeEditor(self.server, self.ns, writable=self.commands_request is not None)
        changes = []
        conditions_before = _condition_nodes(self.conditions)
        if self.conditions is not None:
            await self._drop_conditions()
        # The commands' and groups' nodes are installed again on the new tree (their types,
        # zones and signatures may have changed; a few nodes per type and group).
        zones_before = self._zone_nodes(config)
        if self.commands is not None and self.groups is not None:
            self.commands.detach()
            self.groups.detach()
        for d in removed:
            changes += await editor.remove_device(self.config, d)
        for name in retyped:
            await editor.remove_type(name)
        changes += editor.add_devices(config, added)
        if self.commands is not None and self.groups is not None and self.writes is not None:
            self.commands.install(config)
            self.groups.install(config)
            self.writes.reload(config)
        # Zones added or removed (tags.yaml's zones): the group objects come and go with them.
        zones_after = self._zone_nodes(config)
        changes += [(n, t, _NODE_DELETED) for n, t in zones_before.items() if n not in zones_after]
        changes += [(n, t, _NODE_ADDED) for n, t in zones_after.items() if n not in zones_before]
        aspace = address_space(self.server)
        changes += await self._reload_operations(config)
        if tagdb is not self.tagdb or self.publisher is None:
            values = tag_values(aspace, tagdb.names, self.ns)
            self.publisher = Publisher(tagdb, values, [variant_type(p) for p in config.point_defs()])
            self.publisher.record_now()  # a Read before the first batch sees the current values
        else:
            # The same tag table: the publisher resumes its queue (the batches of the pause, in
            # order); a snapshot first would be newer than them and values would go back in time.
            self.publisher.primed = True
        self.config, self.tagdb, self.alarms, self.history = config, tagdb, alarms, history
        if alarms is not None:
            old, self.conditions = self.conditions, AlarmConditions(self.server, self.ns, alarms)
            if old is not None:
                _carry_conditions(old, self.conditions)
            self.conditions.build()
        if self.tag_history is not None and history is not None:
            self.tag_history.writable = self._writable_names(config)
            _rebind_history(self.tag_history, config, tagdb, history)
        # Conditions of added and removed alarms (or devices) come and go too; a kept one is
        # rebuilt under the same NodeId: no change for a client.
        conditions_after = _condition_nodes(self.conditions)
        changes += [
            (nid, etype, ua.ModelChangeStructureVerbMask.NodeDeleted)
            for nid, etype in conditions_before.items()
            if nid not in conditions_after
        ]
        changes += [
            (nid, etype, ua.ModelChangeStructureVerbMask.NodeAdded)
            for nid, etype in conditions_after.items()
            if nid not in conditions_before
        ]
        if changes:
            await self._model_changed(changes)
        return len(changes)

    def _zone_nodes(self, config: Config) -> dict[ua.NodeId, ua.NodeId]:
        """The Zones folder and the zone objects of the running or the new configuration that
        the tree holds now, each with its type definition."""
        aspace = address_space(self.server)
        folder = NodeId(ZONES_PATH, self.ns)
        if aspace.get(folder) is None:
            return {}
        names = set(self.config.control.zones) | set(config.control.zones)
        zones = (NodeId(f"{ZONES_PATH}/{n}", self.ns) for n in names)
        out = {nid: NodeId(ua.ObjectIds.BaseObjectType) for nid in zones if aspace.get(nid) is not None}
        out[folder] = NodeId(ua.ObjectIds.FolderType)
        return out

    async def _reload_operations(self, config: Config) -> list:
        """The Operations folder and its orders stay over a reload; it comes or goes with the
        work orders (operations.yaml's services)."""
        ops = self.operations
        if ops is not None and not config.operations.services:
            ops.detach()
            self.operations = None
            return [(NodeId(ROOT_NAME, self.ns), NodeId(ua.ObjectIds.FolderType), _REF_DELETED)]
        if ops is not None:
            ops.config = config.operations
            return []
        await self._install_operations(config)
        if self.operations is None:
            return []
        return [(NodeId(ROOT_NAME, self.ns), NodeId(ua.ObjectIds.FolderType), _REF_ADDED)]

    async def _drop_conditions(self) -> None:
        """Remove the device conditions' nodes and notifier links (the server alarms' stay)."""
        old = self.conditions
        assert old is not None, "conditions to drop"
        old.close()
        aspace = address_space(self.server)
        if old.space is not None:  # the condition nodes and the devices' references to them
            old.space.detach()
        linked = {n for chain in old._notifiers for n in chain} | {_SERVER}
        for nid in linked:
            nd = aspace.get(nid)
            if nd is not None:
                nd.references[:] = [
                    r
                    for r in nd.references
                    if not (r.ReferenceTypeId == _HAS_NOTIFIER and r.NodeId.NamespaceIndex == self.ns)
                ]

    async def _model_changed(self, changes) -> None:
        """One GeneralModelChangeEvent (Part 3 §9.32.7) from the Server object: clients browse again.

        A failure is logged, not raised: the tree has changed already, and a raise would have the
        reload undone for a notification (clients that missed it see the nodes when they browse).
        """
        try:
            await self._trigger_model_change(changes)
        except Exception:  # noqa: BLE001
            log.exception("opcua_model_change_event_failed", changes=len(changes))

    async def _trigger_model_change(self, changes) -> None:
        gen = await self.server.get_event_generator(ua.ObjectIds.GeneralModelChangeEventType, ua.ObjectIds.Server)
        gen.event.Changes = [
            ua.ModelChangeStructureDataType(Affected=nid, AffectedType=typedef, Verb=int(verb))
            for nid, typedef, verb in changes
        ]
        # asyncua records the field's DataType NodeId where a Variant needs a VariantType: an
        # array of structures travels as ExtensionObjects.
        gen.event.data_types["Changes"] = ua.VariantType.ExtensionObject
        gen.event.Message = ua.LocalizedText(f"configuration reloaded: {len(changes)} node changes")
        gen.event.Severity = 100
        await gen.trigger()

    async def stop(self) -> None:
        self.sessions.close()
        if self.conditions is not None:
            self.conditions.close()
        await cancel_in_flight(self.server)
        await stop_asyncua_server(self.server)


def _condition_nodes(conditions: AlarmConditions | None) -> dict[ua.NodeId, ua.NodeId]:
    """Each device condition's NodeId -> its event type (its type definition)."""
    if conditions is None:
        return {}
    eng = conditions.engine
    return {
        cid: conditions._defs[int(eng.inst_def[i])].etype
        for i, cid in enumerate(conditions._cond_ids)
        if cid is not None
    }


def _carry_conditions(old: AlarmConditions, new: AlarmConditions) -> None:
    """What of the old conditions outlives a reload: the EventId sequence (an EventId is never
    reused), the server alarms' nodes and retained events, the session names for the journal."""
    new._prefix, new._seq = old._prefix, old._seq
    new._system, new._system_nodes, new._system_retained = old._system, old._system_nodes, old._system_retained
    new._session_names = old._session_names


def _rebind_history(th: TagHistory, config: Config, tagdb: TagDB, history) -> None:
    """HistoryRead follows the new tag table (history is stored by tag name: nothing is lost).

    ``history``: the new Historian, or a HistorySource (a front's mirror rebound to the new names).
    """
    th.config, th.tagdb, th.source = config, tagdb, history_source(history)
    th.historized = np.asarray(config.history_table()["enabled"], bool)
    th.vtypes = [variant_type(p) for p in config.point_defs()]
    th.mark_variables()


async def stop_asyncua_server(server: Server, timeout: float = 10.0) -> None:
    """Stop an asyncua server, and the sessions of clients still connected to it.

    asyncua 2.1's ``Server.stop`` closes the sockets but leaves connected clients' sessions
    (their timeout watchdog and subscription tasks) running until the session timeout:
    close them first. A stuck session must not block shutdown either.
    """
    try:
        async with asyncio.timeout(timeout):
            for session in external_sessions(server):
                await session.close_session(delete_subs=True)
            await stop_clock(server)  # else the stop waits up to 1 s for its CurrentTime loop
            await server.stop()
    except Exception as exc:  # noqa: BLE001
        log.warning("opcua_server_stop_failed", error=repr(exc))
