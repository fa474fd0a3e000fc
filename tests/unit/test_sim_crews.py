"""The crews of the pure fleet model: work orders taken, driven to, repaired and answered, in
simulated time (a night of orders runs in milliseconds), and garbage order messages refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simulators.models import fleet as fl

PLACES = [(47.322, 5.041), (47.369, 5.021), (47.291, 5.007), (47.30, 5.14)]
SITES = [(47.3301, 5.0452), (47.36, 5.03), (47.295, 5.12), (47.31, 5.00)]


def order(vehicle: int, order_id: str, site=(47.33, 5.04), action=fl.ASSIGN, corr=None, kind="lighting"):
    return fl.Order(vehicle, action, order_id, corr or f"c-{order_id}", site[0], site[1], f"D-{order_id}", kind)


def km(a, b) -> float:
    return float(fl._km(np.array(a, float), np.array(b, float)))


def run(s: fl.FleetState, t_end: float, dt: float, inputs: dict[float, list[fl.Order]]):
    """Step to ``t_end``, giving each order at its time; every answer, and each step's state."""
    answers, states = [], []
    t = s.t
    while t < t_end:
        t = round(t + dt, 6)
        s = fl.step(s, t, inputs.get(t, []))
        answers.extend(s.answers)
        states.append(s)
    return answers, states


def test_a_night_of_orders_each_accepted_driven_to_repaired_and_answered_in_order():
    s = fl.create(PLACES, 6, t=0.0, seed=3)
    kinds = ["lighting", "traffic", "bollard", None]
    # Four orders to four vehicles through the night (12 h in 30 s steps), one at a time each.
    inputs = {
        1800.0: [order(0, "WO-1", SITES[0], kind=kinds[0])],
        3600.0: [order(1, "WO-2", SITES[1], kind=kinds[1]), order(2, "WO-3", SITES[2], kind=kinds[2])],
        7200.0: [order(3, "WO-4", SITES[3], kind=kinds[3])],
    }
    answers, states = run(s, 12 * 3600.0, 30.0, inputs)

    # Where each vehicle was when its order came (the step that took it): the drive starts there.
    before = {
        o.order_id: tuple(next(st for st in states if st.t == t).origin[o.vehicle]) for t, os in inputs.items() for o in os
    }
    by_order: dict[str, list[fl.Answer]] = {}
    for a in answers:
        by_order.setdefault(a.order_id, []).append(a)
    assert set(by_order) == {"WO-1", "WO-2", "WO-3", "WO-4"}
    for k, (oid, got) in enumerate(sorted(by_order.items())):
        assert [a.status for a in got] == [fl.ACCEPTED, fl.DEPARTED, fl.ARRIVED, fl.REPAIRED], oid
        assert {a.correlation_id for a in got} == {f"c-{oid}"}
        accepted, departed, arrived, repaired = (a.t for a in got)
        given = next(t for t, os in inputs.items() if any(o.order_id == oid for o in os))
        assert accepted == departed == given  # it leaves as soon as it accepts
        # The drive takes the direct distance at the road speed, the repair its kind's time.
        assert arrived - departed == pytest.approx(km(before[oid], SITES[k]) / fl.SPEED_KMH * 3600, rel=1e-6)
        assert repaired - arrived == pytest.approx(fl.REPAIR_S.get(kinds[k] or "", fl.DEFAULT_REPAIR_S))
        assert got[-1].device == f"D-{oid}"

    # While it holds its order, a crew is never on a random trip: en route, then on site, at the site.
    for k, oid in enumerate(["WO-1", "WO-2", "WO-3", "WO-4"]):
        got = by_order[oid]
        held = [st for st in states if got[0].t <= st.t < got[-1].t]
        assert held and all(st.jobs[k] is not None for st in held)
        assert all(st.status[k] == fl.EN_ROUTE for st in held if st.t < got[2].t)
        on_site = [st for st in held if st.t >= got[2].t + 30]
        assert on_site and all(st.status[k] == fl.ON_SITE for st in on_site)
        assert all((st.lat[k], st.lon[k]) == SITES[k] for st in on_site)
        after = next(st for st in states if st.t >= got[-1].t)
        assert after.jobs[k] is None and after.status[k] == fl.AVAILABLE

    # Never faster than the road speed, orders or not.
    for a, b in zip(states, states[1:], strict=False):
        moved = fl._km(np.stack([a.lat, a.lon], 1), np.stack([b.lat, b.lon], 1))
        assert (moved <= fl.SPEED_KMH * 30 / 3600 * 1.001).all()


