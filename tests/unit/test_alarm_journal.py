"""The alarm journal on real SQLite files: record, query, CSV export, restart, SIGKILL, bad paths."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from scada.alarms.journal import (
    COLUMNS,
    Journal,
    JournalError,
    JournalRow,
    StateRecord,
    iso_utc,
)
from scada.alarms.states import State
from tests.sqlite_files import run_sql

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z
NS = 1_000_000_000


def make_rows(n: int = 240) -> list[JournalRow]:
    communes = ("Dijon", "Chenove", "Quetigny")
    devices = ("LC-DIJ-001", "LC-CHE-002", "J-DIJ-004", "B-QUE-001")
    priorities = (("low", 250), ("high", 750), ("critical", 900))
    events = (("ACTIVATE", "UNACK_ACTIVE"), ("ACK", "ACK_ACTIVE"), ("CLEAR", "NORMAL"), ("NOTE", "NORMAL"))
    services = ("lighting_maintenance", "traffic", "")
    rows = []
    for i in range(n):
        p, sev = priorities[i % 3]
        ev, state = events[i % 4]
        rows.append(JournalRow(
            time_ns=T0 + i * 7 * NS + i, alarm=("mains_loss", "door_open", "conflict_fault")[i % 3 - 1],
            device=devices[i % 4], commune=communes[(i // 4) % 3], value=None if i % 5 == 0 else i * 0.5,
            priority=p, severity=sev, event=ev, state=state, user="" if ev in ("ACTIVATE", "CLEAR") else "alice",
            comment='called "crew 3", ok' if ev == "NOTE" else "", service=services[i % 3],
            message=f"cabinet {devices[i % 4]}: mains voltage {i} V"))
    return rows


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "alarms.db")
    yield j
    j.close()


def test_record_and_query_everything_in_time_order(journal):
    rows = make_rows()
    shuffled = rows[1::2] + rows[::2]  # recorded out of order: query sorts by time
    journal.record(shuffled[:100])
    journal.record(shuffled[100:])
    assert journal.count() == len(rows)
    assert journal.query() == rows


@pytest.mark.parametrize("name", ["commune", "device", "priority", "state", "service", "alarm", "event", "user"])
def test_query_by_each_filter(journal, name):
    rows = make_rows()
    journal.record(rows)
    values = sorted({getattr(r, name) for r in rows})
    assert len(values) >= 2
    for v in values:
        got = journal.query(**{name: v})
        assert got == [r for r in rows if getattr(r, name) == v]
    some = values[:2]
    assert journal.query(**{name: some}) == [r for r in rows if getattr(r, name) in some]
    assert journal.query(**{name: []}) == []


def test_query_time_range_is_half_open_and_combines_with_filters(journal):
    rows = make_rows()
    journal.record(rows)
    start, end = rows[10].time_ns, rows[50].time_ns
    assert journal.query(start, end) == rows[10:50]
    assert journal.query(start_ns=start) == rows[10:]
    assert journal.query(end_ns=end) == rows[:50]
    got = journal.query(start, end, commune="Dijon", priority=["high", "critical"])
    assert got == [r for r in rows[10:50] if r.commune == "Dijon" and r.priority in ("high", "critical")]
    assert journal.query(limit=5) == rows[:5]


def test_columns_returns_arrays(journal):
    rows = make_rows(20)
    journal.record(rows)
    cols = journal.columns(names=("time_ns", "value", "device"), device="LC-DIJ-001")
    want = [r for r in rows if r.device == "LC-DIJ-001"]
    assert cols["time_ns"].dtype == np.int64 and list(cols["time_ns"]) == [r.time_ns for r in want]
    assert np.array_equal(cols["value"], np.array([np.nan if r.value is None else r.value for r in want]),
                          equal_nan=True)
    assert list(cols["device"]) == [r.device for r in want]
    empty = journal.columns(0, 1)
    assert set(empty) == set(COLUMNS) and all(len(a) == 0 for a in empty.values())
    with pytest.raises(ValueError, match="unknown journal column"):
        journal.columns(names=("nope",))


def test_export_csv_parses_back(journal):
    rows = make_rows(60)
    rows.append(JournalRow(T0 + 10**12, "door_open", "LC-DIJ-001", "Dijon", 1.0, "high", 750, "NOTE",
                           "ACK_ACTIVE", "bob", "line one\nline two, with \"quotes\"", "lighting_maintenance",
                           "Dijon LC-DIJ-001: cabinet door open"))
    journal.record(rows)
    buf = io.StringIO()
    n = journal.export_csv(buf, rows[5].time_ns, None, commune=["Dijon", "Chenove"])
    want = [r for r in rows[5:] if r.commune in ("Dijon", "Chenove")]
    assert n == len(want)
    buf.seek(0)
    reader = csv.DictReader(buf)
    assert reader.fieldnames == ["time", *COLUMNS]
    got = list(reader)
    assert len(got) == len(want)
    for line, r in zip(got, want):
        t = datetime.fromisoformat(line["time"])
        assert t.utcoffset().total_seconds() == 0
        assert line["time"].endswith("Z")
        assert round(t.timestamp() * 1e6) == r.time_ns // 1000
        assert int(line["time_ns"]) == r.time_ns
        assert line["value"] == ("" if r.value is None else repr(r.value))
        assert (line["alarm"], line["device"], line["commune"], line["event"], line["state"], line["user"],
                line["comment"], line["service"], line["message"]) == (
            r.alarm, r.device, r.commune, r.event, r.state, r.user, r.comment, r.service, r.message)
        assert int(line["severity"]) == r.severity
    with pytest.raises(TypeError, match="unknown journal filter"):
        journal.export_csv(io.StringIO(), colour="red")


def test_iso_utc():
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_utc(T0 + 123_456_789) == "2026-11-28T10:00:00.123456Z"


def test_states_restart_and_upsert(tmp_path):
    path = tmp_path / "alarms.db"
    rows = make_rows(30)
    states = {
        ("mains_loss", "LC-DIJ-001"): StateRecord(State.UNACK_ACTIVE, True, False, T0, last_value=171.5),
        ("door_open", "LC-CHE-002"): StateRecord(State.SHELVED, True, True, T0 - NS, T0 + 3600 * NS, "alice",
                                                 "chattering, crew on site", "lighting_maintenance", 1.0),
        ("conflict_fault", "J-DIJ-004"): StateRecord(State.LATCHED, False, True, T0 - 5 * NS, assigned_to="traffic"),
    }
    with Journal(path) as j:
        j.record(rows, states=states)
        # the same instance again: replaced, not duplicated
        j.record([rows[0]], states=[(("mains_loss", "LC-DIJ-001"),
                                     StateRecord(State.ACK_ACTIVE, True, True, T0, last_value=170.0))])
        j.save_states({("lamps_failed", "LC-DIJ-001"): StateRecord(State.NORMAL)})
    with Journal(path) as j:
        assert j.query() == sorted(rows + [rows[0]], key=lambda r: r.time_ns)
        loaded = j.load_states()
        want = dict(states)
        want[("mains_loss", "LC-DIJ-001")] = StateRecord(State.ACK_ACTIVE, True, True, T0, last_value=170.0)
        want[("lamps_failed", "LC-DIJ-001")] = StateRecord(State.NORMAL)
        assert loaded == want
        assert all(isinstance(s.state, State) for s in loaded.values())
        j.delete_states([("lamps_failed", "LC-DIJ-001")])
        assert ("lamps_failed", "LC-DIJ-001") not in j.load_states()


def test_a_failed_batch_stores_nothing(journal):
    journal.record(make_rows(10), states={("a", "d"): StateRecord(State.NORMAL)})
    bad_state = StateRecord(State.UNACK_ACTIVE, True, False, T0, shelve_user=object())  # not bindable
    with pytest.raises(JournalError, match="nothing of the batch was stored"):
        journal.record(make_rows(20)[10:], states={("a", "d"): bad_state})
    assert journal.count() == 10
    assert journal.load_states() == {("a", "d"): StateRecord(State.NORMAL)}
    journal.record(make_rows(20)[10:])  # the journal is still usable
    assert journal.count() == 20


def test_a_state_that_is_not_a_state_is_refused_before_writing(journal):
    with pytest.raises(ValueError, match="alarm state of a@d: not a State"):
        journal.record(make_rows(5), states={("a", "d"): StateRecord(42)})
    assert journal.count() == 0 and journal.load_states() == {}
    journal.record([], states={("a", "d"): StateRecord(np.uint8(State.LATCHED))})
    assert journal.load_states()[("a", "d")].state is State.LATCHED


def test_row_validation_and_numpy_scalars(journal):
    with pytest.raises(TypeError):
        JournalRow(1.5, "a", "d", "c", None, "low", 250, "ACTIVATE", "UNACK_ACTIVE")
    with pytest.raises(ValueError, match="event and state"):
        JournalRow(1, "a", "d", "c", None, "low", 250, "", "UNACK_ACTIVE")
    r = JournalRow(np.int64(T0), "a", "d", "c", np.float64(2.5), "low", np.int32(250), "ACTIVATE", "UNACK_ACTIVE")
    journal.record([r], states={("a", "d"): StateRecord(State.UNACK_ACTIVE, np.True_, np.False_, np.int64(T0),
                                                         last_value=np.float32(2.5))})
    (back,) = journal.query()
    assert back == JournalRow(T0, "a", "d", "c", 2.5, "low", 250, "ACTIVATE", "UNACK_ACTIVE")
    assert journal.load_states()[("a", "d")] == StateRecord(State.UNACK_ACTIVE, True, False, T0, last_value=2.5)


def test_unknown_state_in_file_is_an_error(tmp_path):
    path = tmp_path / "alarms.db"
    Journal(path).close()
    run_sql(path, "INSERT INTO alarm_state (alarm, device, state, active, acked, shelve_user, shelve_reason, "
                  "assigned_to) VALUES ('a', 'd', 'ON_FIRE', 1, 0, '', '', '')")
    with Journal(path) as j, pytest.raises(JournalError, match="unknown alarm state 'ON_FIRE' for a@d"):
        j.load_states()


def test_missing_folder(tmp_path):
    path = tmp_path / "no-such-dir" / "alarms.db"
    with pytest.raises(JournalError, match="does not exist") as info:
        Journal(path)
    assert info.value.path == str(path)
    assert not path.parent.exists()


def test_path_is_a_folder(tmp_path):
    with pytest.raises(JournalError, match="is a folder") as info:
        Journal(tmp_path)
    assert info.value.path == str(tmp_path)


def test_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "alarms.db"
    path.write_bytes(b"this is a CSV export, not a database\n" * 200)
    with pytest.raises(JournalError, match="not a usable SQLite journal") as info:
        Journal(path)
    assert str(path) in str(info.value)
    assert path.read_bytes().startswith(b"this is a CSV export")  # left untouched


def test_sqlite_file_of_another_application(tmp_path):
    path = tmp_path / "historian.db"
    run_sql(path, "CREATE TABLE samples (t INTEGER, v REAL)")
    with pytest.raises(JournalError, match="another application"):
        Journal(path)


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "alarms.db"
    Journal(path).close()
    run_sql(path, "PRAGMA user_version=99")
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(path)


def test_synchronous_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        Journal(tmp_path / "a.db", synchronous="OFF")
    Journal(tmp_path / "a.db", synchronous="full").close()


WRITER = textwrap.dedent("""
    import sys
    from scada.alarms.journal import Journal, JournalRow, StateRecord
    from scada.alarms.states import State
    j = Journal(sys.argv[1])
    for i in range(10**9):
        rows = [JournalRow(1_000 + i * 100 + k, "mains_loss", f"LC-{k:03d}", "Dijon", float(i), "critical", 900,
                           "ACTIVATE", "UNACK_ACTIVE", message=f"batch {i}") for k in range(50)]
        j.record(rows, states={("batch", "counter"): StateRecord(State.UNACK_ACTIVE, True, False, i,
                                                                 last_value=float(i))})
        print(i, flush=True)
