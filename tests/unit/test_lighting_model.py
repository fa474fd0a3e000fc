from datetime import datetime, timezone

import numpy as np
import pytest

from simulators.models import lighting
from simulators.models.columns import with_element

DIJON = (47.322, 5.041)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def cabinet(t: float, lamps: int = 30, n: int = 1):
    return lighting.create([DIJON[0]] * n, [DIJON[1]] * n, [lamps] * n, lamp_watts=60.0, t=t)


@pytest.mark.parametrize("utc, lit", [
    ("2026-11-28T12:00", False),  # midday
    ("2026-11-28T15:30", False),  # just before sunset (about 15:50 UTC)
    ("2026-11-28T16:30", True),   # dusk, sun below -3 degrees
    ("2026-11-28T23:00", True),
    ("2026-11-29T03:00", True),
    ("2026-11-29T07:45", False),  # after sunrise (about 07:10 UTC)
    ("2026-06-21T19:30", False),  # long summer evening: still light at 21:30 local
    ("2026-06-21T20:30", True),
])
def test_auto_mode_follows_the_sun_for_dijon(utc, lit):
    s = cabinet(ts(utc))
    assert bool(s.on[0]) is lit
    assert bool(s.power_kw[0] > 0) is lit


def test_a_night_switches_on_at_dusk_and_off_at_dawn_in_milliseconds():
    t0 = ts("2026-11-28T12:00")
    s = cabinet(t0)
    changes = []
    for minute in range(24 * 60):
        s2 = lighting.step(s, t0 + minute * 60)
        if s2.on[0] != s.on[0]:
            changes.append((minute, bool(s2.on[0])))
        s = s2
    assert [on for _, on in changes] == [True, False]
    on_at, off_at = changes[0][0], changes[1][0]
    assert 3.5 * 60 < on_at < 5 * 60      # between 15:30 and 17:00 UTC
    assert 18.5 * 60 < off_at < 20 * 60   # between 06:30 and 08:00 UTC next day


def test_energy_integrates_power():
    t0 = ts("2026-11-28T12:00")
    s = lighting.set_mode(cabinet(t0), 0, lighting.FORCED_ON)
    assert s.power_kw[0] == pytest.approx(30 * 60 / 1000)
    for k in range(1, 61):
        s = lighting.step(s, t0 + k * 60)
    assert s.energy_kwh[0] == pytest.approx(1.8, rel=1e-6)


def test_manual_dim_and_failed_lamps_scale_power():
    t0 = ts("2026-11-28T12:00")
    s = lighting.set_mode(cabinet(t0), 0, lighting.MANUAL_DIM)
    s = lighting.set_dim(s, 0, 50)
    assert s.dim_level[0] == 50
    assert s.power_kw[0] == pytest.approx(30 * 60 * 0.5 / 1000)
    s = lighting.fail_lamps(s, 0, 10)
    assert s.power_kw[0] == pytest.approx(20 * 60 * 0.5 / 1000)


def test_forced_off_at_night_and_lamp_test_by_day():
    s = lighting.set_mode(cabinet(ts("2026-11-28T22:00")), 0, lighting.FORCED_OFF)
    assert not s.on[0] and s.power_kw[0] == 0
    s = lighting.set_lamp_test(cabinet(ts("2026-11-28T12:00")), 0, True)
    assert s.on[0] and s.dim_level[0] == 100


def test_vectorised_over_a_city_of_cabinets():
    n = 1100
    s = lighting.create(np.full(n, DIJON[0]), np.full(n, DIJON[1]), np.full(n, 31), t=ts("2026-11-28T22:00"))
    assert s.on.all()
    assert s.power_kw.sum() == pytest.approx(n * 31 * 60 / 1000)


def test_invalid_commands_are_refused():
    s = cabinet(0.0)
    with pytest.raises(ValueError):
        lighting.set_mode(s, 0, 9)
    with pytest.raises(ValueError):
        lighting.set_dim(s, 0, 120)


def test_dimming_schedule_full_at_dusk_half_after_midnight_local_time():
    assert cabinet(ts("2026-11-28T17:00")).dim_level[0] == 100  # 18:00 in Dijon
    assert cabinet(ts("2026-11-28T23:30")).dim_level[0] == 50   # 00:30 in Dijon (UTC+1)
    assert cabinet(ts("2026-11-29T04:30")).dim_level[0] == 100  # 05:30 in Dijon, before dawn
    s = cabinet(ts("2026-11-28T23:30"))
    assert s.power_kw[0] == pytest.approx(30 * 60 * 0.5 / 1000)
    # Summer time: midnight in Dijon is 22:00 UTC.
    assert cabinet(ts("2026-07-01T22:30")).dim_level[0] == 50


