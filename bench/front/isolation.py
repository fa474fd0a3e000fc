"""Section 4 of bench_front: isolation on the whole simulated city. The city simulator (as
``make demo CITY=dijon`` starts it) and the real server (``python -m city_scada run``, ``--front``
passed through); then, each for a window and compared with the no-client window of the same run:
``--clients`` HMI clients each monitoring up to 50,000 items plus one client browsing the whole
tree; clients connecting and disconnecting in a loop; a client that stops reading (SIGSTOP).
The figures are the server's own status lines (late polls, missed cycles, event-loop lag) and
the alarm engine's field-to-event latency (bench/front/alarm_probe.py: a fault injected through
the simulator's control port, the activation read from the server's alarm journal), probed
all along each window."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from bench.front.alarm_probe import AlarmProbe
from bench.front.context import Context
from bench.front.procs import NodeRun, Served, ensure_node
from bench.front.servers import in_window, loop_lag, status_lines
from bench.front.space import settled_rss
from bench.front.workload import NAMESPACE_URI, all_names, write_names
from bench.harness import PY, ROOT, Mosquitto, free_port, load_config, log, med, scada_run, wait_port


def _window(server: Served, t0: float, t1: float) -> dict[str, Any]:
    """Late polls, missed cycles (their growth) and the longest loop lag over [t0, t1]."""
    lines = in_window(server, t0, t1)
    if len(lines) < 2:
        return {"late": float("nan"), "missed": float("nan"), "lag_ms": float("nan"), "lines": len(lines)}
    return {
        "late": lines[-1]["late_polls"] - lines[0]["late_polls"],
        "missed": lines[-1]["missed_cycles"] - lines[0]["missed_cycles"],
        "lag_ms": loop_lag(lines[1:]),
        "lines": len(lines),
        "devices": lines[-1]["devices"],
    }


def _probed(probe: AlarmProbe) -> dict[str, Any]:
    """Stop a window's alarm probe; its figures."""
    probe.stop.set()
    probe.join(probe.timeout + 30)
    lat = probe.latencies_ms
    return {"alarm_ms": med(lat) if lat else float("nan"), "alarm_n": len(lat), "alarm_missed": probe.missed}


def _wait_online(server: Served, timeout: float) -> str:
    """Wait until the status line shows every device online (or ``timeout``); the last count."""
    deadline = time.monotonic() + timeout
    seen = "?"
    while time.monotonic() < deadline:
        lines = status_lines(server)
        if lines:
            seen = lines[-1]["devices"]
            online, total = (int(x) for x in seen.split("/"))
            if total and online == total:
                break
        time.sleep(1.0)
    return seen


