"""One merge of time-ordered history parts (scada/historian/merge.py): order, tie rule, texts."""

from __future__ import annotations

import numpy as np
import pytest

from scada.historian.compress import StoredBatch
from scada.historian.merge import concat_parts, empty_part, merge_parts, part_from_rows
from scada.historian.store import GOOD, SECOND, HistoryStore

T0 = 1_795_000_000 * SECOND


def part(times, values, status=None, texts=None):
    times = np.asarray(times, np.int64)
    status = np.zeros(len(times), np.uint32) if status is None else np.asarray(status, np.uint32)
    return times, np.asarray(values, np.float64), status, texts


def test_parts_come_out_in_time_order():
    t, v, s, x = merge_parts([part([10, 30, 50], [1, 3, 5]), part([20, 40], [2, 4], [7, 8])], keep="last")
    assert t.tolist() == [10, 20, 30, 40, 50]
    assert v.tolist() == [1, 2, 3, 4, 5]
    assert s.tolist() == [0, 7, 0, 8, 0]
    assert x is None


@pytest.mark.parametrize(("keep", "want"), [("first", [1.0, 20.0, 3.0]), ("last", [1.0, 200.0, 3.0])])
def test_an_equal_time_keeps_the_copy_the_rule_names(keep, want):
    first = part([10, 20], [1, 20], [0, 1])
    second = part([20, 30], [200, 3], [2, 0])
    t, v, s, _ = merge_parts([first, second], keep=keep)
    assert t.tolist() == [10, 20, 30]
    assert v.tolist() == want
    assert s.tolist() == [0, 1 if keep == "first" else 2, 0]


def test_an_equal_time_in_three_parts_keeps_one_point():
    parts = [part([5], [1]), part([5], [2]), part([5], [3])]
    assert merge_parts(parts, keep="first")[1].tolist() == [1]
    assert merge_parts(parts, keep="last")[1].tolist() == [3]


def test_empty_parts_give_typed_empty_columns_or_the_other_part():
    t, v, s, x = merge_parts([], keep="first")
    assert (t.dtype, v.dtype, s.dtype, len(t), x) == (np.int64, np.float64, np.uint32, 0, None)
    only = part([1, 2], [3, 4])
    assert merge_parts([empty_part(), only, empty_part()], keep="last") is only  # no copy


def test_text_columns_follow_their_points():
    num = part([10, 30], [1, 3])
    txt = part([20, 30], [np.nan, np.nan], texts=("open", "closed"))
    t, v, _, x = merge_parts([num, txt], keep="last")
    assert t.tolist() == [10, 20, 30]
    assert x == (None, "open", "closed")
    assert v[0] == 1 and np.isnan(v[1:]).all()
    t, v, _, x = merge_parts([num, txt], keep="first")
    assert x == (None, "open", None) and v[2] == 3


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="keep"):
        merge_parts([part([1], [1])], keep="newest")  # type: ignore[arg-type]


def test_rows_to_parts_and_concatenation():
    t, v, s, x = part_from_rows([(1, None, 0), (2, 2.5, 3)])
    assert t.tolist() == [1, 2] and np.isnan(v[0]) and v[1] == 2.5 and s.tolist() == [0, 3] and x is None
    txt = part_from_rows([(5, "on", 0)], text=True)
    t, v, s, x = concat_parts(part([9], [1]), txt)  # unsorted: first's points, then the other's
    assert t.tolist() == [9, 5] and x == (None, "on") and np.isnan(v[1])


def test_the_store_reads_a_rewritten_point_as_its_merge_will_store_it(tmp_path):
    """Pending rows are later writes: for an equal time they replace the merged point, and a
    read gives the same answer before and after the merge (keep="last")."""
    store = HistoryStore(tmp_path / "h.db", ["a"], merge_rows=10**9, merge_seconds=1e9)
    try:
        one = np.zeros(1, np.int64)
        store.write(StoredBatch(one, np.array([1.0]), np.array([GOOD], np.uint32), np.array([T0])))
        store.merge()
        store.write(StoredBatch(one, np.array([2.0]), np.array([GOOD], np.uint32), np.array([T0])))
        before = store.read_raw("a", T0, T0 + SECOND)
        assert before.values.tolist() == [2.0] and store.bound_before("a", T0) == (T0, 2.0, GOOD)
        store.merge()
        assert store.read_raw("a", T0, T0 + SECOND).values.tolist() == [2.0]
    finally:
        store.close()
