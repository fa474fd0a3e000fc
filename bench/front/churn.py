"""Section 5 of bench_front: session churn. Sessions opened, subscribed and closed by a
node-opcua client; our server's memory before, after a warm-up, and after the churn.

The resident memory is read per process (the core, and the front when it runs in its own
process): the front is where the sessions live, and the core must not move either."""

from __future__ import annotations

import time

import psutil

from bench.front.context import Context
from bench.front.procs import run_node
from bench.front.servers import OURS, start
from bench.front.space import settled_rss
from bench.front.workload import NAMESPACE_URI
from bench.harness import log

# Memory a closed session frees is given back to the system within this time (scada/opcua/
# sessions.py: a malloc_trim after TRIM_AFTER_S, at most every TRIM_EVERY_S): read after it.
SETTLE_S = 12.0


def _role(proc: psutil.Process) -> str:
    """What a child of our server is, by its command line: the front, or another helper."""
    cmd = " ".join(proc.cmdline())
    if "scada.front.process" in cmd:
        return "front"
    return "resource tracker" if "resource_tracker" in cmd else f"child {proc.pid}"


def rss_parts(pid: int) -> dict[str, int]:
    """Resident memory of the server process ("core") and of each child ("front"...), bytes."""
    try:
        p = psutil.Process(pid)
        parts = {"core": int(p.memory_info().rss)}
        for child in p.children(recursive=True):
            parts[_role(child)] = parts.get(_role(child), 0) + int(child.memory_info().rss)
        return parts
    except psutil.NoSuchProcess:
        return {}


def _mb(parts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v / 2**20:.1f}" for k, v in parts.items()) + " MB"


def churn(ctx: Context) -> None:
    """``--sessions`` sessions (``--churn-parallel`` at once), each monitoring ``--churn-items``."""
    a, rep = ctx.args, ctx.report
    w = ctx.changing(a.items, 1.0)  # values keep changing while the sessions come and go
    server, url = start(OURS, w, ctx.work, ctx.opts)
    arg = {
        "endpoint": url,
        "nsUri": NAMESPACE_URI,
        "nodes": str(w.changing),
        "parallel": a.churn_parallel,
        "items": a.churn_items,
    }
    pid = server.proc.pid
    try:
        before = settled_rss(server)
        parts_before = rss_parts(pid)
        warm = run_node("churn.js", {**arg, "sessions": a.churn_warmup}, ctx.work / "churn-warmup.log", 600)
        time.sleep(SETTLE_S)
        after_warm = settled_rss(server)
        parts_warm = rss_parts(pid)
        res = run_node("churn.js", {**arg, "sessions": a.sessions}, ctx.work / "churn.log", 3600)
        time.sleep(SETTLE_S)
        after = settled_rss(server)
        parts_after = rss_parts(pid)
        # The control: the same time again with no session. What grows here too (the core's
        # store and caches warming up) is not the sessions'.
        time.sleep(res["seconds"])
        parts_idle = rss_parts(pid)
    finally:
        server.stop()
    ctx.report.data["churn"] = {
        "before": before,
        "after_warmup": after_warm,
        "after": after,
        "parts": {"before": parts_before, "after_warmup": parts_warm, "after": parts_after, "idle": parts_idle},
        "run": res,
        "warmup": warm,
    }
    log(
        f"  churn: {res['sessions']} sessions ({res['failed']} failed) in {res['seconds']:.0f} s; RSS "
        f"{before / 2**20:.0f} -> {after_warm / 2**20:.0f} -> {after / 2**20:.0f} MB "
        f"({_mb(parts_before)} -> {_mb(parts_warm)} -> {_mb(parts_after)})"
    )
    ctx.section(
        "5. Churn",
        f"{a.sessions:,} sessions opened, subscribed ({a.churn_items} items), closed; "
        f"{a.churn_parallel} at once, after a warm-up of {a.churn_warmup}",
    )
    rep.add(
        "sessions completed / failed",
        f"{res['sessions']} / {res['failed']}",
        f"in {res['seconds']:.0f} s",
        "; ".join(res.get("errors", []))[:60],
    )
    rep.add("ours: RSS before any session", f"{before / 2**20:.1f} MB", _mb(parts_before))
    rep.add(
        "ours: RSS after the warm-up",
        f"{after_warm / 2**20:.1f} MB",
        f"{(after_warm - before) / 2**20:+.1f} MB",
        _mb(parts_warm),
    )
    grown = after - after_warm
    rep.add(
        f"ours: RSS after {res['sessions']:,} more sessions",
        f"{after / 2**20:.1f} MB",
        f"{grown / 2**20:+.1f} MB since the warm-up",
        f"{grown / max(1, res['sessions']) / 1024:+.1f} KB/session",
        "back to its level" if grown <= 0.02 * after_warm else "GROWS",
    )
    for name, now in parts_after.items():
        then, idle = parts_warm.get(name), parts_idle.get(name)
        if then is not None:
            rep.add(
                f"ours: {name} RSS since the warm-up",
                f"{(now - then) / 2**20:+.1f} MB",
                f"{(now - then) / max(1, res['sessions']) / 1024:+.1f} KB/session",
                f"then {(idle - now) / 2**20:+.1f} MB in {res['seconds']:.0f} s without sessions"
                if idle is not None
                else "",
            )
