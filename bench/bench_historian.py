"""Historian: values/s through Compressor + HistoryStore, compression on a simulated night, disk bytes.

    .venv/bin/python bench/bench_historian.py [--tags 20010] [--batch 10000] [--batches 200]
        [--repeats 3] [--cabinets 100] [--hours 16] [--dir DIR] [--only throughput,night]

(a) **Throughput.** A city of ``--tags`` tags built like bench/citygen.py (the shipped
``lighting_cabinet`` type's points, names, kinds and deadbands; 20,010 tags = 1,334 cabinets,
Dijon's lighting share). Batches of ``--batch`` changes, each tag at most once per batch (as
the TagDB delivers them), 1 s of simulated time apart, generated before timing; 20 batches of
warm-up (untimed) so that every tag has its first point stored. Timed: ``Compressor.compress``
+ ``HistoryStore.write`` of every batch, then the final ``merge()`` (rows moved from the
landing table into the raw and rollup tables): each repetition in a fresh file. Two streams:

* *city stream*: the analog points' changes as a random walk whose steps are one to two
  deadbands (a TagDB change moves by more than its deadband), 1 % of span deviation; the
  discrete points take 1 change in 50 (they change rarely: doors, modes, faults);
* *incompressible*: white noise far beyond the deviation on every point, so every change is
  stored (the compressor stores the held point each time): the store's worst case.

Beside them, in the same run, the **bare sqlite3 baselines** for the incompressible rows
(what a historian without compression and without our layer would do), one transaction per
batch, same PRAGMAs: ``executemany`` into a raw table keyed (tag, time) ``WITHOUT ROWID``
(the naive layout), and into an append-only rowid table (SQLite's floor).

(b) **Compression on a simulated night.** ``--cabinets`` lighting cabinets
(simulators/models/lighting.py, around Dijon, 31 luminaires each, lamp failures on) stepped
every second for ``--hours`` from 15:00 UTC on 28 November (dusk, midnight dimming, dawn);
each step's values go through the Modbus register encoding of the simulator's adapter
(float32, x0.1 scales) and ``TagDB.update`` (the shipped deadbands), as the server would
receive them; the change batches go through the compressor. Deviation: 1 % of the point's
span (tags.yaml range), assumed spans for points without a range (below), no heartbeat,
then a 1-h heartbeat (``Compressor.heartbeat`` called every simulated minute). Values in = the TagDB's changes; stored = compressor output +
the final flush of the held points.

(c) **Disk bytes per stored value**: file size after close (merge + WAL checkpoint) divided
by the stored rows, and the raw table alone (SQLite's dbstat), for the stores of (a) and (b).

Target (issue 6): >= 200,000 values/s through compressor and store; >= 20:1 at 1 % deviation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import citygen  # noqa: E402
from bench.harness import fmt_rate as fmt  # noqa: E402
from bench.harness import line as row  # noqa: E402
from bench.harness import med  # noqa: E402
from scada import status as st  # noqa: E402
from scada.historian.compress import Compressor, StoredBatch  # noqa: E402
from scada.historian.store import HistoryStore  # noqa: E402
from scada.tagdb import ANALOG, ChangeBatch, TagDB  # noqa: E402

TARGET_RATE = 200_000
TARGET_RATIO = 20.0
S = 1_000_000_000
T0 = 1_795_860_000 * S
# Spans assumed for analog points that have no range in tags.yaml (deviation = 1 % of span);
# counters use their resolution (one count) instead: a counter's "span" is unbounded.
ASSUMED_SPAN = {"temperature": 100.0}  # degC, a cabinet from -40 to +60
COUNTER_DEVIATION = {"energy": 0.1, "failed_lamps": 0.0, "lamp_count": 0.0}  # kWh; counts: lossless


def point_table():
    """(name, kind, deadband, deviation at 1 %) of each point of the shipped lighting_cabinet."""
    from city_scada import REGISTRY
    from scada.config import load_tags

    cfg = load_tags(citygen.SHIPPED_TAGS, REGISTRY)
    out = []
    for p in cfg.types[citygen.CABINET_TYPE].points:
        if p.kind != ANALOG:
            dev = 0.0
        elif p.range is not None:
            dev = 0.01 * (p.range[1] - p.range[0])
        elif p.name in ASSUMED_SPAN:
            dev = 0.01 * ASSUMED_SPAN[p.name]
        else:
            dev = COUNTER_DEVIATION.get(p.name, 0.0)
        out.append((p.name, p.kind, p.deadband, dev))
    return out


# -- (a) throughput ------------------------------------------------------------------------------


def make_batches(n_tags: int, size: int, count: int, incompressible: bool, seed: int):
    pts = point_table()
    per = len(pts)
    kind = np.resize(np.array([p[1] for p in pts], np.uint8), n_tags)
    deadband = np.resize(np.array([p[2] for p in pts]), n_tags)
    deviation = np.resize(np.array([p[3] for p in pts]), n_tags)
    rng = np.random.default_rng(seed)
    level = np.zeros(n_tags)
    analog = np.flatnonzero(kind == ANALOG)
    discrete = np.flatnonzero(kind != ANALOG)
    step = np.maximum(deadband, 0.002 * np.maximum(deviation * 100, 1.0))
    batches = []
    for b in range(count):
        if incompressible:
            ids = rng.choice(n_tags, size, replace=False)
        else:
            n_disc = size // 50
            ids = np.concatenate(
                [rng.choice(analog, size - n_disc, replace=False), rng.choice(discrete, n_disc, replace=False)]
            )
        is_an = kind[ids] == ANALOG
        if incompressible:
            # Far beyond the deviation, alternating sign: every point closes the door.
            level[ids] = np.where(is_an, np.where(level[ids] > 0, -1, 1) * (10 * deviation[ids] + 1.0), 1 - level[ids])
        else:
            level[ids] += np.where(is_an, step[ids] * (1 + rng.random(size)) * rng.choice([-1.0, 1.0], size), 0.0)
            level[ids] = np.where(is_an, level[ids], 1 - level[ids])
        times = T0 + b * S + rng.integers(0, S // 2, size)
        batches.append(
            ChangeBatch(
                b, ids.astype(np.int64), level[ids].copy(), np.zeros(size, np.uint32), times.astype(np.int64), 0
            )
        )
    return batches, kind, deadband, deviation, per


def run_ours(path: Path, names, kind, deadband, deviation, batches, warmup: int):
    """Rate of values in through compress + write (+ the final merge), stored rows (timed part),
    merge pauses, and the compressor's own rate on the same batches (a fresh compressor)."""
    comp = Compressor(len(names), deviation, deadband, kind)
    store = HistoryStore(path, names)
    for b in batches[:warmup]:
        store.write(comp.compress(b))
    store.merge()
    values = sum(len(b) for b in batches[warmup:])
    merges = []
    stored = 0
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        out = comp.compress(b)
        before = store.pending_rows
        m0 = time.perf_counter()
        stored += store.write(out)
        if store.pending_rows < before + len(out):
            merges.append(time.perf_counter() - m0)
    m0 = time.perf_counter()
    store.merge()
    merges.append(time.perf_counter() - m0)
    elapsed = time.perf_counter() - t0
    store.close()
    alone = Compressor(len(names), deviation, deadband, kind)
    for b in batches[:warmup]:
        alone.compress(b)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        alone.compress(b)
    return values / elapsed, stored, merges, values / (time.perf_counter() - t0)


