"""Alarm journal faults on real file systems: a full tmpfs, an ext4 image that goes read-only
on an error, and their repair.

The engine keeps evaluating and notifying while the journal cannot write; the rows wait in
memory, in order, and once the disk is back the journal holds every transition exactly once,
in order, the saved states equal memory, and ``storage_failing`` was raised and cleared.
Mounting needs root (``needs_root``, as in ``tests/fs_faults.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import time
from pathlib import Path

import numpy as np

from scada import status as st
from scada.alarms.engine import STORAGE_FAILING
from scada.alarms.states import State
from tests.fs_faults import ext4_image, fill, free_space, fs_error, needs_ext4, needs_root, repair, small_fs

from .test_alarm_engine import Bench

pytestmark = needs_root


def key(e) -> tuple:
    return (int(e.time_ns), e.alarm, e.device, e.event, State(e.state).name, e.user, e.comment)


def row_key(r) -> tuple:
    return (int(r.time_ns), r.alarm, r.device, r.event, r.state, r.user, r.comment)


def toggle_door(bench: Bench, n: int) -> None:
    """One transition of LC-2's door alarm (no delays): ACTIVATE or CLEAR, one second later."""
    bench.clock.advance(1)
    bench.set("LC-2", door_open=n % 2)


def break_journal(bench: Bench, limit: int = 2000) -> int:
    """Make transitions until the journal refuses one (the file system is already failing)."""
    n = 0
    while not bench.engine.journal_backlog:
        n += 1
        assert n < limit, "the journal never refused a write"
        toggle_door(bench, n)
    return n


def assert_journal_equals_memory(bench: Bench) -> None:
    """Every notified event journaled once, the instances' rows in the order of the events,
    and the saved states equal the engine's."""
    rows = bench.journal.query()
    assert collections.Counter(map(row_key, rows)) == collections.Counter(map(key, bench.events))
    # The storage alarm is notified as the failure happens and journaled behind the batch
    # that failed: the order is checked on the alarm instances' rows.
    assert [row_key(r) for r in rows if r.alarm != "storage_failing"] == [key(e) for e in bench.events if e.instance >= 0]
    eng = bench.engine
    saved = bench.journal.load_states()
    assert saved == dict(eng._state_record(i) for i in range(eng.n) if eng._state_record(i)[0] in saved)
    for i in {e.instance for e in bench.events if e.instance >= 0}:
        k, rec = eng._state_record(i)
        assert saved[k] == rec


def storage_alarms(bench: Bench) -> list[str]:
    return [e.event for e in bench.events if e.alarm == STORAGE_FAILING]


