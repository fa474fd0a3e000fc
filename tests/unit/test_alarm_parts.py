"""The alarm engine's parts on their own: the tag lookup of the change batches and the journal
writer's backlog (the engine's behaviour as a whole: test_alarm_engine.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scada.alarms import backlog
from scada.alarms.backlog import JournalWriter
from scada.alarms.journal import Journal, JournalError, JournalRow, StateRecord
from scada.alarms.lookup import TagLookup
from scada.alarms.states import State


def test_lookup_finds_each_instance_beside_its_tag_grouped_by_definition() -> None:
    # Tag 0 feeds nothing, tag 1 instance 0, tag 2 instances 1 and 3 (an expression's point
    # and a limit), tag 3 instance 2. Definition 0 has instances 0-1, definition 1 has 2-3.
    lookup = TagLookup(np.array([1, 2, 3, 2]), np.array([0, 1, 2, 3]), n_tags=4)
    inst, tags, bounds = lookup.affected(np.array([3, 0, 2, 1]), starts=np.array([0, 2, 4]))
    assert inst.tolist() == [0, 1, 2, 3]
    assert tags.tolist() == [1, 2, 3, 2]
    assert bounds.tolist() == [0, 2, 4]


def test_lookup_of_tags_feeding_nothing_is_empty() -> None:
    lookup = TagLookup(np.array([1]), np.array([0]), n_tags=3)
    inst, tags, bounds = lookup.affected(np.array([0, 2]), starts=np.array([0, 1]))
    assert (len(inst), len(tags), bounds.tolist()) == (0, 0, [0, 0])


class FlakyJournal(Journal):
    """A real journal whose writes fail while ``down`` (a disk that is full, then freed)."""

    down = False

    def record(self, rows, states=()) -> None:
        if self.down:
            raise JournalError(self.path, "disk full")
        super().record(rows, states=states)


def row(t: int) -> JournalRow:
    return JournalRow(t, "door", f"LC-{t}", "Dijon", None, "high", 750, "ACTIVATE", "UNACK_ACTIVE")


@pytest.fixture
def journal(tmp_path: Path):
    with FlakyJournal(tmp_path / "alarms.sqlite") as j:
        yield j


def writer_for(journal: Journal, calls: list) -> JournalWriter:
    def states(inst):
        return [((f"a{i}", "dev"), StateRecord(State.UNACK_ACTIVE, active=True)) for i in inst]

    return JournalWriter(
        journal, states, lambda exc: calls.append(("failed", exc.reason)), lambda n, d: calls.append(("back", n, d))
    )


def test_rows_wait_in_order_behind_an_outage_and_are_written_with_their_states(journal) -> None:
    calls: list = []
    w = writer_for(journal, calls)
    w.write([row(1)], [0])
    journal.down = True
    w.write([row(2)], [1])
    journal.down = False
    w.write([row(3)], [2])  # behind the backlog, though the journal writes again
    assert (len(w.backlog), sorted(w.backlog_states), calls) == (2, [1, 2], [("failed", "disk full")])
    assert w.flush()
    assert [r.time_ns for r in journal.query()] == [1, 2, 3]
    assert set(journal.load_states()) == {("a0", "dev"), ("a1", "dev"), ("a2", "dev")}
    assert calls[-1] == ("back", 2, 0) and not w.waiting


def test_a_full_backlog_drops_the_oldest_rows_and_counts_them(journal, monkeypatch) -> None:
    monkeypatch.setattr(backlog, "BACKLOG_ROWS", 2)
    calls: list = []
    w = writer_for(journal, calls)
    journal.down = True
    for t in range(1, 5):
        w.write([row(t)], ())
    assert ([r.time_ns for r in w.backlog], w.dropped) == ([3, 4], 2)
    journal.down = False
    assert w.flush()
    assert [r.time_ns for r in journal.query()] == [3, 4] and calls[-1] == ("back", 2, 2)


def test_a_new_writer_takes_over_the_backlog_with_instances_renumbered(journal) -> None:
    old, new = writer_for(journal, []), writer_for(journal, [])
    journal.down = True
    old.write([row(1)], [0, 1, 2])
    new.take_over(old, {0: 5, 2: 7})  # instance 1 left the configuration
    assert (list(new.backlog), new.backlog_states, new.retry_at) == ([row(1)], {5, 7}, 0.0)
