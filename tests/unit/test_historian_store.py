"""The embedded history store on real SQLite files: raw reads, rollups, retention, crashes."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scada import status as st
from scada.historian.compress import Compressor, StoredBatch
from scada.historian.store import (BAD_NO_DATA, DAY, GOOD, HOUR, MINUTE, SECOND, UNCERTAIN_DATA_SUB_NORMAL,
                                   HistoryError, HistoryStore, Retention)
from scada.tagdb import ANALOG, ChangeBatch
from tests.sqlite_files import run_sql

T0 = 1_795_000_000 * SECOND // HOUR * HOUR  # a whole hour
BAD = st.BAD_COMMUNICATION_ERROR
ROOT = Path(__file__).resolve().parents[2]


def sb(ids, values, times, status=GOOD, texts=None) -> StoredBatch:
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    n = len(ids)
    return StoredBatch(ids, np.broadcast_to(np.asarray(values, np.float64), (n,)).copy(),
                       np.broadcast_to(np.asarray(status, np.uint32), (n,)).copy(),
                       np.broadcast_to(np.asarray(times, np.int64), (n,)).copy(), texts)


def random_history(seed: int, n: int = 3000, span_s: int = 5 * 3600, bad_share: float = 0.05):
    """Irregular times over ``span_s`` from T0, a random walk, some Bad rows."""
    rng = np.random.default_rng(seed)
    times = T0 + np.sort(rng.choice(span_s * 1000, n, replace=False)) * (SECOND // 1000)
    values = np.cumsum(rng.normal(0, 1, n))
    status = np.where(rng.random(n) < bad_share, BAD, GOOD).astype(np.uint32)
    return times.astype(np.int64), values, status


def write_in_chunks(store: HistoryStore, tag: int, times, values, status, chunks: int = 7, merge_every: int = 2):
    """Several writes, some merged and some left pending, so reads see both."""
    for k, part in enumerate(np.array_split(np.arange(len(times)), chunks)):
        store.write(sb(np.full(len(part), tag), values[part], times[part], status[part]))
        if k % merge_every == merge_every - 1 and k < chunks - 1:
            store.merge()


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history.db", ["a", "b", "c"], merge_rows=10**9, merge_seconds=1e9)
    yield s
    s.close()


# -- raw values ------------------------------------------------------------------------------

def test_write_and_read_raw_with_continuation(store):
    times, values, status = random_history(1)
    write_in_chunks(store, 1, times, values, status)
    assert store.pending_rows > 0  # the last chunks are not merged: reads must see them too
    full = store.read_raw("b", T0, T0 + DAY)
    assert np.array_equal(full.times, times)
    assert np.array_equal(full.values, values)
    assert np.array_equal(full.status, status)
    assert full.next_after is None
    pages, after = [], None
    while True:
        page = store.read_raw(1, T0, T0 + DAY, limit=400, after=after)
        pages.append(page)
        if page.next_after is None:
            break
        assert len(page) == 400
        after = page.next_after
    assert len(pages) == math.ceil(len(times) / 400)
    assert np.array_equal(np.concatenate([p.times for p in pages]), times)
    assert np.array_equal(np.concatenate([p.values for p in pages]), values)
    # [start, end): a point exactly at end is the next range's.
    part = store.read_raw(1, int(times[10]), int(times[20]))
    assert np.array_equal(part.times, times[10:20])
    assert len(store.read_raw("a", T0, T0 + DAY)) == 0


def test_nan_and_text_points(store):
    store.write(sb([0, 0], [1.0, math.nan], [T0, T0 + SECOND], [GOOD, BAD]))
    store.write(sb([2, 2, 0], [math.nan, math.nan, 2.0], [T0, T0 + 5 * SECOND, T0 + 2 * SECOND],
                   texts=("timeout", "refused", None)))
    for merged in (False, True):
        r = store.read_raw("a", T0, T0 + DAY)
        assert r.values[0] == 1.0 and math.isnan(r.values[1]) and r.values[2] == 2.0
        assert r.status.tolist() == [GOOD, BAD, GOOD] and r.texts is None
        t = store.read_raw("c", T0, T0 + DAY)
        assert t.texts == ("timeout", "refused")
        assert t.times.tolist() == [T0, T0 + 5 * SECOND]
        store.merge()


def test_bounds_and_last_points(store):
    store.write(sb([0, 0, 0], [1.0, 2.0, 3.0], [T0, T0 + 10 * SECOND, T0 + 20 * SECOND]))
    store.merge()
    store.write(sb([0], [4.0], [T0 + 30 * SECOND]))
    assert store.bound_before(0, T0 + 15 * SECOND) == (T0 + 10 * SECOND, 2.0, GOOD)
    assert store.bound_after(0, T0 + 15 * SECOND) == (T0 + 20 * SECOND, 3.0, GOOD)
    assert store.bound_after(0, T0 + 25 * SECOND) == (T0 + 30 * SECOND, 4.0, GOOD)
    assert store.bound_before(0, T0 - 1) is None
    ids, values, status, times = store.last_points()
    assert ids.tolist() == [0] and values.tolist() == [4.0] and times.tolist() == [T0 + 30 * SECOND]


# -- processed values ------------------------------------------------------------------------

def expected_partials(times, values, status, start, end, interval):
    k = -(-(end - start) // interval)
    m = (times >= start) & (times < end)
    key = (times[m] - start) // interval
    good = (status[m] == GOOD) & np.isfinite(values[m])
    out = {"Count": np.zeros(k), "Average": np.full(k, np.nan), "Minimum": np.full(k, np.nan),
           "Maximum": np.full(k, np.nan), "bad": np.zeros(k)}
    for i in range(k):
        g = values[m][(key == i) & good]
        out["Count"][i] = len(g)
        out["bad"][i] = np.sum((key == i) & ~good)
        if len(g):
            out["Average"][i], out["Minimum"][i], out["Maximum"][i] = g.mean(), g.min(), g.max()
    return out


@pytest.mark.parametrize("start_off, interval, source", [
    (0, HOUR, "rollup_hour"),
    (0, 2 * HOUR, "rollup_hour"),
    (0, 15 * MINUTE, "rollup_minute"),
    (0, MINUTE, "rollup_minute"),
    (13 * SECOND, 7 * MINUTE, "raw"),
    (0, 90 * SECOND, "raw"),
])
def test_processed_aggregates_match_numpy(store, start_off, interval, source):
    times, values, status = random_history(2)
    write_in_chunks(store, 1, times, values, status)
    start, end = T0 + start_off, T0 + 5 * HOUR
    want = expected_partials(times, values, status, start, end, interval)
    for agg in ("Average", "Minimum", "Maximum", "Count"):
        got = store.read_processed("b", start, end, interval, agg)
        assert got.source == source
        assert np.array_equal(got.times, start + np.arange(len(got)) * interval)
        assert np.allclose(got.values, want[agg], equal_nan=True), agg
        if agg != "Count":
            assert np.array_equal(got.status == BAD_NO_DATA, want["Count"] == 0)
        with_bad = (want["Count"] > 0) & (want["bad"] > 0)
        assert np.all(got.status[with_bad] == UNCERTAIN_DATA_SUB_NORMAL)
        assert np.all(got.status[(want["Count"] > 0) & (want["bad"] == 0)] == GOOD)


def test_rollups_correct_across_writes_spanning_buckets(store):
    """The same minute and hour buckets filled by several writes and merges, interleaved tags."""
    rng = np.random.default_rng(3)
    all_rows = {0: [], 2: []}
    t = T0 + 50 * MINUTE
    for _ in range(12):  # 12 writes of ~2.5 min each across the hour boundary, merged every other
        n = 40
        times = t + np.sort(rng.choice(150 * 1000, n, replace=False)) * (SECOND // 1000)
        t += 150 * SECOND
        for tag in (0, 2):
            v = rng.normal(20, 5, n)
            s = np.where(rng.random(n) < 0.1, BAD, GOOD).astype(np.uint32)
            store.write(sb(np.full(n, tag), v, times + tag, s))
            all_rows[tag].append((times + tag, v, s))
        if rng.random() < 0.5:
            store.merge()
    store.merge()
    for tag, rows in all_rows.items():
        times = np.concatenate([r[0] for r in rows])
        values = np.concatenate([r[1] for r in rows])
        status = np.concatenate([r[2] for r in rows])
        for interval, source in ((MINUTE, "rollup_minute"), (HOUR, "rollup_hour"), (5 * MINUTE, "rollup_minute")):
            start, end = T0, T0 + 2 * HOUR
            want = expected_partials(times, values, status, start, end, interval)
            for agg in ("Average", "Minimum", "Maximum", "Count"):
                got = store.read_processed(tag, start, end, interval, agg)
                assert got.source == source
                assert np.allclose(got.values, want[agg], equal_nan=True), (tag, interval, agg)
    # The rollup rows themselves: one per (bucket, tag) however many writes filled it.
    db = sqlite3.connect(store.path)
    dup = db.execute("SELECT count(*) FROM (SELECT bucket_ns, tag FROM rollup_minute "
                     "GROUP BY bucket_ns, tag HAVING count(*) > 1)").fetchone()[0]
    db.close()
    assert dup == 0


def test_interpolative_and_time_average(store):
    times = T0 + np.array([0, 100, 250, 400, 1000]) * SECOND
    values = np.array([0.0, 10.0, 10.0, -5.0, 7.0])
    store.write(sb(np.zeros(5), values, times))
    edges = T0 + np.arange(0, 1200, 60) * SECOND
    interp = store.read_processed(0, T0, T0 + 1200 * SECOND, 60 * SECOND, "Interpolative")
    assert np.allclose(interp.values, np.interp(edges, times, values))
    assert np.all(interp.status[edges <= times[-1]] == GOOD)
    assert np.all(interp.status[edges > times[-1]] == UNCERTAIN_DATA_SUB_NORMAL)  # held after the end
    stepped = store.read_processed(0, T0, T0 + 1200 * SECOND, 60 * SECOND, "Interpolative", stepped=True)
    assert np.allclose(stepped.values, values[np.searchsorted(times, edges, "right") - 1])
    # Time-weighted average against a dense numerical integration of the same signal.
    tavg = store.read_processed(0, T0, T0 + 1000 * SECOND, 200 * SECOND, "TimeAverage")
    dense = np.interp(np.arange(0, 1000, 0.01) * SECOND + T0, times, values)
    assert np.allclose(tavg.values, dense.reshape(5, -1).mean(axis=1), atol=1e-3)
    assert np.all(tavg.status == GOOD)
    # Before the first point: no data.
    early = store.read_processed(0, T0 - 600 * SECOND, T0, 60 * SECOND, "TimeAverage")
    assert np.all(early.status == BAD_NO_DATA) and np.all(np.isnan(early.values))


def test_time_average_leaves_bad_periods_out(store):
    times = T0 + np.array([0, 100, 200, 300]) * SECOND
    store.write(sb(np.zeros(4), [10.0, 50.0, 20.0, 20.0], times, [GOOD, BAD, GOOD, GOOD]))
    r = store.read_processed(0, T0, T0 + 300 * SECOND, 300 * SECOND, "TimeAverage")
    # 0-100 s: 10 (held: the next point is Bad); 100-200 s: Bad, left out; 200-300 s: 20.
    assert r.values.tolist() == [15.0]
    assert r.status.tolist() == [UNCERTAIN_DATA_SUB_NORMAL]


def test_processed_argument_errors(store):
    with pytest.raises(ValueError, match="unknown aggregate"):
        store.read_processed(0, T0, T0 + HOUR, MINUTE, "Median")
    with pytest.raises(ValueError):
        store.read_processed(0, T0, T0, MINUTE, "Average")
    with pytest.raises(KeyError):
        store.read_raw("no/such/tag", T0, T0 + HOUR)


# -- retention ---------------------------------------------------------------------------------

def test_prune_per_class_keeps_rollups_longer(tmp_path):
    path = tmp_path / "h.db"
    retention = {"lighting": Retention(raw_days=2, minute_days=5, hour_days=30), "traffic": 10.0}
    s = HistoryStore(path, ["L", "T"], np.array(["lighting", "traffic"]), retention)
    days = np.arange(20)
    for tag in (0, 1):
        s.write(sb(np.full(20, tag), days.astype(float), T0 + days * DAY))
    s.merge()
    now = T0 + 20 * DAY
    deleted = s.prune(now)
    assert deleted["raw"] == (20 - 2) + (20 - 10)
    # Lighting: raw younger than 2 days; minute rollups 5 days; hour rollups all (30 days).
    assert s.read_raw("L", 0, now + DAY).times.tolist() == (T0 + np.array([18, 19]) * DAY).tolist()
    minutes = s.read_processed("L", T0, now, MINUTE, "Count")
    assert np.flatnonzero(minutes.values).tolist() == [(d * DAY) // MINUTE for d in range(15, 20)]
    hours = s.read_processed("L", T0, now, HOUR, "Count")
    assert hours.values.sum() == 20
    # Traffic (raw days only): raw 10 days, rollups at least the defaults: all kept.
    assert len(s.read_raw("T", 0, now + DAY)) == 10
    assert s.read_processed("T", T0, now, HOUR, "Count").values.sum() == 20
    assert s.retention_of("nothing") == Retention()
    s.close()
    with pytest.raises(ValueError, match="raw_days"):
        Retention(raw_days=0)


# -- files ---------------------------------------------------------------------------------------

def test_reopen_after_close_with_another_configuration(tmp_path):
    path = tmp_path / "h.db"
    s = HistoryStore(path, ["a", "b"])
    s.write(sb([0, 1], [1.0, 2.0], T0))
    s.close()
    s.close()  # idempotent
    # Tags reordered, one removed, one added: history follows the names, not the ids.
    s = HistoryStore(path, ["new", "b"])
    assert s.read_raw(1, T0, T0 + HOUR).values.tolist() == [2.0]
    assert s.read_raw("a", T0, T0 + HOUR).values.tolist() == [1.0]  # still there, by name
    assert len(s.read_raw(0, T0, T0 + HOUR)) == 0
    s.write(sb([0], [3.0], T0))
    assert s.read_raw("new", T0, T0 + HOUR).values.tolist() == [3.0]
    assert s.names() == ["a", "b", "new"]
    assert s.names("?") == ["a", "b"]
    s.close()


def test_a_reader_in_another_connection_sees_pending_rows(tmp_path):
    path = tmp_path / "h.db"
    w = HistoryStore(path, ["a"], merge_rows=10**9, merge_seconds=1e9)
    w.write(sb([0, 0], [1.0, 2.0], [T0, T0 + SECOND]))
    w.merge()
    w.write(sb([0], [3.0], T0 + 2 * SECOND))
    r = HistoryStore(path, readonly=True)
    assert r.read_raw("a", T0, T0 + HOUR).values.tolist() == [1.0, 2.0, 3.0]
    assert r.read_processed("a", T0, T0 + HOUR, HOUR, "Count").values.tolist() == [3.0]
    with pytest.raises(HistoryError, match="read-only"):
        r.write(sb([0], [4.0], T0 + 3 * SECOND))
    r.close()
    w.close()


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "h.db"
    w = HistoryStore(path, ["a"])
    with pytest.raises(HistoryError, match="another writer"):
        HistoryStore(path, ["a"])
    w.close()
    HistoryStore(path, ["a"]).close()  # released at close


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(HistoryError, match="does not exist") as e:
        HistoryStore(tmp_path / "missing" / "h.db")
    assert str(tmp_path / "missing" / "h.db") in str(e.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(HistoryError, match="not a usable SQLite") as e:
        HistoryStore(garbage)
    assert e.value.path == str(garbage)
    other = tmp_path / "other.db"
    run_sql(other, "CREATE TABLE x (a)")
    with pytest.raises(HistoryError, match="another application"):
        HistoryStore(other)
    with pytest.raises(HistoryError, match="folder"):
        HistoryStore(tmp_path)
    with pytest.raises(HistoryError, match="does not exist"):
        HistoryStore(tmp_path / "nothing.db", readonly=True)


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from scada.historian.store import HistoryStore
    from scada.historian.compress import StoredBatch
    s = HistoryStore({path!r}, ["a", "b"], merge_rows=3000, merge_seconds=1e9)
    k = 0
    while True:
        n = 500
        t = {t0} + (k * n + np.arange(n)) * 1_000_000
        s.write(StoredBatch(np.arange(n) % 2, np.arange(n, dtype=float), np.zeros(n, np.uint32), t))
        k += 1
        print(k * n, flush=True)
""")


