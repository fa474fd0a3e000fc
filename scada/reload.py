"""Configuration changed while the server runs (``scada reload`` or SIGHUP).

The new files are loaded and validated first: a wrong file leaves the running configuration
untouched, and its error (file:line) is logged and written to the result file that
``scada reload`` prints. A valid configuration is compared with the running one
(:func:`diff`), then applied between two batches (:func:`apply`):

1. The drivers stop: no batch reaches the old tag table any more. Every driver restarts,
   not only those whose devices changed, because tag ids are positions in the tag table
   and any added or removed device moves the ids of the others (re-polled at once).
2. The consumers (alarms, historian, OPC UA publisher) finish the batches already queued
   (bounded wait), then stop: the historian flushes and closes its store.
3. A new tag table takes over, by tag name, the last value, status and times of every tag
   it keeps (:meth:`TagDB.carry_from`).
4. A new alarm engine takes over the state of every instance (alarm, device) it keeps,
   whether or not the definition changed: the first evaluation then judges it by the new
   definition (an alarm whose new limit no longer holds clears, journaled; one that still
   holds is not announced again). A removed instance that was shown is journaled REMOVED
   and its saved state deleted.
5. A new historian opens the same store: history is stored by tag name, so every kept tag
   keeps its history.
6. The OPC UA tree loses the nodes of removed devices and gains those of added ones (a
   device whose tree changed, e.g. its type's points, is both), the conditions are rebuilt
   for the new engine, and one GeneralModelChangeEvent tells the clients.
7. The components are swapped in the Application and their tasks restarted.

Lighter paths when less changed (:class:`ConfigDiff` says what): only alarms (or services) -
the engine and the OPC UA conditions are rebuilt, the field and the tag table go on
(:func:`_apply_alarms`); only what the front shows (operations.yaml; tags.yaml's commands or
zones without a device whose tree changes) - the front alone is rebuilt on the running
components (:func:`_apply_front`): its Open311 server, Operations folder and map feed, its
command methods, group actions and Zones; only the interlocks, schedules or control settings -
the command pipeline and the schedules follow (nothing of the front or the field restarts).

A failure in steps 3-7 (not a configuration error: those are caught by validation) puts the
old components back, the OPC UA side included, and restarts every one of them whatever fails on
the way; it is reported like a wrong file. A reload cancelled because the server stops is not
rolled back: nothing is restarted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from common.yamlsrc import ConfigError
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import JournalRow
from scada.alarms.states import State
from scada.config import Config, Device, load_config
from scada.security.audit import record_of
from scada.tagdb import TagDB

log = structlog.get_logger("scada.reload")

PID_FILE = "scada.pid"  # in the server's --data folder: {"pid": ..., "config": ...}
RESULT_FILE = "reload-result.json"  # written after each reload request, read by `scada reload`
DRAIN_TIMEOUT = 10.0  # s: the consumers' queued batches are processed before the switch
# one_shot: a OneShotShelved alarm stays one; last_event_ns and event_seq make its EventId: an
# HMI acknowledging with the EventId it was shown before the reload is still understood.
COPIED_ALARM_COLUMNS = (
    "state",
    "raw",
    "cond",
    "raw_since",
    "cond_since",
    "suppressed",
    "shelved_until",
    "prev_value",
    "prev_time",
    "pending",
    "announced_since",
    "escalated",
    "one_shot",
    "last_event_ns",
    "event_seq",
)


# tags.yaml's control sections the front shows: the command methods and their arguments, the
# group actions (offered where a type has their command) and the Zones. The interlocks, the
# schedules and the settings are the core's alone (its pipeline and schedules follow a reload).
FRONT_CONTROL = frozenset({"commands", "zones"})


@dataclass
class ConfigDiff:
    """What a reload changes, by device and alarm name."""

    devices_added: list[str] = field(default_factory=list)
    devices_removed: list[str] = field(default_factory=list)
    devices_changed: list[str] = field(default_factory=list)
    alarms_added: list[str] = field(default_factory=list)
    alarms_removed: list[str] = field(default_factory=list)
    alarms_changed: list[str] = field(default_factory=list)
    nodes_removed: list[Device] = field(default_factory=list)  # old devices whose OPC UA nodes go
    nodes_added: list[Device] = field(default_factory=list)  # new devices whose OPC UA nodes come
    types_rebuilt: list[str] = field(default_factory=list)  # types whose shared property nodes are rebuilt
    operations_changed: list[str] = field(default_factory=list)  # operations.yaml's sections that differ
    # tags.yaml's control sections that differ (commands, interlocks, zones, schedules, settings)
    control_changed: list[str] = field(default_factory=list)

    @property
    def engines_untouched(self) -> bool:
        """Nothing changes for the drivers, the tag table nor the alarm engine (operations.yaml may)."""
        return not (
            self.devices_added
            or self.devices_removed
            or self.devices_changed
            or self.alarms_added
            or self.alarms_removed
            or self.alarms_changed
        )

    @property
    def empty(self) -> bool:
        return self.engines_untouched and not self.operations_changed and not self.control_changed

    @property
    def front_changed(self) -> bool:
        """Something the OPC UA front shows changed (its Open311 server, Operations folder, map
        feed; its command methods, group actions and Zones), whether or not the engines did."""
        return bool(self.operations_changed or FRONT_CONTROL.intersection(self.control_changed))

    def summary(self) -> dict[str, list[str]]:
        prefixes = ("devices_", "alarms_", "operations_", "control_")
        return {k: v for k, v in dataclasses.asdict(self).items() if k.startswith(prefixes) and v}


def _commands_key(config: Config, d: Device) -> tuple:
    """The device's commands (tags.yaml ``commands:``) apart from their lines: whether it has any
    decides its Control tags (the tag table), their signatures its methods (its nodes)."""
    commands = config.control.commands.get(d.type, {})
    return tuple((name, dataclasses.replace(c, source="")) for name, c in sorted(commands.items()))


def _device_key(config: Config, d: Device) -> tuple:
    """A device as configured, apart from where it sits in the file (its ids, its line)."""
    return dataclasses.replace(d, first_tag_id=0, index=0, source=""), config.types[d.type], _commands_key(config, d)


def _tree_key(config: Config, d: Device) -> tuple:
    """What the device's OPC UA nodes show: a change here replaces them (its points, its Control
    object and its command methods with their arguments)."""
    t = config.types[d.type]
    methods = tuple((name, c.arguments, c.critical) for name, c in _commands_key(config, d))
    return (
        d.commune,
        t.cls,
        t.name,
        tuple((p.name, p.kind, p.unit, p.range, p.enum, p.description) for p in t.points),
        methods,
    )


def _unplaced(value: Any) -> Any:
    """``value`` without the file:line of what it holds: an edit above a zone or a command moves
    it without changing it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        placed = any(f.name == "source" for f in dataclasses.fields(value))
        return dataclasses.replace(value, source="") if placed else value
    if isinstance(value, Mapping):
        return {k: _unplaced(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_unplaced(v) for v in value)
    return value


def _type_props(t) -> tuple:
    return tuple((p.name, p.kind, p.unit, p.range) for p in t.points)


def diff(old: Config, new: Config) -> ConfigDiff:
    out = ConfigDiff()
    old_devs = {d.name: d for d in old.devices}
    new_devs = {d.name: d for d in new.devices}
    out.devices_removed = [n for n in old_devs if n not in new_devs]
    out.devices_added = [n for n in new_devs if n not in old_devs]
    out.nodes_removed = [old_devs[n] for n in out.devices_removed]
    out.nodes_added = [new_devs[n] for n in out.devices_added]
    for name in old_devs.keys() & new_devs.keys():
        a, b = old_devs[name], new_devs[name]
        if _device_key(old, a) != _device_key(new, b):
            out.devices_changed.append(name)
            if _tree_key(old, a) != _tree_key(new, b):
                out.nodes_removed.append(a)
                out.nodes_added.append(b)
    out.devices_changed.sort()
    out.nodes_added.sort(key=lambda d: d.index)
    out.types_rebuilt = [
        n for n, t in old.types.items() if n not in new.types or _type_props(t) != _type_props(new.types[n])
    ]
    # An alarm is compared without its file:line: an edit above it moves it without changing it.
    old_alarms = {a.name: dataclasses.replace(a, source="") for a in old.alarms.alarms}
    new_alarms = {a.name: dataclasses.replace(a, source="") for a in new.alarms.alarms}
    out.alarms_removed = [n for n in old_alarms if n not in new_alarms]
    out.alarms_added = [n for n in new_alarms if n not in old_alarms]
    out.alarms_changed = sorted(n for n in old_alarms.keys() & new_alarms.keys() if old_alarms[n] != new_alarms[n])
    if old.alarms.services != new.alarms.services and not out.alarms_changed:
        # A service's deadline changed: the engine is rebuilt; say so as a change of every alarm.
        out.alarms_changed = sorted(old_alarms.keys() & new_alarms.keys())
    out.operations_changed = [
        f.name
        for f in dataclasses.fields(new.operations)
        if getattr(old.operations, f.name) != getattr(new.operations, f.name)
    ]
    out.control_changed = [
        f.name
        for f in dataclasses.fields(new.control)
        if _unplaced(getattr(old.control, f.name)) != _unplaced(getattr(new.control, f.name))
    ]
    return out


def carry_alarms(old: AlarmEngine, new: AlarmEngine) -> tuple[int, list[int]]:
    """Copy the state of every instance both engines have; return (carried, old instances gone)."""
    pairs = [(i, old._index[key]) for key, i in new._index.items() if key in old._index]
    kept = {j for _, j in pairs}
    if pairs:
        ni = np.fromiter((i for i, _ in pairs), np.int64, len(pairs))
        oi = np.fromiter((j for _, j in pairs), np.int64, len(pairs))
        for col in COPIED_ALARM_COLUMNS:
            getattr(new, col)[ni] = getattr(old, col)[oi]
        for i, j in pairs:
            if j in old.extra:
                new.extra[i] = dict(old.extra[j])
    new._pending_idx = np.flatnonzero(new.pending).astype(np.int64)
    new._announced_at = old._announced_at
    new.transitions, new.evaluations = old.transitions, old.evaluations
    carry_server_state(old, new)
    return len(pairs), [j for j in range(old.n) if j not in kept]


def carry_server_state(old: AlarmEngine, new: AlarmEngine) -> None:
    """Hand over what the old engine may still change while the reload awaits (the OPC UA
    side): the server alarms and the journal backlog. Called again just before the swap
    (server alarms raised or cleared meanwhile, on the old engine, are not lost)."""
    told = new._system_events  # what the new engine's subscribers were given (the first carry's)
    new._system = dict(old._system)
    new._system_events = dict(old._system_events)
    # A server alarm raised or cleared on the old engine between the two carries (a front's
    # listener bound meanwhile) was journaled and told to the old engine's subscribers only: the
    # new one's (the OPC UA conditions, the front) hear it now, or an HMI would show it for good.
    changed = [e for key, e in new._system_events.items() if told.get(key) is not e]
    changed += [
        dataclasses.replace(e, time_ns=old.clock(), event="CLEAR", state=State.NORMAL, active=False)
        for key, e in told.items()
        if key not in new._system_events
    ]
    if changed:
        for notify in new.subscribers:
            if notify not in old.subscribers:  # one on both engines heard it from the old one
                notify(changed)
    # A journal outage: the rows the old engine could not write (its final flush failed too)
    # wait in the new one, first, and are retried soon; storage_failing, carried above, clears
    # when they are written. Instances are renumbered: the states to rewrite follow by key; a
    # removed instance's state is deleted (_journal_removed), not rewritten.
    renumber = {j: new._index[key] for key, j in old._index.items() if key in new._index}
    new.writer.take_over(old.writer, renumber)


def _journal_removed(old: AlarmEngine, new: AlarmEngine, gone: list[int]) -> None:
    """A removed instance that was shown leaves a REMOVED row; its saved state is forgotten.

    The rows go through the new engine's journal writes: behind a backlog of a journal outage
    they wait there, in order.
    """
    if not gone:
        return
    now = old.clock()
    rows = []
    for j in gone:
        state = State(int(old.state[j]))
        if state != State.NORMAL:
            a = old.defs[int(old.inst_def[j])]
            d = old.config.devices[int(old.inst_dev[j])]
            rows.append(
                JournalRow(
                    now,
                    a.name,
                    d.name,
                    d.commune,
                    None,
                    a.priority,
                    a.severity,
                    "REMOVED",
                    State.NORMAL.name,
                    "",
                    f"was {state.name}: removed from the configuration",
                    a.service,
                    "alarm removed from the configuration",
                )
            )
            log.warning("alarm_removed_by_reload", alarm=a.name, device=d.name, state=state.name)
    if rows:
        new._journal_write(rows, ())
    keys = [(old._name(j), old._device(j)) for j in gone]
    try:
        old.journal.delete_states(keys)
    except Exception as exc:  # noqa: BLE001 - the new configuration runs; a restart ignores unknown saved states
        log.error("alarm_removed_states_not_deleted", error=repr(exc), instances=len(gone))


async def _drain(tagdb: TagDB, timeout: float) -> None:
    """Wait until every consumer has taken the batches queued for it (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while any(not c.queue.empty() for c in tagdb.consumers) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # A consumer takes a batch, then processes it before its next get: one more turn of the loop.
    await asyncio.sleep(0)


async def _drain_alarm_events(conditions, timeout: float) -> None:
    """Let the alarm events already queued reach the OPC UA clients before the engine changes."""
    deadline = time.monotonic() + timeout
    while conditions is not None and conditions._queue and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def apply(app, new: Config) -> ConfigDiff:
    """Apply a validated configuration to the running Application (see the module docstring)."""
    from scada.app import build_drivers

    old = app.config
    d = diff(old, new)
    if d.engines_untouched:
        if d.front_changed:
            await _apply_front(app, new, d)
            return d
        # Lines and comments may have moved: later messages cite the new file. The control
        # sections the front does not show are the pipeline's and the schedules' (they follow
        # app.config: _reload_commands here, the schedules in Application.reload).
        app.config = new
        # What the front shows is the same: it takes the new objects without a rebuild. Its
        # configuration must be the running one: a later failed reload judges by it whether the
        # front's tree was edited (_undo_hmi).
        app.hmi.config = new
        _reload_commands(app)
        return d
    if not (d.devices_added or d.devices_removed or d.devices_changed) and old.types == new.types:
        await _apply_alarms(app, new, d)
        return d
    # No command starts on a driver being stopped (BadNoCommunication until the pipeline follows
    # the new drivers, or the old ones rebuilt by a rollback).
    app.commands.suspend_drivers()
    await app.stop_tasks([n for n in app.task_names() if n.startswith("driver:")])
    await _drain(app.tagdb, DRAIN_TIMEOUT)
    conditions = app.hmi.conditions
    await _drain_alarm_events(conditions, DRAIN_TIMEOUT)
    await app.stop_tasks(["alarms", "historian", "opcua-publisher"])
    saved = (app.config, app.tagdb, app.alarms, app.historian, app.drivers)
    historian = None
    tagdb = None
    hmi_touched = False
    try:
        tagdb = app.new_tagdb(new)
        carried_tags = tagdb.carry_from(app.tagdb)
        alarms = AlarmEngine(new, tagdb, app.journal)
        carried_alarms, gone = carry_alarms(app.alarms, alarms)
        alarms.subscribers = [
            s for s in app.alarms.subscribers if conditions is None or getattr(s, "__self__", None) is not conditions
        ]
        historian = app._make_historian(new, tagdb)
        drivers = build_drivers(new, tagdb)
        hmi_touched = True
        node_changes = await app.hmi.reload(
            new, tagdb, d.nodes_removed, d.nodes_added, d.types_rebuilt, alarms=alarms, history=historian
        )
    except asyncio.CancelledError:
        # The server is stopping (a reload runs in its task group, which now refuses new
        # tasks): nothing to restart; the cancellation goes on. The new store is let go.
        _close_store(historian)
        raise
    except BaseException:
        log.exception("reload_failed_restoring")
        try:
            _close_store(historian)  # one writer per store: the new one lets the old one reopen it
            if tagdb is not None and tagdb is not saved[1]:
                tagdb.close_shared()  # its shared block: the front follows the old table again
            app.config, app.tagdb, app.alarms, app.historian, app.drivers = saved
            # The stopped historian closed its store: a new one reopens it. If that fails too (a
            # read-only disk...), the stopped one stays: its task fails at once and its restart
            # (_historian_restart) tries again with backoff, under server_task_failed.
            try:
                reopened = app._make_historian(old, app.tagdb)
                reopened.take_over(saved[3])
                app._set_historian(reopened)
            except Exception:  # noqa: BLE001
                log.exception("reload_rollback_historian_not_reopened")
                app._set_historian(saved[3])
            try:
                app.drivers = build_drivers(old, app.tagdb)
            except Exception:  # noqa: BLE001 - the stopped driver objects run again
                log.exception("reload_rollback_drivers_not_rebuilt")
            _reload_commands(app)  # the pipeline writes through the drivers that run, not the stopped ones
            await _undo_hmi(app, old, d, conditions, hmi_touched)
        finally:
            _restart_tasks(app)  # whatever failed above: a component left stopped is not even reported
        raise
    old_alarms = app.alarms
    carry_server_state(old_alarms, alarms)  # again: the old engine ran on while the OPC UA side was rebuilt
    # What the stopped historian could not write (a full disk) and its storage alarms go on.
    historian.take_over(saved[3])
    app.config, app.tagdb, app.alarms, app.historian, app.drivers = new, tagdb, alarms, historian, drivers
    saved[1].close_shared()  # the front reads the new table now (or will, when it restarts)
    _reload_commands(app)
    app.start_tasks()
    _journal_removed(old_alarms, alarms, gone)
    log.info(
        "configuration_reloaded",
        **d.summary(),
        tags=len(tagdb),
        tags_kept=len(carried_tags),
        alarm_instances=alarms.n,
        alarm_states_kept=carried_alarms,
        opcua_node_changes=node_changes,
    )
    return d


def _reload_commands(app) -> None:
    """The command pipeline follows the running configuration, tag table and drivers."""
    from scada.app import drivers_by_name

    app.commands.reload(app.config, app.tagdb, drivers_by_name(app.drivers))


def _restart_tasks(app) -> None:
    """Restart the components after a rollback, unless the server began stopping meanwhile (its
    task group refuses new tasks: the error would hide the cancellation)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return
    app.start_tasks()


def _close_store(historian) -> None:
    """Close the store of a historian that never ran (a failed or cancelled reload)."""
    if historian is None:
        return
    try:
        historian.store.close()
    except Exception:  # noqa: BLE001 - e.g. its merge fails on a full disk: the rollback goes on
        log.exception("reload_rollback_store_not_closed", store=str(historian.store.path))


async def _undo_hmi(app, old: Config, d: ConfigDiff, conditions, hmi_touched: bool) -> None:
    """Put the OPC UA side back on the running components after a failed switch.

    Once ``hmi.reload`` began, the old conditions' nodes are gone and it may have bound the
    publisher, the conditions and the history reads to the discarded objects (a publisher on
    a tag table no driver feeds, acknowledgements on a discarded engine): it runs again for
    the old configuration. Its tree edits are undone when it got as far as taking the new
    configuration (the usual case: the edits are done by then); a failure inside the edits
    leaves the tree as it got (logged: a restart rebuilds it).
    """
    if not hmi_touched:
        if conditions is not None and app.hmi.conditions is conditions:
            conditions.reattach()  # the old conditions listen to the old engine again
        return
    hmi = app.hmi
    edited = hmi.config is not old
    try:
        await hmi.reload(
            old,
            app.tagdb,
            d.nodes_added if edited else [],
            d.nodes_removed if edited else [],
            d.types_rebuilt if edited else [],
            alarms=app.alarms,
            history=app.historian,
        )
    except Exception:  # noqa: BLE001 - the components still restart (the caller's finally)
        log.exception("reload_rollback_opcua_failed")
        return
    if not edited and (d.nodes_added or d.nodes_removed):
        log.error("reload_rollback_opcua_tree_partial", note="restart the server to rebuild the OPC UA tree")


async def _apply_alarms(app, new: Config, d: ConfigDiff) -> None:
    """Only alarms (or services) changed: the tag table, the drivers and the historian go on
    untouched (the field is not disturbed); the engine and the OPC UA conditions are rebuilt."""
    conditions = app.hmi.conditions
    await _drain_alarm_events(conditions, DRAIN_TIMEOUT)
    # The new engine evaluates every instance when it starts: no batch is missed meanwhile.
    await app.stop_tasks(["alarms", "opcua-publisher"])
    hmi_touched = False
    try:
        alarms = AlarmEngine(new, app.tagdb, app.journal)
        carried, gone = carry_alarms(app.alarms, alarms)
        alarms.subscribers = [
            s for s in app.alarms.subscribers if conditions is None or getattr(s, "__self__", None) is not conditions
        ]
        hmi_touched = True
        await app.hmi.reload(new, app.tagdb, [], [], [], alarms=alarms, history=app.historian)
    except asyncio.CancelledError:
        raise  # the server is stopping: nothing to restart (see apply)
    except BaseException:
        log.exception("reload_failed_restoring")
        try:
            await _undo_hmi(app, app.config, d, conditions, hmi_touched)
        finally:
            _restart_tasks(app)
        raise
    old_alarms = app.alarms
    carry_server_state(old_alarms, alarms)  # again: the old engine ran on while the OPC UA side was rebuilt
    app.config, app.alarms = new, alarms
    _reload_commands(app)
    app.start_tasks()
    _journal_removed(old_alarms, alarms, gone)
    log.info(
        "configuration_reloaded",
        **d.summary(),
        alarm_instances=alarms.n,
        alarm_states_kept=carried,
        field_untouched=True,
    )


async def _apply_front(app, new: Config, d: ConfigDiff) -> None:
    """Only what the front shows changed (operations.yaml; tags.yaml's commands or zones, for
    devices the drivers already poll): the field, the tag table, the alarm engine and the
    historian go on untouched; the front is rebuilt on them (its Open311 server, Operations
    folder, map feed, command methods, group actions and Zones follow the new configuration).

    A front in its own process rebuilds its mirrors from a snapshot of the running engine, and the
    engine's later events follow it in order on the channel: the engine never waits for it. An
    inline front's conditions are rebuilt on the same engine: the engine pauses meanwhile (its
    queue keeps the batches, its run evaluates every instance again when it starts), so that no
    transition falls between the old conditions, which stop listening, and the new ones.
    """
    conditions = app.hmi.conditions  # None: the conditions live in the front process
    if conditions is not None:
        await _drain_alarm_events(conditions, DRAIN_TIMEOUT)
        await app.stop_tasks(["alarms", "opcua-publisher"])
    try:
        changes = await app.hmi.reload(new, app.tagdb, [], [], [], alarms=app.alarms, history=app.historian)
    except asyncio.CancelledError:
        raise  # the server is stopping: nothing to restart (see apply)
    except BaseException:
        log.exception("reload_failed_restoring")
        try:
            await _undo_hmi(app, app.config, d, conditions, True)
        finally:
            _restart_tasks(app)
        raise
    app.config = new
    _reload_commands(app)
    app.start_tasks()
    log.info("configuration_reloaded", **d.summary(), opcua_node_changes=changes, field_untouched=True)


def write_result(data_dir: Path, ok: bool, message: str, changes: dict | None = None) -> None:
    """The outcome of the last reload request, for ``scada reload`` (written atomically).

    Never raises: it runs in the server's task group, where an exception would stop the server;
    a full or read-only data disk only costs ``scada reload`` its answer (it times out), logged.
    """
    path = Path(data_dir) / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"time_ns": time.time_ns(), "ok": ok, "message": message, "changes": changes or {}}))
        os.replace(tmp, path)
    except OSError as exc:
        log.error("reload_result_not_written", file=str(path), error=repr(exc), ok=ok, message=message)


