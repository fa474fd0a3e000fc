"""Health metrics in the Prometheus exposition format (``/metrics``), for those who run the server.

A custom prometheus-client Collector over a snapshot taken at scrape time: no metric object is
updated on the hot paths, the figures are read when Prometheus asks (every 15 s or so). Its own
CollectorRegistry (not the library's global one, which would add the front process's own
metrics under our names and keep them across tests).

Where the figures come from:

* the **core** (``model.PUSH_STATS``, every few seconds: :func:`scada.front.link.core_stats`):
  late polls, missed cycles and demoted devices per driver, the event loop's lag, the
  consumers' dropped batches, alarms (announced, in 10 minutes, flood), the historian's
  backlogs and spool, supervised tasks; ``scada_core_stats_age_seconds`` says how old they are
  (a core that stopped pushing shows as a growing age, not as frozen good figures);
* the **front** itself: devices online per driver and class (the shared ``Diagnostics/state``
  columns), OPC UA sessions and subscriptions, the open work orders and their breaches (the
  orders mirror), order events since the front started, the contract's live KPIs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from scada.operations.model import WorkOrder

# The classic text format (0.0.4): every name here is a legacy one, so it is exact, and every
# Prometheus reads it (0.26's CONTENT_TYPE_LATEST says 1.0.0, which Prometheus 2 does not know).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
FLOOD_PER_10MIN = 10  # ISA-18.2's flood: more than 10 alarms in 10 minutes (the status line's)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows (see the module doc)."""

    core: Mapping[str, Any] = field(default_factory=dict)  # PUSH_STATS's dict ({}: none yet)
    core_age_s: float | None = None
    devices: Sequence[tuple[str, str, int, int]] = ()  # (driver, class, total, online)
    opcua_sessions: int | None = None
    opcua_subscriptions: int | None = None
    orders: Sequence[WorkOrder] = ()  # the open ones
    order_events: Mapping[str, int] = field(default_factory=dict)
    kpis: Mapping[str, float] = field(default_factory=dict)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    return float(v) if isinstance(v, int | float) else None


class ScadaCollector:
    """prometheus-client's Collector protocol (``collect``) over ``snapshot()``."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # registered without a first collect(): the figures may not be there yet

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield from self._devices(s)
        yield from self._core(s)
        yield from self._front(s)
        yield from self._orders(s)

    def _devices(self, s: Snapshot) -> Iterator[Metric]:
        total = GaugeMetricFamily("scada_devices", "Configured devices", labels=["driver", "class"])
        online = GaugeMetricFamily(
            "scada_devices_online", "Devices in communication (Diagnostics/state online)", labels=["driver", "class"]
        )
        for driver, cls, n, up in s.devices:
            total.add_metric([driver, cls], n)
            online.add_metric([driver, cls], up)
        yield total
        yield online

    def _core(self, s: Snapshot) -> Iterator[Metric]:
        core = s.core
        age = GaugeMetricFamily("scada_core_stats_age_seconds", "Age of the core's last figures (-1: none yet)")
        age.add_metric([], s.core_age_s if s.core_age_s is not None else -1.0)
        yield age
        if not core:
            return
        drivers: Mapping[str, Mapping[str, Any]] = core.get("drivers", {})
        for key, name, doc in (
            ("late_polls", "scada_late_polls", "Polls started late (the loop or the link could not keep up)"),
            ("missed_cycles", "scada_missed_cycles", "Poll cycles skipped entirely"),
        ):
            c = CounterMetricFamily(name, doc, labels=["driver"])
            for drv, diag in drivers.items():
                v = _num(diag.get(key))
                if v is not None:
                    c.add_metric([drv], v)
            yield c
        demoted = GaugeMetricFamily(
            "scada_devices_demoted", "Devices taken off scan after failed polls", labels=["driver"]
        )
        for drv, diag in drivers.items():
            v = _num(diag.get("demoted"))
            if v is not None:
                demoted.add_metric([drv], v)
        yield demoted
        lag = GaugeMetricFamily("scada_event_loop_lag_seconds", "The core event loop's longest late wake-up lately")
        lag.add_metric([], float(core.get("loop_lag_s", 0.0)))
        yield lag
        batches = CounterMetricFamily(
            "scada_consumer_dropped_batches", "Change batches a consumer's full queue dropped", labels=["consumer"]
        )
        rows = CounterMetricFamily("scada_consumer_dropped_rows", "Tag changes dropped with them", labels=["consumer"])
        for name, c in core.get("consumers", {}).items():
            batches.add_metric([name], float(c.get("dropped_batches", 0)))
            rows.add_metric([name], float(c.get("dropped_rows", 0)))
        yield batches
        yield rows
        status: Mapping[str, Any] = core.get("status", {})
        rate = float(status.get("alarms_10min", 0))
        for name, doc, value in (
            ("scada_alarms_announced", "Alarms announced (active or unacknowledged)", status.get("alarms_announced")),
            ("scada_alarms_last_10min", "Alarm activations in the last 10 minutes", rate),
            (
                "scada_alarm_flood",
                f"1 during an alarm flood (over {FLOOD_PER_10MIN} in 10 min)",
                rate > FLOOD_PER_10MIN,
            ),
            ("scada_history_backlog", "Values waiting for the history store", status.get("history_backlog")),
            ("scada_influx_spool_backlog", "Entries in the TSDB disk spool", status.get("influx_backlog")),
            ("scada_influx_spool_fill_ratio", "The TSDB spool's fill ratio", status.get("influx_spool_fill")),
            ("scada_storage_failing", "1 when history storage fails", status.get("history_storage_failing")),
            ("scada_tasks_failed", "Supervised tasks failed now", len(status.get("tasks_failed", ()))),
        ):
            v = _num(value)
            if v is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], v)
                yield g
        restarts = CounterMetricFamily("scada_task_restarts", "Supervised task restarts")
        restarts.add_metric([], float(status.get("task_restarts", 0)))
        yield restarts

    def _front(self, s: Snapshot) -> Iterator[Metric]:
        for name, doc, value in (
            ("scada_opcua_sessions", "OPC UA client sessions", s.opcua_sessions),
            ("scada_opcua_subscriptions", "OPC UA subscriptions", s.opcua_subscriptions),
        ):
            if value is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g
        kpi = GaugeMetricFamily("scada_contract_kpi", "The performance contract's live figures", labels=["name"])
        for k, v in sorted(s.kpis.items()):
            kpi.add_metric([k], v)
        yield kpi

    def _orders(self, s: Snapshot) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = {}
        breached: dict[str, int] = {}
        for o in s.orders:
            counts[(o.service, o.state.label)] = counts.get((o.service, o.state.label), 0) + 1
            breached.setdefault(o.service, 0)
            if o.breached:
                breached[o.service] += 1
        g = GaugeMetricFamily("scada_work_orders_open", "Open work orders", labels=["service", "state"])
        for (service, state), n in sorted(counts.items()):
            g.add_metric([service, state], n)
        yield g
        b = GaugeMetricFamily(
            "scada_work_orders_breached", "Open work orders past a contractual deadline", labels=["service"]
        )
        for service, n in sorted(breached.items()):
            b.add_metric([service], n)
        yield b
        e = CounterMetricFamily(
            "scada_work_order_events", "Work-order events seen by this front since it started", labels=["event"]
        )
        for event, n in sorted(s.order_events.items()):
            e.add_metric([event], n)
        yield e


def registry_of(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScadaCollector(snapshot))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text of one scrape."""
    return generate_latest(registry)
