"""Per-device diagnostics: counters in columns, published as one TagDB batch, texts on change only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.modbus.codec import ReadPlan
from drivers.modbus.config import ModbusPoint
from scada import status as st
from scada.config import DIAG_POINTS
from city_scada import load_config
from scada.diagnostics import DEMOTED, NOT_CONNECTED, OFFLINE, ONLINE, DeviceDiagnostics
from scada.tagdb import TagDB

ROOT = Path(__file__).resolve().parents[2]


def make(tmp_path: Path):
    config = load_config(ROOT)  # the shipped configuration: four types, three drivers
    tagdb = TagDB(*config.tag_table())
    devices = list(config.devices[:3])
    return config, tagdb, devices, DeviceDiagnostics(config, devices)


def read(config, tagdb, device, name):
    i = int(config.diag_ids(device)[[p.name for p in DIAG_POINTS].index(name)])
    return tagdb.text.get(i) if name == "last_error" else float(tagdb.value[i])


def test_states_counters_and_publication(tmp_path: Path) -> None:
    config, tagdb, devices, diag = make(tmp_path)
    sub = tagdb.subscribe("test", maxsize=16)
    diag.success(0, 0.0123)
    diag.success(0, 0.004)
    diag.failure(1, "cannot connect to 10.0.0.2:502")
    diag.failure(2, "no answer")
    diag.demote(2, "no answer")
    diag.flush(tagdb)
    a, b, c = devices
    assert read(config, tagdb, a, "state") == ONLINE
    assert read(config, tagdb, a, "successes") == 2
    assert read(config, tagdb, a, "rtt") == 4.0
    assert read(config, tagdb, b, "state") == NOT_CONNECTED  # never answered yet
    assert read(config, tagdb, b, "failures") == 1
    assert read(config, tagdb, b, "last_error") == "cannot connect to 10.0.0.2:502"
    assert read(config, tagdb, c, "state") == DEMOTED and read(config, tagdb, c, "demoted") == 1
    assert (tagdb.status[np.concatenate([config.diag_ids(d) for d in devices])] == st.GOOD).all()
    while not sub.queue.empty():
        sub.get_nowait()
    # An unchanged table publishes nothing; a new failure publishes its three rows only.
    diag.flush(tagdb)
    assert sub.queue.empty()
    diag.failure(0, "no answer")
    diag.flush(tagdb)
    rows = []
    while not sub.queue.empty():
        rows.extend(sub.get_nowait().ids.tolist())
    names = [p.name for p in DIAG_POINTS]
    expected = {int(config.diag_ids(a)[names.index(n)]) for n in ("state", "failures", "last_error")}
    assert set(rows) == expected
    assert read(config, tagdb, a, "state") == OFFLINE  # it had answered before
    assert read(config, tagdb, a, "last_error") == "no answer"
    diag.success(0)
    diag.flush(tagdb)
    assert read(config, tagdb, a, "state") == ONLINE
    assert read(config, tagdb, a, "last_error") == "no answer"  # the last error stays for the record


def test_a_demoted_device_stays_demoted_until_it_answers(tmp_path: Path) -> None:
    config, tagdb, devices, diag = make(tmp_path)
    diag.demote(0, "no answer")
    diag.failure(0, "no answer")
    diag.offline(0, "gone")
    assert diag.state[0] == DEMOTED and diag.demoted[0] == 1
    diag.success(0, 0.001)
    assert diag.state[0] == ONLINE and diag.demoted[0] == 0


def test_read_gap_decides_which_neighbours_share_a_request() -> None:
    points = [ModbusPoint("holding", 0, "uint16"), ModbusPoint("holding", 5, "uint16"),
              ModbusPoint("holding", 20, "uint16")]
    assert [(b.start, b.count) for b in ReadPlan(points, max_gap=8).blocks] == [(0, 6), (20, 1)]
    assert [(b.start, b.count) for b in ReadPlan(points, max_gap=3).blocks] == [(0, 1), (5, 1), (20, 1)]
    assert [(b.start, b.count) for b in ReadPlan(points, max_gap=14).blocks] == [(0, 21)]
