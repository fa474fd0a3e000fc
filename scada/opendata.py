"""Open data export: what the city publishes of its street equipment, computed from the history.

``scada opendata --data var --config . --from 2026-11-01 --to 2026-12-01 --out opendata/``
reads the embedded history store (``<data>/history.sqlite``, read-only: the server may run)
and the configuration (which devices exist, their commune and coordinates) and writes, for
the whole local days of the range (the range is widened to whole days; days and hours are
those of ``--tz``, default ``UTC``; ``Europe/Paris`` for Dijon's own calendar):

=================================  ==============================================================
``energy_hourly_communes.csv``     lighting energy per commune and hour
``lighting_daily_communes.csv``    lighting hours and energy per commune and day
``lighting_daily_cabinets.csv``    lighting hours and energy per cabinet and day
``bollard_passages_daily.csv``     vehicles and openings per access bollard and day
``junction_counts_daily.csv``      detector counts per signalised junction and day
``communes.geojson``               one Point per commune, the daily lighting figures
``lighting_cabinets.geojson``      one Point per cabinet, its daily figures
``bollards.geojson``               one Point per bollard, its daily figures
``junctions.geojson``              one Point per junction, its daily figures
=================================  ==============================================================

CSV: UTF-8, comma-separated, a header line, one row per commune or device and period, sorted
by period then commune then device; an empty field is a figure that is not known (no data).
Dates are ISO 8601 local dates (``2026-11-28``), hours ISO 8601 local times with their UTC
offset (``2026-11-28T18:00:00+01:00``, the start of the hour). Energies in kWh (3 decimals),
durations in hours (3 decimals), counts as integers.

``energy_hourly_communes.csv``: ``hour_start, commune, cabinets, cabinets_reporting,
energy_kwh, counter_resets``. ``cabinets``: the commune's lighting cabinets in the
configuration; ``cabinets_reporting``: those whose energy counter is known over the whole
hour; ``energy_kwh``: the sum of *their* counters' increase over the hour (empty when none
reports: never a silent zero; the others are left out, not estimated);
``counter_resets``: counters found lower than before (a meter reset or replaced, or a wrap).

``lighting_daily_communes.csv``: ``date, commune, cabinets, lighting_cabinets_reporting,
lighting_hours_total, lighting_hours_mean, energy_cabinets_reporting, energy_kwh``: lighting
hours summed over, and averaged per, the cabinets whose ``lamps_on`` is known all day; the
energy of the cabinets whose counter is known all day.

``lighting_daily_cabinets.csv``: ``date, commune, device, lat, lon, lighting_hours,
lighting_hours_covered, energy_kwh, energy_hours_covered, counter_resets``: the hours with
the lamps on (``lamps_on`` = 1) and the energy, over the ``*_hours_covered`` hours of the day
for which the point is known (24, or 23/25 on a daylight-saving day, when complete).

``bollard_passages_daily.csv``: ``date, commune, device, lat, lon, passages, openings,
hours_covered``: ``passages`` are the vehicles detected on the access point's induction loop
(``vehicle`` going 0 -> 1; refused vehicles included: the loop sees them all), ``openings`` the
times the bollard went down (``position`` reaching ``down``), over ``hours_covered`` hours.

``junction_counts_daily.csv``: ``date, commune, device, lat, lon, detectors,
detectors_reporting, hours_covered`` then one column per detector counter of the junction
types (``main_in_count``, ``main_out_count``, ...): the vehicles counted by that detector over
the part of the day it is known (``hours_covered``: the least covered detector's hours).

GeoJSON (RFC 7946): a ``FeatureCollection``; each ``Feature`` has a ``Point`` geometry with
``coordinates: [lon, lat]`` (WGS 84, 5 decimals) and ``properties``: ``device`` (or
``commune``), ``commune``, ``equipment_type``, the totals over the range (the sums of the
daily figures) and ``daily``, the list of the device's (commune's) CSV rows without the
repeated identity columns (``null`` for a figure not known). A commune's point is the mean of
the coordinates of its exported devices (the configuration knows no commune outlines).

**How the figures are computed.** From the stored points (the historian's compressed
history: a point is kept when the value moves; between two stored points the value is on the
line joining them, within the tag's compression deviation, which is 0 for the counters of the
shipped configuration). Only Good values count. A *counter* (``energy``, ``*_count``) is
interpolated linearly between two consecutive Good points, so an increase that straddles an
hour boundary is split in proportion of time; when a Good value is lower than the one before,
the counter was reset (or wrapped) and the increase is the new value (counted from zero, as
Prometheus' ``increase()`` does). Between a Good point and a non-Good one (communication lost),
or after the last point beyond the moment the store last recorded anything, the counter is
*not known*: that time is not covered, and an increase across such a gap is not attributed to
any hour (the period is incomplete, hence ``cabinets_reporting``). A *state* (``lamps_on``,
``vehicle``, ``position``) holds its Good value until the next stored point (stepped), so
lighting hours are time-weighted and split at midnight (lamps on 18:00-07:00 give 6 h to the
first day and 7 h to the next). Limits: a server that was stopped leaves no mark in the
history, so a counter's increase over the downtime is spread over it; tags no longer in the
configuration are not exported.

**Personal data: none is exported.** Decided, by what each point could reveal:

- bollards: only daily counts per access point. The vehicle class (``last_access_class``:
  resident, delivery, taxi, *emergency*...) and the access decision (``last_access_granted``)
  are not exported at all, not even as daily counts per class: on a residential street with a
  few passages a day, "one emergency vehicle at bollard B-DIJ-004 on 28 November" can point at
  a household (and health data). No time finer than the day is given for passages, and no
  identity exists in the data (the bollards report no plate or badge).
- crew vehicles (GPS positions, statuses of the city's field crews) are never exported: they
  track identifiable employees.
- lighting and traffic figures are measurements of equipment, aggregated per day (per hour
  for the energy of a commune); the coordinates are those of public street furniture.

Reads go through :class:`~scada.historian.store.HistoryStore` opened ``readonly``: one raw
read per exported tag and range, plus its bounds; the arithmetic is numpy and costs nothing
beside. Measured here: about 0.4 million stored points read per second, so a day of the whole
metropolis (1,100 cabinets, 113 junctions whose four detector counters store a point every
2 s: 20 million points) takes about 45 s, a month half an hour; the detector counters are
nearly all of it.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from scada.config import Config, Device
from scada.historian.store import HistoryStore

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
_SEVERITY = np.uint32(0xC0000000)

FILES = {
    "energy_hourly": "energy_hourly_communes.csv",
    "lighting_communes": "lighting_daily_communes.csv",
    "lighting_cabinets": "lighting_daily_cabinets.csv",
    "bollards": "bollard_passages_daily.csv",
    "junctions": "junction_counts_daily.csv",
    "communes_geo": "communes.geojson",
    "cabinets_geo": "lighting_cabinets.geojson",
    "bollards_geo": "bollards.geojson",
    "junctions_geo": "junctions.geojson",
}

ENERGY_HOURLY_COLUMNS = ("hour_start", "commune", "cabinets", "cabinets_reporting", "energy_kwh", "counter_resets")
LIGHTING_COMMUNE_COLUMNS = (
    "date",
    "commune",
    "cabinets",
    "lighting_cabinets_reporting",
    "lighting_hours_total",
    "lighting_hours_mean",
    "energy_cabinets_reporting",
    "energy_kwh",
)
LIGHTING_CABINET_COLUMNS = (
    "date",
    "commune",
    "device",
    "lat",
    "lon",
    "lighting_hours",
    "lighting_hours_covered",
    "energy_kwh",
    "energy_hours_covered",
    "counter_resets",
)
BOLLARD_COLUMNS = ("date", "commune", "device", "lat", "lon", "passages", "openings", "hours_covered")
JUNCTION_BASE_COLUMNS = ("date", "commune", "device", "lat", "lon", "detectors", "detectors_reporting", "hours_covered")

# The points each kind of device is recognised by (whatever its type's name), and used for.
LAMPS_ON, ENERGY = "lamps_on", "energy"
VEHICLE, POSITION, DOWN_LABEL = "vehicle", "position", "down"
COUNT_SUFFIX = "_count"


# -- the period --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole local days ``[start_ns, end_ns)`` of ``tz``, with their day and hour boundaries."""

    tz: ZoneInfo | timezone
    days: tuple[date, ...]
    day_edges: np.ndarray  # len(days) + 1 boundaries, ns
    hour_edges: np.ndarray  # every hour from start to end, ns

    @property
    def start_ns(self) -> int:
        return int(self.day_edges[0])

    @property
    def end_ns(self) -> int:
        return int(self.day_edges[-1])

    def hour_label(self, ns: int) -> str:
        return datetime.fromtimestamp(ns / SECOND, self.tz).isoformat()


