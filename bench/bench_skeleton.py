"""Speed and memory of the server's skeleton, printed as a table of figures beside their targets.

Run:  .venv/bin/python bench/bench_skeleton.py [--quick] [--reps N] [--only SECTIONS] [--json FILE]

Sections (see bench/README.md for what each figure means):
  ingest   TagDB.update over 1M tags, batches of one device poll and of 1k/10k/100k rows, one
           consumer subscribed, beside the bare numpy scatter of the same batches
           (target >= 10M updates/s for batches)
  ingest-ops  what update() is made of: cost per row of one random gather/scatter, cost per call
  memory   bytes per tag of a 1M-tag TagDB with realistic names, fresh subprocess (target <= 200 B)
  build    OPC UA address-space build, ours (AddressSpaceBuilder) vs stock asyncua
           (add_folder/add_object/add_variable), 10k and 100k tags, fresh subprocesses
  smoke    the built space is usable: server on a free loopback port, one asyncua client read
  publish  Publisher.apply on 10k changed tags, without subscribers and with one client
           (separate process) subscribed to 1,000 of them

Never part of the test suite. Figures are medians over repetitions; the machine is shared,
so compare ratios measured in the same run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import citygen  # noqa: E402

RESULT = "RESULT "


# --------------------------------------------------------------------------------------------
# Reporting


@dataclass
class Row:
    figure: str
    measured: str
    reference: str = ""
    ratio: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def add(self, *args, **kw) -> None:
        self.rows.append(Row(*args, **kw))

    def section(self, title: str) -> None:
        self.rows.append(Row(f"[{title}]", ""))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print("  note:", text, flush=True)

    def print_table(self) -> None:
        head = Row("Figure", "Measured", "Target / baseline", "Ratio", "")
        rows = [head] + self.rows
        w = [max(len(getattr(r, f)) for r in rows) for f in ("figure", "measured", "reference", "ratio")]
        line = "-" * (sum(w) + 3 * 4 + 7)
        print()
        print(line)
        for i, r in enumerate(rows):
            if r.figure.startswith("[") and not r.measured:
                print(r.figure)
                continue
            print(f"{r.figure:<{w[0]}}   {r.measured:>{w[1]}}   {r.reference:<{w[2]}}   {r.ratio:>{w[3]}}   {r.verdict}")
            if i == 0:
                print(line)
        print(line)
        if self.notes:
            print("Notes:")
            for n in self.notes:
                print(" -", n)


def log(msg: str) -> None:
    print(msg, flush=True)


def med(xs) -> float:
    return statistics.median(xs)


def spread(xs, scale=1.0, fmt="{:.2f}") -> str:
    xs = sorted(x * scale for x in xs)
    return f"median {fmt.format(med(xs))} (min {fmt.format(xs[0])}, max {fmt.format(xs[-1])}, n={len(xs)})"


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.1f} k/s"


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_child(args: list[str], timeout: float | None = None) -> dict:
    """Run this script in a fresh interpreter in child mode; return its RESULT json."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(citygen.ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise RuntimeError(f"child {args} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def emit(result: dict) -> None:
    print(RESULT + json.dumps(result), flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# 1. TagDB batch ingest


class IngestWorkload:
    """Batches of (ids, values, status, source_time) with a controlled share of real changes.

    A model of the stored values is kept alongside the database so that ~``change_share`` of
    the rows move beyond their deadband and the rest stay within it (exactly equal for the
    points whose deadband is 0), whatever the history of earlier batches.
    """

    def __init__(self, stored: np.ndarray, deadband: np.ndarray, change_share: float, seed: int,
                 points_per_device: int) -> None:
        self.stored = stored.copy()
        self.per = points_per_device
        self.deadband = deadband
        self.share = change_share
        self.rng = np.random.default_rng(seed)
        self.n = len(stored)

    def ids(self, size: int, pattern: str) -> np.ndarray:
        if pattern == "random":
            return self.rng.choice(self.n, size, replace=False)
        # Device-grouped: a driver's batch is whole polls of devices, each a run of contiguous ids.
        per = self.per
        devs = self.rng.choice(self.n // per, -(-size // per), replace=False)
        return (devs[:, None] * per + np.arange(per)).ravel()[:size]

    def batch(self, size: int, pattern: str, t_ns: int):
        ids = self.ids(size, pattern)
        old = self.stored[ids]
        db = self.deadband[ids]
        changed = self.rng.random(size) < self.share
        noise = (self.rng.random(size) - 0.5) * 0.9 * db  # |noise| < deadband: not a change
        step = np.maximum(2.0 * db, 1.0) * np.where(self.rng.random(size) < 0.5, -1.0, 1.0)
        values = old + np.where(changed, step, noise)
        self.stored[ids[changed]] = values[changed]
        status = np.zeros(size, np.uint32)  # Good, unchanged: only values change
        source = np.full(size, t_ns, np.int64)
        return (ids, values, status, source), int(changed.sum())


def bench_ingest(args, rep: Report) -> None:
    from scada.tagdb import TagDB

    n = args.ingest_tags
    log(f"\n== 1. TagDB batch ingest over {n:,} tags ==")
    names, kinds, deadbands = citygen.tag_table(n)
    db = TagDB(names, kinds, deadbands)
    del names
    consumer = db.subscribe("bench-consumer", maxsize=1024)  # the OPC UA publisher's queue size
    rng = np.random.default_rng(7)
    # Initial fill: every tag gets a first value (NaN -> number is a change for every row).
    first = rng.uniform(0, 300, n).round(1)
    db.update(np.arange(n), first, 0, 1)
    consumer.get_nowait()
    per = len(citygen.cabinet_points())
    work = IngestWorkload(db.value, db.deadband, args.change_share, seed=11, points_per_device=per)

    # Baseline columns of the same sizes: the bare scatter of the batch into 4 columns.
    bvalue, bstatus = np.full(n, np.nan), np.zeros(n, np.uint32)
    bsource, bserver = np.zeros(n, np.int64), np.zeros(n, np.int64)

    def run_tagdb(batches):
        delivered = 0
        t0 = time.perf_counter()
        for ids, values, status, source in batches:
            db.update(ids, values, status, source)
            q = consumer.queue
            while not q.empty():
                delivered += len(q.get_nowait())
        return time.perf_counter() - t0, delivered

    def run_numpy(batches):
        t0 = time.perf_counter()
        for ids, values, status, source in batches:
            now = time.time_ns()
            bvalue[ids] = values
            bstatus[ids] = status
            bsource[ids] = source
            bserver[ids] = now
        return time.perf_counter() - t0

    rep.section(f"1. TagDB.update over {n:,} tags, ~{args.change_share:.0%} of rows change, 1 consumer")
    results = {}
    for pattern in ("random", "device"):
        for size in (per, *args.batch_sizes):
            if size > n:
                continue
            nb = max(1, min(args.ingest_rows // size, args.max_calls))
            tag_t, np_t, offered, delivered, expected = [], [], 0, 0, 0
            dropped0 = consumer.dropped_rows
            for r in range(args.reps):
                batches, exp = [], 0
                for _ in range(nb):
                    b, c = work.batch(size, pattern, time.time_ns())
                    batches.append(b)
                    exp += c
                gc.collect()
                # Alternate the order so that neither side always runs on a warmer cache.
                if r % 2:
                    np_t.append(run_numpy(batches))
                    dt, got = run_tagdb(batches)
                else:
                    dt, got = run_tagdb(batches)
                    np_t.append(run_numpy(batches))
                tag_t.append(dt)
                offered += nb * size
                delivered += got
                expected += exp
            rows = nb * size
            tag_rates = [rows / t for t in tag_t]
            np_rates = [rows / t for t in np_t]
            tr, nr = med(tag_rates), med(np_rates)
            key = f"{pattern}-{size}"
            results[key] = dict(tagdb=tag_rates, numpy=np_rates, offered=offered, delivered=delivered,
                                expected=expected, dropped=consumer.dropped_rows - dropped0)
            label = "random ids" if pattern == "random" else "device-grouped ids"
            log(f"  {label:18s} batch {size:>7,}: TagDB {spread(tag_rates, 1e-6)} M/s; "
                f"numpy scatter {spread(np_rates, 1e-6)} M/s; delivered {delivered:,}/{expected:,} expected changes "
                f"of {offered:,} rows, dropped {consumer.dropped_rows - dropped0}")
            if size < 100:
                # One device poll per call, as drivers/modbus does today: the fixed cost per call.
                what = "one device poll" if pattern == "device" else "random ids"
                rep.add(f"TagDB.update, {what}, batch {size} ({tr / size / 1e3:.1f} k calls/s)", fmt_rate(tr),
                        "(target is for batches)", f"{tr / 10e6:.2f}x", "info")
            else:
                rep.add(f"TagDB.update, {label}, batch {size:,}", fmt_rate(tr), ">= 10 M/s",
                        f"{tr / 10e6:.2f}x", "PASS" if tr >= 10e6 else "MISS")
            rep.add("  bare numpy scatter, same batches", fmt_rate(nr), "baseline",
                    f"TagDB/np {tr / nr:.2f}")
            ok = delivered == expected and consumer.dropped_rows == dropped0
            rep.add("  rows delivered to the consumer", f"{delivered:,}", f"{expected:,} expected",
                    f"{delivered / max(offered, 1):.1%} of rows", "OK" if ok else "MISMATCH")
    rep.data["ingest"] = results
    rep.note("TagDB ingest: 'random ids' draws each batch's ids uniformly without repetition over all tags "
             "(as the brief asks: worst case for caches); 'device-grouped' is what a driver sends: whole "
             f"polls of devices, {per} contiguous ids each (the shipped lighting_cabinet type has {per} points). "
             f"Batch {per} is one device poll per call, which is how drivers/modbus calls update() today. "
             "The numpy baseline is value[ids]=v; status[ids]=s; "
             "source_time[ids]=t; server_time[ids]=now on separate columns of the same size.")


def bench_ingest_ops(args, rep: Report) -> None:
    """What TagDB.update's time is made of: the cost per row of each kind of array pass."""
    from scada.tagdb import TagDB

    n, size = args.ingest_tags, 10_000
    log(f"\n== 1b. Cost of the array passes of TagDB.update, {n:,}-row columns, batches of {size:,} ==")
    rng = np.random.default_rng(5)
    f8, u4, i8 = rng.random(n), np.zeros(n, np.uint32), np.zeros(n, np.int64)
    vals, st, src = rng.random(size), np.zeros(size, np.uint32), np.full(size, 7, np.int64)
    per = len(citygen.cabinet_points())
    patterns = {
        "random": [rng.choice(n, size, replace=False) for _ in range(100)],
        "device": [(rng.choice(n // per, size // per, replace=False)[:, None] * per + np.arange(per)).ravel()
                   for _ in range(100)],
    }
    ops = {
        "gather float64 (value, deadband)": lambda ids: f8[ids],
        "gather uint32 (status)": lambda ids: u4[ids],
        "scatter float64 (value)": lambda ids: f8.__setitem__(ids, vals[: len(ids)]),
        "scatter int64 (source_time)": lambda ids: i8.__setitem__(ids, src[: len(ids)]),
        "scatter uint32 (status)": lambda ids: u4.__setitem__(ids, st[: len(ids)]),
        "elementwise pass (abs, compare)": lambda ids: np.abs(vals - vals),
    }
    costs = {}
    for pattern, batches in patterns.items():
        for name, op in ops.items():
            reps = []
            for _ in range(max(3, args.reps)):
                t0 = time.perf_counter()
                for ids in batches:
                    op(ids)
                reps.append((time.perf_counter() - t0) / sum(map(len, batches)))
            costs[(pattern, name)] = med(reps)
    # Fixed cost of one call: a TagDB of n tags updated one row at a time.
    names, kinds, deadbands = citygen.tag_table(n)
    db = TagDB(names, kinds, deadbands)
    del names
    consumer = db.subscribe("bench", maxsize=1024)
    one = [np.array([i]) for i in rng.choice(n, 5_000, replace=False)]
    calls = []
    for r in range(max(3, args.reps)):
        t0 = time.perf_counter()
        for k, ids in enumerate(one):
            db.update(ids, np.array([float(r)]), 0, 1)  # a change: one batch to the consumer
            consumer.queue.get_nowait()
        calls.append((time.perf_counter() - t0) / len(one))
    for name in ops:
        log(f"  {name:34s} random {costs[('random', name)] * 1e9:6.1f} ns/row   "
            f"device-grouped {costs[('device', name)] * 1e9:6.1f} ns/row")
    log(f"  fixed cost of one update() call (1 row, 1 consumer): {spread(calls, 1e6, '{:.1f}')} us")
    rep.add("  per-row cost of one random gather / scatter of a column",
            f"{costs[('random', 'gather float64 (value, deadband)')] * 1e9:.0f} / "
            f"{costs[('random', 'scatter int64 (source_time)')] * 1e9:.0f} ns",
            f"device-grouped {costs[('device', 'gather float64 (value, deadband)')] * 1e9:.0f} / "
            f"{costs[('device', 'scatter int64 (source_time)')] * 1e9:.0f} ns", "", "info")
    rep.add("  fixed cost of one TagDB.update() call", f"{med(calls) * 1e6:.1f} us",
            f"= {1 / med(calls) / 1e3:.0f} k calls/s", "", "info")
    rep.data["ingest_ops"] = {f"{p}: {k}": v for (p, k), v in costs.items()} | {"call_s": calls}


# --------------------------------------------------------------------------------------------
# 2. Memory per tag


def child_tagdb_memory(n: int, mode: str) -> None:
    import tracemalloc

    from scada.tagdb import TagDB

    citygen.cabinet_points()  # load the shipped type before the baseline
    names0, kinds0, db0 = citygen.tag_table(24)  # warm every code path used below
    TagDB(names0, kinds0, db0)
    del names0, kinds0, db0
    gc.collect()
    r0 = rss()
    if mode == "trace":
        tracemalloc.start()
    t0 = time.perf_counter()
    names, kinds, deadbands = citygen.tag_table(n)
    db = TagDB(names, kinds, deadbands)
    build_s = time.perf_counter() - t0
    # The server keeps only the TagDB: Config.tag_table()'s list is a temporary.
    del names, kinds, deadbands
    gc.collect()
    out = {"n": n, "mode": mode, "build_s": build_s}
    if mode == "trace":
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.update(traced=cur, traced_peak=peak)
    else:
        out["rss_delta"] = rss() - r0
    # Itemised: numeric columns, and the compact names (UTF-8 blob + offsets + hash index).
    names = db.names
    out.update(
        columns=db.memory_bytes() - names.nbytes,
        names_blob=len(names._blob),
        names_offsets=names._offsets.nbytes,
        names_index=names._hashes.nbytes + names._order.nbytes,
        mean_name_len=len(names._blob) / n,
        sample=names[n // 2],
    )
    emit(out)


def bench_memory(args, rep: Report) -> None:
    n = args.memory_tags
    log(f"\n== 2. TagDB memory per tag, {n:,} tags, fresh subprocesses ==")
    rss_runs = [run_child(["tagdb-memory", n, "rss"]) for _ in range(args.reps)]
    tr = run_child(["tagdb-memory", n, "trace"])
    per_rss = [r["rss_delta"] / n for r in rss_runs]
    per_tr = tr["traced"] / n
    r0 = rss_runs[0]
    parts = {k: r0[k] / n for k in ("columns", "names_blob", "names_offsets", "names_index")}
    log(f"  sample name: {r0['sample']!r} (mean length {r0['mean_name_len']:.1f} bytes)")
    log(f"  RSS delta per tag: {spread(per_rss, fmt='{:.1f}')} B; tracemalloc: {per_tr:.1f} B "
        f"(peak during build {tr['traced_peak'] / n:.1f} B); build {spread([r['build_s'] for r in rss_runs])} s")
    log("  by array size, per tag: " + ", ".join(f"{k} {v:.1f} B" for k, v in parts.items())
        + f"; total {sum(parts.values()):.1f} B")
    m = med(per_rss)
    rep.section(f"2. TagDB memory, {n:,} tags with names and name->id index")
    rep.add("bytes per tag, RSS delta (fresh process)", f"{m:.0f} B", "<= 200 B", f"{m / 200:.2f}x",
            "PASS" if m <= 200 else "MISS")
    rep.add("bytes per tag, tracemalloc", f"{per_tr:.0f} B", "<= 200 B", f"{per_tr / 200:.2f}x",
            "PASS" if per_tr <= 200 else "MISS")
    rep.add("  of which numeric columns (6)", f"{parts['columns']:.0f} B", "", f"{parts['columns'] / m:.0%}")
    rep.add("  of which names (UTF-8 blob)", f"{parts['names_blob']:.0f} B", "", f"{parts['names_blob'] / m:.0%}")
    rep.add("  of which name offsets", f"{parts['names_offsets']:.0f} B", "", f"{parts['names_offsets'] / m:.0%}")
    rep.add("  of which name hash index", f"{parts['names_index']:.0f} B", "", f"{parts['names_index'] / m:.0%}")
    rep.data["memory"] = {"rss": rss_runs, "trace": tr}


# --------------------------------------------------------------------------------------------
# 3. OPC UA address-space build


async def _stock_build(server, ns: int, config) -> int:
    """The same commune/class/device/point tree through asyncua's public node API."""
    from asyncua import ua

    from scada.opcua.address_space import ROOT_NAME, variant_type

    initial = {ua.VariantType.Double: 0.0, ua.VariantType.Int32: 0, ua.VariantType.Boolean: False,
               ua.VariantType.String: ""}
    root = await server.nodes.objects.add_folder(ua.NodeId(ROOT_NAME, ns), ua.QualifiedName(ROOT_NAME, ns))
    folders = {}
    count = 0
    for d in config.devices:
        t = config.types[d.type]
        commune = folders.get(d.commune)
        if commune is None:
            commune = folders[d.commune] = await root.add_folder(ua.NodeId(d.commune, ns),
                                                                 ua.QualifiedName(d.commune, ns))
        cls_path = f"{d.commune}/{t.cls}"
        cls = folders.get(cls_path)
        if cls is None:
            cls = folders[cls_path] = await commune.add_folder(ua.NodeId(cls_path, ns), ua.QualifiedName(t.cls, ns))
        dev_path = f"{cls_path}/{d.name}"
        dev = await cls.add_object(ua.NodeId(dev_path, ns), ua.QualifiedName(d.name, ns))
        for p in t.points:
            vt = variant_type(p)
            await dev.add_variable(ua.NodeId(f"{dev_path}/{p.name}", ns), ua.QualifiedName(p.name, ns),
                                   ua.Variant(initial[vt], vt))
            count += 1
    return count


def child_build(impl: str, n: int) -> None:
    async def main():
        from asyncua import Server

        from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder

        t0 = time.perf_counter()
        config = citygen.load_config(n)
        config_s = time.perf_counter() - t0
        server = Server()
        await server.init()
        ns = await server.register_namespace(NAMESPACE_URI)
        nodes0 = len(server.iserver.aspace._nodes)
        gc_time = [0.0, 0]
        started = []

        def on_gc(phase, info):
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                gc_time[0] += time.perf_counter() - started.pop()
                gc_time[1] += 1

        gc.collect()
        r0 = rss()
        gc.callbacks.append(on_gc)
        t0 = time.perf_counter()
        if impl == "ours":
            values = AddressSpaceBuilder(server, ns).build(config)
            variables = len(values)
        else:
            variables = await _stock_build(server, ns, config)
        build_s = time.perf_counter() - t0
        gc.callbacks.remove(on_gc)
        t1 = time.perf_counter()
        gc.collect()
        full_gc_s = time.perf_counter() - t1
        r1 = rss()
        # What a full collection costs once the (immortal) tree is frozen out of the GC.
        gc.freeze()
        t1 = time.perf_counter()
        gc.collect()
        frozen_gc_s = time.perf_counter() - t1
        emit({"impl": impl, "n": n, "tags": config.tag_count, "variables": variables,
              "nodes": len(server.iserver.aspace._nodes) - nodes0, "build_s": build_s, "config_s": config_s,
              "rss_delta": r1 - r0, "gc_s": gc_time[0], "gc_runs": gc_time[1], "full_gc_s": full_gc_s,
              "frozen_gc_s": frozen_gc_s})

    asyncio.run(main())


def bench_build(args, rep: Report) -> None:
    log("\n== 3. OPC UA address-space build, fresh subprocesses ==")
    res: dict[tuple[str, int], list[dict]] = {}

    def measure(impl, n, reps, timeout=None):
        runs = []
        for _ in range(reps):
            r = run_child(["build", impl, n], timeout=timeout)
            runs.append(r)
            log(f"  {impl:5s} {r['tags']:>8,} tags: {r['build_s']:7.2f} s, RSS +{r['rss_delta'] / 1e6:7.1f} MB "
                f"({r['rss_delta'] / r['variables']:6.0f} B/var), {r['nodes']:,} nodes; "
                f"in GC {r['gc_s']:.2f} s; a full gc.collect() after: {r['full_gc_s']:.2f} s "
                f"(after gc.freeze(): {r['frozen_gc_s'] * 1e3:.0f} ms)")
        res[(impl, n)] = runs
        return runs

    small, large = args.build_sizes
    for n in (small, large):
        measure("ours", n, args.reps)
    stock_sizes = [small]
    measure("stock", small, args.reps)
    stock_timed_out = False
    try:
        # One timed attempt first: stock at the large size may take minutes.
        measure("stock", large, 1, timeout=args.stock_budget)
        if args.reps > 1:
            res[("stock", large)] += measure("stock", large, args.reps - 1)
        stock_sizes.append(large)
    except subprocess.TimeoutExpired:
        stock_timed_out = True
        rep.note(f"stock asyncua at {large:,} tags took more than {args.stock_budget:.0f} s: stopped; "
                 f"measured at {', '.join(f'{s:,}' for s in args.stock_fallback)} instead and the scaling is stated.")
        for n in args.stock_fallback:
            measure("stock", n, args.reps)
            stock_sizes.append(n)
    for n in args.extra_ours:
        measure("ours", n, 1)

    def m(impl, n, key):
        return med([r[key] for r in res[(impl, n)]])

    def per_var(impl, n):
        return med([r["rss_delta"] / r["variables"] for r in res[(impl, n)]])

    rep.section("3. OPC UA address space (commune/class/device/point), build time and RSS")
    for n in sorted({small, large, *stock_sizes}):
        have_ours, have_stock = ("ours", n) in res, ("stock", n) in res
        tags = res[("ours", n) if have_ours else ("stock", n)][0]["tags"]
        if have_ours:
            o_t, o_b = m("ours", n, "build_s"), per_var("ours", n)
        if have_stock:
            s_t, s_b = m("stock", n, "build_s"), per_var("stock", n)
        if have_ours and have_stock:
            rep.add(f"build time, ours, {tags:,} tags", f"{o_t:.2f} s", f"stock {s_t:.2f} s",
                    f"{o_t / s_t:.2f}x", "PASS" if o_t < s_t else "MISS")
            rep.add(f"RSS per variable, ours, {tags:,} tags", f"{o_b:.0f} B", f"stock {s_b:.0f} B",
                    f"{o_b / s_b:.2f}x", "PASS" if o_b < s_b else "MISS")
            rep.add(f"  RSS delta, ours / stock, {tags:,} tags",
                    f"{m('ours', n, 'rss_delta') / 1e6:.0f} MB", f"stock {m('stock', n, 'rss_delta') / 1e6:.0f} MB")
        elif have_stock:
            rep.add(f"build time, stock, {tags:,} tags", f"{s_t:.2f} s", "(ours not run at this size)")
            rep.add(f"RSS per variable, stock, {tags:,} tags", f"{s_b:.0f} B", "DESIGN.md: ~7.8 KB")
        else:
            rep.add(f"build time, ours, {tags:,} tags", f"{o_t:.2f} s", "(stock not measured at this size)")
            rep.add(f"RSS per variable, ours, {tags:,} tags", f"{o_b:.0f} B", "(stock not measured at this size)")
    for n in args.extra_ours:
        r = res[("ours", n)][0]
        rep.add(f"build time, ours, {r['tags']:,} tags (city scale, 1 run)", f"{r['build_s']:.2f} s",
                f"{r['rss_delta'] / 1e6:.0f} MB RSS", f"{r['rss_delta'] / r['variables']:.0f} B/var")

    def scaling(impl, sizes):
        pts = sorted((res[(impl, s)][0]["tags"], m(impl, s, "build_s")) for s in sizes if (impl, s) in res)
        if len(pts) < 2:
            return None
        (n1, t1), (n2, t2) = pts[0], pts[-1]
        return n1, n2, t1 / n1, t2 / n2, math.log(t2 / t1) / math.log(n2 / n1)

    for impl, sizes in (("ours", [small, large, *args.extra_ours]), ("stock", stock_sizes)):
        sc = scaling(impl, sizes)
        if sc:
            n1, n2, p1, p2, k = sc
            rep.add(f"build scaling, {impl}, {n1:,} -> {n2:,} tags", f"t ~ n^{k:.2f}", "linear: n^1.00",
                    f"{p2 / p1:.2f}x per-tag", "info" if impl == "stock" or args.quick else ("PASS" if k < 1.15 else "MISS"))
            log(f"  {impl}: {p1 * 1e6:.0f} us/tag at {n1:,}, {p2 * 1e6:.0f} us/tag at {n2:,}: time ~ n^{k:.2f}")
    if stock_timed_out:
        sc = scaling("stock", stock_sizes)
        if sc:
            n1, n2, p1, p2, k = sc
            est = p2 * large * (large / n2) ** (k - 1)
            rep.add(f"stock build at {large:,} tags, extrapolated", f"~{est:.0f} s", "(not measured)",
                    f"n^{k:.2f}")
    # GC share and the full-collection pause of a built tree: what a running server pays.
    for impl in ("ours", "stock"):
        if (impl, large) in res:
            g = m(impl, large, "gc_s") / m(impl, large, "build_s")
            rep.add(f"  share of build time in cyclic GC, {impl}, {res[(impl, large)][0]['tags']:,} tags",
                    f"{g:.0%}", "", "")
    for n in (large, *args.extra_ours):
        if ("ours", n) in res:
            rep.add(f"  full gc.collect() pause after build, ours, {res[('ours', n)][0]['tags']:,} tags",
                    f"{m('ours', n, 'full_gc_s') * 1e3:.0f} ms",
                    f"after gc.freeze() {m('ours', n, 'frozen_gc_s') * 1e3:.0f} ms", "", "info")
    rep.data["build"] = {f"{k[0]}-{k[1]}": v for k, v in res.items()}
    rep.note("OPC UA build: RSS delta is measured around the build only (server initialised and Config "
             "loaded before); bytes per variable divide it by the number of tag variables, so the device "
             "objects and folders are included. Ours also shares EngineeringUnits/EURange properties and "
             "writes Descriptions; the stock baseline builds bare variables (no properties), which favours stock.")


# --------------------------------------------------------------------------------------------
# 3b. Smoke test: the built space serves a client


def child_smoke(n: int) -> None:
    async def main():
        from asyncua import Client

        from scada.opcua.address_space import NAMESPACE_URI
        from scada.opcua.server import HmiServer
        from scada.tagdb import TagDB

        config = citygen.load_config(n)
        names, kinds, deadbands = config.tag_table()
        db = TagDB(names, kinds, deadbands)
        port = free_port()
        url = f"opc.tcp://127.0.0.1:{port}/scada/"
        hmi = HmiServer(config, db, url)
        await hmi.start()
        try:
            tag = next(i for i, nm in enumerate(names) if nm.endswith("/mains_voltage"))
            db.update(np.array([tag]), np.array([231.5]), 0, time.time_ns())
            await hmi.publisher.apply(hmi.publisher.consumer.get_nowait())
            async with Client(url, timeout=10) as client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                node = client.get_node(f"ns={ns};s={names[tag]}")
                dv = await node.read_data_value()
                device = client.get_node(f"ns={ns};s={names[tag].rsplit('/', 1)[0]}")
                children = await device.get_children()
                units = await (await node.get_child("0:EngineeringUnits")).read_value()
            points = len(config.types[config.device(names[tag].split("/")[2]).type].points)
            ok = dv.Value.Value == 231.5 and dv.StatusCode.is_good() and len(children) == points
            emit({"ok": ok, "points": points, "tag": names[tag], "value": dv.Value.Value, "status": dv.StatusCode.name,
                  "children": len(children), "unit": units.DisplayName.Text, "url": url})
        finally:
            await hmi.stop()

    asyncio.run(main())


def bench_smoke(args, rep: Report) -> None:
    log("\n== 3b. The built address space serves a client ==")
    r = run_child(["smoke", args.smoke_tags], timeout=120)
    log(f"  {r['url']}: read {r['tag']} = {r['value']} {r['unit']} ({r['status']}); device has {r['children']} children")
    rep.add("built space usable: client read over loopback", f"{r['value']} {r['unit']}, {r['status']}",
            f"231.5 V, Good, {r['points']} children", "", "OK" if r["ok"] else "FAIL")
    rep.data["smoke"] = r


# --------------------------------------------------------------------------------------------
# 4. Publisher throughput


def child_client(url: str, nodes_file: str, expected: str) -> None:
    """A separate HMI process: subscribe to the nodes, count notifications, report times.

    ``expected`` is a comma-separated list of counts, one per phase of the server: after each,
    the client prints a RESULT line with the count and the times of the first and last
    notification (time.monotonic, one clock for every process of the machine).
    """

    async def main():
        from asyncua import Client

        nodeids = Path(nodes_file).read_text().split()

        class Handler:
            n = 0
            first = last = 0.0

            def datachange_notification(self, node, val, data):
                t = time.monotonic()
                if not self.n:
                    self.first = t
                self.n += 1
                self.last = t

        h = Handler()
        # asyncua's default watchdog declares the server lost when a ServerState read takes more
        # than 1 s; a busy publisher blocks the server's loop longer than that (the max loop lag
        # is measured on the server side), so this measuring client is made patient.
        async with Client(url, timeout=30, watchdog_intervall=60) as client:
            sub = await client.create_subscription(50, h)
            await sub.subscribe_data_change([client.get_node(x) for x in nodeids])
            deadline = time.monotonic() + 60
            while h.n < len(nodeids) and time.monotonic() < deadline:  # initial values
                await asyncio.sleep(0.05)
            initial = h.n
            for want in map(int, expected.split(",")):
                h.n = 0
                print("READY", flush=True)
                last_n, idle_since = 0, time.monotonic()
                while h.n < want:
                    await asyncio.sleep(0.02)
                    if h.n != last_n:
                        last_n, idle_since = h.n, time.monotonic()
                    elif time.monotonic() - idle_since > 10:
                        break
                emit({"initial": initial, "count": h.n, "first": h.first, "last": h.last})
            await sub.delete()

    asyncio.run(main())


def child_publish(n: int, batch: int, subscribed: int, rounds: int) -> None:
    async def main():
        import tempfile

        from scada.opcua.server import HmiServer
        from scada.tagdb import ChangeBatch, TagDB

        config = citygen.load_config(n)
        names, kinds, deadbands = config.tag_table()
        db = TagDB(names, kinds, deadbands)
        port = free_port()
        url = f"opc.tcp://127.0.0.1:{port}/scada/"
        hmi = HmiServer(config, db, url)
        await hmi.start()
        pub = hmi.publisher
        rng = np.random.default_rng(3)
        ids = rng.choice(len(names), min(batch, len(names)), replace=False)
        base = rng.uniform(0, 1, len(ids)).round(3)
        is_bool = np.array([kinds[i] == 1 for i in ids])
        k = 0

        def make(sel=slice(None)):
            nonlocal k
            k += 1
            vals = np.where(is_bool[sel], (k % 2) * 1.0, base[sel] + k)
            src = np.full(len(vals), time.time_ns(), np.int64)
            return ChangeBatch(k, ids[sel], vals, np.zeros(len(vals), np.uint32), src, time.time_ns())

        pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
        started = []

        def on_gc(phase, info):
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append((info["generation"], time.perf_counter() - started.pop()))

        lag = [0.0]

        async def lag_probe():
            """Event-loop responsiveness: how late a 10 ms sleep wakes up."""
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                lag[0] = max(lag[0], time.monotonic() - t - 0.01)

        probe = asyncio.create_task(lag_probe())

        async def run_rounds(count, sel=slice(None)):
            gc.collect()
            times = []
            del pauses[:]
            await asyncio.sleep(0.05)
            lag[0] = 0.0
            t_start = time.monotonic()
            for _ in range(count):
                b = make(sel)
                t0 = time.perf_counter()
                await pub.apply(b)
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0)  # let the server's publish loop and sockets run
            await asyncio.sleep(0.05)
            gcs = dict(gc_s=sum(p for _, p in pauses), gc_max_s=max((p for _, p in pauses), default=0.0),
                       gen2=sum(1 for g, _ in pauses if g == 2), loop_lag_s=lag[0])
            return times, t_start, time.monotonic() - t_start, gcs

        async def read_line(prefix):
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 180)
                if not line:
                    raise RuntimeError("client exited early")
                if line.startswith(prefix):
                    return line

        out = {"tags": len(names), "batch": len(ids), "subscribed": subscribed, "rounds": rounds}
        gc.callbacks.append(on_gc)
        try:
            # A. No subscriber: the cost of building and storing DataValues.
            times, _, total, g = await run_rounds(max(3, rounds // 3))
            out["A"] = dict(apply=times, total_s=total, **g)

            # B, C: one client in another process monitors `subscribed` of the batch's tags.
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
                fh.write("\n".join(f"ns={hmi.ns};s={names[i]}" for i in ids[:subscribed]))
            exp_b, exp_c = rounds * subscribed, 3 * rounds * subscribed
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--child", "client", url, fh.name,
                f"{exp_b},{exp_c}", stdout=asyncio.subprocess.PIPE, cwd=str(citygen.ROOT))
            try:
                for phase, count, sel, exp in (("B", rounds, slice(None), exp_b),
                                                ("C", 3 * rounds, slice(0, subscribed), exp_c)):
                    await read_line(b"READY")
                    await asyncio.sleep(0.3)
                    times, t_start, total, g = await run_rounds(count, sel)
                    res = json.loads((await read_line(RESULT.encode()))[len(RESULT):])
                    out[phase] = dict(apply=times, total_s=total, rows=len(ids[sel]), expected=exp,
                                      received=res["count"], e2e_s=res["last"] - t_start, **g)
                await asyncio.wait_for(proc.wait(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                os.unlink(fh.name)
        finally:
            probe.cancel()
            gc.callbacks.remove(on_gc)
            await hmi.stop()
        emit(out)

    asyncio.run(main())


def bench_publish(args, rep: Report) -> None:
    log("\n== 4. OPC UA publisher throughput ==")
    r = run_child(["publish", args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds],
                  timeout=900)
    a, b, c = r["A"], r["B"], r["C"]
    nsub = r["subscribed"]
    rate_a = [r["batch"] / t for t in a["apply"]]
    rate_b = [b["rows"] / t for t in b["apply"]]
    rate_c = [c["rows"] / t for t in c["apply"]]
    e2e_b = b["received"] / b["e2e_s"]
    e2e_c = c["received"] / c["e2e_s"]
    log(f"  address space {r['tags']:,} tags; batches of {r['batch']:,} changed tags; one client monitors {nsub:,}")
    def gcs(x):
        return (f"GC {x['gc_s'] / x['total_s']:.0%} of the time, {x['gen2']} full collections, "
                f"longest pause {x['gc_max_s'] * 1e3:.0f} ms; slowest apply {max(x['apply']) * 1e3:.0f} ms; "
                f"max event-loop lag {x['loop_lag_s'] * 1e3:.0f} ms")

    log(f"  A. apply, no subscriber: {spread(rate_a, 1e-3, '{:.1f}')} k tags/s; {gcs(a)}")
    log(f"  B. apply, {nsub:,} of the {r['batch']:,} monitored: {spread(rate_b, 1e-3, '{:.1f}')} k tags/s; "
        f"client received {b['received']:,}/{b['expected']:,} in {b['e2e_s']:.2f} s = {e2e_b / 1e3:.1f} k notif/s; "
        f"{gcs(b)}")
    log(f"  C. apply, batches of the {nsub:,} monitored tags only: {spread(rate_c, 1e-3, '{:.1f}')} k notif/s server side; "
        f"client received {c['received']:,}/{c['expected']:,} in {c['e2e_s']:.2f} s = {e2e_c / 1e3:.1f} k notif/s; "
        f"{gcs(c)}")
    rep.section(f"4. OPC UA publisher ({r['tags']:,}-tag space, one asyncua client in another process)")
    rep.add(f"Publisher.apply, {r['batch']:,} changed tags, no subscriber", f"{med(rate_a) / 1e3:.1f} k tags/s",
            "TagDB ingest target 10 M/s", f"{med(rate_a) / 10e6:.3f}x", "info")
    rep.add(f"Publisher.apply, same, {nsub:,} of them monitored", f"{med(rate_b) / 1e3:.1f} k tags/s",
            "no subscriber", f"{med(rate_b) / med(rate_a):.2f}x", "info")
    rep.add("  notifications received by the client", f"{e2e_b / 1e3:.1f} k notif/s", f"{b['expected']:,} sent",
            "", "OK" if b["received"] == b["expected"] else f"LOST {b['expected'] - b['received']:,}")
    rep.add(f"Publisher.apply, batches of the {nsub:,} monitored tags", f"{med(rate_c) / 1e3:.1f} k notif/s",
            "DESIGN.md: asyncua ~23 k/s", f"{med(rate_c) / 23e3:.2f}x", "info")
    rep.add("  notifications received by the client", f"{e2e_c / 1e3:.1f} k notif/s", "DESIGN.md: asyncua ~23 k/s",
            f"{e2e_c / 23e3:.2f}x", "OK" if c["received"] == c["expected"] else f"LOST {c['expected'] - c['received']:,}")
    worst = max((a, b, c), key=lambda x: x["gc_max_s"])
    rep.add("longest GC pause while publishing", f"{worst['gc_max_s'] * 1e3:.0f} ms",
            "", "", f"{a['gen2'] + b['gen2'] + c['gen2']} full GCs")
    lag = max(x["loop_lag_s"] for x in (a, b, c))
    rep.add("max event-loop lag while publishing", f"{lag * 1e3:.0f} ms",
            "< 1 s (driver timeout, asyncua client watchdog)", f"{lag:.2f}x", "OK" if lag < 1 else "MISS")
    rep.data["publish"] = r

# --------------------------------------------------------------------------------------------


SECTIONS = {"ingest": bench_ingest, "ingest-ops": bench_ingest_ops, "memory": bench_memory, "build": bench_build, "smoke": bench_smoke,
            "publish": bench_publish}

CHILDREN = {
    "tagdb-memory": lambda a: child_tagdb_memory(int(a[0]), a[1]),
    "build": lambda a: child_build(a[0], int(a[1])),
    "smoke": lambda a: child_smoke(int(a[0])),
    "publish": lambda a: child_publish(*map(int, a)),
    "client": lambda a: child_client(a[0], a[1], a[2]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    ap.add_argument("--reps", type=int, help="repetitions of each measurement (default 5 for ingest, 3 for builds)")
    ap.add_argument("--only", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    ap.add_argument("--stock-budget", type=float,
                    help="seconds allowed to one stock asyncua build at the large size before falling back "
                         "to smaller sizes (default 240, quick 120)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        CHILDREN[args.child[0]](args.child[1:])
        return 0

    if args.quick:
        args.ingest_tags, args.batch_sizes, args.ingest_rows = 100_000, (1_000, 10_000), 100_000
        args.max_calls = 2_000
        args.memory_tags = 100_000
        args.build_sizes, args.stock_fallback, args.extra_ours = (2_400, 12_000), (4_800, 7_200), ()
        args.stock_budget = args.stock_budget or 120
        args.smoke_tags = 1_200
        args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds = 12_000, 10_000, 1_000, 6
        reps = args.reps or 1
        ingest_reps = args.reps or 2
    else:
        args.ingest_tags, args.batch_sizes, args.ingest_rows = 1_000_000, (1_000, 10_000, 100_000), 2_000_000
        args.max_calls = 20_000
        args.memory_tags = 1_000_000
        args.build_sizes, args.stock_fallback, args.extra_ours = (10_000, 100_000), (20_000, 50_000), (408_000,)
        args.stock_budget = args.stock_budget or 240
        args.smoke_tags = 1_200
        args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds = 100_000, 10_000, 1_000, 30
        reps = args.reps or 3
        ingest_reps = args.reps or 5
    args.change_share = 0.10
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")

    import platform

    import asyncua
    import psutil

    log(f"bench_skeleton {'--quick ' if args.quick else ''}on {platform.node()}: {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}, "
        f"numpy {np.__version__}, asyncua {asyncua.__version__ if hasattr(asyncua, '__version__') else '?'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}")
    rep = Report()
    t0 = time.perf_counter()
    for name in only:
        args.reps = ingest_reps if name.startswith("ingest") else reps
        SECTIONS[name](args, rep)
    rep.print_table()
    log(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
