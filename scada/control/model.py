"""Supervisory control: what a command is, what asks for one, what comes back (pure, no I/O).

The shapes every part of the control path shares: the configuration (:class:`CommandDef`,
:class:`InterlockDef`, :class:`ZoneDef`, :class:`ScheduleDef`, :class:`ControlSettings`, read
from tags.yaml by :mod:`scada.control.config`), a request as the core's pipeline receives it
(:class:`CommandRequest`, from an OPC UA method call, a Write, a group action or a schedule),
and its answer (:class:`CommandResult`, an OPC UA status code and a message that a person can
read). They cross the front/core channel as plain tuples (``to_wire`` / ``from_wire``).

tags.yaml, per equipment type (see the README, "Commands")::

    equipment_types:
      lighting_cabinet:
        ...
        commands:
          SetDimLevel:
            description: Dim the cabinet's lamps (manual dimming)
            role: Operator                 # the least role allowed (default Operator)
            critical: false                # true: Select then Operate (select-before-operate)
            emergency: false               # true: a safety command with its own budget (never critical)
            timeout: 5                     # s for the read-back to confirm (default 3 x the type's timeout, >= 2 s)
            arguments:
              level: {type: float, range: [0, 100], unit: "%"}
            writes:                        # in this order, each through the driver (its own read-back)
              mode: 3                      # a constant (a number, or one of the point's enum labels)
              dim_setpoint: $level         # an argument's value
            confirm:                       # the read-back: every point equal (within tolerance) before timeout
              dim_level: $level
            tolerance: 1                   # for analog confirmations (default 0: equal; half a scale step is the driver's)
            interlocks: [no_trip]          # names from the type's ``interlocks:``
        interlocks:
          no_trip:
            when: not earth_leakage_trip   # must hold for the command to go (the alarm expression language)
            message: the earth-leakage protection has tripped
            status: BadInvalidState        # the refusal's status code (default BadInvalidState)
            inputs:                        # optional: other devices' points, by alias
              up_mode: Dijon/traffic/J-DIJ-001/effective_mode

An enum argument is declared ``{type: enum, enum: {1: flashing, 2: normal}}`` and written as
its number; a ``datetime`` argument is a point in time (an OPC UA DateTime), given in ns since
the epoch here, 0 when the client sent none.

A Write to a writable tag is the implicit command ``Write`` of that point (:func:`write_command`).

Top-level sections::

    control:                 # ControlSettings; every key optional
      select_timeout: 10     # s between Select and Operate
      user_rate: {per_minute: 60, burst: 10}
      device_rate: {per_minute: 20, burst: 4}
      emergency_rate: {per_minute: 10, burst: 3}  # per device, for the emergency commands only
      group_concurrency: 64  # devices commanded at once by one group action
      timezone: Europe/Paris # of the schedules' clock times (default: the machine's)
    zones:
      fire_access_centre: {devices: [B-DIJ-001, B-DIJ-002]}
      hospital: {circle: {lat: 47.32, lon: 5.06, radius_m: 400}, classes: [bollard]}
      old_town: {polygon: [[47.32, 5.03], [47.33, 5.04], [47.31, 5.05]]}
    schedules:
      - name: dijon_night
        communes: [Dijon]          # or zones: [...]; the cabinets of those
        steps:
          - {at: sunset, command: SetMode, arguments: {mode: auto}}
          - {at: "23:00", command: SetDimLevel, arguments: {level: 50}}
          - {at: "01:00", command: SetDimLevel, arguments: {level: 30}}
          - {at: "sunrise+00:15", command: SetMode, arguments: {mode: forced_off}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Status codes of the control path (OPC UA Part 4/6 values, as scada/status.py keeps them: no
# asyncua in the core).
GOOD = 0x00000000
BAD_USER_ACCESS_DENIED = 0x801F0000
BAD_OUT_OF_RANGE = 0x803C0000
BAD_INVALID_ARGUMENT = 0x80AB0000
BAD_TYPE_MISMATCH = 0x80740000
BAD_INVALID_STATE = 0x80AF0000  # an interlock's default refusal
BAD_REQUEST_NOT_ALLOWED = 0x80E40000  # e.g. a conflict flash that only a reset on site clears
BAD_NO_COMMUNICATION = 0x80310000
BAD_TIMEOUT = 0x800A0000
BAD_TOO_MANY_OPERATIONS = 0x80100000
BAD_DEVICE_FAILURE = 0x808B0000  # the device refused the write
BAD_NOT_WRITABLE = 0x803B0000
BAD_NODE_ID_UNKNOWN = 0x80340000  # no such device or command
BAD_SEQUENCE_NUMBER_INVALID = 0x80880000  # Operate without a valid Select (token unknown, other session, expired)
BAD_NOT_EXECUTABLE = 0x81110000
BAD_SHUTDOWN = 0x800C0000
BAD_INTERNAL_ERROR = 0x80020000

STATUS_NAMES: Mapping[int, str] = {
    GOOD: "Good",
    BAD_USER_ACCESS_DENIED: "BadUserAccessDenied",
    BAD_OUT_OF_RANGE: "BadOutOfRange",
    BAD_INVALID_ARGUMENT: "BadInvalidArgument",
    BAD_TYPE_MISMATCH: "BadTypeMismatch",
    BAD_INVALID_STATE: "BadInvalidState",
    BAD_REQUEST_NOT_ALLOWED: "BadRequestNotAllowed",
    BAD_NO_COMMUNICATION: "BadNoCommunication",
    BAD_TIMEOUT: "BadTimeout",
    BAD_TOO_MANY_OPERATIONS: "BadTooManyOperations",
    BAD_DEVICE_FAILURE: "BadDeviceFailure",
    BAD_NOT_WRITABLE: "BadNotWritable",
    BAD_NODE_ID_UNKNOWN: "BadNodeIdUnknown",
    BAD_SEQUENCE_NUMBER_INVALID: "BadSequenceNumberInvalid",
    BAD_NOT_EXECUTABLE: "BadNotExecutable",
    BAD_SHUTDOWN: "BadShutdown",
    BAD_INTERNAL_ERROR: "BadInternalError",
}
# What an interlock's ``status:`` may name (a refusal, never Good).
INTERLOCK_STATUSES: Mapping[str, int] = {
    n: c
    for c, n in STATUS_NAMES.items()
    if c in (BAD_INVALID_STATE, BAD_REQUEST_NOT_ALLOWED, BAD_NOT_EXECUTABLE, BAD_USER_ACCESS_DENIED)
}


def status_name(code: int) -> str:
    return STATUS_NAMES.get(int(code), f"0x{int(code):08X}")


ARG_TYPES = ("float", "int", "bool", "enum", "datetime")

# The users the server itself acts as (never in the users file, never able to log in).
SCHEDULER_USER = "Scheduler"


@dataclass(frozen=True, slots=True)
class ArgDef:
    name: str
    type: str  # one of ARG_TYPES
    range: tuple[float, float] | None = None
    enum: tuple[tuple[int, str], ...] | None = None  # value -> label (type enum)
    unit: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    """One point written or confirmed: a constant ``value``, or the argument ``arg``'s value."""

    point: str
    value: float | None = None
    arg: str | None = None

    def resolve(self, args: Mapping[str, float]) -> float:
        return float(args[self.arg]) if self.arg is not None else float(self.value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class InterlockDef:
    """``when`` must hold (be true) for the commands that name this interlock to go."""

    name: str
    when: str  # an expression over the type's points and ``inputs``' aliases (scada.alarms.expr)
    message: str
    status: int = BAD_INVALID_STATE
    inputs: Mapping[str, str] = field(default_factory=dict)  # alias -> another device's tag name
    source: str = ""  # file:line


@dataclass(frozen=True, slots=True)
class CommandDef:
    name: str
    type_name: str  # the equipment type
    arguments: tuple[ArgDef, ...]
    writes: tuple[Step, ...]
    confirm: tuple[Step, ...]
    timeout: float  # s for the read-back
    role: str = "Operator"  # scada.security.identity.Role value: the least role allowed
    critical: bool = False  # select-before-operate
    interlocks: tuple[str, ...] = ()  # names in the type's interlocks
    tolerance: float = 0.0
    description: str = ""
    source: str = ""  # file:line
    # A safety command (the fire brigade's EmergencyLower): it draws on budgets of its own, per
    # device (ControlSettings.emergency_rate) and per user, that routine commands never use
    # (scada/control/limits.py). Never critical: an emergency does not wait for a Select.
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: float
    burst: int


@dataclass(frozen=True, slots=True)
class ControlSettings:
    select_timeout: float = 10.0
    user_rate: RateLimit = RateLimit(60.0, 10)
    device_rate: RateLimit = RateLimit(20.0, 4)
    emergency_rate: RateLimit = RateLimit(10.0, 3)  # per device, for the emergency commands only
    group_concurrency: int = 64
    timezone: str = ""  # the schedules' clock times ("23:00"): an IANA zone; "" the machine's own


@dataclass(frozen=True, slots=True)
class ZoneDef:
    """A named set of devices: listed, or those inside a circle or a polygon (optionally only
    some classes). Resolved against the devices' coordinates by scada.control.zones."""

    name: str
    devices: tuple[str, ...] = ()
    circle: tuple[float, float, float] | None = None  # lat, lon, radius in metres
    polygon: tuple[tuple[float, float], ...] = ()  # (lat, lon) vertices
    classes: tuple[str, ...] = ()  # empty: every class
    source: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """``at``: "sunset", "sunrise", "HH:MM" (local civil time of the server), with an optional
    offset "sunset-00:30" / "sunrise+00:15"; kept parsed: ``anchor`` in ("sunset", "sunrise",
    "clock") and ``offset_s`` (for "clock": seconds after local midnight)."""

    anchor: str
    offset_s: float
    command: str
    arguments: Mapping[str, float]
    text: str = ""  # as written


@dataclass(frozen=True, slots=True)
class ScheduleDef:
    name: str
    communes: tuple[str, ...]
    zones: tuple[str, ...]
    steps: tuple[ScheduleStep, ...]
    classes: tuple[str, ...] = ("lighting",)
    source: str = ""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Everything tags.yaml says about control (``Config.control``)."""

    commands: Mapping[str, Mapping[str, CommandDef]] = field(default_factory=dict)  # type -> name -> def
    interlocks: Mapping[str, Mapping[str, InterlockDef]] = field(default_factory=dict)  # type -> name -> def
    zones: Mapping[str, ZoneDef] = field(default_factory=dict)
    schedules: tuple[ScheduleDef, ...] = ()
    settings: ControlSettings = ControlSettings()


# The group actions (methods on commune and class folders and on zones): the command each one
# runs on every device of its class in the group, with the group method's arguments by the same
# names. A critical command is never run by a group (refused: BadRequestNotAllowed).
@dataclass(frozen=True, slots=True)
class GroupAction:
    cls: str  # the equipment class whose devices it commands
    command: str
    arguments: tuple[str, ...]


GROUP_ACTIONS: Mapping[str, GroupAction] = {
    "DimAll": GroupAction("lighting", "SetDimLevel", ("level",)),
    "OpenZone": GroupAction("bollard", "Lower", ()),
    "CloseZone": GroupAction("bollard", "Raise", ()),
    "SetCorridorPlan": GroupAction("traffic", "SetPlan", ("plan",)),
}
WRITE = "Write"  # the implicit command of a Write to a writable tag: args {"value": v}, plus the point
ZONE_PREFIX = "zone:"  # GroupRequest.group of a zone


# -- requests and results ---------------------------------------------------------------------

PHASES = ("execute", "select", "operate", "cancel")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: what the pipeline needs of the session's Identity and RequestContext."""

    user: str
    roles: tuple[str, ...]
    communes: tuple[str, ...] | None  # None: every commune
    session: str = ""  # the OPC UA session (select-before-operate is per session)
    client: str = ""  # address, for the audit
    anonymous: bool = False

    def to_wire(self) -> tuple:
        return (self.user, self.roles, self.communes, self.session, self.client, self.anonymous)

    @classmethod
    def from_wire(cls, w: Any) -> Caller:
        user, roles, communes, session, client, anonymous = w
        return cls(
            str(user),
            tuple(str(r) for r in roles),
            None if communes is None else tuple(str(c) for c in communes),
            str(session),
            str(client),
            bool(anonymous),
        )


SCHEDULER = Caller(SCHEDULER_USER, ("Operator",), None, session="scheduler")


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """One command to one device. ``args`` by name, numbers (enum: its value; datetime: ns)."""

    device: str
    command: str  # a CommandDef name, or WRITE: then ``point`` names the point and args are {"value": v}
    args: Mapping[str, float]
    caller: Caller
    phase: str = "execute"  # execute (not critical), select / operate / cancel (critical)
    token: str = ""  # operate / cancel: what select returned
    origin: str = "hmi"  # hmi | write | group:<name> | schedule:<name>
    point: str = ""  # WRITE only

    def to_wire(self) -> tuple:
        return (
            self.device,
            self.command,
            dict(self.args),
            self.caller.to_wire(),
            self.phase,
            self.token,
            self.origin,
            self.point,
        )

    @classmethod
    def from_wire(cls, w: Any) -> CommandRequest:
        device, command, args, caller, phase, token, origin, point = w
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        return cls(
            str(device),
            str(command),
            {str(k): float(v) for k, v in dict(args).items()},
            Caller.from_wire(caller),
            str(phase),
            str(token),
            str(origin),
            str(point),
        )


@dataclass(frozen=True, slots=True)
class CommandResult:
    device: str
    status: int
    message: str = ""  # what a person reads: the interlock's message, the device's error...
    interlock: str = ""  # the refusing interlock's name
    token: str = ""  # select: the token to Operate with

    @property
    def good(self) -> bool:
        return (self.status & 0xC0000000) == 0

    def to_wire(self) -> tuple:
        return (self.device, self.status, self.message, self.interlock, self.token)

    @classmethod
    def from_wire(cls, w: Any) -> CommandResult:
        device, status, message, interlock, token = w
        return cls(str(device), int(status), str(message), str(interlock), str(token))


@dataclass(frozen=True, slots=True)
class GroupRequest:
    """One command to every device of a group: a commune folder ("Dijon"), a class folder
    ("Dijon/lighting"), or a zone ("zone:fire_access_centre")."""

    group: str
    action: str  # DimAll | OpenZone | CloseZone | SetCorridorPlan
    args: Mapping[str, float]
    caller: Caller

    def to_wire(self) -> tuple:
        return (self.group, self.action, dict(self.args), self.caller.to_wire())

    @classmethod
    def from_wire(cls, w: Any) -> GroupRequest:
        group, action, args, caller = w
        return cls(str(group), str(action), {str(k): float(v) for k, v in dict(args).items()}, Caller.from_wire(caller))
