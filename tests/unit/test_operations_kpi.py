"""Contract KPIs on literal arrays whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scada import status as st
from scada.operations import kpi
from scada.operations.model import Delays, EnergySettings, OrderState, ServiceDef, WorkOrder
from scada.opendata import time_in_state

NS = kpi.NS
H = 3600 * NS
DAY = 24 * H
T0 = 1_793_491_200 * NS  # 2026-11-01T00:00Z
END = T0 + 30 * DAY  # the month of November
GOOD, BAD = st.GOOD, st.BAD_COMMUNICATION_ERROR


def arr(*points):
    """(t, v, s) arrays from (time, value[, status]) tuples."""
    t = np.array([p[0] for p in points], np.int64)
    v = np.array([p[1] for p in points], np.float64)
    s = np.array([p[2] if len(p) > 2 else GOOD for p in points], np.uint32)
    return t, v, s


# -- intervals -----------------------------------------------------------------------------------


def test_measure_without_subtracts_the_union_of_b():
    # A: [0, 10) and [5, 20) (union [0, 20)); B: [2, 4) and [3, 6) (union [2, 6)) and [30, 40)
    got = kpi.measure_without(np.array([0, 5]), np.array([10, 20]), np.array([2, 3, 30]), np.array([4, 6, 40]))
    assert got == 20 - 4
    assert kpi.measure_without(np.array([0]), np.array([10]), np.zeros(0), np.zeros(0)) == 10
    assert kpi.measure_without(np.zeros(0), np.zeros(0), np.array([0]), np.array([5])) == 0


def test_fault_overlapping_the_months_end_is_clipped_to_it():
    # lamps_failed active from 2 h before the end, never cleared; earth_leakage active before the
    # month started, cleared on day 2; a CLEAR without its ACTIVATE (before the month) is ignored.
    times = np.array([T0 + 2 * DAY, T0 + 3 * DAY, END - 2 * H])
    alarms = np.array(["earth_leakage", "door_open", "lamps_failed"], object)
    events = np.array(["CLEAR", "CLEAR", "ACTIVATE"], object)
    starts, ends = kpi.fault_intervals(times, alarms, events, T0, END, active_at_start=["earth_leakage"])
    assert sorted(zip(starts.tolist(), ends.tolist())) == [(T0, T0 + 2 * DAY), (END - 2 * H, END)]


# -- availability --------------------------------------------------------------------------------


def test_device_offline_half_the_month():
    # online from the month's start (the point before it), offline at mid-month, no fault
    state = arr((T0 - DAY, 1.0), (T0 + 15 * DAY, 2.0))
    no_fault = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    a = kpi.availability_of(state, no_fault, T0, END, END)
    assert a.known_ns == 30 * DAY and a.online_ns == 15 * DAY == a.available_ns
    assert a.share == pytest.approx(0.5)
    # the same figures as opendata's time_in_state
    on, known = time_in_state(*state, np.array([T0, END]), END)
    assert (int(on[0]), int(known[0])) == (a.online_ns, a.known_ns)


def test_fault_while_online_counts_once_and_offline_time_is_not_counted_twice():
    # online days 0-10, offline 10-12, online 12-30; a fault from day 9 to day 14 overlaps the
    # offline time: unavailable 9-14 (5 days), available 25 of 30 days.
    state = arr((T0, 1.0), (T0 + 10 * DAY, 2.0), (T0 + 12 * DAY, 1.0))
    faults = (np.array([T0 + 9 * DAY]), np.array([T0 + 14 * DAY]))
    a = kpi.availability_of(state, faults, T0, END, END)
    assert a.online_ns == 28 * DAY
    assert a.available_ns == 25 * DAY
    assert a.share == pytest.approx(25 / 30)


def test_unknown_time_is_left_out_not_counted_as_down():
    # the store recorded until day 20 only (the horizon): 20 days known, all online
    state = arr((T0, 1.0))
    a = kpi.availability_of(state, (np.zeros(0, np.int64),) * 2, T0, END, T0 + 20 * DAY)
    assert a.known_ns == 20 * DAY and a.share == 1.0
    # a bad status is not known either
    state = arr((T0, 1.0), (T0 + 10 * DAY, 1.0, BAD), (T0 + 11 * DAY, 1.0))
    a = kpi.availability_of(state, (np.zeros(0, np.int64),) * 2, T0, END, END)
    assert a.known_ns == 29 * DAY == a.available_ns
    # no point at all: nothing known, the share is not a number
    assert math.isnan(kpi.availability_of(arr(), (np.zeros(0, np.int64),) * 2, T0, END, END).share)


def test_availability_rows_per_class_and_commune_against_targets():
    figures = [kpi.Availability(10, 10, 10), kpi.Availability(10, 10, 5), kpi.Availability(10, 10, 10)]
    devices = [("LC-1", "lighting", "Ahuy"), ("LC-2", "lighting", "Dijon"), ("J-1", "traffic", "Dijon")]
    classes, communes = kpi.availability_rows(devices, figures, {"lighting": 0.9, "traffic": 0.99})
    by_class = {r["class"]: r for r in classes}
    assert by_class["lighting"]["availability"] == 0.75 and by_class["lighting"]["met"] is False
    assert by_class["traffic"]["availability"] == 1.0 and by_class["traffic"]["met"] is True
    assert {(r["class"], r["commune"]): r["availability"] for r in communes} == {
        ("lighting", "Ahuy"): 1.0,
        ("lighting", "Dijon"): 0.5,
        ("traffic", "Dijon"): 1.0,
    }


# -- energy --------------------------------------------------------------------------------------


def test_energy_against_baseline_with_a_counter_reset_and_a_silent_cabinet():
    from scada.opendata import counter_increase

    edges = np.array([T0, END])
    # cabinet 1: 100 -> 150 kWh over 10 days, reset (meter replaced) to 0, then 0 -> 60 by day 30:
    # 50 + 60 = 110 kWh over 30 days known
    c1 = arr((T0, 100.0), (T0 + 10 * DAY, 150.0), (T0 + 10 * DAY + H, 0.0), (END, 60.0))
    # cabinet 2: known for 15 days only (communication lost after), 0 -> 90 kWh
    c2 = arr((T0, 0.0), (T0 + 15 * DAY, 90.0), (T0 + 15 * DAY + 1, 90.0, BAD))
    incs = [counter_increase(*c, edges, END) for c in (c1, c2)]
    inc = np.array([i[0][0] for i in incs])
    cov = np.array([i[1][0] for i in incs])
    resets = np.array([i[2][0] for i in incs])
    assert inc.tolist() == pytest.approx([110.0, 90.0], abs=1e-6) and resets.tolist() == [1, 0]
    settings = EnergySettings(baseline_kwh_per_day=10.0, cabinets={"LC-2": 20.0}, savings_target=0.65)
    base = np.array([kpi.baseline_per_day(settings, d, c) for d, c in (("LC-1", "Ahuy"), ("LC-2", "Ahuy"))])
    assert base.tolist() == [10.0, 20.0]
    cabinets, communes = kpi.energy_table(
        [("LC-1", "Ahuy"), ("LC-2", "Ahuy")], inc, cov, resets, base, END - T0, settings.savings_target
    )
    one, two = cabinets
    # LC-1: 110 against 30 days x 10 = 300: saved 63.3 %, short of 65 %
    assert one["baseline_kwh"] == 300.0 and one["saving"] == pytest.approx(1 - 110 / 300, abs=1e-4)
    assert one["met"] is False and one["counter_resets"] == 1
    # LC-2: half the month known: 90 against 15 x 20 = 300 (not 600): 70 % saved, met
    assert two["coverage"] == pytest.approx(0.5, abs=1e-3) and two["baseline_kwh"] == pytest.approx(300.0, abs=0.01)
    assert two["saving"] == pytest.approx(0.7, abs=1e-4) and two["met"] is True
    (ahuy,) = communes
    assert ahuy["energy_kwh"] == pytest.approx(200.0) and ahuy["baseline_kwh"] == pytest.approx(600.0, abs=0.01)
    assert ahuy["saving"] == pytest.approx(2 / 3, abs=1e-4) and ahuy["met"] is True
    assert ahuy["cabinets"] == ahuy["cabinets_reporting"] == 2


def test_energy_without_baseline_or_data_has_no_saving():
    cabinets, communes = kpi.energy_table(
        [("LC-1", "Ahuy")], np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([10.0]), DAY, 0.65
    )
    assert cabinets[0]["energy_kwh"] is None and cabinets[0]["saving"] is None and cabinets[0]["met"] is None
    assert communes[0]["cabinets_reporting"] == 0
    assert kpi.baseline_per_day(EnergySettings(communes={"Ahuy": 42.0}), "LC-9", "Ahuy") == 42.0
    assert kpi.baseline_per_day(EnergySettings(), "LC-9", "Ahuy") == 0.0


# -- delays --------------------------------------------------------------------------------------

SERVICES = {
    "lighting_maintenance": ServiceDef(
        "lighting_maintenance", ("lighting",), {"medium": Delays(3600.0, 4 * 3600.0, 600.0)}
    ),
}


def order(n: int, origin: int, on_site: int = 0, repaired: int = 0, state=OrderState.CLOSED, **kw) -> WorkOrder:
    return WorkOrder(
        id=f"WO-{n:06d}",
        source="alarm",
        service=kw.get("service", "lighting_maintenance"),
        priority=kw.get("priority", "medium"),
        device="LC-1",
        commune="Ahuy",
        lat=47.0,
        lon=5.0,
        cause="lamps_failed",
        description="",
        state=state,
        origin_ns=origin,
        created_ns=origin,
        created_by="server",
        on_site_ns=on_site,
        repaired_ns=repaired,
    )


def test_delays_within_and_over_the_contract():
    m = 60 * NS
    orders = [
        order(1, T0, on_site=T0 + 30 * m, repaired=T0 + 2 * H),  # 30 min, 2 h: within
        order(2, T0 + DAY, on_site=T0 + DAY + 50 * m, repaired=T0 + DAY + 3 * H),  # 50 min, 3 h: within
        order(3, T0 + 2 * DAY, on_site=T0 + 2 * DAY + 2 * H, repaired=T0 + 2 * DAY + 5 * H),  # over both
        # repaired without an "on site" answer: on site by the repair (40 min)
        order(4, T0 + 3 * DAY, repaired=T0 + 3 * DAY + 40 * m),
        # still not on site 2 h after the fault, when the journal is read: late, no delay yet
        order(5, END - 2 * H, state=OrderState.ASSIGNED),
        order(6, T0 + 4 * DAY, state=OrderState.CANCELLED),  # cancelled: no intervention, left out
        order(7, T0 - DAY, on_site=T0 - DAY + H, repaired=T0),  # the month before: left out
        # the fault at the month's end, the crew on site after it: judged by its whole delay
        order(8, END - 10 * m, on_site=END + 20 * m, repaired=END + H),
    ]
    delays = kpi.order_delays(orders, T0, END)
    assert delays["origin_ns"].size == 6
    rows = {r["kind"]: r for r in kpi.delay_table(delays, SERVICES, as_of=END)}
    on_site, repaired = rows["on_site"], rows["repaired"]
    # on site: 30, 50, 120, 40, 30 min measured; one over (120 > 60); order 5 pending past 60 min
    assert on_site["count"] == 5 and on_site["over"] == 1 and on_site["late_open"] == 1
    assert on_site["p50_s"] == 40 * 60 and on_site["contract_s"] == 3600.0
    assert on_site["p90_s"] == pytest.approx(np.percentile([30, 50, 120, 40, 30], 90) * 60, abs=0.1)
    assert on_site["within"] == pytest.approx(4 / 6, abs=1e-4) and on_site["met"] is False
    # repaired: 2 h, 3 h, 5 h, 40 min, 70 min: one over 4 h; order 5 pending 2 h < 4 h: not late yet
    assert repaired["count"] == 5 and repaired["over"] == 1 and repaired["late_open"] == 0
    assert repaired["within"] == pytest.approx(4 / 5, abs=1e-4)


def test_delays_without_a_contract_have_no_share():
    orders = [order(1, T0, on_site=T0 + H, repaired=T0 + 2 * H, service="snow_service", priority="low")]
    rows = kpi.delay_table(kpi.order_delays(orders, T0, END), SERVICES, as_of=END)
    assert {r["kind"] for r in rows} == {"on_site", "repaired"}
    assert all(r["contract_s"] is None and r["within"] is None and r["count"] == 1 for r in rows)
    assert kpi.delay_table(kpi.order_delays([], T0, END), SERVICES, as_of=END) == []
