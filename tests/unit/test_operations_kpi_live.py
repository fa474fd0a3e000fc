"""ContractKpis.live: month-to-date figures under flat names, from a store and journals in tmp_path."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from city_scada import load_config
from scada import status as st
from scada.alarms.journal import Journal, JournalRow
from scada.historian.compress import StoredBatch
from scada.historian.store import HistoryStore
from scada.operations.kpi_service import ContractKpis, month_bounds, month_of
from scada.operations.model import OrderState, WorkOrder

ROOT = Path(__file__).resolve().parents[2]
NS = 10**9
H = 3600 * NS
DAY = 24 * H
T0 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * NS
NOW = T0 + 10 * DAY  # 11 November 00:00: ten days of the month so far

DEVICES = """
devices:
  - {name: LC-A-1, type: lighting_cabinet, commune: Ahuy, lat: 47.369, lon: 5.021, endpoint: "127.0.0.1:15020", unit: 1}
  - {name: B-D-1, type: access_bollard, commune: Dijon, lat: 47.324, lon: 5.030, endpoint: "127.0.0.1:1883"}
"""
OPERATIONS = """
services:
  lighting_maintenance:
    delays:
      default: {on_site: 1h, repaired: 4h, warn_before: 10m}
energy:
  savings_target: 65 %
  baseline_kwh_per_day: 20
availability:
  lighting: 98 %
"""


@pytest.fixture
def config(tmp_path):
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "tags.yaml").write_text(head + DEVICES)
    (folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    (folder / "operations.yaml").write_text(OPERATIONS)
    return load_config(folder)


@pytest.fixture
def data(tmp_path, config):
    names = config.tag_table()[0]
    index = {n: i for i, n in enumerate(names)}
    folder = tmp_path / "data"
    folder.mkdir()
    points = {
        # 0 -> 50 kWh over the ten days so far (linear), against 10 x 20: 75 % saved
        "Ahuy/lighting/LC-A-1/energy": [(T0, 0.0), (NOW, 50.0)],
        "Ahuy/lighting/LC-A-1/Diagnostics/state": [(T0 - DAY, 1.0)],
        "Dijon/bollard/B-D-1/Diagnostics/state": [(T0 - DAY, 1.0)],
    }
    with HistoryStore(folder / "history.sqlite", names) as store:
        for name, pts in points.items():
            n = len(pts)
            store.write(
                StoredBatch(
                    np.full(n, index[name], np.int64),
                    np.array([p[1] for p in pts]),
                    np.full(n, st.GOOD, np.uint32),
                    np.array([p[0] for p in pts], np.int64),
                )
            )
    with Journal(folder / "alarms.sqlite") as j:
        # lamps failed on day 9, still active now: 1 of the 10 days in fault
        j.record([JournalRow(NOW - DAY, "lamps_failed", "LC-A-1", "Ahuy", 1.0, "medium", 500, "ACTIVATE",
                             "UNACK_ACTIVE", "", "", "lighting_maintenance", "")])  # fmt: skip
    return folder


def test_month_bounds_in_a_time_zone():
    paris = pytest.importorskip("zoneinfo").ZoneInfo("Europe/Paris")
    start, end = month_bounds(2026, 12, paris)
    assert start == int(datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp()) * NS  # UTC+1 in winter
    assert end == int(datetime(2026, 12, 31, 23, tzinfo=UTC).timestamp()) * NS  # into 2027
    assert month_of(NOW, UTC) == (T0, T0 + 30 * DAY)


async def test_live_figures_month_to_date(config, data):
    orders = [
        WorkOrder("WO-000001", "alarm", "lighting_maintenance", "medium", "LC-A-1", "Ahuy", 47.37, 5.02,
                  "lamps_failed", "", OrderState.ASSIGNED, NOW - DAY, NOW - DAY, "server"),
    ]  # fmt: skip
    asked = []

    def read_orders(start, end):
        asked.append((start, end))
        return orders

    live = await ContractKpis(config, data, orders=read_orders).live(NOW)
    assert asked and asked[0][0] == T0  # the month so far
    assert live["energy.Ahuy.kwh"] == pytest.approx(50.0)
    assert live["energy.Ahuy.baseline_kwh"] == pytest.approx(200.0)
    assert live["energy.Ahuy.saving"] == pytest.approx(0.75) and live["energy.all.saving"] == pytest.approx(0.75)
    assert live["energy.target"] == pytest.approx(0.65)
    assert live["availability.lighting"] == pytest.approx(0.9)
    assert live["availability.lighting.Ahuy"] == pytest.approx(0.9)
    assert live["availability.lighting.target"] == pytest.approx(0.98)
    assert live["availability.bollard"] == 1.0 and math.isnan(live["availability.bollard.target"])
    # the order: no crew on site a day after the fault: late against 1 h, no delay measured yet
    assert live["delay.lighting_maintenance.medium.on_site_count"] == 0.0
    assert live["delay.lighting_maintenance.medium.on_site_within"] == 0.0
    assert math.isnan(live["delay.lighting_maintenance.medium.on_site_p90_s"])
    assert all(isinstance(v, float) for v in live.values())


def test_report_of_a_simulated_run_ahead_of_real_time(config, data):
    """`scada report` (no as_of) of orders stamped by a simulated clock ahead of real time: an
    order still not on site 3 h after its fault (its last change) is late against 1 h, not judged
    at a real now before its fault (review 16 #6)."""
    from scada.operations.kpi_service import compute

    fault = time.time_ns() + 30 * DAY
    order = WorkOrder("WO-000001", "alarm", "lighting_maintenance", "medium", "LC-A-1", "Ahuy", 47.37, 5.02,
                      "lamps_failed", "", OrderState.ASSIGNED, fault, fault, "server", assigned_ns=fault + 3 * H)  # fmt: skip
    k = compute(config, data, fault - DAY, fault + DAY, orders=lambda _s, _e: [order])
    (on_site,) = [r for r in k.delays if r["kind"] == "on_site"]
    assert on_site["late_open"] == 1


async def test_live_without_data_is_empty(config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert await ContractKpis(config, empty).live(NOW) == {}
    assert await ContractKpis(config, tmp_path / "nowhere").live(NOW) == {}