def test_one_long_step_gives_every_answer_in_order_at_its_own_instant():
    s = fl.create(PLACES, 2, t=0.0, seed=1)
    s = fl.step(s, 10.0, [order(0, "WO-9", SITES[1], kind="bollard")])
    start = (float(s.lat[0]), float(s.lon[0]))
    assert [a.status for a in s.answers] == [fl.ACCEPTED, fl.DEPARTED]
    s = fl.step(s, 10.0 + 86400.0)  # a whole day at once
    arrive = 10.0 + km(start, SITES[1]) / fl.SPEED_KMH * 3600
    assert [(a.status, a.t) for a in s.answers] == [
        (fl.ARRIVED, pytest.approx(arrive)),
        (fl.REPAIRED, pytest.approx(arrive + fl.REPAIR_S["bollard"])),
    ]
    assert s.jobs[0] is None and s.status[0] == fl.AVAILABLE


def test_a_busy_crew_refuses_another_order_and_keeps_its_own():
    s = fl.create(PLACES, 2, t=0.0, seed=1)
    s = fl.step(s, 10.0, [order(0, "WO-1", SITES[0]), order(0, "WO-2", SITES[1])])
    assert [(a.order_id, a.status) for a in s.answers] == [
        ("WO-1", fl.ACCEPTED),
        ("WO-1", fl.DEPARTED),
        ("WO-2", fl.REFUSED),
    ]
    assert s.answers[2].reason == "busy with WO-1" and s.answers[2].correlation_id == "c-WO-2"
    s = fl.step(s, 20.0, [order(0, "WO-3", SITES[2])])
    assert [(a.order_id, a.status) for a in s.answers] == [("WO-3", fl.REFUSED)]
    assert s.jobs[0] is not None and s.jobs[0].order_id == "WO-1"
    # The other vehicle is free: it takes WO-2.
    s = fl.step(s, 30.0, [order(1, "WO-2", SITES[1])])
    assert [(a.vehicle, a.status) for a in s.answers] == [(1, fl.ACCEPTED), (1, fl.DEPARTED)]


def test_a_cancelled_order_stops_the_crew_where_it_is_and_frees_it():
    s = fl.create(PLACES, 1, t=0.0, seed=1)
    s = fl.step(s, 10.0, [order(0, "WO-1", SITES[2])])
    s = fl.step(s, 130.0)  # two minutes on the road
    where = (float(s.lat[0]), float(s.lon[0]))
    assert s.status[0] == fl.EN_ROUTE and s.speed_kmh[0] == fl.SPEED_KMH
    # A cancellation of another order changes nothing; of its own, it stops.
    s = fl.step(s, 130.0, [order(0, "WO-0", action=fl.CANCEL)])
    assert s.jobs[0] is not None and s.answers == ()
    s = fl.step(s, 130.0, [order(0, "WO-1", action=fl.CANCEL)])
    assert s.jobs[0] is None and s.answers == () and s.status[0] == fl.AVAILABLE
    assert (float(s.lat[0]), float(s.lon[0])) == where
    s = fl.step(s, 140.0)
    assert (float(s.lat[0]), float(s.lon[0])) == where and s.speed_kmh[0] == 0  # not still driving there
    # Free again: it takes the next order.
    s = fl.step(s, 150.0, [order(0, "WO-2", SITES[0])])
    assert [a.status for a in s.answers] == [fl.ACCEPTED, fl.DEPARTED]


