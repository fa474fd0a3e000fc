"""The command pipeline: one path, in one order, for every command to the field.

Every command (an HMI's method call or Write, a group action's per-device command, a lighting
schedule's step) runs :meth:`CommandPipeline.execute`, in this order, and the first step that
refuses gives the call's status code and a message that a person reads:

1. resolve the device and the command (or, for a Write, the point; its implicit command needs
   the roles and interlocks of the commands that could write that value)  -> BadNodeIdUnknown,
   BadNotWritable
2. authorise: the command's role(s) and COMMAND in the device's commune  -> BadUserAccessDenied
3. the phase fits the command (select-before-operate when critical)   -> BadRequestNotAllowed,
   BadInvalidArgument
4. the user's rate (every attempt from here on, Operate and Cancel too; an emergency command
   has an allowance of its own)                                       -> BadTooManyOperations
5. Cancel: the selection it names; Operate: the selection it names (before the device's lock
   and the arguments: Operate(token) alone takes the selected ones)  -> BadSequenceNumberInvalid
6. validate the arguments                                             -> BadInvalidArgument,
   BadTypeMismatch, BadOutOfRange
   then, one command at a time per device (an asyncio.Lock each; Control/state "running"; an
   emergency command does not wait behind a routine command's read-back: that command stops
   waiting, its writes complete, and it answers BadInvalidState):
7. the configuration did not change while it waited for the lock      -> BadInvalidState
   Operate: its selection again, with the same arguments, ended       -> BadSequenceNumberInvalid
8. the device is in communication                                     -> BadNoCommunication
   (before the interlocks: its own points are their inputs, Bad because the link is lost)
9. interlocks over live values (fail safe on inputs not Good)         -> the interlock's status
10. Select: reserve the device, return a token                        -> BadInvalidState (held)
11. the device's rate (only a command about to write takes a token; the Scheduler has its own
    budget per device, and an emergency command its own: routine ones never use it)
                                                                      -> BadTooManyOperations
12. the driver writes each ``writes`` step, shielded: once started they complete even if the
    request is cancelled                                              -> BadOutOfRange (check),
    BadNoCommunication (unreachable), BadTimeout (sent, no answer: the outcome unknown),
    BadDeviceFailure (the device refused)
13. read-back: every ``confirm`` step's tag (by name in the running table) Good and equal
    (within the tolerance) before the command's timeout, waited on the tag table's change
    batches                                                           -> BadTimeout
    (the driver is asked to read the confirm points now, ``Driver.read_now``, rather than
    leave them to the next poll; a read that fails is not the command's failure: the wait
    goes on with the polls)

Every attempt, allowed or refused, is one "command" audit record and updates the device's
Control tags (scada/control/state.py). ``execute`` never raises for a refusal.

The read-back waits on change batches, not on a polling loop: :meth:`CommandPipeline.run` (the
supervised task ``control-readback``) reads the tag table's batches and wakes the commands
whose confirmation tags changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from scada import status as st
from scada.config import DIAG_STATES, Config, Device, EquipmentType, PointDef
from scada.control.interlocks import Interlocks
from scada.control.limits import RateLimiter
from scada.control.model import (
    BAD_DEVICE_FAILURE,
    BAD_INTERNAL_ERROR,
    BAD_INVALID_ARGUMENT,
    BAD_INVALID_STATE,
    BAD_NO_COMMUNICATION,
    BAD_NODE_ID_UNKNOWN,
    BAD_NOT_WRITABLE,
    BAD_OUT_OF_RANGE,
    BAD_REQUEST_NOT_ALLOWED,
    BAD_SEQUENCE_NUMBER_INVALID,
    BAD_SHUTDOWN,
    BAD_TIMEOUT,
    BAD_TOO_MANY_OPERATIONS,
    BAD_TYPE_MISMATCH,
    BAD_USER_ACCESS_DENIED,
    GOOD,
    SCHEDULER_USER,
    WRITE,
    ArgDef,
    CommandDef,
    CommandRequest,
    CommandResult,
    ControlSettings,
    GroupRequest,
    Step,
    status_name,
)
from scada.control.overrides import Overrides
from scada.control.select import Refused, Selections
from scada.control.state import ControlTags, describe
from scada.driver_api import (
    CommandRejected,
    DeviceRejected,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverError,
    WriteCommand,
)
from scada.security.audit import AuditRecord, AuditSink, canonical
from scada.security.identity import ROLE_PERMISSIONS, Identity, Permission, Role, roles_of
from scada.tagdb import DISCRETE, TEXT, Consumer, TagDB

log = structlog.get_logger("scada.control")

ONLINE = dict((label, value) for value, label in DIAG_STATES)["online"]
_LINK_LOST = (st.BAD_NO_COMMUNICATION, st.BAD_COMMUNICATION_ERROR)
# Per-device commands of a group action or a schedule: their user's rate is counted once, by
# the group (scada/control/groups.py) or not at all (the Scheduler); the device's applies.
UNCOUNTED_ORIGINS = ("group:", "schedule:")


class _Refusal(Exception):
    """A step refuses: the status and message of the call's result."""

    def __init__(self, status: int, message: str, interlock: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.interlock = status, message, interlock


def write_timeout(t: EquipmentType) -> float:
    """A Write's read-back time (a command's default too): 3 x the type's timeout, at least 2 s."""
    return max(2.0, 3.0 * t.timeout)


def reports_itself(point: PointDef) -> bool:
    """Whether the device reports the point's value back: an MQTT command point is only
    acknowledged (the driver then sets it), a Modbus ``readback: false`` coil resets itself."""
    io = point.io
    if io is None:
        return True
    return not io.needs_command_enum and io.reports_back


def unread_writes(cmd: CommandDef) -> tuple[Step, ...]:
    """The write steps the driver need not read back one by one: those of a command confirmed by
    other points (the confirm points say whether it worked; the written points are read with them,
    in one request per block, rather than one read per write)."""
    if not cmd.confirm:
        return ()
    confirmed = {s.point for s in cmd.confirm}
    return tuple(s for s in cmd.writes if s.point not in confirmed)


def argument_of(point: PointDef) -> ArgDef:
    """The argument ``value`` of a Write to ``point``, typed by the point."""
    if point.enum:
        return ArgDef("value", "enum", enum=point.enum)
    if point.kind == DISCRETE:
        return ArgDef("value", "bool")
    return ArgDef("value", "float", range=point.range, unit=point.unit)


def validate(arguments: tuple[ArgDef, ...], given: Mapping[str, Any]) -> dict[str, float]:
    """The arguments as numbers (a datetime one not given: 0), or _Refusal: missing or extra (BadInvalidArgument), wrong
    type (BadTypeMismatch), outside the range or the enumeration (BadOutOfRange)."""
    names = [a.name for a in arguments]
    # A datetime argument is optional: 0 means none given (an override "until the next step").
    given = {**{a.name: 0.0 for a in arguments if a.type == "datetime"}, **given}
    missing = [n for n in names if n not in given]
    extra = sorted(set(given) - set(names))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(extra)}"] if extra else []
        )
        expected = ", ".join(f"{a.name} ({a.type})" for a in arguments) or "none"
        raise _Refusal(BAD_INVALID_ARGUMENT, f"{'; '.join(parts)} (arguments: {expected})")
    out: dict[str, float] = {}
    for a in arguments:
        raw = given[a.name]
        if isinstance(raw, str) or not isinstance(raw, (int, float, np.integer, np.floating)):
            raise _Refusal(BAD_TYPE_MISMATCH, f"{a.name} must be a number ({a.type}), got {raw!r:.40}")
        v = float(raw)
        if math.isnan(v) or math.isinf(v):
            raise _Refusal(BAD_TYPE_MISMATCH, f"{a.name} must be a finite number, got {v}")
        if a.type in ("int", "enum", "bool", "datetime") and not v.is_integer():
            raise _Refusal(BAD_TYPE_MISMATCH, f"{a.name} is {a.type}: {v:g} is not a whole number")
        if a.type == "bool" and v not in (0.0, 1.0):
            raise _Refusal(BAD_OUT_OF_RANGE, f"{a.name} is a boolean: 0 or 1, got {v:g}")
        if a.type == "enum" and a.enum is not None and int(v) not in dict(a.enum):
            states = ", ".join(f"{k} {label}" for k, label in a.enum)
            raise _Refusal(BAD_OUT_OF_RANGE, f"{a.name} {v:g} is not one of {states}")
        if a.type == "datetime" and v < 0:
            raise _Refusal(BAD_OUT_OF_RANGE, f"{a.name} is a time: {v:g} is before 1970")
        if a.range is not None and not a.range[0] <= v <= a.range[1]:
            raise _Refusal(BAD_OUT_OF_RANGE, f"{a.name} {v:g}{a.unit} is outside [{a.range[0]:g}, {a.range[1]:g}]")
        out[a.name] = v
    return out


