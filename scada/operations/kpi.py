"""The performance contract's KPIs over a period: pure numpy over arrays, no I/O.

Three families, each a function of arrays (the readers in :mod:`scada.operations.kpi_service`
feed them from the history store and the journals):

* **Energy** (:func:`energy_table`): per lighting cabinet, the increase of its ``energy``
  counter over the period (:func:`scada.opendata.counter_increase`: resets and wraps counted
  from zero, a gap in communication not attributed) against its **baseline** (operations.yaml
  ``energy``: the cabinet's own kWh/day, else its commune's, else the default) prorated to the
  time the counter is *known*: a cabinet silent half the month is compared with half a month of
  baseline, never credited with a saving it did not make. ``saving = 1 - energy / baseline``;
  ``met`` when the saving reaches ``savings_target``. A commune sums its cabinets.
* **Availability** (:func:`availability_of`): per device, the share of the time its
  communication state is known (``Diagnostics/state`` recorded) during which it is *online* (state
  1) **and without fault**. A fault is an activation of one of the device's alarms whose service
  has a contract in operations.yaml (a maintenance service: the alarms that make work orders),
  from its ACTIVATE to its CLEAR (an alarm active at the period's start counts from the start,
  one still active at the end up to the end). A class (or a class in a commune) sums its
  devices' times. Compared with operations.yaml ``availability`` per class.
* **Delays** (:func:`delay_table`): per service and priority, over the work orders whose fault
  was known (``origin_ns``) in the period and that were not cancelled: from ``origin_ns`` to on
  site and to repaired, count, p50, p90, max and the share within the contract. A crew that
  reported "repaired" without "on site" was on site by then (``repaired_ns`` stands for it).
  An order of the period is judged by its whole delay, even when the crew arrives after the
  period's end; one still not on site (repaired) when the journal is read, and past its deadline,
  counts as over the contract (``late_open``) in the share, though it has no delay yet.

Times are int64 ns UTC; durations in the results are seconds, energies kWh, shares fractions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scada.alarms.metrics import delay_stats
from scada.operations.model import EnergySettings, OrderState, ServiceDef, WorkOrder

NS = 1_000_000_000
DAY_NS = 86400 * NS
ONLINE = 1.0  # Diagnostics/state "online" (scada.config.DIAG_STATES)

# -- intervals (sweep over sorted boundaries) ----------------------------------------------------


def measure_without(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> int:
    """Length (ns) of the union of intervals A minus the union of intervals B ([start, end))."""
    a_start, a_end = np.asarray(a_start, np.int64), np.asarray(a_end, np.int64)
    b_start, b_end = np.asarray(b_start, np.int64), np.asarray(b_end, np.int64)
    keep_a, keep_b = a_end > a_start, b_end > b_start
    a_start, a_end, b_start, b_end = a_start[keep_a], a_end[keep_a], b_start[keep_b], b_end[keep_b]
    if a_start.size == 0:
        return 0
    t = np.concatenate([a_start, a_end, b_start, b_end])
    da = np.concatenate([np.ones(a_start.size), -np.ones(a_end.size), np.zeros(b_start.size + b_end.size)])
    db = np.concatenate([np.zeros(a_start.size + a_end.size), np.ones(b_start.size), -np.ones(b_end.size)])
    order = np.argsort(t, kind="stable")
    t, da, db = t[order], da[order], db[order]
    ca, cb = np.cumsum(da), np.cumsum(db)  # inside how many A and B after each boundary
    seg = np.diff(t)
    # several boundaries at one time: only the last one's counts hold over the next segment
    inside = (ca[:-1] > 0) & (cb[:-1] == 0)
    return int(seg[inside].sum())


def state_intervals(
    t: np.ndarray, v: np.ndarray, s: np.ndarray, start: int, end: int, horizon: int, state: float = ONLINE
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Intervals inside ``[start, end)`` during which a stepped signal held ``state``, and those
    during which it was known (a Good point holds until the next one, the last until ``horizon``):
    ((in_starts, in_ends), (known_starts, known_ends)). As :func:`scada.opendata.time_in_state`."""
    t, v, s = np.asarray(t, np.int64), np.asarray(v, np.float64), np.asarray(s, np.uint32)
    if t.size == 0:
        empty = np.zeros(0, np.int64)
        return (empty, empty), (empty, empty)
    good = (s & np.uint32(0xC0000000)) == 0
    good &= np.isfinite(v)
    t1 = np.append(t[1:], max(int(horizon), int(t[-1])))
    t0c, t1c = np.clip(t, start, end), np.clip(t1, start, end)
    on = good & (v == state)
    return (t0c[on], t1c[on]), (t0c[good], t1c[good])


