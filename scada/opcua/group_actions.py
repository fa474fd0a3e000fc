"""Group actions ("one click"): DimAll, OpenZone, CloseZone, SetCorridorPlan on commune folders,
class folders and zones, and their progress while they run.

One method node per action (``_types/_groups/<Action>``), referenced from every group object
that has devices of the action's class with its command: a commune folder, a class folder of
that class, each zone object under ``Zones``. A call becomes a
:class:`~scada.control.model.GroupRequest` to the core (``request("group_command", ...)``), whose
fan-out runs every device through the command pipeline (bounded) and audits one record plus one
per device. The call returns, per device, its name (``Devices``) and status (``Statuses``).

Progress: each group object has a ``GroupAction`` object (Running, Action, User, Total, Done,
Failed), updated from the core's ``group_progress`` messages, and a ProgressEvent from the
group object per step (at most one per ``EVENT_INTERVAL`` and group) and at the end.
The messages are coalesced: only the latest state of each group waits (bounded by the groups).
Done counts every device finished (confirmed or failed), Failed those of them that failed, as
the core counts them; the event's Progress (0-100) is Done's share of Total.

Communes a caller does not see (``see_other_communes: false``, scada/opcua/visibility.py): a
group action's answer never names their devices. Their devices are **left out** of Devices and
Statuses, as visibility leaves their nodes out of every other service (a node the user does not
see is one that does not exist for them); the core refused them anyway (a user who does not see
a commune may not act on it) and audits them with their names. A zone crossing communes answers
with the caller's devices only; a group with none of them (every device hidden) answers
BadUserAccessDenied without any name; a commune or class folder of a hidden commune answers
BadNodeIdUnknown, like every other service on its nodes, and is not sent to the core. The
progress variables and events carry counts, never names.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from asyncua import Server, ua

from scada.config import Config
from scada.control.model import GROUP_ACTIONS, ZONE_PREFIX, CommandResult, GroupRequest
from scada.opcua.address_space import ROOT_NAME, AddressSpaceBuilder, unlink_nodes
from scada.opcua.asyncua_private.nodes import address_space
from scada.opcua.authorise import audit_value, authorisation
from scada.opcua.commands import (
    ArgumentError,
    Request,
    argument,
    arguments,
    ask_core,
    call_result,
    caller_of,
    input_argument,
    type_arguments,
)
from scada.opcua.typed_ua import NodeId, StatusCode
from scada.security.context import current

log = structlog.get_logger("scada.opcua")

SC = ua.StatusCodes
V = ua.VariantType
ZONES_FOLDER = "Zones"
ZONES_PATH = "_zones"  # NodeIds of the zone objects: _zones/<name> (never a commune's path)
GROUPS_PATH = "_types/_groups"
PROGRESS_OBJECT = "GroupAction"
EVENT_INTERVAL = 0.5  # s between two progress events of one group (the last one always goes)
# (name, variant type, initial value, description)
PROGRESS_VARIABLES = (
    ("Running", V.Boolean, False, "a group action is running"),
    ("Action", V.String, "", "the last group action"),
    ("User", V.String, "", "who started it"),
    ("Total", V.UInt32, 0, "devices it commands"),
    ("Done", V.UInt32, 0, "devices finished so far, confirmed or failed (Done - Failed: confirmed)"),
    ("Failed", V.UInt32, 0, "devices finished so far that failed: refused or not confirmed (counted in Done)"),
)
DEVICES = argument("Devices", ua.ObjectIds.String, "the devices commanded", array=True)
STATUSES = argument("Statuses", ua.ObjectIds.StatusCode, "each device's result, in the order of Devices", array=True)


@dataclass
class _Progress:
    """A group's progress as the core reports it (scada/control/groups.py): ``done`` counts every
    device finished, confirmed or not; ``failed`` those of them that failed (never more than
    ``done``)."""

    action: str
    user: str
    total: int
    done: int
    failed: int
    finished: bool


def progress_percent(p: _Progress) -> int:
    """ProgressEventType's Progress (0-100): the share of the devices finished (100 at the end)."""
    if p.finished or p.total <= 0:
        return 100
    return max(0, min(100, 100 * p.done // p.total))


class GroupActions:
    """The group action methods of a server, the groups' progress variables and events."""

    def __init__(self, server: Server, ns: int, request: Request) -> None:
        self.server = server
        self.ns = ns
        self.request = request
        self.aspace = address_space(server)
        self.node_count = 0
        self.methods: dict[str, ua.NodeId] = {}  # action -> its method node
        self._groups: dict[str, str] = {}  # group object path -> GroupRequest.group
        self._communes: dict[str, str] = {}  # device -> its commune (what a caller may not see)
        self._actions: dict[str, frozenset[str]] = {}  # group object path -> its actions
        self._built: list[ua.NodeId] = []  # every node this made (a reload removes them)
        self._refs: dict[str, ua.ReferenceDescription] = {}  # action -> reference to its method
        self._pending: dict[str, _Progress] = {}  # group -> its latest progress not shown yet
        self._last_event: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._event_gen: Any = None

    # -- building ---------------------------------------------------------------------------

    def install(self, config: Config) -> None:
        builder = AddressSpaceBuilder(self.server, self.ns)
        available = self._available(config)
        if not available:
            return
        root = self.aspace[NodeId(ROOT_NAME, self.ns)]
        types = self.aspace[NodeId("_types", self.ns)]
        folder = builder.add_object(types, GROUPS_PATH, "_groups", folder=True)
        self._built.append(folder.nodeid)
        for action in sorted(available):
            ga = GROUP_ACTIONS[action]
            defs = type_arguments(config, ga.cls, ga.command)
            inputs = [input_argument(defs[name]) for name in ga.arguments if name in defs]
            desc = f"{ga.command} on every {ga.cls} device of the group; per device its name and status"
            nd = builder.add_method(folder, f"{GROUPS_PATH}/{action}", action, desc, inputs, [DEVICES, STATUSES])
            self.aspace.add_method_callback(nd.nodeid, self._callback(action, config))
            self.methods[action] = nd.nodeid
            self._built += [nd.nodeid, *(r.NodeId for r in nd.references if r.IsForward)]
            self._refs[action] = next(r for r in folder.references if r.IsForward and r.NodeId == nd.nodeid)
        # Commune and class folders: the actions whose class they hold.
        classes_of: dict[str, set[str]] = {}
        self._communes = {d.name: d.commune for d in config.devices}
        for d in config.controlled:
            cls = config.types[d.type].cls
            classes_of.setdefault(d.commune, set()).add(cls)
            classes_of.setdefault(f"{d.commune}/{cls}", set()).add(cls)
        for path, classes in classes_of.items():
            self._offer(builder, path, path, classes, available)
        zones = config.control.zones
        if zones:
            zfolder = builder.add_object(root, ZONES_PATH, ZONES_FOLDER, folder=True)
            self._built.append(zfolder.nodeid)
            for name, zone in zones.items():
                path = f"{ZONES_PATH}/{name}"
                zn = builder.add_object(zfolder, path, name, folder=False)
                self._built.append(zn.nodeid)
                classes = set(zone.classes) if zone.classes else {GROUP_ACTIONS[a].cls for a in available}
                if zone.devices:  # a listed zone: the classes of its devices
                    listed = {config.types[d.type].cls for d in config.controlled if d.name in zone.devices}
                    classes &= listed
                self._offer(builder, path, ZONE_PREFIX + name, classes, available)
        self.node_count += builder.node_count
        authz = authorisation(self.server)
        if authz is not None:  # the core audits them ("group_command" and one per device)
            authz.self_audited.update(self.methods.values())

    @staticmethod
    def _available(config: Config) -> set[str]:
        """The actions some type of their class supports (by its command)."""
        return {
            action
            for action, ga in GROUP_ACTIONS.items()
            if any(
                config.types[t].cls == ga.cls and ga.command in cmds
                for t, cmds in config.control.commands.items()
                if t in config.types
            )
        }

    def _offer(self, builder: AddressSpaceBuilder, path: str, group: str, classes: set[str], available) -> None:
        actions = frozenset(a for a in available if GROUP_ACTIONS[a].cls in classes)
        nd = self.aspace.get(NodeId(path, self.ns))
        if nd is None or not actions:
            return
        self._groups[path] = group
        self._actions[path] = actions
        nd.references.extend(self._refs[a] for a in sorted(actions))
        prog_path = f"{path}/{PROGRESS_OBJECT}"
        prog = builder.add_object(nd, prog_path, PROGRESS_OBJECT, folder=False)
        self._built.append(prog.nodeid)
        for name, vtype, value, desc in PROGRESS_VARIABLES:
            var = builder.add_variable(prog, f"{prog_path}/{name}", name, value, vtype, desc)
            self._built.append(var.nodeid)

    def detach(self) -> None:
        """Remove what :meth:`install` made (before a reload installs again)."""
        gone = set(self._built) | set(self.methods.values())
        for path in self._groups:
            nd = self.aspace.get(NodeId(path, self.ns))
            if nd is not None:
                nd.references[:] = [r for r in nd.references if r.NodeId not in gone]
        unlink_nodes(self.aspace, gone)
        authz = authorisation(self.server)
        if authz is not None:
            authz.self_audited.difference_update(self.methods.values())
        self.methods.clear()
        self._groups.clear()
        self._communes.clear()
        self._actions.clear()
        self._built.clear()
        self._refs.clear()

    def reload(self, config: Config) -> None:
        self.detach()
        self.install(config)

    # -- calls ------------------------------------------------------------------------------

    def _callback(self, action: str, config: Config):
        ga = GROUP_ACTIONS[action]
        defs_by_name = type_arguments(config, ga.cls, ga.command)
        defs = [defs_by_name[n] for n in ga.arguments if n in defs_by_name]

        async def call(object_id: ua.NodeId, *inputs: Any) -> Any:
            try:
                return await self._call(action, defs, object_id, inputs)
            except Exception as exc:  # noqa: BLE001 - a client gets a status, the session lives
                log.error("opcua_group_action_failed", action=action, error=repr(exc))
                return call_result(SC.BadInternalError)

        return call

    async def _call(self, action: str, defs, object_id: ua.NodeId, inputs) -> Any:
        ident = object_id.Identifier
        path = ident if object_id.NamespaceIndex == self.ns and isinstance(ident, str) else ""
        group = self._groups.get(path)
        if group is None or action not in self._actions.get(path, ()):
            return self._refused(action, object_id.to_string(), inputs, SC.BadMethodInvalid)
        ctx = current()
        identity = ctx.identity if ctx is not None else None
        if identity is not None and not group.startswith(ZONE_PREFIX) and not identity.sees(group.partition("/")[0]):
            # A folder of a commune the caller does not see: as for a node that does not exist.
            return self._refused(action, group, inputs, SC.BadNodeIdUnknown)
        try:
            args = arguments(defs, inputs)
        except ArgumentError as err:
            return self._refused(action, group, inputs, err.status, err.per_argument)
        request = GroupRequest(group, action, args, caller_of(ctx))
        answer = await ask_core(self.request, "group_command", request.to_wire())
        if isinstance(answer, int):
            return call_result(answer)
        results = [CommandResult.from_wire(r) for r in answer]
        if len(results) == 1 and results[0].device == group and not results[0].good:
            # Refused whole (not allowed, busy, no such group...): the call's own status.
            return call_result(results[0].status)
        if identity is not None and results:
            shown = [r for r in results if identity.sees(self._communes.get(r.device, ""))]
            if not shown:  # every device in communes the caller does not see: no name given
                return call_result(SC.BadUserAccessDenied)
            results = shown
        log.info(
            "opcua_group_action",
            group=group,
            action=action,
            user=request.caller.user,
            devices=len(results),
            failed=sum(not r.good for r in results),
        )
        return call_result(
            SC.Good,
            [
                ua.Variant([r.device for r in results], V.String, is_array=True),
                ua.Variant([StatusCode(r.status) for r in results], V.StatusCode, is_array=True),
            ],
        )

    def _refused(self, action: str, target: str, inputs, status: int, per_arg=()) -> Any:
        authz = authorisation(self.server)
        if authz is not None:
            authz.refuse(
                "group_command",
                target,
                {"action": action, "arguments": [audit_value(v) for v in inputs]},
                status,
                current(),
            )
        return call_result(status, per_argument=per_arg)

    # -- progress ---------------------------------------------------------------------------

    def group_path(self, group: str) -> str | None:
        """The object path of a GroupRequest.group ("Dijon", "Dijon/lighting", "zone:x")."""
        path = f"{ZONES_PATH}/{group[len(ZONE_PREFIX) :]}" if group.startswith(ZONE_PREFIX) else group
        return path if path in self._groups else None

    def progress(self, group: str, action: str, user: str, total: int, done: int, failed: int, finished: bool) -> None:
        """The core's ``group_progress`` message: shown by :meth:`run` (the latest state of a group)."""
        if self.group_path(str(group)) is None:
            return
        self._pending[str(group)] = _Progress(
            str(action), str(user), int(total), int(done), int(failed), bool(finished)
        )
        self._wake.set()

    async def run(self) -> None:
        """Show the groups' progress as it comes (a task of the front, until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            for group, p in pending.items():
                await self._show(group, p)

    async def _show(self, group: str, p: _Progress) -> None:
        path = self.group_path(group)
        if path is None:
            return
        base = f"{path}/{PROGRESS_OBJECT}"
        values = {
            "Running": (not p.finished, V.Boolean),
            "Action": (p.action, V.String),
            "User": (p.user, V.String),
            "Total": (p.total, V.UInt32),
            "Done": (p.done, V.UInt32),
            "Failed": (p.failed, V.UInt32),
        }
        for name, (value, vtype) in values.items():
            await self.server.write_attribute_value(
                NodeId(f"{base}/{name}", self.ns), ua.DataValue(ua.Variant(value, vtype))
            )
        now = time.monotonic()
        if p.finished or now - self._last_event.get(group, 0.0) >= EVENT_INTERVAL:
            self._last_event[group] = now
            if p.finished:
                self._last_event.pop(group, None)
            await self._event(path, group, p)

    async def _event(self, path: str, group: str, p: _Progress) -> None:
        try:
            if self._event_gen is None:
                self._event_gen = await self.server.get_event_generator(
                    ua.ObjectIds.ProgressEventType, ua.ObjectIds.Server
                )
            gen = self._event_gen
            ev = gen.event
            ev.SourceNode = NodeId(path, self.ns)
            ev.SourceName = group
            state = "finished" if p.finished else "running"
            ev.Message = ua.LocalizedText(
                f"{p.action} on {group} by {p.user}: {state}, {p.done}/{p.total} done, {p.failed} failed"
            )
            ev.Severity = 100
            ev.Context = ua.Variant(group, V.String)
            ev.Progress = progress_percent(p)
            await gen.trigger()
        except Exception as exc:  # noqa: BLE001 - a progress event is information, never a failure
            log.warning("opcua_group_progress_event_failed", group=group, error=repr(exc))
