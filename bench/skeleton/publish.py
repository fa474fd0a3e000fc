"""Section 4 of bench_skeleton: Publisher.apply throughput, without and with a subscribed client
in another process."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

from bench import citygen
from bench.harness import RESULT, Report, emit, log, med, run_child, spread
from bench.skeleton import SCRIPT
from bench.skeleton.hmi import serving_hmi


def child_client(url: str, nodes_file: str, expected: str) -> None:
    """A separate HMI process: subscribe to the nodes, count notifications, report times.

    ``expected`` is a comma-separated list of counts, one per phase of the server: after each,
    the client prints a RESULT line with the count and the times of the first and last
    notification (time.monotonic, one clock for every process of the machine).
    """

    async def main():
        from asyncua import Client

        nodeids = Path(nodes_file).read_text().split()

        class Handler:
            n = 0
            first = last = 0.0

            def datachange_notification(self, node, val, data):
                t = time.monotonic()
                if not self.n:
                    self.first = t
                self.n += 1
                self.last = t

        h = Handler()
        # asyncua's default watchdog declares the server lost when a ServerState read takes more
        # than 1 s; a busy publisher blocks the server's loop longer than that (the max loop lag
        # is measured on the server side), so this measuring client is made patient.
        async with Client(url, timeout=30, watchdog_intervall=60) as client:
            sub = await client.create_subscription(50, h)
            await sub.subscribe_data_change([client.get_node(x) for x in nodeids])
            deadline = time.monotonic() + 60
            while h.n < len(nodeids) and time.monotonic() < deadline:  # initial values
                await asyncio.sleep(0.05)
            initial = h.n
            for want in map(int, expected.split(",")):
                h.n = 0
                print("READY", flush=True)
                last_n, idle_since = 0, time.monotonic()
                while h.n < want:
                    await asyncio.sleep(0.02)
                    if h.n != last_n:
                        last_n, idle_since = h.n, time.monotonic()
                    elif time.monotonic() - idle_since > 10:
                        break
                emit({"initial": initial, "count": h.n, "first": h.first, "last": h.last})
            await sub.delete()

    asyncio.run(main())


def child_publish(n: int, batch: int, subscribed: int, rounds: int) -> None:
    async def main():
        import tempfile

        from scada.tagdb import ChangeBatch

        _, names, kinds, _, url, hmi = await serving_hmi(n)
        pub = hmi.publisher
        rng = np.random.default_rng(3)
        ids = rng.choice(len(names), min(batch, len(names)), replace=False)
        base = rng.uniform(0, 1, len(ids)).round(3)
        is_bool = np.array([kinds[i] == 1 for i in ids])
        k = 0

        def make(sel=slice(None)):
            nonlocal k
            k += 1
            vals = np.where(is_bool[sel], (k % 2) * 1.0, base[sel] + k)
            src = np.full(len(vals), time.time_ns(), np.int64)
            return ChangeBatch(k, ids[sel], vals, np.zeros(len(vals), np.uint32), src, time.time_ns())

        pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection
        started = []

        def on_gc(phase, info):
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append((info["generation"], time.perf_counter() - started.pop()))

        lag = [0.0]

        async def lag_probe():
            """Event-loop responsiveness: how late a 10 ms sleep wakes up."""
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.01)
                lag[0] = max(lag[0], time.monotonic() - t - 0.01)

        probe = asyncio.create_task(lag_probe())

        async def run_rounds(count, sel=slice(None)):
            gc.collect()
            times = []
            del pauses[:]
            await asyncio.sleep(0.05)
            lag[0] = 0.0
            t_start = time.monotonic()
            for _ in range(count):
                b = make(sel)
                t0 = time.perf_counter()
                await pub.apply(b)
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0)  # let the server's publish loop and sockets run
            await asyncio.sleep(0.05)
            gcs = dict(
                gc_s=sum(p for _, p in pauses),
                gc_max_s=max((p for _, p in pauses), default=0.0),
                gen2=sum(1 for g, _ in pauses if g == 2),
                loop_lag_s=lag[0],
            )
            return times, t_start, time.monotonic() - t_start, gcs

        async def read_line(prefix):
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 180)
                if not line:
                    raise RuntimeError("client exited early")
                if line.startswith(prefix):
                    return line

        out = {"tags": len(names), "batch": len(ids), "subscribed": subscribed, "rounds": rounds}
        gc.callbacks.append(on_gc)
        try:
            # A. No subscriber: the cost of building and storing DataValues.
            times, _, total, g = await run_rounds(max(3, rounds // 3))
            out["A"] = dict(apply=times, total_s=total, **g)

            # B, C: one client in another process monitors `subscribed` of the batch's tags.
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
                fh.write("\n".join(f"ns={hmi.ns};s={names[i]}" for i in ids[:subscribed]))
            exp_b, exp_c = rounds * subscribed, 3 * rounds * subscribed
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                "--child",
                "client",
                url,
                fh.name,
                f"{exp_b},{exp_c}",
                stdout=asyncio.subprocess.PIPE,
                cwd=str(citygen.ROOT),
            )
            try:
                for phase, count, sel, exp in (
                    ("B", rounds, slice(None), exp_b),
                    ("C", 3 * rounds, slice(0, subscribed), exp_c),
                ):
                    await read_line(b"READY")
                    await asyncio.sleep(0.3)
                    times, t_start, total, g = await run_rounds(count, sel)
                    res = json.loads((await read_line(RESULT.encode()))[len(RESULT) :])
                    out[phase] = dict(
                        apply=times,
                        total_s=total,
                        rows=len(ids[sel]),
                        expected=exp,
                        received=res["count"],
                        e2e_s=res["last"] - t_start,
                        **g,
                    )
                await asyncio.wait_for(proc.wait(), 30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                os.unlink(fh.name)
        finally:
            probe.cancel()
            gc.callbacks.remove(on_gc)
            await hmi.stop()
        emit(out)

    asyncio.run(main())


def bench_publish(args: Namespace, rep: Report) -> None:
    log("\n== 4. OPC UA publisher throughput ==")
    r = run_child(
        SCRIPT,
        ["publish", args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds],
        timeout=900,
    )
    a, b, c = r["A"], r["B"], r["C"]
    nsub = r["subscribed"]
    rate_a = [r["batch"] / t for t in a["apply"]]
    rate_b = [b["rows"] / t for t in b["apply"]]
    rate_c = [c["rows"] / t for t in c["apply"]]
    e2e_b = b["received"] / b["e2e_s"]
    e2e_c = c["received"] / c["e2e_s"]
    log(f"  address space {r['tags']:,} tags; batches of {r['batch']:,} changed tags; one client monitors {nsub:,}")

    def gcs(x):
        return (
            f"GC {x['gc_s'] / x['total_s']:.0%} of the time, {x['gen2']} full collections, "
            f"longest pause {x['gc_max_s'] * 1e3:.0f} ms; slowest apply {max(x['apply']) * 1e3:.0f} ms; "
            f"max event-loop lag {x['loop_lag_s'] * 1e3:.0f} ms"
        )

    log(f"  A. apply, no subscriber: {spread(rate_a, 1e-3, '{:.1f}')} k tags/s; {gcs(a)}")
    log(
        f"  B. apply, {nsub:,} of the {r['batch']:,} monitored: {spread(rate_b, 1e-3, '{:.1f}')} k tags/s; "
        f"client received {b['received']:,}/{b['expected']:,} in {b['e2e_s']:.2f} s = {e2e_b / 1e3:.1f} k notif/s; "
        f"{gcs(b)}"
    )
    log(
        f"  C. apply, batches of the {nsub:,} monitored tags only: {spread(rate_c, 1e-3, '{:.1f}')} k notif/s server side; "
        f"client received {c['received']:,}/{c['expected']:,} in {c['e2e_s']:.2f} s = {e2e_c / 1e3:.1f} k notif/s; "
        f"{gcs(c)}"
    )
    rep.section(f"4. OPC UA publisher ({r['tags']:,}-tag space, one asyncua client in another process)")
    rep.add(
        f"Publisher.apply, {r['batch']:,} changed tags, no subscriber",
        f"{med(rate_a) / 1e3:.1f} k tags/s",
        "TagDB ingest target 10 M/s",
        f"{med(rate_a) / 10e6:.3f}x",
        "info",
    )
    rep.add(
        f"Publisher.apply, same, {nsub:,} of them monitored",
        f"{med(rate_b) / 1e3:.1f} k tags/s",
        "no subscriber",
        f"{med(rate_b) / med(rate_a):.2f}x",
        "info",
    )
    rep.add(
        "  notifications received by the client",
        f"{e2e_b / 1e3:.1f} k notif/s",
        f"{b['expected']:,} sent",
        "",
        "OK" if b["received"] == b["expected"] else f"LOST {b['expected'] - b['received']:,}",
    )
    rep.add(
        f"Publisher.apply, batches of the {nsub:,} monitored tags",
        f"{med(rate_c) / 1e3:.1f} k notif/s",
        "DESIGN.md: asyncua ~23 k/s",
        f"{med(rate_c) / 23e3:.2f}x",
        "info",
    )
    rep.add(
        "  notifications received by the client",
        f"{e2e_c / 1e3:.1f} k notif/s",
        "DESIGN.md: asyncua ~23 k/s",
        f"{e2e_c / 23e3:.2f}x",
        "OK" if c["received"] == c["expected"] else f"LOST {c['expected'] - c['received']:,}",
    )
    worst = max((a, b, c), key=lambda x: x["gc_max_s"])
    rep.add(
        "longest GC pause while publishing",
        f"{worst['gc_max_s'] * 1e3:.0f} ms",
        "",
        "",
        f"{a['gen2'] + b['gen2'] + c['gen2']} full GCs",
    )
    lag = max(x["loop_lag_s"] for x in (a, b, c))
    rep.add(
        "max event-loop lag while publishing",
        f"{lag * 1e3:.0f} ms",
        "< 1 s (driver timeout, asyncua client watchdog)",
        f"{lag:.2f}x",
        "OK" if lag < 1 else "MISS",
    )
    rep.data["publish"] = r
