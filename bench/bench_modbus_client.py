"""Modbus client capacity: requests per second of client CPU, ours against pymodbus's client.

    .venv/bin/python bench/bench_modbus_client.py [--devices 64] [--seconds 5] [--repeats 3]

One process serves ``--devices`` lighting cabinets (our simulator: pymodbus servers, one
port per cabinet). Another process loads them flat out, one connection per cabinet, one
request outstanding per connection, and measures the requests answered and its own CPU
time (user + system). Three clients, each on both event loops (asyncio's own and uvloop, the
server's default: ``scada/eventloop.py``), each in a fresh process, in alternating order:

* ``pymodbus``: ``AsyncModbusTcpClient.read_input_registers`` in a loop (the library baseline,
  what the driver used before);
* ``link``: our ``drivers.modbus.transport.Connection`` + ``frames`` (the same request);
* ``driver``: the whole ``ModbusDriver`` poll path (4 requests per cabinet poll, decode,
  coalesced TagDB batches, diagnostics), poll interval 1 ms so that it polls flat out.

The baseline is pymodbus on asyncio's loop, the library as shipped; pymodbus on uvloop is
printed too, so that the loop's share and the client's share of the gain can be told apart.

Two servers, each in its own process: the lighting simulator (pymodbus servers: realistic,
but its one core caps the rate, and a client that waits on a slow server pays an event-loop
wake-up per request), and a lean responder (fixed registers, a few lines of asyncio) fast
enough that the clients set the pace. Both servers run on uvloop. The figure that compares clients is **requests per
client CPU-second**: what one core of the supervision server can poll. Issue 4's target: at
least 20,000 requests/s of capacity.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import PY, ROOT, free_port_range, med, stop, wait_port, write_inventory  # noqa: E402
from common import eventloop  # noqa: E402

SERVE = """
import asyncio, sys, time
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.models import lighting
async def main(port, n):
    st = lighting.create([47.32] * n, [5.04] * n, [31] * n, t=time.time())
    sim = LightingModbusSimulator(st, "127.0.0.1", port, 1)
    await sim.start()
    await asyncio.Event().wait()
from common import eventloop
eventloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

# A lean responder: answers every read with fixed registers, no model, no pymodbus. It serves
# several times faster than the simulator, so that the clients, not the server, set the pace.
SERVE_FAST = """
import asyncio, struct, sys
class Responder(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, bytearray()
    def data_received(self, data):
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= 12:
            tid, _, length, unit = struct.unpack_from(">HHHB", buf)
            fc, start, count = struct.unpack_from(">BHH", buf, 7)
            del buf[:6 + length]
            if fc in (1, 2):
                n = (count + 7) // 8
                pdu = bytes([fc, n]) + bytes(n)
            else:
                pdu = bytes([fc, 2 * count]) + bytes(range(2 * count))
            out.append(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
        self.t.write(b"".join(out))
async def main(port, n):
    loop = asyncio.get_running_loop()
    for k in range(n):
        await loop.create_server(Responder, "127.0.0.1", port + k)
    await asyncio.Event().wait()
from common import eventloop
eventloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

CLIENT = """
import asyncio, json, resource, sys, time
from pathlib import Path

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def pymodbus_client(port, n, seconds):
    from pymodbus.client import AsyncModbusTcpClient
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port + k, timeout=2, retries=0, reconnect_delay=0) for k in range(n)]
    for c in clients:
        await c.connect()
    counts = [0] * n
    async def worker(k, stop):
        c = clients[k]
        while time.monotonic() < stop:
            r = await c.read_input_registers(0, count=9, device_id=1)
            assert len(r.registers) == 9
            counts[k] += 1
    c0, t0 = cpu(), time.monotonic()
    await asyncio.gather(*(worker(k, t0 + seconds) for k in range(n)))
    c1, t1 = cpu(), time.monotonic()
    for c in clients:
        c.close()
    return sum(counts), t1 - t0, c1 - c0

async def link_client(port, n, seconds):
    from drivers.modbus import frames
    from drivers.modbus.transport import Connection, TcpLink
    from scada.backoff import Backoff
    conns = [Connection(TcpLink("127.0.0.1", port + k, 2.0), Backoff()) for k in range(n)]
    request = frames.read_request(frames.READ_INPUT, 0, 9)
    counts = [0] * n
    async def worker(k, stop):
        c = conns[k]
        while time.monotonic() < stop:
            regs = frames.registers(await c.request(1, request))
            assert len(regs) == 9
            counts[k] += 1
    for c in conns:  # connect outside the timed window, as for pymodbus
        await c.request(1, request)
    c0, t0 = cpu(), time.monotonic()
    await asyncio.gather(*(worker(k, t0 + seconds) for k in range(n)))
    c1, t1 = cpu(), time.monotonic()
    for c in conns:
        c.close()
    return sum(counts), t1 - t0, c1 - c0

