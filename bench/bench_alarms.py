"""Alarm engine evaluation time over change batches, against the bare numpy work it implies.

    .venv/bin/python bench/bench_alarms.py [--tags 1000000] [--reps 7]

A city of ``--tags`` tags (shipped lighting_cabinet type, bench/citygen.py inventory) with
the shipped alarms.yaml: 7 alarms per cabinet (limits with deadband, states, an expression,
cause suppression by mains loss, comm loss), so 1 M tags give ~467k alarm instances.

Timed: ``AlarmEngine.process(batch)`` for the ChangeBatch the TagDB hands out, for
* every tag changed at once (a full batch over 1 M tags; target <= 10 ms), values staying
  normal (no transition: evaluation only);
* 10,000 changed tags at random devices (target <= 1 ms), no transition;
* 10,000 changed tags of which 1 % cross a limit (transitions: journaled in SQLite, so the
  figure includes the journal's transaction).
Beside each, the *bare numpy* work any evaluation must do for the same batch: gather the
changed values and compare them to one limit (the floor our engine is measured against).
Also: transitions per second end to end (evaluation + journal), target >= 5,000/s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import citygen  # noqa: E402
from bench.harness import ROOT, Clock, load_config, med, timed  # noqa: E402
from scada import status as st  # noqa: E402
from scada.alarms.engine import AlarmEngine  # noqa: E402
from scada.alarms.journal import Journal  # noqa: E402
from scada.tagdb import TagDB  # noqa: E402

NORMAL = {
    "mode": 0,
    "dim_setpoint": 100,
    "power": 1.2,
    "energy": 100.0,
    "mains_voltage": 230.0,
    "failed_lamps": 0,
    "lamp_count": 30,
    "temperature": 25.0,
    "dim_level": 100,
    "door_open": 0,
    "lamps_on": 1,
    "mains_fault": 0,
    "earth_leakage_trip": 0,
    "lamp_test": 0,
    "reset_trip": 0,
}


def build(n_tags: int, work: Path):
    (work / "cfg").mkdir()
    folder = citygen.write_config(n_tags, work / "cfg")
    shutil.copy(ROOT / "alarms.yaml", folder / "alarms.yaml")
    config = load_config(folder)
    tagdb = TagDB(*config.tag_table())
    journal = Journal(work / "journal.sqlite")
    clock = Clock()
    engine = AlarmEngine(config, tagdb, journal, clock)
    points = [p.name for p in config.types["lighting_cabinet"].points]
    base = np.array([NORMAL[p] for p in points], np.float64)
    n_dev = len(config.devices)
    values = np.tile(base, n_dev)
    ids = np.arange(config.tag_count, dtype=np.int64)
    tagdb.update(ids, values, st.GOOD, clock())
    engine.evaluate_all()
    return config, tagdb, engine, clock, points, base, n_dev


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-alarms-"))
    t0 = time.perf_counter()
    config, tagdb, engine, clock, points, base, n_dev = build(args.tags, work)
    print(
        f"\nAlarm engine: {config.tag_count:,} tags, {n_dev:,} cabinets, {engine.n:,} alarm instances "
        f"({len(config.alarms.alarms)} definitions); built in {time.perf_counter() - t0:.1f} s"
    )
    rng = np.random.default_rng(1)
    npts = len(points)
    temp = points.index("temperature")
    volt = points.index("mains_voltage")
    all_ids = np.arange(config.tag_count, dtype=np.int64)
    results: dict[str, tuple[list[float], list[float]]] = {}

    def record(name: str, ours: float, bare: float) -> None:
        results.setdefault(name, ([], []))[0].append(ours)
        results[name][1].append(bare)

    def bare(ids: np.ndarray) -> float:
        t = time.perf_counter()
        v = tagdb.value[ids]
        _ = v > 60.0
        return time.perf_counter() - t

    for _ in range(args.reps):
        clock.t += 1_000_000_000
        # Full batch: every tag moves a little, nothing crosses a limit.
        jitter = np.tile(base, n_dev) + rng.uniform(-0.4, 0.4, config.tag_count) * (
            np.arange(config.tag_count) % npts == temp
        )
        batch = tagdb.update(all_ids, jitter, st.GOOD, clock.t)
        before = engine.transitions
        record("full batch, no transition", timed(engine.process, batch), bare(all_ids))
        assert engine.transitions == before
        # 10k tags at random devices: temperatures and voltages wobble within limits.
        dev = rng.choice(n_dev, 5000, replace=False)
        ids = np.sort(np.concatenate([dev * npts + temp, dev * npts + volt]))
        vals = np.where(ids % npts == temp, rng.uniform(20, 40, len(ids)), rng.uniform(225, 235, len(ids)))
        clock.t += 1_000_000_000
        batch = tagdb.update(ids, vals, st.GOOD, clock.t)
        record("10k changed tags, no transition", timed(engine.process, batch), bare(ids))
        assert engine.transitions == before
        # 10k tags, 1 % of them temperatures crossing 60 degC: 100 transitions journaled.
        hot = rng.choice(len(ids), 100, replace=False)
        hot = hot[ids[hot] % npts == temp][:50]
        vals2 = vals.copy()
        vals2[hot] = 70.0
        clock.t += 1_000_000_000
        batch = tagdb.update(ids, vals2 + rng.uniform(-0.01, 0.01, len(ids)), st.GOOD, clock.t)
        n0 = engine.transitions
        record("10k changed tags, 1 % raising alarms", timed(engine.process, batch), bare(ids))
        raised = engine.transitions - n0
        assert raised == len(hot), (raised, len(hot))
        # and back to normal (clears; cabinet_hot has a 60 s off-delay: tick past it)
        clock.t += 1_000_000_000
        engine.process(tagdb.update(ids[hot], np.full(len(hot), 25.0), st.GOOD, clock.t))
        clock.t += 61_000_000_000
        engine.tick()
        for i in engine.announced().tolist():
            a = engine.describe(i)
            engine.ack(a["alarm"], a["device"], "bench")

    # Transitions per second: a flood of activations on distinct cabinets, one batch.
    flood = []
    for size in (1000, 5000):
        dev = rng.choice(n_dev, size, replace=False)
        ids = np.sort(dev * npts + temp)
        clock.t += 1_000_000_000
        batch = tagdb.update(ids, np.full(size, 80.0), st.GOOD, clock.t)
        n0 = engine.transitions
        dt = timed(engine.process, batch)
        flood.append((size, (engine.transitions - n0) / dt))
        clock.t += 1_000_000_000
        engine.process(tagdb.update(ids, np.full(size, 25.0), st.GOOD, clock.t))
        clock.t += 61_000_000_000
        engine.tick()

    targets = {"full batch, no transition": 10e-3, "10k changed tags, no transition": 1e-3}
    print(f"  {'batch':<38} {'engine (median)':>16} {'bare numpy':>12} {'ratio':>7}  target")
    for name, (ours, b) in results.items():
        m, mb = med(ours), med(b)
        target = targets.get(name)
        verdict = "" if target is None else (f"<= {target * 1e3:g} ms: " + ("met" if m <= target else "MISSED"))
        print(f"  {name:<38} {m * 1e3:>13.2f} ms {mb * 1e3:>9.3f} ms {m / mb:>6.1f}x  {verdict}")
    for size, rate in flood:
        print(
            f"  flood of {size:,} activations in one batch: {rate:,.0f} transitions/s evaluated and journaled "
            f"(target >= 5,000/s: {'met' if rate >= 5000 else 'MISSED'})"
        )
    engine.journal.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
