"""Section 3 of bench_front: a lean address space. Server memory per tag (the slope of the
resident memory between two city sizes, conditions included), the start time of a large city,
and Browse and Read of many nodes per request, ours beside node-opcua's server on a tree of the
same shape and size."""

from __future__ import annotations

import time
from typing import Any

import psutil

from bench.front.context import Context
from bench.front.procs import Served, run_node
from bench.front.servers import ASYNCUA, NODE, OURS, start
from bench.front.workload import NAMESPACE_URI, read_names
from bench.harness import fmt_rate, log, med


def settled_rss(server: Served, timeout: float = 30.0) -> int:
    """The server's resident memory once it stops moving (two readings 0.5 s apart within 1 %)."""
    last = server.rss()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server.rss()
        if abs(now - last) <= 0.01 * last:
            return now
        last = now
    return last


def core_rss(server: Served) -> int:
    """The resident memory of the server's own process (without a front process, its child)."""
    try:
        return int(psutil.Process(server.proc.pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def memory(ctx: Context) -> None:
    """RSS at the two ``--space-sizes`` for ours and node-opcua; the slope per tag."""
    a, rep = ctx.args, ctx.report
    sizes = sorted(a.space_sizes)
    kinds = [OURS, NODE]
    rss: dict[str, dict[int, list[float]]] = {k: {n: [] for n in sizes} for k in kinds}
    start_s: dict[str, dict[int, list[float]]] = {k: {n: [] for n in sizes} for k in kinds}
    core: dict[int, list[float]] = {n: [] for n in sizes}  # ours: the core process alone (the rest: its front)
    tags = {}
    for n in sizes:
        w = ctx.tree(n)
        tags[n] = len(read_names(w.names))
        for _ in range(a.repeats):
            for kind in kinds:
                server, _ = start(kind, w, ctx.work, ctx.opts)
                try:
                    rss[kind][n].append(settled_rss(server))
                    start_s[kind][n].append(server.start_s)
                    if kind == OURS:
                        core[n].append(core_rss(server))
                finally:
                    server.stop()
                log(
                    f"  memory: {kind} {tags[n]:,} tags: {rss[kind][n][-1] / 2**20:.0f} MB, "
                    f"serving after {start_s[kind][n][-1]:.1f} s"
                )
    ctx.report.data["memory"] = {"tags": tags, "rss": rss, "start_s": start_s, "core_rss": core}
    n1, n2 = sizes[0], sizes[-1]
    ctx.section(
        "3. Lean address space",
        f"memory between {tags[n1]:,} and {tags[n2]:,} tags (shipped alarms on every cabinet), "
        f"medians of {a.repeats}; the peer serves the same tree without properties and conditions",
    )
    slope = {k: (med(rss[k][n2]) - med(rss[k][n1])) / (tags[n2] - tags[n1]) for k in kinds}
    for k in kinds:
        for n in sizes:
            rep.add(
                f"RSS at {tags[n]:,} tags, {k}",
                f"{med(rss[k][n]) / 2**20:.0f} MB",
                f"serving after {med(start_s[k][n]):.1f} s",
            )
    part = {
        "core": (med(core[n2]) - med(core[n1])) / (tags[n2] - tags[n1]),
        "front": (med(rss[OURS][n2]) - med(core[n2]) - med(rss[OURS][n1]) + med(core[n1])) / (tags[n2] - tags[n1]),
    }
    rep.add(
        "server memory per tag (slope), ours",
        f"{slope[OURS] / 1024:.2f} KB",
        "target <= 1.5 KB",
        f"{NODE}: {slope[NODE] / 1024:.2f} KB",
        "met" if slope[OURS] <= 1.5 * 1024 else "MISSED",
    )
    rep.add(
        "of which, ours: the core process / its front process",
        f"{part['core'] / 1024:.2f} / {part['front'] / 1024:.2f} KB",
        "per tag, slope (inline front: all in the core)",
    )


def start_time(ctx: Context) -> None:
    """Spawn-to-serving time and memory of ours on a city of ``--start-tags`` (once)."""
    a, rep = ctx.args, ctx.report
    w = ctx.tree(a.start_tags)
    n = len(read_names(w.names))
    try:
        server, _ = start(OURS, w, ctx.work, ctx.opts, timeout=a.start_timeout)
    except TimeoutError:
        rep.add(
            f"start of {n:,} tags to OPC UA serving, ours", f"> {a.start_timeout:.0f} s", "target <= 60 s", "", "MISSED"
        )
        return
    try:
        rss = settled_rss(server, 60)
        core = core_rss(server)
    finally:
        server.stop(300)
    ctx.report.data["start"] = {"tags": n, "start_s": server.start_s, "rss": rss, "core_rss": core}
    log(f"  start: ours {n:,} tags serving after {server.start_s:.1f} s, {rss / 2**20:.0f} MB")
    rep.add(
        f"start of {n:,} tags to OPC UA serving, ours",
        f"{server.start_s:.1f} s",
        "target <= 60 s",
        "",
        "met" if server.start_s <= 60 else "MISSED",
    )
    rep.add(
        f"RSS at {n:,} tags, ours",
        f"{rss / 2**20:.0f} MB",
        f"{rss / n / 1024:.2f} KB per tag (total / tags); core {core / 2**20:.0f} MB, front {(rss - core) / 2**20:.0f} MB",
    )


def browse_read(ctx: Context) -> None:
    """Walk the whole tree with ``--browse-batch`` nodes per Browse, then Read every tag's Value
    as many per request: nodes/s, ours beside node-opcua (the target) and stock asyncua on the same
    tag tree (ours walks its properties and conditions too: the Browse rate is per node returned)."""
    a, rep = ctx.args, ctx.report
    w = ctx.tree(a.browse_tags)
    kinds = [OURS, NODE, ASYNCUA]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(a.repeats):
        for kind in kinds:
            server, url = start(kind, w, ctx.work, ctx.opts)
            try:
                arg = {"endpoint": url, "nsUri": NAMESPACE_URI, "batch": a.browse_batch, "nodes": str(w.names)}
                res = run_node("browse.js", arg, ctx.work / f"browse-{r}-{kind}.log", 1800)
            finally:
                server.stop()
            runs[kind].append(res)
            log(
                f"  browse: {kind}: {res['nodes']:,} nodes in {res['browse_s']:.1f} s "
                f"({res['browse_requests']} requests), read {res['read_values']:,} values in {res['read_s']:.1f} s"
            )
    ctx.report.data["browse"] = runs
    n = len(read_names(w.names))
    ctx.section("3b. Browse and Read", f"{n:,} tags, {a.browse_batch} nodes per request, medians of {a.repeats}")
    for what, key in (("Browse", "browse_rate"), ("Read", "read_rate")):
        ours, peer, stock = (med(r[key] for r in runs[k]) for k in (OURS, NODE, ASYNCUA))
        rep.add(
            f"{what}: nodes/s, ours",
            fmt_rate(ours),
            f"{NODE}: {fmt_rate(peer)} (target: at least)",
            f"x{ours / peer:.2f}",
            "met" if ours >= peer else "MISSED",
        )
        rep.add(f"{what}: nodes/s, stock asyncua", fmt_rate(stock), "", f"ours x{ours / stock:.2f}")
    rep.add(
        "nodes walked under City, ours / node-opcua / asyncua",
        f"{runs[OURS][0]['nodes']:,}",
        f"{runs[NODE][0]['nodes']:,} / {runs[ASYNCUA][0]['nodes']:,} (ours adds properties, alarm folders, conditions)",
    )
