"""Operator actions on alarm instances: acknowledge, reset, shelve, remove from service, notes.

A base of :class:`~scada.alarms.engine.AlarmEngine`: each action names its instance by alarm
and device and goes through the engine's one operator transition (``_operator``), which moves
the ISA-18.2 state, builds the event, journals and notifies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scada.alarms.events import AlarmEvent
from scada.alarms.states import Event, IllegalTransition

MAX_SHELVE_S = 86400  # a shelved alarm must come back
MAX_OUT_OF_SERVICE_S = 7 * 86400  # an alarm removed from service comes back too: a week at most, then renewed


class OperatorActions:
    """The operator's actions; the engine provides the columns and transitions declared here."""

    clock: Callable[[], int]
    shelved_until: np.ndarray
    one_shot: np.ndarray
    extra: dict[int, dict[str, Any]]  # instance -> shelve user/reason, assignment

    def instance(self, alarm: str, device: str) -> int:
        """The instance of ``alarm`` on ``device`` (KeyError if none)."""
        raise NotImplementedError

    def _operator(self, i: int, event: Event, user: str, comment: str, now: int | None = None) -> list[AlarmEvent]:
        raise NotImplementedError

    def _event(self, i: int, event: str, now: int, user: str = "", comment: str = "") -> AlarmEvent:
        raise NotImplementedError

    def _record(self, events: Sequence[AlarmEvent], persist: Sequence[int] = ()) -> None:
        raise NotImplementedError

    def ack(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Acknowledge; IllegalTransition when nothing is owed (already acknowledged, normal)."""
        return self._operator(self.instance(alarm, device), Event.ACK, user, comment)

    def reset(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Reset a latched alarm once its condition is gone and it is acknowledged."""
        return self._operator(self.instance(alarm, device), Event.RESET, user, comment)

    def shelve(
        self, alarm: str, device: str, user: str, reason: str, duration_s: float, one_shot: bool = False
    ) -> list[AlarmEvent]:
        """Hide an alarm for ``duration_s`` (at most 24 h: a shelved alarm must come back);
        ``one_shot``: also until its condition returns to normal, whichever comes first."""
        if not 0 < duration_s <= MAX_SHELVE_S:
            raise ValueError("a shelve lasts more than 0 s and at most 24 h")
        if not reason.strip():
            raise ValueError("shelving needs a reason")
        i = self.instance(alarm, device)
        now = self.clock()
        before = int(self.shelved_until[i]), self.extra.get(i, {}).get("shelve")
        # Set before the transition: subscribers and the saved state see the expiry with the event.
        self.shelved_until[i] = now + int(duration_s * 1e9)
        self.extra.setdefault(i, {})["shelve"] = (user, reason)
        self.one_shot[i] = one_shot
        try:
            return self._operator(i, Event.SHELVE, user, reason, now)
        except IllegalTransition:
            self.one_shot[i] = False  # an illegal SHELVE leaves the state, hence not SHELVED
            self.shelved_until[i] = before[0]
            if before[1] is None:
                self.extra[i].pop("shelve", None)
            else:
                self.extra[i]["shelve"] = before[1]
            raise

    def unshelve(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Show a shelved alarm again before its shelve expires."""
        return self._operator(self.instance(alarm, device), Event.UNSHELVE, user, comment)

    def remove_from_service(
        self, alarm: str, device: str, user: str, comment: str, duration_s: float = MAX_OUT_OF_SERVICE_S
    ) -> list[AlarmEvent]:
        """Take an alarm out of service (maintenance), with a reason: hidden until returned to
        service, or until ``duration_s`` has passed (at most a week: a removal must end; the
        engine's tick returns it to service then, as the user "server").

        The expiry is kept in ``shelved_until``: SHELVED and OUT_OF_SERVICE exclude each other, and
        that column is already saved, restored and mirrored with the instance."""
        if not 0 < duration_s <= MAX_OUT_OF_SERVICE_S:
            raise ValueError("a removal from service lasts more than 0 s and at most 7 days")
        if not comment.strip():
            raise ValueError("removing an alarm from service needs a reason")
        i = self.instance(alarm, device)
        now = self.clock()
        before = int(self.shelved_until[i])
        self.shelved_until[i] = now + int(duration_s * 1e9)  # set first: the event and saved state carry it
        try:
            return self._operator(i, Event.REMOVE_FROM_SERVICE, user, comment, now)
        except IllegalTransition:
            self.shelved_until[i] = before
            raise

    def return_to_service(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Put an alarm removed from service back; its condition as it stands decides."""
        return self._operator(self.instance(alarm, device), Event.RETURN_TO_SERVICE, user, comment)

    def note(self, alarm: str, device: str, user: str, text: str) -> list[AlarmEvent]:
        """Add a note to an alarm's record; no state changes."""
        i = self.instance(alarm, device)
        events = [self._event(i, "NOTE", self.clock(), user, text)]
        self._record(events)
        return events

    def assign(self, alarm: str, device: str, user: str, to: str) -> list[AlarmEvent]:
        """Hand an alarm to a service or a crew (named in the comment of the journal row)."""
        i = self.instance(alarm, device)
        self.extra.setdefault(i, {})["assigned"] = to
        events = [self._event(i, "ASSIGN", self.clock(), user, to)]
        self._record(events)
        return events