@dataclass(eq=False)
class _Confirmation:
    """A command waiting for its read-back: these rows must be Good and equal to ``expected``."""

    ids: np.ndarray
    expected: np.ndarray
    tolerance: float
    event: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: str = ""  # why it can no longer be confirmed (a reload replaced the tag table)
    superseded: str = ""  # the emergency command that waits for the device: stop waiting

    def holds(self, tagdb: TagDB) -> bool:
        status = tagdb.status[self.ids]
        if (status & 0xC0000000).any():
            return False
        return bool((np.abs(tagdb.value[self.ids] - self.expected) <= self.tolerance).all())


class CommandPipeline:
    """The core's command service (``app.commands``): see the module docstring."""

    def __init__(
        self,
        config: Config,
        tagdb: TagDB,
        drivers: Mapping[str, Driver],
        audit: AuditSink,
        overrides: Overrides | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit = audit
        self.overrides = overrides if overrides is not None else Overrides()
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        # An emergency command does not wait behind a routine command's read-back (up to its
        # timeout: a Raise's 20 s): the device's running confirmation is told to stop.
        self._confirming: dict[str, _Confirmation] = {}  # device -> its running command's read-back
        self._urgent: dict[str, str] = {}  # device -> the emergency command waiting for its lock
        self._waiting: dict[int, set[_Confirmation]] = {}  # tag id -> commands confirming it
        self._watched: np.ndarray | None = None  # sorted ids of _waiting (None: rebuild)
        self._consumer: Consumer | None = None  # run()'s queue of change batches
        self._dispatched = 0  # seq of the last change batch run() has dispatched
        self._seq_waiters: list[tuple[int, asyncio.Future[None]]] = []  # (seq, future): see _seen
        self.settings = ControlSettings()
        self.limits = RateLimiter(
            self.settings.user_rate, self.settings.device_rate, clock, emergency_rate=self.settings.emergency_rate
        )
        self.selections = Selections(self.settings.select_timeout, clock)
        self.executed = 0  # attempts, for the benches and the status line
        self.refused = 0
        self._install(config, tagdb, drivers)

    # -- configuration ------------------------------------------------------------------------

    def _install(self, config: Config, tagdb: TagDB, drivers: Mapping[str, Driver]) -> None:
        interlocks = Interlocks(config, tagdb)  # raises before anything is replaced
        control = ControlTags(config, tagdb)
        self.drivers: Mapping[str, Driver] = dict(drivers)
        self.config, self.tagdb = config, tagdb
        self.interlocks, self.control = interlocks, control
        self._writes: dict[tuple[str, str, tuple[str, ...]], tuple[CommandDef, tuple[str, ...]]] = {}
        # Per equipment type: a point's offset from its device's first tag id.
        self._offset = {n: {p.name: k for k, p in enumerate(t.points)} for n, t in config.types.items()}
        settings = config.control.settings
        if settings != self.settings:
            rates = (settings.user_rate, settings.device_rate, settings.emergency_rate)
            if rates != (self.settings.user_rate, self.settings.device_rate, self.settings.emergency_rate):
                self.limits = RateLimiter(
                    settings.user_rate, settings.device_rate, self.clock, emergency_rate=settings.emergency_rate
                )
            self.selections.timeout = settings.select_timeout
            self.settings = settings
        control.initialise()

    def reload(self, config: Config, tagdb: TagDB, drivers: Mapping[str, Driver]) -> None:
        """Follow a new configuration (scada/reload.py, once the new components run). A command
        confirming on the old tag table follows its points by name in the new one; selections of
        devices that remain stay."""
        old_db = self.tagdb
        self._install(config, tagdb, drivers)
        known = {d.name for d in config.devices}
        for name in [n for n in self._locks if n not in known]:
            del self._locks[name]
        if tagdb is not old_db:
            for waiters in self._waiting.values():
                for w in waiters:
                    w.abandoned = "the configuration was reloaded during the read-back"
                    w.event.set()
            self._waiting.clear()
            self._watched = None
            if self._consumer is not None:  # run() waits on the old table's queue: wake it up
                with contextlib.suppress(asyncio.QueueFull):
                    self._consumer.queue.put_nowait(None)

    def suspend_drivers(self) -> None:
        """A reload stops the drivers: until :meth:`reload` gives the running ones, a command is
        refused BadNoCommunication rather than written through a stopped driver."""
        self.drivers = {}

    async def run_group(self, request: GroupRequest, progress=None) -> list[CommandResult]:
        """A group action, fanned out over :meth:`execute` by scada/control/groups.py: the group
        counts once against its user's rate (this limiter) and is audited in this trail."""
        # Imported when used: groups.py builds on this service, not the reverse.
        groups = importlib.import_module("scada.control.groups")
        return await groups.run_group(
            self,
            request,
            progress,
            user_limit=lambda caller: self.limits.users.take(caller.user),
            audit=self.audit,
        )

    # -- the pipeline -------------------------------------------------------------------------

    async def execute(self, request: CommandRequest) -> CommandResult:
        """Run one command through every step (see the module docstring); never raises for a
        refusal, audits every attempt."""
        try:
            device = self.config.device(request.device)
        except KeyError:
            device = None
        label = describe(request.command, request.args, request.point)
        try:
            if device is None:
                raise _Refusal(BAD_NODE_ID_UNKNOWN, f"no device {request.device!r}")
            result = await self._execute(request, device, label)
        except _Refusal as r:
            result = CommandResult(request.device, r.status, r.message, r.interlock)
        except asyncio.CancelledError as exc:
            # The server stops (or the front that asked went away): said in the trail and on the device.
            why = str(exc) or "the server is stopping (or the client went away)"
            result = CommandResult(request.device, BAD_SHUTDOWN, f"cancelled: {why}")
            self._finish(request, device, label, result)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the caller without an answer
            log.exception("command_failed", device=request.device, command=request.command)
            result = CommandResult(request.device, BAD_INTERNAL_ERROR, f"internal error: {exc!r}")
        self._finish(request, device, label, result)
        # The Control tags are written at the end of this loop turn, with those of the commands
        # finishing at the same time (scada/control/state.py): the answer follows them.
        await self.control.written()
        return result

    def _finish(self, request: CommandRequest, device: Device | None, label: str, result: CommandResult) -> None:
        self.executed += 1
        if not result.good:
            self.refused += 1
        name = status_name(result.status)
        if device is not None:
            lock = self._locks.get(device.name)
            # Another command to the device may hold it (this one was refused before the lock).
            state = "running" if lock is not None and lock.locked() else self.selections.state(device.name)
            outcome = name if result.good or not result.message else f"{name}: {result.message}"
            self.control.finished(device, state, label, request.caller.user, outcome)
        caller = request.caller
        arguments = {
            "command": request.command,
            "args": dict(request.args),
            "phase": request.phase,
            "origin": request.origin,
            "message": result.message,
        }
        if request.point:
            arguments["point"] = request.point
        if result.interlock:
            arguments["interlock"] = result.interlock
        self.audit.record(
            AuditRecord(
                time.time_ns(),
                "command",
                caller.user,
                tuple(sorted(caller.roles)),
                caller.session,
                caller.client,
                "",
                request.device,
                canonical(arguments),
                name,
            )
        )

    async def _execute(self, request: CommandRequest, device: Device, label: str) -> CommandResult:
        config = self.config
        cmd, roles = self._resolve(request, device)
        self._authorise(request, device, cmd, roles)
        phase = request.phase
        if cmd.critical and request.command == WRITE:
            raise _Refusal(
                BAD_REQUEST_NOT_ALLOWED,
                f"{request.point} is written by the critical command {cmd.name}: use its Select/Operate",
            )
        if cmd.critical and phase == "execute":
            raise _Refusal(
                BAD_REQUEST_NOT_ALLOWED,
                f"{cmd.name} is critical: select first (Select, then Operate within {self.selections.timeout:g} s)",
            )
        if not cmd.critical and phase != "execute":
            raise _Refusal(BAD_INVALID_ARGUMENT, f"{cmd.name} is not critical: no {phase} (execute it directly)")
        # The user's bucket counts every attempt that gets this far (Select, Operate, Cancel and
        # the refused ones too): a flood, even of refusals, stays bounded. The device's bucket is
        # taken only when the command is about to write (below): a refusal costs the field nothing.
        uncounted = request.origin.startswith(UNCOUNTED_ORIGINS)
        if not uncounted:
            why = self.limits.admit_user(request.caller.user, cmd.emergency)
            if why:
                raise _Refusal(BAD_TOO_MANY_OPERATIONS, why)
        if phase == "cancel":
            return self._cancel(request, device, cmd)
        given = request.args
        if phase == "operate":
            # The selection first (before the arguments, and before waiting on the device's
            # lock): Operate(token) alone takes the selected arguments.
            sel = self._selection_of(request, device, cmd)
            if not given:
                given = sel.args
        args = validate(cmd.arguments, given)
        lock = self._locks.setdefault(device.name, asyncio.Lock())
        if cmd.emergency and lock.locked():
            self._supersede(device, cmd)
        async with lock:
            if cmd.emergency:
                self._urgent.pop(device.name, None)
            if self.config is not config:
                raise _Refusal(
                    BAD_INVALID_STATE,
                    f"the configuration was reloaded while {cmd.name} waited for {device.name}: send it again",
                )
            if phase == "operate":
                self._operate_checks(request, device, cmd, args)
            # The link first: a device that is not in communication says so (its own points, the
            # interlocks' inputs, are Bad for that reason), rather than an interlock's fail-safe refusal.
            self._communicating(device, cmd)
            refusal = self.interlocks.check(device, cmd.interlocks)
            if refusal is not None:
                raise _Refusal(refusal.status, refusal.message, refusal.interlock)
            if phase == "select":
                return self._select(request, device, cmd, args)
            why = self.limits.admit_device(self._device_budget(request, device), cmd.emergency)
            if why:
                raise _Refusal(BAD_TOO_MANY_OPERATIONS, why)
            self.control.started(device, label, request.caller.user)
            await self._write_shielded(device, cmd, args)
            await self._confirm(device, cmd, args)
        until = args.get("until")
        if until is not None and request.caller.user != SCHEDULER_USER:
            self.overrides.set(device.name, int(until))
        return CommandResult(device.name, GOOD, "confirmed by the read-back" if cmd.confirm else "written")

    @staticmethod
    def _device_budget(request: CommandRequest, device: Device) -> str:
        """The device bucket a command draws on: the Scheduler has its own per device, so that
        no operator can starve a schedule step (nor a schedule the operators)."""
        if request.caller.user == SCHEDULER_USER:
            return f"{device.name} (Scheduler)"
        return device.name

    def _supersede(self, device: Device, cmd: CommandDef) -> None:
        """An emergency command waits for the device: the command holding it stops waiting for
        its read-back (its writes, shielded, still complete first) and answers BadInvalidState."""
        self._urgent[device.name] = cmd.name
        running = self._confirming.get(device.name)
        if running is not None:
            running.superseded = cmd.name
            running.event.set()

    async def _write_shielded(self, device: Device, cmd: CommandDef, args: Mapping[str, float]) -> None:
        """The write sequence, once started, completes even if the request is cancelled (a
        front going away, the server stopping): a device is never left half-written (mode
        written, set-point not). The cancellation then goes on, with the writes' outcome."""
        writing = asyncio.ensure_future(self._write(device, cmd, args))
        cancelled = False
        while True:
            try:
                await asyncio.shield(writing)
                break
            except asyncio.CancelledError:
                if writing.cancelled():
                    raise
                cancelled = True  # this request was cancelled: wait for the writes, then go on
            except _Refusal:
                if not cancelled:
                    raise
                break
        if cancelled:
            exc = writing.exception()
            outcome = "the writes completed" if exc is None else f"the writes ended: {getattr(exc, 'message', exc)}"
            raise asyncio.CancelledError(f"cancelled after its writes started ({outcome}); not confirmed")

    # -- the steps ----------------------------------------------------------------------------

    def _resolve(self, request: CommandRequest, device: Device) -> tuple[CommandDef, tuple[str, ...]]:
        """The command and the roles the caller must each have."""
        t = self.config.types[device.type]
        if request.command == WRITE:
            point = t.point(request.point)
            if point is None:
                raise _Refusal(BAD_NODE_ID_UNKNOWN, f"{device.name} has no point {request.point!r}")
            if not point.writable or point.kind == TEXT:
                raise _Refusal(BAD_NOT_WRITABLE, f"{device.name}/{point.name} is not writable")
            return self._write_command(t, point, request.args.get("value"))
        cmd = self.config.control.commands.get(device.type, {}).get(request.command)
        if cmd is None:
            known = ", ".join(self.config.control.commands.get(device.type, {})) or "none"
            raise _Refusal(
                BAD_NODE_ID_UNKNOWN,
                f"{device.name} ({device.type}) has no command {request.command!r} (commands: {known})",
            )
        return cmd, (cmd.role,)

    def _write_command(self, t: EquipmentType, point: PointDef, value: Any) -> tuple[CommandDef, tuple[str, ...]]:
        """The implicit command of a Write of ``value`` to ``point``: its range or enumeration,
        confirmed by the point itself; it needs what the commands that could write that value
        need (those whose step for the point is that constant, or an argument): each of their
        roles and their interlocks; a value no command writes (or not a number) needs every
        writer's (fail safe). Critical when one of them is (then refused: use its Select/Operate)."""
        everyone = [
            c
            for c in self.config.control.commands.get(t.name, {}).values()
            if any(s.point == point.name for s in c.writes)
        ]
        writers = everyone
        if isinstance(value, (int, float, np.integer, np.floating)):  # else: validation refuses it
            v = float(value)
            same = [
                c
                for c in everyone
                if any(s.point == point.name and (s.arg is not None or s.value == v) for s in c.writes)
            ]
            writers = same or everyone
        key = (t.name, point.name, tuple(c.name for c in writers))
        cached = self._writes.get(key)
        if cached is not None:
            return cached
        interlocks = tuple(dict.fromkeys(n for c in writers for n in c.interlocks))
        roles = tuple(dict.fromkeys(c.role for c in writers)) or ("Operator",)
        critical = next((c for c in writers if c.critical), None)
        step = Step(point.name, arg="value")
        cmd = CommandDef(
            critical.name if critical is not None else WRITE,
            t.name,
            (argument_of(point),),
            (step,),
            (step,) if reports_itself(point) else (),
            write_timeout(t),
            role=roles[0],
            critical=critical is not None,
            interlocks=interlocks,
            tolerance=max(point.deadband, 0.0),
        )
        self._writes[key] = (cmd, roles)
        return cmd, roles

    def _authorise(self, request: CommandRequest, device: Device, cmd: CommandDef, roles: tuple[str, ...]) -> None:
        caller = request.caller
        try:
            held = roles_of(caller.roles)
        except ValueError:
            held = frozenset()
        ident = Identity(caller.user, held, None if caller.communes is None else frozenset(caller.communes))
        have = ", ".join(sorted(caller.roles)) or "no role"
        what = cmd.name if request.command != WRITE else f"write {request.point}"
        for role in roles:  # each of them (a Write: every command that could write that value)
            try:
                needed = ROLE_PERMISSIONS[Role(role)]
            except ValueError:
                raise _Refusal(BAD_USER_ACCESS_DENIED, f"{what} needs the unknown role {role!r}") from None
            if not needed <= ident.permissions:
                raise _Refusal(BAD_USER_ACCESS_DENIED, f"{caller.user} ({have}) may not {what}: it needs {role}")
        if not ident.allows(Permission.COMMAND, device.commune):
            if Permission.COMMAND not in ident.permissions:
                raise _Refusal(BAD_USER_ACCESS_DENIED, f"{caller.user} ({have}) may not send commands")
            raise _Refusal(
                BAD_USER_ACCESS_DENIED,
                f"{caller.user} may not command devices of {device.commune} (outside their communes)",
            )

    def _cancel(self, request: CommandRequest, device: Device, cmd: CommandDef) -> CommandResult:
        try:
            self.selections.check(device.name, request.caller.session, request.token, cmd.name)
        except Refused as exc:
            raise _Refusal(BAD_SEQUENCE_NUMBER_INVALID, str(exc)) from None
        self.selections.end(device.name, "cancel")
        return CommandResult(device.name, GOOD, "selection cancelled")

    def _selection_of(self, request: CommandRequest, device: Device, cmd: CommandDef):
        """The live selection an Operate names (unchanged), or BadSequenceNumberInvalid."""
        try:
            return self.selections.check(device.name, request.caller.session, request.token, cmd.name)
        except Refused as exc:
            raise _Refusal(BAD_SEQUENCE_NUMBER_INVALID, str(exc)) from None

    def _operate_checks(self, request: CommandRequest, device: Device, cmd: CommandDef, args: dict[str, float]) -> None:
        """Operate: the Select it names, in time, from this session, with the same arguments;
        ends that selection (an Operate refused further on needs a new Select)."""
        try:
            sel = self.selections.check(device.name, request.caller.session, request.token, cmd.name)
        except Refused as exc:
            raise _Refusal(BAD_SEQUENCE_NUMBER_INVALID, str(exc)) from None
        self.selections.end(device.name, "operate")
        if dict(sel.args) != args:
            raise _Refusal(
                BAD_SEQUENCE_NUMBER_INVALID,
                f"the arguments {describe(cmd.name, args)} differ from the Select's {describe(cmd.name, sel.args)}",
            )

    def _select(
        self, request: CommandRequest, device: Device, cmd: CommandDef, args: dict[str, float]
    ) -> CommandResult:
        try:
            sel = self.selections.select(device.name, request.caller.session, request.caller.user, cmd.name, args)
        except Refused as exc:
            raise _Refusal(BAD_INVALID_STATE, str(exc)) from None
        timeout = self.selections.timeout
        asyncio.get_running_loop().call_later(timeout, self._selection_timer, device, sel.token)
        return CommandResult(device.name, GOOD, f"selected: Operate within {timeout:g} s", token=sel.token)

    def _selection_timer(self, device: Device, token: str) -> None:
        """A selection's time is up: the device shows idle again (unless operated or re-selected)."""
        lock = self._locks.get(device.name)
        if self.selections.expire(device.name, token) and (lock is None or not lock.locked()):
            self.control.set_state(device, "idle")

    def _communicating(self, device: Device, cmd: CommandDef) -> None:
        """BadNoCommunication when the driver says the device is not online, or the tags that
        confirm the command lost their link."""
        db = self.tagdb
        diag = int(self.config.diag_ids(device)[0])
        if st.is_good(int(db.status[diag])) and db.value[diag] != ONLINE:
            label = dict(DIAG_STATES).get(int(db.value[diag]), str(db.value[diag]))
            raise _Refusal(BAD_NO_COMMUNICATION, f"{device.name} is not in communication ({label})")
        t = self.config.types[device.type]
        index = self._offset[device.type]
        for step in cmd.confirm:
            i = device.first_tag_id + index[step.point]
            if int(db.status[i]) in _LINK_LOST:
                raise _Refusal(
                    BAD_NO_COMMUNICATION,
                    f"{device.name} is not in communication: {step.point} is {st.name(int(db.status[i]))}",
                )
        if self.drivers.get(t.driver) is None:
            raise _Refusal(
                BAD_NO_COMMUNICATION, f"no {t.driver} driver runs for {device.name} (or a reload is restarting it)"
            )

    async def _write(self, device: Device, cmd: CommandDef, args: Mapping[str, float]) -> None:
        t = self.config.types[device.type]
        driver = self.drivers[t.driver]
        unread = unread_writes(cmd)
        writes = [
            WriteCommand(
                self.config.tag_name(device, t.point(s.point)),  # type: ignore[arg-type]
                s.resolve(args),
                readback=s not in unread,
            )
            for s in cmd.writes
        ]
        try:
            for w in writes:  # every step checked before the first goes out
                driver.check(w)
            for w in writes:
                await driver.write(w)
        except CommandRejected as exc:
            raise _Refusal(BAD_OUT_OF_RANGE, f"{device.name}: {exc}") from None
        except DeviceTimeout as exc:
            # Sent, never answered: the device may have applied it. Not "not in communication"
            # (nothing was sent, BadNoCommunication), but a command not confirmed: BadTimeout.
            raise _Refusal(
                BAD_TIMEOUT,
                f"{device.name} {cmd.name}: no answer to the write, whether it was applied is unknown: {exc}",
            ) from None
        except DeviceUnreachable as exc:
            raise _Refusal(BAD_NO_COMMUNICATION, str(exc)) from None
        except DeviceRejected as exc:
            raise _Refusal(BAD_DEVICE_FAILURE, str(exc)) from None
        except DriverError as exc:
            raise _Refusal(BAD_DEVICE_FAILURE, f"{device.name}: {exc}") from None

    async def _confirm(self, device: Device, cmd: CommandDef, args: Mapping[str, float]) -> None:
        """Wait until every ``confirm`` step reads back Good and equal, or BadTimeout."""
        if not cmd.confirm:
            return
        expected = np.array([s.resolve(args) for s in cmd.confirm])
        deadline = asyncio.get_running_loop().time() + cmd.timeout
        asked = False
        while True:
            # A reload during the read-back abandons the wait on the old table: the same points,
            # by name, are then waited on in the new one, until the same deadline.
            ids = self._confirm_ids(device, cmd)
            w = _Confirmation(ids, expected, cmd.tolerance + 1e-9, superseded=self._urgent.get(device.name, ""))
            self._confirming[device.name] = w
            for i in ids.tolist():
                self._waiting.setdefault(i, set()).add(w)
            self._watched = None
            try:
                async with asyncio.timeout_at(deadline):
                    if not asked:
                        asked = True
                        # The confirm points (unless a write's own read-back stored them), and the
                        # written points the driver did not read back: an HMI reading the device
                        # after the result sees every point the command wrote.
                        confirm = () if w.holds(self.tagdb) else cmd.confirm
                        await self._read_now(device, cmd, [*confirm, *unread_writes(cmd)])
                    while not w.abandoned and not w.superseded and not w.holds(self.tagdb):
                        await w.event.wait()
                        w.event.clear()
                    if not w.abandoned and not w.superseded:
                        # The value may have been stored a moment ago (a driver's read_now or
                        # read-back stores at once): the result waits for its change batch to reach
                        # the consumers registered before this one (the front's forwarder), so that
                        # an HMI reading the point after a Good result reads the confirmed value.
                        await self._seen(self.tagdb.seq)
            except TimeoutError:
                pass
            finally:
                if self._confirming.get(device.name) is w:
                    del self._confirming[device.name]
                for i in ids.tolist():
                    waiters = self._waiting.get(i)
                    if waiters is not None:
                        waiters.discard(w)
                        if not waiters:
                            del self._waiting[i]
                self._watched = None
            if not (w.abandoned and asyncio.get_running_loop().time() < deadline):
                break
        if not w.abandoned and w.holds(self.tagdb):
            return
        if w.superseded:
            raise _Refusal(
                BAD_INVALID_STATE,
                f"{device.name} {cmd.name}: written, but the emergency command {w.superseded} took the device "
                "before the read-back confirmed it",
            )
        db = self.tagdb
        reads = "; ".join(
            f"{s.point} reads {db.value[i]:g} ({st.name(int(db.status[i]))}), expected {e:g}"
            for s, i, e in zip(cmd.confirm, ids.tolist(), expected.tolist())
        )
        why = w.abandoned or f"not confirmed within {cmd.timeout:g} s"
        raise _Refusal(BAD_TIMEOUT, f"{device.name} {cmd.name}: {why}: {reads}")

    async def _seen(self, seq: int) -> None:
        """Until run() has dispatched change batch ``seq`` (at once when run() is not running)."""
        if self._dispatched >= seq or self._consumer is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq_waiters.append((seq, fut))
        await fut

    def _release(self, seq: int | None) -> None:
        """Wake the _seen waiters up to ``seq`` (None: every one)."""
        if seq is not None:
            self._dispatched = seq
        keep = []
        for s, fut in self._seq_waiters:
            if seq is None or s <= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((s, fut))
        self._seq_waiters = keep

    async def _read_now(self, device: Device, cmd: CommandDef, steps: Sequence[Step]) -> None:
        """Ask the driver for these steps' points now (Driver.read_now); a failure only logged."""
        if not steps:
            return
        t = self.config.types[device.type]
        driver = self.drivers[t.driver]
        names = dict.fromkeys(s.point for s in steps)
        tags = [self.config.tag_name(device, t.point(p)) for p in names]  # type: ignore[arg-type]
        try:
            await driver.read_now(tags)
        except DriverError as exc:
            log.debug("readback_read_failed", device=device.name, command=cmd.name, error=str(exc))
        except Exception:  # noqa: BLE001 - a driver's bug: the polls still confirm the command
            log.exception("readback_read_failed", device=device.name, command=cmd.name)

    def _confirm_ids(self, device: Device, cmd: CommandDef) -> np.ndarray:
        """The ids of the ``confirm`` points, by name in the running configuration and table: a
        reload during the write renumbers the tags, and the old device's ids would read another
        device's. BadTimeout when the device or the point is gone from the configuration."""
        config = self.config
        try:
            current = config.device(device.name)
            t = config.types[current.type]
            points = [t.point(s.point) for s in cmd.confirm]
            if current.type != device.type or any(p is None for p in points):
                raise KeyError(device.name)
            return self.tagdb.ids_of([config.tag_name(current, p) for p in points])  # type: ignore[arg-type]
        except KeyError:
            raise _Refusal(
                BAD_TIMEOUT,
                f"{device.name} {cmd.name}: written, but the configuration was reloaded and no longer "
                "has the points that confirm it: not confirmed",
            ) from None

    # -- the read-back task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Wake the commands waiting for a read-back when their tags change (the supervised task
        ``control-readback``); follows the tag table a reload installs."""
        while True:
            tagdb = self.tagdb
            consumer = self._consumer = tagdb.subscribe("control-readback", maxsize=1024)
            self._release(tagdb.seq)  # batches before the subscription are not this queue's
            try:
                while tagdb is self.tagdb:
                    batch = await consumer.get()
                    if consumer.take_overflow():
                        self._wake_all()  # batches were lost: every waiter looks at the table
                    elif batch is not None:  # None: a reload's wake-up
                        self._dispatch(batch.ids)
                    self._release(None if batch is None else batch.seq)
            finally:
                self._release(None)
                self._consumer = None
                with contextlib.suppress(ValueError):
                    tagdb.unsubscribe(consumer)

    def _dispatch(self, changed: np.ndarray) -> None:
        if not self._waiting:
            return
        if self._watched is None:
            self._watched = np.fromiter(self._waiting, np.int64, len(self._waiting))
            self._watched.sort()
        hit = changed[np.isin(changed, self._watched, assume_unique=False)]
        for i in hit.tolist():
            for w in self._waiting.get(i, ()):
                w.event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiting.values():
            for w in waiters:
                w.event.set()

    def stats(self) -> dict[str, int]:
        return {"commands": self.executed, "commands_refused": self.refused, "commands_selected": len(self.selections)}
