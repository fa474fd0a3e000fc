import numpy as np
import pytest

from simulators.models import traffic as tr

T0 = 1_795_000_000.0  # some Tuesday


def junctions(n=3, mode=tr.FIXED_TIME):
    return tr.create(np.full(n, 47.32), np.full(n, 5.04), t=T0, seed=1, mode=mode)


def test_colours_follow_the_plan_and_never_conflict_over_a_day():
    s = junctions(5, tr.ACTUATED)
    seen = set()
    for k in range(0, 86400, 7):
        s = tr.step(s, T0 + k)
        assert not tr.conflicting_greens(s.colour).any()
        seen.update(s.colour[:, 0].tolist())
        seen.update(s.plan.tolist())
    assert {tr.RED, tr.AMBER, tr.GREEN} <= seen
    assert {1, 2, 3} <= seen  # actuated mode used the day, peak and night plans


def test_fixed_time_cycle_second_and_green_window():
    s = junctions(1)
    s = tr.set_plan(s, 0, 1)
    plan = tr.PLANS[0]
    for sec in range(0, 60):
        s = tr.step(s, T0 + sec)
        cyc = s.cycle_second[0]
        assert 0 <= cyc < plan.cycle
        main_green = plan.green[0][0] <= cyc < plan.green[0][1]
        assert (s.colour[0, 0] == tr.GREEN) == main_green


def test_detectors_follow_morning_and_evening_peaks():
    day0 = T0 - T0 % 86400  # midnight UTC; local time is UTC+1 in the profile
    assert tr.flow_per_hour(day0 + 7 * 3600) > 3 * tr.flow_per_hour(day0 + 2 * 3600)
    s = junctions(20, tr.ACTUATED)
    night = tr.step(s, day0 + 86400 + 2 * 3600)
    night2 = tr.step(night, night.t + 3600)
    peak = tr.step(night2, day0 + 86400 + 16.25 * 3600)
    peak2 = tr.step(peak, peak.t + 3600)
    # Counts integrate and only grow; the evening peak hour counts far more than 03:00-04:00.
    assert (night2.counts >= night.counts).all() and (peak2.counts >= peak.counts).all()
    assert (peak2.counts - peak.counts).sum() > 5 * (night2.counts - night.counts).sum()
    assert peak2.occupancy.mean() > 3 * night2.occupancy.mean()


def test_conflict_fault_latches_flashing_amber_until_local_reset():
    s = junctions(2)
    s = tr.conflict_fault(s, 0, present=True)
    assert s.effective_mode[0] == tr.FLASHING_AMBER
    assert (s.colour[0, :2] == tr.FLASHING).all() and (s.colour[0, 2:] == tr.OFF).all()
    assert s.effective_mode[1] == tr.FIXED_TIME  # the other junction runs on
    s = tr.local_reset(s, 0)
    assert s.conflict[0]  # the condition is still there: the reset is refused
    s = tr.conflict_fault(s, 0, present=False)
    s = tr.step(s, s.t + 600)
    assert s.effective_mode[0] == tr.FLASHING_AMBER  # latched after the condition went
    s = tr.set_mode(s, 0, tr.FIXED_TIME)
    assert s.effective_mode[0] == tr.FLASHING_AMBER  # the centre cannot clear it
    s = tr.local_reset(s, 0)
    assert not s.conflict[0] and s.effective_mode[0] == tr.FIXED_TIME


def test_centre_changes_plan_and_mode_only():
    s = junctions(1, tr.FIXED_TIME)
    s = tr.set_plan(s, 0, 2)
    assert s.plan[0] == 2
    s = tr.set_mode(s, 0, tr.CENTRAL)
    s = tr.set_plan(s, 0, 3)
    assert s.plan[0] == 3 and s.effective_mode[0] == tr.CENTRAL
    with pytest.raises(ValueError):
        tr.set_mode(s, 0, 7)  # no such mode
    with pytest.raises(ValueError):
        tr.set_plan(s, 0, 9)
    # Signals off from the centre (the server sends it only through its critical SetMode).
    s = tr.set_mode(s, 0, tr.DARK)
    assert s.effective_mode[0] == tr.DARK and (s.colour == tr.OFF).all()


def test_mains_loss_darkens_the_junction():
    s = tr.set_mains(junctions(1), 0, False)
    assert s.effective_mode[0] == tr.DARK and (s.colour == tr.OFF).all()
    assert (s.occupancy == 0).all()
    s = tr.set_mains(s, 0, True)
    assert s.effective_mode[0] == tr.FIXED_TIME


def test_lamp_out_and_door():
    s = tr.set_lamp_out(junctions(1), 0, 0, tr.LAMP_RED_OUT)
    assert s.lamp_out[0].tolist() == [tr.LAMP_RED_OUT, 0, 0, 0]
    s = tr.set_door(s, 0, True)
    assert s.door_open[0]
