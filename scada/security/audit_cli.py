"""``scada audit``: who did what on the server (the audit trail), and whether the trail is intact.

Reads ``<data>/audit.sqlite`` (or ``--trail``) read-only, so it works while the server runs.
``scada audit`` lists records over a time range, filtered by user, action and result, as a
table or as CSV (``--csv``: the columns of :data:`scada.security.audit_log.CSV_COLUMNS` after an
ISO 8601 ``time``). ``scada audit --verify`` checks the hash chain: exit status 0 when intact
(it prints the record count and the last hash, worth noting elsewhere), 1 with each problem
listed (an edited, deleted or swapped record, a chain that does not start at the beginning).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

AUDIT_FILE = "audit.sqlite"


def _time_ns(text: str | None) -> int | None:
    from scada.history_cli import HistoryCliError, parse_time

    if not text:
        return None
    try:
        return parse_time(text, "time")
    except HistoryCliError as exc:
        raise SystemExit(str(exc)) from None


def _open(args: argparse.Namespace):
    from scada.security.audit_log import AuditError, AuditLog

    try:
        return AuditLog(Path(args.trail) if args.trail else Path(args.data) / AUDIT_FILE, read_only=True)
    except AuditError as exc:
        raise SystemExit(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    """List, export or verify the audit trail (see the module docstring)."""
    from scada.security.audit_log import AuditError

    trail = _open(args)
    try:
        if args.verify:
            return _verify(trail)
        filters = {k: getattr(args, k) for k in ("user", "action", "result") if getattr(args, k)}
        start, end = _time_ns(args.start), _time_ns(args.end)
        if args.csv == "-":
            trail.export_csv(sys.stdout, start, end, limit=args.limit, **filters)
        elif args.csv:
            with open(args.csv, "w", newline="", encoding="utf-8") as fh:
                n = trail.export_csv(fh, start, end, limit=args.limit, **filters)
            print(f"{n} records written to {args.csv}", file=sys.stderr)
        else:
            _table(trail.query(start, end, limit=args.limit, **filters))
    except AuditError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        trail.close()
    return 0


def _verify(trail) -> int:
    problems = trail.verify()
    count, head = trail.head()
    if not problems:
        print(f"audit trail {trail.path}: {count} records, chain intact; last hash {head}")
        return 0
    print(f"audit trail {trail.path}: {count} records, {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  record {p.seq}: {p.kind}: {p.message}", file=sys.stderr)
    return 1


def _table(entries) -> None:
    from scada.alarms.journal import iso_utc

    print(f"{'seq':>6} {'time (UTC)':<27} {'user':<16} {'action':<16} {'result':<24} {'client':<21} target  arguments")
    for e in entries:
        r = e.record
        print(
            f"{e.seq:>6} {iso_utc(r.time_ns):<27} {r.user:<16} {r.action:<16} {r.result:<24} "
            f"{r.client_address:<21} {r.target}  {r.arguments}"
        )
    print(f"{len(entries)} record(s)", file=sys.stderr)


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``audit`` on the ``scada`` command's subparsers."""
    p = sub.add_parser(
        "audit",
        help="the audit trail (who did what): list, export as CSV, or --verify its hash chain",
        description="Reads the server's audit trail read-only (also while the server runs).",
    )
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--trail", help=f"the audit trail file (default: <data>/{AUDIT_FILE}; security.yaml's audit:)")
    p.add_argument(
        "--verify", action="store_true", help="check the hash chain: exit 0 when intact, 1 with the problems"
    )
    p.add_argument("--from", dest="start", help="ISO 8601 start, included (UTC unless an offset is given)")
    p.add_argument("--to", dest="end", help="ISO 8601 end, excluded")
    p.add_argument("--user", action="append", help="only this user (repeat for several)")
    p.add_argument("--action", action="append", help="only this action: call, write, activate_session... (repeatable)")
    p.add_argument("--result", action="append", help="only this result: Good, BadUserAccessDenied... (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many records (the oldest first)")
    p.add_argument(
        "--csv", nargs="?", const="-", help="CSV instead of a table: to this file, or the standard output without one"
    )
    p.set_defaults(func=cmd_audit)
    return p
