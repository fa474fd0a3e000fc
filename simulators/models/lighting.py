"""Street-lighting cabinets as a pure model: ``state = step(state, t)``, vectorised over cabinets.

One :class:`LightingState` holds every cabinet of a simulator process as parallel numpy
arrays. :func:`step` takes the time as an input (seconds since the Unix epoch, UTC), so a test
runs a simulated night in milliseconds and a bench runs a whole city in one array operation.
Commands and faults are pure functions too; the Modbus adapter only exposes the state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

AUTO, FORCED_ON, FORCED_OFF, MANUAL_DIM = 0, 1, 2, 3
MODES = {AUTO: "auto", FORCED_ON: "forced_on", FORCED_OFF: "forced_off", MANUAL_DIM: "manual_dim"}
NOMINAL_VOLTAGE = 230.0
# The photocell-equivalent threshold: lights on when the sun is below this elevation.
SWITCH_ELEVATION_DEG = -3.0


@dataclass(frozen=True)
class LightingState:
    """Every cabinet of one simulator, one array element per cabinet."""

    t: float  # seconds since the Unix epoch, UTC, of the last step
    lat: np.ndarray
    lon: np.ndarray
    lamps: np.ndarray  # luminaires fed by the cabinet
    lamp_watts: np.ndarray  # rated power of one luminaire, W
    failed: np.ndarray  # failed luminaires
    mode: np.ndarray  # AUTO, FORCED_ON, FORCED_OFF, MANUAL_DIM
    dim_setpoint: np.ndarray  # % used in MANUAL_DIM
    on: np.ndarray  # contactor closed
    dim_level: np.ndarray  # % applied to the luminaires
    power_kw: np.ndarray
    energy_kwh: np.ndarray
    voltage: np.ndarray
    temperature: np.ndarray  # cabinet inside temperature, degC
    door_open: np.ndarray
    lamp_test: np.ndarray  # maintenance: all lamps on at 100% while set
    phase: np.ndarray  # per-cabinet phase of the voltage and temperature wobble

    @property
    def count(self) -> int:
        return len(self.lat)


def create(lat, lon, lamps, lamp_watts=60.0, t: float = 0.0, seed: int = 0) -> LightingState:
    """Cabinets at the given places, in automatic mode, nothing failed, door closed."""
    lat = np.asarray(lat, np.float64)
    n = len(lat)
    rng = np.random.default_rng(seed)
    z = np.zeros(n)
    state = LightingState(
        t=t, lat=lat, lon=np.broadcast_to(np.asarray(lon, np.float64), (n,)).copy(),
        lamps=np.broadcast_to(np.asarray(lamps, np.int64), (n,)).copy(),
        lamp_watts=np.broadcast_to(np.asarray(lamp_watts, np.float64), (n,)).copy(),
        failed=np.zeros(n, np.int64), mode=np.zeros(n, np.int64), dim_setpoint=np.full(n, 100.0),
        on=np.zeros(n, bool), dim_level=z.copy(), power_kw=z.copy(), energy_kwh=z.copy(),
        voltage=np.full(n, NOMINAL_VOLTAGE), temperature=np.full(n, 15.0), door_open=np.zeros(n, bool),
        lamp_test=np.zeros(n, bool), phase=rng.uniform(0, 2 * np.pi, n),
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


def step(s: LightingState, t: float) -> LightingState:
    """Advance every cabinet to time ``t``: switching, dimming, power, energy, measurements."""
    dt = max(0.0, t - s.t)
    dark = solar_elevation_deg(t, s.lat, s.lon) < SWITCH_ELEVATION_DEG
    on = np.select([s.mode == FORCED_ON, s.mode == FORCED_OFF, s.mode == MANUAL_DIM], [True, False, True], dark)
    dim = np.where(s.mode == MANUAL_DIM, s.dim_setpoint, 100.0)
    on = on | s.lamp_test
    dim = np.where(s.lamp_test, 100.0, np.where(on, dim, 0.0))
    working = np.maximum(s.lamps - s.failed, 0)
    power_kw = np.where(on, working * s.lamp_watts * dim / 100.0 / 1000.0, 0.0)
    # Energy integrates the power held since the previous step (a meter samples the same way).
    energy = s.energy_kwh + s.power_kw * dt / 3600.0
    wobble = 2 * np.pi * t / 600.0 + s.phase
    voltage = NOMINAL_VOLTAGE + 2.5 * np.sin(wobble) - 0.002 * power_kw * 100
    day = 2 * np.pi * ((t / 3600.0) % 24 - 15) / 24
    temperature = 9.0 + 7.0 * np.cos(day) + 0.5 * np.sin(s.phase)
    return replace(s, t=t, on=on, dim_level=dim, power_kw=power_kw, energy_kwh=energy,
                   voltage=voltage, temperature=temperature)


def set_mode(s: LightingState, i: int, mode: int) -> LightingState:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode}")
    m = s.mode.copy()
    m[i] = mode
    return step(replace(s, mode=m), s.t)


def set_dim(s: LightingState, i: int, percent: float) -> LightingState:
    if not 0 <= percent <= 100:
        raise ValueError("dim level must be within 0-100 %")
    d = s.dim_setpoint.copy()
    d[i] = percent
    return step(replace(s, dim_setpoint=d), s.t)


def set_lamp_test(s: LightingState, i: int, on: bool) -> LightingState:
    lt = s.lamp_test.copy()
    lt[i] = on
    return step(replace(s, lamp_test=lt), s.t)


def fail_lamps(s: LightingState, i: int, count: int) -> LightingState:
    f = s.failed.copy()
    f[i] = min(s.lamps[i], f[i] + count)
    return step(replace(s, failed=f), s.t)


def set_door(s: LightingState, i: int, open_: bool) -> LightingState:
    d = s.door_open.copy()
    d[i] = open_
    return replace(s, door_open=d)
