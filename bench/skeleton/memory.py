"""Section 2 of bench_skeleton: TagDB memory per tag, measured in fresh interpreters."""

from __future__ import annotations

import gc
import time
from argparse import Namespace

from bench import citygen
from bench.harness import Report, emit, log, med, rss, run_child, spread
from bench.skeleton import SCRIPT


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
    stored = db.names
    out.update(
        columns=db.memory_bytes() - stored.nbytes,
        names_blob=len(stored._blob),
        names_offsets=stored._offsets.nbytes,
        names_index=stored._hashes.nbytes + stored._order.nbytes,
        mean_name_len=len(stored._blob) / n,
        sample=stored[n // 2],
    )
    emit(out)


def bench_memory(args: Namespace, rep: Report) -> None:
    n = args.memory_tags
    log(f"\n== 2. TagDB memory per tag, {n:,} tags, fresh subprocesses ==")
    rss_runs = [run_child(SCRIPT, ["tagdb-memory", n, "rss"]) for _ in range(args.reps)]
    tr = run_child(SCRIPT, ["tagdb-memory", n, "trace"])
    per_rss = [r["rss_delta"] / n for r in rss_runs]
    per_tr = tr["traced"] / n
    r0 = rss_runs[0]
    parts = {k: r0[k] / n for k in ("columns", "names_blob", "names_offsets", "names_index")}
    log(f"  sample name: {r0['sample']!r} (mean length {r0['mean_name_len']:.1f} bytes)")
    log(
        f"  RSS delta per tag: {spread(per_rss, fmt='{:.1f}')} B; tracemalloc: {per_tr:.1f} B "
        f"(peak during build {tr['traced_peak'] / n:.1f} B); build {spread([r['build_s'] for r in rss_runs])} s"
    )
    log(
        "  by array size, per tag: "
        + ", ".join(f"{k} {v:.1f} B" for k, v in parts.items())
        + f"; total {sum(parts.values()):.1f} B"
    )
    m = med(per_rss)
    rep.section(f"2. TagDB memory, {n:,} tags with names and name->id index")
    rep.add(
        "bytes per tag, RSS delta (fresh process)",
        f"{m:.0f} B",
        "<= 200 B",
        f"{m / 200:.2f}x",
        "PASS" if m <= 200 else "MISS",
    )
    rep.add(
        "bytes per tag, tracemalloc",
        f"{per_tr:.0f} B",
        "<= 200 B",
        f"{per_tr / 200:.2f}x",
        "PASS" if per_tr <= 200 else "MISS",
    )
    rep.add("  of which numeric columns (6)", f"{parts['columns']:.0f} B", "", f"{parts['columns'] / m:.0%}")
    rep.add("  of which names (UTF-8 blob)", f"{parts['names_blob']:.0f} B", "", f"{parts['names_blob'] / m:.0%}")
    rep.add("  of which name offsets", f"{parts['names_offsets']:.0f} B", "", f"{parts['names_offsets'] / m:.0%}")
    rep.add("  of which name hash index", f"{parts['names_index']:.0f} B", "", f"{parts['names_index'] / m:.0%}")
    rep.data["memory"] = {"rss": rss_runs, "trace": tr}
