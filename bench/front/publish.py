"""Sections 1 and 2 of bench_front: notifications per second to one client (throughput) and
field-change-to-client latency with several clients, ours beside the peers in the same run, and
our core's event-loop lag without and with the clients."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.front.context import Context
from bench.front.procs import NodeRun, ensure_node
from bench.front.servers import ASYNCUA, NODE, OURS, Workload, field_rate, in_window, loop_lag, start
from bench.front.workload import NAMESPACE_URI
from bench.harness import fmt_rate, log, med


def run_clients(ctx: Context, url: str, nodes: Path, n: int, seconds: float, tag: str) -> tuple[list[dict], np.ndarray]:
    """``n`` node-opcua clients at once, each monitoring every node of ``nodes`` for a window of
    ``seconds`` after its initial values; their RESULTs and every latency (ms) they measured."""
    ensure_node()
    a = ctx.args
    runs = []
    go = ctx.work / f"go-{tag}"  # the windows start together, once every client has its initial values
    go.unlink(missing_ok=True)
    for k in range(n):
        arg: dict[str, Any] = {
            "endpoint": url,
            "nsUri": NAMESPACE_URI,
            "nodes": str(nodes),
            "seconds": seconds,
            "publishingInterval": a.publishing_ms,
            "queueSize": 1,
            "samplingInterval": 0,
            "initialTimeout": 120,
            "latFile": str(ctx.work / f"lat-{tag}-{k}.f64"),
            "goFile": str(go),
        }
        runs.append(NodeRun("client.js", arg, ctx.work / f"client-{tag}-{k}.log"))
    for r in runs:
        r.wait_ready(150)
    go.touch()
    results = [r.result(seconds + 300) for r in runs]
    lat = [np.fromfile(ctx.work / f"lat-{tag}-{k}.f64", np.float64) for k in range(n)]
    return results, np.concatenate(lat) if lat else np.zeros(0)


def measure(ctx: Context, kind: str, w: Workload, clients: int, tag: str) -> dict[str, Any]:
    """One run: start ``kind``, (ours: a window with no client first), then ``clients`` clients;
    the figures of the run."""
    seconds = ctx.args.seconds
    server, url = start(kind, w, ctx.work, ctx.opts)
    out: dict[str, Any] = {"start_s": server.start_s}
    try:
        if kind == OURS:
            t0 = time.time()
            time.sleep(seconds)  # the no-client baseline window: the field alone
            alone = in_window(server, t0, time.time())
            out["lag_alone_ms"], out["field_alone"] = loop_lag(alone), field_rate(alone)
        t1 = time.time()
        results, lat = run_clients(ctx, url, w.changing or w.names, clients, seconds, tag)
        if kind == OURS:
            busy = in_window(server, t1, time.time())
            out["lag_clients_ms"], out["field_clients"] = loop_lag(busy), field_rate(busy)
        out["rss"] = server.rss()
    finally:
        field = server.stop()
    out["rate"] = sum(r["rate"] for r in results)
    out["accepted"] = sum(r["accepted"] for r in results)
    out["field_changes_per_s"] = field.get("changes", 0) / max(1e-9, field.get("ticks", 0) * w.tick_ms / 1000)
    out["field_late_ticks"] = field.get("late_ticks")
    if lat.size:
        out["p50_ms"], out["p99_ms"], out["max_ms"] = (float(x) for x in np.percentile(lat, [50, 99, 100]))
    log(
        f"  {tag}: {kind}: {fmt_rate(out['rate'])} notifications, p50 {out.get('p50_ms', float('nan')):.0f} ms, "
        f"p99 {out.get('p99_ms', float('nan')):.0f} ms, field late ticks {out['field_late_ticks']}"
    )
    return out


def _medians(runs: list[dict[str, Any]], key: str) -> float:
    xs = [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]
    return med(xs) if xs else float("nan")


def throughput(ctx: Context) -> None:
    """Section 1: one client, ``--items`` items all changed ``--rate`` times a second."""
    a, rep = ctx.args, ctx.report
    w = ctx.changing(a.items, a.rate)
    kinds = [OURS, ASYNCUA, NODE]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(a.repeats):
        for kind in kinds:
            runs[kind].append(measure(ctx, kind, w, 1, f"tp{r}-{kind}"))
    ctx.report.data["throughput"] = runs
    asked = a.items * a.rate
    rate = {k: _medians(runs[k], "rate") for k in kinds}
    ctx.section(
        "1. Throughput",
        f"one client, {a.items:,} items x {a.rate:g}/s ({asked:,.0f} changes/s asked), "
        f"publishing {a.publishing_ms:g} ms, queue 1; medians of {a.repeats}",
    )
    rep.add(
        "notifications/s to one client, ours",
        fmt_rate(rate[OURS]),
        "target >= 100.0 k/s",
        "",
        "met" if rate[OURS] >= 100e3 else "MISSED",
    )
    for k in (ASYNCUA, NODE):
        rep.add(
            f"notifications/s to one client, {k} server",
            fmt_rate(rate[k]),
            "peer, same client, same run",
            f"ours x{rate[OURS] / rate[k]:.2f}" if rate[k] else "",
        )
    core_rows(ctx, runs[OURS], "one client", asked)


def latency(ctx: Context) -> None:
    """Section 2: ``--clients`` clients, each monitoring ``--lat-items`` items changed
    ``--lat-rate`` times a second."""
    a, rep = ctx.args, ctx.report
    w = ctx.changing(a.lat_items, a.lat_rate)
    kinds = [OURS, NODE]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(a.repeats):
        for kind in kinds:
            runs[kind].append(measure(ctx, kind, w, a.clients, f"lat{r}-{kind}"))
    ctx.report.data["latency"] = runs
    ctx.section(
        "2. Latency",
        f"{a.clients} clients x {a.lat_items:,} items, {a.lat_items * a.lat_rate:,.0f} changes/s, "
        f"publishing {a.publishing_ms:g} ms; field change -> client, medians of {a.repeats}",
    )
    p99 = {k: _medians(runs[k], "p99_ms") for k in kinds}
    p50 = {k: _medians(runs[k], "p50_ms") for k in kinds}
    rep.add(
        "latency p50, ours",
        f"{p50[OURS]:.0f} ms",
        f"{NODE}: {p50[NODE]:.0f} ms",
        f"x{p50[OURS] / p50[NODE]:.2f}" if p50[NODE] else "",
    )
    rep.add(
        "latency p99, ours",
        f"{p99[OURS]:.0f} ms",
        "target <= 100 ms",
        f"{NODE}: {p99[NODE]:.0f} ms",
        "met" if p99[OURS] <= 100 else "MISSED",
    )
    rep.add(
        "latency max, ours",
        f"{_medians(runs[OURS], 'max_ms'):.0f} ms",
        f"{NODE}: {_medians(runs[NODE], 'max_ms'):.0f} ms",
    )
    for k in kinds:
        rep.add(
            f"notifications/s, all clients, {k}",
            fmt_rate(_medians(runs[k], "rate")),
            f"{a.clients * a.lat_items * a.lat_rate:,.0f}/s expected",
        )
    core_rows(ctx, runs[OURS], f"{a.clients} clients", a.lat_items * a.lat_rate)


def core_rows(ctx: Context, ours: list[dict[str, Any]], clients: str, asked: float) -> None:
    """What the clients cost our core, in the same runs: the changes/s the field made and the
    event loop's longest lag, without clients and with them (equal when the front is isolated)."""
    rep = ctx.report
    for label, key in (("no client", "alone"), (clients, "clients")):
        rep.add(
            f"ours: field changes/s taken by the core, {label}",
            fmt_rate(_medians(ours, f"field_{key}")),
            f"{asked:,.0f}/s asked",
        )
    for label, key in (("no client", "alone"), (clients, "clients")):
        rep.add(f"ours: core event loop lag, longest, {label}", f"{_medians(ours, f'lag_{key}_ms'):.0f} ms")
