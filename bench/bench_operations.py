"""Operations on the whole simulated city (issue 16): citizens' reports through Open311, the
dispatch decision in the running server, the map feed and the metrics, with the field's polling
running.

    .venv/bin/python bench/bench_operations.py [--city dijon] [--orders 1000] [--repeats 3]

Starts, on loopback, Mosquitto, the city simulator (``--preset dijon``: 1,100 lighting cabinets on
Modbus TCP, 113 junctions on OPC UA, 26 bollards and 205 crew vehicles through Mosquitto; the
vehicles play the crews' orders) and the real ``scada run`` with its HTTP server (``--http``, in
the front process beside the OPC UA server), and measures:

- **Open311 POSTs accepted per second**: ``--orders`` valid streetlight reports, each a few metres
  from a different real cabinet, POSTed form-encoded by a load generator in its own process
  (``--concurrency`` aiohttp client sessions, one connection each, all from 127.0.0.1). The bench
  **lifts the per-address rate limit** in its operations.yaml (10/min per address would measure the
  limiter, not the server). The first run creates one order per report (``--orders`` open orders);
  the later runs POST the same reports again, which attach to those orders (the duplicate path).
  The baseline, in the same run and by the same generator: aiohttp's own minimal server (a form
  parsed, a JSON 201) in a process of its own on the same machine.
- **The dispatch decision with 205 vehicles and ``--orders`` open orders**, in the running server:
  reports near junctions and bollards (their crews are still free: the lighting crews are all busy
  by then), one at a time; from the journal (``workorders.sqlite``, read-only), the time from the
  order's ``create`` event to its ``assign`` event; and the time from the POST to the assignment
  seen in the journal.
- **GET /map.geojson and /metrics latency**, probed every ``PROBE_S`` by the bench while the load
  runs, and the same probes on the idle server before it.
- **Late polls / missed cycles** of the core (its status lines, ``--log-json``) during each load,
  beside a quiet window of the same length before any order, and a window with the open orders
  and no HTTP load (what the open orders cost the core by themselves).

Every figure is a median over ``--repeats`` (latencies: percentiles over the probes); the load
average is printed with the table: the machine is shared. A part that fails makes its rows
``NOT MEASURED`` and the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_control import load_text, quiet_window, wait_online, window  # noqa: E402
from bench.harness import (  # noqa: E402
    PY,
    RESULT,
    ROOT,
    Mosquitto,
    Process,
    Report,
    emit,
    free_port,
    free_port_range,
    load_config,
    log,
    med,
    scada_run,
    wait_port,
)

UNLIMITED = {"rate_per_minute": 1_000_000_000, "rate_burst": 1_000_000}  # the limiter is not measured
PROBE_S = 0.5  # one GET of the map or the metrics every half second: a map client refreshes every few s
SPACING_M = 60.0  # above open311.radius_m (50): each report its own order
OFFSET_DEG = 0.00005  # about 5 m north of the cabinet: "near", and nearer to it than to any other
SERVICES = {"lighting": "streetlight", "traffic": "traffic_signal", "bollard": "bollard"}


# --------------------------------------------------------------------------------------------
# The load generator and the baseline server (each in a process of its own)


async def post_all(url: str, bodies: list[dict[str, str]], concurrency: int) -> dict[str, Any]:
    """POST every body (form-encoded) with ``concurrency`` sessions of one connection each; the
    wall time, the statuses, the answers' ids in order (None where refused)."""
    import aiohttp

    queue = list(enumerate(bodies))
    queue.reverse()
    statuses: dict[str, int] = {}
    answers: list[Any] = [None] * len(bodies)
    errors: list[str] = []

    async def worker() -> None:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
            while queue:
                k, body = queue.pop()
                try:
                    async with s.post(url, data=body) as r:
                        text = await r.text()
                        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                        if r.status == 201:
                            answers[k] = json.loads(text)[0].get("service_request_id")
                        elif len(errors) < 5:
                            errors.append(f"{r.status} {text[:200]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - t0, "statuses": statuses, "ids": answers, "errors": errors}


def load_child(url: str, bodies_file: str, concurrency: int) -> None:
    from common import eventloop

    bodies = json.loads(Path(bodies_file).read_text())
    emit(eventloop.run(post_all(url, bodies, concurrency)))


def hello_child(port: int) -> None:
    """aiohttp's own minimal server for the same request: the form parsed, a JSON 201 (the
    baseline of the POST rate: what aiohttp costs, our validation and the core's work left out)."""
    from aiohttp import web

    from common import eventloop

    n = 0

    async def post(request: web.Request) -> web.Response:
        nonlocal n
        form = await request.post()
        n += 1
        return web.json_response([{"service_request_id": f"H-{n}", "code": form.get("service_code")}], status=201)

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.post("/open311/v2/requests.json", post)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    eventloop.run(main())


async def run_load(url: str, bodies: list[dict[str, str]], concurrency: int, work: Path) -> dict[str, Any]:
    """The load generator in its own process (the bench's own loop stays free for the probes)."""
    path = work / f"bodies-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(bodies))
    proc = await asyncio.create_subprocess_exec(
        PY,
        str(Path(__file__).resolve()),
        "--load",
        url,
        str(path),
        str(concurrency),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    for ln in out.decode().splitlines():
        if ln.startswith(RESULT):
            result: dict[str, Any] = json.loads(ln[len(RESULT) :])
            return result
    raise RuntimeError(f"load generator failed (rc={proc.returncode}): {err.decode()[-2000:]}")


# --------------------------------------------------------------------------------------------
# Probes of the map and the metrics


@dataclass
class Probes:
    map_s: list[float] = field(default_factory=list)
    metrics_s: list[float] = field(default_factory=list)
    map_bytes: int = 0
    failures: list[str] = field(default_factory=list)


async def probe(base: str, stop: asyncio.Event, probes: Probes) -> None:
    """GET /map.geojson and /metrics in turn every PROBE_S until ``stop``."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        k = 0
        while not stop.is_set():
            path, into = ("/map.geojson", probes.map_s) if k % 2 == 0 else ("/metrics", probes.metrics_s)
            t0 = time.perf_counter()
            try:
                async with s.get(base + path) as r:
                    body = await r.read()
                    if r.status != 200:
                        probes.failures.append(f"{path} {r.status}")
                    else:
                        into.append(time.perf_counter() - t0)
                        if path == "/map.geojson":
                            probes.map_bytes = len(body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                probes.failures.append(f"{path} {type(exc).__name__}")
            k += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_S)


def pct(xs: list[float]) -> str:
    if not xs:
        return "none"
    p50, p90 = np.percentile(xs, [50, 90])
    return f"{p50 * 1e3:.0f} / {p90 * 1e3:.0f} / {max(xs) * 1e3:.0f} ms"


# --------------------------------------------------------------------------------------------
# The journal


def journal_events(path: Path) -> list[tuple[int, str, str, str]]:
    """(time_ns, order, event, crew) of every event so far (read-only: the server writes it)."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return list(db.execute("SELECT time_ns, order_id, event, coalesce(crew, '') FROM order_events ORDER BY id"))


def report_orders(path: Path, ids: list[str]) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        marks = ",".join("?" * len(ids))
        return dict(db.execute(f"SELECT id, order_id FROM reports WHERE id IN ({marks})", ids))  # noqa: S608


def open_orders(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return dict(db.execute("SELECT state, count(*) FROM orders GROUP BY state"))


# --------------------------------------------------------------------------------------------
# The bench


@dataclass
class Bench:
    config: Any
    server: Process
    report: Report
    args: argparse.Namespace
    work: Path
    base: str = ""  # the server's HTTP root (Open311: the citizens' listener)
    internal: str = ""  # the map feed and /metrics (the internal listener)
    hello: str = ""  # the baseline server's POST URL
    failed: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.work / "data" / "workorders.sqlite"

    def devices(self, cls: str) -> list[Any]:
        return [d for d in self.config.devices if str(self.config.types[d.type].cls) == cls]

    def body(self, d: Any, cls: str, k: int) -> dict[str, str]:
        """A valid report a few metres from device ``d``, with contact details (stored, never shown)."""
        return {
            "service_code": SERVICES[cls],
            "lat": f"{d.lat + OFFSET_DEG:.6f}",
            "long": f"{d.lon:.6f}",
            "description": f"bench report {k}: the light near {d.name} is out",
            "email": f"citizen{k}@example.org",
            "first_name": "Bench",
        }

    def unlocated(self, k: int) -> dict[str, str]:
        """A valid report located by an address only (an unlocated order of its own)."""
        return {
            "service_code": SERVICES["lighting"],
            "address_string": f"{k} rue du Banc d'Essai, Dijon",
            "description": f"bench report {k}: a street light is out",
        }


def apart(devices: list[Any], spacing_m: float) -> list[Any]:
    """Devices at least ``spacing_m`` from each other (greedy, in the configuration's order)."""
    from scada.control.zones import great_circle_m

    lat = np.array([d.lat for d in devices], float)
    lon = np.array([d.lon for d in devices], float)
    keep: list[int] = []
    for i in range(len(devices)):
        if not keep or great_circle_m(lat[keep], lon[keep], lat[i], lon[i]).min() > spacing_m:
            keep.append(i)
    return [devices[i] for i in keep]


async def idle_probes(b: Bench, seconds: float) -> Probes:
    p = Probes()
    stop = asyncio.Event()
    task = asyncio.create_task(probe(b.internal, stop, p))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return p


async def posts(b: Bench) -> None:
    """The POST rate: the baseline server, then ours (first run creates, later runs attach)."""
    rep, args = b.report, b.args
    cabinets = apart(b.devices("lighting"), SPACING_M)[: args.orders]
    bodies = [b.body(d, "lighting", k) for k, d in enumerate(cabinets)]
    # Cabinets closer than the attach radius share an order: the rest of the orders are reports
    # located by an address only (each an order of its own, unlocated).
    unlocated = [b.unlocated(k) for k in range(len(bodies), args.orders)]
    # The later runs: every report a duplicate of a located one (they attach to its order).
    again = [bodies[k % len(bodies)] for k in range(args.orders)]
    base_rates = []
    for _ in range(args.repeats):
        r = await run_load(b.hello, again, args.concurrency, b.work)
        if r["statuses"].get("201", 0) != len(again):
            raise RuntimeError(f"the baseline server answered {r['statuses']}: {r['errors']}")
        base_rates.append(len(again) / r["seconds"])
    b.data["hello_rates"] = base_rates
    idle = await idle_probes(b, 10.0)
    b.data["idle_probes"] = [idle.map_s, idle.metrics_s]
    quiet = await quiet_window(b.server, 10.0, pause=0.0)
    url = b.base + "/open311/v2/requests.json"
    runs = []
    for k in range(args.repeats):
        sent = bodies + unlocated if k == 0 else again
        log(f"  [posts] run {k + 1}: {len(sent)} reports (load average {load_text()})")
        p = Probes()
        stop = asyncio.Event()
        t0w = time.time()
        prober = asyncio.create_task(probe(b.internal, stop, p))
        r = await run_load(url, sent, args.concurrency, b.work)
        stop.set()
        await prober
        during = await window(b.server, t0w, time.time())
        runs.append((r, p, during))
        if k == 0:
            ids = [x for x in r["ids"] if x]
            b.data["created_orders"] = sorted(set(report_orders(b.journal, ids).values())) if ids else []
        await asyncio.sleep(1.0)
    b.data["post_runs"] = [(r["seconds"], r["statuses"], w.__dict__) for r, _, w in runs]
    rates = [r["statuses"].get("201", 0) / r["seconds"] for r, _, _ in runs]
    hello = med(base_rates)
    rep.add(
        f"aiohttp hello-world server: POSTs/s ({len(again):,} form POSTs, {args.concurrency} sessions)",
        f"{hello:,.0f} /s",
        "baseline: " + " ; ".join(f"{x:,.0f}" for x in base_rates),
        "",
        "baseline",
    )
    first, later = rates[0], rates[1:]
    refused = [{s: n for s, n in r["statuses"].items() if s != "201"} for r, _, _ in runs]
    rep.add(
        f"Open311 POSTs accepted/s, run 1: {args.orders:,} reports, each a new order",
        f"{first:,.0f} /s",
        f"{runs[0][0]['statuses'].get('201', 0):,} x 201 in {runs[0][0]['seconds']:.1f} s",
        f"x{first / hello:.2f} baseline",
        "" if not refused[0] else f"refused {refused[0]}",
    )
    if later:
        rep.add(
            f"Open311 POSTs accepted/s, run{'s' if len(later) > 1 else ''} 2{f'-{len(rates)}' if len(later) > 1 else ''}: the same reports, attached",
            f"{med(later):,.0f} /s",
            " ; ".join(f"{x:,.0f}" for x in later),
            f"x{med(later) / hello:.2f} baseline",
            "" if not any(refused[1:]) else f"refused {refused[1:]}",
        )
    rep.note(
        f"run 1: {len(bodies)} reports {OFFSET_DEG * 111_000:.0f} m from cabinets at least {SPACING_M:g} m apart, "
        f"{len(unlocated)} located by an address only; orders created: {len(b.data['created_orders'])}"
    )
    for r, _, _ in runs:
        for e in r["errors"][:2]:
            rep.note(f"refusal: {e}")
    rep.add(
        "  late polls / missed cycles during each run; quiet 10 s before any order",
        " ; ".join(w.text() for _, _, w in runs),
        f"target 0 / 0; quiet {quiet.text()}",
        f"lag {max(w.lag_ms for _, _, w in runs):.0f} ms (quiet {quiet.lag_ms:.0f})",
        "met" if all(w.late == 0 and w.missed == 0 for _, _, w in runs) else "MISSED",
    )
    maps = [x for _, p, _ in runs for x in p.map_s]
    metrics = [x for _, p, _ in runs for x in p.metrics_s]
    rep.add(
        "GET /map.geojson during the POSTs, p50 / p90 / max",
        pct(maps),
        f"idle: {pct(idle.map_s)}",
        f"{runs[0][1].map_bytes / 1e6:.1f} MB",
    )
    rep.add("GET /metrics during the POSTs, p50 / p90 / max", pct(metrics), f"idle: {pct(idle.metrics_s)}")
    if fails := [f for _, p, _ in runs for f in p.failures]:
        rep.note(f"probe failures during the POSTs: {fails[:6]}")


async def dispatch(b: Bench) -> None:
    """The decision in the running server, with the open orders: reports near junctions and
    bollards one at a time, create -> assign from the journal."""
    rep, args = b.report, b.args
    states = open_orders(b.journal)
    n_open = sum(n for s, n in states.items() if s not in ("closed", "cancelled"))
    # A window with the open orders and no HTTP load: what the orders cost the core by themselves.
    held = await quiet_window(b.server, 10.0, pause=0.0)
    targets = [("traffic", d) for d in b.devices("traffic")] + [("bollard", d) for d in b.devices("bollard")]
    # Alternate junctions and bollards: their crews (traffic, security) are distinct.
    order = [t for pair in zip(targets[: len(targets) // 2], targets[len(targets) // 2 :], strict=False) for t in pair]
    decisions, round_trips, crews = [], [], []
    url = b.base + "/open311/v2/requests.json"
    import aiohttp

    t0w = time.time()
    async with aiohttp.ClientSession() as s:
        for k, (cls, d) in enumerate(order[: args.decisions]):
            t0 = time.perf_counter()
            async with s.post(url, data=b.body(d, cls, 10_000 + k)) as r:
                text = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"report near {d.name}: {r.status} {text[:300]}")
                rid = json.loads(text)[0]["service_request_id"]
            oid = ""
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                oid = oid or report_orders(b.journal, [rid]).get(rid, "")
                if oid:
                    ev = [e for e in journal_events(b.journal) if e[1] == oid]
                    created = [e[0] for e in ev if e[2] == "create"]
                    assigned = [e for e in ev if e[2] == "assign"]
                    if created and assigned:
                        round_trips.append(time.perf_counter() - t0)
                        decisions.append((assigned[0][0] - created[0]) / 1e9)
                        crews.append(assigned[0][3])
                        break
                    if any(e[2] == "dispatch_failed" for e in ev):
                        raise RuntimeError(f"{oid} near {d.name}: no crew ({ev})")
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"report {rid} near {d.name}: order {oid or '?'} not assigned within 30 s")
    during = await window(b.server, t0w, time.time())
    b.data["decisions_s"] = decisions
    b.data["post_to_assign_s"] = round_trips
    n_vehicles = len(b.devices("fleet")) or len(b.config.operations.crews)
    d50, d90 = np.percentile(decisions, [50, 90])
    rep.add(
        f"dispatch: order created -> assigned (journal), {n_vehicles} vehicles, {n_open:,} open orders",
        f"{d50 * 1e3:.1f} / {d90 * 1e3:.1f} ms",
        f"p50 / p90 of {len(decisions)} (max {max(decisions) * 1e3:.1f} ms)",
        f"{len(set(crews))} crews",
    )
    r50, r90 = np.percentile(round_trips, [50, 90])
    rep.add(
        "  POST -> assignment seen in the journal by the bench, p50 / p90",
        f"{r50 * 1e3:.0f} / {r90 * 1e3:.0f} ms",
        "incl. the journal's batched write",
    )
    rep.add(
        "  late polls / missed cycles meanwhile; open orders, no HTTP, 10 s",
        during.text(),
        f"target 0 / 0; {held.text()} (lag {held.lag_ms:.0f} ms)",
        f"lag {during.lag_ms:.0f} ms",
        "met" if during.late == 0 and during.missed == 0 else "MISSED",
    )
    rep.note(f"orders by state before the decisions: {states}")


def patch_operations(folder: Path) -> list[str]:
    path = folder / "operations.yaml"
    if not path.exists():
        raise RuntimeError(f"the simulator wrote no {path}: the city runs without operations")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["open311"] = {**(doc.get("open311") or {}), **UNLIMITED}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return ["Open311 rate limit per address lifted"]


def fail(b: Bench, section: str, exc: BaseException) -> None:
    b.failed.append(section)
    b.report.add(section, "NOT MEASURED", "", "", "FAILED")
    b.report.note(f"{section} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
    log("".join(traceback.format_exception(exc))[-3000:])


async def measure(b: Bench) -> None:
    for name, fn in (("posts", posts), ("dispatch", dispatch)):
        if name not in b.args.only:
            continue
        log(f"[{name}] (load average {load_text()})")
        b.report.section(
            "Open311 POSTs, map and metrics under load"
            if name == "posts"
            else f"dispatch decision in the running server ({b.args.decisions} reports near junctions and bollards)"
        )
        try:
            await fn(b)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
            fail(b, name, exc)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--load"]:
        load_child(argv[1], argv[2], int(argv[3]))
        return 0
    if argv[:1] == ["--hello"]:
        hello_child(int(argv[1]))
        return 0
    sections = ("posts", "dispatch")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--city", default="dijon", help="the simulated city (the simulators' --preset)")
    ap.add_argument("--orders", type=int, default=1000, help="reports POSTed per run (the first run: open orders)")
    ap.add_argument("--concurrency", type=int, default=16, help="client sessions of the load generator")
    ap.add_argument("--decisions", type=int, default=30, help="reports near junctions and bollards, one at a time")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the POST load (figures: their median)")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(sections)}")
    ap.add_argument("--event-loop", default="uvloop", help="the simulator's and the server's event loop")
    ap.add_argument("--online-timeout", type=float, default=300.0, help="s to wait for every device online")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, configuration, journal)")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(sections)
    if unknown := [s for s in args.only if s not in sections]:
        ap.error(f"unknown section {unknown[0]!r}: choose among {', '.join(sections)}")
    if "dispatch" in args.only and "posts" not in args.only:
        ap.error("dispatch needs the open orders of posts")

    from common.limits import raise_open_file_limit

    raise_open_file_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-operations-"))
    report = Report()
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    log(f"bench_operations: city {args.city}; sections {', '.join(args.only)}; work folder {work}")
    broker = sim = server = hello = None
    b: Bench | None = None
    try:
        if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
            raise RuntimeError("the bollards and vehicles need Mosquitto (Debian: apt-get install mosquitto)")
        broker = Mosquitto(work / "mqtt")
        from simulators.city import PRESETS

        base, opc_sim, control, opc, http, hello_port = (
            free_port_range(PRESETS[args.city].cabinets),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        )
        hello = Process([str(Path(__file__).resolve()), "--hello", str(hello_port)], work / "hello.log")
        sim = Process(
            [
                *("-m", "simulators", "city", "--preset", args.city, "--base-port", str(base)),
                *("--opcua-port", str(opc_sim), "--control-port", str(control)),
                *("--config-out", str(work / "config"), "--types-from", str(ROOT / "tags.yaml")),
                *("--mqtt", f"127.0.0.1:{broker.port}", "--failure-rate", "0", "--log-json"),
                *("--event-loop", args.event_loop),
            ],
            work / "sim.log",
        )
        wait_port(control, 300, proc=sim)
        wait_port(hello_port, 60, proc=hello)
        changed = patch_operations(work / "config")
        config = load_config(work / "config")
        url = f"opc.tcp://127.0.0.1:{opc}/scada/"
        run = scada_run(work / "config", work / "data", url, "--status-interval", "1", "--log-json")
        internal = free_port()
        run += ["--http", f"127.0.0.1:{http}", "--http-internal", f"127.0.0.1:{internal}"]
        run += ["--event-loop", args.event_loop]
        t0 = time.monotonic()
        server = Process(run, work / "server.log")
        wait_port(http, 600, proc=server)
        log(f"  server's HTTP listening after {time.monotonic() - t0:.0f} s")
        b = Bench(config, server, report, args, work, f"http://127.0.0.1:{http}", f"http://127.0.0.1:{internal}")
        b.hello = f"http://127.0.0.1:{hello_port}"
        b.hello += "/open311/v2/requests.json"
        online = asyncio.run(wait_online(server, args.online_timeout))
        log(f"  devices online {online}")
        report.note(
            f"city {args.city}: {len(b.devices('lighting'))} cabinets, {len(b.devices('traffic'))} junctions, "
            f"{len(b.devices('bollard'))} bollards, {len(b.devices('fleet'))} vehicles; devices online {online}; "
            f"bench config: {', '.join(changed)}; load generator: one process, {args.concurrency} aiohttp "
            "sessions from 127.0.0.1"
        )
        asyncio.run(measure(b))
    except Exception as exc:  # noqa: BLE001 - the table and the notes still print
        if b is None:
            b = Bench(None, server, report, args, work)  # type: ignore[arg-type]
        fail(b, "setup", exc)
    finally:
        for p in (server, sim, hello):
            if p is not None:
                p.stop(timeout=60)
        if broker is not None:
            broker.stop()
        load1 = os.getloadavg()
        report.note(
            f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average (1/5/15 min) "
            f"{'/'.join(f'{x:.2f}' for x in load0)} at the start, {'/'.join(f'{x:.2f}' for x in load1)} at the end; "
            f"event loop {args.event_loop}; bench, load generator, server and simulator share the machine"
        )
        report.print_table()
        if args.json and b is not None:
            Path(args.json).write_text(json.dumps({"args": vars(args), **b.data}, indent=1, default=str))
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if b is None or b.failed else 0


if __name__ == "__main__":
    sys.exit(main())
