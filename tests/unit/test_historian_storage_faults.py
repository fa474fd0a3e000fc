"""The historian on a failing disk: a real, small tmpfs that fills up (tests/fs_faults.py).

The history store and the InfluxDB spool share the server's data folder. While the disk is full,
the historian task keeps running, keeps what it cannot write in memory, raises
``storage_failing`` (per source) and, once the disk has room again, writes everything, once and
in order, and clears the alarm.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from scada import status as st
from city_scada import load_config
from scada.historian.service import Historian, InfluxSettings
from scada.historian.spool import Spool
from scada.historian.store import HistoryError, HistoryStore
from scada.tagdb import TagDB
from tests.fs_faults import ext4_image, fill, free_space, fs_error, needs_ext4, needs_root, repair, small_fs

ROOT = Path(__file__).resolve().parents[2]
S = 10**9
DEADLINE = 120.0  # s: generous, a loaded machine is slow; never a timing target

pytestmark = needs_root


class Feeder:
    """Alternating values for every lighting door (a discrete point: each change is stored),
    one step per call, remembered to compare with what was stored."""

    def __init__(self, tagdb: TagDB) -> None:
        self.tagdb = tagdb
        self.names = [n for n in tagdb.names if n.endswith("/door_open")]
        self.ids = np.array([tagdb.id_of(n) for n in self.names])
        self.t0 = time.time_ns() - 3600 * S  # in the past: heartbeats (at "now") fall outside
        self.k = 0
        self.times: list[int] = []

    def step(self) -> None:
        self.k += 1
        t = self.t0 + self.k * S
        self.tagdb.update(self.ids, np.full(len(self.ids), float(self.k % 2)), st.GOOD, t)
        self.times.append(t)

    def expected_values(self) -> list[float]:
        return [float(k % 2) for k in range(1, self.k + 1)]

    def end(self) -> int:
        return self.t0 + (self.k + 1) * S


async def feed_until(feeder: Feeder, cond, what: str, task: asyncio.Task) -> None:
    """Feed a step every 50 ms until ``cond()`` holds; fail on the deadline or if the task died."""
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert not task.done(), f"the historian task ended while waiting for {what}: {task}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        feeder.step()
        await asyncio.sleep(0.05)


async def wait_for(cond, what: str, task: asyncio.Task) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert not task.done(), f"the historian task ended while waiting for {what}: {task}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def start(h: Historian) -> asyncio.Task:
    """The historian's task, once it receives changes (a change before that is not its)."""
    task = asyncio.create_task(h.run(), name="historian")
    await wait_for(lambda: any(c.name == "historian" for c in h.tagdb.consumers), "the subscription", task)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def check_store(folder: Path, feeder: Feeder) -> None:
    """Every value in the store once, in time order: raw values, and rollup counts (a value
    written twice would be counted twice there)."""
    with HistoryStore(folder / "history.sqlite", readonly=True) as store:
        expected = feeder.expected_values()
        for name in feeder.names:
            raw = store.read_raw(name, feeder.t0, feeder.end())
            assert raw.times.tolist() == feeder.times, f"{name}: times differ"
            assert raw.values.tolist() == expected, f"{name}: values differ"
        # Count per whole hour from the rollups (the store closed: everything merged).
        start = feeder.t0 - feeder.t0 % (3600 * S)
        count = store.read_processed(feeder.names[0], start, start + 3 * 3600 * S, 3600 * S, "Count")
        assert count.source == "rollup_hour"
        assert int(count.values.sum()) == len(feeder.times)


async def test_a_full_disk_keeps_values_in_memory_alarms_and_stores_each_once_in_order_after(tmp_path) -> None:
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    alarms: list[tuple[str, bool]] = []
    with small_fs(tmp_path / "fs", 4096) as fs:
        h = Historian(config, tagdb, fs, on_storage_alarm=lambda source, active, msg: alarms.append((source, active)))
        h.retry_min, h.retry_max = 0.05, 0.5  # retried often: the test waits less, nothing else changes
        feeder = Feeder(tagdb)
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 5 * len(feeder.ids), "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: h.status()["history_store_failing"], "the store to fail", task)
            assert alarms == [("history_store", True)]
            # Values keep arriving while the disk is full: they wait in memory.
            backlog = h.status()["history_backlog"]
            await feed_until(feeder, lambda: h.status()["history_backlog"] >= backlog + 10 * len(feeder.ids),
                             "a backlog in memory", task)
            assert h.status()["history_storage_failing"] is True
            # History reads (OPC UA HistoryRead) add what waits in memory to what the store has.
            assert sum(len(b) for b in h.unstored()) >= h.status()["history_backlog"] > backlog
            free_space(fs)
            await wait_for(lambda: not h.status()["history_store_failing"] and h.status()["history_backlog"] == 0,
                           "the store to recover", task)
            assert alarms == [("history_store", True), ("history_store", False)]
            feeder.step()  # and it goes on as before
            await wait_for(lambda: h.stored >= len(feeder.times) * len(feeder.ids), "the last value stored", task)
        finally:
            await stop(task)
        assert h.backlog_dropped == 0
        check_store(fs, feeder)


