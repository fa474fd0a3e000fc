"""Select-before-operate as a table: one selection per device, per session, in time."""

from __future__ import annotations

import pytest

from scada.control.select import IDLE, SELECTED, TRANSITIONS, IllegalTransition, Refused, Selections, next_state


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_table_allows_only_its_moves():
    assert next_state(IDLE, "select") == SELECTED
    assert {next_state(SELECTED, e) for e in ("operate", "cancel", "expire")} == {IDLE}
    for state, event in [(IDLE, "operate"), (IDLE, "cancel"), (IDLE, "expire"), (SELECTED, "reset")]:
        assert (state, event) not in TRANSITIONS
        with pytest.raises(IllegalTransition):
            next_state(state, event)


def test_select_check_end():
    clock = Clock()
    s = Selections(10.0, clock)
    sel = s.select("D", "s1", "u", "Raise", {"x": 1.0})
    assert s.state("D") == SELECTED and len(sel.token) == 32
    assert s.check("D", "s1", sel.token, "Raise") is sel
    with pytest.raises(Refused, match="another session"):
        s.check("D", "s2", sel.token, "Raise")
    with pytest.raises(Refused, match="token does not match"):
        s.check("D", "s1", "x" * 32, "Raise")
    with pytest.raises(Refused, match="selected for Raise, not Lower"):
        s.check("D", "s1", sel.token, "Lower")
    with pytest.raises(Refused, match="selected by another session"):
        s.select("D", "s2", "v", "Raise", {})
    again = s.select("D", "s1", "u", "Raise", {})  # the same session selects again: a new token
    assert again.token != sel.token
    s.end("D", "operate")
    assert s.state("D") == IDLE
    with pytest.raises(IllegalTransition):
        s.end("D", "cancel")
    with pytest.raises(Refused, match="not selected"):
        s.check("D", "s1", again.token, "Raise")


def test_a_selection_expires_and_says_so():
    clock = Clock()
    s = Selections(10.0, clock)
    sel = s.select("D", "s1", "u", "Raise", {})
    clock.t = 9.99
    assert s.state("D") == SELECTED
    assert not s.expire("D", sel.token)  # its timer came early: nothing ends
    clock.t = 10.0
    with pytest.raises(Refused, match="expired after 10 s"):
        s.check("D", "s1", sel.token, "Raise")
    assert s.state("D") == IDLE
    other = s.select("D", "s2", "v", "Raise", {})  # free again for anyone
    clock.t = 30.0
    assert s.expire("D", other.token) and len(s) == 0