async def reload_from_files(app, directory: str | Path, trigger: str = "SIGHUP") -> bool:
    """Load, validate and apply the configuration files; never raises (a server keeps running).

    Each outcome goes to the result file (for ``scada reload``) and to the audit trail
    (``app.audit``: action "reload", the trigger and the changes, the result as a status name).
    """
    ok, message, changes, result = await _reload_files(app, directory)
    write_result(app.data_dir, ok, message, changes)
    audit = getattr(app, "audit", None)  # an application without an audit trail (tests' stand-ins)
    if audit is not None:
        arguments = {"trigger": trigger, "message": message, "changes": changes or {}}
        audit.record(record_of("reload", str(directory), arguments, result))
    return ok


async def _reload_files(app, directory: str | Path) -> tuple[bool, str, dict | None, str]:
    """(ok, message, changes, status name) of one reload request."""
    try:
        new = await asyncio.to_thread(load_config, directory, app.config.drivers)  # the same drivers
    except ConfigError as exc:
        log.error(
            "reload_rejected",
            error=str(exc),
            file=exc.file,
            line=exc.line,
            key=exc.key or None,
            note="the running configuration is unchanged",
        )
        return False, f"configuration error: {exc}", None, "BadConfigurationError"
    except Exception as exc:  # noqa: BLE001 - a loader bug must not stop the server (it runs in its task group)
        log.exception("reload_load_failed", directory=str(directory), note="the running configuration is unchanged")
        return False, f"the configuration could not be loaded, nothing changed: {exc!r}", None, "BadInternalError"
    try:
        d = await app.reload(new)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the old configuration was put back by apply()
        return False, f"reload failed, the running configuration is unchanged: {exc!r}", None, "BadInternalError"
    if d.empty:
        log.info("configuration_unchanged", directory=str(directory))
        return True, "configuration unchanged", None, "Good"
    return True, "configuration reloaded", d.summary(), "Good"
