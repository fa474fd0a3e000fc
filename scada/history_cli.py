"""``scada history``: a tag's (or a pattern's) history from the embedded store, as CSV.

Reads ``<data>/history.sqlite`` read-only, so it works while the server runs (SQLite WAL:
it sees what the server has written, merged or not). Raw values by default; with
``--aggregate`` one value per ``--interval`` (the OPC UA aggregates of ``HistoryStore.read_processed``).
Columns: ``time`` (ISO 8601 UTC, microseconds), ``tag``, ``value`` (empty when there is none),
``status`` (the OPC UA StatusCode's name, e.g. ``Good``, ``Bad_CommunicationError``).
Tags come one after the other, each in time order. The points the server holds and has not
stored yet (the last seconds of a changing value) are not in the file yet.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from datetime import UTC
from pathlib import Path

HISTORY_FILE = "history.sqlite"
AGGREGATES = ("average", "minimum", "maximum", "count", "interpolative", "timeaverage")
PAGE = 100_000  # raw values read per query: a year of one tag never sits in memory at once

_UNITS = {
    "ms": 1_000_000,
    "s": 10**9,
    "sec": 10**9,
    "min": 60 * 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


class HistoryCliError(Exception):
    """A bad argument or an unusable store: the message says which and what to do."""


def parse_interval(text: str) -> int:
    """'1h', '15min', '30s', '500ms', '1d', '2w' or plain seconds -> nanoseconds (> 0)."""
    m = _DURATION.match(text.lower())
    if not m or m.group(2) not in ("", *_UNITS):
        raise HistoryCliError(f"not an interval: {text!r} (e.g. 1h, 15min, 30s, 500ms, 1d)")
    ns = round(float(m.group(1)) * (_UNITS[m.group(2)] if m.group(2) else 10**9))
    if ns <= 0:
        raise HistoryCliError(f"the interval must be longer than zero (got {text!r})")
    return int(ns)


def parse_time(text: str, what: str) -> int:
    """ISO 8601 (a date, or a date and time; UTC unless it gives an offset) -> ns since the epoch."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise HistoryCliError(f"{what}: not an ISO 8601 time: {text!r} (e.g. 2026-11-28 or 2026-11-28T06:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    s = int(t.timestamp())
    return s * 10**9 + t.microsecond * 1000


def status_name(code: int) -> str:
    """Good, Bad_CommunicationError, Uncertain_DataSubNormal...: the project's spelling of a StatusCode."""
    from asyncua.ua.status_codes import code_to_name_doc

    from scada import status as st

    code = int(code)
    if code in st.NAMES:
        return st.NAMES[code]
    entry = code_to_name_doc.get(code & 0xFFFF0000)
    if entry is None:
        return f"0x{code:08X}"
    return re.sub(r"^(Good|Uncertain|Bad)(?=[A-Z])", r"\1_", entry[0])


def _value(v: float, text: str | None, count: bool) -> str:
    if text is not None:
        return text
    if v != v:  # NaN: no value
        return ""
    if count:
        return str(int(v))
    return repr(float(v))


def open_store(data: str | Path):
    from scada.historian.store import HistoryError, HistoryStore

    path = Path(data) / HISTORY_FILE
    if not path.is_file():
        raise HistoryCliError(f"no history store at {path} (the server writes it in its --data folder)")
    try:
        return HistoryStore(path, readonly=True)
    except HistoryError as exc:
        raise HistoryCliError(str(exc)) from None


def select_tags(store, pattern: str) -> list[str]:
    """The store's tag names matching ``pattern`` (a name, or a glob: * ? [...])."""
    names = store.names(pattern)
    if not names:
        hint = "" if any(c in pattern for c in "*?[") else " (a pattern: 'Dijon/lighting/*/power')"
        raise HistoryCliError(f"no tag matching {pattern!r} in {store.path}{hint}")
    return names


def export(
    store,
    names: list[str],
    start: int,
    end: int,
    out,
    aggregate: str | None = None,
    interval: int | None = None,
    stepped: bool = False,
) -> int:
    """Write the CSV (header, then each tag's rows in time order); returns the rows written."""
    from scada.alarms.journal import iso_utc

    w = csv.writer(out, lineterminator="\n")
    w.writerow(("time", "tag", "value", "status"))
    rows = 0
    names_cache: dict[int, str] = {}

    def status(code: int) -> str:
        s = names_cache.get(code)
        if s is None:
            s = names_cache[code] = status_name(code)
        return s

    for name in names:
        if aggregate is None:
            after = None
            while True:
                r = store.read_raw(name, start, end, limit=PAGE, after=after)
                texts = r.texts if r.texts is not None else (None,) * len(r)
                for t, v, s, x in zip(r.times.tolist(), r.values.tolist(), r.status.tolist(), texts):
                    w.writerow((iso_utc(t), name, _value(v, x, False), status(s)))
                rows += len(r)
                if r.next_after is None:
                    break
                after = r.next_after
        else:
            p = store.read_processed(name, start, end, interval or (end - start), aggregate, stepped=stepped)
            count = aggregate == "count"
            for t, v, s in zip(p.times.tolist(), p.values.tolist(), p.status.tolist()):
                w.writerow((iso_utc(t), name, _value(v, None, count), status(s)))
            rows += len(p)
    return rows


def cmd_history(args: argparse.Namespace) -> int:
    """``scada history``: see the module docstring."""
    try:
        end = parse_time(args.end, "--to") if args.end else time.time_ns()
        start = parse_time(args.start, "--from") if args.start else end - 24 * 3600 * 10**9
        if start >= end:
            raise HistoryCliError("--from must be before --to")
        if args.interval and not args.aggregate:
            raise HistoryCliError("--interval needs --aggregate (raw values have no interval)")
        interval = parse_interval(args.interval) if args.interval else None
        store = open_store(args.data)
    except HistoryCliError as exc:
        print(f"scada history: {exc}", file=sys.stderr)
        return 1
    try:
        names = select_tags(store, args.tag)
        aggregate = args.aggregate.lower() if args.aggregate else None
        if args.csv:
            try:
                # Opened apart from the ``with``: only the open's failure is "cannot write".
                fh = open(args.csv, "w", newline="", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise HistoryCliError(f"cannot write {args.csv}: {exc.strerror}") from None
            with fh:
                n = export(store, names, start, end, fh, aggregate, interval, args.stepped)
            print(f"{n} rows of {len(names)} tag(s) written to {args.csv}", file=sys.stderr)
        else:
            n = export(store, names, start, end, sys.stdout, aggregate, interval, args.stepped)
            print(f"{n} rows of {len(names)} tag(s)", file=sys.stderr)
    except HistoryCliError as exc:
        print(f"scada history: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``history`` on the ``scada`` command's subparsers."""
    p = sub.add_parser(
        "history",
        help="a tag's history (or a pattern's) as CSV: raw values or an aggregate per interval",
        description="Reads the server's history store read-only (also while the server runs) and "
        "writes CSV: time (ISO 8601 UTC), tag, value, status.",
    )
    p.add_argument("tag", help="a tag name (Dijon/lighting/LC-DIJ-001/power) or a glob pattern ('*/lighting/*/power')")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument(
        "--from",
        dest="start",
        help="ISO 8601 start, included (UTC unless an offset is given; default: 24 h before --to)",
    )
    p.add_argument("--to", dest="end", help="ISO 8601 end, excluded (default: now)")
    p.add_argument(
        "--aggregate",
        type=str.lower,
        choices=AGGREGATES,
        help="one value per interval instead of the raw values (OPC UA Part 13 definitions)",
    )
    p.add_argument("--interval", help="the aggregate's interval: 1h, 15min, 30s, 1d... (default: the whole range)")
    p.add_argument(
        "--stepped",
        action="store_true",
        help="hold values between points (discrete points) for interpolative and timeaverage",
    )
    p.add_argument("--csv", help="write to this file instead of the standard output")
    p.set_defaults(func=cmd_history)
    return p
