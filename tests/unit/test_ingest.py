"""The drivers' ingest: reports gathered as arrays, each tag's last report stored, one update per flush."""

import asyncio

import numpy as np
import pytest

from scada import status as st
from scada.ingest import Ingest, last_reports, link_lost_status
from scada.tagdb import TEXT, TagDB


class RecordingTagDB(TagDB):
    """A real TagDB that also keeps the batches it was handed, to count and order them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []

    def update(self, ids, values, status=st.GOOD, source_time=None):
        self.calls.append(("update", np.asarray(ids).tolist(), np.asarray(values).tolist(), status, source_time))
        return super().update(ids, values, status, source_time)

    def update_text(self, ids, texts, status=st.GOOD, source_time=None):
        self.calls.append(("text", np.asarray(ids).tolist(), list(texts), status, source_time))
        return super().update_text(ids, texts, status, source_time)


def db(n: int = 6, kinds=None) -> RecordingTagDB:
    return RecordingTagDB([f"t{k}" for k in range(n)], kinds)


def test_the_last_report_of_a_tag_wins_across_batches():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]), st.GOOD, 100)
    ingest.add(np.array([1, 3]), np.array([20.0, 4.0]), st.GOOD, 200)
    assert ingest.flush().tolist() == [0, 2, 1, 3]
    assert tagdb.value[:4].tolist() == [1.0, 20.0, 3.0, 4.0]
    assert tagdb.source_time[:4].tolist() == [100, 200, 100, 200]
    assert len(tagdb.calls) == 1  # one update for both batches


def test_the_last_report_of_a_tag_wins_within_a_batch_with_its_status_and_time():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(
        np.array([4, 0, 4, 4]),
        np.array([1.0, 5.0, 2.0, 3.0]),
        np.array([st.GOOD, st.GOOD, st.GOOD, st.BAD_DEVICE_FAILURE], np.uint32),
        np.array([10, 11, 12, 13]),
    )
    assert ingest.flush().tolist() == [0, 4]  # in the order of the last reports
    assert tagdb.value[4] == 3.0 and tagdb.status[4] == st.BAD_DEVICE_FAILURE and tagdb.source_time[4] == 13
    assert tagdb.value[0] == 5.0 and tagdb.status[0] == st.GOOD and tagdb.source_time[0] == 11


def test_reports_keep_their_order_of_arrival_when_no_tag_repeats():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(np.array([5, 2]), np.array([1.0, 2.0]), st.GOOD, 1)
    ingest.add(np.array([0, 3]), np.array([3.0, 4.0]), st.GOOD, 2)
    ingest.flush()
    assert tagdb.calls == [("update", [5, 2, 0, 3], [1.0, 2.0, 3.0, 4.0], st.GOOD, tagdb.calls[0][4])]
    assert tagdb.calls[0][4].tolist() == [1, 1, 2, 2]


def test_one_status_for_every_report_stays_one_scalar_and_mixed_statuses_become_a_column():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(np.array([0]), np.array([1.0]), st.GOOD, 5)
    ingest.add(np.array([1]), np.array([2.0]), st.GOOD, 5)
    ingest.flush()
    assert tagdb.calls[-1][3] == st.GOOD and tagdb.calls[-1][4] == 5
    ingest.add(np.array([0]), np.array([1.0]), st.GOOD, 6)
    ingest.add(np.array([1, 2]), np.array([2.0, 3.0]), np.array([st.BAD_DEVICE_FAILURE, st.GOOD], np.uint32), 7)
    ingest.flush()
    assert tagdb.calls[-1][3].tolist() == [st.GOOD, st.BAD_DEVICE_FAILURE, st.GOOD]
    assert tagdb.status[:3].tolist() == [st.GOOD, st.BAD_DEVICE_FAILURE, st.GOOD]


def test_an_empty_flush_touches_nothing():
    tagdb = db()
    stored = []
    ingest = Ingest(tagdb, on_stored=stored.append)
    ingest.add(np.array([], np.int64), np.array([]), st.GOOD, 1)
    assert ingest.pending == 0
    assert ingest.flush().size == 0
    assert tagdb.calls == [] and stored == [] and tagdb.updates == 0


def test_text_points_take_the_last_text_of_each_tag():
    tagdb = db(4, [TEXT] * 4)
    ingest = Ingest(tagdb)
    ingest.add_text([1, 2], ["car", "bus"], st.GOOD, 100)
    ingest.add_text(np.array([1, 3]), ["truck", None], np.array([st.GOOD, st.GOOD], np.uint32), np.array([200, 201]))
    assert ingest.flush().size == 0  # no numeric tag stored
    [(call, ids, texts, status, _)] = tagdb.calls
    assert (call, ids, texts, status.tolist()) == ("text", [2, 1, 3], ["bus", "truck", None], [st.GOOD] * 3)
    assert tagdb.text == {1: "truck", 2: "bus", 3: None} and tagdb.source_time[1:4].tolist() == [200, 100, 201]


def test_numbers_and_texts_of_one_flush_are_stored_by_one_call_each_and_reported():
    tagdb = db(4, [0, 0, TEXT, TEXT])
    stored: list[list[int]] = []
    ingest = Ingest(tagdb, on_stored=lambda ids: stored.append(ids.tolist()))
    ingest.add(np.array([0, 1]), np.array([1.0, 2.0]), st.GOOD, 1)
    ingest.add_text([2], ["x"], st.GOOD, 1)
    ingest.add(np.array([0]), np.array([3.0]), st.GOOD, 2)
    ingest.flush()
    assert [c[0] for c in tagdb.calls] == ["update", "text"]
    assert stored == [[1, 0]] and tagdb.value[0] == 3.0


def test_before_flush_adds_its_deferred_values_to_the_same_flush():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.before_flush = lambda: ingest.add(np.array([1]), np.array([9.0]), st.GOOD, 3)
    ingest.add(np.array([0, 1]), np.array([1.0, 2.0]), st.GOOD, 2)
    ingest.flush()
    assert len(tagdb.calls) == 1 and tagdb.value[:2].tolist() == [1.0, 9.0]


def test_link_loss_stores_what_came_before_then_turns_the_tags_bad_keeping_their_values():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(np.array([0, 1]), np.array([1.0, 2.0]), st.GOOD, 1)
    ingest.link_lost(np.array([0, 1]), communicated=True)
    assert tagdb.status[:2].tolist() == [st.BAD_COMMUNICATION_ERROR] * 2
    assert tagdb.value[:2].tolist() == [1.0, 2.0]
    ingest.link_lost(np.array([2, 3]), communicated=False)  # never reached: still "never communicated"
    assert tagdb.status[2:4].tolist() == [st.BAD_NO_COMMUNICATION] * 2
    assert link_lost_status(True) == st.BAD_COMMUNICATION_ERROR
    assert link_lost_status(False) == st.BAD_NO_COMMUNICATION


def test_a_report_whose_columns_do_not_match_its_ids_is_refused_and_nothing_is_lost():
    tagdb = db()
    ingest = Ingest(tagdb)
    ingest.add(np.array([0]), np.array([1.0]), st.GOOD, 1)
    with pytest.raises(ValueError, match="values: 1 entries for 2 ids"):
        ingest.add(np.array([1, 2]), np.array([1.0]), st.GOOD, 1)
    with pytest.raises(ValueError, match="status"):
        ingest.add(np.array([1, 2]), np.array([1.0, 2.0]), np.array([st.GOOD], np.uint32), 1)
    with pytest.raises(ValueError, match="source_time"):
        ingest.add(np.array([1, 2]), np.array([1.0, 2.0]), st.GOOD, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="texts"):
        ingest.add_text([1, 2], ["a"], st.GOOD, 1)
    ingest.flush()
    assert tagdb.value[0] == 1.0 and tagdb.updates == 1


def test_last_reports_positions():
    assert last_reports(np.array([3, 1, 2])) is None
    assert last_reports(np.array([], np.int64)) is None
    assert last_reports(np.array([7, 7, 7])).tolist() == [2]
    assert last_reports(np.array([1, 2, 1, 3, 2])).tolist() == [2, 3, 4]
    scratch = np.empty(8, np.int32)
    assert last_reports(np.array([3, 1, 2]), scratch) is None
    assert last_reports(np.array([1, 2, 1, 3, 2]), scratch).tolist() == [2, 3, 4]
    assert last_reports(np.array([5, 5]), scratch).tolist() == [1]


async def test_the_flush_loop_flushes_until_cancelled():
    tagdb = db()
    ingest = Ingest(tagdb)
    task = asyncio.create_task(ingest.run(0.001))
    ingest.add(np.array([0]), np.array([1.0]), st.GOOD, 1)
    while tagdb.updates == 0:  # waits for the flush itself, not for a time
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert tagdb.value[0] == 1.0 and ingest.pending == 0


def test_without_coalescing_every_report_goes_to_the_tagdb_as_it_came():
    tagdb = db()
    ingest = Ingest(tagdb, coalesce=False)  # for a driver that never repeats an id between flushes
    ingest.add(np.array([2, 0]), np.array([1.0, 2.0]), st.GOOD, 1)
    ingest.add(np.array([1]), np.array([3.0]), st.GOOD, 1)
    ingest.flush()
    assert tagdb.calls[0][1:3] == ([2, 0, 1], [1.0, 2.0, 3.0])
