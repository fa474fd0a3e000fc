"""The OPC UA front at city scale (issue 13): every goal's figure beside its target, ours beside
the stock asyncua and node-opcua servers measured in the same run.

    .venv/bin/python bench/bench_front.py                 # the issue's sizes (~40 min)
    .venv/bin/python bench/bench_front.py --quick         # small sizes, one repetition (~5 min)
    .venv/bin/python bench/bench_front.py --only throughput,latency --front process

"Ours" is the real server, ``scada.app.Application``, in its own process (bench/front/ours.py)
with a synthetic field in place of its drivers: the field changes tags through the TagDB batch
API, each new value being the machine's CLOCK_MONOTONIC in ms, so a client reads the
field-change-to-client latency from the value. ``--front`` is handed to
``Application(front=...)`` as given (inline or process, once the front runs in its own process).
The peers serve the same tree of string NodeIds in the same namespace and change the same
variables at the same rate. The client is node-opcua's (bench/node/, installed by the bench
with ``npm ci`` on first use): asyncua's client tops out near 10-25k notifications/s.

Sections: throughput (1), latency (2), memory, start, browse (3), churn (5), isolation (4: the
whole simulated city under the real ``scada run``; its alarm latency is not measured yet).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.front import churn, isolation, publish, space  # noqa: E402
from bench.front.context import Context  # noqa: E402
from bench.harness import Report, log  # noqa: E402

SECTIONS = {
    "throughput": publish.throughput,
    "latency": publish.latency,
    "memory": space.memory,
    "start": space.start_time,
    "browse": space.browse_read,
    "churn": churn.churn,
    "isolation": isolation.isolation,
}


def sizes(text: str) -> list[int]:
    """Two city sizes, comma-separated."""
    out = [int(x) for x in text.split(",") if x.strip()]
    if len(out) != 2 or out[0] == out[1]:
        raise argparse.ArgumentTypeError("two different sizes, e.g. 20000,100000")
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a check that it runs")
    ap.add_argument("--front", help="passed to Application(front=...): inline or process (default: its own)")
    ap.add_argument("--event-loop", default="uvloop", help="our server's event loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window of each run")
    ap.add_argument("--items", type=int, default=10000, help="throughput: items of the one client")
    ap.add_argument("--rate", type=float, default=10.0, help="throughput: changes per item per second")
    ap.add_argument("--tick-ms", type=float, default=10.0, help="the field's period (one batch a tick)")
    ap.add_argument("--publishing-ms", type=float, default=50.0, help="the clients' publishing interval")
    ap.add_argument("--clients", type=int, default=5, help="latency: clients at once")
    ap.add_argument("--lat-items", type=int, default=10000, help="latency: items of each client")
    ap.add_argument("--lat-rate", type=float, default=1.0, help="latency: changes per item per second")
    ap.add_argument("--space-sizes", type=sizes, default=[50000, 200000], help="memory: two city sizes (tags)")
    ap.add_argument("--start-tags", type=int, default=1000000, help="start: the city's size (tags)")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="start: seconds before giving up")
    ap.add_argument("--browse-tags", type=int, default=20000, help="browse: the city's size (tags)")
    ap.add_argument("--browse-batch", type=int, default=1000, help="browse: nodes per Browse / Read request")
    ap.add_argument("--sessions", type=int, default=1000, help="churn: sessions")
    ap.add_argument("--churn-warmup", type=int, default=50, help="churn: sessions before the first measure")
    ap.add_argument("--churn-parallel", type=int, default=10, help="churn: sessions at once")
    ap.add_argument("--churn-items", type=int, default=100, help="churn: items of each session")
    ap.add_argument("--city", default="dijon", help="isolation: the simulated city (simulators' --preset)")
    ap.add_argument("--iso-seconds", type=float, default=30.0, help="isolation: each phase's window")
    ap.add_argument("--iso-items", type=int, default=50000, help="isolation: items of each client (at most)")
    ap.add_argument("--iso-sessions", type=int, default=200, help="isolation: sessions of the connect/close loop")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, cities)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.items, args.lat_items, args.clients = 1, 4.0, 2000, 2000, 2
        args.space_sizes, args.start_tags, args.browse_tags = [5000, 20000], 50000, 10000
        args.sessions, args.churn_warmup, args.churn_parallel = 50, 10, 5
        args.city, args.iso_seconds, args.iso_items, args.iso_sessions = "tiny", 8.0, 5000, 20
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}: choose among {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-front-"))
    report = Report()
    ctx = Context(args, work, report)
    started = datetime.now(UTC)
    log(f"bench_front: sections {', '.join(args.only)}; front {args.front or 'default'}; work folder {work}")
    failed = []
    try:
        for name in args.only:
            log(f"[{name}]")
            try:
                SECTIONS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
                failed.append(name)
                report.note(f"section {name} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
    finally:
        report.note(
            f"{started:%Y-%m-%d %H:%M} UTC, front {args.front or 'default'}, {args.event_loop}; "
            "goal 4's alarm field-to-event latency is not measured yet"
        )
        report.print_table()
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), **report.data}, indent=1, default=str))
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
