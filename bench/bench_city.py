"""The whole simulated Dijon under supervision: CPU and memory of the simulator, Modbus capacity.

    .venv/bin/python bench/bench_city.py [--seconds 60] [--preset dijon]

Starts, on loopback, the city simulator (1,100 lighting cabinets on Modbus TCP, 113 junctions
on OPC UA, 26 bollards and 205 vehicles on MQTT through Mosquitto when installed) and the
server polling every cabinet once per second; measures for ``--seconds`` the CPU share and
resident memory of each process and the Modbus requests the simulator served. Then, in
the same run, the Modbus serving capacity: many concurrent pymodbus clients hammer (a) a
stock pymodbus server with static registers (the library baseline) and (b) our lighting
simulator's adapter, each in its own process, and the requests per second are compared.

Target (issue 3): the full city simulated in at most one of the two cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import PY, ROOT, Mosquitto, Process, free_port, med, scada_run, stop, wait_port  # noqa: E402


def control(port: int, req: dict) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((json.dumps(req) + "\n").encode())
        return json.loads(s.makefile().readline())


def sample(procs: dict[str, psutil.Process], seconds: float, every: float = 5.0):
    """CPU share (cores) per window and peak RSS of each process."""
    shares: dict[str, list[float]] = {k: [] for k in procs}
    rss = {k: 0 for k in procs}
    last = {k: p.cpu_times() for k, p in procs.items()}
    t_last = time.monotonic()
    end = t_last + seconds
    while time.monotonic() < end:
        time.sleep(every)
        now = time.monotonic()
        for k, p in procs.items():
            ct = p.cpu_times()
            shares[k].append((ct.user + ct.system - last[k].user - last[k].system) / (now - t_last))
            last[k] = ct
            rss[k] = max(rss[k], p.memory_info().rss)
        t_last = now
    return shares, rss


# Capacity: one process serves, one process loads it with concurrent clients.

SERVE_STOCK = """
import asyncio, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
async def main(port):
    dev = SimDevice(id=1, simdata=([SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=2, values=0, datatype=DataType.REGISTERS)],
        [SimData(0, count=9, values=0, datatype=DataType.REGISTERS)]))
    s = ModbusTcpServer([dev], address=("127.0.0.1", port))
    await s.serve_forever()
asyncio.run(main(int(sys.argv[1])))
"""

SERVE_OURS = """
import asyncio, sys, time
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.models import lighting
async def main(port):
    st = lighting.create([47.32], [5.04], [31], t=time.time())
    sim = LightingModbusSimulator(st, "127.0.0.1", port, 1)
    await sim.start()
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""

LOAD = """
import asyncio, sys, time
from pymodbus.client import AsyncModbusTcpClient
async def worker(port, stop, counts, k):
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await c.connect()
    n = 0
    while time.monotonic() < stop:
        await c.read_input_registers(0, count=9, device_id=1)
        n += 1
    counts[k] = n
    c.close()
async def main(port, clients, seconds):
    counts = [0] * clients
    stop = time.monotonic() + seconds
    await asyncio.gather(*(worker(port, stop, counts, k) for k in range(clients)))
    print(sum(counts) / seconds)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
"""