def run_bare(path: Path, batches, keyed: bool) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if keyed:
        db.execute(
            "CREATE TABLE raw (tag INTEGER NOT NULL, time_ns INTEGER NOT NULL, value REAL, "
            "status INTEGER NOT NULL, PRIMARY KEY (tag, time_ns)) WITHOUT ROWID"
        )
    else:
        db.execute(
            "CREATE TABLE raw (tag INTEGER NOT NULL, time_ns INTEGER NOT NULL, value REAL, status INTEGER NOT NULL)"
        )
    rows = [list(zip(b.ids.tolist(), b.source_time.tolist(), b.values.tolist(), b.status.tolist())) for b in batches]
    t0 = time.perf_counter()
    for r in rows:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO raw VALUES (?, ?, ?, ?)", r)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return sum(len(r) for r in rows) / elapsed


def disk_figures(path: Path) -> tuple[float, float, float, float, float]:
    """Bytes per stored value after close (merge + WAL checkpoint): (file, pages in use, raw
    table, rollup tables), and the share of free pages (the landing table's, reused by the
    next writes: a constant, not a cost per value)."""
    size = path.stat().st_size
    db = sqlite3.connect(path)
    try:
        rows = (
            db.execute("SELECT count(*) FROM raw").fetchone()[0]
            + db.execute("SELECT count(*) FROM raw_text").fetchone()[0]
        )
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        try:
            by = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        except sqlite3.OperationalError:  # dbstat not compiled in
            by = {}
    finally:
        db.close()
    rows = max(1, rows)
    rollups = by.get("rollup_minute", 0) + by.get("rollup_hour", 0)
    return size / rows, (pages - free) * page_size / rows, by.get("raw", 0) / rows, rollups / rows, free / max(1, pages)


