"""Street-lighting cabinets as a pure model: ``state = step(state, t)``, vectorised over cabinets.

One :class:`LightingState` holds every cabinet of a simulator process, and every luminaire
they feed, as parallel numpy arrays (a city is ~1,100 cabinets and ~34,000 luminaires: one
array operation each). :func:`step` takes the time as an input (seconds since the Unix
epoch, UTC), so a test runs a simulated night in milliseconds. Randomness (lamp failures)
comes from a generator seeded by the state's seed and step count: the same inputs give the
same night. Commands and faults are pure functions too; the Modbus adapter only exposes
the state.

Behaviour:
* an astronomical clock per cabinet (its latitude and longitude): lights on when the sun
  is below ``SWITCH_ELEVATION_DEG``, off when it rises above it;
* modes auto / forced on / forced off / manual dim; in auto a dimming schedule in local
  time (100 % at dusk, 50 % from midnight to 05:00 by default);
* luminaires fed by the cabinet, each working or failed (failures at a configurable rate
  per lamp-hour, or injected); power = working luminaires x wattage x dim level;
* a cumulative energy counter integrating power; mains voltage; mains loss; an
  earth-leakage trip that cuts the output until reset; a door contact; a lamp test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from simulators.models.columns import with_element

AUTO, FORCED_ON, FORCED_OFF, MANUAL_DIM = 0, 1, 2, 3
MODES = {AUTO: "auto", FORCED_ON: "forced_on", FORCED_OFF: "forced_off", MANUAL_DIM: "manual_dim"}
NOMINAL_VOLTAGE = 230.0
# The photocell-equivalent threshold: lights on when the sun is below this elevation.
SWITCH_ELEVATION_DEG = -3.0
# Auto-mode dimming: (local hour from which it applies, percent). 100 % at dusk, 50 % after midnight.
DEFAULT_SCHEDULE: tuple[tuple[float, float], ...] = ((0.0, 50.0), (5.0, 100.0))
DEFAULT_FAILURE_RATE = 1e-5  # per lamp-hour: about one LED luminaire in 10 per 10,000 h of service


@dataclass(frozen=True)
class LightingState:
    """Every cabinet (arrays of length n) and every luminaire (arrays of length m)."""

    t: float  # seconds since the Unix epoch, UTC, of the last step
    steps: int
    seed: int
    tz: str
    schedule: tuple[tuple[float, float], ...]
    failure_rate: float  # per lamp-hour
    # cabinets
    lat: np.ndarray
    lon: np.ndarray
    mode: np.ndarray  # AUTO, FORCED_ON, FORCED_OFF, MANUAL_DIM
    dim_setpoint: np.ndarray  # % used in MANUAL_DIM
    on: np.ndarray  # output energised
    dim_level: np.ndarray  # % applied to the luminaires
    power_kw: np.ndarray
    energy_kwh: np.ndarray
    voltage: np.ndarray
    temperature: np.ndarray  # inside the cabinet, degC
    door_open: np.ndarray
    lamp_test: np.ndarray  # maintenance: all lamps on at 100 % while set
    mains_ok: np.ndarray
    leakage_trip: np.ndarray  # earth-leakage breaker open: output off until reset
    phase: np.ndarray  # per-cabinet phase of the voltage and temperature wobble
    lamps: np.ndarray  # luminaires fed by each cabinet
    failed: np.ndarray  # of which failed
    # luminaires
    lum_cabinet: np.ndarray  # index of the cabinet feeding each luminaire
    lum_watts: np.ndarray
    lum_failed: np.ndarray

    @property
    def count(self) -> int:
        return len(self.lat)


def create(
    lat,
    lon,
    lamps,
    lamp_watts=60.0,
    t: float = 0.0,
    seed: int = 0,
    *,
    failure_rate: float = 0.0,
    schedule=DEFAULT_SCHEDULE,
    tz: str = "Europe/Paris",
) -> LightingState:
    """Cabinets at the given places, in automatic mode, nothing failed, door closed, mains on.

    ``lamps`` is the number of luminaires per cabinet; ``failure_rate`` is per lamp-hour
    (0: lamps fail only when a fault is injected).
    """
    lat = np.atleast_1d(np.asarray(lat, np.float64))
    n = len(lat)
    lamps = np.broadcast_to(np.asarray(lamps, np.int64), (n,))
    rng = np.random.default_rng(seed)
    lum_cabinet = np.repeat(np.arange(n), lamps)
    z = np.zeros(n)
    state = LightingState(
        t=t,
        steps=0,
        seed=seed,
        tz=tz,
        schedule=tuple(schedule),
        failure_rate=failure_rate,
        lat=lat,
        lon=np.broadcast_to(np.asarray(lon, np.float64), (n,)).copy(),
        mode=np.zeros(n, np.int64),
        dim_setpoint=np.full(n, 100.0),
        on=np.zeros(n, bool),
        dim_level=z.copy(),
        power_kw=z.copy(),
        energy_kwh=z.copy(),
        voltage=np.full(n, NOMINAL_VOLTAGE),
        temperature=np.full(n, 15.0),
        door_open=np.zeros(n, bool),
        lamp_test=np.zeros(n, bool),
        mains_ok=np.ones(n, bool),
        leakage_trip=np.zeros(n, bool),
        phase=rng.uniform(0, 2 * np.pi, n),
        lamps=lamps.copy(),
        failed=np.zeros(n, np.int64),
        lum_cabinet=lum_cabinet,
        lum_watts=np.broadcast_to(np.asarray(lamp_watts, np.float64), (n,))[lum_cabinet].copy(),
        lum_failed=np.zeros(len(lum_cabinet), bool),
    )
    return step(state, t)


def solar_elevation_deg(t: float, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Sun elevation in degrees (low-precision almanac, about 0.1 degree: plenty for a photocell)."""
    d = t / 86400.0 - 10957.5  # days since J2000.0
    g = np.radians(357.529 + 0.98560028 * d)
    q = 280.459 + 0.98564736 * d
    ecl_lon = np.radians(q + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.radians(23.439 - 0.00000036 * d)
    ra = np.arctan2(np.cos(eps) * np.sin(ecl_lon), np.cos(ecl_lon))
    decl = np.arcsin(np.sin(eps) * np.sin(ecl_lon))
    gmst_deg = (280.46061837 + 360.98564736629 * d) % 360.0
    hour_angle = np.radians(gmst_deg + lon) - ra
    lat_r = np.radians(lat)
    return np.degrees(np.arcsin(np.sin(lat_r) * np.sin(decl) + np.cos(lat_r) * np.cos(decl) * np.cos(hour_angle)))


def scheduled_dim(t: float, tz: str, schedule: tuple[tuple[float, float], ...]) -> float:
    """Auto-mode dim level at time ``t``: the last schedule entry whose local hour has passed.

    Before the first entry of the day, the last entry of the previous day applies (so with the
    default schedule the evening runs at 100 % and the hours after midnight at 50 %).
    """
    if not schedule:
        return 100.0
    local = datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(tz))
    hour = local.hour + local.minute / 60 + local.second / 3600
    entries = sorted(schedule)
    level = entries[-1][1]
    for start, percent in entries:
        if hour >= start:
            level = percent
    return level


