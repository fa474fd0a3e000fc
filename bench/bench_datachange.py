"""DataChangeNotification encoding: our vectorised encoder against asyncua's, same rows, same run.

    .venv/bin/python bench/bench_datachange.py [--rows 10136] [--reps 7]

Timed, for ``--rows`` notifications of mixed tag types (70 % Double, 15 % Boolean, 10 %
Int32, 5 % String; 5 % Bad statuses; a few Null values):
* ``encode_items``: the bytes of every MonitoredItemNotification from columns;
* asyncua: ``struct_to_binary`` of the same notifications already built as objects, and the
  building of those objects (MonitoredItemNotification + DataValue + Variant + datetimes),
  which is what asyncua's path pays per value on top;
* the whole fast path of one publish: ``DataChangeQueue.offer`` of a change batch over
  ``--rows`` monitored items (lookup, trigger filter, queue) then ``pop`` (trim + encode).
The issue 13 goal is 100,000 notifications/s to one client; these are the server's CPU costs
per notification, the client's side is measured in bench/node/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from asyncua import ua  # noqa: E402
from asyncua.ua.ua_binary import struct_to_binary  # noqa: E402

from bench.harness import Report  # noqa: E402
from scada.opcua.datachange import BOOLEAN, DOUBLE, INT32, STRING, encode_items  # noqa: E402
from scada.opcua.fastqueue import REPORTING, DataChangeQueue, ItemParams  # noqa: E402
from scada.opcua.typed_ua import DataValue, StatusCode  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_790_000_000_000_000_000


def rows(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    vtypes = rng.choice(np.array([DOUBLE, BOOLEAN, INT32, STRING], np.uint8), n, p=[0.7, 0.15, 0.1, 0.05])
    values = np.round(rng.normal(100, 30, n), 3)
    values[vtypes == BOOLEAN] = rng.integers(0, 2, int((vtypes == BOOLEAN).sum()))
    values[rng.random(n) < 0.01] = np.nan
    status = np.where(rng.random(n) < 0.05, 0x80310000, 0).astype(np.uint32)
    src = T0 + rng.integers(0, 10**9, n)
    texts = np.full(n, None, object)
    texts[vtypes == STRING] = "no answer from the cabinet"
    return np.arange(n, dtype=np.uint32), vtypes, values, status, src, np.full(n, T0 + 10**9, np.int64), texts


def objects(handles, vtypes, values, status, src, srv, texts) -> list[ua.MonitoredItemNotification]:
    """The notifications as asyncua builds them on its path (one object tree per value)."""
    vt = {DOUBLE: ua.VariantType.Double, BOOLEAN: ua.VariantType.Boolean, INT32: ua.VariantType.Int32}
    out = []
    for k in range(len(handles)):
        v, t = float(values[k]), int(vtypes[k])
        if t == STRING:
            var = ua.Variant(texts[k], ua.VariantType.String)
        elif v != v:
            var = ua.Variant(None, ua.VariantType.Null)
        else:
            var = ua.Variant(int(v) if t == INT32 else bool(v) if t == BOOLEAN else v, vt[t])
        dv = DataValue(
            var,
            StatusCode=StatusCode(int(status[k])),
            SourceTimestamp=EPOCH + timedelta(microseconds=int(src[k]) // 1000),
            ServerTimestamp=EPOCH + timedelta(microseconds=int(srv[k]) // 1000),
        )
        out.append(ua.MonitoredItemNotification(ClientHandle=int(handles[k]), Value=dv))
    return out


def best(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_136)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    n = args.rows
    data = rows(n)
    objs = objects(*data)
    ours = best(lambda: encode_items(*data), args.reps)
    theirs = best(lambda: b"".join(struct_to_binary(o) for o in objs), args.reps)
    build = best(lambda: objects(*data), args.reps)

    queue = DataChangeQueue()
    handles, vtypes, values, status, src, srv, texts = data
    for tag in range(n):
        queue.add(tag, tag, int(vtypes[tag]), ItemParams(tag, REPORTING, 1, True), None)
    ids = np.arange(n, dtype=np.int64)
    step = [0.0]

    def publish() -> None:
        step[0] += 1.0  # every row changes each round, as the 10-changes-a-second load
        queue.offer(ids, values + step[0], status, src, int(srv[0]), texts)
        queue.pop()

    publish()
    whole = best(publish, args.reps)

    rep = Report()
    rep.section(f"DataChangeNotification encoding, {n:,} notifications (median of {args.reps})")
    rate = n / ours
    rep.add(
        "encode_items (ours)",
        f"{rate:,.0f} rows/s",
        f"asyncua struct_to_binary {n / theirs:,.0f} rows/s",
        f"{theirs / ours:,.1f}x",
    )
    rep.add("asyncua: build the objects", f"{n / build:,.0f} rows/s", "(per value on asyncua's path, before encoding)")
    rep.add(
        "asyncua: build + encode",
        f"{n / (build + theirs):,.0f} rows/s",
        "",
        f"ours {(build + theirs) / ours:,.1f}x faster",
    )
    rep.add(
        "fast path publish (offer + pop)",
        f"{n / whole:,.0f} rows/s",
        ">= 100,000 notifications/s (issue 13)",
        "",
        "ok" if n / whole >= 100_000 else "below",
    )
    rep.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
