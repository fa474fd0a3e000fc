
import gc
import os

import numpy as np
import pytest

from scada import status as st
from scada.tagdb import ANALOG, DISCRETE, TEXT, TagDB


def make_db(n=6, deadband=0.0):
    return TagDB([f"c/lighting/d{i}/p" for i in range(n)], [ANALOG] * n, [deadband] * n)


def test_new_tags_have_no_value_and_no_communication():
    db = make_db()
    assert np.isnan(db.value).all()
    assert (db.status == st.BAD_NO_COMMUNICATION).all()


def test_first_values_are_changes_and_stored():
    db = make_db()
    batch = db.update(np.array([0, 2]), np.array([1.5, 2.5]), st.GOOD, 123)
    assert batch.ids.tolist() == [0, 2]
    assert batch.values.tolist() == [1.5, 2.5]
    assert batch.status.tolist() == [st.GOOD, st.GOOD]
    assert batch.source_time.tolist() == [123, 123]
    assert db.value[2] == 2.5 and db.status[2] == st.GOOD and db.source_time[2] == 123
    assert db.server_time[2] > 0


def test_same_value_is_not_a_change():
    db = make_db()
    db.update([0, 1], [1.0, 2.0])
    assert db.update([0, 1], [1.0, 2.0]) is None


def test_deadband_filters_small_moves_against_last_reported_value():
    db = make_db(3, deadband=0.5)
    db.update([0], [10.0])
    assert db.update([0], [10.3]) is None
    # Drift below the deadband accumulates against the last *reported* value.
    assert db.update([0], [10.45]) is None
    batch = db.update([0], [10.6])
    assert batch is not None and batch.values.tolist() == [10.6]
    assert db.value[0] == 10.6


def test_per_tag_deadband():
    db = TagDB(["a", "b"], [ANALOG, ANALOG], [0.0, 5.0])
    db.update([0, 1], [0.0, 0.0])
    batch = db.update([0, 1], [0.1, 4.0])
    assert batch.ids.tolist() == [0]


def test_status_change_is_a_change_even_with_same_value():
    db = make_db()
    db.update([0], [1.0])
    batch = db.update([0], [1.0], st.UNCERTAIN_LAST_USABLE_VALUE)
    assert batch.ids.tolist() == [0]
    assert batch.status.tolist() == [st.UNCERTAIN_LAST_USABLE_VALUE]


def test_per_row_status_array():
    db = make_db()
    batch = db.update([0, 1], [1.0, 2.0], np.array([st.GOOD, st.BAD_CONFIGURATION_ERROR], np.uint32))
    assert batch.status.tolist() == [st.GOOD, st.BAD_CONFIGURATION_ERROR]


def test_set_status_keeps_last_value():
    db = make_db()
    db.update([0, 1], [7.0, 8.0])
    batch = db.set_status(np.array([0, 1]), st.BAD_COMMUNICATION_ERROR)
    assert batch.values.tolist() == [7.0, 8.0]
    assert (db.status[[0, 1]] == st.BAD_COMMUNICATION_ERROR).all()
    assert db.value[0] == 7.0
    assert db.set_status(np.array([0, 1]), st.BAD_COMMUNICATION_ERROR) is None  # no change twice


def test_nan_to_value_and_back_are_changes():
    db = make_db()
    db.update([0], [1.0])
    assert db.update([0], [np.nan]) is not None
    assert db.update([0], [np.nan]) is None
    assert db.update([0], [1.0]) is not None


def test_text_points():
    db = TagDB(["t", "a"], [TEXT, ANALOG], [0, 0])
    batch = db.update_text([0], ["firmware 1.2"])
    assert batch.texts == ("firmware 1.2",)
    assert db.update_text([0], ["firmware 1.2"]) is None
    assert db.update_text([0], ["firmware 1.3"]).texts == ("firmware 1.3",)
    snap = db.snapshot(np.array([0]))
    assert snap.texts == ("firmware 1.3",)


def test_discrete_points_change_on_any_difference():
    db = TagDB(["door"], [DISCRETE], [0.0])
    db.update([0], [0.0])
    assert db.update([0], [1.0]).values.tolist() == [1.0]


def test_duplicate_names_rejected():
    with pytest.raises(ValueError):
        TagDB(["a", "a"])


def test_id_of_unknown_tag_is_a_clear_error():
    db = make_db()
    with pytest.raises(KeyError, match="unknown tag"):
        db.id_of("nope")


async def test_consumers_receive_batches_in_order():
    db = make_db()
    c = db.subscribe("test", maxsize=10)
    db.update([0], [1.0])
    db.update([1], [2.0])
    b1, b2 = await c.get(), await c.get()
    assert b1.seq < b2.seq
    assert b1.ids.tolist() == [0] and b2.ids.tolist() == [1]


async def test_slow_consumer_drops_counted_and_flagged_never_blocks():
    db = make_db()
    slow = db.subscribe("slow", maxsize=2)
    fast = db.subscribe("fast", maxsize=100)
    for i in range(5):
        db.update([0, 1], [float(i), float(i)])
    assert slow.queue.qsize() == 2
    assert slow.dropped_batches == 3 and slow.dropped_rows == 6 and slow.overflowed
    assert fast.queue.qsize() == 5 and fast.dropped_batches == 0
    # The snapshot is how the slow consumer catches up.
    snap = db.snapshot()
    assert snap.values[0] == 4.0