def fault_intervals(
    times: np.ndarray, alarms: np.ndarray, events: np.ndarray, start: int, end: int, active_at_start: Iterable[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """One device's fault intervals inside ``[start, end)`` from its alarm journal rows (time
    order; ``events`` ACTIVATE or CLEAR, others ignored): each alarm from an ACTIVATE to the next
    CLEAR; ``active_at_start``: alarms already active at ``start``; still active: until ``end``."""
    times = np.asarray(times, np.int64)
    alarms, events = np.asarray(alarms, object), np.asarray(events, object)
    starts: list[int] = []
    ends: list[int] = []
    since: dict[str, int] = {a: start for a in active_at_start}
    # Python over the transitions only (a handful per device and month), the arrays' rows
    for t, a, e in zip(times.tolist(), alarms.tolist(), events.tolist()):
        if e == "ACTIVATE":
            since.setdefault(a, max(t, start))
        elif e == "CLEAR" and a in since:
            starts.append(since.pop(a))
            ends.append(min(t, end))
    for s0 in since.values():
        starts.append(s0)
        ends.append(end)
    return np.array(starts, np.int64), np.array(ends, np.int64)


# -- availability --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Availability:
    """One device's times over a period (ns)."""

    known_ns: int  # its communication state was known
    online_ns: int  # ... and online
    available_ns: int  # ... and online without fault

    @property
    def share(self) -> float:
        return self.available_ns / self.known_ns if self.known_ns else math.nan


def availability_of(
    state: tuple[np.ndarray, np.ndarray, np.ndarray],
    faults: tuple[np.ndarray, np.ndarray],
    start: int,
    end: int,
    horizon: int,
) -> Availability:
    """A device's availability from its ``Diagnostics/state`` points (t, v, s, with the point
    before ``start``) and its fault intervals."""
    (on_s, on_e), (k_s, k_e) = state_intervals(*state, start, end, min(horizon, end))
    empty = np.zeros(0, np.int64)
    return Availability(
        measure_without(k_s, k_e, empty, empty),
        measure_without(on_s, on_e, empty, empty),
        measure_without(on_s, on_e, *faults),
    )


def availability_rows(
    devices: Sequence[tuple[str, str, str]], figures: Sequence[Availability], targets: Mapping[str, float]
) -> tuple[list[dict], list[dict]]:
    """Rows per class and per (class, commune) from the devices ((device, class, commune)) and
    their figures: ``devices, devices_known, known_h, online_h, available_h, availability,
    target, met`` (availability None when nothing was known)."""
    groups: dict[tuple[str, str], list[Availability]] = {}
    for (_, cls, commune), f in zip(devices, figures, strict=True):
        groups.setdefault((cls, ""), []).append(f)
        groups.setdefault((cls, commune), []).append(f)
    classes: list[dict] = []
    communes: list[dict] = []
    for (cls, commune), fs in sorted(groups.items()):
        known = sum(f.known_ns for f in fs)
        avail = sum(f.available_ns for f in fs)
        share = avail / known if known else None
        target = targets.get(cls)
        row = {
            "class": cls,
            "commune": commune,
            "devices": len(fs),
            "devices_known": sum(1 for f in fs if f.known_ns),
            "known_h": _r(known / 3600 / NS),
            "online_h": _r(sum(f.online_ns for f in fs) / 3600 / NS),
            "available_h": _r(avail / 3600 / NS),
            "availability": _r(share, 5),
            "target": target,
            "met": None if share is None or target is None else share >= target,
        }
        (communes if commune else classes).append(row)
    for row in classes:
        del row["commune"]
    return classes, communes


# -- energy --------------------------------------------------------------------------------------


def baseline_per_day(settings: EnergySettings, device: str, commune: str) -> float:
    """A cabinet's baseline (kWh/day): its own, else its commune's, else the default (0: none)."""
    if device in settings.cabinets:
        return float(settings.cabinets[device])
    if commune in settings.communes:
        return float(settings.communes[commune])
    return float(settings.baseline_kwh_per_day)


def energy_table(
    devices: Sequence[tuple[str, str]],
    increase_kwh: np.ndarray,
    covered_ns: np.ndarray,
    resets: np.ndarray,
    baseline_kwh_day: np.ndarray,
    period_ns: int,
    target: float,
) -> tuple[list[dict], list[dict]]:
    """Rows per cabinet ((device, commune)) and per commune: ``energy_kwh, covered_h, coverage,
    baseline_kwh`` (the baseline over the covered time), ``saving`` (1 - energy / baseline; None
    without a baseline or a covered time), ``target, met, counter_resets``; a commune sums its
    cabinets (and ``cabinets``, ``cabinets_reporting``)."""
    inc = np.asarray(increase_kwh, np.float64)
    cov = np.asarray(covered_ns, np.int64)
    base = np.asarray(baseline_kwh_day, np.float64) * cov / DAY_NS
    cabinets = []
    for k, (device, commune) in enumerate(devices):
        cabinets.append(
            {
                "device": device,
                "commune": commune,
                **_energy_figures(float(inc[k]), int(cov[k]), float(base[k]), period_ns, target),
                "counter_resets": int(resets[k]),
            }
        )
    communes = []
    names = [c for _, c in devices]
    for commune in sorted(set(names)):
        idx = np.array([i for i, c in enumerate(names) if c == commune])
        figures = _energy_figures(
            float(inc[idx].sum()), int(cov[idx].sum()), float(base[idx].sum()), period_ns * idx.size, target
        )
        communes.append(
            {
                "commune": commune,
                "cabinets": int(idx.size),
                "cabinets_reporting": int((cov[idx] > 0).sum()),
                **figures,
                "counter_resets": int(np.asarray(resets)[idx].sum()),
            }
        )
    return cabinets, communes


def _energy_figures(energy: float, covered: int, baseline: float, period_ns: int, target: float) -> dict:
    saving = 1.0 - energy / baseline if covered and baseline > 0 else None
    return {
        "energy_kwh": _r(energy if covered else None),
        "covered_h": _r(covered / 3600 / NS),
        "coverage": _r(covered / period_ns if period_ns else None, 4),
        "baseline_kwh": _r(baseline if baseline > 0 else None),
        "saving": _r(saving, 4),
        "target": target or None,
        "met": None if saving is None or not target else saving >= target,
    }


# -- delays --------------------------------------------------------------------------------------

DELAY_KINDS = ("on_site", "repaired")


def order_delays(orders: Sequence[WorkOrder], start: int, end: int) -> dict[str, np.ndarray]:
    """The orders whose fault was known in ``[start, end)``, not cancelled, as arrays: ``service,
    priority`` (object), ``origin_ns``, and per kind the delay in s (NaN: not reached yet; a
    fault of the period is judged by its whole delay, even one that ends after the period)."""
    chosen = [o for o in orders if start <= o.origin_ns < end and o.state != OrderState.CANCELLED]
    origin = np.array([o.origin_ns for o in chosen], np.int64)
    repaired = np.array([o.repaired_ns for o in chosen], np.int64)
    on_site = np.array([o.on_site_ns or o.repaired_ns for o in chosen], np.int64)
    out: dict[str, np.ndarray] = {
        "service": np.array([o.service for o in chosen], object),
        "priority": np.array([o.priority for o in chosen], object),
        "origin_ns": origin,
    }
    for kind, at in (("on_site", on_site), ("repaired", repaired)):
        out[kind] = np.where(at > 0, (at - origin) / NS, np.nan)
    return out


def delay_table(delays: Mapping[str, np.ndarray], services: Mapping[str, ServiceDef], as_of: int) -> list[dict]:
    """Rows per (service, priority) and kind: ``count`` (delays measured), ``p50_s, p90_s, max_s,
    contract_s, over`` (measured beyond the contract), ``late_open`` (not reached at ``as_of`` and
    past the deadline), ``within`` (share within the contract of count + late_open; None when
    both are 0 or there is no contract), ``met`` (every one within)."""
    service, priority = delays["service"], delays["priority"]
    origin = np.asarray(delays["origin_ns"], np.int64)
    keys = sorted({(str(s), str(p)) for s, p in zip(service.tolist(), priority.tolist())})
    rows = []
    for kind in DELAY_KINDS:
        d = np.asarray(delays[kind], np.float64)
        contract: dict[str, float] = {}
        for s, p in keys:
            limit = _contract(services, s, p, kind)
            if limit is not None:
                contract[f"{s}\t{p}"] = limit
        group = np.array([f"{s}\t{p}" for s, p in zip(service.tolist(), priority.tolist())], object)
        measured = ~np.isnan(d)
        stats = delay_stats(d[measured], group[measured], contract)
        for s, p in keys:
            g = f"{s}\t{p}"
            st = stats.get(g, {})
            limit = contract.get(g)
            pending = (group == g) & ~measured
            late_open = int(((as_of - origin[pending]) / NS > limit).sum()) if limit is not None else 0
            count = int(st.get("count", 0))
            over = st.get("over_deadline") or 0
            judged = count + late_open
            within = (count - over) / judged if limit is not None and judged else None
            rows.append(
                {
                    "service": s,
                    "priority": p,
                    "kind": kind,
                    "count": count,
                    "p50_s": _r(st.get("median_s"), 1),
                    "p90_s": _r(st.get("p90_s"), 1),
                    "max_s": _r(st.get("max_s"), 1),
                    "contract_s": limit,
                    "over": over if limit is not None else None,
                    "late_open": late_open,
                    "within": _r(within, 4),
                    "met": None if within is None else within >= 1.0,
                }
            )
    return rows


def _contract(services: Mapping[str, ServiceDef], service: str, priority: str, kind: str) -> float | None:
    sd = services.get(service)
    if sd is None or priority not in sd.delays:
        return None
    d = sd.delays[priority]
    return d.on_site_s if kind == "on_site" else d.repaired_s


def _r(x: float | None, nd: int = 3) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd) + 0.0  # + 0.0: no "-0.0"
