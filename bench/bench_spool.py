"""Historian spool: append rate, and replay rate into VictoriaMetrics after an outage.

    .venv/bin/python bench/bench_spool.py [--values 500000] [--rows 100] [--reps 3] [--settle 2] [--dir DIR]

Workload: 1,000 lighting cabinets x 15 points (``<commune>/lighting/LC-xxxx/pNN``); a batch is
``--rows`` changed rows (default 100, a few device polls) with values like a field's (half
integral states, half analog values with two decimals) and one source time per batch.

1. **Append** (no network), values/s, in a fresh spool folder on disk each repetition:
   * ``InfluxSink.submit``: encode to line protocol (vectorised) + ``Spool.append``; the owner's
     ``sync()`` (fsync) is included at the end, as the sink does every 0.5 s;
   * ``Spool.append`` alone, of the same payloads already encoded;
   * the same with ``fsync_each_append=True`` (what surviving a power cut without loss costs);
   * baseline: ``os.write`` of the same payloads to one file, then one fsync (the disk path
     without our framing, CRC, index and lock).
2. **Replay after an outage**, values/s: ``--values`` values are submitted while no database
   runs (the sink is not running: the outage), then a VictoriaMetrics is started on loopback
   and ``InfluxSink.run()`` drains the spool; the time runs from the start of the drain to the
   last acknowledgement. Baselines in the same run, into the same database (other metric names
   of the same length): influxdb-client's synchronous ``WriteApi.write`` of the same line
   protocol in requests of the same size (1 MiB), one after another (no spool, no durability),
   and influxdb-client's batching ``WriteApi`` (its background thread; batches of 5,000 records)
   fed the same payloads, timed until ``close()`` returned (it drops a batch once its retries are
   exhausted: the reason for the spool). Every series exists in the database before timing (one
   sample each), so that its creation of new series is charged to none of them.

The order of the three replays rotates per repetition, and the database rests ``--settle``
seconds (2) before each; figures are medians (use ``--reps 3`` or a multiple).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import COMMUNES  # noqa: E402
from scada.historian.influx import InfluxSink, TagMeta, encode_lines  # noqa: E402
from scada.historian.spool import Spool  # noqa: E402
from tests.integration.victoria import Victoria  # noqa: E402

N_TAGS = 15_000
REQUEST = 1 << 20


def tag_meta(cls: str) -> TagMeta:
    names = [f"{COMMUNES[(i // 15) % len(COMMUNES)]}/{cls}/LC-{i // 15:04d}/p{i % 15:02d}" for i in range(N_TAGS)]
    return TagMeta.from_names(names)


def batches(n_values: int, rows: int, t0: int, seed: int = 1):
    """(ids, values, status, times) per batch; ids unique within a batch, times 1 ms apart per batch."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_values // rows):
        ids = rng.choice(N_TAGS, rows, replace=False)
        vals = np.where(ids % 2 == 0, rng.integers(0, 4, rows).astype(float), np.round(rng.uniform(0, 400, rows), 2))
        out.append((ids, vals, np.zeros(rows, dtype=np.uint32), np.full(rows, t0 + b * 1_000_000, dtype=np.int64)))
    return out


def encoded(meta: TagMeta, work) -> list[bytes]:
    return [encode_lines(meta, *b) for b in work]


def fmt(v: float) -> str:
    return f"{v:,.0f}"


# ---------------------------------------------------------------- 1. append