async def test_a_full_memory_backlog_drops_the_oldest_values_and_says_so(tmp_path) -> None:
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    with small_fs(tmp_path / "fs", 4096) as fs:
        h = Historian(config, tagdb, fs)
        h.retry_min, h.retry_max = 0.05, 0.5
        feeder = Feeder(tagdb)
        n = len(feeder.ids)
        h.backlog_max_values = 20 * n  # twenty steps
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 3 * n, "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: h.status()["history_store_failing"], "the store to fail", task)
            await feed_until(feeder, lambda: h.status()["history_backlog_dropped"] >= 10 * n, "a backlog overflow",
                             task)
            assert h.status()["history_backlog"] <= h.backlog_max_values
            free_space(fs)
            await wait_for(lambda: not h.status()["history_store_failing"] and h.status()["history_backlog"] == 0,
                           "the store to recover", task)
        finally:
            await stop(task)
        dropped = h.backlog_dropped
        assert dropped % n == 0  # whole steps here: each step is one batch of every door
        with HistoryStore(fs / "history.sqlite", readonly=True) as store:
            for name in feeder.names:
                raw = store.read_raw(name, feeder.t0, feeder.end())
                # What is missing is a run of the oldest values that waited; the rest is in order.
                assert len(raw) == len(feeder.times) - dropped // n
                assert (np.diff(raw.times) > 0).all()
                assert set(raw.times.tolist()) <= set(feeder.times)
                assert raw.times[-1] == feeder.times[-1]