def test_mains_loss_darkens_the_cabinet_and_stops_the_meter():
    t0 = ts("2026-11-28T22:00")
    s = lighting.set_mains(cabinet(t0), 0, False)
    assert not s.on[0] and s.power_kw[0] == 0 and s.voltage[0] == 0
    e0 = s.energy_kwh[0]
    s = lighting.step(s, t0 + 3600)
    assert s.energy_kwh[0] == e0
    s = lighting.set_mains(s, 0, True)
    assert s.on[0] and s.voltage[0] > 200


def test_earth_leakage_trip_cuts_the_output_until_reset():
    s = lighting.trip_earth_leakage(cabinet(ts("2026-11-28T22:00")), 0)
    assert s.leakage_trip[0] and not s.on[0] and s.power_kw[0] == 0
    assert s.voltage[0] > 200  # the mains is still there
    s = lighting.step(s, s.t + 600)
    assert not s.on[0]  # latched
    s = lighting.reset_trip(s, 0)
    assert s.on[0]


def test_lamps_fail_at_the_configured_rate_reproducibly():
    n = 200
    t0 = ts("2026-11-28T12:00")

    def night(seed):
        s = lighting.create(np.full(n, DIJON[0]), np.full(n, DIJON[1]), np.full(n, 30), t=t0, seed=seed,
                            failure_rate=1e-3)
        for k in range(1, 101):
            s = lighting.step(s, t0 + k * 360)  # 10 hours in 6-minute steps
        return s

    a, b = night(1), night(1)
    assert np.array_equal(a.failed, b.failed)  # same seed, same night
    total = a.failed.sum()
    expected = n * 30 * (1 - np.exp(-1e-3 * 10))  # ~59.7
    assert 0.6 * expected < total < 1.4 * expected
    assert not np.array_equal(a.failed, night(2).failed)


def test_failed_lamps_are_counted_per_cabinet():
    s = cabinet(ts("2026-11-28T22:00"), n=3)
    s = lighting.fail_lamps(s, 1, 4)
    assert s.failed.tolist() == [0, 4, 0]
    s = lighting.fail_lamps(s, 1, 100)
    assert s.failed.tolist() == [0, 30, 0] and s.power_kw[1] == 0
    s = lighting.repair_lamps(s, 1)
    assert s.failed.tolist() == [0, 0, 0]


_COMMANDS = [
    ("set_mode", (lighting.MANUAL_DIM,)),
    ("set_dim", (35.0,)),
    ("set_mode", (lighting.FORCED_OFF,)),
    ("set_mode", (lighting.FORCED_ON,)),
    ("set_lamp_test", (True,)),
    ("set_lamp_test", (False,)),
    ("trip_earth_leakage", ()),
    ("reset_trip", ()),
    ("set_mains", (False,)),
    ("set_mains", (True,)),
    ("set_door", (True,)),
    ("set_mode", (lighting.AUTO,)),
]


@pytest.mark.parametrize("utc", ["2025-12-21T22:00:00", "2025-06-21T12:00:00", "2025-12-22T02:30:00"])
def test_a_command_to_one_cabinet_gives_what_a_whole_step_gives(utc):
    """refresh (one cabinet) and step (the city, at the same time) agree after every command."""
    t = datetime.fromisoformat(utc).replace(tzinfo=timezone.utc).timestamp()
    rng = np.random.default_rng(3)
    s = lighting.create(rng.uniform(47.2, 47.4, 6), rng.uniform(4.9, 5.1, 6), [10, 20, 30, 5, 8, 12], t=t)
    s = lighting.fail_lamps(s, 2, 4)
    for k, (name, args) in enumerate(_COMMANDS):
        i = k % 3 + 1
        fast = getattr(lighting, name)(s, i, *args)
        field = {"set_mode": "mode", "set_dim": "dim_setpoint", "set_lamp_test": "lamp_test", "set_mains": "mains_ok",
                 "set_door": "door_open"}.get(name, "leakage_trip")
        value = {"trip_earth_leakage": True, "reset_trip": False}.get(name, args[0] if args else None)
        slow = lighting.step(with_element(s, field, i, value), s.t)
        assert fast.steps == slow.steps
        for column in ("on", "dim_level", "power_kw", "energy_kwh", "voltage", "temperature", "failed", field):
            np.testing.assert_allclose(getattr(fast, column), getattr(slow, column), rtol=1e-12, err_msg=column)
        s = fast
