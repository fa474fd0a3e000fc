"""Speed and memory of the server's skeleton, printed as a table of figures beside their targets.

Run:  .venv/bin/python bench/bench_skeleton.py [--quick] [--reps N] [--only SECTIONS] [--json FILE]

Sections (see bench/README.md for what each figure means):
  ingest   TagDB.update over 1M tags, batches of one device poll and of 1k/10k/100k rows, one
           consumer subscribed, beside the bare numpy scatter of the same batches
           (target >= 10M updates/s for batches)
  ingest-ops  what update() is made of: cost per row of one random gather/scatter, cost per call
  memory   bytes per tag of a 1M-tag TagDB with realistic names, fresh subprocess (target <= 200 B)
  build    OPC UA address-space build, ours (AddressSpaceBuilder) vs stock asyncua
           (add_folder/add_object/add_variable), 10k and 100k tags, fresh subprocesses
  smoke    the built space is usable: server on a free loopback port, one asyncua client read
  publish  Publisher.apply on 10k changed tags, without subscribers and with one client
           (separate process) subscribed to 1,000 of them

The sections live in bench/skeleton/ (one module each), the table and the
child-process protocol in bench/harness.py. Never part of the test suite. Figures are medians over repetitions; the machine is shared,
so compare ratios measured in the same run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.harness import Report, log  # noqa: E402
from bench.skeleton import build, ingest, memory, publish, smoke  # noqa: E402

SECTIONS: dict[str, Callable[[argparse.Namespace, Report], None]] = {
    "ingest": ingest.bench_ingest,
    "ingest-ops": ingest.bench_ingest_ops,
    "memory": memory.bench_memory,
    "build": build.bench_build,
    "smoke": smoke.bench_smoke,
    "publish": publish.bench_publish,
}

# What ``--child KIND ARGS`` runs in a fresh interpreter (harness.run_child).
CHILDREN: dict[str, Callable[[list[str]], None]] = {
    "tagdb-memory": lambda a: memory.child_tagdb_memory(int(a[0]), a[1]),
    "build": lambda a: build.child_build(a[0], int(a[1])),
    "smoke": lambda a: smoke.child_smoke(int(a[0])),
    "publish": lambda a: publish.child_publish(*map(int, a)),
    "client": lambda a: publish.child_client(a[0], a[1], a[2]),
}


def main(argv: list[str] | None = None) -> int:
    """Run the sections asked for and print the table (or, with ``--child``, one measurement)."""
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    ap.add_argument("--reps", type=int, help="repetitions of each measurement (default 5 for ingest, 3 for builds)")
    ap.add_argument("--only", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    ap.add_argument(
        "--stock-budget",
        type=float,
        help="seconds allowed to one stock asyncua build at the large size before falling back "
        "to smaller sizes (default 240, quick 120)",
    )
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        CHILDREN[args.child[0]](args.child[1:])
        return 0

    if args.quick:
        args.ingest_tags, args.batch_sizes, args.ingest_rows = 100_000, (1_000, 10_000), 100_000
        args.max_calls = 2_000
        args.memory_tags = 100_000
        args.build_sizes, args.stock_fallback, args.extra_ours = (2_400, 12_000), (4_800, 7_200), ()
        args.stock_budget = args.stock_budget or 120
        args.smoke_tags = 1_200
        args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds = 12_000, 10_000, 1_000, 6
        reps = args.reps or 1
        ingest_reps = args.reps or 2
    else:
        args.ingest_tags, args.batch_sizes, args.ingest_rows = 1_000_000, (1_000, 10_000, 100_000), 2_000_000
        args.max_calls = 20_000
        args.memory_tags = 1_000_000
        args.build_sizes, args.stock_fallback, args.extra_ours = (10_000, 100_000), (20_000, 50_000), (408_000,)
        args.stock_budget = args.stock_budget or 240
        args.smoke_tags = 1_200
        args.publish_tags, args.publish_batch, args.publish_subscribed, args.publish_rounds = 100_000, 10_000, 1_000, 30
        reps = args.reps or 3
        ingest_reps = args.reps or 5
    args.change_share = 0.10
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")

    import platform

    import asyncua
    import psutil

    log(
        f"bench_skeleton {'--quick ' if args.quick else ''}on {platform.node()}: {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}, "
        f"numpy {np.__version__}, asyncua {asyncua.__version__ if hasattr(asyncua, '__version__') else '?'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    rep = Report()
    t0 = time.perf_counter()
    for name in only:
        args.reps = ingest_reps if name.startswith("ingest") else reps
        SECTIONS[name](args, rep)
    rep.print_table()
    log(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
