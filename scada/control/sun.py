"""Sunrise and sunset for arrays of places on a date (pure numpy, no I/O).

The standard NOAA solar calculation (the "General Solar Position" equations of NOAA's Global
Monitoring Laboratory solar calculator): the Sun's declination and the equation of time from
the Julian century, then the hour angle at which the Sun's centre is 0.833 degrees below the
horizon (zenith 90.833: the upper limb on a horizon seen through standard refraction). Each
event is computed twice, the second time with the Sun's position at the first estimate of the
event itself, which brings it within a few seconds of an almanac at mid latitudes.

Far north or south the Sun may not cross that horizon on a date at all: polar day (it stays
above) or polar night (it stays below). Then there is no event, said so in :attr:`SunTimes.polar`,
and the event's time is :data:`NO_EVENT`; nothing is invented.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import NamedTuple

import numpy as np

ZENITH_DEG = 90.833
NO_EVENT = np.iinfo(np.int64).min  # the time of an event that does not happen that day
POLAR_NIGHT = -1
POLAR_DAY = 1

_NS_PER_MIN = 60 * 10**9
_SLOT_MIN = 10.0  # minutes: the Sun's position is computed once per slot of event times
_JD_UNIX_EPOCH = 2440587.5  # Julian day of 1970-01-01T00:00Z


class SunTimes(NamedTuple):
    """Per place: sunrise and sunset in ns since the Unix epoch (UTC), NO_EVENT where the Sun
    does not cross the horizon that day; ``polar`` says why: POLAR_DAY (+1), POLAR_NIGHT (-1), 0."""

    sunrise: np.ndarray  # int64
    sunset: np.ndarray  # int64
    polar: np.ndarray  # int8


def _midnight_ns(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9


def _sun(jd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Sun's declination (radians) and the equation of time (minutes) at Julian day ``jd``."""
    t = (jd - 2451545.0) / 36525.0  # Julian centuries since J2000.0
    l0 = np.radians(np.mod(280.46646 + t * (36000.76983 + t * 0.0003032), 360.0))  # geometric mean longitude
    m = np.radians(357.52911 + t * (35999.05029 - 0.0001537 * t))  # geometric mean anomaly
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)  # eccentricity of Earth's orbit
    centre = (
        np.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + np.sin(2 * m) * (0.019993 - 0.000101 * t)
        + np.sin(3 * m) * 0.000289
    )
    omega = np.radians(125.04 - 1934.136 * t)
    apparent_long = np.radians(np.degrees(l0) + centre - 0.00569 - 0.00478 * np.sin(omega))
    mean_obliquity = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity = np.radians(mean_obliquity + 0.00256 * np.cos(omega))
    declination = np.arcsin(np.sin(obliquity) * np.sin(apparent_long))
    y = np.tan(obliquity / 2) ** 2
    eq_time = 4.0 * np.degrees(
        y * np.sin(2 * l0)
        - 2 * e * np.sin(m)
        + 4 * e * y * np.sin(m) * np.cos(2 * l0)
        - 0.5 * y * y * np.sin(4 * l0)
        - 1.25 * e * e * np.sin(2 * m)
    )
    return declination, eq_time


def _event_minutes(
    jd0: float, lat: np.ndarray, lon: np.ndarray, guess_min: np.ndarray, sign: int
) -> tuple[np.ndarray, np.ndarray]:
    """Minutes after 00:00 UTC of the day at Julian day ``jd0`` of sunrise (sign -1) or sunset
    (+1), with the Sun's position taken at ``guess_min``; and cos(hour angle) (|x| > 1: no event)."""
    # The Sun's position moves slowly (declination at most 0.4 degree a day, the equation of time
    # 30 s a day): computed once per 10 minutes of the guesses, not once per place (a city's
    # cabinets share a handful), it moves an event by well under a second.
    slots, which = np.unique(np.round(guess_min / _SLOT_MIN), return_inverse=True)
    decl_s, eq_s = _sun(jd0 + slots * _SLOT_MIN / 1440.0)
    decl, eq_time = decl_s[which.reshape(guess_min.shape)], eq_s[which.reshape(guess_min.shape)]
    phi = np.radians(lat)
    cos_ha = np.cos(np.radians(ZENITH_DEG)) / (np.cos(phi) * np.cos(decl)) - np.tan(phi) * np.tan(decl)
    ha = np.degrees(np.arccos(np.clip(cos_ha, -1.0, 1.0)))
    return 720.0 - 4.0 * (lon + (-sign) * ha) - eq_time, cos_ha


def sun_times(day: date, lat: np.ndarray | float, lon: np.ndarray | float) -> SunTimes:
    """Sunrise and sunset on ``day`` (a UTC date: the events around that date's solar noon) at
    each place (``lat``, ``lon`` in degrees, east positive; arrays broadcast together)."""
    lat_a, lon_a = np.broadcast_arrays(np.asarray(lat, np.float64), np.asarray(lon, np.float64))
    lat_a = np.clip(lat_a, -89.999, 89.999)  # the poles: the formula's tan(lat) stays finite
    midnight = _midnight_ns(day)
    jd0 = _JD_UNIX_EPOCH + midnight / 86400e9
    noon = 720.0 - 4.0 * lon_a  # first guess: local mean noon, in minutes UTC
    events, cosines = [], []
    for sign in (-1, 1):
        first, _ = _event_minutes(jd0, lat_a, lon_a, noon, sign)
        refined, cos_ha = _event_minutes(jd0, lat_a, lon_a, first, sign)
        ns = midnight + np.round(refined * _NS_PER_MIN).astype(np.int64)
        events.append(np.where(np.abs(cos_ha) > 1.0, NO_EVENT, ns).astype(np.int64))
        cosines.append(cos_ha)
    rise, set_ = events
    # Neither event: the Sun stays above (cos < -1) or below (cos > 1) the horizon all day. On
    # the edge of a polar period one event may exist without the other: kept as it is.
    none = (rise == NO_EVENT) & (set_ == NO_EVENT)
    polar = np.where(none, np.where(cosines[0] > 1.0, POLAR_NIGHT, POLAR_DAY), 0).astype(np.int8)
    return SunTimes(rise, set_, polar)