def spooled_doors(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(time, value) of each door line in the spool, in spool order."""
    out: dict[str, list[tuple[int, float]]] = {}
    with Spool(folder) as sp:
        entries = sp.peek(1 << 40)
        assert [s for s, _ in entries] == list(range(entries[0][0], entries[0][0] + len(entries)))
        for _, payload in entries:
            for line in payload.decode().splitlines():
                head, field, t = line.split(" ")
                key, value = field.split("=")
                if key == "door_open":
                    out.setdefault(head, []).append((int(t), float(value)))
    return out


async def test_a_full_disk_under_the_spool_keeps_batches_in_memory_and_spools_them_in_order_after(tmp_path) -> None:
    """InfluxDB unreachable (nothing leaves the spool): every value is spooled once, in order,
    across the full disk; both storages alarm and clear."""
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    alarms: list[tuple[str, bool]] = []
    influx = InfluxSettings(url="http://127.0.0.1:9", spool_capacity_mb=1)  # port 9: nothing listens
    with small_fs(tmp_path / "fs", 4096) as fs:
        h = Historian(config, tagdb, fs, influx,
                      on_storage_alarm=lambda source, active, msg: alarms.append((source, active)))
        h.retry_min, h.retry_max = 0.05, 0.5
        h.sink.backoff_min, h.sink.backoff_max = 0.05, 0.5
        feeder = Feeder(tagdb)
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 5 * len(feeder.ids), "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: h.status()["influx_spool_failing"], "the spool to fail", task)
            await feed_until(feeder, lambda: h.status()["history_store_failing"], "the store to fail", task)
            await feed_until(feeder, lambda: h.status()["influx_memory_backlog"] >= 10, "batches in memory", task)
            assert ("history_spool", True) in alarms and ("history_store", True) in alarms
            free_space(fs)
            await wait_for(lambda: not h.status()["history_storage_failing"], "both storages to recover", task)
            assert h.status()["influx_memory_backlog"] == 0 and h.status()["history_backlog"] == 0
            feeder.step()
            await wait_for(lambda: h.stored >= len(feeder.times) * len(feeder.ids), "the last value stored", task)
        finally:
            await stop(task)
        for source in ("history_store", "history_spool"):
            assert [a for s, a in alarms if s == source] == [True, False], alarms
        assert h.sink.status().memory_dropped_entries == 0 and h.spool.dropped_entries == 0
        check_store(fs, feeder)
        lines = spooled_doors(fs / "influx-spool")
        expected = list(zip(feeder.times, feeder.expected_values()))
        assert len(lines) == len(feeder.names)
        for head, points in lines.items():
            assert points == expected, f"{head}: spooled values differ"


# ---------------------------------------------------------------- a file system gone read-only

@needs_ext4
async def test_a_disk_gone_read_only_keeps_the_historian_running_and_history_goes_on_after_repair(tmp_path) -> None:
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    alarms: list[tuple[str, bool]] = []
    influx = InfluxSettings(url="http://127.0.0.1:9", spool_capacity_mb=1)

    def historian(db: TagDB) -> Historian:
        h = Historian(config, db, fs, influx, on_storage_alarm=lambda source, active, msg: alarms.append((source, active)))
        h.retry_min, h.retry_max = 0.05, 0.5
        h.sink.backoff_min, h.sink.backoff_max = 0.05, 0.5
        return h

    with ext4_image(tmp_path, size_mb=16) as (image, fs):
        h = historian(tagdb)
        feeder = Feeder(tagdb)
        n = len(feeder.ids)
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 5 * n, "the first values stored", task)
            fs_error(fs)
            await feed_until(feeder, lambda: h.status()["history_store_failing"], "the store to fail", task)
            await feed_until(feeder, lambda: h.status()["influx_spool_failing"], "the spool to fail", task)
            await feed_until(feeder, lambda: h.status()["history_backlog"] >= 10 * n, "a backlog in memory", task)
            assert ("history_store", True) in alarms and ("history_spool", True) in alarms
        finally:
            await stop(task)
        assert task.cancelled()  # it ended because it was stopped, not by an error
        before = len(feeder.times)

        repair(image, fs)
        tagdb2 = TagDB(*config.tag_table())
        feeder.tagdb = tagdb2
        h2 = historian(tagdb2)  # opens the store and the spool on the repaired disk
        task = await start(h2)
        try:
            for _ in range(5):
                feeder.step()
            await wait_for(lambda: h2.stored >= 4 * n, "values stored after the repair", task)
        finally:
            await stop(task)
        assert not h2.status()["history_storage_failing"]
        with HistoryStore(fs / "history.sqlite", readonly=True) as store:
            for name in feeder.names:
                raw = store.read_raw(name, feeder.t0, feeder.end())
                times = raw.times.tolist()
                assert times == sorted(set(times)), f"{name}: out of order or twice"
                assert set(times) <= set(feeder.times)
                assert times[-1] == feeder.times[-1]
                assert len([t for t in times if t > feeder.times[before - 1]]) >= 4
        with Spool(fs / "influx-spool") as sp:
            entries = sp.peek(1 << 40)  # every record's CRC checked
            assert sp.quarantined_entries == 0
            got = [s for s, _ in entries]
            assert got == sorted(set(got))


def test_a_store_opens_on_a_full_disk_with_rows_it_cannot_merge_and_merges_them_later(tmp_path) -> None:
    """A restart on a full disk: the rows left in staging are read from memory until the disk
    takes the merge; the start does not fail."""
    from scada.historian.compress import StoredBatch

    def batch(k: int) -> StoredBatch:
        ids = np.arange(50)
        return StoredBatch(ids, np.full(50, float(k)), np.zeros(50, np.uint32), np.full(50, (k + 1) * S))

    with small_fs(tmp_path / "fs", 2048) as fs:
        path = fs / "history.sqlite"
        store = HistoryStore(path, merge_seconds=3600)
        for k in range(20):
            store.write(batch(k))
        fill(fs)
        with pytest.raises(HistoryError, match="merge failed"):
            store.close()  # the merge at close is refused: the rows stay in staging (the file is closed)
        store = HistoryStore(path, merge_seconds=3600)  # opens, does not raise
        try:
            assert store.merge_error is not None and store.pending_rows == 20 * 50
            assert store.read_raw(7, 0, 100 * S).values.tolist() == [float(k) for k in range(20)]
            free_space(fs)
            store.write(batch(20))  # stored, and the merge owed is done
            assert store.merge_error is None and store.pending_rows == 0
        finally:
            store.close()
        with HistoryStore(path, readonly=True) as ro:
            assert ro.read_raw(7, 0, 100 * S).values.tolist() == [float(k) for k in range(21)]
            count = ro.read_processed(7, 0, 3600 * S, 3600 * S, "Count")
            assert count.source == "rollup_hour" and count.values.tolist() == [21]


async def test_an_alarm_callback_that_fails_does_not_stop_the_historian(tmp_path) -> None:
    """The server's alarm journal may sit on the same full disk: its error is logged, no more."""
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    calls: list[bool] = []

    def failing_alarm(source: str, active: bool, message: str) -> None:
        calls.append(active)
        raise OSError(28, "No space left on device (the alarm journal)")

    with small_fs(tmp_path / "fs", 4096) as fs:
        h = Historian(config, tagdb, fs, on_storage_alarm=failing_alarm)
        h.retry_min, h.retry_max = 0.05, 0.5
        feeder = Feeder(tagdb)
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 3 * len(feeder.ids), "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: h.status()["history_store_failing"], "the store to fail", task)
            free_space(fs)
            await wait_for(lambda: not h.status()["history_store_failing"] and h.status()["history_backlog"] == 0,
                           "the store to recover", task)
        finally:
            await stop(task)
        assert calls == [True, False]
        check_store(fs, feeder)


async def test_the_server_raises_and_clears_storage_failing_for_the_history(tmp_path) -> None:
    """As scada/app.py wires it: the alarm engine's server alarm. The alarm journal is kept on a
    healthy disk here (a symlink out of the small one): its own faults are another test's."""
    from scada.app import Application

    config = load_config(ROOT)
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    with small_fs(tmp_path / "data", 4096) as fs:
        (fs / "alarms.sqlite").symlink_to(healthy / "alarms.sqlite")
        app = Application(config, data_dir=fs, front="inline")
        events = []
        app.alarms.subscribers.append(events.extend)
        h = app.historian
        h.retry_min, h.retry_max = 0.05, 0.5
        feeder = Feeder(app.tagdb)
        task = await start(h)
        try:
            storage = lambda: [(e.event, e.message) for e in events if e.alarm == "storage_failing"]  # noqa: E731
            await feed_until(feeder, lambda: h.stored >= 3 * len(feeder.ids), "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: len(storage()) == 1, "storage_failing raised", task)
            assert storage()[0][0] == "ACTIVATE" and "history store cannot write" in storage()[0][1]
            free_space(fs)
            await wait_for(lambda: len(storage()) == 2, "storage_failing cleared", task)
            assert storage()[1][0] == "CLEAR"
        finally:
            await stop(task)
            app.journal.close()
        check_store(fs, feeder)


async def test_a_historian_restarted_on_a_full_disk_keeps_its_backlog_and_clears_the_alarm_after(tmp_path) -> None:
    """A supervised restart (Application._historian_restart) while the store cannot write: the
    new historian writes what the failed one kept in memory, and clears storage_failing, which
    the failed one raised, once the disk is back."""
    from scada.app import Application

    config = load_config(ROOT)
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    with small_fs(tmp_path / "data", 4096) as fs:
        (fs / "alarms.sqlite").symlink_to(healthy / "alarms.sqlite")
        app = Application(config, data_dir=fs, front="inline")
        events = []
        app.alarms.subscribers.append(events.extend)
        storage = lambda: [e.event for e in events if e.alarm == "storage_failing"]  # noqa: E731
        h = app.historian
        h.retry_min, h.retry_max = 0.05, 0.5
        feeder = Feeder(app.tagdb)
        task = await start(h)
        try:
            await feed_until(feeder, lambda: h.stored >= 3 * len(feeder.ids), "the first values stored", task)
            fill(fs)
            await feed_until(feeder, lambda: storage() == ["ACTIVATE"], "storage_failing raised", task)
            await feed_until(feeder, lambda: h.status()["history_backlog"] >= 5 * len(feeder.ids),
                             "a backlog in memory", task)
        finally:
            await stop(task)  # as a failure ends it: the store closed, the backlog still in memory
        waiting = h.status()["history_backlog"]
        assert waiting > 0
        app._historian_restart()
        h2 = app.historian
        assert h2 is not h and app.hmi.history is h2
        assert h2.status()["history_backlog"] == waiting and h2.status()["history_store_failing"]
        h2.retry_min, h2.retry_max = 0.05, 0.5
        task = await start(h2)
        try:
            free_space(fs)
            feeder.step()
            await wait_for(lambda: storage() == ["ACTIVATE", "CLEAR"] and h2.status()["history_backlog"] == 0,
                           "storage_failing cleared by the new historian", task)
            await wait_for(lambda: h2.stored >= len(feeder.times) * len(feeder.ids), "the last value stored", task)
        finally:
            await stop(task)
            app.journal.close()
        assert h2.backlog_dropped == 0
        check_store(fs, feeder)