def step(s: LightingState, t: float) -> LightingState:
    """Advance every cabinet to time ``t``: failures, switching, dimming, power, energy, measurements."""
    dt = max(0.0, t - s.t)
    lum_failed = s.lum_failed
    if s.failure_rate > 0 and dt > 0:
        rng = np.random.default_rng([s.seed, s.steps])
        p = -np.expm1(-s.failure_rate * dt / 3600.0)
        lum_failed = lum_failed | (rng.random(len(lum_failed)) < p)
    dark = solar_elevation_deg(t, s.lat, s.lon) < SWITCH_ELEVATION_DEG
    commanded = np.select([s.mode == FORCED_ON, s.mode == FORCED_OFF, s.mode == MANUAL_DIM], [True, False, True], dark)
    commanded = commanded | s.lamp_test
    on = commanded & s.mains_ok & ~s.leakage_trip
    auto_dim = scheduled_dim(t, s.tz, s.schedule)
    dim = np.where(s.mode == MANUAL_DIM, s.dim_setpoint, np.where(s.mode == AUTO, auto_dim, 100.0))
    dim = np.where(s.lamp_test, 100.0, np.where(on, dim, 0.0))
    working_w = np.bincount(s.lum_cabinet, weights=s.lum_watts * ~lum_failed, minlength=s.count)
    power_kw = np.where(on, working_w * dim / 100.0 / 1000.0, 0.0)
    # Energy integrates the power held since the previous step (a meter samples the same way).
    energy = s.energy_kwh + s.power_kw * dt / 3600.0
    wobble = 2 * np.pi * t / 600.0 + s.phase
    voltage = np.where(s.mains_ok, NOMINAL_VOLTAGE + 2.5 * np.sin(wobble) - 0.002 * power_kw * 100, 0.0)
    day = 2 * np.pi * ((t / 3600.0) % 24 - 15) / 24
    temperature = 9.0 + 7.0 * np.cos(day) + 0.5 * np.sin(s.phase)
    failed = np.bincount(s.lum_cabinet, weights=lum_failed, minlength=s.count).astype(np.int64)
    return replace(
        s,
        t=t,
        steps=s.steps + 1,
        on=on,
        dim_level=dim,
        power_kw=power_kw,
        energy_kwh=energy,
        voltage=voltage,
        temperature=temperature,
        lum_failed=lum_failed,
        failed=failed,
    )


