"""``scada report --month YYYY-MM``: the performance contract's monthly report, as CSV and HTML.

``scada report --month 2026-11 --data var --config . --out report/ --tz Europe/Paris`` reads
the server's files read-only (also while it runs; see :mod:`scada.operations.kpi_service`) for
the calendar month of ``--tz`` and writes into ``--out``:

============================  ==================================================================
``energy_cabinets.csv``       per lighting cabinet: energy, known hours, baseline, saving, met
``energy_communes.csv``       the same per commune
``availability_classes.csv``  per equipment class: device hours known, online, available, share
``availability_communes.csv`` the same per class and commune
``delays.csv``                per service, priority and kind (on_site, repaired): count, p50,
                              p90, max, contract, over, late_open, share within, met
``report.html``               one readable page: the tables and three charts (energy against
                              baseline per commune, delays against the contract, availability
                              against targets), SVG inline: no network, no script
============================  ==================================================================

CSV: UTF-8, a header line, an empty field for a figure not known; energies kWh, durations s
(delays) or h (availability), shares fractions (0.65 = 65 %). How each figure is computed:
:mod:`scada.operations.kpi`.

**The clock.** The month and every figure are in the server's operations clock, the work
orders' (:mod:`scada.operations.kpi_service`): the data folder's clock record (``clock.json``,
:mod:`scada.control.clockmap`, written by the server at each start) maps the history's and the
alarm journal's real stamps into it. The report of a simulated run's folder (``scada run
--clock-start ... --acceleration ...``) is therefore the simulated month's, and its orders still
open are judged as of the clock's reading at the end of the recorded data, not real now. Without
a usable record (a folder of an older server, a damaged file) the report says so on stderr and in
the page, and reads every stamp as real time (right for a production server's folder).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.yamlsrc import ConfigError
from scada.control import clockmap
from scada.operations.kpi_service import Kpis, NoData, ReadError, compute, month_bounds

CSV_COLUMNS = {
    "energy_cabinets.csv": (
        "device",
        "commune",
        "energy_kwh",
        "covered_h",
        "coverage",
        "baseline_kwh",
        "saving",
        "target",
        "met",
        "counter_resets",
    ),
    "energy_communes.csv": (
        "commune",
        "cabinets",
        "cabinets_reporting",
        "energy_kwh",
        "covered_h",
        "coverage",
        "baseline_kwh",
        "saving",
        "target",
        "met",
        "counter_resets",
    ),
    "availability_classes.csv": (
        "class",
        "devices",
        "devices_known",
        "known_h",
        "online_h",
        "available_h",
        "availability",
        "target",
        "met",
    ),
    "availability_communes.csv": (
        "class",
        "commune",
        "devices",
        "devices_known",
        "known_h",
        "online_h",
        "available_h",
        "availability",
        "target",
        "met",
    ),
    "delays.csv": (
        "service",
        "priority",
        "kind",
        "count",
        "p50_s",
        "p90_s",
        "max_s",
        "contract_s",
        "over",
        "late_open",
        "within",
        "met",
    ),
}
HTML_FILE = "report.html"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class ReportError(Exception):
    """What stops a report, said to the user."""


def parse_month(text: str) -> tuple[int, int]:
    m = _MONTH.match(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ReportError(f"bad month {text!r}: expected YYYY-MM (e.g. 2026-11)")
    return int(m.group(1)), int(m.group(2))


def tables(k: Kpis) -> dict[str, list[dict]]:
    return {
        "energy_cabinets.csv": k.energy_cabinets,
        "energy_communes.csv": k.energy_communes,
        "availability_classes.csv": k.availability_classes,
        "availability_communes.csv": k.availability_communes,
        "delays.csv": k.delays,
    }


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    return v


def write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])


# -- charts (matplotlib, Agg: no display; SVG text kept as text) ---------------------------------


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    # text as <text> (searchable, small), ids and metadata fixed: the same month gives the same file
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "scada-report"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline: without the XML prolog and DOCTYPE


def _figure(n: int) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(max(5.0, 0.8 * n + 2.0), 3.2), layout="constrained")


def energy_chart(rows: list[dict], target: float) -> str:
    """Energy against baseline per commune, with the target's ceiling."""
    fig = _figure(len(rows))
    ax = fig.subplots()
    names = [r["commune"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["baseline_kwh"] or 0 for r in rows], 0.4, label="baseline", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [r["energy_kwh"] or 0 for r in rows], 0.4, label="consumed", color="#2b7bba")
    if target:
        ax.scatter(  # the ceiling, on the consumed bar it judges
            [i + 0.2 for i in x],
            [(r["baseline_kwh"] or 0) * (1 - target) for r in rows],
            marker="_",
            s=400,
            color="#d62728",
            label=f"target ({target:.0%} saved)",
            zorder=3,
        )
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("kWh")
    ax.set_title("Lighting energy per commune")
    ax.legend(fontsize="small")
    return _svg(fig)


