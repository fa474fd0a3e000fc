"""The driver interface the core declares and every protocol driver implements, and its errors.

A driver package (``drivers/<name>/``) has three modules: ``config.py`` reads its own point
and device keys out of tags.yaml, ``codec.py`` turns wire data into arrays and back (pure),
``driver.py`` does the I/O. This module is the whole contract between the core and a driver:
the core reads tags.yaml through :class:`DriverConfig`, builds drivers with a
:class:`DriverPlugin`'s factory and runs them as :class:`Driver`. It never imports a driver
nor probes one with ``getattr``: the registry of drivers (``city_scada/registry.py``, the
composition point) is handed to it as a :data:`Drivers` mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from common.fields import Fields, KeyTable, Schema
    from scada.config import Config, Device
    from scada.tagdb import TagDB


class DriverError(Exception):
    """Base of the errors a driver raises; a library's own exception never escapes."""


class CommandRejected(DriverError):
    """``check`` refused a command: not writable, out of range, wrong type, unknown tag."""


class DeviceUnreachable(DriverError):
    """The device did not answer (connection refused, timeout, link down)."""


class DeviceTimeout(DeviceUnreachable):
    """The request went out and no answer came in time: the device may have acted on it (a
    write's outcome is unknown), unlike a request that could not be sent at all."""


class DeviceRejected(DriverError):
    """The device answered with an error (for Modbus: an exception response)."""


@dataclass(frozen=True, slots=True)
class WriteCommand:
    """Set one tag to a value, in engineering units.

    ``readback`` False: the caller confirms the write's effect itself (the command pipeline reads
    a command's confirm points), so a driver that reads each written point back (Modbus) may skip
    that read: a city-wide dimming then costs the field 3 requests per cabinet instead of 5.
    """

    tag: str
    value: float
    readback: bool = True


def lookup(index: dict[str, Any], command: WriteCommand) -> Any:
    """What a driver indexed under the command's tag, or CommandRejected for an unknown tag."""
    try:
        return index[command.tag]
    except KeyError:
        raise CommandRejected(f"unknown tag {command.tag!r}") from None


def check_point(point: Any, command: WriteCommand) -> None:
    """The checks every driver makes of a write against tags.yaml: writable, range, enumeration."""
    if not point.writable:
        raise CommandRejected(f"{command.tag} is not writable")
    if point.range and not point.range[0] <= command.value <= point.range[1]:
        raise CommandRejected(f"{command.value} is outside {command.tag}'s range {list(point.range)}")
    if point.enum and command.value not in dict(point.enum):
        raise CommandRejected(f"{command.value} is not one of {command.tag}'s states {dict(point.enum)}")


class PointIO(Protocol):
    """The driver part of a point, as ``DriverConfig.parse_point`` returns it."""

    @property
    def kind(self) -> int:
        """tagdb.ANALOG, DISCRETE or TEXT (an ``enum:`` in tags.yaml makes a point DISCRETE)."""
        ...

    @property
    def writable_ok(self) -> bool:
        """Whether the point may be declared ``writable: true`` (a Modbus input register may not)."""
        ...

    @property
    def not_writable_reason(self) -> str:
        """The error message when a point that cannot be written is declared writable."""
        ...

    @property
    def needs_command_enum(self) -> bool:
        """A command point (MQTT): it must be writable and list its commands in an ``enum:``."""
        ...

    @property
    def reports_back(self) -> bool:
        """Whether the device gives a written value back to a read (False: e.g. a Modbus
        ``readback: false`` coil that resets itself; a command confirms its effect otherwise)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceSite:
    """One device as a driver's device check sees it: name, driver part, and where it is written."""

    name: str
    io: Any  # what the driver's parse_device returned
    source: str  # "file:line" of the device, for "declared at ..." in a message
    fields: Fields  # the device's keys (YAML or a CSV row): ``fields.error(key, ...)`` is located


