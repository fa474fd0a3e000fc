"""Sunrise and sunset (scada/control/sun.py) against published almanac values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pytest

from scada.control.sun import NO_EVENT, POLAR_DAY, POLAR_NIGHT, sun_times

DIJON = (47.32, 5.04)
TOLERANCE_NS = 2 * 60 * 10**9  # almanacs print the minute; the brief allows 2 minutes

CEST = timezone(timedelta(hours=2))
CET = timezone(timedelta(hours=1))


def _ns(day: date, hhmm: str, tz: timezone) -> int:
    h, m = map(int, hhmm.split(":"))
    return int(datetime(day.year, day.month, day.day, h, m, tzinfo=tz).timestamp()) * 10**9


# Published local times (Ouest-France's solar calendar for Dijon; the Swiss and French press for
# Zurich on the June solstice and Paris on the December solstice).
ALMANAC = [
    # place, (lat, lon), day, tz, sunrise, sunset
    ("Dijon", DIJON, date(2023, 4, 1), CEST, "07:19", "20:08"),  # ~10 days after the March equinox
    ("Dijon", DIJON, date(2025, 9, 1), CEST, "06:59", "20:20"),
    ("Dijon", DIJON, date(2025, 9, 8), CEST, "07:08", "20:06"),
    ("Dijon", DIJON, date(2019, 10, 1), CEST, "07:38", "19:20"),  # a week after the September equinox
    ("Zurich", (47.3769, 8.5417), date(2018, 6, 21), CEST, "05:29", "21:26"),  # June solstice
    ("Paris", (48.8566, 2.3522), date(2019, 12, 22), CET, "08:42", "16:56"),  # December solstice
]


@pytest.mark.parametrize(
    ("place", "where", "day", "tz", "rise", "set_"), ALMANAC, ids=[f"{a[0]}-{a[2]}" for a in ALMANAC]
)
def test_matches_the_almanac(place, where, day, tz, rise, set_):
    t = sun_times(day, *where)
    assert int(t.polar) == 0
    assert abs(int(t.sunrise) - _ns(day, rise, tz)) <= TOLERANCE_NS, place
    assert abs(int(t.sunset) - _ns(day, set_, tz)) <= TOLERANCE_NS, place


def test_arrays_of_places_each_their_own_time():
    """A commune's cabinets a few km apart see sunset at slightly different times (east: earlier)."""
    lat = np.array([47.32, 47.32, 47.32])
    lon = np.array([4.95, 5.04, 5.13])  # ~7 km apart
    t = sun_times(date(2026, 12, 5), lat, lon)
    assert t.sunset.dtype == np.int64 and t.sunset.shape == (3,)
    assert t.sunset[0] > t.sunset[1] > t.sunset[2]
    # 0.09 degrees of longitude is 21.6 s of the Earth's turn
    assert np.allclose(np.diff(t.sunset) / 1e9, -21.6, atol=1.0)
    assert (t.sunrise < t.sunset).all()


def test_dijon_solstices_and_equinox_day_lengths():
    """The day is ~15 h 50 in June, ~8 h 30 in December, ~12 h 10 at the March equinox at Dijon."""
    length_h = {
        d: (lambda t: (int(t.sunset) - int(t.sunrise)) / 3600e9)(sun_times(d, *DIJON))
        for d in (date(2026, 6, 21), date(2026, 12, 21), date(2026, 3, 20))
    }
    assert 15.6 < length_h[date(2026, 6, 21)] < 16.0
    assert 8.3 < length_h[date(2026, 12, 21)] < 8.7
    assert 12.0 < length_h[date(2026, 3, 20)] < 12.3


def test_far_north_polar_day_and_night_have_no_event():
    """Tromsø (69.65 N): the midnight Sun from about 20 May to 22 July, the polar night in December."""
    tromso = (69.65, 18.96)
    summer = sun_times(date(2026, 6, 21), *tromso)
    assert int(summer.polar) == POLAR_DAY
    assert int(summer.sunrise) == NO_EVENT and int(summer.sunset) == NO_EVENT
    winter = sun_times(date(2026, 12, 21), *tromso)
    assert int(winter.polar) == POLAR_NIGHT
    assert int(winter.sunrise) == NO_EVENT and int(winter.sunset) == NO_EVENT
    # In April the Sun rises and sets there as anywhere.
    spring = sun_times(date(2026, 4, 10), *tromso)
    assert int(spring.polar) == 0 and int(spring.sunrise) < int(spring.sunset)


def test_mixed_array_polar_and_ordinary():
    t = sun_times(date(2026, 6, 21), np.array([47.32, 69.65, -69.65]), np.array([5.04, 18.96, 18.96]))
    assert t.polar.tolist() == [0, POLAR_DAY, POLAR_NIGHT]
    assert t.sunrise[0] != NO_EVENT and (t.sunrise[1:] == NO_EVENT).all()
    # Dijon's June sunrise is in the early morning UTC of that very day
    rise = datetime.fromtimestamp(int(t.sunrise[0]) / 1e9, UTC)
    assert rise.date() == date(2026, 6, 21) and 3 <= rise.hour <= 4