def delay_chart(rows: list[dict]) -> str:
    """p50 and p90 per service, priority and kind, against the contract."""
    rows = [r for r in rows if r["count"]]
    fig = _figure(len(rows))
    ax = fig.subplots()
    x = range(len(rows))
    labels = [f"{r['service']}\n{r['priority']} {r['kind']}" for r in rows]
    ax.bar([i - 0.2 for i in x], [r["p50_s"] / 3600 for r in rows], 0.4, label="p50", color="#9ecae1")
    ax.bar([i + 0.2 for i in x], [r["p90_s"] / 3600 for r in rows], 0.4, label="p90", color="#2b7bba")
    with_contract = [(i, r["contract_s"] / 3600) for i, r in zip(x, rows) if r["contract_s"] is not None]
    if with_contract:
        ax.scatter(*zip(*with_contract), marker="_", s=400, color="#d62728", label="contract", zorder=3)
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize="x-small")
    ax.set_ylabel("hours from the fault")
    ax.set_title("Intervention delays")
    ax.legend(fontsize="small")
    return _svg(fig)


def availability_chart(rows: list[dict]) -> str:
    """Availability per equipment class against its target."""
    fig = _figure(len(rows))
    ax = fig.subplots()
    x = range(len(rows))
    ax.bar(list(x), [100 * (r["availability"] or 0) for r in rows], 0.5, label="availability", color="#2b7bba")
    targets = [(i, 100 * r["target"]) for i, r in zip(x, rows) if r["target"] is not None]
    if targets:
        ax.scatter(*zip(*targets), marker="_", s=400, color="#d62728", label="target", zorder=3)
    ax.set_xticks(list(x), [r["class"] for r in rows])
    ax.set_ylabel("%")
    low = min([100 * (r["availability"] or 0) for r in rows] + [t for _, t in targets], default=0)
    ax.set_ylim(max(0.0, low - 5), 100.5)
    ax.set_title("Availability per equipment class")
    ax.legend(fontsize="small", loc="best")
    return _svg(fig)


# -- HTML ----------------------------------------------------------------------------------------

