"""What a restart takes back beyond the ISA-18.2 state: the one-shot shelve flag and each
instance's last event (time, number: OPC UA EventIds are derived from them); and a journal of
schema version 1 opened by this server (migrated, nothing lost)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scada.alarms import journal as journal_mod
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal, JournalRow
from scada.alarms.states import State
from scada.opcua.conditions import condition_event_id

from .test_alarm_engine import Bench


def restarted(bench: Bench) -> AlarmEngine:
    """A new engine on the same journal, as after a crash (nothing saved at shutdown)."""
    engine = AlarmEngine(bench.config, bench.tagdb, bench.journal, bench.clock)
    engine.restore()
    return engine


def test_one_shot_shelve_ends_when_the_condition_clears_and_survives_a_restart(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "cfg")
    try:
        bench.healthy("LC-1")
        bench.set("LC-1", temperature=61)
        bench.engine.shelve("hot", "LC-1", "op", "sensor being replaced", 3600, one_shot=True)
        bench.engine.shelve("lamps_failed", "LC-1", "op", "known", 3600)  # timed: stays after a clear
        engine = restarted(bench)
        i, j = engine.instance("hot", "LC-1"), engine.instance("lamps_failed", "LC-1")
        assert engine.state[i] == State.SHELVED and engine.one_shot[i]
        assert engine.state[j] == State.SHELVED and not engine.one_shot[j]
        bench.engine = engine
        events: list = []
        engine.subscribers.append(events.extend)
        bench.set("LC-1", temperature=50)
        bench.clock.advance(3.5)  # hot's off-delay
        engine.tick()
        assert [(e.alarm, e.event, e.state) for e in events] == [
            ("hot", "CLEAR", State.SHELVED), ("hot", "UNSHELVE", State.NORMAL)]
        assert not engine.one_shot[i]
        assert bench.journal.load_states()[("hot", "LC-1")].one_shot is False
        assert [r.event for r in bench.journal.query(alarm="hot")][-2:] == ["CLEAR", "UNSHELVE"]
    finally:
        bench.journal.close()


def test_each_instance_s_last_event_number_and_time_are_restored(tmp_path: Path) -> None:
    bench = Bench(tmp_path / "cfg")
    try:
        bench.healthy("LC-1")
        events: list = []
        bench.engine.subscribers.append(events.extend)
        bench.set("LC-1", temperature=61)
        bench.clock.advance(1)
        bench.engine.ack("hot", "LC-1", "op")
        bench.clock.advance(1)
        bench.engine.note("hot", "LC-1", "op", "crew on the way")
        seqs = [e.seq for e in events]
        assert seqs == [1, 2, 3]  # numbered per instance, in order
        last = events[-1]
        engine = restarted(bench)
        i = engine.instance("hot", "LC-1")
        assert (int(engine.last_event_ns[i]), int(engine.event_seq[i])) == (last.time_ns, 3)
        # The EventId an HMI got with the last event is the one a restarted server derives.
        assert (condition_event_id("hot", "LC-1", int(engine.last_event_ns[i]), int(engine.event_seq[i]))
                == condition_event_id(last.alarm, last.device, last.time_ns, last.seq))
        bench.engine = engine
        engine.subscribers.append(events.extend)
        bench.clock.advance(1)
        engine.note("hot", "LC-1", "op", "after the restart")
        assert events[-1].seq == 4  # the numbering goes on: no EventId is given twice
    finally:
        bench.journal.close()


def test_a_schema_version_1_journal_is_migrated_and_keeps_its_rows_and_states(tmp_path: Path) -> None:
    path = tmp_path / "alarms.sqlite"
    v1 = journal_mod._SCHEMA
    for col in ("    one_shot         INTEGER NOT NULL DEFAULT 0,\n", "    last_event_ns    INTEGER,\n",
                "    event_seq        INTEGER NOT NULL DEFAULT 0,\n"):
        assert col in v1
        v1 = v1.replace(col, "")
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(v1)
    db.execute(f"PRAGMA application_id={journal_mod.APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO alarm_state VALUES ('hot', 'LC-1', 'SHELVED', 1, 1, 5, 99, 'op', 'why', '', 61.0)")
    db.execute("INSERT INTO journal VALUES (1, 5, 'hot', 'LC-1', 'Talant', 61.0, 'high', 750, 'ACTIVATE', "
               "'UNACK_ACTIVE', '', '', 'lighting_maintenance', 'hot')")
    db.close()
    with Journal(path) as j:
        rec = j.load_states()[("hot", "LC-1")]
        assert (rec.state, rec.shelved_until_ns, rec.shelve_reason) == (State.SHELVED, 99, "why")
        assert (rec.one_shot, rec.last_event_ns, rec.event_seq) == (False, None, 0)
        assert [r.event for r in j.query()] == ["ACTIVATE"]
        j.record([JournalRow(6, "hot", "LC-1", "Talant", None, "high", 750, "NOTE", "SHELVED", "op", "x")])
        assert j.count() == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == journal_mod.SCHEMA_VERSION == 2
    db.close()
