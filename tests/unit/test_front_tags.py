"""The front's TagMirror: the core's rows from shared memory, its batches from the channel,
and the publisher running on it as on the tag database itself."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from asyncua import ua

from scada import status as st
from scada.front import tags as front_tags
from scada.front.tags import TagMirror
from scada.opcua.publisher import Publisher, TagValue
from scada.tagdb import ANALOG, DISCRETE, TEXT, ChangeBatch, TagDB
from tests.integration.helpers import DEADLINE, ROOT, until

NAMES = ["a/power", "a/lamps_on", "a/last_error", "a/mode", "b/power", "b/last_error"]
KINDS = [ANALOG, DISCRETE, TEXT, ANALOG, ANALOG, TEXT]
VTYPES = [
    ua.VariantType.Double,
    ua.VariantType.Boolean,
    ua.VariantType.String,
    ua.VariantType.Int32,
    ua.VariantType.Double,
    ua.VariantType.String,
]


@pytest.fixture
def core():
    """A shared TagDB (the core's) and a TagMirror of it; the block is gone afterwards."""
    db = TagDB(NAMES, KINDS, shared=True)
    name = db.shared_name
    assert name is not None
    mirror = TagMirror(NAMES, KINDS, name)
    yield db, mirror
    mirror.close()
    db.close_shared()
    assert not os.path.exists(f"/dev/shm/{name}"), "the shared block leaked"


def drain(consumer) -> list[ChangeBatch]:
    return [consumer.get_nowait() for _ in range(consumer.queue.qsize())]


def test_the_mirror_offers_the_tag_database_surface(core):
    db, mirror = core
    assert len(mirror) == len(db) and list(mirror.names) == NAMES
    assert mirror.kind.tolist() == KINDS
    assert mirror.id_of("a/mode") == 3 and mirror.ids_of(["b/power", "a/power"]).tolist() == [4, 0]
    with pytest.raises(KeyError, match="unknown tag 'nope'"):
        mirror.id_of("nope")
    db.update(np.array([0, 3]), np.array([1.5, 2.0]), st.GOOD, 1_000)
    assert mirror.value[0] == 1.5 and mirror.status[3] == st.GOOD and mirror.source_time[0] == 1_000
    assert mirror.server_time[0] == db.server_time[0]
    with pytest.raises(ValueError, match="read-only"):
        mirror.status[0] = st.BAD_COMMUNICATION_ERROR
    ours, theirs = mirror.snapshot(), db.snapshot()
    assert ours.seq == theirs.seq == 1
    for column in ("ids", "values", "status", "source_time"):
        np.testing.assert_array_equal(getattr(ours, column), getattr(theirs, column))
    part = mirror.snapshot(np.array([3, 0]))
    assert part.ids.tolist() == [3, 0] and part.values.tolist() == [2.0, 1.5]
    consumer = mirror.subscribe("opcua", maxsize=4)
    assert mirror.consumers == (consumer,)
    mirror.unsubscribe(consumer)
    assert mirror.consumers == ()


def test_a_batch_the_snapshot_holds_is_never_delivered_after_it(core):
    db, mirror = core
    consumer = mirror.subscribe("opcua")
    b1 = db.update(np.array([0]), np.array([1.0]), st.GOOD, 1_000)
    mirror.receive(b1)  # queued, not yet taken
    b2 = db.update(np.array([0, 4]), np.array([2.0, 5.0]), st.GOOD, 2_000)  # still in the channel
    snap = mirror.snapshot()
    assert snap.seq == 2 and snap.values[0] == 2.0
    assert drain(consumer) == []  # b1 was queued before the snapshot: it would take row 0 back to 1.0
    mirror.receive(b2)
    assert drain(consumer) == [] and mirror.skipped == 1
    b3 = db.update(np.array([0]), np.array([3.0]), st.GOOD, 3_000)
    mirror.receive(b3)
    assert drain(consumer) == [b3]
    assert mirror.received == 3


def test_a_batch_newer_than_part_of_a_chunked_snapshot_is_delivered_for_those_rows_only(core, monkeypatch):
    """The core writes between two chunk copies: the rows copied before it get the batch, the
    rows copied after it (which hold it already) do not."""
    db, mirror = core
    monkeypatch.setattr(front_tags, "CHUNK_ROWS", 2)  # chunks: rows 0-1, 2-3, 4-5
    consumer = mirror.subscribe("opcua")
    copy = mirror._copy
    written: list[ChangeBatch] = []

    def copy_then_the_core_writes(rows, out):
        seq = copy(rows, out)
        if not written:  # after the first chunk
            written.append(db.update(np.array([0, 4]), np.array([7.0, 8.0]), st.GOOD, 5_000))
        return seq

    monkeypatch.setattr(mirror, "_copy", copy_then_the_core_writes)
    snap = mirror.snapshot()
    assert snap.values[0] != 7.0 and snap.values[4] == 8.0 and snap.seq == 0
    mirror.receive(written[0])
    [delivered] = drain(consumer)
    assert delivered.ids.tolist() == [0] and delivered.values.tolist() == [7.0] and delivered.seq == 1


def test_a_late_text_batch_catches_the_text_up_without_going_back(core):
    db, mirror = core
    consumer = mirror.subscribe("opcua")
    t1 = db.update_text([2], ["door open"], st.GOOD, 1_000)  # in the channel when the snapshot is taken
    b2 = db.set_status(np.array([2]), st.BAD_COMMUNICATION_ERROR, source_time=2_000)
    snap = mirror.snapshot()
    assert snap.texts is None  # no text received yet
    assert snap.status[2] == st.BAD_COMMUNICATION_ERROR
    mirror.receive(t1)
    [late] = drain(consumer)
    # The text of t1, with the status and time the snapshot gave (not t1's older Good).
    assert late.ids.tolist() == [2] and late.texts == ("door open",)
    assert late.status.tolist() == [st.BAD_COMMUNICATION_ERROR] and late.source_time.tolist() == [2_000]
    mirror.receive(b2)
    [late] = drain(consumer)
    assert late.texts == ("door open",) and late.status.tolist() == [st.BAD_COMMUNICATION_ERROR]
    assert mirror.text == {2: "door open"} == db.text


def test_resync_takes_the_core_texts_and_makes_each_consumer_resnapshot(core):
    db, mirror = core
    consumer = mirror.subscribe("opcua")
    db.update_text([5], ["fault"])
    mirror.resync(dict(db.text))
    assert mirror.text == {5: "fault"} and mirror.resyncs == 1
    assert consumer.overflowed
    [wake] = drain(consumer)  # an empty queue is woken: its reader must not wait for a change
    assert len(wake) == 0
    # A full queue already wakes its reader: the flag alone, nothing lost, nothing raised.
    full = mirror.subscribe("full", maxsize=1)
    mirror.receive(db.update(np.array([0]), np.array([1.0])))
    mirror.resync({})
    assert full.overflowed and full.queue.qsize() == 1 and mirror.text == {}


async def test_a_publisher_on_the_mirror_resyncs_after_the_core_dropped_batches(core):
    db, mirror = core
    attrs = [TagValue() for _ in VTYPES]
    pub = Publisher(mirror, attrs, VTYPES)
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: pub.published == len(NAMES), DEADLINE, "the first snapshot")
        db.update(np.array([0]), np.array([42.0]), st.GOOD, 9_000)  # dropped by the core's link
        db.update_text([2], ["lost"])
        mirror.resync(dict(db.text))
        await until(lambda: pub.resyncs == 1 and pub.published == 2 * len(NAMES), DEADLINE, "the resync snapshot")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert attrs[0].value.Value.Value == 42.0 and attrs[2].value.Value.Value == "lost"