def timezone_of(name: str) -> ZoneInfo | timezone:
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (e.g. UTC, Europe/Paris)") from None


def parse_time(text: str, tz: ZoneInfo | timezone) -> datetime:
    """ISO 8601 date or date-time; without an offset it is a local time of ``tz``."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r} (e.g. 2026-11-28 or 2026-11-28T06:00)") from None
    return t.replace(tzinfo=tz) if t.tzinfo is None else t


def _midnight_ns(d: date, tz) -> int:
    return int(datetime.combine(d, dtime(0), tzinfo=tz).timestamp()) * SECOND


def make_period(start: datetime, end: datetime, tz: ZoneInfo | timezone) -> Period:
    """The local days of ``tz`` that meet ``[start, end)``: the range widened to whole days."""
    first = start.astimezone(tz).date()
    e = end.astimezone(tz)
    last = e.date() if e.time() == dtime(0) else e.date() + timedelta(days=1)  # exclusive
    if last <= first:
        raise ValueError(f"empty range: {start.isoformat()} to {end.isoformat()}")
    days = tuple(first + timedelta(days=k) for k in range((last - first).days))
    day_edges = np.array([_midnight_ns(d, tz) for d in (*days, last)], np.int64)
    hour_edges = np.arange(day_edges[0], day_edges[-1] + 1, HOUR, dtype=np.int64)
    if hour_edges[-1] != day_edges[-1]:  # a zone whose day is not whole hours (never in practice)
        hour_edges = np.append(hour_edges, day_edges[-1])
    return Period(tz, days, day_edges, hour_edges)


# -- the arithmetic on stored points (pure numpy) ----------------------------------------------


def _good(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.asarray(s, np.uint32) & _SEVERITY) == 0) & np.isfinite(v)


def _cumulative(
    t0: np.ndarray, t1: np.ndarray, amount: np.ndarray, known: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative amount and known time (ns) at each of ``x``, over contiguous segments
    ``[t0, t1)`` (sorted); a known segment's ``amount`` accrues linearly over it."""
    x = np.asarray(x, np.int64)
    if len(t0) == 0:
        return np.zeros(len(x)), np.zeros(len(x), np.int64)
    length = t1 - t0
    amt = np.where(known, amount, 0.0)
    dur = np.where(known, length, 0)
    c_amt = np.concatenate([[0.0], np.cumsum(amt)])
    c_dur = np.concatenate([[0], np.cumsum(dur)]).astype(np.int64)
    j = np.searchsorted(t0, x, "right") - 1
    inside = j >= 0
    jj = np.clip(j, 0, len(t0) - 1)
    part = np.clip(x - t0[jj], 0, length[jj])  # ns of segment jj before x
    frac = part / np.where(length[jj] > 0, length[jj], 1)
    f_amt = c_amt[jj] + amt[jj] * frac
    f_dur = c_dur[jj] + np.where(known[jj], part, 0)
    return np.where(inside, f_amt, 0.0), np.where(inside, f_dur, 0).astype(np.int64)


