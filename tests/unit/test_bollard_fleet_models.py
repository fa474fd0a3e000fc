import numpy as np

from simulators.models import bollards as bo
from simulators.models import fleet as fl


def run(s, seconds, dt=0.5):
    for _ in range(int(seconds / dt)):
        s = bo.step(s, s.t + dt)
    return s


def quiet(n=2):
    return bo.create(n, t=0.0, arrivals_per_hour=0.0)


def test_lowering_and_rising_take_seconds():
    s = quiet()
    s, ok, _ = bo.command(s, 0, "lower")
    assert ok
    s = bo.step(s, 1.0)
    assert s.position[0] == bo.LOWERING and 0 < s.height[0] < 1
    s = run(s, bo.LOWER_S)
    assert s.position[0] == bo.DOWN and s.height[0] == 0
    assert s.position[1] == bo.UP  # the other one did not move
    s, ok, _ = bo.command(s, 0, "raise")
    s = run(s, bo.RISE_S / 2)
    assert s.position[0] == bo.RISING
    s = run(s, bo.RISE_S)
    assert s.position[0] == bo.UP


def test_obstruction_while_rising_reverses():
    s = quiet()
    s, _, _ = bo.command(s, 0, "lower")
    s = run(s, bo.LOWER_S + 1)
    s, _, _ = bo.command(s, 0, "raise")
    s = run(s, 2)
    assert s.position[0] == bo.RISING
    s = bo.set_obstruction(s, 0, True)
    s = bo.step(s, s.t + 0.5)
    assert s.position[0] == bo.LOWERING and s.reversals[0] == 1
    s = run(s, bo.LOWER_S)
    assert s.position[0] == bo.DOWN
    s = run(s, 5)
    assert s.position[0] == bo.DOWN  # stays down while obstructed
    s = bo.set_obstruction(s, 0, False)
    s = run(s, bo.RISE_S + 1)
    assert s.position[0] == bo.UP


def test_emergency_lowering_is_fast_and_latched():
    s = quiet()
    s, ok, _ = bo.command(s, 0, "emergency_lower")
    s = run(s, bo.EMERGENCY_LOWER_S + 0.5)
    assert s.position[0] == bo.DOWN
    s, ok, reason = bo.command(s, 0, "raise")
    assert not ok and "emergency" in reason
    s, ok, _ = bo.command(s, 0, "reset")
    s, ok, _ = bo.command(s, 0, "raise")
    assert ok


def test_authorised_vehicle_is_let_through_and_the_bollard_closes_behind_it():
    s = bo.vehicle_arrives(quiet(), 0, "delivery")
    assert s.events[-1].vehicle_class == "delivery" and s.events[-1].granted
    s = run(s, bo.LOWER_S + 0.5)
    assert s.position[0] == bo.DOWN
    s = run(s, bo.OPEN_HOLD_S + bo.RISE_S + 1)
    assert s.position[0] == bo.UP


def test_unauthorised_vehicle_is_refused():
    s = bo.vehicle_arrives(quiet(), 1, "unauthorised")
    assert not s.events[-1].granted
    s = run(s, 3)
    assert s.position[1] == bo.UP


def test_random_arrivals_produce_events_reproducibly():
    def day(seed):
        s = bo.create(26, t=0.0, seed=seed, arrivals_per_hour=6)
        events = []
        for _ in range(3600):
            s = bo.step(s, s.t + 1.0)
            events += s.events
        return events
    a = day(3)
    assert 26 * 6 * 0.5 < len(a) < 26 * 6 * 1.5
    assert a == day(3)
    assert {e.vehicle_class for e in a} >= {"resident", "delivery"}


def test_fault_and_unknown_command():
    s = bo.set_fault(quiet(), 0, True)
    s = bo.step(s, 1)
    assert s.position[0] == bo.FAULT
    assert bo.command(s, 0, "lower")[1] is False
    assert bo.command(s, 1, "jump")[1] is False


PLACES = [(47.322, 5.041), (47.369, 5.021), (47.291, 5.007), (47.30, 5.14)]


def test_fleet_moves_between_communes_at_road_speed():
    s = fl.create(PLACES, 50, t=0.0, seed=2)
    statuses = set()
    prev = (s.lat.copy(), s.lon.copy())
    for k in range(1, 721):  # 2 hours in 10 s steps
        s = fl.step(s, k * 10.0)
        statuses.update(s.status.tolist())
        moved_km = fl._km(np.stack(prev, 1), np.stack([s.lat, s.lon], 1))
        assert (moved_km <= fl.SPEED_KMH * 10 / 3600 * 1.001).all()  # never faster than the road speed
        prev = (s.lat.copy(), s.lon.copy())
    assert statuses == {fl.AVAILABLE, fl.EN_ROUTE, fl.ON_SITE}
    lat_min, lat_max = min(p[0] for p in PLACES), max(p[0] for p in PLACES)
    assert ((s.lat >= lat_min - 1e-9) & (s.lat <= lat_max + 1e-9)).all()  # stays within the metropolis