async def test_caught_up_waits_until_the_batches_received_are_what_a_read_shows(core, monkeypatch):
    """A command's answer follows its confirming batch on the channel, but the publisher takes
    batches in its own task: caught_up(mirror.seq) is the point where a Read (the published
    columns) shows every batch received so far (scada/opcua/server.py HmiServer._command)."""
    db, mirror = core
    attrs = [TagValue() for _ in VTYPES]
    pub = Publisher(mirror, attrs, VTYPES)
    assert await pub.caught_up(10**9, DEADLINE)  # not running: nothing would ever catch up, no wait
    notified: list[float] = []

    async def watcher(handle, dv):  # a monitored item on asyncua's path
        notified.append(dv.Value.Value)

    attrs[0].datachange_callbacks[1] = watcher
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: pub.published == len(NAMES), DEADLINE, "the first snapshot")
        for v in (1.0, 2.0, 3.0):  # received in a burst, before the publisher's task runs again
            mirror.receive(db.update(np.array([0]), np.array([v]), st.GOOD))
        assert pub.current(0).Value.Value != 3.0 and mirror.seq == db.seq
        assert await pub.caught_up(mirror.seq, DEADLINE)
        # What a Read serves, and what the subscriptions' next notifications hold.
        assert pub.current(0).Value.Value == 3.0 and attrs[0].value.Value.Value == 3.0
        assert notified[-3:] == [1.0, 2.0, 3.0]
        assert pub.published_seq == db.seq
        # A batch the mirror does not offer, its rows already in the published snapshot, whose
        # seq is above the snapshot's (the core wrote between two chunk copies): the publisher,
        # idle on an empty queue, has nothing left to publish.
        monkeypatch.setattr(front_tags, "CHUNK_ROWS", 2)  # chunks: rows 0-1, 2-3, 4-5
        copy, written = mirror._copy, []

        def copy_then_the_core_writes(rows, out):
            seq = copy(rows, out)
            if not written:  # after the first chunk
                written.append(db.update(np.array([4]), np.array([9.0]), st.GOOD))
            return seq

        monkeypatch.setattr(mirror, "_copy", copy_then_the_core_writes)
        mirror.resync(dict(db.text))  # the publisher takes a full snapshot
        await until(lambda: pub.resyncs == 1, DEADLINE, "the resync snapshot")
        [late] = written
        mirror.receive(late)  # every row of it in the snapshot: not offered again
        assert mirror.skipped == 1 and pub.published_seq < late.seq
        assert await pub.caught_up(late.seq, DEADLINE)
        assert pub.current(4).Value.Value == 9.0 and pub.late_catch_ups == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_caught_up_gives_up_after_its_timeout_and_is_released_when_the_publisher_stops(core):
    db, mirror = core
    attrs = [TagValue() for _ in VTYPES]
    pub = Publisher(mirror, attrs, VTYPES)
    stuck = asyncio.Event()

    async def callback(handle, dv):  # a watcher that holds the publisher in its batch
        await stuck.wait()

    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: pub.published == len(NAMES), DEADLINE, "the first snapshot")
        attrs[0].datachange_callbacks[1] = callback
        mirror.receive(db.update(np.array([0]), np.array([5.0]), st.GOOD))
        await until(lambda: pub.published == len(NAMES) + 1, DEADLINE, "the batch taken")
        # The timeout is the behaviour under test: a publisher that far behind is not waited for.
        assert not await pub.caught_up(mirror.seq, 0.05)
        assert pub.late_catch_ups == 1
        waiting = asyncio.create_task(pub.caught_up(mirror.seq, DEADLINE))
        await until(lambda: pub._seq_waiters, DEADLINE, "the waiter registered")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await waiting  # released by the stop, not by its timeout
        assert pub.late_catch_ups == 1 and not pub._seq_waiters
    finally:
        stuck.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def state(pub: Publisher, tag: int) -> tuple:
    dv = pub.current(tag)
    return dv.Value.Value, dv.Value.VariantType, dv.StatusCode.value, dv.SourceTimestamp