def counter_increase(t: np.ndarray, v: np.ndarray, s: np.ndarray, edges: np.ndarray, horizon: int):
    """Increase of a counter over each period ``[edges[k], edges[k+1])``.

    Returns ``(increase, covered_ns, resets)`` per period. The counter is known between two
    consecutive stored points that are both Good (linear between them) and after the last one
    when Good, up to ``horizon``; a decrease is a reset (the increase is the new value).
    ``covered_ns`` is the known time of each period; ``resets`` counts the resets seen in it.
    """
    t, v, s = np.asarray(t, np.int64), np.asarray(v, np.float64), np.asarray(s, np.uint32)
    edges = np.asarray(edges, np.int64)
    k = len(edges) - 1
    if len(t) == 0:
        return np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.int64)
    g = _good(s, v)
    d = np.diff(v)
    reset = g[:-1] & g[1:] & (d < 0)
    amount = np.where(reset, v[1:], d)
    t0, t1, known = t[:-1], t[1:], g[:-1] & g[1:]
    if g[-1] and horizon > t[-1]:  # held after the last point while the store kept recording
        t0, t1 = np.append(t0, t[-1]), np.append(t1, horizon)
        amount, known = np.append(amount, 0.0), np.append(known, True)
    f_amt, f_dur = _cumulative(t0, t1, np.nan_to_num(amount), known, edges)
    resets = np.zeros(k, np.int64)
    where = np.searchsorted(edges, t[1:][reset] - 1, "right") - 1  # the period holding the segment's end
    where = where[(where >= 0) & (where < k)]
    np.add.at(resets, where, 1)
    return np.diff(f_amt), np.diff(f_dur), resets