def test_the_same_order_again_takes_the_new_correlation_id_and_says_where_the_crew_is():
    s = fl.create(PLACES, 1, t=0.0, seed=1)
    s = fl.step(s, 10.0, [order(0, "WO-1", SITES[0], corr="first", kind="bollard")])
    arrive = s.jobs[0].arrive_at
    s = fl.step(s, arrive + 60.0)
    assert [a.status for a in s.answers] == [fl.ARRIVED]
    s = fl.step(s, arrive + 120.0, [order(0, "WO-1", SITES[0], corr="second")])
    assert [(a.status, a.correlation_id) for a in s.answers] == [
        (fl.ACCEPTED, "second"),
        (fl.DEPARTED, "second"),
        (fl.ARRIVED, "second"),
    ]
    s = fl.step(s, arrive + fl.REPAIR_S["bollard"])
    assert [(a.status, a.correlation_id) for a in s.answers] == [(fl.REPAIRED, "second")]


def test_parse_order_reads_the_contract():
    payload = {
        "order_id": "WO-000012",
        "correlation_id": "9f1c",
        "action": "assign",
        "service": "lighting_maintenance",
        "device": "LC-DIJ-001",
        "lat": 47.3,
        "lon": 5,
        "priority": "high",
        "description": "lamps failed",
        "ts": "2026-12-05T19:00:00Z",
    }
    o = fl.parse_order(4, json.dumps(payload).encode())
    assert o == fl.Order(4, fl.ASSIGN, "WO-000012", "9f1c", 47.3, 5.0, "LC-DIJ-001")
    cancel = fl.parse_order(1, json.dumps({"order_id": "WO-1", "correlation_id": "c", "action": "cancel"}))
    assert cancel.action == fl.CANCEL and math.isnan(cancel.lat)
    no_device = fl.parse_order(0, json.dumps({**payload, "device": None}))
    assert no_device.device is None and no_device.lat == 47.3


def test_an_unlocated_order_is_refused_as_the_crew_cannot_go():
    payload = {"order_id": "WO-7", "correlation_id": "c-7", "action": "assign", "device": None, "lat": None, "lon": None}
    o = fl.parse_order(0, json.dumps(payload))
    s = fl.step(fl.create(PLACES, 1, t=0.0), 10.0, [o])
    assert [(a.status, a.reason) for a in s.answers] == [(fl.REFUSED, "no site to go to (lat and lon are null)")]
    assert s.jobs[0] is None


GOOD = {"order_id": "WO-1", "correlation_id": "c-1", "action": "assign", "device": "LC-1", "lat": 47.3, "lon": 5.0}


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"assign"', "JSON object"),
        (json.dumps({**GOOD, "order_id": ""}), "order_id must be a non-empty string"),
        (json.dumps({**GOOD, "order_id": 12}), "order_id must be a non-empty string"),
        (json.dumps({**GOOD, "correlation_id": None}), "correlation_id must be"),
        (json.dumps({**GOOD, "correlation_id": "x" * 201}), "correlation_id must be"),
        (json.dumps({**GOOD, "action": "explode"}), "action must be"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "action"}), "action must be"),
        (json.dumps({**GOOD, "device": 7}), "device must be"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "lat"}), "needs lat"),
        (json.dumps({**GOOD, "lat": "47.3"}), "needs lat"),
        (json.dumps({**GOOD, "lat": True}), "needs lat"),
        (json.dumps({**GOOD, "lat": 91}), "needs lat"),
        (json.dumps({**GOOD, "lon": None}), "needs lon"),
        (json.dumps({**GOOD, "lat": None}), "needs lat"),
        (b'{"order_id": "WO-1", "correlation_id": "c", "action": "assign", "lat": NaN, "lon": 5}', "needs lat"),
        (b'{"order_id": "WO-1", "correlation_id": "c", "action": "assign", "lat": 47, "lon": Infinity}', "needs lon"),
    ],
)
def test_garbage_orders_are_refused_with_the_reason(payload, message):
    with pytest.raises(ValueError, match=message):
        fl.parse_order(0, payload)
