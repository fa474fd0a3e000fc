"""/metrics: the Prometheus exposition of the core's pushed figures and the front's own, parsed
back with prometheus-client's own parser (what Prometheus reads)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from scada.front.orders import OrdersMirror
from scada.operations import metrics
from scada.operations.http import OpsHttp
from scada.operations.model import OrderEvent, OrderState, WorkOrder
from tests.ops_city import city, ops_config, tag_table
from tests.ports import free_port

NOW = 1_764_000_000 * 10**9
CORE = {
    "status": {"alarms_announced": 4, "alarms_10min": 12, "history_backlog": 3, "influx_backlog": 7,
               "influx_spool_fill": 0.25, "history_storage_failing": False, "task_restarts": 2,
               "tasks_failed": ["driver:modbus"]},
    "drivers": {"modbus": {"devices": 2, "online": 1, "late_polls": 5, "missed_cycles": 1, "demoted": 1},
                "mqtt": {"devices": 2, "online": 2, "received": 10}},
    "loop_lag_s": 0.042,
    "consumers": {"alarms": {"dropped_batches": 3, "dropped_rows": 300}},
}  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def order(oid: str, service: str, state: OrderState, breached: bool = False) -> WorkOrder:
    return WorkOrder(oid, "alarm", service, "high", "LC-D-1", "Dijon", 47.3, 5.0, "lamps_failed", "", state,
                     NOW, NOW, "server", breached=breached)  # fmt: skip


def test_collector_exposes_every_figure():
    snap = metrics.Snapshot(
        core=CORE,
        core_age_s=1.5,
        devices=[("modbus", "lighting", 2, 1)],
        opcua_sessions=3,
        opcua_subscriptions=5,
        orders=[
            order("WO-1", "lighting_maintenance", OrderState.NEW),
            order("WO-2", "lighting_maintenance", OrderState.NEW, breached=True),
            order("WO-3", "security", OrderState.ON_SITE),
        ],
        order_events={"breach": 1, "create": 3},
        kpis={"energy_saving": 0.61},
    )
    s = samples(metrics.render(metrics.registry_of(lambda: snap)).decode())
    assert s[("scada_devices_online", (("class", "lighting"), ("driver", "modbus")))] == 1
    assert s[("scada_devices", (("class", "lighting"), ("driver", "modbus")))] == 2
    assert s[("scada_late_polls_total", (("driver", "modbus"),))] == 5
    assert ("scada_late_polls_total", (("driver", "mqtt"),)) not in s  # a driver without polls has none
    assert s[("scada_missed_cycles_total", (("driver", "modbus"),))] == 1
    assert s[("scada_event_loop_lag_seconds", ())] == 0.042
    assert s[("scada_consumer_dropped_batches_total", (("consumer", "alarms"),))] == 3
    assert s[("scada_alarms_last_10min", ())] == 12 and s[("scada_alarm_flood", ())] == 1
    assert s[("scada_influx_spool_backlog", ())] == 7 and s[("scada_history_backlog", ())] == 3
    assert s[("scada_tasks_failed", ())] == 1 and s[("scada_task_restarts_total", ())] == 2
    assert s[("scada_opcua_sessions", ())] == 3 and s[("scada_opcua_subscriptions", ())] == 5
    assert s[("scada_work_orders_open", (("service", "lighting_maintenance"), ("state", "new")))] == 2
    assert s[("scada_work_orders_open", (("service", "security"), ("state", "on_site")))] == 1
    assert s[("scada_work_orders_breached", (("service", "lighting_maintenance"),))] == 1
    assert s[("scada_work_orders_breached", (("service", "security"),))] == 0
    assert s[("scada_work_order_events_total", (("event", "breach"),))] == 1
    assert s[("scada_contract_kpi", (("name", "energy_saving"),))] == 0.61
    assert s[("scada_core_stats_age_seconds", ())] == 1.5


def test_without_core_figures_the_age_says_so():
    s = samples(metrics.render(metrics.registry_of(metrics.Snapshot)).decode())
    assert s[("scada_core_stats_age_seconds", ())] == -1
    assert not any(name.startswith("scada_late_polls") for name, _ in s)


async def test_metrics_over_http_from_the_mirrors(tmp_path):
    ops = ops_config()
    config = city(tmp_path / "cfg", ops)
    tags = tag_table(config)
    tags.value[tags.id_of("Dijon/lighting/LC-D-1/Diagnostics/state")] = 1
    mirror = OrdersMirror(clock=lambda: NOW)
    mirror.receive_stats(CORE)
    mirror.receive(
        [order("WO-1", "security", OrderState.NEW, breached=True).to_wire()],
        [OrderEvent(NOW, "WO-1", "breach", OrderState.NEW, OrderState.NEW, "server").to_wire()],
    )
    http = OpsHttp(config, ops, ("127.0.0.1", 0), tags, None, mirror, request=None, opcua_counts=lambda: (2, 4),  # type: ignore[arg-type]
                   clock=lambda: NOW + 3 * 10**9)  # fmt: skip
    async with TestClient(TestServer(http.internal_app(), host="127.0.0.1", port=free_port())) as client:
        r = await client.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        s = samples(await r.text())
    assert s[("scada_devices_online", (("class", "lighting"), ("driver", "modbus")))] == 1
    assert s[("scada_devices", (("class", "lighting"), ("driver", "modbus")))] == 2
    assert s[("scada_devices_online", (("class", "fleet"), ("driver", "mqtt")))] == 0
    assert s[("scada_opcua_sessions", ())] == 2 and s[("scada_core_stats_age_seconds", ())] == pytest.approx(3.0)
    assert s[("scada_work_orders_breached", (("service", "security"),))] == 1
    assert s[("scada_work_order_events_total", (("event", "breach"),))] == 1


def test_grafana_dashboard_queries_only_metrics_we_expose():
    """Every metric the shipped dashboard queries is one /metrics produces (a renamed metric
    would leave an empty panel nobody notices)."""
    import json
    import re

    from tests.configs import ROOT

    dashboard = json.loads((ROOT / "grafana" / "city-scada.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {m for e in exprs for m in re.findall(r"\bscada_[a-z0-9_]+", e)}
    snap = metrics.Snapshot(
        core=CORE, core_age_s=1.0, devices=[("modbus", "lighting", 2, 1)], opcua_sessions=1, opcua_subscriptions=1,
        orders=[order("WO-1", "security", OrderState.NEW)], order_events={"create": 1}, kpis={"x": 1.0},
    )  # fmt: skip
    exposed = {name for name, _ in samples(metrics.render(metrics.registry_of(lambda: snap)).decode())}
    assert used and used <= exposed, f"queried but not exposed: {sorted(used - exposed)}"
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {"${DS_PROMETHEUS}"}
