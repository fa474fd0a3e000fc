"""What the alarm engine hands out: one :class:`AlarmEvent` per transition or operator action.

Subscribers (OPC UA Alarms & Conditions) receive the events, the journal one
:class:`~scada.alarms.journal.JournalRow` per event (:func:`journal_row`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scada.alarms.journal import JournalRow
from scada.alarms.states import State

# Events that show an alarm to operators again (counted in the announcement rate when they
# leave it unacknowledged and active).
ANNOUNCING = ("ACTIVATE", "UNSHELVE", "SHELVE_EXPIRED", "UNSUPPRESS", "RETURN_TO_SERVICE")
# By state: shown to operators (active, or owing an acknowledgement or a reset).
ANNOUNCED = np.zeros(len(State), bool)
ANNOUNCED[[State.UNACK_ACTIVE, State.ACK_ACTIVE, State.RTN_UNACK, State.LATCHED]] = True


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition or operator action, as subscribers (OPC UA A&C) receive it."""

    time_ns: int
    instance: int  # the engine's instance row; -1 for a server alarm (no instance)
    alarm: str
    device: str
    commune: str
    event: str  # an Event name, or NOTE / ASSIGN / ESCALATE
    state: State
    active: bool
    value: float | None
    priority: str
    severity: int
    service: str
    message: str
    user: str = ""
    comment: str = ""
    seq: int = 0  # the instance's event number (OPC UA EventIds are derived from it and time_ns)


def journal_row(e: AlarmEvent) -> JournalRow:
    """The journal's row for ``e``."""
    return JournalRow(
        e.time_ns,
        e.alarm,
        e.device,
        e.commune,
        e.value,
        e.priority,
        e.severity,
        e.event,
        e.state.name,
        e.user,
        e.comment,
        e.service,
        e.message,
    )
