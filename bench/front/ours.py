"""Our server under bench, in its own process: ``scada.app.Application`` on a configuration, its
drivers replaced by a synthetic field (bench/front/field.py) that changes the listed tags
through the TagDB batch API, as a driver's poll does.

    python -m bench.front.ours --config DIR --data DIR --endpoint URL [--changing FILE --rate R]
        [--tick-ms T] [--front inline|process] [--event-loop uvloop|asyncio] [--status-interval S]

Everything else of the server runs as under ``scada run``: TagDB, alarm engine, historian, OPC
UA front. ``--front`` is passed to ``Application(front=...)`` as given (the OPC UA front in its
own process, issue 13); without it the Application's default front runs. Prints
``LISTENING <seconds since the interpreter started>`` when the OPC UA front serves, and
``RESULT {json}`` (the field's statistics) when SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

T0 = time.monotonic()  # before the heavy imports: start time counts them

from bench.front.field import FieldStats, run_field, serve_until_sigterm  # noqa: E402
from bench.front.workload import read_names  # noqa: E402


async def serve(args: argparse.Namespace, stats: FieldStats) -> None:
    """Run the Application and its field until SIGTERM; ``stats`` counts what the field does."""
    from city_scada import load_config
    from scada.app import Application

    config = load_config(Path(args.config))
    kwargs = {"front": args.front} if args.front else {}
    try:
        app = Application(config, args.endpoint, args.status_interval, args.data, **kwargs)
    except TypeError as exc:
        if "front" not in str(exc):
            raise
        raise SystemExit(f"--front {args.front}: this checkout's Application has no front= option ({exc})") from None
    await run_with_field(app, args, stats)


async def run_with_field(app, args: argparse.Namespace, stats: FieldStats) -> None:
    """Run ``app`` (an Application) with the synthetic field in place of its drivers, changing the
    tags named in ``args.changing`` ``args.rate`` times a second; ``LISTENING`` once it serves."""
    app.drivers = []  # the bench is the field: no driver polls the configuration's devices
    tagdb = app.tagdb
    ids = tagdb.ids_of(read_names(Path(args.changing))) if args.changing else np.zeros(0, np.int64)
    good = np.zeros(len(ids), np.uint32)

    def write(positions: np.ndarray, value_ms: float) -> None:
        n = len(positions)
        tagdb.update(ids[positions], np.full(n, value_ms), good[:n], time.time_ns())

    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(app.run(), name="application")
        await app.started.wait()
        print(f"LISTENING {time.monotonic() - T0:.3f}", flush=True)
        tg.create_task(run_field(write, len(ids), args.rate, args.tick_ms / 1000, stats), name="field")
        await server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--changing", help="file of the tag names the field changes, one a line")
    ap.add_argument("--rate", type=float, default=10.0, help="changes per tag per second")
    ap.add_argument("--tick-ms", type=float, default=10.0, help="the field's period: one batch a tick")
    ap.add_argument("--front", help="Application(front=...): inline or process (issue 13)")
    ap.add_argument("--status-interval", type=float, default=5.0)
    ap.add_argument("--log-json", action="store_true")
    ap.add_argument("--event-loop", default="uvloop")
    args = ap.parse_args()
    from common import eventloop, logs

    logs.configure(json=args.log_json, level="INFO")
    return serve_until_sigterm(lambda stats: serve(args, stats), lambda main: eventloop.run(main, args.event_loop))


if __name__ == "__main__":
    sys.exit(main())
