"""Open data export: figures computed from a history store written with known points.

The store is written directly with StoredBatches (what the compressor would keep), so every
expected figure below is worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from scada import status as st
from city_scada import main as scada_main
from city_scada import load_config
from scada.historian.compress import StoredBatch
from scada.historian.store import HistoryStore
from scada.opendata import (BOLLARD_COLUMNS, ENERGY_HOURLY_COLUMNS, FILES, LIGHTING_CABINET_COLUMNS,
                            LIGHTING_COMMUNE_COLUMNS, Site, cabinet, compute, counter_increase, energy_hourly_rows,
                            export, junction_rows, lighting_commune_rows, make_period, parse_time, recorded_until,
                            sites_from_config, time_in_state, timezone_of, transitions)

ROOT = Path(__file__).resolve().parents[2]
SECOND = 10**9
MINUTE = 60 * SECOND
HOUR = 3600 * SECOND
GOOD, BAD = st.GOOD, st.BAD_COMMUNICATION_ERROR
D1 = int(datetime(2026, 11, 28, tzinfo=timezone.utc).timestamp()) * SECOND  # 2026-11-28T00:00Z
D2, D3 = D1 + 24 * HOUR, D1 + 48 * HOUR


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> int:
    return day + hh * HOUR + mm * MINUTE + ss * SECOND


DEVICES = """
devices:
  - {name: LC-A-1, type: lighting_cabinet, commune: Ahuy, lat: 47.369, lon: 5.021, endpoint: "127.0.0.1:15020", unit: 1}
  - {name: LC-A-2, type: lighting_cabinet, commune: Ahuy, lat: 47.371, lon: 5.025, endpoint: "127.0.0.1:15021", unit: 1}
  - {name: LC-D-1, type: lighting_cabinet, commune: Dijon, lat: 47.322, lon: 5.041, endpoint: "127.0.0.1:15022", unit: 1}
  - {name: B-D-1, type: access_bollard, commune: Dijon, lat: 47.324, lon: 5.030, endpoint: "127.0.0.1:1883"}
  - {name: J-D-1, type: traffic_junction, commune: Dijon, lat: 47.307, lon: 5.052,
     endpoint: "opc.tcp://127.0.0.1:4841/traffic/"}
  - {name: V-1, type: crew_vehicle, commune: Dijon, lat: 47.33, lon: 5.04, endpoint: "127.0.0.1:1883"}