class DriverConfig(Protocol):
    """A driver's ``config`` module: reads and checks the keys tags.yaml gives to this driver."""

    # The key tables are the loader's and the JSON Schema's one source (``scada schema``):
    # each key with its converter, default and description (common.fields.Key).

    @property
    def POINT_KEYS(self) -> KeyTable:  # noqa: N802 - module constants of the driver's config
        """Keys a point of this driver may have, besides the common ones (unit, range...)."""
        ...

    @property
    def DEVICE_KEYS(self) -> KeyTable:  # noqa: N802
        """Keys a device of this driver may have, besides the common ones (name, commune...)."""
        ...

    @property
    def TYPE_KEYS(self) -> KeyTable:  # noqa: N802
        """Type-level keys of this driver (an MQTT status topic...); may be empty."""
        ...

    @property
    def POINT_RULES(self) -> Sequence[Schema]:  # noqa: N802
        """Cross-key rules of a point the schema states (if/then fragments); may be empty."""
        ...

    @property
    def TYPE_RULES(self) -> Sequence[Schema]:  # noqa: N802
        """Cross-key rules of the type-level keys; may be empty."""
        ...

    @property
    def DEVICE_RULES(self) -> Sequence[Schema]:  # noqa: N802
        """Cross-key rules of a device's keys; may be empty."""
        ...

    @property
    def SCHEMA_DESCRIPTION(self) -> str:  # noqa: N802
        """What ``driver: <name>`` means, one line, for the editor's list of drivers."""
        ...

    def parse_point(self, f: Fields) -> PointIO:
        """Driver part of a point."""
        ...

    def parse_device(self, f: Fields) -> Any:
        """Driver part of a device (endpoint and the like)."""
        ...

    def parse_type(self, f: Fields) -> Any:
        """Driver part of an equipment type, from its TYPE_KEYS (called even when none is written)."""
        ...

    def check_type(self, type_name: str, points: dict[str, Any], where: Fields, type_io: Any = None) -> None:
        """Cross-point checks within one equipment type (overlapping addresses, say)."""
        ...

    def check_devices(self, devices: Sequence[DeviceSite]) -> None:
        """Cross-device checks, called once with every device of this driver in declaration
        order (one device under two names, a serial line's settings); raises a located ConfigError."""
        ...


class Driver(Protocol):
    """A running driver: owns devices, reports values into the tag database."""

    name: str

    async def run(self) -> None:
        """Connect, poll or subscribe until cancelled; reconnect with capped, jittered backoff."""

    def check(self, command: WriteCommand) -> None:
        """Validate a command without touching hardware; raise CommandRejected."""

    async def write(self, command: WriteCommand) -> None:
        """Send a command; raise DriverError subclasses only."""

    async def read_now(self, tags: Sequence[str]) -> None:
        """Read these tags (names, as in a WriteCommand) from their devices now, out of the poll
        schedule, and report them through the tag database as a poll does; return once they
        are stored (a tag already current needs no read: a driver whose values are pushed
        returns at once). The command pipeline asks it for a command's read-back, so that the
        confirmation does not wait for the next poll. Raise DriverError subclasses only."""

    def diagnostics(self) -> dict[str, Any]:
        """Counters for the status line: devices in communication, polls, errors."""


@runtime_checkable
class MessageChannel(Protocol):
    """A driver that also carries messages to and from its devices, beside their tags (the MQTT
    driver: a crew's work orders and the crew's answers, scada/operations/model.py). Optional: the
    core asks ``isinstance(driver, MessageChannel)``.

    ``channel`` names one of the device type's message channels (tags.yaml: the type's topics for
    it); payloads are JSON objects. Answers are delivered in the order they arrive, each one (never
    coalesced like tag values), to the callbacks given to :meth:`listen`, on the event loop; a
    callback must not block.
    """

    async def send(self, device: str, channel: str, payload: Mapping[str, Any]) -> None:
        """Send ``payload`` to ``device`` on ``channel``; DeviceUnreachable when the link is down,
        CommandRejected for an unknown device or channel."""

    def listen(self, channel: str, callback: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Call ``callback(device, payload)`` for every message a device sends on ``channel``."""


# What a driver's factory is given: the whole configuration, the devices of this driver (in
# configuration order) and the tag database it reports into.
DriverFactory = Callable[["Config", "list[Device]", "TagDB"], Driver]


@dataclass(frozen=True, slots=True)
class DriverPlugin:
    """One row of the registry: the name tags.yaml gives a driver, its config module, its factory."""

    name: str
    config: DriverConfig
    create: DriverFactory


# The registry as the core receives it: driver name in tags.yaml -> its plugin.
Drivers = Mapping[str, DriverPlugin]
