"""The last stored points at start-up: a store with no point answers without a query per tag
(a new 1M-tag city spent 28 s of its start on two indexed queries per tag)."""

from __future__ import annotations

from scada.historian.store import GOOD, SECOND, HistoryStore

from .test_historian_store import T0, sb

NAMES = [f"t{i}" for i in range(500)]


def count_statements(store: HistoryStore) -> list[str]:
    """The SQL statements the store's reader runs from now on."""
    seen: list[str] = []
    store._reader.file.db.set_trace_callback(seen.append)
    return seen


def test_an_empty_store_has_no_last_point_and_asks_once_per_table(tmp_path):
    store = HistoryStore(tmp_path / "history.db", NAMES, merge_rows=10**9, merge_seconds=1e9)
    try:
        seen = count_statements(store)
        ids, values, status, times = store.last_points()
        assert len(ids) == len(values) == len(status) == len(times) == 0
        assert len([s for s in seen if s.lstrip().upper().startswith("SELECT")]) <= 2
        # Once a point is stored (merged, then pending), it is found again.
        store.write(sb([7], [1.5], [T0]))
        store.merge()
        store.write(sb([9], [2.5], [T0 + SECOND]))
        ids, values, status, times = store.last_points()
        assert ids.tolist() == [7, 9] and values.tolist() == [1.5, 2.5] and status.tolist() == [GOOD, GOOD]
        assert times.tolist() == [T0, T0 + SECOND]
    finally:
        store.close()