"""


@pytest.fixture
def config(tmp_path):
    """The shipped equipment types, with a few devices of each."""
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "tags.yaml").write_text(head + DEVICES)
    return load_config(folder)


# The points written, per tag: (time, value, status[, text]). Hand-computed figures in the tests.
HISTORY = {
    # Energy, cabinet A-1: +1.0 from 17:30 to 18:30 (0.5 in each hour), +1.0 18:30-19:00, a reset
    # (102 -> 0.5) between 19:00 and 19:30, +0.5 19:30-20:00, flat afterwards.
    "Ahuy/lighting/LC-A-1/energy": [(at(D1, 0), 100.0), (at(D1, 17, 30), 100.0), (at(D1, 18, 30), 101.0),
                                    (at(D1, 19), 102.0), (at(D1, 19, 30), 0.5), (at(D1, 20), 1.0)],
    # Energy, cabinet A-2: communication lost 18:20-20:00 (the counter is not known from 18:00,
    # its last Good point, to 20:00); +2.0 from 20:00 to 22:00.
    "Ahuy/lighting/LC-A-2/energy": [(at(D1, 0), 50.0), (at(D1, 18), 50.0), (at(D1, 18, 20), 50.0, BAD),
                                    (at(D1, 20), 53.0), (at(D1, 22), 55.0)],
    # Lamps of A-1: on 00:00-07:00 and from 18:00 to 07:00 the next day, on again at 18:00.
    "Ahuy/lighting/LC-A-1/lamps_on": [(at(D1, 0), 1.0), (at(D1, 7), 0.0), (at(D1, 18), 1.0), (at(D2, 7), 0.0),
                                      (at(D2, 18), 1.0)],
    # Lamps of A-2: first known at 18:00 on day 1.
    "Ahuy/lighting/LC-A-2/lamps_on": [(at(D1, 18), 1.0), (at(D2, 7), 0.0)],
    # Bollard: vehicles at 08:10, 09:00, 13:00 (after a communication loss 12:00-13:00) and 23:59:59.
    "Dijon/bollard/B-D-1/vehicle": [(at(D1, 8), 0.0), (at(D1, 8, 10), 1.0), (at(D1, 8, 10, 8), 0.0),
                                    (at(D1, 9), 1.0), (at(D1, 9, 0, 8), 0.0), (at(D1, 12), 0.0, BAD),
                                    (at(D1, 13), 1.0), (at(D1, 13, 0, 8), 0.0), (at(D1, 23, 59, 59), 1.0),
                                    (at(D2, 0, 0, 7), 0.0)],
    # Position: up, lowering, down (an opening), rising, up.
    "Dijon/bollard/B-D-1/position": [(at(D1, 8), 2.0), (at(D1, 8, 10), 3.0), (at(D1, 8, 10, 4), 0.0),
                                     (at(D1, 8, 10, 30), 1.0), (at(D1, 8, 10, 36), 2.0)],
    "Dijon/bollard/B-D-1/last_access_class": [(at(D1, 8, 10), float("nan"), GOOD, "resident"),
                                              (at(D1, 9), float("nan"), GOOD, "emergency")],
    "Dijon/bollard/B-D-1/last_access_granted": [(at(D1, 8, 10), 1.0)],
    # Junction: main_in 1000 -> 1600 -> 2000 over day 1; wraps (2000 -> 100) during day 2, then 1200.
    "Dijon/traffic/J-D-1/main_in_count": [(at(D1, 0), 1000.0), (at(D1, 12), 1600.0), (at(D2, 0), 2000.0),
                                          (at(D2, 12), 100.0), (at(D2, 23), 1200.0)],
    # main_out: known from 06:00 on day 1; 100 vehicles from 06:00 to 01:00 the next day (19 h):
    # 18/19 of them on day 1 (94.7 -> 95), 1/19 on day 2 (5.3 -> 5).
    "Dijon/traffic/J-D-1/main_out_count": [(at(D1, 6), 0.0), (at(D2, 1), 100.0)],
    # Crew vehicles are never exported.
    "Dijon/fleet/V-1/lat": [(at(D1, 8), 47.33)],
}


def write_store(path: Path, history: dict, names: list[str]) -> None:
    """One StoredBatch per tag, into a store that knows ``names`` (the tags of LC-D-1 are not
    among them: a cabinet the historian never recorded)."""
    index = {n: i for i, n in enumerate(names)}
    with HistoryStore(path, names) as store:
        for name, points in history.items():
            ids = np.full(len(points), index[name], np.int64)
            times = np.array([p[0] for p in points], np.int64)
            values = np.array([p[1] for p in points], np.float64)
            status = np.array([p[2] if len(p) > 2 else GOOD for p in points], np.uint32)
            texts = tuple(p[3] for p in points) if any(len(p) > 3 for p in points) else None
            store.write(StoredBatch(ids, values, status, times, texts))


@pytest.fixture
def data_dir(tmp_path, config):
    names = [n for n in config.tag_table()[0] if "/LC-D-1/" not in n]
    folder = tmp_path / "data"
    folder.mkdir()
    write_store(folder / "history.sqlite", HISTORY, names)
    return folder


def period(tz: str = "UTC", start: str = "2026-11-28", end: str = "2026-11-30"):
    z = timezone_of(tz)
    return make_period(parse_time(start, z), parse_time(end, z), z)


@pytest.fixture
def result(data_dir, config):
    with HistoryStore(data_dir / "history.sqlite", readonly=True) as store:
        return compute(store, config, period(), horizon=D3)


def by(rows, *keys):
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


# -- the arithmetic ----------------------------------------------------------------------------

def test_counter_increase_split_at_hour_boundaries_with_a_reset_and_a_gap():
    t = np.array([0, 30, 90, 120, 150], np.int64) * MINUTE  # minutes
    v = np.array([10.0, 10.0, 12.0, 1.0, 2.0])
    s = np.full(5, GOOD, np.uint32)
    edges = np.array([0, 60, 120, 180], np.int64) * MINUTE
    inc, cov, resets = counter_increase(t, v, s, edges, horizon=180 * MINUTE)
    # 30-90: +2 (1 in each hour); 90-120: reset, +1 (the new value); 120-150: +1; held to 180.
    np.testing.assert_allclose(inc, [1.0, 2.0, 1.0])
    assert cov.tolist() == [60 * MINUTE] * 3 and resets.tolist() == [0, 1, 0]
    # A Bad point at 100: 90-100 and 100-120 are unknown, the reset is not seen as such.
    s2 = s.copy()
    t2, v2 = np.insert(t, 3, 100 * MINUTE), np.insert(v, 3, 12.0)
    s2 = np.insert(s2, 3, BAD)
    inc, cov, resets = counter_increase(t2, v2, s2, edges, horizon=180 * MINUTE)
    np.testing.assert_allclose(inc, [1.0, 1.0, 1.0])
    assert cov.tolist() == [60 * MINUTE, 30 * MINUTE, 60 * MINUTE] and resets.sum() == 0
    # Nothing is known before the first point, nor after the horizon.
    inc, cov, _ = counter_increase(t + 30 * MINUTE, v, s, edges, horizon=240 * MINUTE)
    assert cov.tolist() == [30 * MINUTE, 60 * MINUTE, 60 * MINUTE]
    inc, cov, _ = counter_increase(t, v, s, edges, horizon=170 * MINUTE)
    assert cov.tolist() == [60 * MINUTE, 60 * MINUTE, 50 * MINUTE]
    assert counter_increase([], [], [], edges, 0)[1].tolist() == [0, 0, 0]


def test_time_in_state_is_stepped_and_split_per_period():
    t = np.array([0, 7, 18, 31], np.int64) * HOUR
    v = np.array([1.0, 0.0, 1.0, 0.0])
    s = np.array([GOOD, GOOD, GOOD, GOOD], np.uint32)
    on, known = time_in_state(t, v, s, np.array([0, 24, 48], np.int64) * HOUR, horizon=48 * HOUR)
    assert (on / HOUR).tolist() == [13.0, 7.0] and (known / HOUR).tolist() == [24.0, 24.0]
    s[2] = BAD  # 18:00-31:00 unknown
    on, known = time_in_state(t, v, s, np.array([0, 24, 48], np.int64) * HOUR, horizon=40 * HOUR)
    assert (on / HOUR).tolist() == [7.0, 0.0] and (known / HOUR).tolist() == [18.0, 9.0]


def test_transitions_count_rising_edges_across_bad_points_only_from_another_value():
    t = np.arange(8, dtype=np.int64) * HOUR
    v = np.array([0, 1, 1, 0, np.nan, 1, 0, 1], np.float64)
    s = np.array([GOOD, GOOD, GOOD, GOOD, BAD, GOOD, GOOD, GOOD], np.uint32)
    assert transitions(t, v, s, np.array([0, 4, 8], np.int64) * HOUR, into=1.0).tolist() == [1, 2]
    assert transitions(t, v, s, np.array([0, 8], np.int64) * HOUR, into=0.0).tolist() == [2]


def test_period_is_widened_to_whole_local_days_with_daylight_saving():
    p = period("Europe/Paris", "2026-10-24T13:00", "2026-10-25T08:00")  # the clocks go back on the 25th
    assert [d.isoformat() for d in p.days] == ["2026-10-24", "2026-10-25"]
    assert (np.diff(p.day_edges) // HOUR).tolist() == [24, 25]
    assert len(p.hour_edges) - 1 == 49
    assert p.hour_label(int(p.hour_edges[0])) == "2026-10-24T00:00:00+02:00"
    assert p.hour_label(int(p.hour_edges[-2])) == "2026-10-25T23:00:00+01:00"
    with pytest.raises(ValueError, match="time zone"):
        timezone_of("Mars/Olympus")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("28/11/2026", timezone.utc)
    with pytest.raises(ValueError, match="empty range"):
        period("UTC", "2026-11-28", "2026-11-28")


# -- the steps of an export, on points given directly --------------------------------------------

def good(*points):
    """(t, v, s) of Good points given as (time, value)."""
    return (np.array([p[0] for p in points], np.int64), np.array([p[1] for p in points], np.float64),
            np.full(len(points), GOOD, np.uint32))


def test_commune_figures_count_only_the_cabinets_known_all_day_and_all_hour():
    p = period("UTC", "2026-11-28", "2026-11-29")
    a = Site("LC-1", "Ahuy", "lighting_cabinet", 47.0, 5.0)
    b = Site("LC-2", "Ahuy", "lighting_cabinet", 47.0, 5.0)
    # LC-1: lamps on 18:00-24:00, known all day; 1 kWh an hour all day. LC-2: lamps known from
    # 12:00 only (6 h on), no energy counter.
    one = cabinet(a, good(*((at(D1, h), float(h)) for h in range(25))), good((at(D1, 0), 0.0), (at(D1, 18), 1.0)),
                  p, horizon=D2)
    two = cabinet(b, None, good((at(D1, 12), 0.0), (at(D1, 18), 1.0)), p, horizon=D2)
    assert (one.rows[0]["lighting_hours"], two.rows[0]["lighting_hours"]) == (6.0, 6.0)
    [day] = lighting_commune_rows([one, two], p)
    assert (day["cabinets"], day["lighting_cabinets_reporting"], day["lighting_hours_total"]) == (2, 1, 6.0)
    assert (day["energy_cabinets_reporting"], day["energy_kwh"]) == (1, 24.0)
    hours = energy_hourly_rows([one, two], p)
    assert len(hours) == 24 and {(h["cabinets"], h["cabinets_reporting"], h["energy_kwh"]) for h in hours} == {(2, 1, 1.0)}


def test_a_junction_detector_with_no_points_is_not_known_and_not_reporting():
    p = period("UTC", "2026-11-28", "2026-11-29")
    site = Site("J-1", "Dijon", "traffic_junction", 47.0, 5.0, {"a_count": "t/a", "b_count": "t/b"})
    [row] = junction_rows(site, {"a_count": good((at(D1, 0), 10.0), (D2, 110.0)), "b_count": None},
                          ("a_count", "b_count", "c_count"), p, horizon=D2)
    assert (row["a_count"], row["b_count"], row["c_count"]) == (100, None, None)
    assert (row["detectors"], row["detectors_reporting"], row["hours_covered"]) == (2, 1, 0.0)


# -- the devices and the store -----------------------------------------------------------------

def test_devices_are_recognised_by_their_points_and_vehicles_are_left_out(config):
    sites = sites_from_config(config)
    assert [s.device for s in sites.cabinets] == ["LC-A-1", "LC-A-2", "LC-D-1"]
    assert [s.device for s in sites.bollards] == ["B-D-1"] and sites.bollards[0].down_value == 0.0
    assert [s.device for s in sites.junctions] == ["J-D-1"]
    assert sites.detectors == ("main_in_count", "main_out_count", "side_in_count", "side_out_count")
    assert set(sites.bollards[0].tags) == {"vehicle", "position"}  # never the access class nor decision
    assert sites.centres["Ahuy"] == pytest.approx((47.370, 5.023))


def test_recorded_until_is_the_latest_stored_time(data_dir, tmp_path):
    assert recorded_until(data_dir / "history.sqlite") == at(D2, 23)
    with HistoryStore(tmp_path / "empty.sqlite", ["a/b/c/d"]):
        pass
    assert recorded_until(tmp_path / "empty.sqlite") is None
    # Rows not merged yet (in staging) count too.
    store = HistoryStore(tmp_path / "s.sqlite", ["a/b/c/d"], merge_rows=10**9, merge_seconds=1e9)
    try:
        store.write(StoredBatch(np.array([0]), np.array([1.0]), np.array([GOOD], np.uint32), np.array([D3 + 5])))
        assert recorded_until(tmp_path / "s.sqlite") == D3 + 5
    finally:
        store.close()


# -- the figures -------------------------------------------------------------------------------

def test_hourly_energy_per_commune_says_how_many_cabinets_contributed(result):
    rows = by(result.energy_hourly, "hour_start", "commune")
    assert len(result.energy_hourly) == 48 * 2  # hours x communes (Ahuy, Dijon)

    def row(hh, commune="Ahuy", day="2026-11-28"):
        return rows[(f"{day}T{hh:02d}:00:00+00:00", commune)]

    assert row(16) == {"hour_start": "2026-11-28T16:00:00+00:00", "commune": "Ahuy", "cabinets": 2,
                       "cabinets_reporting": 2, "energy_kwh": 0.0, "counter_resets": 0}
    assert row(17)["energy_kwh"] == 0.5 and row(17)["cabinets_reporting"] == 2  # half of 17:30-18:30
    # A-2 lost from its last Good point (18:00) to 20:00: only A-1 (0.5 + 1.0) counts.
    assert (row(18)["cabinets_reporting"], row(18)["energy_kwh"]) == (1, 1.5)
    # A-1's counter reset between 19:00 and 19:30: 0.5 (from zero) + 0.5.
    assert (row(19)["cabinets_reporting"], row(19)["energy_kwh"], row(19)["counter_resets"]) == (1, 1.0, 1)
    assert (row(20)["cabinets_reporting"], row(20)["energy_kwh"]) == (2, 1.0)  # 53 -> 55 over 2 h
    assert (row(21)["cabinets_reporting"], row(21)["energy_kwh"]) == (2, 1.0)
    assert row(23, day="2026-11-29")["energy_kwh"] == 0.0
    # Dijon's only cabinet was never recorded: no figure, never a silent zero.
    assert row(18, "Dijon") == {"hour_start": "2026-11-28T18:00:00+00:00", "commune": "Dijon", "cabinets": 1,
                                "cabinets_reporting": 0, "energy_kwh": None, "counter_resets": 0}
    total = sum(r["energy_kwh"] or 0 for r in result.energy_hourly)
    assert total == pytest.approx(3.0 + 2.0)


def test_lighting_hours_per_cabinet_are_split_at_midnight(result):
    rows = by(result.lighting_cabinets, "date", "device")
    a1, a1_next = rows[("2026-11-28", "LC-A-1")], rows[("2026-11-29", "LC-A-1")]
    # on 00:00-07:00 and 18:00-24:00 = 13 h; the next day 00:00-07:00 (the rest of the night) + 18:00-24:00
    assert (a1["lighting_hours"], a1["lighting_hours_covered"]) == (13.0, 24.0)
    assert (a1_next["lighting_hours"], a1_next["lighting_hours_covered"]) == (13.0, 24.0)
    assert (a1["energy_kwh"], a1["energy_hours_covered"], a1["counter_resets"]) == (3.0, 24.0, 1)
    assert a1 == {"date": "2026-11-28", "commune": "Ahuy", "device": "LC-A-1", "lat": 47.369, "lon": 5.021,
                       "lighting_hours": 13.0, "lighting_hours_covered": 24.0, "energy_kwh": 3.0,
                       "energy_hours_covered": 24.0, "counter_resets": 1}
    a2, a2_next = rows[("2026-11-28", "LC-A-2")], rows[("2026-11-29", "LC-A-2")]
    assert (a2["lighting_hours"], a2["lighting_hours_covered"]) == (6.0, 6.0)  # known from 18:00
    assert (a2_next["lighting_hours"], a2_next["lighting_hours_covered"]) == (7.0, 24.0)
    assert (a2["energy_kwh"], a2["energy_hours_covered"]) == (2.0, 22.0)  # 18:00-20:00 not known
    d1 = rows[("2026-11-28", "LC-D-1")]
    assert (d1["lighting_hours"], d1["lighting_hours_covered"], d1["energy_kwh"]) == (None, 0.0, None)


def test_lighting_per_commune_counts_only_cabinets_known_all_day(result):
    rows = by(result.lighting_communes, "date", "commune")
    assert rows[("2026-11-28", "Ahuy")] == {
        "date": "2026-11-28", "commune": "Ahuy", "cabinets": 2, "lighting_cabinets_reporting": 1,
        "lighting_hours_total": 13.0, "lighting_hours_mean": 13.0, "energy_cabinets_reporting": 1, "energy_kwh": 3.0}
    assert rows[("2026-11-29", "Ahuy")] == {
        "date": "2026-11-29", "commune": "Ahuy", "cabinets": 2, "lighting_cabinets_reporting": 2,
        "lighting_hours_total": 20.0, "lighting_hours_mean": 10.0, "energy_cabinets_reporting": 2, "energy_kwh": 0.0}
    assert rows[("2026-11-28", "Dijon")]["lighting_hours_total"] is None


def test_bollard_passages_and_openings_per_day(result):
    rows = by(result.bollards, "date")
    # 08:10, 09:00, 13:00 (after the communication loss) and 23:59:59 (the vehicle leaves the next day)
    assert rows["2026-11-28"] == {"date": "2026-11-28", "commune": "Dijon", "device": "B-D-1", "lat": 47.324,
                                  "lon": 5.03, "passages": 4, "openings": 1, "hours_covered": 15.0}
    assert (rows["2026-11-29"]["passages"], rows["2026-11-29"]["openings"], rows["2026-11-29"]["hours_covered"]) \
        == (0, 0, 24.0)


def test_junction_counts_per_day_with_a_wrap_and_a_count_straddling_midnight(result):
    rows = by(result.junctions, "date")
    day1, day2 = rows["2026-11-28"], rows["2026-11-29"]
    assert (day1["main_in_count"], day2["main_in_count"]) == (1000, 1200)  # 600 + 400; 100 after the wrap + 1100
    assert (day1["main_out_count"], day2["main_out_count"]) == (95, 5)  # 100 over 06:00-01:00, split 18/19
    assert day1["side_in_count"] is None and day1["side_out_count"] is None
    assert (day1["detectors"], day1["detectors_reporting"], day1["hours_covered"]) == (4, 1, 0.0)
    assert day2["detectors_reporting"] == 2
    assert result.junction_columns[-4:] == ("main_in_count", "main_out_count", "side_in_count", "side_out_count")


def test_nothing_is_known_after_the_store_last_recorded(data_dir, config):
    with HistoryStore(data_dir / "history.sqlite", readonly=True) as store:
        res = compute(store, config, period())  # horizon: the last stored point, day 2 at 23:00
    a1 = by(res.lighting_cabinets, "date", "device")[("2026-11-29", "LC-A-1")]
    assert (a1["lighting_hours"], a1["lighting_hours_covered"]) == (12.0, 23.0)
    hourly = by(res.energy_hourly, "hour_start", "commune")
    assert hourly[("2026-11-29T22:00:00+00:00", "Ahuy")]["cabinets_reporting"] == 2
    assert hourly[("2026-11-29T23:00:00+00:00", "Ahuy")]["cabinets_reporting"] == 0
    assert res.horizon == at(D2, 23)


def test_local_days_in_paris(data_dir, config):
    with HistoryStore(data_dir / "history.sqlite", readonly=True) as store:
        res = compute(store, config, period("Europe/Paris", "2026-11-28", "2026-11-29"), horizon=D3)
    # The local 28th is 23:00Z on the 27th to 23:00Z on the 28th. A-1's lamps: known from its first
    # point (00:00Z), on until 07:00Z and from 18:00Z: 7 + 5 h on, 23 h known.
    a1 = by(res.lighting_cabinets, "date", "device")[("2026-11-28", "LC-A-1")]
    assert (a1["lighting_hours"], a1["lighting_hours_covered"]) == (12.0, 23.0)
    assert res.energy_hourly[0]["hour_start"] == "2026-11-28T00:00:00+01:00"


# -- the files ---------------------------------------------------------------------------------

def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames), list(r)


def test_files_csv_and_geojson(data_dir, config, tmp_path):
    out = tmp_path / "out"
    written = export(data_dir, config, period(), out, horizon=D3)
    assert written == {FILES["energy_hourly"]: 96, FILES["lighting_communes"]: 4, FILES["lighting_cabinets"]: 6,
                       FILES["bollards"]: 2, FILES["junctions"]: 2, FILES["communes_geo"]: 2,
                       FILES["cabinets_geo"]: 3, FILES["bollards_geo"]: 1, FILES["junctions_geo"]: 1}
    for key, columns in (("energy_hourly", ENERGY_HOURLY_COLUMNS), ("lighting_communes", LIGHTING_COMMUNE_COLUMNS),
                         ("lighting_cabinets", LIGHTING_CABINET_COLUMNS), ("bollards", BOLLARD_COLUMNS)):
        header, rows = read_csv(out / FILES[key])
        assert tuple(header) == columns
    header, rows = read_csv(out / FILES["energy_hourly"])
    dijon = [r for r in rows if r["commune"] == "Dijon"]
    assert dijon[0]["energy_kwh"] == "" and dijon[0]["cabinets_reporting"] == "0"  # unknown: empty
    assert [r["hour_start"] for r in rows[:3]] == ["2026-11-28T00:00:00+00:00"] * 2 + ["2026-11-28T01:00:00+00:00"]
    header, rows = read_csv(out / FILES["lighting_cabinets"])
    assert [(r["date"], r["device"]) for r in rows][:3] == [("2026-11-28", "LC-A-1"), ("2026-11-28", "LC-A-2"),
                                                            ("2026-11-28", "LC-D-1")]
    assert rows[0]["lighting_hours"] == "13.0"

    for key in ("communes_geo", "cabinets_geo", "bollards_geo", "junctions_geo"):
        doc = json.loads((out / FILES[key]).read_text(encoding="utf-8"))
        assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: WGS 84, no crs member
        for f in doc["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] == "Point"
            lon, lat = f["geometry"]["coordinates"]
            assert 4.9 < lon < 5.2 and 47.2 < lat < 47.4  # [lon, lat], not [lat, lon]
            assert [d["date"] for d in f["properties"]["daily"]] == ["2026-11-28", "2026-11-29"]
    cabinets = json.loads((out / FILES["cabinets_geo"]).read_text())
    a1 = next(f for f in cabinets["features"] if f["id"] == "LC-A-1")
    assert a1["geometry"]["coordinates"] == [5.021, 47.369]
    assert a1["properties"]["device"] == "LC-A-1" and a1["properties"]["commune"] == "Ahuy"
    assert a1["properties"]["lighting_hours_total"] == 26.0 and a1["properties"]["energy_kwh_total"] == 3.0
    assert a1["properties"]["daily"][0] == {"date": "2026-11-28", "lighting_hours": 13.0,
                                            "lighting_hours_covered": 24.0, "energy_kwh": 3.0,
                                            "energy_hours_covered": 24.0, "counter_resets": 1}
    d1 = next(f for f in cabinets["features"] if f["id"] == "LC-D-1")
    assert d1["properties"]["daily"][0]["lighting_hours"] is None  # null, not 0
    communes = json.loads((out / FILES["communes_geo"]).read_text())
    ahuy = next(f for f in communes["features"] if f["id"] == "Ahuy")
    assert ahuy["geometry"]["coordinates"] == [5.023, 47.37]
    assert ahuy["properties"]["daily"][1]["lighting_hours_mean"] == 10.0

    # No personal data: no access class, no access decision, no crew vehicle in any file.
    everything = "".join(p.read_text(encoding="utf-8") for p in out.iterdir())
    for word in ("resident", "emergency", "granted", "access_class", "V-1", "fleet"):
        assert word not in everything


def test_command_line(data_dir, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code = scada_main(["opendata", "--data", str(data_dir), "--config", str(tmp_path / "config"),
                       "--from", "2026-11-28", "--to", "2026-11-29", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    _, rows = read_csv(out / FILES["lighting_communes"])
    assert [(r["date"], r["commune"]) for r in rows] == [("2026-11-28", "Ahuy"), ("2026-11-28", "Dijon")]
    assert "energy_hourly_communes.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="history"):
        scada_main(["opendata", "--data", str(tmp_path / "nowhere"), "--config", str(tmp_path / "config"),
                    "--from", "2026-11-28", "--to", "2026-11-29", "--out", str(out)])
    with pytest.raises(SystemExit, match="ISO 8601"):
        scada_main(["opendata", "--data", str(data_dir), "--config", str(tmp_path / "config"),
                    "--from", "yesterday", "--out", str(out)])
