"""A subscription's columnar data change queue (scada.opcua.fastqueue) without a server: what a
publish takes, decoded by asyncua's own ``struct_from_binary``, for each monitoring mode, queue
size, discard policy, trigger and deadband; deleted items; MaxNotificationsPerPublish."""

from __future__ import annotations

import numpy as np
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary

from scada.opcua.datachange import DOUBLE, STRING, notification_body
from scada.opcua.fastqueue import (
    DISABLED,
    OVERFLOW,
    REPORTING,
    SAMPLING,
    DataChangeQueue,
    ItemParams,
    item_params,
    trim,
    trim_overflow,
)

GOOD, BAD = 0, 0x80310000
T = 1_700_000_000_000_000_000


def params(handle: int, mode: int = REPORTING, qsize: int = 1, discard: bool = True, **kw) -> ItemParams:
    return ItemParams(handle, mode, qsize, discard, **kw)


def offer(q: DataChangeQueue, ids, values, status=GOOD, src=None, texts=None) -> int:
    ids = np.asarray(ids, np.int64)
    values = np.asarray(values, np.float64)
    src = np.full(len(ids), T, np.int64) if src is None else np.asarray(src, np.int64)
    t = None
    if texts is not None:
        t = np.empty(len(ids), object)
        t[:] = texts
    return q.offer(ids, values, np.full(len(ids), status, np.uint32), src, T + 1, t)


def published(q: DataChangeQueue, budget: int | None = None) -> list[tuple[int, object, int, int]]:
    """(client handle, value, status, source ns // 1000) of what a publish sends, decoded by asyncua."""
    count, items = q.pop(budget)
    dcn = struct_from_binary(ua.DataChangeNotification, Buffer(notification_body(count, items)))
    assert len(dcn.MonitoredItems) == count
    epoch = np.datetime64("1970-01-01T00:00:00", "us")
    out = []
    for n in dcn.MonitoredItems:
        src = n.Value.SourceTimestamp
        us = int((np.datetime64(src.replace(tzinfo=None), "us") - epoch).astype(np.int64)) if src else 0
        out.append((n.ClientHandle, n.Value.Value.Value, n.Value.StatusCode.value, us))
    return out


def values(q: DataChangeQueue, budget: int | None = None) -> list[tuple[int, object]]:
    return [(h, v) for h, v, _, _ in published(q, budget)]


def test_queue_size_one_keeps_the_last_value_of_each_item():
    q = DataChangeQueue()
    q.add(1, 5, DOUBLE, params(10), None)
    q.add(2, 7, DOUBLE, params(20), None)
    for v in (1.0, 2.0, 3.0):
        offer(q, [5, 7], [v, v + 10])
    assert values(q) == [(10, 3.0), (20, 13.0)]
    assert values(q) == []  # taken


def test_larger_queues_keep_n_per_item_in_order_discarding_the_oldest_or_the_newest_but_one():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=3, discard=True), None)
    q.add(2, 1, DOUBLE, params(2, qsize=3, discard=False), None)
    for v in range(1, 7):
        offer(q, [0, 1], [v, v])
    got = values(q)
    assert [v for h, v in got if h == 1] == [4.0, 5.0, 6.0]
    assert [v for h, v in got if h == 2] == [1.0, 2.0, 6.0]  # the newest replaces the last (Part 4)


def test_a_queue_larger_than_one_that_discards_flags_overflow_where_part_4_says():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=3, discard=True), None)
    q.add(2, 1, DOUBLE, params(2, qsize=3, discard=False), None)
    q.add(3, 2, DOUBLE, params(3, qsize=1), None)  # a buffer of the newest: never flagged
    q.add(4, 3, DOUBLE, params(4, qsize=3), None)  # not overflowed: not flagged
    for v in range(1, 7):
        offer(q, [0, 1, 2], [v, v, v], status=BAD if v == 5 else GOOD)
    offer(q, [3, 3], [1.0, 2.0])
    got = [(h, v, s) for h, v, s, _ in published(q)]
    # DiscardOldest: the oldest kept (the next after the discarded ones) carries the bit.
    assert [(v, s) for h, v, s in got if h == 1] == [(4.0, GOOD | OVERFLOW), (5.0, BAD), (6.0, GOOD)]
    # Otherwise the newest, which replaced the last.
    assert [(v, s) for h, v, s in got if h == 2] == [(1.0, GOOD), (2.0, GOOD), (6.0, GOOD | OVERFLOW)]
    assert [(v, s) for h, v, s in got if h == 3] == [(6.0, GOOD)]
    assert [(v, s) for h, v, s in got if h == 4] == [(1.0, GOOD), (2.0, GOOD)]
    # The bit stays on a Bad value too, and a later overflow moves it to the row kept then.
    for v in range(7, 12):
        offer(q, [0], [v], status=BAD if v == 9 else GOOD)
    assert [(v, s) for h, v, s, _ in published(q)] == [(9.0, BAD | OVERFLOW), (10.0, GOOD), (11.0, GOOD)]