""")


def test_sigkill_of_the_writer_loses_no_committed_batch(tmp_path):
    path = tmp_path / "alarms.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        last = -1
        for line in proc.stdout:
            last = int(line)
            if last >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: it keeps recording until killed
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert last >= 300 and proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Journal(path) as j:
        n = j.count()
        assert n >= (last + 1) * 50  # everything it reported as recorded
        assert n % 50 == 0  # whole batches only
        batches = j.columns(names=("value",))["value"]
        state = j.load_states()[("batch", "counter")]
        # the journal and the states table were written in the same transactions
        assert state.last_value == batches.max() == n // 50 - 1
        assert state.since_ns == n // 50 - 1
        counts = np.unique(batches, return_counts=True)[1]
        assert (counts == 50).all()


def test_journal_is_usable_from_other_threads(journal):
    rows = make_rows(40)
    ts = [threading.Thread(target=journal.record, args=(rows[i:i + 10],)) for i in range(0, 40, 10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert journal.query() == rows


def test_last_rows_per_instance(journal):
    rows = make_rows(120)
    journal.record(rows)
    end = rows[100].time_ns
    got = journal.last_rows(end)
    want = {}
    for r in rows[:100]:
        want[(r.alarm, r.device)] = r  # rows are in time order: the last one wins
    assert got == [want[k] for k in sorted(want)]
    got = journal.last_rows(end, event=["ACTIVATE", "CLEAR"])
    want = {}
    for r in rows[:100]:
        if r.event in ("ACTIVATE", "CLEAR"):
            want[(r.alarm, r.device)] = r
    assert got == [want[k] for k in sorted(want)]
    assert journal.last_rows(rows[0].time_ns) == []