def test_a_killed_writer_keeps_committed_data(tmp_path):
    path = tmp_path / "h.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(ROOT), path=str(path), t0=T0)],
                            stdout=subprocess.PIPE, text=True)
    try:
        committed = 0
        for line in proc.stdout:
            committed = int(line)
            if committed >= 12_000:  # several merges done, some rows pending in staging
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    s = HistoryStore(path, ["a", "b"])  # merges what the killed writer left in staging
    assert s.pending_rows == 0
    got = len(s.read_raw("a", T0, T0 + DAY)) + len(s.read_raw("b", T0, T0 + DAY))
    assert got >= committed
    counts = s.read_processed("a", T0, T0 + HOUR, HOUR, "Count").values[0]
    assert counts == len(s.read_raw("a", T0, T0 + DAY))  # rollups agree with raw
    s.close()


def test_compressor_into_store_end_to_end(tmp_path):
    c = Compressor(2, deviation=np.array([0.5, 0.0]), deadband=0.0, kind=ANALOG)
    s = HistoryStore(tmp_path / "h.db", ["ramp", "steps"])
    stored = []
    for k in range(100):
        batch = ChangeBatch(k, np.array([0, 1]), np.array([2.0 * k, float(k // 10)]),
                            np.zeros(2, np.uint32), np.full(2, T0 + k * SECOND), 0)
        out = c.compress(batch)
        s.write(out)
        stored.append(out)
    s.write(c.flush())
    ramp = s.read_raw("ramp", T0, T0 + HOUR)
    assert ramp.values.tolist() == [0.0, 198.0]
    steps = s.read_raw("steps", T0, T0 + HOUR)
    # Every step: the point before and the point after; linear interpolation gives every value back.
    edges = T0 + np.arange(100) * SECOND
    assert np.allclose(np.interp(edges, steps.times, steps.values), np.arange(100) // 10)
    s.close()


def test_a_closed_store_refuses_calls_with_a_clear_error_not_a_storage_error(tmp_path):
    """A caller still using a closed store is a bug: RuntimeError (its task fails and is
    restarted), never HistoryError, which the historian would retry as a full disk."""
    s = HistoryStore(tmp_path / "history.db", ["a"])
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="is closed"):
        s.write(sb(0, 1.0, T0))
    with pytest.raises(RuntimeError, match="is closed"):
        s.read_raw("a", T0, T0 + HOUR)
