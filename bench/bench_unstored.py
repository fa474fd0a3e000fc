"""The cost of ``history_unstored`` on the core's event loop during a store outage.

An OPC UA front asks the core for the points its historian holds but has not stored yet
(``serve_unstored``: the batch being written, the backlog of a failing store, the points kept
since the last write, the compressor's held ones). During an outage the backlog grows to
``BACKLOG_MAX_VALUES`` (2 M points); this bench fills it as a failing disk does (the real
Historian, its store's writes refused with ENOSPC, one batch per write period) and prints the
time of one request by the number of tags asked, and the historian's own time to queue.

    .venv/bin/python bench/bench_unstored.py [--backlog 2000000] [--batch 5000] [--repeats 21]

Runs on any checkout (it uses the historian's write path and ``serve_unstored`` only): run it
on main and on a branch in the same time window to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from city_scada import load_config  # noqa: E402
from scada.front.history import serve_unstored  # noqa: E402
from scada.historian.compress import StoredBatch  # noqa: E402
from scada.historian.service import Historian  # noqa: E402
from scada.tagdb import TagDB  # noqa: E402


def refuse(batch: StoredBatch) -> int:
    """The store's write on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device (bench)")


async def fill(h: Historian, total: int, batch: int, tags: int, rng: np.random.Generator) -> tuple[float, float]:
    """Queue ``total`` points in batches of ``batch`` through the historian's write path;
    seconds in all and the longest write period's (the event loop's time: the refused store
    write itself runs in a thread)."""
    t0 = time.time_ns()
    spent = worst = 0.0
    for k in range(total // batch):
        ids = rng.integers(0, tags, batch).astype(np.int64)
        times = t0 + k * 500_000_000 + np.sort(rng.integers(0, 500_000_000, batch)).astype(np.int64)
        b = StoredBatch(ids, rng.normal(size=batch), np.zeros(batch, np.uint32), times)
        start = time.perf_counter()
        h._pending.append(b)
        h._retry_at = 0.0 if k % 60 == 59 else float("inf")  # a retry every 60 periods (30 s), as the backoff's cap
        await h._write()
        took = time.perf_counter() - start
        spent, worst = spent + took, max(worst, took)
    return spent, worst


def per_request(h: Historian, tags: int, asked: int, repeats: int, rng: np.random.Generator) -> list[float]:
    """Seconds of ``serve_unstored`` for ``asked`` random tags, ``repeats`` times."""
    out = []
    for _ in range(repeats):
        ids = rng.choice(tags, asked, replace=False).tolist()
        start = time.perf_counter()
        serve_unstored(h, ids)
        out.append(time.perf_counter() - start)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=2_000_000, help="points waiting (default: the historian's cap)")
    ap.add_argument("--batch", type=int, default=5000, help="points kept per write period")
    ap.add_argument("--repeats", type=int, default=21, help="requests per size (the median is printed)")
    ap.add_argument("--asked", default="1,10,100,1000", help="tags per request, comma-separated")
    a = ap.parse_args()
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    tags = len(tagdb)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as work:
        h = Historian(config, tagdb, Path(work))
        h.store.write = refuse  # type: ignore[method-assign]  # the disk is full
        queued, worst = await fill(h, a.backlog, a.batch, tags, rng)
        waiting = h.status()["history_backlog"]
        print(
            f"backlog: {waiting:,} points of {tags:,} tags, queued in {queued:.2f} s of the historian's time "
            f"(longest write period {worst * 1000:.1f} ms)"
        )
        print(f"{'tags asked':>10}  {'points found':>12}  {'ms per request (median)':>24}  {'min':>8}  {'max':>8}")
        for asked in (int(x) for x in a.asked.split(",")):
            asked = min(asked, tags)
            found = sum(len(v.times) for v in _found(h, rng, tags, asked))
            times = per_request(h, tags, asked, a.repeats, rng)
            print(
                f"{asked:>10,}  {found:>12,}  {statistics.median(times) * 1000:>24.2f}  "
                f"{min(times) * 1000:>8.2f}  {max(times) * 1000:>8.2f}"
            )
        h.store.close()


def _found(h: Historian, rng: np.random.Generator, tags: int, asked: int):
    from scada.opcua.history import unstored_points

    return unstored_points(h, rng.choice(tags, asked, replace=False).tolist()).values()


if __name__ == "__main__":
    asyncio.run(main())
