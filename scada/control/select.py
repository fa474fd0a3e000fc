"""Select-before-operate: the selections of critical commands, one per device (pure, no I/O).

A critical command (``critical: true`` in tags.yaml) goes in two steps, as in IEC 61850's
SBO: Select (after every check) returns a random token and reserves the device for the
selecting session; Operate, from the same session, with that token, for the same command,
within ``select_timeout`` seconds, runs it; Cancel ends the selection. Anything else is
refused with the reason. The device's states and the legal moves between them are the table
:data:`TRANSITIONS`; an illegal move raises (a bug, never a client's error: the client's
errors are refusals decided before any move).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

IDLE, SELECTED = "idle", "selected"
# (state, event) -> next state. "operate" and "cancel" end a selection; "expire" is the timeout;
# "select" again by the selecting session replaces its selection (a new token).
TRANSITIONS: Mapping[tuple[str, str], str] = {
    (IDLE, "select"): SELECTED,
    (SELECTED, "select"): SELECTED,
    (SELECTED, "operate"): IDLE,
    (SELECTED, "cancel"): IDLE,
    (SELECTED, "expire"): IDLE,
}


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the caller."""


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"no {event!r} from {state!r}") from None


@dataclass(frozen=True, slots=True)
class Selection:
    device: str
    session: str
    user: str
    command: str
    args: Mapping[str, float]
    token: str
    expires: float  # clock() time


class Refused(Exception):
    """An Operate or Cancel that does not match a live selection, or a Select on a device
    another session holds: ``args[0]`` is what a person reads."""


class Selections:
    """The live selections, per device."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._by_device: dict[str, Selection] = {}

    def state(self, device: str) -> str:
        self._expire(device)
        return SELECTED if device in self._by_device else IDLE

    def get(self, device: str) -> Selection | None:
        self._expire(device)
        return self._by_device.get(device)

    def _expire(self, device: str) -> Selection | None:
        """Drop the device's selection if its time is up; return it then."""
        sel = self._by_device.get(device)
        if sel is not None and self.clock() >= sel.expires:
            next_state(SELECTED, "expire")
            del self._by_device[device]
            return sel
        return None

    def expire(self, device: str, token: str) -> bool:
        """The timer of selection ``token``: True when it ended it now."""
        sel = self._by_device.get(device)
        if sel is None or sel.token != token or self.clock() < sel.expires:
            return False
        next_state(SELECTED, "expire")
        del self._by_device[device]
        return True

    def select(self, device: str, session: str, user: str, command: str, args: Mapping[str, float]) -> Selection:
        """Reserve ``device`` for ``session``: the new selection (Refused when another session holds it)."""
        self._expire(device)
        held = self._by_device.get(device)
        if held is not None and held.session != session:
            raise Refused(f"{device} is selected by another session (user {held.user}, {held.command})")
        next_state(SELECTED if held else IDLE, "select")
        sel = Selection(device, session, user, command, dict(args), secrets.token_hex(16), self.clock() + self.timeout)
        self._by_device[device] = sel
        return sel

    def check(self, device: str, session: str, token: str, command: str) -> Selection:
        """The selection an Operate or a Cancel names, unchanged; Refused with the reason."""
        expired = self._expire(device)
        sel = self._by_device.get(device)
        if sel is None:
            if expired is not None and expired.token == token:
                raise Refused(f"the Select of {device} expired after {self.timeout:g} s: select again")
            raise Refused(f"{device} is not selected: Select first")
        if sel.session != session:
            raise Refused(f"{device} was selected by another session")
        if not token or not secrets.compare_digest(sel.token, token):
            raise Refused(f"the token does not match {device}'s selection")
        if sel.command != command:
            raise Refused(f"{device} was selected for {sel.command}, not {command}")
        return sel

    def end(self, device: str, event: str) -> None:
        """Operate ("operate") or Cancel ("cancel") ends the device's selection."""
        if device not in self._by_device:
            raise IllegalTransition(f"no {event!r} from {IDLE!r}")
        next_state(SELECTED, event)
        del self._by_device[device]

    def clear(self) -> None:
        self._by_device.clear()

    def __len__(self) -> int:
        return len(self._by_device)