async def driver_client(port, n, seconds, folder):
    from drivers.modbus.driver import ModbusDriver
    from bench.harness import load_config
    from scada.tagdb import TagDB
    cfg = load_config(folder)
    tagdb = TagDB(*cfg.tag_table())
    drv = ModbusDriver(cfg, list(cfg.devices), tagdb)
    blocks = len(drv.devices[0].groups[0].plan.blocks)
    task = asyncio.create_task(drv.run())
    while drv.diag.successes.min() < 1:
        await asyncio.sleep(0.05)
    p0, c0, t0 = drv.diag.successes.sum(), cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    p1, c1, t1 = drv.diag.successes.sum(), cpu(), time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert drv.diag.failures.sum() == 0, "failed polls during the bench"
    return int((p1 - p0) * blocks), t1 - t0, c1 - c0

async def main(mode, port, n, seconds, folder):
    if mode == "pymodbus":
        r = await pymodbus_client(port, n, seconds)
    elif mode == "link":
        r = await link_client(port, n, seconds)
    else:
        r = await driver_client(port, n, seconds, folder)
    print(json.dumps({"requests": r[0], "wall": r[1], "cpu": r[2]}))

from common import eventloop
eventloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]), sys.argv[6])
"""


def write_driver_config(folder: Path, port: int, n: int) -> None:
    """The shipped lighting_cabinet type, n cabinets on consecutive ports, polled every millisecond."""
    rows = [f"LC-{k:04d},lighting_cabinet,Dijon,47.3,5.0,127.0.0.1:{port + k},1,0.001,2.0" for k in range(n)]
    write_inventory(folder, "cabinets.csv", "name,type,commune,lat,lon,endpoint,unit,poll_interval,timeout", rows)


def run_client(mode: str, port: int, n: int, seconds: float, folder: Path) -> dict:
    client, loop = mode.split("/")
    out = subprocess.run(
        [PY, "-c", CLIENT, client, str(port), str(n), str(seconds), str(folder), loop],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if out.returncode:
        raise RuntimeError(f"{mode} client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(server_code: str, args, port: int, folder: Path) -> dict[str, list[dict]]:
    server = subprocess.Popen([PY, "-c", server_code, str(port), str(args.devices)], cwd=ROOT)
    results: dict[str, list[dict]] = {
        f"{c}/{loop}": [] for loop in eventloop.LOOPS[::-1] for c in ("pymodbus", "link", "driver")
    }
    try:
        for k in range(args.devices):
            wait_port(port + k, 60)
        modes = list(results)
        for r in range(args.repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                results[mode].append(run_client(mode, port, args.devices, args.seconds, folder))
    finally:
        stop(server, 10)
    return results


def report(title: str, results: dict[str, list[dict]]) -> float:
    def median(mode: str, f) -> float:
        return med(f(x) for x in results[mode])

    base = median("pymodbus/asyncio", lambda x: x["requests"] / x["cpu"])
    print(f"\n{title}")
    print(
        f"  {'client':<34} {'event loop':<10} {'req/s answered':>15} {'client CPU':>11} {'req per CPU-s':>14} "
        f"{'vs pymodbus on asyncio':>23}"
    )
    names = {
        "pymodbus": "pymodbus AsyncModbusTcpClient",
        "link": "ours: Connection + frames",
        "driver": "ours: whole ModbusDriver poll path",
    }
    for mode in results:
        rate = median(mode, lambda x: x["requests"] / x["wall"])
        cores = median(mode, lambda x: x["cpu"] / x["wall"])
        per_cpu = median(mode, lambda x: x["requests"] / x["cpu"])
        client, loop = mode.split("/")
        print(
            f"  {names[client]:<34} {loop:<10} {rate:>15,.0f} {cores:>10.2f}c {per_cpu:>14,.0f} {per_cpu / base:>22.2f}x"
        )
    return median(f"driver/{eventloop.DEFAULT}", lambda x: x["requests"] / x["cpu"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    port = free_port_range(args.devices)
    folder = Path(tempfile.mkdtemp(prefix="bench-modbus-client-"))
    write_driver_config(folder, port, args.devices)
    sim = measure(SERVE, args, port, folder)
    fast = measure(SERVE_FAST, args, port, folder)
    head = f"{args.devices} cabinets, one connection each, flat out for {args.seconds:.0f} s; medians of {args.repeats} runs"
    report(f"Modbus client against the lighting simulator (pymodbus servers, own process): {head}", sim)
    drv = report(f"Modbus client against a lean responder (fixed registers, own process): {head}", fast)
    print(
        f"\n  capacity of the driver path on {eventloop.DEFAULT}, the server's default loop (lean responder): "
        f"{drv:,.0f} requests per CPU-second; "
        f"target >= 20,000: {'met' if drv >= 20000 else 'MISSED'}"
    )
    print(f"  CPU per 1,000 lighting cabinets polled at 1 s (4 requests each): {4000 / drv:.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
