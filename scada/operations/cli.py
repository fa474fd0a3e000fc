"""``scada workorders``: the work orders and their journal, from ``<data>/workorders.sqlite``.

Reads the file read-only, so it works while the server runs (SQLite WAL: it sees every committed
change). Without options: the open orders as a table. ``--all`` adds the closed and cancelled
ones; ``--state``, ``--service``, ``--commune``, ``--device``, ``--source``, ``--crew`` (each
repeatable) and ``--from``/``--to`` (on the order's creation time) filter them. ``--order ID``
lists one order's events (who did what when). ``--csv FILE`` (``-``: the standard output) writes
CSV instead: every column, times as nanoseconds and as ISO 8601 UTC.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scada.operations.model import OrderState


def _time_ns(text: str | None) -> int | None:
    from scada.history_cli import HistoryCliError, parse_time

    if not text:
        return None
    try:
        return parse_time(text, "time")
    except HistoryCliError as exc:
        raise SystemExit(str(exc)) from None


def cmd_workorders(args: argparse.Namespace) -> int:
    """List or export the work orders, or one order's events (see the module docstring)."""
    from scada.operations.journal import JOURNAL_FILE, OrderJournal, OrderJournalError

    states = args.state or None
    labels = {s.label for s in OrderState}
    for s in states or ():
        if s not in labels:
            raise SystemExit(f"unknown state {s!r} (states: {', '.join(x.label for x in OrderState)})")
    try:
        journal = OrderJournal(Path(args.data) / JOURNAL_FILE, readonly=True)
    except OrderJournalError as exc:
        raise SystemExit(str(exc)) from None
    try:
        if args.order:
            events = journal.events(args.order)
            if not events and not journal.orders(ids=[args.order]):
                raise SystemExit(f"no work order {args.order!r} in {journal.path}")
            _out(args.csv, lambda fh: journal.export_events_csv(fh, events), lambda: _events_table(events))
            return 0
        filters = {k: getattr(args, k) for k in ("service", "commune", "device", "source", "crew") if getattr(args, k)}
        orders = journal.orders(
            _time_ns(args.start),
            _time_ns(args.end),
            open_only=not args.all and not states,
            state=states,
            limit=args.limit,
            **filters,
        )
        _out(args.csv, lambda fh: journal.export_orders_csv(fh, orders), lambda: _orders_table(orders))
    except OrderJournalError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        journal.close()
    return 0


def _out(csv_to: str | None, write_csv, table) -> None:
    if csv_to == "-":
        write_csv(sys.stdout)
    elif csv_to:
        with open(csv_to, "w", newline="", encoding="utf-8") as fh:
            n = write_csv(fh)
        print(f"{n} rows written to {csv_to}", file=sys.stderr)
    else:
        table()


def _iso(ns: int) -> str:
    from scada.alarms.journal import iso_utc

    return iso_utc(ns)[:19] + "Z" if ns else "-"


def _orders_table(orders) -> None:
    print(
        f"{'order':<10} {'state':<9} {'service':<20} {'priority':<8} {'device':<14} {'commune':<14} "
        f"{'crew':<8} {'origin (UTC)':<20} {'on site due':<20} {'repaired due':<20} flags"
    )
    for o in orders:
        flags = ",".join(f for f, on in (("warned", o.warned), ("breached", o.breached)) if on)
        print(
            f"{o.id:<10} {o.state.label:<9} {o.service:<20} {o.priority:<8} {o.device or '-':<14} "
            f"{o.commune or '-':<14} {o.crew or '-':<8} {_iso(o.origin_ns):<20} {_iso(o.on_site_due_ns):<20} "
            f"{_iso(o.repaired_due_ns):<20} {flags}"
        )
    print(f"{len(orders)} order(s)", file=sys.stderr)


def _events_table(events) -> None:
    print(f"{'time (UTC)':<20} {'event':<16} {'from':<9} {'to':<9} {'user':<16} {'crew':<8} detail")
    for e in events:
        print(
            f"{_iso(e.time_ns):<20} {e.event:<16} {e.from_state.label:<9} {e.to_state.label:<9} {e.user:<16} "
            f"{e.crew or '-':<8} {e.detail}"
        )
    print(f"{len(events)} event(s)", file=sys.stderr)


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``workorders`` on the ``scada`` command's subparsers."""
    p = sub.add_parser(
        "workorders",
        help="the work orders (open ones by default), one order's events, or CSV",
        description="Reads the server's work-order journal read-only (also while the server runs).",
    )
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--all", action="store_true", help="closed and cancelled orders too")
    p.add_argument("--order", help="this order's events (who did what when)")
    p.add_argument("--state", action="append", help="only orders in this state: new, assigned... (repeatable)")
    p.add_argument("--service", action="append", help="only this service (repeatable)")
    p.add_argument("--commune", action="append", help="only this commune (repeatable)")
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument("--source", action="append", choices=("alarm", "citizen", "operator"), help="only this origin")
    p.add_argument("--crew", action="append", help="only orders given to this vehicle (repeatable)")
    p.add_argument("--from", dest="start", help="created at or after (ISO 8601, UTC unless an offset is given)")
    p.add_argument("--to", dest="end", help="created before (ISO 8601)")
    p.add_argument("--limit", type=int, help="at most this many orders (the oldest first)")
    p.add_argument("--csv", nargs="?", const="-", help="CSV to this file, or the standard output without one")
    p.set_defaults(func=cmd_workorders)
    return p