def section_throughput(args, tmp: Path) -> None:
    names, _, _ = citygen.tag_table(args.tags)
    warm = 20
    print(
        f"\n[a. Compressor.compress + HistoryStore.write: {len(names):,} lighting tags, batches of "
        f"{args.batch:,} changes, {args.batches} timed batches after {warm} of warm-up, "
        f"{args.repeats} repetitions, medians]"
    )
    for label, incompressible in (("city stream", False), ("incompressible", True)):
        batches, kind, deadband, deviation, _ = make_batches(
            len(names), args.batch, warm + args.batches, incompressible, seed=7
        )
        rates, stored, merges, bare_key, bare_app, disks, alone = [], [], [], [], [], [], []
        for rep in range(args.repeats):
            d = tmp / f"{label.replace(' ', '-')}-{rep}"
            d.mkdir()
            rate, n_stored, m, comp_rate = run_ours(d / "history.db", names, kind, deadband, deviation, batches, warm)
            rates.append(rate)
            stored.append(n_stored)
            merges += m
            alone.append(comp_rate)
            disks.append(disk_figures(d / "history.db"))
            if incompressible:
                timed = batches[warm:]
                bare_key.append(run_bare(d / "bare-keyed.db", timed, keyed=True))
                bare_app.append(run_bare(d / "bare-append.db", timed, keyed=False))
            shutil.rmtree(d)
        rate = med(rates)
        values_in = sum(len(b) for b in batches[warm:])
        ok = "PASS" if rate >= TARGET_RATE else "MISS"
        row(f"values in/s, {label}", fmt(rate), f">= {fmt(TARGET_RATE)}", f"{rate / TARGET_RATE:.2f}x  {ok}")
        row(
            "  values in / stored (timed part)",
            f"{values_in:,} / {stored[0]:,}",
            "",
            f"{values_in / max(1, stored[0]):.1f}:1",
        )
        row("  stored rows/s", fmt(rate * stored[0] / values_in))
        row("  Compressor.compress alone, same batches", fmt(med(alone)))
        row("  merge pauses (median / max)", f"{med(merges):.2f} s / {max(merges):.2f} s")
        per_file, per_used, per_raw, per_roll, free = (med(x) for x in zip(*disks))
        row(
            "  disk bytes per stored value, pages in use",
            f"{per_used:.1f} B",
            f"raw {per_raw:.1f} + rollups {per_roll:.1f}",
            f"file {per_file:.1f} B ({100 * free:.0f} % free pages)",
        )
        if incompressible:
            bk, ba = med(bare_key), med(bare_app)
            row("  bare executemany, same rows, PK (tag, time)", fmt(bk), "baseline", f"ours/bare {rate / bk:.2f}")
            row("  bare executemany, same rows, append-only table", fmt(ba), "floor", f"ours/floor {rate / ba:.2f}")


# -- (b) a simulated night ----------------------------------------------------------------------------


