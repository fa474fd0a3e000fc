"""The dispatch decision: which crew to send to an order, with 205 vehicles and 1,000 open orders.

    .venv/bin/python bench/bench_dispatch.py [--vehicles 205] [--orders 1000] [--decisions 2000] [--reps 5]

The fleet: ``--vehicles`` crew vehicles (shipped crew_vehicle type) spread over the Dijon
metropolis, in a real configuration and TagDB, about 60 % available, the others en route or on
site; three services with overlapping crews' skills. ``--orders`` open orders at random places
and services; 40 % of the crews hold one each (a crew holds one order at a time), the others
wait. ``--scales 1,5`` runs it again with five times the fleet and the orders (DESIGN.md's
headroom: a city five times larger).

Timed, each a median over ``--decisions`` decisions for random open orders (repeated ``--reps``
times, the median of the runs' medians):

* ``CrewBoard.propose(order, 3)``: the board's decision (skill mask, availability from the tag
  columns, great-circle distances, partial sort), the busy set as the orders service last gave it;
* the same after ``CrewBoard.busy()`` is given the crews of the 1,000 open orders again (what the
  orders service does after every assignment): the decision as the service pays for it;
* the baseline beside it, in the same run: a plain-Python loop over the vehicles (skills, tag
  values read one by one, busy set, ``math`` haversine, sort), which must give the same crews;
* a proposal for every open order in a row (what a dispatcher's "propose all" would cost),
  median of ``--reps`` sweeps.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import Report, load_config, med, write_inventory  # noqa: E402
from scada import status as st  # noqa: E402
from scada.operations.crews import CrewBoard  # noqa: E402
from scada.operations.model import (  # noqa: E402
    CrewDef,
    DispatchSettings,
    OperationsConfig,
    OrderState,
    ServiceDef,
    WorkOrder,
)
from scada.tagdb import TagDB  # noqa: E402

SERVICES = ("lighting_maintenance", "traffic_control", "security")
AREA = ((47.26, 47.38), (4.96, 5.14))  # the metropolis, lat and lon bounds
EARTH_RADIUS_M = 6_371_008.8


def build(n_vehicles: int, n_orders: int, folder: Path, seed: int = 7):
    rng = random.Random(seed)
    names = [f"V-{i:03d}" for i in range(1, n_vehicles + 1)]
    write_inventory(
        folder,
        "vehicles.csv",
        "name,type,commune,lat,lon,endpoint",
        [f"{v},crew_vehicle,Dijon,47.32,5.04,127.0.0.1:1883" for v in names],
    )
    config = load_config(folder)
    skills = [(SERVICES[i % 3],) if i % 4 else (SERVICES[i % 3], SERVICES[(i + 1) % 3]) for i in range(n_vehicles)]
    ops = OperationsConfig(
        services={s: ServiceDef(s, (), {}) for s in SERVICES},
        crews={v: CrewDef(v, k) for v, k in zip(names, skills, strict=True)},
        dispatch=DispatchSettings(speed_kmh=30.0),
    )
    object.__setattr__(config, "operations", ops)  # Config.operations: operations.yaml's objects
    tagdb = TagDB(*config.tag_table())
    points = [p.name for p in config.types["crew_vehicle"].points]
    ids, values = [], []
    for v in names:
        d = config.device(v)
        lat, lon = rng.uniform(*AREA[0]), rng.uniform(*AREA[1])
        status = 0 if rng.random() < 0.6 else rng.choice((1, 2))
        for p, x in (("lat", lat), ("lon", lon), ("status", status), ("speed", 0.0), ("heading", 0.0)):
            ids.append(d.first_tag_id + points.index(p))
            values.append(float(x))
    tagdb.update(np.array(ids), np.array(values), st.GOOD, time.time_ns())
    # A crew holds one order at a time: 40 % of the fleet on an order, the other orders wait.
    holding = rng.sample(names, int(0.4 * n_vehicles))
    orders = []
    for k in range(n_orders):
        crew = holding[k] if k < len(holding) else None
        orders.append(
            WorkOrder(
                id=f"WO-{k:06d}",
                source="alarm",
                service=rng.choice(SERVICES),
                priority="medium",
                device=None,
                commune="Dijon",
                lat=rng.uniform(*AREA[0]),
                lon=rng.uniform(*AREA[1]),
                cause="bench",
                description="",
                state=OrderState.ASSIGNED if crew else OrderState.NEW,
                origin_ns=0,
                created_ns=0,
                created_by="server",
                crew=crew,
            )
        )
    board = CrewBoard(config, tagdb, {}, time.time_ns)
    return config, tagdb, board, orders, skills, points


def baseline(config, tagdb: TagDB, ops: OperationsConfig, points, busy: set[str], order: WorkOrder, limit: int = 3):
    """The decision written the plain way: one vehicle at a time."""
    i_lat, i_lon, i_status = points.index("lat"), points.index("lon"), points.index("status")
    speed = ops.dispatch.speed_kmh / 3.6
    found = []
    assert order.lat is not None and order.lon is not None
    p0 = math.radians(order.lat)
    for crew in ops.crews.values():
        if order.service not in crew.skills or crew.vehicle in busy:
            continue
        first = config.device(crew.vehicle).first_tag_id
        s = first + i_status
        if int(tagdb.status[s]) != st.GOOD or float(tagdb.value[s]) != 0.0:
            continue
        if int(tagdb.status[first + i_lat]) != st.GOOD or int(tagdb.status[first + i_lon]) != st.GOOD:
            continue
        lat, lon = float(tagdb.value[first + i_lat]), float(tagdb.value[first + i_lon])
        p = math.radians(lat)
        h = math.sin((p - p0) / 2) ** 2 + math.cos(p) * math.cos(p0) * math.sin(math.radians(lon - order.lon) / 2) ** 2
        found.append((2 * EARTH_RADIUS_M * math.asin(math.sqrt(h)), crew.vehicle))
    found.sort()
    return [(v, d / speed) for d, v in found[:limit]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vehicles", type=int, default=205)
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scales", default="1,5", help="multiples of --vehicles and --orders to run (default 1,5)")
    args = ap.parse_args()
    report = Report()
    for scale in (int(x) for x in args.scales.split(",")):
        run(report, args.vehicles * scale, args.orders * scale, args.decisions, args.reps)
    report.note(
        f"medians over {args.decisions} decisions x {args.reps} runs; the baseline gives the same crews "
        "(checked on 200 decisions)"
    )
    report.print_table()
    return 0


def run(report: Report, n_vehicles: int, n_orders: int, decisions: int, reps: int) -> None:
    """One fleet: the decision timed three ways, into ``report``."""
    with tempfile.TemporaryDirectory() as tmp:
        config, tagdb, board, orders, _skills, points = build(n_vehicles, n_orders, Path(tmp) / "cfg")
        ops = config.operations
        held = {o.crew for o in orders if o.crew}
        board.busy(held)
        rng = random.Random(11)
        picks = [rng.choice(orders) for _ in range(decisions)]

        # The same crews both ways (the baseline is the board's specification, written plainly).
        for o in picks[:200]:
            ours, theirs = board.propose(o), baseline(config, tagdb, ops, points, held, o)
            assert [v for v, _ in ours] == [v for v, _ in theirs], (o.id, ours, theirs)
            assert np.allclose([e for _, e in ours], [e for _, e in theirs], rtol=1e-9)

        tails: dict[str, float] = {}

        def per_decision(fn, name: str) -> float:
            """The median of the runs' medians; the 99th percentile of every decision in ``tails``."""
            runs, every = [], []
            for _ in range(reps):
                times = []
                for o in picks:
                    t0 = time.perf_counter()
                    fn(o)
                    times.append(time.perf_counter() - t0)
                runs.append(med(times))
                every += times
            tails[name] = float(np.percentile(every, 99))
            return med(runs)

        def with_busy(o: WorkOrder) -> None:
            board.busy({x.crew for x in orders if x.crew})
            board.propose(o)

        # Interleaved runs would be fairer on a noisy machine; each figure is a median of medians.
        t_propose = per_decision(board.propose, "board")
        t_busy = per_decision(with_busy, "busy")
        t_base = per_decision(lambda o: baseline(config, tagdb, ops, points, held, o), "baseline")
        sweeps = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for o in orders:
                board.propose(o)
            sweeps.append(time.perf_counter() - t0)
        sweep = med(sweeps)
        available = int(board.available().sum())

    report.section(f"{n_vehicles} vehicles ({available} free to take an order), {n_orders} open orders")
    base = f"baseline {t_base * 1e6:.1f} µs"
    report.add(
        "propose(order, 3): the board's decision", f"{t_propose * 1e6:.1f} µs", base, f"{t_base / t_propose:.2f}x"
    )
    report.add("busy(crews of the open orders) + propose", f"{t_busy * 1e6:.1f} µs", base, f"{t_base / t_busy:.2f}x")
    report.add("plain-Python loop over the vehicles (baseline)", f"{t_base * 1e6:.1f} µs")
    report.add(
        "99th percentile: board / baseline (a loaded machine's preemptions)",
        f"{tails['board'] * 1e6:.0f} µs",
        f"baseline {tails['baseline'] * 1e6:.0f} µs",
    )
    report.add(f"a proposal for each of the {n_orders} open orders", f"{sweep * 1e3:.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
