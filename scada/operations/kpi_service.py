"""The contract's KPIs read from the server's files: a month (``scada report``) or month to date (live).

:func:`compute` opens, read-only, what the server writes in its ``--data`` folder (WAL lets it
read beside the writers, also while the server runs): the history store (``history.sqlite``:
the cabinets' ``energy`` counters and every device's ``Diagnostics/state``), the alarm journal
(``alarms.sqlite``: the faults) and the work-order journal (``workorders.sqlite``: the delays),
and hands arrays to the pure functions of :mod:`scada.operations.kpi`.

**One clock.** The contract is judged in the server's operations clock, the one the work orders
are stamped with: real time in production, simulated time in a ``scada run --clock-start
--acceleration`` run. The history store and the alarm journal stamp real time: their stamps are
mapped into the operations clock as they are read, through the data folder's clock record
(``clock.json``, :mod:`scada.control.clockmap`), and a period is read over the real times whose
clock reading falls in it. So the month, the energy against its baseline (the simulators'
counters advance in simulated time), the availability and the delays of an accelerated run are
those of the simulated city. In real time the map is the identity and nothing changes.

:class:`ContractKpis` gives the live figures (:meth:`ContractKpis.live`, in a worker thread) as
one flat ``{name: float}`` dict (NaN: not known), the names being:

=====================================================  =========================================
``energy.<commune>.kwh`` / ``.baseline_kwh``            energy of the commune's cabinets this
``energy.<commune>.saving``                             month, its baseline over the known time,
                                                        the saving (1 - kwh / baseline)
``energy.all.kwh`` / ``.baseline_kwh`` / ``.saving``    the same over every cabinet
``energy.target``                                       operations.yaml's savings target
``availability.<class>``                                share of the known device-time online
``availability.<class>.<commune>``                      and without fault, per class (commune)
``availability.<class>.target``                         operations.yaml's target
``delay.<service>.<priority>.<kind>_count``             per service, priority and kind (on_site,
``delay.<service>.<priority>.<kind>_p50_s`` / ``_p90_s``    repaired): delays measured, median and
``delay.<service>.<priority>.<kind>_within``            90th percentile (s), share within contract
=====================================================  =========================================
"""

from __future__ import annotations

import asyncio
import importlib
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from scada.alarms.journal import Journal, JournalError
from scada.config import DIAG_FOLDER, Config
from scada.control import clockmap
from scada.control.clockmap import ClockMap, Segment
from scada.historian.store import HistoryError, HistoryStore
from scada.opendata import ENERGY, counter_increase, read_points, recorded_until, sites_from_config
from scada.operations import kpi
from scada.operations.model import WorkOrder

HISTORY_FILE = "history.sqlite"
ALARMS_FILE = "alarms.sqlite"
ORDERS_FILE = "workorders.sqlite"  # scada/operations/journal.py's JOURNAL_FILE
FAULT_EVENTS = ("ACTIVATE", "CLEAR")
OrderReader = Callable[[int, int], Sequence[WorkOrder]]  # (start_ns, end_ns) -> orders of faults in it
# Orders whose fault was known in the period were created at most this long after it (an alarm's
# order is made at once; a late restart's reconcile may take a while): the journal is indexed by
# creation time.
ORDER_CREATION_SLACK_NS = 7 * kpi.DAY_NS


class ReadError(Exception):
    """A file of the data folder cannot be read (garbage, not ours, a disk error): names it."""


class NoData(ValueError):
    """Nothing was recorded for the period (no history point, no alarm, no order)."""


@dataclass(frozen=True)
class Kpis:
    """Every table of a period (rows as documented in :mod:`scada.operations.kpi`)."""

    start_ns: int
    end_ns: int
    horizon_ns: int  # nothing was recorded after it (the report's month may not be over)
    energy_cabinets: list[dict]
    energy_communes: list[dict]
    availability_classes: list[dict]
    availability_communes: list[dict]
    delays: list[dict]
    savings_target: float
    points: int  # history points read (0 with the journals empty too: NoData)


