"""The contract KPIs on one clock: an accelerated run's figures are its simulated city's.

Two data folders hold the same simulated city's November 2026 (as the clock of the work orders
reads it): one written by a real-time server (every stamp is clock time), one by a server run at
x60 then restarted at x120 (the history and the alarm journal stamp real time, in June 2026; the
clock record, written by the project's own writer, says how real time maps to the clock). Built
with the project's writers (HistoryStore, the alarm Journal, OrderJournal); both must give the
same energy, availability and delays.
"""

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
from scada.control.clockmap import Segment, append_segment
from scada.historian.compress import StoredBatch
from scada.historian.store import HistoryStore
from scada.operations.journal import JOURNAL_FILE, OrderJournal
from scada.operations.kpi_service import ContractKpis, compute, month_of
from scada.operations.model import OrderState, WorkOrder
from tests.unit.test_operations_kpi_live import DEVICES, OPERATIONS  # the same two devices and contract

ROOT = Path(__file__).resolve().parents[2]
NS = 10**9
MIN = 60 * NS
H = 3600 * NS
DAY = 24 * H
T0 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * NS  # the simulated month
NOW = T0 + 10 * DAY  # the clock's now: 11 November 00:00
# The accelerated server: started in June 2026 (real) with --clock-start 30 October x60; stopped,
# and restarted an hour later with --clock-start where it had stopped (5 November), x120.
REAL0, CLOCK0, ACC0 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp()) * NS, T0 - 2 * DAY, 60
CLOCK1, ACC1 = T0 + 4 * DAY + 7 * H, 120
REAL1 = REAL0 + (CLOCK1 - CLOCK0) // ACC0 + H


def real_of(clock_ns: int) -> int:
    """The real instant at which the accelerated server's clock read ``clock_ns``."""
    if clock_ns < CLOCK1:
        return REAL0 + (clock_ns - CLOCK0) // ACC0
    return REAL1 + (clock_ns - CLOCK1) // ACC1


def counter() -> list[tuple[int, float]]:
    """The cabinet's energy counter, as the simulator's meter runs (in simulated time): +6.5 kWh
    each night, 18:00 to 07:00; stored at 07:00 and 18:00."""
    points, v = [], 100.0
    for day in range(-1, 10):
        points += [(T0 + day * DAY + 7 * H, v), (T0 + day * DAY + 18 * H, v)]
        v += 6.5
    return points + [(NOW, v - 6.5 * 6 / 13)]  # 00:00: 6 of the night's 13 hours still to come


HISTORY = {
    "Ahuy/lighting/LC-A-1/energy": counter(),
    # offline on 3 November from 06:00 to 18:00 (12 h)
    "Ahuy/lighting/LC-A-1/Diagnostics/state": [(T0 - DAY, 1.0), (T0 + 2 * DAY + 6 * H, 2.0), (T0 + 2 * DAY + 18 * H, 1.0)],
    "Dijon/bollard/B-D-1/Diagnostics/state": [(T0 - DAY, 1.0)],
}  # fmt: skip
FAULT = T0 + 6 * DAY + 22 * H  # lamps failed on 7 November 22:00, cleared at 03:00 (5 h)


def alarm(t: int, event: str) -> JournalRow:
    state = "UNACK_ACTIVE" if event == "ACTIVATE" else "NORMAL"
    return JournalRow(t, "lamps_failed", "LC-A-1", "Ahuy", 1.0, "medium", 500, event, state, "", "",
                      "lighting_maintenance", "")  # fmt: skip


def order(n: int, origin: int, state: OrderState, **times: int) -> WorkOrder:
    return WorkOrder(f"WO-{n:06d}", "alarm", "lighting_maintenance", "medium", "LC-A-1", "Ahuy", 47.37, 5.02,
                     "lamps_failed", "", state, origin, origin, "server", **times)  # fmt: skip


ORDERS = [  # stamped by the operations clock in both runs
    order(1, FAULT, OrderState.CLOSED, on_site_ns=FAULT + 40 * MIN, repaired_ns=FAULT + 5 * H, closed_ns=FAULT + 5 * H),
    order(2, NOW - 3 * H, OrderState.ASSIGNED, assigned_ns=NOW - 3 * H),  # late at NOW (1 h on site)
    order(3, NOW - 30 * MIN, OrderState.ASSIGNED, assigned_ns=NOW - 25 * MIN),  # not yet late at NOW
]