async def test_a_publisher_fed_by_the_mirror_publishes_what_it_publishes_fed_by_the_tagdb():
    """The same changes, reaching one publisher through the TagDB directly and another through
    shared memory and forwarded batches (late, as a channel delivers them): the same final
    values, and no watched tag's notifications ever go back in time."""
    db = TagDB(NAMES, KINDS, shared=True)
    assert db.shared_name is not None
    mirror = TagMirror(NAMES, KINDS, db.shared_name)
    direct_attrs, mirrored_attrs = [TagValue() for _ in VTYPES], [TagValue() for _ in VTYPES]
    direct, mirrored = Publisher(db, direct_attrs, VTYPES), Publisher(mirror, mirrored_attrs, VTYPES)
    seen: dict[str, list[list]] = {"direct": [[] for _ in NAMES], "mirrored": [[] for _ in NAMES]}
    for key, attrs in (("direct", direct_attrs), ("mirrored", mirrored_attrs)):
        for tag, attr in enumerate(attrs):

            async def callback(handle, dv, key=key, tag=tag):
                seen[key][tag].append(dv.SourceTimestamp)

            attr.datachange_callbacks[1] = callback
    channel = db.subscribe("front", maxsize=10_000)  # the core's link: what it forwards, in order
    rng = random.Random(13)
    tasks = [asyncio.create_task(direct.run()), asyncio.create_task(mirrored.run())]
    try:
        t = 1_000
        for step in range(400):
            t += 1_000
            op = rng.random()
            if op < 0.6:
                ids = np.array(sorted(rng.sample([0, 1, 3, 4], rng.randint(1, 4))))
                db.update(ids, np.array([float(rng.randint(0, 5)) for _ in ids]), st.GOOD, t)
            elif op < 0.8:
                db.update_text([rng.choice([2, 5])], [rng.choice(["a", "b", None])], st.GOOD, t)
            else:
                code = rng.choice([st.GOOD, st.BAD_COMMUNICATION_ERROR, st.UNCERTAIN_LAST_USABLE_VALUE])
                db.set_status(np.array(rng.sample(range(6), 2)), code, source_time=t)
            # The channel lags by a few batches, and the publishers run in between.
            while channel.queue.qsize() > rng.randint(0, 5):
                mirror.receive(channel.get_nowait())
            if step % 7 == 0:
                await asyncio.sleep(0)
        while channel.queue.qsize():
            mirror.receive(channel.get_nowait())
        await until(lambda: direct.consumer.queue.empty() and mirrored.consumer.queue.empty(), DEADLINE, "both queues empty")
        await asyncio.sleep(0)  # the last batch taken is applied before the next get
        await until(lambda: all(state(direct, i) == state(mirrored, i) for i in range(len(NAMES))), DEADLINE, "same rows")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        mirror.close()
        db.close_shared()
    assert direct.resyncs == mirrored.resyncs == 0
    for tag in range(len(NAMES)):
        times = [s for s in seen["mirrored"][tag] if s is not None]
        assert times == sorted(times), f"{NAMES[tag]} went back in time on the mirror"
        assert seen["mirrored"][tag][-1:] == seen["direct"][tag][-1:]