def time_in_state(
    t: np.ndarray, v: np.ndarray, s: np.ndarray, edges: np.ndarray, horizon: int, state: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Time (ns) a stepped signal held ``state`` in each period, and the time it was known.

    A Good point holds its value until the next stored point; the last one until ``horizon``.
    """
    t, v, s = np.asarray(t, np.int64), np.asarray(v, np.float64), np.asarray(s, np.uint32)
    edges = np.asarray(edges, np.int64)
    k = len(edges) - 1
    if len(t) == 0:
        return np.zeros(k, np.int64), np.zeros(k, np.int64)
    g = _good(s, v)
    t1 = np.append(t[1:], max(int(horizon), int(t[-1])))
    on = g & (v == state)
    _, on_ns = _cumulative(t, t1, np.zeros(len(t)), on, edges)
    _, known_ns = _cumulative(t, t1, np.zeros(len(t)), g, edges)
    return np.diff(on_ns), np.diff(known_ns)


def transitions(
    t: np.ndarray, v: np.ndarray, s: np.ndarray, edges: np.ndarray, into: float, from_other: bool = True
) -> np.ndarray:
    """Per period, how many times a stepped signal's Good value became ``into`` from another Good
    value (the non-Good points between them are skipped). Counted at the time of the new value."""
    t, v, s = np.asarray(t, np.int64), np.asarray(v, np.float64), np.asarray(s, np.uint32)
    edges = np.asarray(edges, np.int64)
    k = len(edges) - 1
    counts = np.zeros(k, np.int64)
    g = _good(s, v)
    tg, vg = t[g], v[g]
    if len(tg) < 2:
        return counts
    hit = (vg[1:] == into) & ((vg[:-1] != into) if from_other else True)
    where = np.searchsorted(edges, tg[1:][hit], "right") - 1
    where = where[(where >= 0) & (where < k)]
    np.add.at(counts, where, 1)
    return counts


# -- the devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A device as exported: identity, place and the tag names of the points used."""

    device: str
    commune: str
    equipment_type: str
    lat: float
    lon: float
    tags: dict[str, str] = field(default_factory=dict)  # point name -> tag name
    down_value: float | None = None  # bollards: the position value labelled "down"


@dataclass(frozen=True)
class Sites:
    cabinets: tuple[Site, ...]
    bollards: tuple[Site, ...]
    junctions: tuple[Site, ...]
    detectors: tuple[str, ...]  # junction counter points, in configuration order
    centres: dict[str, tuple[float, float]]  # commune -> (lat, lon): mean of its exported devices

    @property
    def communes(self) -> list[str]:
        return sorted({s.commune for s in self.cabinets})


def _site(d: Device, tag: dict[str, str], points: Sequence[str], down: float | None = None) -> Site:
    """Device ``d`` exported with the tags of ``points`` (``tag``: its recorded points' tag names)."""
    return Site(d.name, d.commune, d.type, d.lat, d.lon, {p: tag[p] for p in points}, down)


def sites_from_config(config: Config) -> Sites:
    """Which devices are lighting cabinets, bollards and junctions: by the points of their type
    (``lamps_on``/``energy``; ``vehicle``; ``*_count``), whatever the type is called."""
    cabinets, bollards, junctions = [], [], []
    detectors: list[str] = []
    where: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for d in config.devices:
        t = config.types[d.type]
        names = [p.name for p in t.points if p.history and t.history.enabled]  # what the historian records
        tag = {p: f"{d.commune}/{t.cls}/{d.name}/{p}" for p in names}
        if LAMPS_ON in tag or ENERGY in tag:
            cabinets.append(_site(d, tag, [p for p in (LAMPS_ON, ENERGY) if p in tag]))
        elif VEHICLE in tag:
            pos = t.point(POSITION)
            down = None
            if pos is not None and pos.enum and POSITION in tag:
                down = next((float(k) for k, label in pos.enum if label == DOWN_LABEL), None)
            bollards.append(_site(d, tag, [p for p in (VEHICLE, POSITION) if p in tag], down))
        else:
            counts = [p for p in names if p.endswith(COUNT_SUFFIX)]
            if counts:
                junctions.append(_site(d, tag, counts))
                detectors.extend(p for p in counts if p not in detectors)
    for s in (*cabinets, *bollards, *junctions):
        where[s.commune].append((s.lat, s.lon))
    centres = {c: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)) for c, pts in where.items()}
    return Sites(tuple(cabinets), tuple(bollards), tuple(junctions), tuple(detectors), centres)


