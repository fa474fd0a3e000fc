"""`scada history`: arguments, CSV output and errors, against a real store in tmp_path."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import numpy as np
import pytest

from scada import status as st
from city_scada import main
from scada.historian.compress import StoredBatch
from scada.historian.store import BAD_NO_DATA, HOUR, MINUTE, SECOND, UNCERTAIN_DATA_SUB_NORMAL, HistoryStore
from scada.history_cli import HistoryCliError, parse_interval, parse_time, status_name

T0 = 1_795_000_000 * SECOND // HOUR * HOUR
ISO0 = datetime.fromtimestamp(T0 // SECOND, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
NAMES = ["Dijon/lighting/LC-1/power", "Dijon/lighting/LC-2/power", "Dijon/lighting/LC-1/door_open",
         "Dijon/lighting/LC-1/Diagnostics/last_error"]


def iso(ns: int) -> str:
    s, r = divmod(ns, SECOND)
    return datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{r // 1000:06d}Z"


@pytest.fixture
def data(tmp_path):
    """A store with two power tags (one with a Bad row), a discrete tag and a text tag; part merged,
    part pending (staging), as a running server leaves it."""
    store = HistoryStore(tmp_path / "history.sqlite", NAMES, merge_rows=10**9, merge_seconds=1e9)
    t = T0 + np.arange(0, 60) * MINUTE + 7 * SECOND
    v = np.arange(60, dtype=np.float64)
    s = np.full(60, st.GOOD, np.uint32)
    s[5] = st.BAD_COMMUNICATION_ERROR
    store.write(StoredBatch(np.zeros(30, np.int64), v[:30], s[:30], t[:30]))
    store.merge()
    store.write(StoredBatch(np.zeros(30, np.int64), v[30:], s[30:], t[30:]))
    store.write(StoredBatch(np.ones(2, np.int64), np.array([1.5, 2.5]), np.zeros(2, np.uint32),
                            np.array([T0, T0 + 30 * MINUTE])))
    store.write(StoredBatch(np.full(2, 2, np.int64), np.array([0.0, 1.0]), np.zeros(2, np.uint32),
                            np.array([T0, T0 + 20 * MINUTE])))
    store.write(StoredBatch(np.array([3], np.int64), np.array([np.nan]), np.zeros(1, np.uint32), np.array([T0 + SECOND]),
                            texts=("timeout, 'reading' 3 registers",)))
    store.close()
    return tmp_path, t, v, s


def run(capsys, *args) -> tuple[int, list[dict], str]:
    rc = main(["history", *args])
    out, err = capsys.readouterr()
    return rc, list(csv.DictReader(io.StringIO(out))), err


# -- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ns", [("1h", HOUR), ("15min", 15 * MINUTE), ("30s", 30 * SECOND), ("500ms", SECOND // 2),
                                     ("1d", 24 * HOUR), ("2w", 14 * 24 * HOUR), ("90", 90 * SECOND), ("1.5h", 90 * MINUTE),
                                     (" 10 m ", 10 * MINUTE), ("1H", HOUR)])
def test_intervals(text, ns):
    assert parse_interval(text) == ns


@pytest.mark.parametrize("text", ["", "h", "1y", "-1h", "0", "0s", "1h30", "abc", "1e3"])
def test_bad_intervals(text):
    with pytest.raises(HistoryCliError, match="interval"):
        parse_interval(text)


def test_times():
    assert parse_time("2026-11-19", "--from") == int(datetime(2026, 11, 19, tzinfo=timezone.utc).timestamp()) * SECOND
    assert parse_time(ISO0, "--from") == T0
    assert parse_time(ISO0 + "Z", "--from") == T0
    assert parse_time(ISO0 + "+01:00", "--from") == T0 - HOUR
    assert parse_time(ISO0 + ".000250", "--from") == T0 + 250_000
    with pytest.raises(HistoryCliError, match="--to: not an ISO 8601 time"):
        parse_time("yesterday", "--to")


def test_status_names():
    assert status_name(st.GOOD) == "Good"
    assert status_name(st.BAD_COMMUNICATION_ERROR) == "Bad_CommunicationError"
    assert status_name(UNCERTAIN_DATA_SUB_NORMAL) == "Uncertain_DataSubNormal"
    assert status_name(BAD_NO_DATA) == "Bad_NoData"
    assert status_name(0x80AB0000) == "Bad_InvalidArgument"
    assert status_name(0x80AB0402) == "Bad_InvalidArgument"  # info bits ignored for the name
    assert status_name(0x8FFF0000) == "0x8FFF0000"


# -- CSV -------------------------------------------------------------------------------------------

def test_raw_values_of_one_tag(data, capsys):
    folder, t, v, s = data
    rc, rows, err = run(capsys, NAMES[0], "--data", str(folder), "--from", ISO0, "--to", iso(T0 + HOUR))
    assert rc == 0, err
    assert [r["time"] for r in rows] == [iso(x) for x in t.tolist()]
    assert {r["tag"] for r in rows} == {NAMES[0]}
    assert [float(r["value"]) for r in rows] == v.tolist()
    assert rows[5]["status"] == "Bad_CommunicationError"
    assert {r["status"] for r in rows[:5]} == {"Good"}
    assert "60 rows of 1 tag(s)" in err


def test_raw_values_in_pages_and_the_end_excluded(data, capsys, monkeypatch):
    folder, t, _, _ = data
    monkeypatch.setattr("scada.history_cli.PAGE", 7)
    rc, rows, _ = run(capsys, NAMES[0], "--data", str(folder), "--from", iso(int(t[3])), "--to", iso(int(t[40])))
    assert rc == 0
    assert [r["time"] for r in rows] == [iso(x) for x in t[3:40].tolist()]


def test_a_pattern_selects_tags_one_after_the_other(data, capsys):
    folder, _, _, _ = data
    rc, rows, err = run(capsys, "Dijon/lighting/*/power", "--data", str(folder), "--from", ISO0, "--to", iso(T0 + HOUR))
    assert rc == 0, err
    tags = [r["tag"] for r in rows]
    assert tags == [NAMES[0]] * 60 + [NAMES[1]] * 2  # sorted by name, each in time order
    assert [r["value"] for r in rows[60:]] == ["1.5", "2.5"]


def test_text_points_and_csv_quoting(data, capsys, tmp_path):
    folder, _, _, _ = data
    out = tmp_path / "out.csv"
    rc, _, err = run(capsys, "*/last_error", "--data", str(folder), "--from", ISO0, "--to", iso(T0 + HOUR),
                     "--csv", str(out))
    assert rc == 0 and f"1 rows of 1 tag(s) written to {out}" in err
    rows = list(csv.DictReader(out.open(newline="")))
    assert rows == [{"time": iso(T0 + SECOND), "tag": NAMES[3], "value": "timeout, 'reading' 3 registers",
                     "status": "Good"}]


def test_aggregates_per_interval(data, capsys):
    folder, t, v, s = data
    args = [NAMES[0], "--data", str(folder), "--from", ISO0, "--to", iso(T0 + HOUR)]
    rc, rows, _ = run(capsys, *args, "--aggregate", "average", "--interval", "10min")
    assert rc == 0
    assert [r["time"] for r in rows] == [iso(T0 + k * 10 * MINUTE) for k in range(6)]
    good = s == st.GOOD
    expected = [v[good & (t >= T0 + k * 10 * MINUTE) & (t < T0 + (k + 1) * 10 * MINUTE)].mean() for k in range(6)]
    assert [float(r["value"]) for r in rows] == pytest.approx(expected)
    assert [r["status"] for r in rows] == ["Uncertain_DataSubNormal"] + ["Good"] * 5  # the Bad row was left out
    rc, rows, _ = run(capsys, *args, "--aggregate", "COUNT", "--interval", "0.5h")
    assert [r["value"] for r in rows] == ["29", "30"]
    rc, rows, _ = run(capsys, *args, "--aggregate", "maximum")  # no interval: the whole range
    assert [(r["time"], r["value"]) for r in rows] == [(iso(T0), "59.0")]


def test_interpolative_stepped_for_discrete_points(data, capsys):
    folder, _, _, _ = data
    args = [NAMES[2], "--data", str(folder), "--from", ISO0, "--to", iso(T0 + 30 * MINUTE),
            "--aggregate", "interpolative", "--interval", "10m"]
    _, rows, _ = run(capsys, *args)
    assert [r["value"] for r in rows] == ["0.0", "0.5", "1.0"]
    _, rows, _ = run(capsys, *args, "--stepped")
    assert [r["value"] for r in rows] == ["0.0", "0.0", "1.0"]


def test_empty_interval_has_no_value(data, capsys):
    folder, _, _, _ = data
    rc, rows, _ = run(capsys, NAMES[1], "--data", str(folder), "--from", ISO0, "--to", iso(T0 + HOUR),
                      "--aggregate", "average", "--interval", "20min")
    assert [(r["value"], r["status"]) for r in rows] == [("1.5", "Good"), ("2.5", "Good"), ("", "Bad_NoData")]


def test_reads_while_the_server_writes(tmp_path, capsys):
    """The server's store open for writing, rows pending (not merged): the command line sees them."""
    store = HistoryStore(tmp_path / "history.sqlite", NAMES, merge_rows=10**9, merge_seconds=1e9)
    try:
        store.write(StoredBatch(np.zeros(1, np.int64), np.array([4.25]), np.zeros(1, np.uint32), np.array([T0])))
        rc, rows, err = run(capsys, NAMES[0], "--data", str(tmp_path), "--from", ISO0, "--to", iso(T0 + HOUR))
        assert rc == 0, err
        assert [r["value"] for r in rows] == ["4.25"]
    finally:
        store.close()


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["nothing/*"], "no tag matching 'nothing/*'"),
    (["Dijon/lighting/LC-9/power"], "(a pattern: 'Dijon/lighting/*/power')"),
    ([NAMES[0], "--aggregate", "average", "--interval", "often"], "not an interval: 'often'"),
    ([NAMES[0], "--interval", "1h"], "--interval needs --aggregate"),
    ([NAMES[0], "--from", "2026-13-01"], "--from: not an ISO 8601 time: '2026-13-01'"),
    ([NAMES[0], "--from", "2026-11-20", "--to", "2026-11-19"], "--from must be before --to"),
])
def test_errors_are_clear(data, capsys, args, message):
    folder, _, _, _ = data
    rc, rows, err = run(capsys, *args, "--data", str(folder))
    assert rc == 1 and rows == []
    assert message in err


def test_no_store(tmp_path, capsys):
    rc, _, err = run(capsys, "x", "--data", str(tmp_path / "var"))
    assert rc == 1
    assert f"no history store at {tmp_path / 'var' / 'history.sqlite'}" in err


def test_not_a_store(tmp_path, capsys):
    (tmp_path / "history.sqlite").write_bytes(b"this is not SQLite" * 100)
    rc, _, err = run(capsys, "x", "--data", str(tmp_path))
    assert rc == 1 and "history store" in err and "history.sqlite" in err


def test_unknown_aggregate_is_refused_by_the_parser(data, capsys):
    folder, _, _, _ = data
    with pytest.raises(SystemExit) as exc:
        main(["history", NAMES[0], "--data", str(folder), "--aggregate", "median"])
    assert exc.value.code == 2
    assert "invalid choice: 'median'" in capsys.readouterr().err


def test_unwritable_csv(data, capsys, tmp_path):
    folder, _, _, _ = data
    rc, _, err = run(capsys, NAMES[0], "--data", str(folder), "--csv", str(tmp_path / "no" / "such" / "dir.csv"))
    assert rc == 1 and "cannot write" in err
