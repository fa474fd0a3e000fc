"""Sections 1 and 2 of bench_front: notifications per second to one client (throughput) and
field-change-to-client latency with several clients, ours beside the peers in the same run, and
our core's event-loop lag without and with the clients.

The measured window starts ``--settle`` seconds after the start signal (every client has its
initial values), for every server alike: a server still catching up with what came in while the
clients subscribed (5 x 10,000 CreateMonitoredItems at once) would otherwise put that backlog in
the window, as extra notifications (more than the field made) and as the latency tail. The
settle period is measured too and printed apart (its p99, max and notifications per change).

The clients run at ``--client-nice`` (default 0, the peers' and the core's priority). At 10,
our front's niceness, a client no longer outranks the front it measures; but on a machine
loaded by other work at 0 the clients then starve themselves and measure their own delay
(measured on a shared 2-core machine at load 11-14: ours 0.27-0.29 notifications per change
with the clients at 10, 0.97 at 0). Compare both settings on a quiet machine."""

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


def run_clients(
    ctx: Context, url: str, nodes: Path, n: int, seconds: float, tag: str
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """``n`` node-opcua clients at once, each monitoring every node of ``nodes`` for a window of
    ``seconds`` that starts ``--settle`` s after every client has its initial values; their
    RESULTs, every latency (ms) they measured in the window and in the settle period before it."""
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
            "seriesFile": str(ctx.work / f"series-{tag}-{k}.f64"),
            "goFile": str(go),
            "settleSeconds": a.settle,
        }
        runs.append(NodeRun("client.js", arg, ctx.work / f"client-{tag}-{k}.log", nice=a.client_nice))
    for r in runs:
        r.wait_ready(150)
    go.touch()
    results = [r.result(a.settle + seconds + 300) for r in runs]
    lat = [np.fromfile(ctx.work / f"lat-{tag}-{k}.f64", np.float64) for k in range(n)]
    settle = []
    for k in range(n):  # (arrival ms from the start signal, latency ms) pairs
        series = np.fromfile(ctx.work / f"series-{tag}-{k}.f64", np.float64).reshape(-1, 2)
        settle.append(series[(series[:, 0] >= 0) & (series[:, 0] < 1000 * a.settle), 1])
    return results, np.concatenate(lat) if lat else np.zeros(0), np.concatenate(settle) if settle else np.zeros(0)


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
        results, lat, settle = run_clients(ctx, url, w.changing or w.names, clients, seconds, tag)
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
    if settle.size:
        out["settle_p99_ms"], out["settle_max_ms"] = (float(x) for x in np.percentile(settle, [99, 100]))
    # Notifications per field change and per client: 1.0 when each client gets each change once.
    made = clients * out["field_changes_per_s"]
    out["per_change"] = out["rate"] / made if made else float("nan")
    settle_s = ctx.args.settle
    if settle_s and made:
        out["settle_per_change"] = sum(r.get("settled", 0) for r in results) / settle_s / made
    log(
        f"  {tag}: {kind}: {fmt_rate(out['rate'])} notifications ({out['per_change']:.3f} per change and client), "
        f"p50 {out.get('p50_ms', float('nan')):.0f} ms, p99 {out.get('p99_ms', float('nan')):.0f} ms, "
        f"max {out.get('max_ms', float('nan')):.0f} ms; settle p99 {out.get('settle_p99_ms', float('nan')):.0f} ms, "
        f"{out.get('settle_per_change', float('nan')):.3f} per change; field late ticks {out['field_late_ticks']}"
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
    settle_rows(ctx, runs, kinds)
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
    settle_rows(ctx, runs, kinds)
    core_rows(ctx, runs[OURS], f"{a.clients} clients", a.lat_items * a.lat_rate)


def settle_rows(ctx: Context, runs: dict[str, list[dict[str, Any]]], kinds: list[str]) -> None:
    """Notifications per field change in the window, and what the settle period before it saw."""
    rep = ctx.report
    for k in kinds:
        rep.add(f"notifications per field change and client, {k}", f"{_medians(runs[k], 'per_change'):.3f}", "1.000")
    if not ctx.args.settle:
        return
    for k in kinds:
        rep.add(
            f"settle ({ctx.args.settle:g} s after the clients' setup), {k}: p99 / max",
            f"{_medians(runs[k], 'settle_p99_ms'):.0f} / {_medians(runs[k], 'settle_max_ms'):.0f} ms",
            f"{_medians(runs[k], 'settle_per_change'):.3f} per change",
        )


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
