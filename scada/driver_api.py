"""The driver interface the core declares and every protocol driver implements, and its errors.

A driver package (``drivers/<name>/``) has three modules: ``config.py`` reads its own point
and device keys out of tags.yaml, ``codec.py`` turns wire data into arrays and back (pure),
``driver.py`` does the I/O. The registry of drivers lives at the composition point
(``drivers/__init__.py``), not here: the core never imports a driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from common.fields import Fields


class DriverError(Exception):
    """Base of the errors a driver raises; a library's own exception never escapes."""


class CommandRejected(DriverError):
    """``check`` refused a command: not writable, out of range, wrong type, unknown tag."""


class DeviceUnreachable(DriverError):
    """The device did not answer (connection refused, timeout, link down)."""


class DeviceRejected(DriverError):
    """The device answered with an error (for Modbus: an exception response)."""


@dataclass(frozen=True, slots=True)
class WriteCommand:
    """Set one tag to a value, in engineering units."""

    tag: str
    value: float


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


class DriverConfig(Protocol):
    """A driver's ``config`` module: reads the keys tags.yaml gives to this driver."""

    POINT_KEYS: frozenset[str]
    DEVICE_KEYS: frozenset[str]
    # Optional: TYPE_KEYS and parse_type(f) for type-level options (an MQTT status topic...).

    def parse_point(self, f: Fields) -> Any:
        """Driver part of a point (an object with a ``kind`` attribute: ANALOG/DISCRETE/TEXT)."""

    def parse_device(self, f: Fields) -> Any:
        """Driver part of a device (endpoint and the like)."""

    def check_type(self, type_name: str, points: dict[str, Any], where: Fields, type_io: Any = None) -> None:
        """Cross-point checks within one equipment type (overlapping addresses, say)."""


class Driver(Protocol):
    """A running driver: owns devices, reports values into the tag database."""

    name: str

    async def run(self) -> None:
        """Connect, poll or subscribe until cancelled; reconnect with capped, jittered backoff."""

    def check(self, command: WriteCommand) -> None:
        """Validate a command without touching hardware; raise CommandRejected."""

    async def write(self, command: WriteCommand) -> None:
        """Send a command; raise DriverError subclasses only."""

    def diagnostics(self) -> dict[str, Any]:
        """Counters for the status line: devices in communication, polls, errors."""
