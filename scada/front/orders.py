"""The front's mirror of the core's operations: open work orders, recent citizen reports, the
core's health figures and contract KPIs, as the core pushes them (model.PUSH_*).

The map feed (:mod:`scada.operations.geo`) and ``/metrics`` (:mod:`scada.operations.metrics`)
read it; nothing here asks the core. Contact details never enter it: a report is kept as its
public view (``CitizenReport.public``), and a pushed report (should one ever come) is stripped
again on the way in.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scada.operations.model import CitizenReport, OrderEvent, WorkOrder

RECENT_REPORTS_S = 86400.0  # the map shows the reports of the last day
MAX_REPORTS = 5000  # and never more than this many (Dijon's post: ~630 calls a day)

# One clock for operations: the core stamps orders and reports with its operations clock (the
# schedules' clock: simulated with `scada run --clock-start/--acceleration/--clock-origin`), and
# the front compares every stamp it holds or is asked about (Open311 GETs' windows, the map's
# "recent" reports, the mirror) with that same clock. The core hands it over at each front start
# as an anchor (simulated now, acceleration, the real instant of that now): from it the front's
# ScheduleClock reads what the core's reads. Simpler than having the core answer in both clocks,
# and the front never has to know how old a stamp is in another clock. None: real time.
ClockAnchor = tuple[int, float, int]


def clock_anchor(clock: Any) -> ClockAnchor | None:
    """The core's operations clock (a ScheduleClock) as the front can rebuild it; None when it is
    real time. Reading it anchors a simulated clock not read yet (it starts then)."""
    if clock is None or not getattr(clock, "simulated", False):
        return None
    return int(clock.now_ns()), float(clock.acceleration), time.time_ns()


def clock_of(anchor: ClockAnchor | None) -> Callable[[], int]:
    """The operations clock's ``now_ns`` from :func:`clock_anchor`'s anchor (real time for None)."""
    if anchor is None:
        return time.time_ns
    from scada.control.schedules import ScheduleClock

    start_ns, acceleration, origin_ns = anchor
    return ScheduleClock(int(start_ns), float(acceleration), origin_ns=int(origin_ns)).now_ns


class OrdersMirror:
    """Open orders by id, recent public reports, the core's stats (see the module doc)."""

    def __init__(self, clock: Callable[[], int] = time.time_ns, wall: Callable[[], int] | None = None) -> None:
        self.clock = clock  # the operations clock: the reports' stamps and the map's "recent"
        # Real time, for how old the core's figures are (a duration, not a stamp of the core's):
        # the operations clock itself unless told (tests give one clock).
        self.wall = wall or clock
        self.orders: dict[str, WorkOrder] = {}  # open ones only: a closed order leaves the map
        self.reports: deque[CitizenReport] = deque(maxlen=MAX_REPORTS)
        self.stats: dict[str, Any] = {}  # the core's PUSH_STATS
        self.stats_ns = 0  # when they arrived (0: never)
        self.kpis: dict[str, float] = {}  # the core's PUSH_KPIS
        self.events = Counter[str]()  # order events seen since the front started, by event
        self.snapshots = 0
        self.version = 0  # moves on each change: the map's cache key

    # pushes from the core

    def load(self, orders: Iterable[Any]) -> None:
        """PUSH_ORDERS_SNAPSHOT: every open order (the core's start, or a resync)."""
        loaded = [WorkOrder.from_wire(w) for w in orders]
        self.orders = {o.id: o for o in loaded if o.open}
        self.snapshots += 1
        self.version += 1

    def receive(self, orders: Iterable[Any], events: Iterable[Any] = ()) -> None:
        """PUSH_ORDERS: changed orders (their new state) and their journal events."""
        changed = [WorkOrder.from_wire(w) for w in orders]
        evs = [OrderEvent.from_wire(w) for w in events]
        for o in changed:
            if o.open:
                self.orders[o.id] = o
            else:
                self.orders.pop(o.id, None)
        self.events.update(e.event for e in evs)
        self.version += 1

    def receive_stats(self, stats: Mapping[str, Any]) -> None:
        self.stats = dict(stats)
        self.stats_ns = self.wall()

    def receive_kpis(self, kpis: Mapping[str, Any]) -> None:
        self.kpis = {str(k): float(v) for k, v in kpis.items() if isinstance(v, int | float)}

    # what the front learns itself

    def add_report(self, report: CitizenReport) -> None:
        """A report this front took (its POST answered), stamped with the operations clock (the
        mirror's): shown on the map, without contact."""
        self.reports.append(report.public())
        self.version += 1

    def recent_reports(self, now_ns: int | None = None) -> list[CitizenReport]:
        now = self.clock() if now_ns is None else now_ns
        since = now - int(RECENT_REPORTS_S * 1e9)
        while self.reports and self.reports[0].requested_ns < since:
            self.reports.popleft()
        return list(self.reports)

    def order_state(self, order: str | None) -> str | None:
        """The label of an open order's state; None when it is not (or no longer) open here."""
        o = self.orders.get(order) if order else None
        return o.state.label if o is not None else None


def report_from_wire(d: Mapping[str, Any]) -> CitizenReport:
    """A report as the core's REQUEST_REPORTS gives it (a public dict), without its contact and
    client whatever the dict holds."""
    lat, lon = d.get("lat"), d.get("lon")
    return CitizenReport(
        id=str(d["id"]),
        service_code=str(d["service_code"]),
        description=str(d.get("description", "")),
        lat=float(lat) if lat is not None else None,
        lon=float(lon) if lon is not None else None,
        address=str(d.get("address", "")),
        requested_ns=int(d["requested_ns"]),
        order=str(d["order"]) if d.get("order") else None,
        client="",
    )