# -- reading the store -------------------------------------------------------------------------


Points = tuple[np.ndarray, np.ndarray, np.ndarray]  # (t, v, s) of one tag, as read_points gives


def read_points(store: HistoryStore, name: str, start: int, end: int) -> Points | None:
    """(t, v, s) of a tag over ``[start, end)`` with the stored point before ``start`` and the one
    at or after ``end`` (interpolation at the bounds); None when the store has no such tag."""
    try:
        raw = store.read_raw(name, start, end)
    except KeyError:
        return None
    before = store.bound_before(name, start - 1)
    after = store.bound_after(name, end)
    t, v, s = [raw.times], [raw.values], [raw.status]
    for b, head in ((before, True), (after, False)):
        if b is not None:
            arr: Points = (np.array([b[0]], np.int64), np.array([b[1]], np.float64), np.array([b[2]], np.uint32))
            for lst, a in zip((t, v, s), arr):
                if head:
                    lst.insert(0, a)
                else:
                    lst.append(a)
    return (
        np.concatenate(t).astype(np.int64),
        np.concatenate(v).astype(np.float64),
        np.concatenate(s).astype(np.uint32),
    )


def recorded_until(path: str | Path) -> int | None:
    """The latest time the store holds a value of any tag: the historian was recording until then
    (ns; None for an empty store). Read from the minute rollups (keyed by bucket: one probe for
    the last bucket, then that bucket's tags in ``raw``) and the unmerged rows in ``staging``."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        latest = db.execute("SELECT MAX(time_ns) FROM staging").fetchone()[0]
        bucket = db.execute("SELECT MAX(bucket_ns) FROM rollup_minute").fetchone()[0]
        if bucket is not None:
            merged = db.execute(
                "SELECT MAX(r.time_ns) FROM rollup_minute m JOIN raw r "
                "ON r.tag = m.tag AND r.time_ns >= m.bucket_ns WHERE m.bucket_ns = ?",
                (bucket,),
            ).fetchone()[0]
            merged = bucket if merged is None else merged
            latest = merged if latest is None else max(latest, merged)
        return None if latest is None else int(latest)
    finally:
        db.close()


# -- the export --------------------------------------------------------------------------------


def _r(x: float | None, nd: int = 3):
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd) + 0.0  # + 0.0: no "-0.0"


def _hours(ns) -> float:
    return float(ns) / HOUR


@dataclass
class OpenData:
    """The tables of an export (lists of row dicts, columns as documented) and the GeoJSON."""

    period: Period
    horizon: int
    energy_hourly: list[dict]
    lighting_communes: list[dict]
    lighting_cabinets: list[dict]
    bollards: list[dict]
    junctions: list[dict]
    junction_columns: tuple[str, ...]
    geo: dict[str, dict]


_NONE = np.zeros(0)  # a tag with no stored point


def _or_empty(pts: Points | None) -> Points:
    return (_NONE, _NONE, _NONE) if pts is None else pts


@dataclass(frozen=True)
class Cabinet:
    """A lighting cabinet's figures: its daily rows and, per day, which figures are whole-day."""

    site: Site
    rows: list[dict]  # LIGHTING_CABINET_COLUMNS, one per day
    lighting_full: np.ndarray  # per day: lamps_on known all day
    energy_full: np.ndarray  # per day: the energy counter known all day
    energy_hourly: tuple[np.ndarray, np.ndarray, np.ndarray]  # counter_increase over the hours


