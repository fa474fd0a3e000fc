"""ISA-18.2 alarm states and their transitions, as one table of data.

Every legal transition is one row of :data:`TRANSITIONS`; anything not in the table is
illegal and :func:`transition` raises :class:`IllegalTransition`. :data:`NEXT` is the same
table as a numpy array, so that the engine moves a whole batch of alarm instances with one
fancy-indexing operation (:func:`apply`).

States, with their ISA-18.2-2016 letters (state transition diagram):

============== ===== ================================================================
State          ISA   Meaning
============== ===== ================================================================
NORMAL         A     condition inactive, nothing owed by the operator
UNACK_ACTIVE   B     condition active, not yet acknowledged (announced, flashing)
ACK_ACTIVE     C     condition active, acknowledged
RTN_UNACK      D, E  condition returned to normal before it was acknowledged. For a
                     latching alarm this is ISA's "unacknowledged latched alarm" (E):
                     the acknowledgement leads to LATCHED, not to NORMAL.
LATCHED        F     latching alarm, condition returned to normal, acknowledged, waiting
                     for an explicit operator reset (ISA's "acknowledged latched alarm")
SHELVED        -     hidden by an operator until unshelved or until the shelve expires
SUPPRESSED     -     suppressed by design (by logic: a cause alarm, a mode of the equipment)
OUT_OF_SERVICE -     removed from service for maintenance (authorised), not evaluated
============== ===== ================================================================

Semantics chosen where ISA-18.2 leaves room (each is a row, or the lack of one, below):

* ``active`` is the process condition *at the time of the event*. ACTIVATE and CLEAR carry
  their own condition, so their rows ignore it (None). It decides the way out of SHELVED,
  SUPPRESSED and OUT_OF_SERVICE: active -> UNACK_ACTIVE (announced again, ISA-18.2: the
  alarm returns to the state the process calls for, unacknowledged), inactive -> NORMAL.
* ACTIVATE is legal only where the condition was inactive (NORMAL, RTN_UNACK, LATCHED) and
  CLEAR only where it was active (UNACK_ACTIVE, ACK_ACTIVE): a repeated ACTIVATE means the
  caller lost track of the condition, and raising says so. A new activation of a LATCHED
  alarm is a new occurrence and is announced again (UNACK_ACTIVE).
* In SHELVED, SUPPRESSED and OUT_OF_SERVICE, ACTIVATE and CLEAR are legal and keep the
  state: the engine tracks the condition beside the state and journals them (ISA-18.2:
  shelved and suppressed alarms are still recorded, only not shown).
* ACK is legal only where an acknowledgement is owed (UNACK_ACTIVE, RTN_UNACK). A second ACK
  (two operators at once) is illegal: the caller reports "already acknowledged".
* RESET is legal only from LATCHED with the condition inactive; a reset while the condition
  is active, or before the acknowledgement, is illegal.
* Latching alarms: ACK_ACTIVE + CLEAR -> LATCHED; RTN_UNACK + ACK -> LATCHED. Rows from
  LATCHED require ``latching=True`` (a non-latching alarm in LATCHED is an inconsistency).
* SHELVE and SUPPRESS are legal from NORMAL (operators shelve a chattering alarm
  pre-emptively) and, for non-latching alarms, from UNACK_ACTIVE, ACK_ACTIVE and RTN_UNACK.
  A latching alarm can be shelved or suppressed only from NORMAL: once it has occurred it
  stays shown until reset, because leaving SHELVED/SUPPRESSED goes to NORMAL when the
  condition is gone, which would drop the latch without the reset it exists for.
* SHELVED, SUPPRESSED and OUT_OF_SERVICE exclude each other: SHELVE or SUPPRESS from one of
  them is illegal (the caller re-applies a design suppression whose cause is still active
  once the alarm leaves SHELVED), and a second SHELVE is illegal (extending an expiry is an
  update of the shelve record, not a transition). REMOVE_FROM_SERVICE is legal from every
  other state: maintenance overrides shelving, suppression and a pending latch (it is an
  authorised action and is journalled with its user).
* UNSHELVE (by an operator) and SHELVE_EXPIRED (by the clock) have the same rows; they are
  two events so that the journal tells them apart.

Notes and assignments change no state: the journal records them, the table has no row.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np


class State(IntEnum):
    """ISA-18.2 alarm state of one alarm instance (an alarm definition on one device)."""

    NORMAL = 0
    UNACK_ACTIVE = 1
    ACK_ACTIVE = 2
    RTN_UNACK = 3
    LATCHED = 4
    SHELVED = 5
    SUPPRESSED = 6
    OUT_OF_SERVICE = 7


class Event(IntEnum):
    """What moves an alarm: the process condition, an operator, the clock or design logic."""

    ACTIVATE = 0  # process condition becomes active (after its on-delay)
    CLEAR = 1  # process condition returns to normal (after its off-delay)
    ACK = 2
    RESET = 3  # operator resets a latched alarm
    SHELVE = 4
    UNSHELVE = 5
    SHELVE_EXPIRED = 6
    SUPPRESS = 7  # suppression by design starts (cause alarm, equipment mode)
    UNSUPPRESS = 8
    REMOVE_FROM_SERVICE = 9
    RETURN_TO_SERVICE = 10


class Row(NamedTuple):
    """One legal transition. ``active``/``latching`` None: the row holds for either value."""

    state: State
    event: Event
    active: bool | None
    latching: bool | None
    to: State


S, E = State, Event
_ANY = None
# Announced states an alarm may be shelved or suppressed from, when it is not latching.
_HIDEABLE = (S.UNACK_ACTIVE, S.ACK_ACTIVE, S.RTN_UNACK)
_HIDDEN = (
    (S.SHELVED, (E.UNSHELVE, E.SHELVE_EXPIRED)),
    (S.SUPPRESSED, (E.UNSUPPRESS,)),
    (S.OUT_OF_SERVICE, (E.RETURN_TO_SERVICE,)),
)

TRANSITIONS: tuple[Row, ...] = (
    # -- process condition ------------------------------------------------------------
    Row(S.NORMAL, E.ACTIVATE, _ANY, _ANY, S.UNACK_ACTIVE),
    Row(S.RTN_UNACK, E.ACTIVATE, _ANY, _ANY, S.UNACK_ACTIVE),
    Row(S.LATCHED, E.ACTIVATE, _ANY, True, S.UNACK_ACTIVE),  # a new occurrence: announced
    Row(S.UNACK_ACTIVE, E.CLEAR, _ANY, _ANY, S.RTN_UNACK),  # latching: ISA's E state
    Row(S.ACK_ACTIVE, E.CLEAR, _ANY, False, S.NORMAL),
    Row(S.ACK_ACTIVE, E.CLEAR, _ANY, True, S.LATCHED),
    # While hidden the condition still comes and goes; the engine tracks it beside the state.
    *(Row(s, e, _ANY, _ANY, s) for s, _ in _HIDDEN for e in (E.ACTIVATE, E.CLEAR)),
    # -- operator: acknowledge, reset ----------------------------------------------------
    Row(S.UNACK_ACTIVE, E.ACK, _ANY, _ANY, S.ACK_ACTIVE),
    Row(S.RTN_UNACK, E.ACK, _ANY, False, S.NORMAL),
    Row(S.RTN_UNACK, E.ACK, _ANY, True, S.LATCHED),
    Row(S.LATCHED, E.RESET, False, True, S.NORMAL),
    # -- shelving (operator) and suppression by design ------------------------------------
    Row(S.NORMAL, E.SHELVE, _ANY, _ANY, S.SHELVED),
    *(Row(s, E.SHELVE, _ANY, False, S.SHELVED) for s in _HIDEABLE),
    Row(S.NORMAL, E.SUPPRESS, _ANY, _ANY, S.SUPPRESSED),
    *(Row(s, E.SUPPRESS, _ANY, False, S.SUPPRESSED) for s in _HIDEABLE),
    # -- removal from service (maintenance) ---------------------------------------------
    *(
        Row(s, E.REMOVE_FROM_SERVICE, _ANY, True if s is S.LATCHED else _ANY, S.OUT_OF_SERVICE)
        for s in State
        if s is not S.OUT_OF_SERVICE
    ),
    # -- leaving a hidden state: the process condition decides -----------------------------
    *(Row(s, e, True, _ANY, S.UNACK_ACTIVE) for s, events in _HIDDEN for e in events),
    *(Row(s, e, False, _ANY, S.NORMAL) for s, events in _HIDDEN for e in events),
)


class IllegalTransition(ValueError):
    """An event that the state table does not allow in the alarm's current state."""

    def __init__(self, state: State | int, event: Event | int, active: bool, latching: bool):
        self.state = State(state)
        self.event = Event(event)
        self.active = bool(active)
        self.latching = bool(latching)
        super().__init__(
            f"illegal alarm transition: {self.event.name} in state {self.state.name} "
            f"(condition {'active' if active else 'inactive'}, "
            f"{'latching' if latching else 'non-latching'} alarm)"
        )