@pytest.fixture
def config(tmp_path):
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "tags.yaml").write_text(head + DEVICES)
    (folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    (folder / "operations.yaml").write_text(OPERATIONS)
    return load_config(folder)


def write_run(folder: Path, config, stamp) -> Path:
    """The city's month as a server writes it, the history and alarms stamped by ``stamp``."""
    folder.mkdir()
    names = config.tag_table()[0]
    index = {n: i for i, n in enumerate(names)}
    with HistoryStore(folder / "history.sqlite", names) as store:
        for name, pts in HISTORY.items():
            n = len(pts)
            store.write(
                StoredBatch(
                    np.full(n, index[name], np.int64),
                    np.array([p[1] for p in pts]),
                    np.full(n, st.GOOD, np.uint32),
                    np.array([stamp(p[0]) for p in pts], np.int64),
                )
            )
    with Journal(folder / "alarms.sqlite") as j:
        j.record([alarm(stamp(FAULT), "ACTIVATE"), alarm(stamp(FAULT + 5 * H), "CLEAR")])
    journal = OrderJournal(folder / JOURNAL_FILE)
    try:
        journal.write(orders=ORDERS)
    finally:
        journal.close()
    return folder


@pytest.fixture
def real_run(tmp_path, config):
    folder = write_run(tmp_path / "real", config, lambda t: t)
    append_segment(folder, Segment(T0 - 2 * DAY, T0 - 2 * DAY, 1.0))  # production records itself too
    return folder


@pytest.fixture
def accelerated_run(tmp_path, config):
    folder = write_run(tmp_path / "accelerated", config, real_of)
    append_segment(folder, Segment(REAL0, CLOCK0, ACC0))
    append_segment(folder, Segment(REAL1, CLOCK1, ACC1))
    return folder


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-9) for k in a
    )


async def test_an_accelerated_runs_live_kpis_are_those_of_the_real_time_run(config, real_run, accelerated_run):
    real = await ContractKpis(config, real_run).live(NOW)
    fast = await ContractKpis(config, accelerated_run).live(NOW)
    # energy: 9 whole nights + 7 h of 31 October's + 7 h of 10 November's (9 x 6.5 + 3.5 + 3.5 =
    # 65.5 kWh) against 10 days x 20 kWh
    assert real["energy.Ahuy.kwh"] == pytest.approx(65.5)
    assert real["energy.Ahuy.baseline_kwh"] == pytest.approx(200.0)
    # availability: 12 h offline and 5 h in fault of 240 h; the bollard all along
    assert real["availability.lighting"] == pytest.approx((240 - 17) / 240, abs=1e-5)
    assert real["availability.bollard"] == 1.0
    # delays: one measured (40 min on site, 5 h repaired: over 4 h), one open past 1 h on site
    assert real["delay.lighting_maintenance.medium.on_site_count"] == 1.0
    assert real["delay.lighting_maintenance.medium.on_site_p50_s"] == 2400.0
    assert real["delay.lighting_maintenance.medium.on_site_within"] == 0.5
    assert real["delay.lighting_maintenance.medium.repaired_within"] == 0.0
    assert same(real, fast), {k: (real[k], fast.get(k)) for k in real if not same({k: real[k]}, {k: fast.get(k, -1)})}


def test_a_simulated_runs_open_orders_are_judged_when_its_data_ends(config, real_run, accelerated_run):
    """`scada report`'s way (no as_of): a real-time run's open orders are judged now (the server
    may still run), a simulated run's when its recorded data ends (the clock then read NOW), not
    at a real now months after it: WO-000003, 30 min old then, is not late against 1 h."""
    start, end = month_of(NOW, UTC)

    def on_site(folder):
        k = compute(config, folder, start, end, clock=_clock(folder))
        (row,) = [r for r in k.delays if r["kind"] == "on_site"]
        return row, k

    fast, k = on_site(accelerated_run)
    assert fast["late_open"] == 1 and fast["within"] == 0.5  # WO-000002 only
    assert k.horizon_ns == NOW  # history known until the clock read NOW, not a June real stamp
    real, _ = on_site(real_run)
    assert time.time_ns() > NOW + H and real["late_open"] == 2  # real now: both are


def _clock(folder):
    from scada.control import clockmap

    m, note = clockmap.load(folder)
    assert note is None
    return m