def append_rates(folder: Path, work, payloads, reps: int) -> dict[str, list[float]]:
    n_values = sum(len(b[0]) for b in work)
    meta = tag_meta("lighting")
    res: dict[str, list[float]] = {"submit": [], "append": [], "append_fsync": [], "os.write": [], "encode": []}
    for rep in range(reps):
        order = ["submit", "append", "append_fsync", "os.write", "encode"]
        if rep % 2:
            order.reverse()
        for what in order:
            d = folder / f"append-{rep}-{what}"
            if what == "os.write":
                d.mkdir(parents=True)
                t = time.perf_counter()
                fd = os.open(d / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                for p in payloads:
                    os.write(fd, p)
                os.fsync(fd)
                os.close(fd)
            elif what == "encode":
                t = time.perf_counter()
                for b in work:
                    encode_lines(meta, *b)
            else:
                sp = Spool(d, capacity_bytes=4 << 30, fsync_each_append=(what == "append_fsync"))
                if what == "submit":
                    sink = InfluxSink("http://127.0.0.1:9", "t", "o", "b", sp, meta)
                    t = time.perf_counter()
                    for b in work:
                        sink.submit(*b)
                else:
                    t = time.perf_counter()
                    for p in payloads:
                        sp.append(p)
                sp.sync()
                sp.close()
            res[what].append(n_values / (time.perf_counter() - t))
            shutil.rmtree(d, ignore_errors=True)
    return res


# ---------------------------------------------------------------- 2. replay


async def replay_ours(vm: Victoria, folder: Path, work) -> float:
    sp = Spool(folder, capacity_bytes=4 << 30)
    sink = InfluxSink(vm.url, "t", "o", "b", sp, tag_meta("lightinA"), max_request_bytes=REQUEST, timeout=30)
    for b in work:  # the outage: nothing runs the sink
        sink.submit(*b)
    sp.sync()
    n = sum(len(b[0]) for b in work)
    t = time.perf_counter()
    task = asyncio.create_task(sink.run())
    while sp.backlog_entries:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert sink.status().quarantined == 0 and sink.status().sent_values == n, sink.status()
    sp.close()
    return n / elapsed


def replay_sync_baseline(vm: Victoria, payloads: list[bytes], n_values: int) -> float:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    # the same requests as the sink's: whole payloads up to 1 MiB
    requests: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for p in payloads:
        if cur and size + len(p) > REQUEST:
            requests.append(b"".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p)
    requests.append(b"".join(cur))
    with InfluxDBClient(url=vm.url, token="t", org="o", timeout=30_000) as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for r in requests:
            api.write(bucket="b", record=r, write_precision=WritePrecision.NS)
        return n_values / (time.perf_counter() - t)


def replay_batching_baseline(vm: Victoria, payloads: list[bytes], n_values: int) -> float:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import WriteOptions

    with InfluxDBClient(url=vm.url, token="t", org="o", timeout=30_000) as client:
        t = time.perf_counter()
        api = client.write_api(write_options=WriteOptions(batch_size=5_000, flush_interval=100))
        for p in payloads:
            api.write(bucket="b", record=p, write_precision=WritePrecision.NS)
        api.close()  # flushes and waits for the background thread
        return n_values / (time.perf_counter() - t)


def count_samples(vm: Victoria, name_re: str) -> int:
    return sum(len(r["values"]) for r in vm.export(f'{{__name__=~"{name_re}"}}'))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=500_000, help="values per measurement (default 500,000)")
    ap.add_argument("--rows", type=int, default=100, help="rows per submitted batch (default 100)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of rest for the database between runs")
    ap.add_argument("--dir", type=Path, help="folder for the spools and the database (default: a temporary one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        t0 = time.time_ns() // 1_000_000 * 1_000_000 - 3600 * 10**9
        work = batches(args.values, args.rows, t0)
        payloads = encoded(tag_meta("lighting"), work)
        n_values = len(work) * args.rows
        mb = sum(map(len, payloads)) / 1e6
        print(
            f"spool bench: {n_values:,} values in {len(work):,} batches of {args.rows} rows, "
            f"{mb:.1f} MB of line protocol ({mb * 1e6 / n_values:.0f} B/value); {args.reps} repetitions, medians; "
            f"files in {tmp}"
        )
        print()
        print(f"{'1. append (no network)':58} {'values/s':>12}   ratio to baseline")
        ap_res = append_rates(tmp, work, payloads, args.reps)
        base = statistics.median(ap_res["os.write"])
        rows = [
            ("InfluxSink.submit: encode + append (+ sync)", "submit"),
            ("Spool.append of encoded payloads (+ sync)", "append"),
            ("Spool.append, fsync_each_append=True", "append_fsync"),
            ("baseline: os.write of the same bytes, one fsync", "os.write"),
            ("encode_lines alone (info)", "encode"),
        ]
        for label, key in rows:
            m = statistics.median(ap_res[key])
            print(f"{label:58} {fmt(m):>12}   {m / base:5.2f}")
        print()

        vm = Victoria(tmp / "vm")
        try:
            # One sample per series of each name set first: VictoriaMetrics' creation of 15,000 new
            # series (~0.3 s) would otherwise be charged to whichever runs first.
            warm = [
                (
                    np.arange(N_TAGS),
                    np.zeros(N_TAGS),
                    np.zeros(N_TAGS, dtype=np.uint32),
                    np.full(N_TAGS, t0 - 10**9, dtype=np.int64),
                )
            ]
            for cls in ("lightinA", "lightinB", "lightinC"):
                replay_sync_baseline(vm, encoded(tag_meta(cls), warm), N_TAGS)
            res: dict[str, list[float]] = {"ours": [], "sync": [], "batching": []}
            for rep in range(args.reps):
                t_rep = t0 + rep * 10**9 * 600  # distinct timestamps per repetition
                rep_work = [(i, v, s, t - t0 + t_rep) for i, v, s, t in work]
                base_payloads = encoded(tag_meta("lightinB"), rep_work)
                batch_payloads = encoded(tag_meta("lightinC"), rep_work)
                order = ["ours", "sync", "batching"]
                order = order[rep % 3 :] + order[: rep % 3]  # each takes each position in turn
                for what in order:
                    # Let the database finish with the previous run (its background merges share
                    # the two cores with the client) so that no run inherits another's work.
                    vm.flush()
                    time.sleep(args.settle)
                    if what == "ours":
                        res[what].append(asyncio.run(replay_ours(vm, tmp / f"replay-{rep}", rep_work)))
                    elif what == "sync":
                        res[what].append(replay_sync_baseline(vm, base_payloads, n_values))
                    else:
                        res[what].append(replay_batching_baseline(vm, batch_payloads, n_values))
            counts = {k: count_samples(vm, f"{k}_.*") - N_TAGS for k in ("lightinA", "lightinB", "lightinC")}
        finally:
            vm.stop()
        sync = statistics.median(res["sync"])
        print(f"{'2. replay after an outage, into VictoriaMetrics':58} {'values/s':>12}   ratio to sync baseline")
        print(
            f"{'InfluxSink.run draining the spool (1 MiB requests)':58} {fmt(statistics.median(res['ours'])):>12}   "
            f"{statistics.median(res['ours']) / sync:5.2f}"
        )
        print(f"{'  spread (min-max)':58} {fmt(min(res['ours'])) + ' - ' + fmt(max(res['ours'])):>24}")
        print(f"{'baseline: influxdb-client SYNCHRONOUS, same requests':58} {fmt(sync):>12}   1.00")
        print(
            f"{'influxdb-client batching WriteApi (no durability)':58} "
            f"{fmt(statistics.median(res['batching'])):>12}   {statistics.median(res['batching']) / sync:5.2f}"
        )
        print(
            f"{'samples in the database (ours / sync / batching)':58} "
            f"{counts['lightinA']:,} / {counts['lightinB']:,} / {counts['lightinC']:,}   "
            f"(expected {n_values * args.reps:,} each)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