def test_large_batch_vectorised():
    n = 100_000
    db = TagDB([f"t{i}" for i in range(n)], None, np.full(n, 0.5))
    ids = np.random.default_rng(1).permutation(n)
    db.update(ids, np.zeros(n))
    vals = np.zeros(n)
    vals[ids[:1000]] = 1.0  # 1% moves beyond the deadband
    batch = db.update(ids, vals[ids])
    assert len(batch) == 1000
    assert set(batch.ids.tolist()) == set(ids[:1000].tolist())


def test_values_older_than_their_max_age_turn_uncertain_and_recover():
    db = TagDB(["tracker/lat", "tracker/lon", "cabinet/power"], None, None, [60.0, 60.0, 0.0])
    t0 = 1_000_000_000_000
    db.update([0, 1, 2], [47.3, 5.0, 1.0], st.GOOD, t0)
    assert db.mark_stale(t0 + 59 * 10**9) is None
    batch = db.mark_stale(t0 + 61 * 10**9)
    assert batch.ids.tolist() == [0, 1]  # the point without a max age never goes stale
    assert (db.status[[0, 1]] == st.UNCERTAIN_LAST_USABLE_VALUE).all() and db.status[2] == st.GOOD
    assert db.value[0] == 47.3 and db.source_time[0] == t0  # last value and its age kept
    assert db.mark_stale(t0 + 120 * 10**9) is None  # once
    assert db.update([0], [47.3], st.GOOD, t0 + 121 * 10**9).ids.tolist() == [0]  # a report: Good again
    db.set_status(np.array([1]), st.BAD_COMMUNICATION_ERROR)
    later = db.mark_stale(t0 + 10**12)
    assert later.ids.tolist() == [0]  # only Good values age into Uncertain: not the Bad one


def test_consumer_waits_until_a_deadline_and_resets_an_overflow_once():
    import asyncio
    import time

    db = TagDB(["a"])
    c = db.subscribe("slow", maxsize=1)

    async def scenario():
        assert await c.get_until(time.monotonic() + 0.01) is None  # nothing came
        db.update(np.array([0]), np.array([1.0]))
        db.update(np.array([0]), np.array([2.0]))  # dropped: the queue holds one
        assert c.take_overflow() and c.queue.empty()  # the older queued batch is discarded too
        assert not c.take_overflow()
        db.update(np.array([0]), np.array([3.0]))
        batch = await c.get_until(time.monotonic() + 1)
        assert batch is not None and batch.values.tolist() == [3.0]

    asyncio.run(scenario())


# -- shared=True: the row columns in shared memory, for the OPC UA front process --------------


def script(db: TagDB) -> list:
    """Every kind of write, in order; returns the batches (None: nothing changed)."""
    return [
        db.update(np.array([0, 1, 3]), np.array([1.0, 0.0, 7.0]), st.GOOD, 1_000),
        db.update(np.array([0]), np.array([1.0]), st.GOOD, 2_000),  # source time only
        db.update_text([2], ["no answer"], st.GOOD, 3_000),
        db.set_status(np.array([0, 2]), st.BAD_COMMUNICATION_ERROR, source_time=4_000),
        db.mark_stale(now=10**18),
    ]


def test_a_shared_tag_database_behaves_as_a_private_one_and_publishes_its_seq():
    kinds = [ANALOG, DISCRETE, TEXT, ANALOG]
    names = ["a/p", "a/on", "a/err", "a/mode"]
    private = TagDB(names, kinds, max_ages=[1.0, 0, 0, 1.0])
    shared = TagDB(names, kinds, max_ages=[1.0, 0, 0, 1.0], shared=True)
    assert private.shared_name is None and shared.shared_name is not None
    block = shared._shared
    assert block is not None
    try:
        for a, b in zip(script(private), script(shared)):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert (a.seq, a.ids.tolist(), a.texts) == (b.seq, b.ids.tolist(), b.texts)
            # Every write ends with the generation even and the last batch's seq published.
            assert block.generation % 2 == 0 and block.seq == shared._seq == private._seq
        for column in ("value", "status", "source_time"):
            np.testing.assert_array_equal(getattr(private, column), getattr(shared, column))
        assert shared.text == private.text
        # A reload's new table carries the rows and continues the seq, in its own block.
        after = TagDB(names, kinds, shared=True)
        try:
            after.carry_from(shared)
            assert after._shared is not None and after._shared.seq == shared._seq
            np.testing.assert_array_equal(after.value, shared.value)
        finally:
            after.close_shared()
    finally:
        name = shared.shared_name
        shared.close_shared()
    assert not os.path.exists(f"/dev/shm/{name}")
    # Released: the columns are private copies, and the table still works.
    assert shared.shared_name is None and shared.value[3] == 7.0
    assert shared.update(np.array([3]), np.array([8.0])) is not None


def test_a_shared_tag_database_dropped_without_close_removes_its_block():
    db = TagDB(["a", "b"], shared=True)
    name = db.shared_name
    db.update(np.array([0]), np.array([1.0]))
    assert os.path.exists(f"/dev/shm/{name}")
    del db
    gc.collect()  # the writer's seq callback makes a cycle: the collector, not refcounts, frees it
    assert not os.path.exists(f"/dev/shm/{name}")