def section_night(args, tmp: Path) -> None:
    from simulators.adapters.modbus_lighting import REGISTER_MAP, model_values
    from simulators.models import lighting

    pts = point_table()
    wire = {name: (dtype, scale) for name, _t, _a, dtype, _o, scale in REGISTER_MAP}
    n_cab = args.cabinets
    per = len(pts)
    names = [f"Dijon/lighting/LC-BENCH-{c:04d}/{p[0]}" for c in range(n_cab) for p in pts]
    kinds = np.tile([p[1] for p in pts], n_cab).astype(np.uint8)
    deadbands = np.tile([p[2] for p in pts], n_cab)
    deviation = np.tile([p[3] for p in pts], n_cab)
    analog = kinds == ANALOG
    rng = np.random.default_rng(3)
    start = datetime(2026, 11, 28, 15, 0, tzinfo=UTC).timestamp()
    steps = int(args.hours * 3600)
    print(
        f"\n[b. a simulated night: {n_cab} lighting cabinets x {per} points, 1-s steps from "
        f"2026-11-28 15:00 UTC for {args.hours:g} h ({steps:,} steps), TagDB deadbands, 1 % deviation]"
    )
    t_sim = time.perf_counter()
    state = lighting.create(
        47.32 + rng.uniform(-0.05, 0.05, n_cab),
        5.04 + rng.uniform(-0.07, 0.07, n_cab),
        31,
        lamp_watts=60.0,
        t=start,
        seed=5,
        failure_rate=lighting.DEFAULT_FAILURE_RATE,
    )
    tagdb = TagDB(names, kinds, deadbands)
    ids = np.arange(len(names), dtype=np.int64)
    comps = {
        "no heartbeat": Compressor(len(names), deviation, 0.0, kinds),
        "1-h heartbeat": Compressor(len(names), deviation, 0.0, kinds, 3600 * S),
    }
    outs: dict[str, list[StoredBatch]] = {k: [] for k in comps}
    changes_in = np.zeros(len(names), np.int64)
    for k in range(1, steps + 1):
        t = start + k
        state = lighting.step(state, t)
        mv = model_values(state)
        cols = np.empty((n_cab, per))
        for j, (name, *_rest) in enumerate(pts):
            dtype, scale = wire[name]
            v = np.asarray(mv[name], np.float64)
            if dtype == "float32":
                v = v.astype(np.float32).astype(np.float64)
            elif dtype != "bool":
                v = np.round(v / scale) * scale
            cols[:, j] = v
        batch = tagdb.update(ids, cols.ravel(), st.GOOD, int(t * S))
        if k % 60 == 0:  # the server's periodic heartbeat call, for tags that send nothing
            outs["1-h heartbeat"].append(comps["1-h heartbeat"].heartbeat(int(t * S)))
        if batch is None:
            continue
        np.add.at(changes_in, batch.ids, 1)
        for key, c in comps.items():
            outs[key].append(c.compress(batch))
    for key, c in comps.items():
        outs[key].append(c.flush())
    sim_s = time.perf_counter() - t_sim
    polled = steps * len(names)
    point_names = [p[0] for p in pts]
    for key in comps:
        stored = StoredBatch.concat(outs[key])
        per_tag = np.bincount(stored.ids, minlength=len(names))
        a_in, a_st = changes_in[analog].sum(), per_tag[analog].sum()
        ratio = a_in / max(1, a_st)
        ok = "PASS" if ratio >= TARGET_RATIO else "MISS"
        row(
            f"analog tags, {key}: changes in / stored",
            f"{a_in:,} / {a_st:,}",
            f">= {TARGET_RATIO:.0f}:1",
            f"{ratio:.1f}:1  {ok}",
        )
        if key == "no heartbeat":
            for j, name in enumerate(point_names):
                if pts[j][1] != ANALOG:
                    continue
                m = np.arange(len(names)) % per == j
                i_, s_ = changes_in[m].sum(), per_tag[m].sum()
                row(
                    f"  {name} (deviation {pts[j][3]:g}, deadband {pts[j][2]:g})",
                    f"{i_:,} / {s_:,}",
                    "",
                    f"{i_ / max(1, s_):.1f}:1",
                )
            d_in, d_st = changes_in[~analog].sum(), per_tag[~analog].sum()
            row("  discrete tags (stored on change), info", f"{d_in:,} / {d_st:,}", "", f"{d_in / max(1, d_st):.1f}:1")
            row(
                "  polled values / stored, analog (context)",
                f"{polled * analog.mean():,.0f} / {a_st:,}",
                "",
                f"{polled * analog.mean() / max(1, a_st):,.0f}:1",
            )
            path = tmp / "night.db"
            with HistoryStore(path, names) as store:
                store.write(stored)
            per_file, per_used, per_raw, per_roll, _ = disk_figures(path)
            row(
                "  disk bytes per stored value, this night, in use",
                f"{per_used:.1f} B",
                f"raw {per_raw:.1f} + rollups {per_roll:.1f}",
                "(+ tag names, fixed)",
            )
    row("  simulation + TagDB + 2 compressors, wall time", f"{sim_s:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=20_010)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cabinets", type=int, default=100)
    ap.add_argument("--hours", type=float, default=16.0)
    ap.add_argument("--dir", type=Path, default=None, help="folder for the files (default: a temporary one)")
    ap.add_argument("--only", default="throughput,night")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-historian-", dir=args.dir))
    only = set(args.only.split(","))
    print(
        f"historian bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, files in {tmp}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    row("figure", "measured", "target / baseline", "ratio")
    try:
        if "throughput" in only:
            section_throughput(args, tmp)
        if "night" in only:
            section_night(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
