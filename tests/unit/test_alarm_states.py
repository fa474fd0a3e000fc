"""The ISA-18.2 state table: every (state, event, condition, latching) is legal as expected or raises.

The expected outcome is written here independently of scada/alarms/states.py, as the rules
stated in its docstring, so that a wrong row in the table (or a missing one) fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scada.alarms import states as st
from scada.alarms.states import Event, IllegalTransition, State, apply, transition

S, E = State, Event
HIDDEN_EXITS = {S.SHELVED: {E.UNSHELVE, E.SHELVE_EXPIRED}, S.SUPPRESSED: {E.UNSUPPRESS},
                S.OUT_OF_SERVICE: {E.RETURN_TO_SERVICE}}


def expected(state: State, event: Event, active: bool, latching: bool) -> State | None:
    """The semantics as rules; None = illegal."""
    if state is S.LATCHED and not latching:
        return None  # only a latching alarm can be latched
    if state in HIDDEN_EXITS:
        if event in (E.ACTIVATE, E.CLEAR):
            return state
        if event in HIDDEN_EXITS[state]:
            return S.UNACK_ACTIVE if active else S.NORMAL
        if event is E.REMOVE_FROM_SERVICE and state is not S.OUT_OF_SERVICE:
            return S.OUT_OF_SERVICE
        return None
    if event is E.REMOVE_FROM_SERVICE:
        return S.OUT_OF_SERVICE
    if event is E.ACTIVATE:
        return S.UNACK_ACTIVE if state in (S.NORMAL, S.RTN_UNACK, S.LATCHED) else None
    if event is E.CLEAR:
        if state is S.UNACK_ACTIVE:
            return S.RTN_UNACK
        if state is S.ACK_ACTIVE:
            return S.LATCHED if latching else S.NORMAL
        return None
    if event is E.ACK:
        if state is S.UNACK_ACTIVE:
            return S.ACK_ACTIVE
        if state is S.RTN_UNACK:
            return S.LATCHED if latching else S.NORMAL
        return None
    if event is E.RESET:
        return S.NORMAL if state is S.LATCHED and not active else None
    if event in (E.SHELVE, E.SUPPRESS):
        to = S.SHELVED if event is E.SHELVE else S.SUPPRESSED
        if state is S.NORMAL:
            return to
        if state in (S.UNACK_ACTIVE, S.ACK_ACTIVE, S.RTN_UNACK) and not latching:
            return to
        return None
    return None  # UNSHELVE, SHELVE_EXPIRED, UNSUPPRESS, RETURN_TO_SERVICE outside their state


# Key cases written out by hand, as an operator would describe them.
KEY_CASES = {
    (S.NORMAL, E.ACTIVATE, True, False): S.UNACK_ACTIVE,
    (S.NORMAL, E.ACK, False, False): None,
    (S.NORMAL, E.RESET, False, True): None,
    (S.NORMAL, E.CLEAR, False, False): None,
    (S.UNACK_ACTIVE, E.ACTIVATE, True, False): None,
    (S.UNACK_ACTIVE, E.ACK, True, False): S.ACK_ACTIVE,
    (S.UNACK_ACTIVE, E.CLEAR, False, False): S.RTN_UNACK,
    (S.UNACK_ACTIVE, E.CLEAR, False, True): S.RTN_UNACK,
    (S.UNACK_ACTIVE, E.RESET, True, True): None,
    (S.ACK_ACTIVE, E.ACK, True, False): None,
    (S.ACK_ACTIVE, E.CLEAR, False, False): S.NORMAL,
    (S.ACK_ACTIVE, E.CLEAR, False, True): S.LATCHED,
    (S.ACK_ACTIVE, E.RESET, True, True): None,
    (S.RTN_UNACK, E.ACK, False, False): S.NORMAL,
    (S.RTN_UNACK, E.ACK, False, True): S.LATCHED,
    (S.RTN_UNACK, E.ACTIVATE, True, False): S.UNACK_ACTIVE,
    (S.RTN_UNACK, E.RESET, False, True): None,
    (S.LATCHED, E.RESET, False, True): S.NORMAL,
    (S.LATCHED, E.RESET, True, True): None,
    (S.LATCHED, E.ACK, False, True): None,
    (S.LATCHED, E.ACTIVATE, True, True): S.UNACK_ACTIVE,
    (S.LATCHED, E.SHELVE, False, True): None,
    (S.NORMAL, E.SHELVE, False, True): S.SHELVED,
    (S.UNACK_ACTIVE, E.SHELVE, True, False): S.SHELVED,
    (S.UNACK_ACTIVE, E.SHELVE, True, True): None,
    (S.RTN_UNACK, E.SHELVE, False, False): S.SHELVED,
    (S.SHELVED, E.SHELVE, True, False): None,
    (S.SHELVED, E.ACTIVATE, True, False): S.SHELVED,
    (S.SHELVED, E.CLEAR, False, False): S.SHELVED,
    (S.SHELVED, E.ACK, True, False): None,
    (S.SHELVED, E.UNSHELVE, True, False): S.UNACK_ACTIVE,
    (S.SHELVED, E.UNSHELVE, False, False): S.NORMAL,
    (S.SHELVED, E.SHELVE_EXPIRED, True, True): S.UNACK_ACTIVE,
    (S.SHELVED, E.SUPPRESS, True, False): None,
    (S.NORMAL, E.UNSHELVE, False, False): None,
    (S.ACK_ACTIVE, E.SUPPRESS, True, False): S.SUPPRESSED,
    (S.SUPPRESSED, E.UNSUPPRESS, True, False): S.UNACK_ACTIVE,
    (S.SUPPRESSED, E.UNSUPPRESS, False, False): S.NORMAL,
    (S.SUPPRESSED, E.SHELVE, False, False): None,
    (S.LATCHED, E.REMOVE_FROM_SERVICE, False, True): S.OUT_OF_SERVICE,
    (S.SHELVED, E.REMOVE_FROM_SERVICE, True, False): S.OUT_OF_SERVICE,
    (S.OUT_OF_SERVICE, E.REMOVE_FROM_SERVICE, False, False): None,
    (S.OUT_OF_SERVICE, E.ACTIVATE, True, False): S.OUT_OF_SERVICE,
    (S.OUT_OF_SERVICE, E.RETURN_TO_SERVICE, True, False): S.UNACK_ACTIVE,
    (S.OUT_OF_SERVICE, E.RETURN_TO_SERVICE, False, True): S.NORMAL,
    (S.OUT_OF_SERVICE, E.UNSHELVE, False, False): None,
}

ALL = list(itertools.product(State, Event, (False, True), (False, True)))


@pytest.mark.parametrize("case,want", list(KEY_CASES.items()),
                         ids=[f"{s.name}-{e.name}-{'A' if a else 'a'}{'L' if la else 'l'}"
                              for s, e, a, la in KEY_CASES])
def test_key_cases_agree_with_the_rules(case, want):
    assert expected(*case) is want


@pytest.mark.parametrize("state,event,active,latching", ALL,
                         ids=[f"{s.name}-{e.name}-{'A' if a else 'a'}{'L' if la else 'l'}" for s, e, a, la in ALL])
def test_every_combination_matches_or_raises(state, event, active, latching):
    want = expected(state, event, active, latching)
    if want is None:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event, active, latching)
        assert info.value.state is state and info.value.event is event
        assert state.name in str(info.value) and event.name in str(info.value)
    else:
        assert transition(state, event, active, latching) is want


def test_table_rows_are_the_legal_cases():
    """Every legal case comes from exactly one row, and NEXT is -1 elsewhere."""
    covered = set()
    for row in st.TRANSITIONS:
        for a in (False, True):
            for la in (False, True):
                if (row.active is None or row.active == a) and (row.latching is None or row.latching == la):
                    key = (row.state, row.event, a, la)
                    assert key not in covered, f"two rows cover {key}"
                    covered.add(key)
                    assert st.NEXT[row.state, row.event, int(a), int(la)] == row.to
    legal = {c for c in ALL if expected(*c) is not None}
    assert covered == legal
    assert st.NEXT.shape == (len(State), len(Event), 2, 2) and st.NEXT.dtype == np.int8
    assert int((st.NEXT >= 0).sum()) == len(legal)
    assert not st.NEXT.flags.writeable


def test_illegal_transition_is_a_value_error():
    with pytest.raises(ValueError, match="illegal alarm transition: ACK in state NORMAL"):
        transition(State.NORMAL, Event.ACK, False, False)


def test_vectorised_apply_equals_scalar_transition():
    rng = np.random.default_rng(18_2)
    n = 5_000
    for event in Event:
        states = rng.integers(0, len(State), n).astype(np.uint8)
        active = rng.random(n) < 0.5
        latching = rng.random(n) < 0.3
        new, legal = apply(states, event, active, latching)
        assert new.dtype == np.uint8 and legal.dtype == bool and new.shape == (n,)
        for i in range(n):
            try:
                want = transition(int(states[i]), event, bool(active[i]), bool(latching[i]))
            except IllegalTransition:
                assert not legal[i] and new[i] == states[i]
            else:
                assert legal[i] and new[i] == want


def test_apply_broadcasts_scalar_flags_and_leaves_input_alone():
    states = np.array([S.NORMAL, S.UNACK_ACTIVE, S.ACK_ACTIVE, S.SHELVED], dtype=np.uint8)
    before = states.copy()
    new, legal = apply(states, Event.ACTIVATE, True, False)
    assert list(new) == [S.UNACK_ACTIVE, S.UNACK_ACTIVE, S.ACK_ACTIVE, S.SHELVED]
    assert list(legal) == [True, False, False, True]
    assert np.array_equal(states, before)


def test_latching_walk_through():
    """Traffic conflict fault: it clears only after the condition is gone and an operator resets it."""
    s = transition(S.NORMAL, E.ACTIVATE, True, True)
    assert s is S.UNACK_ACTIVE and st.needs_ack(s)
    s = transition(s, E.ACK, True, True)
    assert s is S.ACK_ACTIVE
    with pytest.raises(IllegalTransition):
        transition(s, E.RESET, True, True)  # reset while the fault is there
    s = transition(s, E.CLEAR, False, True)
    assert s is S.LATCHED and st.is_announced(s) and st.needs_reset(s) and st.is_acked(s)
    with pytest.raises(IllegalTransition):
        transition(s, E.RESET, True, True)  # the fault came back before the reset: not resettable
    s = transition(s, E.RESET, False, True)
    assert s is S.NORMAL and not st.is_announced(s)


def test_latching_alarm_cleared_before_ack_needs_ack_then_reset():
    s = transition(S.NORMAL, E.ACTIVATE, True, True)
    s = transition(s, E.CLEAR, False, True)
    assert s is S.RTN_UNACK
    with pytest.raises(IllegalTransition):
        transition(s, E.RESET, False, True)  # acknowledge first
    s = transition(s, E.ACK, False, True)
    assert s is S.LATCHED
    assert transition(s, E.RESET, False, True) is S.NORMAL
    # the non-latching twin goes straight back to normal on the acknowledgement
    assert transition(S.RTN_UNACK, E.ACK, False, False) is S.NORMAL


def test_shelve_and_unshelve_with_active_and_inactive_condition():
    s = transition(S.UNACK_ACTIVE, E.SHELVE, True, False)
    assert s is S.SHELVED and st.is_hidden(s) and not st.is_announced(s)
    s = transition(s, E.CLEAR, False, False)  # comes and goes while shelved
    s = transition(s, E.ACTIVATE, True, False)
    assert s is S.SHELVED
    assert transition(s, E.UNSHELVE, True, False) is S.UNACK_ACTIVE  # announced again
    assert transition(s, E.SHELVE_EXPIRED, False, False) is S.NORMAL
    # pre-emptive shelve of a chattering alarm that is normal now
    s = transition(S.NORMAL, E.SHELVE, False, False)
    assert transition(s, E.ACTIVATE, True, False) is S.SHELVED


def test_vectorised_lookups():
    all_states = np.arange(len(State))
    assert [State(s) for s in all_states[st.is_announced(all_states)]] == [
        S.UNACK_ACTIVE, S.ACK_ACTIVE, S.RTN_UNACK, S.LATCHED]
    assert [State(s) for s in all_states[st.needs_ack(all_states)]] == [S.UNACK_ACTIVE, S.RTN_UNACK]
    assert np.array_equal(st.is_acked(all_states), ~st.needs_ack(all_states))
    assert [State(s) for s in all_states[st.in_alarm(all_states)]] == [S.UNACK_ACTIVE, S.ACK_ACTIVE]
    assert [State(s) for s in all_states[st.is_hidden(all_states)]] == [
        S.SHELVED, S.SUPPRESSED, S.OUT_OF_SERVICE]
    assert bool(st.is_announced(State.LATCHED)) and not bool(st.is_announced(State.SHELVED))
    batch = np.array([S.NORMAL, S.LATCHED], dtype=np.uint8)
    assert list(st.needs_reset(batch)) == [False, True]