_PERCENT = {"coverage", "saving", "target", "availability", "within"}
_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.t { text-align: left; }
.no { color: #b00; font-weight: bold; } .yes { color: #070; }
"""


def _html_cell(col: str, v: Any) -> str:
    if v is None:
        return "<td>–</td>"
    if isinstance(v, bool):
        return f'<td class="{"yes" if v else "no"}">{"yes" if v else "no"}</td>'
    if col in _PERCENT and isinstance(v, (int, float)):
        return f"<td>{100 * v:.2f} %</td>"
    if isinstance(v, str):
        return f'<td class="t">{html.escape(v)}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _html_table(columns: Sequence[str], rows: list[dict]) -> str:
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_html_cell(c, r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(k: Kpis, month: str, tz: str, clock_note: str | None = None) -> str:
    t = tables(k)
    until = datetime.fromtimestamp(k.horizon_ns / 1e9, UTC).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Contract report {html.escape(month)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Performance contract: {html.escape(month)}</h1>",
        f"<p>Calendar month of {html.escape(tz)}; history known until {until}; {k.points} history points read.</p>",
        f'<p class="no">{html.escape(clock_note)}</p>' if clock_note else "",
        "<h2>Energy against baseline</h2>",
        f"<p>Savings target: {100 * k.savings_target:.0f} % below the baseline.</p>",
        energy_chart(k.energy_communes, k.savings_target) if k.energy_communes else "",
        _html_table(CSV_COLUMNS["energy_communes.csv"], k.energy_communes),
        "<h2>Intervention delays</h2>",
        delay_chart(k.delays) if any(r["count"] for r in k.delays) else "",
        _html_table(CSV_COLUMNS["delays.csv"], k.delays),
        "<h2>Availability</h2>",
        availability_chart(k.availability_classes) if k.availability_classes else "",
        _html_table(CSV_COLUMNS["availability_classes.csv"], k.availability_classes),
        "<h3>Per commune</h3>",
        _html_table(CSV_COLUMNS["availability_communes.csv"], t["availability_communes.csv"]),
        "<h3>Energy per cabinet</h3>",
        _html_table(CSV_COLUMNS["energy_cabinets.csv"], t["energy_cabinets.csv"]),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write(k: Kpis, out_dir: str | Path, month: str, tz: str, clock_note: str | None = None) -> dict[str, int]:
    """Every CSV and the HTML page into ``out_dir`` (created); rows per file. ``clock_note``: what
    the page says about the clock record when it could not be used (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows in tables(k).items():
        write_csv(out / name, CSV_COLUMNS[name], rows)
        written[name] = len(rows)
    (out / HTML_FILE).write_text(render_html(k, month, tz, clock_note), encoding="utf-8")
    written[HTML_FILE] = 1
    return written


# -- the command ---------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from scada.config import load_config
    from scada.opendata import timezone_of

    try:
        year, month = parse_month(args.month)
        try:
            tz = timezone_of(args.tz)
        except ValueError as exc:
            raise ReportError(str(exc)) from None
        data = Path(args.data)
        if not data.is_dir():
            raise ReportError(f"no data folder {data} (the server's --data folder)")
        try:
            config = load_config(args.config, args.drivers)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        start, end = month_bounds(year, month, tz)
        clock, clock_note = clockmap.load(data)
        if clock_note:
            print(f"scada report: {clock_note}", file=sys.stderr)
        try:
            k = compute(config, data, start, end, clock=clock)
        except NoData:
            raise ReportError(
                f"no data for {args.month} in {data}: no history point, no alarm, no work order"
            ) from None
        except (ReadError, OSError) as exc:
            raise ReportError(str(exc)) from None
        try:
            written = write(k, args.out, args.month, args.tz, clock_note)
        except OSError as exc:
            raise ReportError(f"cannot write into {args.out}: {exc.strerror or exc}") from None
    except ReportError as exc:
        print(f"scada report: {exc}", file=sys.stderr)
        return 1
    print(f"contract report {args.month} ({args.tz}):", file=sys.stderr)
    for name, n in written.items():
        print(
            f"  {Path(args.out) / name}: {n} rows" if name != HTML_FILE else f"  {Path(args.out) / name}",
            file=sys.stderr,
        )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``report`` on the ``scada`` command's subparsers."""
    p = sub.add_parser(
        "report",
        help="the performance contract's monthly report (energy, availability, delays) as CSV and HTML",
        description="Reads the server's history store and journals read-only (also while the server runs).",
    )
    p.add_argument("--month", required=True, help="the calendar month, YYYY-MM")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--config", default=".", help="configuration folder: devices, operations.yaml (default: .)")
    p.add_argument("--out", default="report", help="folder to write the files into (default: report)")
    p.add_argument("--tz", default="UTC", help="time zone of the month (default UTC; e.g. Europe/Paris)")
    p.set_defaults(func=cmd_report)
    return p
