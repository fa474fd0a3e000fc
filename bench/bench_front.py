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
whole simulated city under the real ``scada run``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.front import churn, isolation, publish, space  # noqa: E402
from bench.front.context import Context  # noqa: E402
from bench.harness import Report, log  # noqa: E402
from scada.front.process import FRONT_NICENESS  # noqa: E402

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


# (option, type, the size, --quick's size or None: the same, help). An option given on the
# command line wins over both.
SETTINGS: list[tuple[str, Any, Any, Any, str]] = [
    ("--repeats", int, 3, 1, "runs of each measurement (the figure is their median)"),
    ("--seconds", float, 10.0, 4.0, "measured window of each run"),
    ("--items", int, 10000, 2000, "throughput: items of the one client"),
    ("--rate", float, 10.0, None, "throughput: changes per item per second"),
    ("--tick-ms", float, 10.0, None, "the field's period (one batch a tick)"),
    ("--publishing-ms", float, 50.0, None, "the clients' publishing interval"),
    ("--settle", float, 5.0, 2.0, "throughput and latency: seconds between the clients' setup and the window"),
    ("--client-nice", int, 0, None, f"throughput and latency: the clients' niceness ({FRONT_NICENESS}: our front's)"),
    ("--clients", int, 5, 2, "latency and isolation: clients at once"),
    ("--lat-items", int, 10000, 2000, "latency: items of each client"),
    ("--lat-rate", float, 1.0, None, "latency: changes per item per second"),
    ("--space-sizes", sizes, [50000, 200000], [5000, 20000], "memory: two city sizes (tags)"),
    ("--start-tags", int, 1000000, 50000, "start: the city's size (tags)"),
    ("--start-timeout", float, 900.0, None, "start: seconds before giving up"),
    ("--browse-tags", int, 20000, 10000, "browse: the city's size (tags)"),
    ("--browse-batch", int, 1000, None, "browse: nodes per Browse / Read request"),
    ("--sessions", int, 1000, 50, "churn: sessions"),
    ("--churn-warmup", int, 50, 10, "churn: sessions before the first measure"),
    ("--churn-parallel", int, 10, 5, "churn: sessions at once"),
    ("--churn-items", int, 100, None, "churn: items of each session"),
    ("--city", str, "dijon", "tiny", "isolation: the simulated city (the simulators' --preset)"),
    ("--iso-seconds", float, 30.0, 8.0, "isolation: each phase's window"),
    ("--iso-items", int, 50000, 5000, "isolation: items of each client (at most: the city's tags)"),
    ("--iso-sessions", int, 200, 20, "isolation: sessions of the connect/close loop"),
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a check that it runs")
    ap.add_argument("--front", help="passed to Application(front=...): inline or process (default: its own)")
    ap.add_argument("--event-loop", default="uvloop", help="our server's event loop")
    for option, kind, full, quick, text in SETTINGS:
        ap.add_argument(option, type=kind, help=f"{text} (default {full}, --quick {quick or full})")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, cities)")
    args = ap.parse_args(argv)
    for option, _, full, quick, _ in SETTINGS:
        dest = option[2:].replace("-", "_")
        if getattr(args, dest) is None:
            setattr(args, dest, quick if args.quick and quick is not None else full)
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
        report.note(f"{started:%Y-%m-%d %H:%M} UTC, front {args.front or 'default'}, {args.event_loop}")
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