def cabinet(site: Site, energy: Points | None, lamps: Points | None, period: Period, horizon: int) -> Cabinet:
    """A cabinet's daily lighting hours and energy, and its hourly energy, from its points."""
    day_len = np.diff(period.day_edges)
    e_day, cov_day, res_day = counter_increase(*_or_empty(energy), period.day_edges, horizon)
    if lamps is not None:
        on_day, known_day = time_in_state(*lamps, period.day_edges, horizon)
    else:
        on_day, known_day = np.zeros(len(period.days), np.int64), np.zeros(len(period.days), np.int64)
    rows = [
        {
            "date": d.isoformat(),
            "commune": site.commune,
            "device": site.device,
            "lat": site.lat,
            "lon": site.lon,
            "lighting_hours": _r(_hours(on_day[k])) if known_day[k] else None,
            "lighting_hours_covered": _r(_hours(known_day[k])),
            "energy_kwh": _r(e_day[k]) if cov_day[k] else None,
            "energy_hours_covered": _r(_hours(cov_day[k])),
            "counter_resets": int(res_day[k]),
        }
        for k, d in enumerate(period.days)
    ]
    hourly = counter_increase(*_or_empty(energy), period.hour_edges, horizon)
    return Cabinet(site, rows, known_day == day_len, cov_day == day_len, hourly)


def _by_commune(cabinets: Sequence[Cabinet]) -> dict[str, list[Cabinet]]:
    """Cabinets per commune, communes sorted, each commune's in configuration order."""
    groups: dict[str, list[Cabinet]] = defaultdict(list)
    for c in cabinets:
        groups[c.site.commune].append(c)
    return {commune: groups[commune] for commune in sorted(groups)}


def energy_hourly_rows(cabinets: Sequence[Cabinet], period: Period) -> list[dict]:
    """ENERGY_HOURLY_COLUMNS rows: per hour and commune, the energy of the cabinets known all hour."""
    hour_len = np.diff(period.hour_edges)
    totals = {}
    for commune, members in _by_commune(cabinets).items():
        reporting = np.zeros(len(hour_len), np.int64)
        energy = np.zeros(len(hour_len))
        resets = np.zeros(len(hour_len), np.int64)
        for c in members:
            e_hour, cov_hour, res_hour = c.energy_hourly
            full_hour = cov_hour == hour_len
            reporting += full_hour
            energy += np.where(full_hour, e_hour, 0.0)
            resets += res_hour
        totals[commune] = (len(members), reporting, energy, resets)
    rows = []
    for h in range(len(hour_len)):
        for commune, (count, reporting, energy, resets) in totals.items():
            n = int(reporting[h])
            rows.append(
                {
                    "hour_start": period.hour_label(int(period.hour_edges[h])),
                    "commune": commune,
                    "cabinets": count,
                    "cabinets_reporting": n,
                    "energy_kwh": _r(energy[h]) if n else None,
                    "counter_resets": int(resets[h]),
                }
            )
    return rows


def lighting_commune_rows(cabinets: Sequence[Cabinet], period: Period) -> list[dict]:
    """LIGHTING_COMMUNE_COLUMNS rows: per day and commune, the cabinets' figures known all day."""
    communes = _by_commune(cabinets)
    rows = []
    for k, d in enumerate(period.days):
        for commune, members in communes.items():
            lit = [c.rows[k]["lighting_hours"] for c in members if c.lighting_full[k]]
            en = [c.rows[k]["energy_kwh"] for c in members if c.energy_full[k]]
            rows.append(
                {
                    "date": d.isoformat(),
                    "commune": commune,
                    "cabinets": len(members),
                    "lighting_cabinets_reporting": len(lit),
                    "lighting_hours_total": _r(sum(lit)) if lit else None,
                    "lighting_hours_mean": _r(sum(lit) / len(lit)) if lit else None,
                    "energy_cabinets_reporting": len(en),
                    "energy_kwh": _r(sum(en)) if en else None,
                }
            )
    return rows