def month_bounds(year: int, month: int, tz: ZoneInfo | timezone) -> tuple[int, int]:
    """[start, end) of a calendar month of ``tz``, in ns."""
    first = datetime(year, month, 1, tzinfo=tz)
    nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return int(first.timestamp()) * kpi.NS, int(nxt.timestamp()) * kpi.NS


def month_of(now_ns: int, tz: ZoneInfo | timezone) -> tuple[int, int]:
    """The month of ``tz`` holding ``now_ns``."""
    d = datetime.fromtimestamp(now_ns / kpi.NS, tz)
    return month_bounds(d.year, d.month, tz)


def journal_orders(data_dir: str | Path) -> OrderReader | None:
    """A reader of ``<data>/workorders.sqlite`` (read-only), None when the server wrote none."""
    path = Path(data_dir) / ORDERS_FILE
    if not path.is_file():
        return None
    # Imported by name: the work-order journal is the orders' module (scada/operations/journal.py);
    # the KPIs only read it.
    journal_mod: Any = importlib.import_module("scada.operations.journal")

    def read(start: int, end: int) -> Sequence[WorkOrder]:
        try:
            j = journal_mod.OrderJournal(path, readonly=True)
            try:
                orders = j.orders(start - ORDER_CREATION_SLACK_NS, end + ORDER_CREATION_SLACK_NS)
            finally:
                j.close()
        except journal_mod.OrderJournalError as exc:
            raise ReadError(str(exc)) from None
        return [o for o in orders if start <= o.origin_ns < end]

    return read


