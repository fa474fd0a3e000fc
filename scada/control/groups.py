"""Group actions: one command to every device of a commune, a class folder or a zone.

:func:`run_group` takes a :class:`~scada.control.model.GroupRequest` ("dim all of Dijon to
40 %"), finds the devices of the action's class in the group whose type has the action's
command (:data:`~scada.control.model.GROUP_ACTIONS`), and runs that command on each through
the one pipeline (``commands.execute``), so that every device is authorised (its commune),
validated, interlocked, rate-limited (per device), written, confirmed and audited like a
command of its own. What the group adds:

* **Refusals for the whole group**, before anything reaches the field, as one result whose
  device is the group: an unknown group (BadNodeIdUnknown) or action, a missing or extra
  argument (BadInvalidArgument), a group without a device the action applies to
  (BadInvalidArgument), a critical command (BadRequestNotAllowed: select-before-operate is one
  operator and one device at a time, never fanned out), a caller without the COMMAND
  permission (BadUserAccessDenied) or over the user's rate limit (BadTooManyOperations: the
  group counts once, through ``user_limit``; the pipeline does not count a group's per-device
  commands, origin "group:...", against the user).
* **A bounded fan-out**: at most ``ControlSettings.group_concurrency`` devices of the group at
  once, and at most :data:`LINK_CONCURRENCY` commands at once on a link that carries one request
  at a time (a Modbus TCP gateway or an RS-485 bus: its units take turns, and each command
  queued on it delays the polls of every unit behind it), counted over every group running on
  the same command service. Devices start round-robin over their links, so a large gateway
  does not hold the others back. Each device's command is its own task: nothing is serialised
  on one lock, and the pipeline's per-device work (write, read-back on the change batches)
  overlaps. A command's time is a few round trips on its link: the writes, the driver's own
  read-back of each, and a read of the confirm points asked at once (``Driver.read_now``),
  not the next poll; so a group's duration is set by the CPU of the core and of the devices'
  servers rather than by ``devices / group_concurrency`` poll intervals (the simulated Dijon's
  1,100 cabinets: about 2.7 s, bench/bench_control_pipeline.py).
  The lighting schedules' steps fan out the same way (:func:`run_bounded`), on the same links' slots.
* **Progress**: ``progress(group, action, user, total, done, failed, finished)`` at the start,
  then at most every :data:`PROGRESS_PERIOD` while devices finish, and once at the end
  (``done`` counts every device finished, ``failed`` those of them not Good).
* **Audit**: one "group_command" record (target the group; arguments the action and its
  arguments, how many devices; result "Good" when every device is Good, else the counts per
  status), besides the per-device "command" records the pipeline writes.

The results come back in device order (configuration order), one per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from scada.control.model import (
    BAD_INTERNAL_ERROR,
    BAD_INVALID_ARGUMENT,
    BAD_NODE_ID_UNKNOWN,
    BAD_REQUEST_NOT_ALLOWED,
    BAD_TOO_MANY_OPERATIONS,
    BAD_USER_ACCESS_DENIED,
    GROUP_ACTIONS,
    Caller,
    CommandDef,
    CommandRequest,
    CommandResult,
    GroupRequest,
    status_name,
)
from scada.control.zones import UnknownGroup, group_devices
from scada.security.audit import AuditRecord, AuditSink, canonical
from scada.security.identity import ROLE_PERMISSIONS, Permission, roles_of

if TYPE_CHECKING:
    from scada.config import Config, Device
    from scada.control.service import Commands, GroupProgress

log = structlog.get_logger("scada.control.groups")

PROGRESS_PERIOD = 0.25  # s between two progress reports while a group runs
# Commands in flight at once on one link that carries one request at a time. Each command costs
# its link a write and a read-back; with 4 in flight, a poll of a unit behind the same gateway
# waits for at most a few requests (milliseconds), far under the 10 % of its interval that
# counts as late.
LINK_CONCURRENCY = 4
# The drivers whose devices share a link that answers one request at a time (their endpoint's
# ``connection``: a Modbus gateway's host:port, a serial line). The others pipeline requests on
# their link (an OPC UA session, an MQTT broker connection): only group_concurrency bounds them.
SERIAL_LINK_DRIVERS = frozenset({"modbus"})

UserLimit = Callable[[Caller], bool]  # True: the caller may send one more command now (and it is counted)


def has_command_permission(caller: Caller) -> bool:
    """Whether one of the caller's roles grants COMMAND (the pipeline checks each device's commune)."""
    try:
        roles = roles_of(caller.roles)
    except ValueError:
        return False
    return any(Permission.COMMAND in ROLE_PERMISSIONS[r] for r in roles)


def link_of(config: Config, device: Device) -> Hashable:
    """The link a device's commands travel on, when it carries one request at a time; else the
    device itself (no sharing to respect)."""
    driver = config.types[device.type].driver
    if driver in SERIAL_LINK_DRIVERS:
        return (driver, device.io.connection)
    return ("device", device.name)


def _refusal(request: GroupRequest, status: int, message: str) -> list[CommandResult]:
    return [CommandResult(request.group, status, message)]


def _plan(config: Config, request: GroupRequest) -> tuple[list[Device], dict[str, dict[str, float]]] | CommandResult:
    """The devices the action reaches and each type's arguments; or the group's refusal."""
    group = request.group
    action = GROUP_ACTIONS.get(request.action)
    if action is None:
        return CommandResult(
            group, BAD_INVALID_ARGUMENT, f"unknown group action {request.action!r} (one of {', '.join(GROUP_ACTIONS)})"
        )
    missing = [a for a in action.arguments if a not in request.args]
    extra = [a for a in request.args if a not in action.arguments]
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            )
            if part
        )
        return CommandResult(group, BAD_INVALID_ARGUMENT, f"{request.action}: {what}")
    try:
        members = group_devices(config, group)
    except UnknownGroup as exc:
        return CommandResult(group, BAD_NODE_ID_UNKNOWN, str(exc))
    defs: dict[str, CommandDef] = {}
    devices = []
    for d in members:
        if config.types[d.type].cls != action.cls:
            continue
        cmd = config.control.commands.get(d.type, {}).get(action.command)
        if cmd is None:
            continue
        defs[d.type] = cmd
        devices.append(d)
    if not devices:
        return CommandResult(
            group, BAD_INVALID_ARGUMENT, f"{group} has no {action.cls} device with the command {action.command}"
        )
    critical = sorted(t for t, c in defs.items() if c.critical)
    if critical:
        return CommandResult(
            group,
            BAD_REQUEST_NOT_ALLOWED,
            f"{action.command} is critical (select-before-operate) for {', '.join(critical)}: "
            "it is never sent to a group, only device by device",
        )
    # Each type's command gets the group's arguments by name, 0 for what the group does not
    # give (``until``: no end given, the override lasts until the schedule's next step).
    args = {t: {a.name: float(request.args.get(a.name, 0.0)) for a in c.arguments} for t, c in defs.items()}
    return devices, args


async def run_group(
    commands: Commands,
    request: GroupRequest,
    progress: GroupProgress | None = None,
    *,
    user_limit: UserLimit | None = None,
    audit: AuditSink | None = None,
    link: Callable[[Config, Device], Hashable] = link_of,
) -> list[CommandResult]:
    """Run ``request``'s action on every device of its group; one result per device, in device
    order (or one result naming the group when the whole group is refused). Never raises for a
    refusal; cancelled, it cancels the commands in flight."""
    config = commands.config
    caller = request.caller
    if not has_command_permission(caller):
        results = _refusal(request, BAD_USER_ACCESS_DENIED, f"{caller.user} may not send commands")
    else:
        plan = _plan(config, request)
        if isinstance(plan, CommandResult):
            results = [plan]
        elif user_limit is not None and not user_limit(caller):
            results = _refusal(request, BAD_TOO_MANY_OPERATIONS, f"{caller.user} sends commands too fast")
        else:
            devices, args = plan
            results = await _fan_out(commands, request, devices, args, progress, link)
            _audit(audit, request, results, len(devices))
            return results
    _audit(audit, request, results, 0)  # refused whole: no progress, the call's answer says it
    return results


def _report(progress: GroupProgress, request: GroupRequest, total: int, done: int, failed: int, finished: bool) -> None:
    try:
        progress(request.group, request.action, request.caller.user, total, done, failed, finished)
    except Exception:  # noqa: BLE001 - a progress listener's bug must not stop the group
        log.exception("group_progress_failed", group=request.group)


# The slots of the links that carry one request at a time, per command service (by identity):
# shared by the group actions running at once (two groups over one gateway still put at most
# LINK_CONCURRENCY commands on it). Dropped with the service.
_link_slots: dict[int, dict[Hashable, asyncio.Semaphore]] = {}


def _slots_of(commands: Commands) -> dict[Hashable, asyncio.Semaphore]:
    key = id(commands)
    slots = _link_slots.get(key)
    if slots is None:
        slots = {}
        try:
            weakref.finalize(commands, _link_slots.pop, key, None)
        except TypeError:  # a service that cannot be referenced weakly: slots for this group only
            return slots
        _link_slots[key] = slots
    return slots


def _round_robin(keys: Sequence[Hashable]) -> list[int]:
    """Indices of ``keys`` taken one per key in turn (keys in first-seen order): the devices of a
    large gateway are spread over the fan-out instead of queuing ahead of everyone else."""
    by_key: dict[Hashable, deque[int]] = {}
    for k, key in enumerate(keys):
        by_key.setdefault(key, deque()).append(k)
    order: list[int] = []
    queues = deque(by_key.values())
    while queues:
        q = queues.popleft()
        order.append(q.popleft())
        if q:
            queues.append(q)
    return order


def start_bounded(
    commands: Commands,
    requests: Sequence[CommandRequest],
    devices: Sequence[Device],
    *,
    link: Callable[[Config, Device], Hashable] = link_of,
    name: str = "fan-out",
) -> dict[asyncio.Task[CommandResult], int]:
    """The bounded fan-out of the group actions and the lighting schedules: one task per request
    (``requests[k]`` to ``devices[k]``), started in round-robin order over the links; each waits
    for a slot of its link (serial links only, shared by every fan-out on the same command
    service: at most :data:`LINK_CONCURRENCY` commands on a gateway), then for one of this
    fan-out's ``group_concurrency`` slots, then runs ``commands.execute``. Waiting on a semaphore
    costs nothing on the field; FIFO semaphores keep the round-robin order. Returns each task
    and its index; the caller awaits them (and cancels them if it is cancelled)."""
    config = commands.config
    group_slots = asyncio.Semaphore(max(1, int(config.control.settings.group_concurrency)))
    link_slots = _slots_of(commands)

    def slot_of(d: Device) -> asyncio.Semaphore | None:
        if config.types[d.type].driver not in SERIAL_LINK_DRIVERS:
            return None
        key = link(config, d)
        sem = link_slots.get(key)
        if sem is None:
            sem = link_slots[key] = asyncio.Semaphore(LINK_CONCURRENCY)
        return sem

    async def one(k: int) -> CommandResult:
        on_link = slot_of(devices[k])
        async with on_link if on_link is not None else contextlib.nullcontext(), group_slots:
            return await commands.execute(requests[k])

    order = _round_robin([link(config, d) for d in devices])
    return {asyncio.create_task(one(k), name=f"{name}:{devices[k].name}"): k for k in order}


async def run_bounded(
    commands: Commands,
    requests: Sequence[CommandRequest],
    devices: Sequence[Device],
    *,
    link: Callable[[Config, Device], Hashable] = link_of,
    name: str = "fan-out",
) -> list[CommandResult]:
    """:func:`start_bounded`, awaited: one result per request, in request order (an exception is
    that device's BadInternalError); cancelled, it cancels the commands in flight."""
    tasks = start_bounded(commands, requests, devices, link=link, name=name)
    try:
        if tasks:
            await asyncio.wait(tasks)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    results: list[CommandResult | None] = [None] * len(devices)
    for task, k in tasks.items():
        results[k] = _result_of(task, devices[k])
    return [r for r in results if r is not None]


async def _fan_out(
    commands: Commands,
    request: GroupRequest,
    devices: Sequence[Device],
    args: Mapping[str, Mapping[str, float]],
    progress: GroupProgress | None,
    link: Callable[[Config, Device], Hashable],
) -> list[CommandResult]:
    origin = f"group:{request.group}"
    action = GROUP_ACTIONS[request.action]
    total = len(devices)
    requests = [CommandRequest(d.name, action.command, args[d.type], request.caller, origin=origin) for d in devices]
    tasks = start_bounded(commands, requests, devices, link=link, name=f"group:{request.group}")
    results: list[CommandResult | None] = [None] * total
    done = failed = 0
    if progress is not None:
        _report(progress, request, total, 0, 0, False)
    last_report = time.monotonic()
    unreported = False  # devices finished since the last report
    pending = set(tasks)
    try:
        while pending:
            timeout = None
            if progress is not None and unreported:
                timeout = max(0.0, last_report + PROGRESS_PERIOD - time.monotonic())
            finished, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                k = tasks[task]
                result = results[k] = _result_of(task, devices[k])
                done += 1
                failed += not result.good
                unreported = True
            now = time.monotonic()
            if progress is not None and unreported and pending and now - last_report >= PROGRESS_PERIOD:
                _report(progress, request, total, done, failed, False)
                last_report, unreported = now, False
    finally:
        if pending:  # cancelled (the server stops, the front went away): nothing is left behind
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    if progress is not None:
        _report(progress, request, total, done, failed, True)
    return [r for r in results if r is not None]


def _result_of(task: asyncio.Task, device: Device) -> CommandResult:
    """The device's result; an exception (a bug in the pipeline: it answers refusals with a
    status) is that device's BadInternalError, never the group's end."""
    if task.cancelled():  # the pipeline's own cancellation (the group itself was not cancelled)
        return CommandResult(device.name, BAD_INTERNAL_ERROR, "the command was cancelled")
    exc = task.exception()
    if exc is None:
        return task.result()
    log.error("group_command_failed", device=device.name, error=repr(exc))
    return CommandResult(device.name, BAD_INTERNAL_ERROR, f"internal error: {exc!r}")


def _audit(audit: AuditSink | None, request: GroupRequest, results: Sequence[CommandResult], devices: int) -> None:
    if audit is None:
        return
    counts = Counter(status_name(r.status) for r in results)
    if devices and set(counts) == {"Good"}:
        result = "Good"
    elif not devices:
        result = status_name(results[0].status)  # the group's refusal
    else:
        result = ", ".join(
            f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (kv[0] != "Good", -kv[1], kv[0]))
        )
    caller = request.caller
    arguments = {"action": request.action, "args": dict(request.args), "devices": devices}
    if not devices:
        arguments["message"] = results[0].message
    audit.record(
        AuditRecord(
            time.time_ns(),
            "group_command",
            caller.user,
            tuple(sorted(caller.roles)),
            caller.session,
            caller.client,
            "",
            request.group,
            canonical(arguments),
            result,
        )
    )