def _build_next(rows: tuple[Row, ...]) -> np.ndarray:
    """The table as an array [state, event, active, latching] -> next state, -1 if illegal.

    Two rows that cover the same case are a mistake in the table, caught at import.
    """
    nxt = np.full((len(State), len(Event), 2, 2), -1, dtype=np.int8)
    for row in rows:
        for a in (False, True) if row.active is None else (row.active,):
            for la in (False, True) if row.latching is None else (row.latching,):
                if nxt[row.state, row.event, int(a), int(la)] >= 0:
                    raise RuntimeError(
                        f"state table: two rows for {row.state.name} + {row.event.name} (active={a}, latching={la})"
                    )
                nxt[row.state, row.event, int(a), int(la)] = row.to
    nxt.setflags(write=False)
    return nxt


NEXT: np.ndarray = _build_next(TRANSITIONS)


def transition(state: State | int, event: Event | int, active: bool, latching: bool) -> State:
    """The state after ``event``; raises :class:`IllegalTransition` if the table has no row."""
    to = int(NEXT[state, event, int(bool(active)), int(bool(latching))])
    if to < 0:
        raise IllegalTransition(state, event, active, latching)
    return State(to)


def apply(
    states: np.ndarray, event: Event | int, active: np.ndarray | bool, latching: np.ndarray | bool
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one event to a batch of alarm instances.

    Returns the new states (uint8) and a bool mask of the rows for which the event was legal;
    illegal rows keep their state, and whether that is an error is the caller's decision (a
    suppression that meets an out-of-service alarm is not, an ACTIVATE on an active one is).
    """
    states = np.asarray(states)
    a = np.asarray(active, dtype=bool).astype(np.intp)
    la = np.asarray(latching, dtype=bool).astype(np.intp)
    nxt = NEXT[states.astype(np.intp, copy=False), int(event), a, la]
    legal = nxt >= 0
    return np.where(legal, nxt, states).astype(np.uint8), legal


def _mask(*members: State) -> np.ndarray:
    m = np.zeros(len(State), dtype=bool)
    m[list(members)] = True
    m.setflags(write=False)
    return m


# Lookups indexed by state: ANNOUNCED[states] works on a scalar and on an array alike.
ANNOUNCED = _mask(S.UNACK_ACTIVE, S.ACK_ACTIVE, S.RTN_UNACK, S.LATCHED)
NEEDS_ACK = _mask(S.UNACK_ACTIVE, S.RTN_UNACK)
ACKED = ~NEEDS_ACK
ACKED.setflags(write=False)
NEEDS_RESET = _mask(S.LATCHED)
IN_ALARM = _mask(S.UNACK_ACTIVE, S.ACK_ACTIVE)
HIDDEN = _mask(S.SHELVED, S.SUPPRESSED, S.OUT_OF_SERVICE)


def is_announced(state):
    """Shown to operators in the alarm list: UNACK_ACTIVE, ACK_ACTIVE, RTN_UNACK, LATCHED."""
    return ANNOUNCED[state]


def needs_ack(state):
    """An acknowledgement is owed: UNACK_ACTIVE, RTN_UNACK."""
    return NEEDS_ACK[state]


def is_acked(state):
    """No acknowledgement is owed (OPC UA AckedState): every state but UNACK_ACTIVE, RTN_UNACK.

    In SHELVED, SUPPRESSED and OUT_OF_SERVICE nothing is owed while hidden: leaving them with
    the condition active announces the alarm again, unacknowledged.
    """
    return ACKED[state]


def needs_reset(state):
    """A latched alarm waiting for an operator reset: LATCHED."""
    return NEEDS_RESET[state]


def in_alarm(state):
    """The state itself says the condition is active: UNACK_ACTIVE, ACK_ACTIVE."""
    return IN_ALARM[state]


def is_hidden(state):
    """Not shown although evaluated or tracked: SHELVED, SUPPRESSED, OUT_OF_SERVICE."""
    return HIDDEN[state]
