"""`scada report --month` as a subprocess over a simulated month of October 2026.

The history is written through the history store's own API (StoredBatches, as the historian
stores them), the faults through the alarm journal's, the orders (when the work-order journal
is there) through the work-order journal's; then the report is run as the operator would run it,
and its CSV and HTML are checked against figures worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from city_scada import load_config
from city_scada import main as scada_main
from scada import status as st
from scada.alarms.journal import Journal, JournalRow
from scada.historian.compress import StoredBatch
from scada.historian.store import HistoryStore

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 120.0  # s: a safety net for the subprocess, never a wait
NS = 10**9
H = 3600 * NS
DAY = 24 * H
T0 = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()) * NS
END = T0 + 31 * DAY
GOOD, BAD = st.GOOD, st.BAD_COMMUNICATION_ERROR

DEVICES = """
devices:
  - {name: LC-A-1, type: lighting_cabinet, commune: Ahuy, lat: 47.369, lon: 5.021, endpoint: "127.0.0.1:15020", unit: 1}
  - {name: LC-A-2, type: lighting_cabinet, commune: Ahuy, lat: 47.371, lon: 5.025, endpoint: "127.0.0.1:15021", unit: 1}
  - {name: LC-D-1, type: lighting_cabinet, commune: Dijon, lat: 47.322, lon: 5.041, endpoint: "127.0.0.1:15022", unit: 1}
  - {name: B-D-1, type: access_bollard, commune: Dijon, lat: 47.324, lon: 5.030, endpoint: "127.0.0.1:1883"}
"""
OPERATIONS = """
services:
  lighting_maintenance:
    delays:
      default: {on_site: 1h, repaired: 4h, warn_before: 10m}
  security:
    classes: [bollard]
    delays:
      default: {on_site: 30m, repaired: 2h, warn_before: 10m}
energy:
  savings_target: 65 %
  baseline_kwh_per_day: 21
  communes: {Dijon: 30}
availability:
  lighting: 98 %
  bollard: 99 %
