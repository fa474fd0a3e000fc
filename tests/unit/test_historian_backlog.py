"""The historian's backlog indexed by tag (scada/historian/backlog.py).

On random backlogs (appends, oldest points dropped, writes that take everything and fail,
reads in between that build the indexes): the backlog keeps every point in order, and the
points it finds for the asked tags are exactly what a scan of every waiting batch finds. Then
end to end on a Historian: ``unstored_points`` through the index equals the per-tag merge of
everything it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from city_scada import load_config
from scada.historian.backlog import Backlog, points_of
from scada.historian.compress import StoredBatch
from scada.historian.service import Historian
from scada.opcua.history import unstored_points
from scada.tagdb import TagDB
from tests.unit.test_history_mirror import per_tag_merge

ROOT = Path(__file__).resolve().parents[2]


def random_batch(rng: np.random.Generator, tags: int, t0: int, texts: bool) -> StoredBatch:
    """Up to 60 points of random tags, each tag's in time order from ``t0`` (some at equal times)."""
    n = int(rng.integers(0, 60))
    ids = rng.integers(0, tags, n).astype(np.int64)
    times = t0 + np.sort(rng.integers(0, 50, n)).astype(np.int64)
    text = tuple(None if rng.random() < 0.5 else f"t{k}" for k in range(n)) if texts else None
    return StoredBatch(ids, rng.normal(size=n), rng.integers(0, 3, n).astype(np.uint32), times, text)


def columns(batches: list[StoredBatch]) -> tuple[list, list, list, list, list]:
    """Every row of the batches, in order, as plain lists (texts None where a batch has none)."""
    b = StoredBatch.concat(batches)
    texts = list(b.texts) if b.texts is not None else [None] * len(b)
    return b.ids.tolist(), b.times.tolist(), b.values.tolist(), b.status.tolist(), texts


def scan(batches: list[StoredBatch], tags: np.ndarray) -> list[tuple]:
    """Each asked tag's rows, batch after batch, as a plain scan finds them."""
    ids, times, values, status, texts = columns(batches)
    wanted = set(tags.tolist())
    rows = [(i, t, v, s, x) for i, t, v, s, x in zip(ids, times, values, status, texts) if i in wanted]
    return sorted(rows, key=lambda r: r[0])  # stable: each tag's rows keep the batches' order


@pytest.mark.parametrize("seed", range(40))
def test_the_backlog_keeps_its_points_in_order_and_finds_what_a_scan_finds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tags = int(rng.integers(1, 40))
    texts = bool(seed % 3 == 0)
    backlog = Backlog()
    expected: list[StoredBatch] = []  # what the backlog must hold, oldest first
    t0 = 0
    for _ in range(int(rng.integers(5, 60))):
        op = rng.random()
        if op < 0.6:
            b = random_batch(rng, tags, t0, texts)
            t0 += 50
            backlog.append(b)
            expected.append(b)
        elif op < 0.75:
            count = int(rng.integers(0, 80))
            dropped = backlog.drop_oldest(count)
            held = StoredBatch.concat(expected)
            assert dropped == min(count, len(held))
            rest = StoredBatch(
                held.ids[dropped:],
                held.values[dropped:],
                held.status[dropped:],
                held.times[dropped:],
                None if held.texts is None else held.texts[dropped:],
            )
            expected = [rest] if len(rest) else []
        elif op < 0.85:
            runs = backlog.take()  # a write that fails: its runs go first again
            assert len(backlog) == 0
            later = random_batch(rng, tags, t0, texts)
            t0 += 50
            backlog.append(later)
            backlog.put_back(runs)
            expected.append(later)
        else:
            asked = np.unique(rng.integers(0, tags, int(rng.integers(1, 6)))).astype(np.int64)
            assert scan(points_of(backlog.runs, asked), asked) == scan(expected, asked)
        assert columns(backlog.batches()) == columns(expected)
        assert len(backlog) == sum(len(b) for b in expected)
    asked = np.arange(tags, dtype=np.int64)
    found = points_of(backlog.runs, asked)
    # Grouped by tag within each run, each tag's points in their order: the scan's rows exactly.
    assert scan(found, asked) == scan(expected, asked)
    assert len(backlog.runs) <= 2 + 2 * int(np.log2(max(2, len(backlog))))  # a few runs, not one per append


def test_an_index_survives_merges_and_drops_without_being_built_again() -> None:
    rng = np.random.default_rng(7)
    backlog = Backlog()
    for k in range(20):
        backlog.append(random_batch(rng, 30, 50 * k, False))
    asked = np.array([3, 4, 17], np.int64)
    points_of(backlog.runs, asked)  # a read: every run's index is built
    assert all(r.indexed for r in backlog.runs)
    for k in range(20, 40):
        backlog.append(random_batch(rng, 30, 50 * k, False))
    backlog.drop_oldest(25)
    # The old runs' indexes were merged and cut, not dropped: only runs made since are unindexed.
    assert backlog.runs[0].indexed
    for run in backlog.runs:
        if run.indexed:
            keys, order = run.index()
            assert keys.tolist() == run.batch.ids[order].tolist()
            assert sorted(order.tolist()) == list(range(len(run)))


@pytest.mark.parametrize("seed", range(8))
def test_unstored_points_through_the_index_equal_the_per_tag_merge(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    h = Historian(config, tagdb, tmp_path)
    try:
        tags = 25
        texts = seed % 2 == 0
        batches = [random_batch(rng, tags, 50 * k, texts) for k in range(30)]
        # Some points twice (a tag's time in two batches): the older copy is the one kept.
        batches.append(
            StoredBatch(
                batches[3].ids[:5],
                -batches[3].values[:5],
                batches[3].status[:5],
                batches[3].times[:5],
                batches[3].texts[:5] if batches[3].texts is not None else None,
            )
        )
        h._writing = Backlog(batches[:8]).take()  # being written
        h._backlog = Backlog(batches[8:28])
        if seed % 2:
            points_of(h._backlog.runs, np.array([0], np.int64))  # some runs indexed already
        h._pending = batches[28:]
        for _ in range(5):
            ids = rng.integers(0, tags, int(rng.integers(1, 12))).tolist()
            want = per_tag_merge(h.unstored() + [h.compressor.pending(np.array(sorted(set(ids))))], ids)
            got = unstored_points(h, ids)
            assert sorted(got) == sorted(want)
            for tag, (t, v, s, x) in want.items():
                np.testing.assert_array_equal(got[tag].times, t)
                np.testing.assert_array_equal(got[tag].values, v)
                np.testing.assert_array_equal(got[tag].status, s)
                assert got[tag].texts == x, tag
    finally:
        h.store.close()