def bollard_rows(
    site: Site, vehicle: Points | None, position: Points | None, period: Period, horizon: int
) -> list[dict]:
    """BOLLARD_COLUMNS rows of a bollard: passages (vehicle 0 -> 1) and openings (position ->
    down) per day, known while its vehicle point is."""
    n_days = len(period.days)
    if vehicle is not None:
        passages = transitions(*vehicle, period.day_edges, into=1.0)
        _, known = time_in_state(*vehicle, period.day_edges, horizon)
    else:
        passages, known = np.zeros(n_days, np.int64), np.zeros(n_days, np.int64)
    openings = None
    if position is not None and site.down_value is not None:
        openings = transitions(*position, period.day_edges, into=site.down_value)
    return [
        {
            "date": d.isoformat(),
            "commune": site.commune,
            "device": site.device,
            "lat": site.lat,
            "lon": site.lon,
            "passages": int(passages[k]) if known[k] else None,
            "openings": int(openings[k]) if openings is not None and known[k] else None,
            "hours_covered": _r(_hours(known[k])),
        }
        for k, d in enumerate(period.days)
    ]


def junction_rows(
    site: Site, counters: dict[str, Points | None], detectors: Sequence[str], period: Period, horizon: int
) -> list[dict]:
    """JUNCTION_BASE_COLUMNS + ``detectors`` rows of a junction: the increase of each of its
    detector counters (``counters``, by point) per day."""
    n_days = len(period.days)
    day_len = np.diff(period.day_edges)
    inc = {}
    cov = []
    for det, pts in counters.items():
        if pts is None:
            inc[det], c = np.zeros(n_days), np.zeros(n_days, np.int64)
        else:
            inc[det], c, _ = counter_increase(*pts, period.day_edges, horizon)
        cov.append(c)
        inc[det] = np.where(c > 0, inc[det], np.nan)
    cov_arr = np.array(cov, np.int64).reshape(len(cov), n_days)
    rows = []
    for k, d in enumerate(period.days):
        row = {
            "date": d.isoformat(),
            "commune": site.commune,
            "device": site.device,
            "lat": site.lat,
            "lon": site.lon,
            "detectors": len(site.tags),
            "detectors_reporting": int((cov_arr[:, k] == day_len[k]).sum()),
            "hours_covered": _r(_hours(cov_arr[:, k].min())) if len(cov) else 0.0,
        }
        for det in detectors:
            x = inc[det][k] if det in inc else math.nan
            # Counts are whole vehicles; a fraction is the share of a count that straddles midnight.
            row[det] = None if not math.isfinite(x) else int(round(x))
        rows.append(row)
    return rows


def geojson(
    sites: Sites,
    lighting_communes: list[dict],
    daily: dict[str, dict[str, list[dict]]],
) -> dict[str, dict]:
    """The GeoJSON collections by FILES key; ``daily``: per kind, each device's CSV rows."""
    communes_daily = defaultdict(list)
    for row in lighting_communes:
        communes_daily[row["commune"]].append(row)
    return {
        "communes_geo": _collection(
            [
                _feature(
                    c,
                    *sites.centres[c],
                    {"commune": c, "cabinets": rows[0]["cabinets"] if rows else 0},
                    rows,
                    ("commune",),
                    ("lighting_hours_total", "energy_kwh"),
                )
                for c, rows in sorted(communes_daily.items())
            ]
        ),
        "cabinets_geo": _devices(
            sites.cabinets,
            daily["cabinets"],
            ("lighting_hours", "energy_kwh", "lighting_hours_covered", "energy_hours_covered"),
        ),
        "bollards_geo": _devices(sites.bollards, daily["bollards"], ("passages", "openings", "hours_covered")),
        "junctions_geo": _devices(sites.junctions, daily["junctions"], (*sites.detectors, "hours_covered")),
    }


def _by_date_commune_device(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["date"], r["commune"], r["device"]))