"""


def night_counter(start_value: float, until: int, reset_at: int | None = None) -> list[tuple]:
    """A lighting cabinet's energy counter: +6.5 kWh each night from 18:00 to 07:00 (stored at
    07:00 and 18:00, as the compressor keeps a counter's corners), from 30 September 07:00 to
    ``until``; reset to 0 at ``reset_at`` (a meter replaced)."""
    points, v = [], start_value
    day = T0 - DAY
    while day + 7 * H <= until:
        if reset_at is not None and day < reset_at <= day + DAY:
            points.append((day + 7 * H, v))
            v = 0.0
            points.append((reset_at, v))
        else:
            points.append((day + 7 * H, v))
        if day + 18 * H <= until:
            points.append((day + 18 * H, v))
        v += 6.5
        day += DAY
    return points


def history() -> dict[str, list[tuple]]:
    after = END + 7 * H  # the store recorded until 1 November 07:00: the whole month is known
    return {
        # Ahuy: two cabinets, 201.5 kWh each (7 h of the night of 30 September, 30 whole nights,
        # 6 h of the night of 31 October: 3.5 + 195 + 3.0); LC-A-2's meter replaced on the 15th.
        "Ahuy/lighting/LC-A-1/energy": night_counter(1000.0, after),
        "Ahuy/lighting/LC-A-2/energy": night_counter(500.0, after, reset_at=T0 + 14 * DAY + 12 * H),
        # Dijon: communication lost on 16 October 00:00 (Bad from then on): the counter is known
        # until its last Good point, 15 October 18:00 (14.75 days): 3.5 + 14 nights = 94.5 kWh
        "Dijon/lighting/LC-D-1/energy": [
            *night_counter(0.0, T0 + 14 * DAY + 18 * H),
            (T0 + 15 * DAY, 94.5, BAD),
            (after, 94.5, BAD),
        ],
        "Ahuy/lighting/LC-A-1/Diagnostics/state": [(T0 - DAY, 1.0), (after, 1.0)],
        "Ahuy/lighting/LC-A-2/Diagnostics/state": [(T0 - DAY, 1.0), (after, 1.0)],
        # offline (known: the driver says so) from the 16th: online 15 of 31 days
        "Dijon/lighting/LC-D-1/Diagnostics/state": [(T0 - DAY, 1.0), (T0 + 15 * DAY, 2.0), (after, 2.0)],
        "Dijon/bollard/B-D-1/Diagnostics/state": [(T0 - DAY, 1.0), (after, 1.0)],
    }


def alarm(t: int, name: str, device: str, commune: str, event: str, service: str) -> JournalRow:
    state = "UNACK_ACTIVE" if event == "ACTIVATE" else "NORMAL"
    return JournalRow(t, name, device, commune, 1.0, "medium", 500, event, state, "", "", service, name)


ALARMS = [
    # active before the month began, cleared on 1 October 06:00: 6 h of fault in October
    alarm(T0 - 4 * H, "earth_leakage", "LC-A-2", "Ahuy", "ACTIVATE", "lighting_maintenance"),
    alarm(T0 + 6 * H, "earth_leakage", "LC-A-2", "Ahuy", "CLEAR", "lighting_maintenance"),
    # a bollard in fault 5 October 10:00 to 7 October 10:00: 2 days
    alarm(T0 + 4 * DAY + 10 * H, "bollard_fault", "B-D-1", "Dijon", "ACTIVATE", "security"),
    alarm(T0 + 6 * DAY + 10 * H, "bollard_fault", "B-D-1", "Dijon", "CLEAR", "security"),
    # lamps failed at 23:00 on the last day, never cleared: 1 h, up to the month's end
    alarm(END - H, "lamps_failed", "LC-A-1", "Ahuy", "ACTIVATE", "lighting_maintenance"),
    # a service without a contract in operations.yaml (the police): not a fault of the equipment
    alarm(T0 + 2 * DAY, "door_open", "LC-D-1", "Dijon", "ACTIVATE", "municipal_police"),
    alarm(T0 + 3 * DAY, "door_open", "LC-D-1", "Dijon", "CLEAR", "municipal_police"),
]


@pytest.fixture
def config_dir(tmp_path):
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "tags.yaml").write_text(head + DEVICES)
    (folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    (folder / "operations.yaml").write_text(OPERATIONS)
    return folder


def write_data(folder: Path, config_dir: Path, stamp=lambda t: t) -> Path:
    """The month's history and alarms as a server writes them, stamped by ``stamp`` (the real
    instant of a clock time: the identity for a real-time server)."""
    config = load_config(config_dir)
    names = config.tag_table()[0]
    index = {n: i for i, n in enumerate(names)}
    folder.mkdir()
    with HistoryStore(folder / "history.sqlite", names) as store:
        for name, points in history().items():
            store.write(
                StoredBatch(
                    np.full(len(points), index[name], np.int64),
                    np.array([p[1] for p in points], np.float64),
                    np.array([p[2] if len(p) > 2 else GOOD for p in points], np.uint32),
                    np.array([stamp(p[0]) for p in points], np.int64),
                )
            )
    with Journal(folder / "alarms.sqlite") as journal:
        journal.record([dataclasses.replace(r, time_ns=stamp(r.time_ns)) for r in ALARMS])
    return folder


@pytest.fixture
def data_dir(tmp_path, config_dir):
    return write_data(tmp_path / "data", config_dir)


def scada(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "city_scada", *args], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )


def report(config_dir: Path, data_dir: Path, out: Path, month: str = "2026-10") -> subprocess.CompletedProcess:
    return scada("report", "--month", month, "--data", str(data_dir), "--config", str(config_dir), "--out", str(out))


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_month_report_energy_and_availability(config_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    done = report(config_dir, data_dir, out)
    assert done.returncode == 0, done.stderr
    assert "report.html" in done.stderr

    communes = {r["commune"]: r for r in rows(out / "energy_communes.csv")}
    # Ahuy: 2 x 201.5 kWh against 2 x 31 days x 21 kWh = 1302: 69.05 % saved, target 65 % met
    ahuy = communes["Ahuy"]
    assert float(ahuy["energy_kwh"]) == pytest.approx(403.0, abs=1e-3)
    assert float(ahuy["baseline_kwh"]) == pytest.approx(1302.0, abs=1e-3)
    assert float(ahuy["saving"]) == pytest.approx(1 - 403 / 1302, abs=1e-4)
    assert ahuy["met"] == "yes" and ahuy["counter_resets"] == "1" and ahuy["cabinets_reporting"] == "2"
    # Dijon: 94.5 kWh over the 14.75 days known, against 14.75 x 30 (its commune's baseline)
    dijon = communes["Dijon"]
    assert float(dijon["energy_kwh"]) == pytest.approx(94.5, abs=1e-3)
    assert float(dijon["covered_h"]) == pytest.approx(14.75 * 24, abs=1e-3)
    assert float(dijon["baseline_kwh"]) == pytest.approx(14.75 * 30, abs=1e-3)
    cabinets = {r["device"]: r for r in rows(out / "energy_cabinets.csv")}
    assert set(cabinets) == {"LC-A-1", "LC-A-2", "LC-D-1"}
    assert float(cabinets["LC-A-2"]["energy_kwh"]) == pytest.approx(201.5, abs=1e-3)

    classes = {r["class"]: r for r in rows(out / "availability_classes.csv")}
    # lighting: 93 device-days known; LC-A-1 loses 1 h (lamps failed at the end), LC-A-2 6 h (the
    # earth leakage from September), LC-D-1 16 days offline (its door, police's, does not count)
    expected = (93 * DAY - 7 * H - 16 * DAY) / (93 * DAY)
    assert float(classes["lighting"]["availability"]) == pytest.approx(expected, abs=1e-5)
    assert classes["lighting"]["met"] == "no" and float(classes["lighting"]["target"]) == 0.98
    # the bollard: 2 days in fault of 31
    assert float(classes["bollard"]["availability"]) == pytest.approx(29 / 31, abs=1e-5)
    per_commune = {(r["class"], r["commune"]): r for r in rows(out / "availability_communes.csv")}
    assert float(per_commune[("lighting", "Dijon")]["availability"]) == pytest.approx(15 / 31, abs=1e-5)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2  # energy and availability; no order, no delay chart
    assert "Lighting energy per commune" in page and "Availability per equipment class" in page
    assert f"{100 * (1 - 403 / 1302):.2f} %" in page  # the commune's saving in its table
    # self-contained: no script, nothing fetched (the SVG's xmlns URIs are names, not fetched)
    assert "<script" not in page and 'href="http' not in page and "src=" not in page


def test_month_report_delays_from_the_work_order_journal(config_dir, data_dir, tmp_path):
    journal_mod = pytest.importorskip("scada.operations.journal")
    from scada.operations.model import OrderState, WorkOrder

    def order(n, service, device, origin, on_site, repaired, priority="medium", state=OrderState.CLOSED):
        return WorkOrder(
            id=f"WO-{n:06d}", source="alarm", service=service, priority=priority, device=device, commune="Ahuy",
            lat=47.37, lon=5.02, cause="x", description="", state=state, origin_ns=origin, created_ns=origin,
            created_by="server", on_site_ns=on_site, repaired_ns=repaired,
        )  # fmt: skip

    m = 60 * NS
    orders = [
        order(1, "lighting_maintenance", "LC-A-2", T0 - 4 * H, T0 - 3 * H, T0 + 6 * H),  # September: left out
        order(2, "lighting_maintenance", "LC-A-1", T0 + 2 * DAY, T0 + 2 * DAY + 20 * m, T0 + 2 * DAY + 2 * H),
        order(3, "lighting_maintenance", "LC-A-1", T0 + 9 * DAY, T0 + 9 * DAY + 40 * m, T0 + 9 * DAY + 5 * H),
        order(4, "security", "B-D-1", T0 + 4 * DAY + 10 * H, T0 + 4 * DAY + 10 * H + 45 * m, T0 + 6 * DAY + 10 * H,
              priority="high"),
    ]  # fmt: skip
    j = journal_mod.OrderJournal(data_dir / journal_mod.JOURNAL_FILE)
    try:
        j.write(orders=orders)
    finally:
        j.close()
    out = tmp_path / "out"
    done = report(config_dir, data_dir, out)
    assert done.returncode == 0, done.stderr
    delays = {(r["service"], r["priority"], r["kind"]): r for r in rows(out / "delays.csv")}
    on_site = delays[("lighting_maintenance", "medium", "on_site")]
    # 20 and 40 min on site, both within 1 h; repaired in 2 h and 5 h: one over 4 h
    assert on_site["count"] == "2" and float(on_site["p50_s"]) == 30 * 60 and on_site["within"] == "1.0"
    repaired = delays[("lighting_maintenance", "medium", "repaired")]
    assert repaired["over"] == "1" and float(repaired["within"]) == 0.5 and repaired["met"] == "no"
    bollard = delays[("security", "high", "on_site")]
    assert bollard["count"] == "1" and bollard["over"] == "1" and float(bollard["contract_s"]) == 1800
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3 and "Intervention delays" in page


def test_bad_month_missing_folder_and_month_without_data(config_dir, data_dir, tmp_path, capsys):
    # in this process (the subprocess is tested above): each refusal is a clear line, status 1
    out = tmp_path / "out"

    def refused(data: Path, month: str = "2026-10") -> str:
        args = ["report", "--month", month, "--data", str(data), "--config", str(config_dir), "--out", str(out)]
        assert scada_main(args) == 1
        return capsys.readouterr().err

    assert "bad month '2026-13': expected YYYY-MM" in refused(data_dir, "2026-13")
    assert "bad month '26-1'" in refused(data_dir, "26-1")
    assert "no data folder" in refused(tmp_path / "nowhere")
    assert "no data for 2025-03" in refused(data_dir, "2025-03")
    assert not out.exists()  # nothing written for a report that could not be made
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "history.sqlite").write_bytes(b"not a database" * 100)
    assert "history.sqlite" in refused(tmp_path / "garbage")


# -- a simulated run's folder (scada run --clock-start ... --acceleration ...) ------------------

# The server ran in March 2026 (real time) with its clock at 29 September x60, then was restarted
# with --clock-start where it had stopped (12 October) x30: the history and the alarm journal
# stamp real time, the work orders the simulated clock; clock.json says how one maps to the other.
SIM_REAL0, SIM_CLOCK0, SIM_ACC0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * NS, T0 - 2 * DAY, 60
SIM_CLOCK1, SIM_ACC1 = T0 + 11 * DAY, 30
SIM_REAL1 = SIM_REAL0 + (SIM_CLOCK1 - SIM_CLOCK0) // SIM_ACC0 + 2 * H


def sim_real(clock_ns: int) -> int:
    if clock_ns < SIM_CLOCK1:
        return SIM_REAL0 + (clock_ns - SIM_CLOCK0) // SIM_ACC0
    return SIM_REAL1 + (clock_ns - SIM_CLOCK1) // SIM_ACC1


def test_a_simulated_runs_folder_reports_its_simulated_month(config_dir, tmp_path):
    """The report of the simulated October is the real-time October's, file for file; an order
    still open when the run's data ends is judged then (both late here: the real-time folder's
    now, the simulated one's clock at its last stamp, 1 November 07:00)."""
    from scada.control.clockmap import Segment, append_segment
    from scada.operations.journal import JOURNAL_FILE, OrderJournal
    from scada.operations.model import OrderState, WorkOrder

    def order(n, origin, on_site=0, repaired=0, state=OrderState.CLOSED):
        return WorkOrder(
            id=f"WO-{n:06d}", source="alarm", service="lighting_maintenance", priority="medium", device="LC-A-1",
            commune="Ahuy", lat=47.37, lon=5.02, cause="x", description="", state=state, origin_ns=origin,
            created_ns=origin, created_by="server", on_site_ns=on_site, repaired_ns=repaired,
        )  # fmt: skip

    orders = [
        order(1, T0 + 2 * DAY, T0 + 2 * DAY + H // 3, T0 + 2 * DAY + 2 * H),
        order(2, T0 + 12 * DAY, T0 + 12 * DAY + H // 2, T0 + 12 * DAY + 5 * H),  # after the restart
        order(3, END - 2 * H, state=OrderState.ASSIGNED),  # open: late at 1 November 07:00
    ]
    outs = {}
    for name, stamp in (("real", lambda t: t), ("simulated", sim_real)):
        folder = write_data(tmp_path / name, config_dir, stamp)
        journal = OrderJournal(folder / JOURNAL_FILE)
        try:
            journal.write(orders=orders)
        finally:
            journal.close()
        if name == "simulated":
            append_segment(folder, Segment(SIM_REAL0, SIM_CLOCK0, SIM_ACC0))
            append_segment(folder, Segment(SIM_REAL1, SIM_CLOCK1, SIM_ACC1))
        outs[name] = tmp_path / f"out-{name}"
        done = report(config_dir, folder, outs[name])
        assert done.returncode == 0, done.stderr
    sim = outs["simulated"]
    assert "clock record" not in (sim / "report.html").read_text(encoding="utf-8")
    for name in ("energy_cabinets.csv", "energy_communes.csv", "availability_classes.csv",
                 "availability_communes.csv", "delays.csv"):  # fmt: skip
        assert rows(sim / name) == rows(outs["real"] / name), name
    ahuy = {r["commune"]: r for r in rows(sim / "energy_communes.csv")}["Ahuy"]
    assert float(ahuy["energy_kwh"]) == pytest.approx(403.0, abs=1e-3)  # as the real-time month's
    delays = {r["kind"]: r for r in rows(sim / "delays.csv") if r["service"] == "lighting_maintenance"}
    assert delays["on_site"]["count"] == "2" and delays["on_site"]["late_open"] == "1"
    assert delays["repaired"]["over"] == "1"


def test_a_folder_without_a_usable_clock_record_is_read_in_real_time(config_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    (data_dir / "clock.json").write_text('{"format": 1, "segments": [{"real_ns": "soon"}]}')
    done = report(config_dir, data_dir, out)
    assert done.returncode == 0, done.stderr
    assert "clock record unusable" in done.stderr and "read as real time" in done.stderr
    assert "Traceback" not in done.stderr
    assert "clock record unusable" in (out / "report.html").read_text(encoding="utf-8")
    ahuy = {r["commune"]: r for r in rows(out / "energy_communes.csv")}["Ahuy"]
    assert float(ahuy["energy_kwh"]) == pytest.approx(403.0, abs=1e-3)  # the real-time folder's figures