def capacity(server_code: str, clients: int = 16, seconds: float = 5.0) -> float:
    port = free_port()
    server = subprocess.Popen([PY, "-c", server_code, str(port)], cwd=ROOT)
    try:
        wait_port(port, 30)
        out = subprocess.run(
            [PY, "-c", LOAD, str(port), str(clients), str(seconds)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        stop(server, 10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="dijon")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3, help="capacity measurements per server")
    ap.add_argument("--event-loop", default="uvloop", help="the simulator's and the server's event loop")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-city-"))
    base = 30000
    opc_sim, opc_scada, control_port = free_port(), free_port(), free_port()
    broker = None
    mqtt_args: list[str] = []
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        broker = Mosquitto(work / "mqtt")
        mqtt_args = ["--mqtt", f"127.0.0.1:{broker.port}"]
    sim = Process(
        [
            "-m",
            "simulators",
            "city",
            "--preset",
            args.preset,
            "--base-port",
            str(base),
            "--opcua-port",
            str(opc_sim),
            "--control-port",
            str(control_port),
            "--config-out",
            str(work / "config"),
            "--types-from",
            str(ROOT / "tags.yaml"),
            *mqtt_args,
            "--log-json",
            "--event-loop",
            args.event_loop,
        ],
        work / "sim.log",
    )
    server: Process | None = None
    try:
        wait_port(control_port, 120)
        t_start = time.monotonic()
        run = scada_run(
            work / "config",
            work / "data",
            f"opc.tcp://127.0.0.1:{opc_scada}/scada/",
            "--status-interval",
            "2",
            "--log-json",
            "--event-loop",
            args.event_loop,
        )
        server = Process(run, work / "server.log")
        wait_port(opc_scada, 120)
        startup = time.monotonic() - t_start
        time.sleep(10)  # let every device come online
        r0 = control(control_port, {"stats": True})
        t0, w0 = time.monotonic(), time.time()
        shares, rss = sample(
            {"simulator": psutil.Process(sim.proc.pid), "server": psutil.Process(server.proc.pid)}, args.seconds
        )
        r1 = control(control_port, {"stats": True})
        served = (r1["modbus_requests"] - r0["modbus_requests"]) / (time.monotonic() - t0)
        w1 = time.time()
        time.sleep(2.5)  # the status line that closes the window
        status = [
            json.loads(line) for line in (work / "server.log").read_text().splitlines() if '"event": "status"' in line
        ]
    finally:
        for p in (server, sim):
            if p:
                p.stop(timeout=20)
        if broker:
            broker.stop()
    stock = [capacity(SERVE_STOCK) for _ in range(args.repeats)]
    ours = [capacity(SERVE_OURS) for _ in range(args.repeats)]

    sim_cpu = med(shares["simulator"])
    devices = int(status[-1]["devices"].split("/")[1]) if status else r1["cabinets"]

    # Lateness counted over the sampling window only: the status lines (every 2 s) bracketing
    # it; what happened before, from the server's start, is printed apart (start-up).
    def at(x: dict) -> float:
        return datetime.fromisoformat(x["timestamp"].replace("Z", "+00:00")).timestamp()

    before = [x for x in status if at(x) <= w0]
    after = [x for x in status if at(x) >= w1]
    first = before[-1] if before else status[0]
    last = after[0] if after else status[-1]
    window = [x for x in status if at(first) <= at(x) <= at(last)]
    late = last["late_polls"] - first["late_polls"]
    missed = last["missed_cycles"] - first["missed_cycles"]
    lag = max(x.get("loop_lag_ms", 0) for x in window[1:]) if len(window) > 1 else 0
    polls = int(r1["modbus_requests"] - r0["modbus_requests"]) // 4
    srv_cpu = med(shares["server"])
    print(
        f"\nWhole simulated city '{args.preset}' ({r1['cabinets']} cabinets, {r1['junctions']} junctions, "
        f"{'MQTT on' if broker else 'no MQTT broker'}), server polling every cabinet at 1 s; "
        f"{args.seconds:.0f} s, medians of 5 s windows"
    )
    rows = [
        ("simulator CPU share", f"{sim_cpu:.2f} cores", "target <= 1.00 core", "met" if sim_cpu <= 1.0 else "MISSED"),
        ("simulator CPU share, max window", f"{max(shares['simulator']):.2f} cores", "", ""),
        ("simulator peak RSS", f"{rss['simulator'] / 2**20:.0f} MB", "", ""),
        ("server CPU share (context)", f"{srv_cpu:.2f} cores", "", ""),
        ("server peak RSS (context)", f"{rss['server'] / 2**20:.0f} MB", "", ""),
        ("Modbus requests served", f"{served:.0f} /s", f"{r1['cabinets'] * 4} /s expected (4 blocks x 1 Hz)", ""),
        ("server start to OPC UA listening", f"{startup:.1f} s", "", ""),
        ("server CPU per 1,000 devices", f"{srv_cpu / (devices / 1000):.2f} cores", "", ""),
        (
            "polls started >10 % late / missed cycles",
            f"{late} / {missed}",
            f"of {polls:,} polls in the window",
            "every cycle on time" if late == 0 and missed == 0 else "LATE",
        ),
        ("server event loop, longest late wake-up", f"{lag:.0f} ms", "in the window", ""),
        (
            "late / missed before the window (start-up)",
            f"{first['late_polls']} / {first['missed_cycles']}",
            f"first {at(first) - w0 + 10 + startup:.0f} s after the server's start",
            "",
        ),
        ("devices online (last status line)", status[-1]["devices"] if status else "?", "", ""),
        ("Modbus capacity, stock pymodbus server", f"{med(stock):.0f} req/s", "library baseline", ""),
        (
            "Modbus capacity, our lighting adapter",
            f"{med(ours):.0f} req/s",
            f"ratio {med(ours) / med(stock):.2f} of stock",
            "",
        ),
    ]
    w = max(len(r[0]) for r in rows)
    for name, value, ref, verdict in rows:
        print(f"  {name:<{w}}  {value:>16}  {ref:<40} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
