"""Commands from an HMI on the whole simulated city, with polling running (the HMI's side).

    .venv/bin/python bench/bench_opcua_commands.py [--city dijon] [--commands 50]

Starts the city simulator (as ``make demo CITY=dijon``: cabinets on Modbus TCP, junctions on the
traffic OPC UA server, bollards on MQTT through Mosquitto when installed) and the real server
(``python -m city_scada run``: the OPC UA front in its own process, the core's pipeline), then
measures with asyncua clients, through OPC UA:

* the round trip of one command, from the HMI's Call to its answer (the pipeline answers once
  the read-back confirmed it): SetDimLevel on a cabinet, one at a time; p50, p99; target p99
  under two poll cycles;
* DimAll over every cabinet (one call per commune, all at once, from two sessions): time until
  every call answered with every cabinet confirmed (target <= 5 s), and the late polls and
  missed cycles of the server meanwhile (its status lines; target 0); the same for the
  junctions (SetCorridorPlan) and the bollards (OpenZone, then CloseZone).

Rates are lifted for the bench (the generated tags.yaml's ``control:`` rates): one user sends
every command, and the limits are not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from asyncua import Client, ua

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.front.procs import Served  # noqa: E402
from bench.front.servers import in_window, status_lines  # noqa: E402
from bench.harness import PY, ROOT, Mosquitto, free_port, load_config, scada_run, wait_port  # noqa: E402
from scada.opcua.address_space import NAMESPACE_URI  # noqa: E402
from scada.opcua.typed_ua import NodeId, StatusCode  # noqa: E402

NONE = datetime(1601, 1, 1, tzinfo=UTC)
GROUP = "_types/_groups/"


def lift_rates(tags: Path) -> None:
    """The bench's one user and its devices: no rate limit (what is measured is the path)."""
    data = yaml.safe_load(tags.read_text())
    ctl = data.setdefault("control", {}) or {}
    ctl["user_rate"] = {"per_minute": 1e9, "burst": 1_000_000}
    ctl["device_rate"] = {"per_minute": 1e9, "burst": 1_000_000}
    data["control"] = ctl
    tags.write_text(yaml.safe_dump(data, sort_keys=False))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def wait_online(server: Served, timeout: float) -> str:
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


async def round_trips(url: str, ns_path: list[str], n: int) -> tuple[list[float], list[int]]:
    async with Client(url, timeout=60) as c:
        ns = await c.get_namespace_index(NAMESPACE_URI)
        method = "_types/lighting_cabinet/_commands/SetDimLevel"
        mid = NodeId(method, ns)
        args = await c.get_node(NodeId(method + "/InputArguments", ns)).read_value()
        times, codes = [], []
        for k in range(n):
            path = ns_path[k % len(ns_path)]
            level = 20.0 + 10 * (k % 5)
            inputs = [
                ua.Variant(level, ua.VariantType.Double)
                if a.Name == "level"
                else ua.Variant(NONE, ua.VariantType.DateTime)
                for a in args
            ]
            req = ua.CallMethodRequest(ObjectId=NodeId(path, ns), MethodId=mid, InputArguments=inputs)
            t0 = time.perf_counter()
            [res] = await c.uaclient.call([req])
            times.append(time.perf_counter() - t0)
            codes.append(res.StatusCode.value)
        return times, codes


async def group(url: str, folders: list[str], action: str, args: list[ua.Variant]) -> tuple[float, int, dict[int, int]]:
    """``action`` on every folder at once, from two sessions (the front serves a session's Calls
    side by side, and bounds the sessions per client address); (seconds, devices, statuses: count)."""
    clients = [Client(url, timeout=120) for _ in range(min(2, len(folders)))]
    for c in clients:
        await c.connect()
    try:
        ns = await clients[0].get_namespace_index(NAMESPACE_URI)
        mid = NodeId(GROUP + action, ns)

        async def one(c: Client, folder: str):
            req = ua.CallMethodRequest(ObjectId=NodeId(folder, ns), MethodId=mid, InputArguments=args)
            [res] = await c.uaclient.call([req])
            return res

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(clients[k % len(clients)], f) for k, f in enumerate(folders)))
        took = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.disconnect()
    counts: dict[int, int] = {}
    devices = 0
    for res in results:
        if not res.StatusCode.is_good():
            counts[res.StatusCode.value] = counts.get(res.StatusCode.value, 0) + 1
            continue
        for s in res.OutputArguments[1].Value:
            counts[s.value] = counts.get(s.value, 0) + 1
            devices += 1
    return took, devices, counts