def isolation(ctx: Context) -> None:
    """The phases above, one run; rows: each phase beside the no-client window."""
    a, rep = ctx.args, ctx.report
    ensure_node()
    work = ctx.work / "isolation"
    work.mkdir()
    base, opc_sim, control, opc = 30000, free_port(), free_port(), free_port()
    broker = Mosquitto(work / "mqtt") if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else None
    sim_args = ["-m", "simulators", "city", "--preset", a.city, "--base-port", str(base), "--opcua-port", str(opc_sim)]
    sim_args += ["--control-port", str(control), "--config-out", str(work / "config"), "--acceleration", "1"]
    sim_args += ["--types-from", str(ROOT / "tags.yaml"), "--log-json", "--event-loop", a.event_loop]
    if broker:
        sim_args += ["--mqtt", f"127.0.0.1:{broker.port}"]
    sim = Served("simulator", [PY, *sim_args], work / "sim.log")
    server: Served | None = None
    phases: dict[str, dict[str, Any]] = {}
    try:
        wait_port(control, 300)
        url = f"opc.tcp://127.0.0.1:{opc}/scada/"
        run = scada_run(work / "config", work / "data", url, "--status-interval", "1", "--log-json")
        run += ["--event-loop", a.event_loop, *(["--front", a.front] if a.front else [])]
        server = Served("server", [PY, *run], work / "server.log")
        wait_port(opc, 600)
        log(f"  isolation: devices online {_wait_online(server, 180)}")
        names = all_names(work / "config")
        nodes = write_names(work / "nodes.txt", names[: a.iso_items])
        arg = {"endpoint": url, "nsUri": NAMESPACE_URI, "nodes": str(nodes), "publishingInterval": a.publishing_ms}
        arg |= {"queueSize": 1, "samplingInterval": 0, "initialTimeout": 600}
        w = a.iso_seconds
        config = load_config(work / "config")
        # Round the cabinets: when a probe comes back to one, its alarm has long cleared (not latching).
        cabinets = itertools.cycle([d.name for d in config.devices if d.type == "lighting_cabinet"])
        journal = work / "data" / "alarms.sqlite"

        def probe() -> AlarmProbe:
            p = AlarmProbe(control, journal, cabinets)
            p.start()
            return p

        t0, p = time.time(), probe()
        time.sleep(w)  # the no-client window
        phases["no client"] = {**_window(server, t0, time.time()), "rss": server.rss(), **_probed(p)}

        clients = [NodeRun("client.js", {**arg, "seconds": w}, work / f"load-{k}.log") for k in range(a.clients)]
        browse = NodeRun("browse.js", {**arg, "batch": a.browse_batch}, work / "browse.log")
        for c in clients:
            c.wait_ready(900)
        t1, p = time.time(), probe()
        results = [c.result(w + 600) for c in clients]
        phases[f"{a.clients} clients x {len(names[: a.iso_items]):,} items, 1 browsing"] = {
            **_window(server, t1, time.time()),
            "rss": server.rss(),
            "rate": sum(r["rate"] for r in results),
            "browse": browse.result(1800),
            **_probed(p),
        }

        t2, p = time.time(), probe()
        churn = NodeRun(
            "churn.js", {**arg, "sessions": a.iso_sessions, "parallel": 5, "items": 100}, work / "churn.log"
        )
        res = churn.result(3600)
        phases[f"{res['sessions']} sessions opened and closed"] = {
            **_window(server, t2, time.time()),
            "rss": server.rss(),
            **_probed(p),
        }

        stopped = NodeRun("client.js", {**arg, "seconds": 3 * w}, work / "stopped.log")
        other = NodeRun("client.js", {**arg, "seconds": w}, work / "reader.log")
        stopped.wait_ready(900)
        other.wait_ready(900)
        rss0 = settled_rss(server)
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        t3, p = time.time(), probe()
        reader = other.result(w + 600)
        phases["a stopped client (SIGSTOP) and a reader"] = {
            **_window(server, t3, time.time()),
            "rss": server.rss(),
            "rss_growth": server.rss() - rss0,
            "rate": reader["rate"],
            **_probed(p),
        }
        os.kill(stopped.proc.pid, signal.SIGKILL)
        stopped.proc.wait()
    finally:
        if server:
            server.stop(60)
        sim.stop(60)
        if broker:
            broker.stop()
    ctx.report.data["isolation"] = phases
    ctx.section("4. Isolation", f"whole simulated '{a.city}', real `scada run`; {a.iso_seconds:g} s windows")
    base_ = phases["no client"]
    for name, ph in phases.items():
        rep.add(
            f"late polls / missed cycles, {name}",
            f"{ph['late']} / {ph['missed']}",
            "target 0 / 0" if name != "no client" else "baseline",
            f"loop lag {ph['lag_ms']:.0f} ms",
            "" if name == "no client" else ("met" if ph["late"] == 0 and ph["missed"] == 0 else "MISSED"),
        )
    for name, ph in phases.items():
        rep.add(
            f"alarm field-to-event latency, {name}",
            f"{ph['alarm_ms']:.0f} ms",
            "baseline" if name == "no client" else f"unchanged: {base_['alarm_ms']:.0f} ms",
            f"n={ph['alarm_n']}, missed {ph['alarm_missed']}",
        )
    rep.add(
        "server RSS, no client / after the phases",
        f"{base_['rss'] / 2**20:.0f} MB",
        " / ".join(f"{ph['rss'] / 2**20:.0f}" for ph in phases.values()) + " MB",
    )
    for ph in phases.values():
        if "rss_growth" in ph:
            rep.add(
                "server RSS growth while a client is stopped",
                f"{ph['rss_growth'] / 2**20:+.1f} MB",
                f"the reader got {ph['rate']:,.0f} notifications/s",
            )
