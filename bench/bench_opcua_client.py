"""OPC UA client ingest: notifications per second from an asyncua server into the tag database.

    .venv/bin/python bench/bench_opcua_client.py [--devices 500] [--points 25] [--change-ms 500]
        [--publishing-ms 100] [--seconds 10] [--warmup 4] [--repeats 3]

A server process (asyncua, its own core) holds ``devices x points`` Double variables in a
hierarchy (100 devices per folder, one object per device) and rewrites every one of them
each ``--change-ms`` (spread over ten slices of the period); it logs, every second, how many
values it wrote and its CPU time. Two clients subscribe to every variable in turn, each in
a fresh process and over the same server in the same run (publishing interval
``--publishing-ms``, sampling 0, queue size 1):

* baseline: a bare asyncua client: ``create_subscription(handler)`` +
  ``subscribe_data_change(all nodes)``, a handler that only counts notifications -- the
  library's ordinary callback path;
* ours: the OPC UA client driver (``drivers/opcua``) configured from a tags.yaml of the same
  devices, ingesting into a TagDB with one drained consumer, counting the notifications it
  decoded and the rows ``TagDB.update`` received.

After ``--warmup`` s, each client measures ``--seconds`` s: notifications received, its own
CPU time (all threads), and the server's writes and CPU share over the same window
(CLOCK_MONOTONIC is shared by processes). With queue size 1 a variable rewritten before the
client took its last value is notified once: a client slower than the server receives less
than the server writes, the rest is discarded at the server, which is what makes the client's
rate its capacity. Medians over ``--repeats``; baseline and ours alternate which goes first.

Target (issue 4): at least 20,000 notifications per second into the tag database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datetime import UTC

from bench.harness import PY, ROOT, free_port, med, stop, string_node_id  # noqa: E402
from common import eventloop  # noqa: E402

NAMESPACE = "urn:city-scada:bench"
TARGET = 20_000


def node_id(d: int, p: int) -> str:
    return f"D{d:05d}.P{p}"


# The server process


async def serve(port: int, devices: int, points: int, change_ms: float, stats: Path) -> None:
    import logging
    from datetime import datetime

    from asyncua import Server, ua

    from scada.opcua.asyncua_private.nodes import address_space

    logging.getLogger("asyncua").setLevel(logging.ERROR)

    # asyncua 2.1 builds every notification from an empty MonitoredItemNotification, whose
    # Variant(None) asks the VariantType enum for an attribute "NoneType" (an AttributeError
    # raised and caught): 41 % of this server's CPU in a py-spy profile. Answered directly here,
    # in the load generator only, so that the server can outrun the clients it feeds.
    guess = ua.Variant._guess_type
    ua.Variant._guess_type = lambda self, val: ua.VariantType.Null if val is None else guess(self, val)  # type: ignore[method-assign]

    class Value(ua.DataValue):
        """Never mutated once written: asyncua's deep copy per notified value is skipped (as the
        project's own publisher does), so that the server can outrun the clients measured."""

        def __deepcopy__(self, memo):
            return self

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE)
    root = await server.nodes.objects.add_folder(string_node_id("Bench", ns), "Bench")
    ids = []
    for g in range(0, devices, 100):
        group = await root.add_folder(string_node_id(f"G{g // 100}", ns), f"G{g // 100}")
        for d in range(g, min(devices, g + 100)):
            dev = await group.add_object(string_node_id(f"D{d:05d}", ns), f"D{d:05d}")
            for p in range(points):
                node = await dev.add_variable(
                    string_node_id(node_id(d, p), ns), f"P{p}", ua.Variant(0.0, ua.VariantType.Double)
                )
                ids.append(node.nodeid)
    await server.start()
    aspace = address_space(server)  # the stock server, fed as fast as it goes (scada.opcua.asyncua_private)
    attrs = [aspace[nid].attributes[ua.AttributeIds.Value] for nid in ids]
    double, good = ua.VariantType.Double, ua.StatusCode(ua.StatusCodes.Good)  # type: ignore[arg-type]  # asyncua's UInt32 NewType
    writes = 0
    out = open(stats, "a", buffering=1)  # noqa: SIM115  (written until the process is terminated)

    async def report() -> None:
        while True:
            out.write(json.dumps({"t": time.monotonic(), "writes": writes, "cpu": time.process_time()}) + "\n")
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    print("ready", flush=True)
    slices = 10
    per = -(-len(attrs) // slices)
    period = change_ms / 1000 / slices
    tick = 0
    next_t = time.monotonic()
    try:
        while True:
            part = attrs[(tick % slices) * per : (tick % slices + 1) * per]
            now = datetime.now(UTC)
            base = tick * 0.01
            for k, attr in enumerate(part):
                # What Server.write_attribute_value does, minus its lookups and type check per call.
                dv = Value(ua.Variant(base + k, double), StatusCode=good, SourceTimestamp=now, ServerTimestamp=now)  # type: ignore[arg-type]  # DateTime NewType
                attr.value = dv
                for handle, callback in attr.datachange_callbacks.items():
                    await callback(handle, dv)
                writes += 1
                if k % 500 == 499:
                    await asyncio.sleep(0)  # let publish responses out
            tick += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_t = time.monotonic()  # behind: the server's own speed is the limit
                await asyncio.sleep(0)
    finally:
        reporter.cancel()
        await server.stop()


# The client processes


def write_config(folder: Path, url: str, devices: int, points: int, publishing_ms: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pts = "".join(f'      P{p}: {{node: "{{device}}.P{p}"}}\n' for p in range(points))
    (folder / "tags.yaml").write_text(f"""\
equipment_types:
  bench_device:
    class: bench
    driver: opcua
    namespace: {NAMESPACE}
    publishing_interval: {publishing_ms}
    timeout: 5
    points:
{pts}inventories:
  - file: devices.csv
""")
    rows = ["name,type,commune,lat,lon,endpoint"]
    rows += [f"D{d:05d},bench_device,Dijon,47.32,5.04,{url}" for d in range(devices)]
    (folder / "devices.csv").write_text("\n".join(rows) + "\n")


async def client(
    mode: str, url: str, devices: int, points: int, publishing_ms: float, warmup: float, seconds: float, folder: Path
) -> dict:
    import logging

    from asyncua import Client, ua

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    total = devices * points
    if mode == "bare":

        class Handler:
            n = 0

            def datachange_notification(self, node, val, data) -> None:
                self.n += 1

        handler = Handler()
        c = Client(url, timeout=60, watchdog_intervall=60)
        await c.connect()
        try:
            ns = await c.get_namespace_index(NAMESPACE)
            nodes = [c.get_node(string_node_id(node_id(d, p), ns)) for d in range(devices) for p in range(points)]
            sub = await c.create_subscription(publishing_ms, handler)
            handles = await sub.subscribe_data_change(nodes, queuesize=1, sampling_interval=0)  # type: ignore[call-overload]  # stubs: one node only
            assert not [h for h in handles if isinstance(h, ua.StatusCode)]
            count = lambda: handler.n  # noqa: E731
            result = await _window(count, None, warmup, seconds)
        finally:
            await c.disconnect()
        return result

    from bench.harness import load_config
    from common import logs
    from drivers.opcua.driver import OpcUaDriver
    from scada import status
    from scada.tagdb import TagDB

    logs.configure(level="WARNING")
    write_config(folder, url, devices, points, publishing_ms)
    cfg = load_config(folder)
    db = TagDB(*cfg.tag_table())
    consumer = db.subscribe("bench", maxsize=1024)
    driver = OpcUaDriver(cfg, list(cfg.devices), db)

    async def drain() -> None:
        while True:
            await asyncio.sleep(0.05)
            while not consumer.queue.empty():
                consumer.get_nowait()

    tasks = [asyncio.create_task(driver.run()), asyncio.create_task(drain())]
    try:
        deadline = time.monotonic() + 120
        # Process tags first (ids 0..total-1); the devices' Diagnostics tags follow them.
        while int((db.status[:total] == status.GOOD).sum()) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        result = await _window(lambda: driver.notifications, lambda: db.updates, warmup, seconds)
        result["good"] = int((db.status[:total] == status.GOOD).sum())
        result["dropped_batches"] = consumer.dropped_batches
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


async def _window(count, rows, warmup: float, seconds: float) -> dict:
    await asyncio.sleep(warmup)
    t0, n0, r0, c0 = time.monotonic(), count(), rows() if rows else 0, time.process_time()
    await asyncio.sleep(seconds)
    t1, n1, r1, c1 = time.monotonic(), count(), rows() if rows else 0, time.process_time()
    return {"t0": t0, "t1": t1, "notifications": n1 - n0, "rows": r1 - r0, "cpu": c1 - c0}


# The orchestration


def server_window(stats: Path, t0: float, t1: float) -> tuple[float, float]:
    """Server writes per second and CPU share between the samples that frame [t0, t1]."""
    lines = [json.loads(x) for x in stats.read_text().splitlines() if x.strip()]
    inside = [x for x in lines if t0 - 1.0 <= x["t"] <= t1 + 1.0]
    a, b = inside[0], inside[-1]
    dt = b["t"] - a["t"]
    return (b["writes"] - a["writes"]) / dt, (b["cpu"] - a["cpu"]) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--change-ms", type=float, default=500.0)
    ap.add_argument("--publishing-ms", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--event-loop",
        choices=eventloop.LOOPS,
        default=eventloop.DEFAULT,
        help="the clients' event loop (default: the server's, uvloop; the bench server stays on asyncio)",
    )
    ap.add_argument("--serve", nargs=2, metavar=("PORT", "STATS"), help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=3, metavar=("MODE", "URL", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(int(args.serve[0]), args.devices, args.points, args.change_ms, Path(args.serve[1])))
        return 0
    if args.client:
        mode, url, folder = args.client
        r = eventloop.run(
            client(mode, url, args.devices, args.points, args.publishing_ms, args.warmup, args.seconds, Path(folder)),
            args.event_loop,
        )
        print(json.dumps(r), flush=True)
        return 0

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-opcua-"))
    stats = work / "server.jsonl"
    common = [
        "--devices",
        str(args.devices),
        "--points",
        str(args.points),
        "--change-ms",
        str(args.change_ms),
        "--publishing-ms",
        str(args.publishing_ms),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--event-loop",
        args.event_loop,
    ]
    me = str(Path(__file__).resolve())
    url = f"opc.tcp://127.0.0.1:{port}/bench/"
    total = args.devices * args.points
    t_build = time.monotonic()
    server = subprocess.Popen(
        [PY, me, *common, "--serve", str(port), str(stats)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    runs: dict[str, list[dict]] = {"bare": [], "ours": []}
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", "the bench server did not start"
        print(
            f"server: {total:,} variables ({args.devices} devices x {args.points} points) built and listening "
            f"in {time.monotonic() - t_build:.1f} s; each rewritten every {args.change_ms:.0f} ms "
            f"(offered {total / args.change_ms * 1000:,.0f} writes/s)",
            flush=True,
        )
        for r in range(args.repeats):
            for mode in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                out = subprocess.run(
                    [PY, me, *common, "--client", mode, url, str(work / f"cfg-{mode}-{r}")],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    timeout=600,
                )
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{mode} client failed")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res["server_rate"], res["server_cpu"] = server_window(stats, res["t0"], res["t1"])
                dt = res["t1"] - res["t0"]
                res["rate"] = res["notifications"] / dt
                res["rows_rate"] = res["rows"] / dt
                res["cpu_share"] = res["cpu"] / dt
                runs[mode].append(res)
                print(
                    f"  run {r + 1} {mode:4}: {res['rate']:>9,.0f} notif/s received, client CPU "
                    f"{res['cpu_share']:.2f} cores, server wrote {res['server_rate']:>9,.0f}/s at "
                    f"{res['server_cpu']:.2f} cores",
                    flush=True,
                )
    finally:
        stop(server)

    def median(mode: str, key: str) -> float:
        return med(x[key] for x in runs[mode])

    rb, ro, rows = median("bare", "rate"), median("ours", "rate"), median("ours", "rows_rate")
    cb = med(x["cpu"] / max(x["notifications"], 1) for x in runs["bare"]) * 1e6
    co = med(x["cpu"] / max(x["notifications"], 1) for x in runs["ours"]) * 1e6
    per_device_rate = 1000 / args.change_ms * args.points  # notifications per second per device
    print(
        f"\nOPC UA client ingest, {total:,} monitored items ({args.devices} devices x {args.points} points, each "
        f"changing every {args.change_ms:.0f} ms), publishing {args.publishing_ms:.0f} ms, "
        f"{args.seconds:.0f} s windows, medians of {args.repeats}, clients on {args.event_loop} (cpus: {os.cpu_count()})"
    )
    print(
        f"  server writes (its own process)           {median('bare', 'server_rate'):>9,.0f} /s during baseline, "
        f"{median('ours', 'server_rate'):,.0f} /s during ours ({median('ours', 'server_cpu'):.2f} cores)"
    )
    print(
        f"  bare asyncua client (handler, counting)   {rb:>9,.0f} notif/s   {cb:5.1f} us CPU each, "
        f"{median('bare', 'cpu_share'):.2f} cores   library baseline"
    )
    print(
        f"  OPC UA driver into the TagDB              {ro:>9,.0f} notif/s   {co:5.1f} us CPU each, "
        f"{median('ours', 'cpu_share'):.2f} cores   target >= {TARGET:,}: {'met' if ro >= TARGET else 'MISSED'}; "
        f"ratio {ro / rb:.2f} of the baseline"
    )
    print(
        f"  rows into TagDB.update                    {rows:>9,.0f} /s   all tags Good: "
        f"{runs['ours'][-1]['good']:,}/{total:,}, consumer batches dropped: {runs['ours'][-1]['dropped_batches']}"
    )
    print(f"  capacity at one full core (1 / CPU each)  {1e6 / cb:>9,.0f} baseline, {1e6 / co:,.0f} ours notif/s")
    print(
        f"  driver CPU per 1,000 devices              {co * per_device_rate * 1000 / 1e6:>9.2f} cores "
        f"({args.points} points changing every {args.change_ms:.0f} ms: {per_device_rate:.0f} notif/s per device)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