def compute(
    config: Config,
    data_dir: str | Path,
    start_ns: int,
    end_ns: int,
    *,
    horizon_ns: int | None = None,
    orders: OrderReader | None = None,
    as_of_ns: int | None = None,
    clock: ClockMap | None = None,
) -> Kpis:
    """The KPIs of ``[start_ns, end_ns)`` from the files of ``data_dir``; ``horizon_ns``: the
    time up to which the history is known (default: the store's last recorded point); ``orders``:
    default the work-order journal of ``data_dir``; ``as_of_ns``: when the orders were read
    (default: now in real time, the end of the recorded data in a simulated run's clock): an order
    not on site (repaired) by then and past its deadline is late. NoData when none of them holds
    anything.

    Every time here is the operations clock's, the orders' (see the module docstring); ``clock``
    (default: real time) maps the history's and the alarm journal's real stamps into it."""
    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder {data} (the server's --data folder)")
    clock = clock or ClockMap()
    ops = config.operations
    hist_path = data / HISTORY_FILE
    alarms_path = data / ALARMS_FILE
    try:
        store = HistoryStore(hist_path, readonly=True) if hist_path.is_file() else None
    except HistoryError as exc:
        raise ReadError(str(exc)) from None
    points = 0
    # what was recorded last, in real time (the end of a simulated run's data)
    recorded: int | None = None
    real_start, real_end = clock.real_window(start_ns, end_ns)
    try:
        if store is not None and (horizon_ns is None or (as_of_ns is None and not clock.identity)):
            recorded = recorded_until(hist_path)
        if horizon_ns is None:
            horizon_ns = start_ns if recorded is None else clock.clock_at(recorded)
        horizon = max(start_ns, min(end_ns, horizon_ns))

        def read(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
            nonlocal points
            pts = None if store is None else read_points(store, name, real_start, real_end)
            if pts is not None:
                pts = _on_clock(clock, *pts)
                inside = (pts[0] >= start_ns) & (pts[0] < end_ns)
                points += int(inside.sum())
            return pts

        energy = _energy(config, read, start_ns, end_ns, horizon)
        faults, journal_newest = _faults(config, alarms_path, clock, start_ns, end_ns)
        avail = _availability(config, read, faults, start_ns, end_ns, horizon)
    except (HistoryError, JournalError, sqlite3.DatabaseError) as exc:
        raise ReadError(str(exc)) from None
    finally:
        if store is not None:
            store.close()
    reader = orders if orders is not None else journal_orders(data)
    work = list(reader(start_ns, end_ns)) if reader is not None else []
    as_of = as_of_ns
    if as_of is None:
        # Never before the orders' own latest change: judged at an earlier instant every delay
        # would be negative.
        latest = max((max(o.created_ns, o.assigned_ns, o.accepted_ns, o.en_route_ns, o.on_site_ns,
                          o.repaired_ns, o.closed_ns) for o in work), default=0)  # fmt: skip
        if clock.identity:
            # real time: the server may still run, an order still open is judged now
            as_of = max(time.time_ns(), latest)
        else:
            # A simulated run's clock is not now's: its orders are judged when its data ends (the
            # clock's reading at the last stamp the history or the alarm journal recorded).
            ends = [t for t in (recorded, journal_newest) if t is not None]
            as_of = max(latest, clock.clock_at(max(ends))) if ends else latest
    delays = kpi.delay_table(kpi.order_delays(work, start_ns, end_ns), ops.services, as_of)
    if points == 0 and not work and not any(len(v[0]) for v in faults.values()):
        raise NoData("nothing was recorded in the period: no history point, no alarm, no work order")
    return Kpis(start_ns, end_ns, horizon, *energy, *avail, delays, ops.energy.savings_target, points)


def _on_clock(
    clock: ClockMap, t: np.ndarray, v: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tag's points with their real stamps in the operations clock, in time order (a restart's
    clock may start before where the previous run's got to: the points are then reordered)."""
    if clock.identity:
        return t, v, s
    t = clock.to_clock(t)
    if t.size > 1 and (np.diff(t) < 0).any():
        order = np.argsort(t, kind="stable")
        t, v, s = t[order], v[order], s[order]
    return t, v, s


def _energy(config: Config, read, start: int, end: int, horizon: int) -> tuple[list[dict], list[dict]]:
    settings = config.operations.energy
    cabinets = [s for s in sites_from_config(config).cabinets if ENERGY in s.tags]
    inc, cov, resets = np.zeros(len(cabinets)), np.zeros(len(cabinets), np.int64), np.zeros(len(cabinets), np.int64)
    edges = np.array([start, end], np.int64)
    for k, s in enumerate(cabinets):
        pts = read(s.tags[ENERGY])
        if pts is not None:
            t, v, st = pts
            i, c, r = counter_increase(t, v, st, edges, horizon)
            inc[k], cov[k], resets[k] = i[0], c[0], r[0]
    base = np.array([kpi.baseline_per_day(settings, s.device, s.commune) for s in cabinets])
    return kpi.energy_table(
        [(s.device, s.commune) for s in cabinets], inc, cov, resets, base, end - start, settings.savings_target
    )


def _faults(
    config: Config, path: Path, clock: ClockMap, start: int, end: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int | None]:
    """Per device, its fault intervals (alarms of a service with a contract in operations.yaml)
    in the operations clock; and, of a simulated run, the journal's latest stamp (real time)."""
    services = sorted(config.operations.services)
    if not path.is_file() or (not services and clock.identity):
        return {}, None  # (the latest stamp is only wanted of a simulated run)
    journal = Journal(path)
    try:
        newest = None if clock.identity else journal.newest_ns()
        if not services:
            return {}, newest
        real_start, real_end = clock.real_window(start, end)
        rows = journal.columns(
            real_start, real_end, names=("time_ns", "alarm", "device", "event"), service=services,
            event=list(FAULT_EVENTS),
        )  # fmt: skip
        before = journal.last_rows(real_start, event=FAULT_EVENTS)
    finally:
        journal.close()
    if not clock.identity:
        t = clock.to_clock(rows["time_ns"])
        # real_window is a ns wider at its edges; a clock that went back reorders the rows
        keep = np.flatnonzero((t >= start) & (t < end))
        keep = keep[np.argsort(t[keep], kind="stable")]
        rows = {k: (t if k == "time_ns" else v)[keep] for k, v in rows.items()}
    active: dict[str, list[str]] = {}
    for r in before:
        if r.event == "ACTIVATE" and r.service in services:
            active.setdefault(r.device, []).append(r.alarm)
    out = {}
    dev = rows["device"]
    for device in sorted(set(dev.tolist()) | set(active)):
        m = dev == device
        out[device] = kpi.fault_intervals(
            rows["time_ns"][m], rows["alarm"][m], rows["event"][m], start, end, active.get(device, ())
        )
    return out, newest


def _availability(config: Config, read, faults, start: int, end: int, horizon: int) -> tuple[list[dict], list[dict]]:
    devices, figures = [], []
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    for d in config.devices:
        cls = config.types[d.type].cls
        pts = read(f"{d.commune}/{cls}/{d.name}/{DIAG_FOLDER}/state")
        empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint32))
        devices.append((d.name, cls, d.commune))
        figures.append(
            kpi.availability_of(pts if pts is not None else empty, faults.get(d.name, none), start, end, horizon)
        )
    return kpi.availability_rows(devices, figures, config.operations.availability)


# -- live ----------------------------------------------------------------------------------------


def flat(k: Kpis) -> dict[str, float]:
    """The figures as the flat names of the module docstring (NaN: not known)."""
    out: dict[str, float] = {}
    for row in k.energy_communes:
        for key in ("kwh", "baseline_kwh", "saving"):
            out[f"energy.{row['commune']}.{key}"] = _f(row["energy_kwh" if key == "kwh" else key])
    energy = sum(r["energy_kwh"] or 0.0 for r in k.energy_communes)
    base = sum(r["baseline_kwh"] or 0.0 for r in k.energy_communes)
    known = any(r["energy_kwh"] is not None for r in k.energy_communes)
    out["energy.all.kwh"] = energy if known else math.nan
    out["energy.all.baseline_kwh"] = base if base else math.nan
    out["energy.all.saving"] = 1.0 - energy / base if known and base else math.nan
    out["energy.target"] = float(k.savings_target)
    for row in k.availability_classes:
        out[f"availability.{row['class']}"] = _f(row["availability"])
        out[f"availability.{row['class']}.target"] = _f(row["target"])
    for row in k.availability_communes:
        out[f"availability.{row['class']}.{row['commune']}"] = _f(row["availability"])
    for row in k.delays:
        name = f"delay.{row['service']}.{row['priority']}.{row['kind']}"
        out[f"{name}_count"] = float(row["count"])
        out[f"{name}_p50_s"] = _f(row["p50_s"])
        out[f"{name}_p90_s"] = _f(row["p90_s"])
        out[f"{name}_within"] = _f(row["within"])
    return out


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


class ContractKpis:
    """The live contract figures: month to date, computed in a worker thread from the files the
    server writes (read-only, beside its writers). ``orders``: how to read the work orders
    (default: ``<data>/workorders.sqlite``); ``tz``: whose calendar month; ``current``: the
    running operations clock's segment (its ``ScheduleClock.segment``), used when the data
    folder's clock record lacks it (scada/control/clockmap.py)."""

    def __init__(
        self,
        config: Config,
        data_dir: str | Path,
        *,
        tz: ZoneInfo | timezone = UTC,
        orders: OrderReader | None = None,
        current: tuple[int, int, float] | None = None,
    ) -> None:
        self.config, self.data_dir, self.tz, self.orders = config, Path(data_dir), tz, orders
        self.current = None if current is None else Segment(int(current[0]), int(current[1]), float(current[2]))

    async def live(self, now_ns: int) -> dict[str, float]:
        """Month-to-date figures at ``now_ns``, the operations clock's now (an empty dict when
        nothing is recorded yet)."""
        return await asyncio.to_thread(self.compute_live, now_ns)

    def compute_live(self, now_ns: int) -> dict[str, float]:
        start, end = month_of(now_ns, self.tz)
        # Read again each time: a restart's segment is added while the figures are live.
        clock, _note = clockmap.load(self.data_dir, self.current)
        try:
            k = compute(
                self.config,
                self.data_dir,
                start,
                min(end, now_ns + 1),
                horizon_ns=now_ns,
                orders=self.orders,
                as_of_ns=now_ns,
                clock=clock,
            )
        except (NoData, FileNotFoundError):
            return {}
        return flat(k)