def test_trim_flags_overflow_per_item_in_queue_order():
    slot = np.array([0, 1, 0, 1, 0, 1, 0])
    keep, flag = trim_overflow(slot, np.full(7, 2), np.array([True, False] * 3 + [True]))
    assert keep.tolist() == [1, 4, 5, 6]
    assert flag.tolist() == [False, True, True, False]  # item 0 keeps 4 (flagged), 6; item 1 keeps 1, 5 (flagged)


def test_triggers_and_absolute_deadband():
    q = DataChangeQueue()
    last = (10.0, GOOD, T, None)
    q.add(1, 0, DOUBLE, params(1, trigger=int(ua.DataChangeTrigger.Status)), last)
    q.add(2, 0, DOUBLE, params(2, qsize=10, deadband=1.5), last)
    q.add(3, 0, DOUBLE, params(3, qsize=10, trigger=int(ua.DataChangeTrigger.StatusValueTimestamp)), last)
    q.add(4, 0, DOUBLE, params(4, qsize=10), last)  # StatusValue, no deadband
    offer(q, [0], [11.0])  # +1: within the deadband
    offer(q, [0], [12.0])  # +2 from the last queued (10)
    offer(q, [0], [12.0], src=[T + 5])  # same value, new source time
    offer(q, [0], [12.0], status=BAD, src=[T + 6])  # status change: every trigger
    got = published(q)
    assert [(v, s) for h, v, s, _ in got if h == 1] == [(12.0, BAD)]
    assert [v for h, v, _, _ in got if h == 2] == [12.0, 12.0]
    assert [(v, us) for h, v, _, us in got if h == 3] == [
        (11.0, T // 1000),
        (12.0, T // 1000),
        (12.0, (T + 5) // 1000),
        (12.0, (T + 6) // 1000),
    ]
    assert [v for h, v, _, _ in got if h == 4] == [11.0, 12.0, 12.0]


def test_no_value_is_a_null_variant_and_repeats_of_it_are_not_changes():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=5), (1.0, GOOD, T, None))
    offer(q, [0], [np.nan], status=BAD)
    offer(q, [0], [np.nan], status=BAD)
    offer(q, [0], [2.0])
    assert values(q) == [(1, None), (1, 2.0)]


def test_text_items_compare_their_texts():
    q = DataChangeQueue()
    q.add(1, 0, STRING, params(1, qsize=5), (np.nan, GOOD, T, "a"))
    offer(q, [0], [np.nan], texts=["a"])
    offer(q, [0], [np.nan], texts=["b"])
    offer(q, [0], [np.nan], texts=[""])
    offer(q, [0], [np.nan], texts=[None])
    assert values(q) == [(1, "b"), (1, ""), (1, None)]


def test_sampling_items_queue_without_reporting_and_disabled_ones_do_not_queue():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, mode=SAMPLING, qsize=2), None)
    q.add(2, 0, DOUBLE, params(2, mode=DISABLED), None)
    for v in (1.0, 2.0, 3.0):
        offer(q, [0], [v])
    assert values(q) == []
    q.update(1, params(1, mode=REPORTING, qsize=2))
    assert values(q) == [(1, 2.0), (1, 3.0)]  # what it sampled, bounded by its queue
    q.update(1, params(1, mode=DISABLED, qsize=2))
    offer(q, [0], [4.0])
    assert values(q) == [] and q.n_pending == 0