def compute(store: HistoryStore, config: Config, period: Period, horizon: int | None = None) -> OpenData:
    """Every table of the export from an open store (read-only is enough).

    ``horizon``: the time the store last recorded anything (default: read from the store);
    nothing is known after it.
    """
    sites = sites_from_config(config)
    if horizon is None:
        horizon = recorded_until(store.path)
    horizon = min(period.end_ns, horizon if horizon is not None else period.start_ns)

    def read(site: Site, point: str) -> Points | None:
        name = site.tags.get(point)
        return None if name is None else read_points(store, name, period.start_ns, period.end_ns)

    cabinets = [cabinet(s, read(s, ENERGY), read(s, LAMPS_ON), period, horizon) for s in sites.cabinets]
    bollards = {
        s.device: bollard_rows(
            s, read(s, VEHICLE), read(s, POSITION) if s.down_value is not None else None, period, horizon
        )
        for s in sites.bollards
    }
    junctions = {
        s.device: junction_rows(s, {det: read(s, det) for det in s.tags}, sites.detectors, period, horizon)
        for s in sites.junctions
    }
    lighting_communes = lighting_commune_rows(cabinets, period)
    daily = {"cabinets": {c.site.device: c.rows for c in cabinets}, "bollards": bollards, "junctions": junctions}
    return OpenData(
        period,
        horizon,
        energy_hourly_rows(cabinets, period),
        lighting_communes,
        _by_date_commune_device([row for c in cabinets for row in c.rows]),
        _by_date_commune_device([row for rows in bollards.values() for row in rows]),
        _by_date_commune_device([row for rows in junctions.values() for row in rows]),
        JUNCTION_BASE_COLUMNS + sites.detectors,
        geojson(sites, lighting_communes, daily),
    )


def _feature(
    fid: str, lat: float, lon: float, identity: dict, daily: list[dict], drop: Sequence[str], totals: Sequence[str]
) -> dict:
    props = dict(identity)
    for name in totals:
        known = [r[name] for r in daily if r.get(name) is not None]
        total = (sum(known) if all(isinstance(x, int) for x in known) else _r(sum(known))) if known else None
        props[f"{name}_total" if not name.endswith("_total") else name] = total
    props["daily"] = [{k: v for k, v in r.items() if k not in drop} for r in daily]
    return {
        "type": "Feature",
        "id": fid,
        "geometry": {"type": "Point", "coordinates": [round(float(lon), 5), round(float(lat), 5)]},
        "properties": props,
    }


def _devices(sites: Sequence[Site], daily: dict[str, list[dict]], totals: Sequence[str]) -> dict:
    return _collection(
        [
            _feature(
                s.device,
                s.lat,
                s.lon,
                {"device": s.device, "commune": s.commune, "equipment_type": s.equipment_type},
                daily[s.device],
                ("commune", "device", "lat", "lon"),
                totals,
            )
            for s in sites
        ]
    )


def _collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])


def write(data: OpenData, out_dir: str | Path) -> dict[str, int]:
    """Write every file into ``out_dir`` (created); returns rows (features) per file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "energy_hourly": (ENERGY_HOURLY_COLUMNS, data.energy_hourly),
        "lighting_communes": (LIGHTING_COMMUNE_COLUMNS, data.lighting_communes),
        "lighting_cabinets": (LIGHTING_CABINET_COLUMNS, data.lighting_cabinets),
        "bollards": (BOLLARD_COLUMNS, data.bollards),
        "junctions": (data.junction_columns, data.junctions),
    }
    written = {}
    for key, (columns, rows) in tables.items():
        _write_csv(out / FILES[key], columns, rows)
        written[FILES[key]] = len(rows)
    for key, collection in data.geo.items():
        with open(out / FILES[key], "w", encoding="utf-8") as fh:
            json.dump(collection, fh, ensure_ascii=False, indent=1)
            fh.write("\n")
        written[FILES[key]] = len(collection["features"])
    return written


def export(
    data_dir: str | Path, config: Config, period: Period, out_dir: str | Path, horizon: int | None = None
) -> dict[str, int]:
    """Open ``<data_dir>/history.sqlite`` read-only, compute and write; rows per file."""
    store = HistoryStore(Path(data_dir) / "history.sqlite", readonly=True)
    try:
        data = compute(store, config, period, horizon)
    finally:
        store.close()
    return write(data, out_dir)