def test_disk_full_alarms_keep_running_then_the_journal_catches_up_in_order(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        bench = Bench(tmp_path / "cfg", journal_path=fs / "alarms.sqlite")
        try:
            bench.healthy("LC-1")
            bench.healthy("LC-2")
            fill(fs)
            n = break_journal(bench)
            assert storage_alarms(bench) == ["ACTIVATE"]
            # During the outage: alarms still evaluated and notified, operator actions accepted.
            for k in range(n + 1, n + 6):
                toggle_door(bench, k)
            bench.clock.advance(1)
            ev = bench.set("LC-1", temperature=61)
            assert [(e.alarm, e.event) for e in ev] == [("hot", "ACTIVATE")]
            bench.engine.ack("hot", "LC-1", "operator1", "during the outage")
            bench.engine.shelve("lamps_failed", "LC-1", "operator1", "lamp crew on site", 3600, one_shot=True)
            assert bench.state("hot") == State.ACK_ACTIVE
            assert not bench.engine.flush_journal()  # still full: nothing written, nothing lost
            waiting = bench.engine.journal_backlog
            assert waiting >= 9
            free_space(fs)  # the operator cleans the disk
            assert bench.engine.flush_journal()
            assert bench.engine.journal_backlog == 0
            assert storage_alarms(bench) == ["ACTIVATE", "CLEAR"]
            # Later transitions go straight to the journal again.
            toggle_door(bench, n + 6)
            assert_journal_equals_memory(bench)
            assert [r.event for r in bench.journal.query(alarm=STORAGE_FAILING)] == ["ACTIVATE", "CLEAR"]
        finally:
            bench.journal.close()


@needs_ext4
def test_read_only_file_system_then_repaired_and_mounted_again(tmp_path: Path) -> None:
    with ext4_image(tmp_path / "disk") as (image, mnt):
        bench = Bench(tmp_path / "cfg", journal_path=mnt / "alarms.sqlite")
        try:
            bench.healthy("LC-1")
            bench.healthy("LC-2")
            fs_error(mnt)
            n = break_journal(bench, limit=5)  # read-only: the next write fails
            assert storage_alarms(bench) == ["ACTIVATE"]
            bench.clock.advance(1)
            bench.set("LC-1", temperature=61)
            bench.engine.ack("hot", "LC-1", "operator1", "journal read-only")
            # The operator takes the disk out for repair: a retry meanwhile must not create an
            # empty journal on the bare mount point, nor lose the waiting rows.
            subprocess.run(["umount", "-l", str(mnt)], check=True)
            assert not bench.engine.flush_journal()
            assert not (mnt / "alarms.sqlite").exists()
            toggle_door(bench, n + 1)
            repair(image, mnt)
            assert bench.engine.flush_journal()
            assert storage_alarms(bench) == ["ACTIVATE", "CLEAR"]
            assert_journal_equals_memory(bench)
        finally:
            bench.journal.close()


async def test_the_engine_task_survives_the_outage_and_clears_the_alarm_itself(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        bench = Bench(tmp_path / "cfg", journal_path=fs / "alarms.sqlite")
        bench.healthy("LC-1")
        bench.healthy("LC-2")
        task = asyncio.create_task(bench.engine.run(period=0.05), name="alarms")

        async def transition(n: int) -> None:
            seen = len(bench.events)
            bench.clock.advance(1)
            bench.tagdb.update(np.array([bench.tag("LC-2", "door_open")]), np.array([float(n % 2)]), st.GOOD,
                               bench.clock())
            deadline = time.monotonic() + 30
            while not any(e.alarm == "door_lc2" for e in bench.events[seen:]):
                assert not task.done(), task
                assert time.monotonic() < deadline, "the engine did not evaluate the change"
                await asyncio.sleep(0.02)

        try:
            fill(fs)
            n = 0
            while STORAGE_FAILING not in {e.alarm for e in bench.events}:
                n += 1
                assert n < 2000, "the journal never refused a write"
                await transition(n)
            for k in range(n + 1, n + 4):  # notified while the journal cannot write
                await transition(k)
            assert not task.done()
            free_space(fs)
            deadline = time.monotonic() + 120  # the retry's backoff is at most 30 s
            while storage_alarms(bench) != ["ACTIVATE", "CLEAR"]:
                assert not task.done(), task
                assert time.monotonic() < deadline, "storage_failing was not cleared after the disk was freed"
                await asyncio.sleep(0.05)
            assert bench.engine.journal_backlog == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            assert_journal_equals_memory(bench)
        finally:
            bench.journal.close()


def test_a_long_outage_keeps_the_newest_rows_and_every_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("scada.alarms.backlog.BACKLOG_ROWS", 5)
    with small_fs(tmp_path / "fs", 1024) as fs:
        bench = Bench(tmp_path / "cfg", journal_path=fs / "alarms.sqlite")
        try:
            bench.healthy("LC-1")
            bench.healthy("LC-2")
            fill(fs)
            n = break_journal(bench)
            before = len(bench.journal.query())
            for k in range(n + 1, n + 21):
                toggle_door(bench, k)
            assert bench.engine.journal_backlog == 5
            free_space(fs)
            assert bench.engine.flush_journal()
            rows = bench.journal.query()
            dropped = bench.engine.backlog_dropped
            assert dropped > 0
            # The oldest rows of the outage were dropped (and counted); the newest are there, in order.
            notified = [key(e) for e in bench.events]
            written = [row_key(r) for r in rows[before:]]
            assert len(written) == 5 + 1  # the backlog, then storage_failing's CLEAR
            assert written[:5] == [k for k in notified if k[1] != STORAGE_FAILING][-5:]
            eng = bench.engine
            i = eng.instance("door_lc2", "LC-2")
            assert bench.journal.load_states()[eng._state_record(i)[0]] == eng._state_record(i)[1]
        finally:
            bench.journal.close()


def test_a_crash_during_the_outage_loses_only_the_rows_of_the_outage(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        bench = Bench(tmp_path / "cfg", journal_path=fs / "alarms.sqlite")
        bench.healthy("LC-1")
        bench.healthy("LC-2")
        bench.set("LC-1", temperature=61)
        rows_before = [row_key(r) for r in bench.journal.query()]
        states_before = bench.journal.load_states()
        fill(fs)
        break_journal(bench)
        bench.engine.ack("hot", "LC-1", "operator1", "lost with the crash")
        bench.journal.close()  # the process dies: the backlog in memory is gone
        free_space(fs)
        after = Bench(tmp_path / "cfg2", journal_path=fs / "alarms.sqlite")
        try:
            assert [row_key(r) for r in after.journal.query()] == rows_before  # a consistent prefix
            assert after.journal.load_states() == states_before
            after.engine.restore()
            assert after.state("hot") == State.UNACK_ACTIVE  # as saved before the outage
        finally:
            after.journal.close()