def test_a_deleted_item_is_not_reported_and_its_rows_and_slot_are_freed():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=5), None)
    q.add(2, 0, DOUBLE, params(2, qsize=5), None)
    offer(q, [0], [1.0])
    q.remove(1)
    offer(q, [0], [2.0])
    assert values(q) == [(2, 1.0), (2, 2.0)]
    assert q.n_pending == 0 and len(q) == 1
    q.add(3, 0, DOUBLE, params(3), None)  # takes the freed slot
    assert q.items.size == 16 and len(q) == 2
    offer(q, [0], [3.0])
    q.remove(2)
    q.remove(3)  # the last item: everything is released at once
    assert q.n_pending == 0 and q.items.size == 0 and q.slot_of == {}


def test_max_notifications_leaves_the_rest_for_the_next_publish_in_order():
    q = DataChangeQueue()
    for h in range(5):
        q.add(h, h, DOUBLE, params(h), None)
    offer(q, range(5), [float(v) for v in range(5)])
    assert values(q, budget=2) == [(0, 0.0), (1, 1.0)]
    assert q.ready() and q.more()  # MoreNotifications
    assert values(q, budget=2) == [(2, 2.0), (3, 3.0)]
    assert q.more()
    assert values(q, budget=2) == [(4, 4.0)]
    assert not q.ready() and not q.more()


def test_more_is_not_set_by_rows_of_sampling_items():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1), None)
    q.add(2, 1, DOUBLE, params(2, mode=SAMPLING), None)
    offer(q, [0, 1], [1.0, 2.0])
    assert values(q, budget=1) == [(1, 1.0)] and not q.more()


def test_an_item_taken_off_the_queue_takes_its_rows_in_order_and_leaves_the_others():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=3), None)
    q.add(2, 1, DOUBLE, params(2, qsize=3), None)
    for v in range(1, 6):
        offer(q, [0, 1], [v, 10 + v])
    rows = q.take(1)
    assert rows is not None
    assert rows.value.tolist() == [3.0, 4.0, 5.0] and rows.status.tolist() == [OVERFLOW, 0, 0]
    assert q.take(1) is None and q.take(99) is None
    assert values(q) == [(2, 13.0), (2, 14.0), (2, 15.0)]


def test_a_client_that_stops_publishing_holds_at_most_its_queue_sizes():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1, qsize=3), None)
    for v in range(20_000):
        offer(q, [0], [float(v)])
    assert q.n_pending <= 2 * 1024
    assert values(q) == [(1, 19997.0), (1, 19998.0), (1, 19999.0)]


def test_trim_keeps_queue_order():
    slot = np.array([0, 1, 0, 1, 0, 2])
    keep = trim(slot, np.array([2, 1, 2, 1, 2, 1]), np.ones(6, bool))
    assert keep.tolist() == [2, 3, 4, 5]


def test_parameters_outside_the_fast_path_are_refused():
    percent = ua.DataChangeFilter(DeadbandType=ua.DeadbandType.Percent, DeadbandValue=5.0)
    assert item_params(2, percent, None, 1, 1, True) is None
    assert item_params(2, None, "1:2", 1, 1, True) is None
    assert item_params(2, ua.AggregateFilter(), None, 1, 1, True) is None
    absolute = ua.DataChangeFilter(
        Trigger=ua.DataChangeTrigger.StatusValueTimestamp, DeadbandType=ua.DeadbandType.Absolute, DeadbandValue=0.5
    )
    assert item_params(2, absolute, "", 9, 0, False) == ItemParams(9, 2, 1, False, 2, 0.5)
    assert item_params(2, ua.ExtensionObject(), None, 9, 4, True) == ItemParams(9, 2, 4, True)


def test_a_reused_slot_starts_fresh_and_a_modified_item_keeps_its_deadband_reference():
    q = DataChangeQueue()
    q.add(1, 0, DOUBLE, params(1), (5.0, GOOD, T, None))
    q.add(9, 1, DOUBLE, params(9), None)  # keeps the queue alive when item 1 goes
    q.remove(1)
    assert values(q) == []  # the publish frees item 1's slot
    q.add(2, 0, DOUBLE, params(2), None)  # the same slot, no value known to its client
    offer(q, [0], [5.0])
    assert values(q) == [(2, 5.0)]
    q.add(3, 2, DOUBLE, params(3, deadband=1.0), (10.0, GOOD, T, None))
    offer(q, [2], [10.8])
    q.add(3, 2, DOUBLE, params(3, deadband=1.0, qsize=2), (10.8, GOOD, T, None))  # ModifyMonitoredItems
    offer(q, [2], [11.5])  # 1.5 from the last queued (10), though 0.7 from the current one
    assert values(q) == [(3, 11.5)]