def summary(counts: dict[int, int]) -> str:
    return ", ".join(f"{StatusCode(c).name}: {n}" for c, n in sorted(counts.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--city", default="dijon")
    p.add_argument("--commands", type=int, default=50)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_opcua_commands_"))
    broker = Mosquitto(work / "mqtt") if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists() else None
    base, opc_sim, control, opc = 30000, free_port(), free_port(), free_port()
    sim_args = ["-m", "simulators", "city", "--preset", a.city, "--base-port", str(base), "--opcua-port", str(opc_sim)]
    sim_args += ["--control-port", str(control), "--config-out", str(work / "config"), "--acceleration", "1"]
    sim_args += ["--types-from", str(ROOT / "tags.yaml"), "--log-json"]
    if broker:
        sim_args += ["--mqtt", f"127.0.0.1:{broker.port}"]
    sim = Served("simulator", [PY, *sim_args], work / "sim.log")
    server = None
    try:
        wait_port(control, 300)
        lift_rates(work / "config" / "tags.yaml")
        url = f"opc.tcp://127.0.0.1:{opc}/scada/"
        server = Served(
            "server",
            [PY, *scada_run(work / "config", work / "data", url, "--status-interval", "1", "--log-json")],
            work / "server.log",
        )
        wait_port(opc, 600)
        print(f"devices online: {wait_online(server, 300)}", flush=True)
        config = load_config(work / "config")
        cls = {t: config.types[t].cls for t in config.types}
        cabinets = [f"{d.commune}/lighting/{d.name}" for d in config.devices if cls[d.type] == "lighting"]
        times, codes = asyncio.run(round_trips(url, cabinets, a.commands))
        poll = min(t.poll_interval for t in config.types.values() if t.cls == "lighting")
        print(f"\n[Commands from an HMI, '{a.city}': {len(config.devices)} devices, polling running]")
        good = sum(StatusCode(c).is_good() for c in codes)
        print(
            f"round trip, OPC UA Call -> confirmed read-back, SetDimLevel x{len(times)} ({good} Good): "
            f"p50 {1000 * pct(times, 50):.0f} ms, p99 {1000 * pct(times, 99):.0f} ms   target p99 <= {2000 * poll:.0f} ms"
        )
        plan_args = [ua.Variant(2, ua.VariantType.Int32)]
        for what, cls_name, action, args in (
            ("DimAll, every cabinet", "lighting", "DimAll", [ua.Variant(35.0, ua.VariantType.Double)]),
            ("SetCorridorPlan, every junction", "traffic", "SetCorridorPlan", plan_args),
            ("OpenZone, every bollard", "bollard", "OpenZone", []),
            ("CloseZone, every bollard", "bollard", "CloseZone", []),
        ):
            folders = sorted({f"{d.commune}/{cls_name}" for d in config.devices if cls[d.type] == cls_name})
            if not folders:
                continue
            t0 = time.time()
            took, devices, counts = asyncio.run(group(url, folders, action, args))
            time.sleep(2.5)  # the status lines covering the window are written each second
            lines = in_window(server, t0, time.time())
            late = lines[-1]["late_polls"] - lines[0]["late_polls"] if len(lines) > 1 else float("nan")
            missed = lines[-1]["missed_cycles"] - lines[0]["missed_cycles"] if len(lines) > 1 else float("nan")
            print(
                f"{what}: {devices} devices in {len(folders)} calls, all answered in {took:.2f} s "
                f"(target <= 5 s); late polls {late}, missed cycles {missed} (target 0); {summary(counts)}"
            )
    finally:
        if server is not None:
            server.stop()
        sim.stop()
        if broker:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