# A front process taking full snapshots while the core writes: rows where value == source_time.
SNAPSHOTS = """
import json, sys
import numpy as np
from scada.front.tags import TagMirror
n = int(sys.argv[2])
mirror = TagMirror([f"t{i}" for i in range(n)], np.zeros(n, np.uint8), sys.argv[1])
bad = 0
for _ in range(100):
    snap = mirror.snapshot()
    bad += int((snap.values != snap.source_time).sum())
mirror.close()
print(json.dumps({"bad": bad}))
"""


def test_a_front_process_takes_consistent_snapshots_while_the_core_writes():
    n = 100_000  # several chunks
    db = TagDB([f"t{i}" for i in range(n)], shared=True)
    assert db.shared_name is not None
    db.update(np.arange(n), np.zeros(n), st.GOOD, 0)  # every row: value == source time
    proc = subprocess.Popen(
        [sys.executable, "-c", SNAPSHOTS, db.shared_name, str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        x = 0
        while proc.poll() is None:
            x += 1
            ids = np.arange((x * 5_000) % n, (x * 5_000) % n + 5_000)
            db.update(ids, np.full(len(ids), float(x)), st.GOOD, x)
            time.sleep(0.0002)  # a poll's batch, then the next one: the core does not write nonstop
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        db.close_shared()
    assert proc.returncode == 0, err
    assert json.loads(out) == {"bad": 0} and err == ""
    assert x > 1, "the core never wrote while the front read"