def _set(s: LightingState, field: str, i: int, value) -> LightingState:
    """``s`` with one value of cabinet ``i`` set, and what follows from it (:func:`refresh`)."""
    return refresh(with_element(s, field, i, value), i)


def refresh(s: LightingState, i: int) -> LightingState:
    """``s`` with cabinet ``i``'s switching, dimming, power and voltage recomputed at ``s.t``.

    What ``step(s, s.t)`` gives when only cabinet ``i``'s inputs changed since the last step
    (no time passes: no energy, no failures; the other cabinets, the temperatures and the
    failed counts stay as they are), at the cost of one cabinet rather than the whole city:
    a command is a write to one cabinet, and a city-wide fan-out writes each of them.
    The step count advances as a step's would (it seeds the failures' randomness).
    """
    t = s.t
    mode = int(s.mode[i])
    test = bool(s.lamp_test[i])
    if mode in (FORCED_ON, MANUAL_DIM):
        commanded = True
    elif mode == FORCED_OFF:
        commanded = False
    else:
        commanded = bool(solar_elevation_deg(t, s.lat[i : i + 1], s.lon[i : i + 1])[0] < SWITCH_ELEVATION_DEG)
    on = (commanded or test) and bool(s.mains_ok[i]) and not bool(s.leakage_trip[i])
    if test:
        dim = 100.0
    elif not on:
        dim = 0.0
    elif mode == MANUAL_DIM:
        dim = float(s.dim_setpoint[i])
    elif mode == AUTO:
        dim = scheduled_dim(t, s.tz, s.schedule)
    else:
        dim = 100.0
    mine = s.lum_cabinet == i
    working_w = float((s.lum_watts[mine] * ~s.lum_failed[mine]).sum())
    power = working_w * dim / 100.0 / 1000.0 if on else 0.0
    wobble = 2 * np.pi * t / 600.0 + s.phase[i]
    voltage = NOMINAL_VOLTAGE + 2.5 * np.sin(wobble) - 0.002 * power * 100 if s.mains_ok[i] else 0.0
    columns = {}
    for name, value in (("on", on), ("dim_level", dim), ("power_kw", power), ("voltage", voltage)):
        column = getattr(s, name).copy()
        column[i] = value
        columns[name] = column
    return replace(s, steps=s.steps + 1, **columns)


def set_mode(s: LightingState, i: int, mode: int) -> LightingState:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode}")
    return _set(s, "mode", i, mode)


def set_dim(s: LightingState, i: int, percent: float) -> LightingState:
    if not 0 <= percent <= 100:
        raise ValueError("dim level must be within 0-100 %")
    return _set(s, "dim_setpoint", i, percent)


def set_lamp_test(s: LightingState, i: int, on: bool) -> LightingState:
    return _set(s, "lamp_test", i, bool(on))


def set_door(s: LightingState, i: int, open_: bool) -> LightingState:
    return _set(s, "door_open", i, bool(open_))


def set_mains(s: LightingState, i: int, ok: bool) -> LightingState:
    """Mains loss (``ok=False``) and return: no voltage, no light, no energy while lost."""
    return _set(s, "mains_ok", i, bool(ok))


def trip_earth_leakage(s: LightingState, i: int) -> LightingState:
    return _set(s, "leakage_trip", i, True)


def reset_trip(s: LightingState, i: int) -> LightingState:
    return _set(s, "leakage_trip", i, False)


def fail_lamps(s: LightingState, i: int, count: int) -> LightingState:
    """Fail ``count`` more of cabinet ``i``'s working luminaires (fewer if fewer work)."""
    working = np.flatnonzero((s.lum_cabinet == i) & ~s.lum_failed)
    failed = s.lum_failed.copy()
    failed[working[: max(0, count)]] = True
    return step(replace(s, lum_failed=failed), s.t)


def repair_lamps(s: LightingState, i: int) -> LightingState:
    failed = s.lum_failed.copy()
    failed[s.lum_cabinet == i] = False
    return step(replace(s, lum_failed=failed), s.t)
