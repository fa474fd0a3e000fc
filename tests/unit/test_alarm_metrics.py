"""ISA-18.2 metrics on synthetic data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from scada.alarms import metrics as m
from scada.alarms.journal import Journal, JournalRow, StateRecord
from scada.alarms.states import State

NS = m.NS
MIN = 60 * NS
T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z, on a 10-minute mark
assert T0 % m.WINDOW_NS == 0


# -- pure functions ------------------------------------------------------------------------

def test_window_counts_are_clock_aligned_and_clipped():
    times = T0 + np.array([-1, 0, 5, 599, 600, 1199, 3000]) * NS
    starts, counts = m.window_counts(times, T0 + 300 * NS, T0 + 1500 * NS)
    assert list((starts - T0) // NS) == [0, 600, 1200]  # aligned on the clock, not on the start
    # T0-1 and T0+0/5 s are before the span start (T0+300 s); T0+3000 s after its end
    assert list(counts) == [1, 2, 0]
    assert m.window_counts(times, T0, T0)[0].size == 0


def test_flood_of_twelve_alarms_in_ten_minutes():
    start, end = T0, T0 + 60 * MIN
    flood = T0 + 20 * MIN + np.arange(12) * 45 * NS  # 12 alarms between 10:20:00 and 10:28:15
    calm = T0 + np.array([1, 5, 9, 33, 47]) * MIN
    exactly_ten = T0 + 50 * MIN + np.arange(10) * 30 * NS  # 10 is not a flood: MORE than 10 is
    starts, counts = m.window_counts(np.concatenate((flood, calm, exactly_ten)), start, end)
    assert list(counts) == [3, 0, 12, 1, 1, 10]
    periods = m.flood_periods(starts, counts, start, end)
    assert periods == [{"start_ns": T0 + 20 * MIN, "end_ns": T0 + 30 * MIN, "alarms": 12, "windows": 1, "peak": 12}]
    assert m.flood_share(starts, counts, start, end) == pytest.approx(10 / 60)


def test_consecutive_flood_windows_merge_and_partial_windows_weigh_by_their_overlap():
    start, end = T0 + 5 * MIN, T0 + 35 * MIN  # the first and last windows are half inside
    times = np.concatenate([T0 + w * 10 * MIN + (6 * MIN if w == 0 else 0) + np.arange(11) * NS
                            for w in (0, 1, 3)])
    starts, counts = m.window_counts(times, start, end)
    assert list(counts) == [11, 11, 0, 11]
    periods = m.flood_periods(starts, counts, start, end)
    assert [(p["start_ns"], p["end_ns"], p["alarms"], p["windows"]) for p in periods] == [
        (start, T0 + 20 * MIN, 22, 2), (T0 + 30 * MIN, end, 11, 1)]
    assert m.flood_share(starts, counts, start, end) == pytest.approx((15 + 5) / 30)


def test_top_alarms_orders_by_count_then_key():
    keys = np.array(["c"] * 3 + ["a"] * 5 + ["b"] * 3 + ["d"])
    assert m.top_alarms(keys, 3) == [("a", 5), ("b", 3), ("c", 3)]
    many = np.repeat(np.arange(15), np.arange(1, 16))
    assert [k for k, _ in m.top_alarms(many)] == list(range(14, 4, -1))
    assert m.top_alarms(np.array([], dtype=np.int64)) == []


def test_chattering_three_in_40_s_but_not_three_in_90_s():
    keys = np.array(["fast"] * 3 + ["slow"] * 3 + ["edge"] * 3 + ["once"])
    times = T0 + np.array([0, 20, 40, 0, 45, 90, 100, 130, 160, 5]) * NS
    shuffle = np.random.default_rng(1).permutation(len(keys))
    assert m.chattering(keys[shuffle], times[shuffle]) == [("edge", 3), ("fast", 3)]  # 60 s inclusive
    _, peaks = m.window_peaks(keys, times)
    assert list(peaks) == [3, 3, 1, 2]  # edge, fast, once, slow


def test_chattering_peak_counts_the_busiest_minute():
    t = T0 + np.array([0, 10, 20, 30, 40, 200, 205, 210]) * NS
    assert m.chattering(np.zeros(8, np.int64), t) == [(0, 5)]
    assert m.chattering(np.zeros(2, np.int64), t[:2]) == []


def test_stale_alarms():
    keys = np.array(["old", "young", "old_but_cleared"])
    since = np.array([T0 - 25 * 3600 * NS, T0 - 3600 * NS, T0 - 48 * 3600 * NS])
    got = m.stale_alarms(keys, since, T0, active=np.array([True, True, False]))
    assert got == [("old", T0 - 25 * 3600 * NS)]
    assert [k for k, _ in m.stale_alarms(keys, since, T0)] == ["old_but_cleared", "old"]


def test_ack_delays_episodes():
    A, K, E = m.ANNOUNCE, m.ACK, m.END
    #       key  time  kind
    rows = [(1, 100, A), (1, 130, A), (1, 160, K),  # re-activation before the ack: clock from 100
            (1, 200, A), (1, 205, K),
            (2, 10, K),  # announced before the data starts: not measured
            (2, 50, A), (2, 60, E), (2, 70, A), (2, 100, K),  # shelved: a new episode from 70
            (3, 0, A)]  # never acknowledged
    keys, times, kinds = (np.array(c) for c in zip(*rows))
    idx, delays = m.ack_delays(keys, times, kinds)
    assert sorted(zip(idx.tolist(), delays.tolist())) == [(2, 60), (4, 5), (9, 30)]


def test_delay_stats_per_service():
    delays = np.array([60, 120, 300, 30, 2000.0])
    services = np.array(["lighting", "lighting", "lighting", "traffic", "traffic"], dtype=object)
    stats = m.delay_stats(delays, services, {"traffic": 600})
    assert stats["lighting"]["count"] == 3 and stats["lighting"]["median_s"] == 120
    assert stats["lighting"]["p90_s"] == pytest.approx(np.percentile([60, 120, 300], 90))
    assert stats["lighting"]["deadline_s"] is None and stats["lighting"]["over_deadline"] is None
    assert stats["traffic"]["over_deadline"] == 1 and stats["traffic"]["max_s"] == 2000


# -- the report over a journal -------------------------------------------------------------

def row(t, alarm, device, event, state, service="lighting", user=""):
    return JournalRow(t, alarm, device, "Dijon", 1.0, "high", 750, event, state, user, "", service, "")


def test_metrics_report(tmp_path):
    start, end = T0, T0 + 60 * MIN
    rows = []
    # A flood: 12 different cabinets lose mains between 10:20 and 10:29, all acked 2 minutes later.
    for i in range(12):
        t = T0 + 20 * MIN + i * 45 * NS
        rows.append(row(t, "mains_loss", f"LC-{i:03d}", "ACTIVATE", "UNACK_ACTIVE"))
        rows.append(row(t + 2 * MIN, "mains_loss", f"LC-{i:03d}", "ACK", "ACK_ACTIVE", user="alice"))
    # A door that chatters: 3 activations in 40 s; another that comes back every 45 s (not chattering).
    for dev, step in (("LC-100", 20), ("LC-101", 45)):
        for k in range(3):
            t = T0 + 2 * MIN + k * step * NS
            rows.append(row(t, "door_open", dev, "ACTIVATE", "UNACK_ACTIVE"))
            rows.append(row(t + 5 * NS, "door_open", dev, "CLEAR", "RTN_UNACK"))
        rows.append(row(T0 + 5 * MIN, "door_open", dev, "ACK", "NORMAL", user="bob"))
    # A conflict fault active since yesterday (before the range): stale, acked within the range.
    rows.append(row(T0 - 25 * 3600 * NS, "conflict_fault", "J-DIJ-004", "ACTIVATE", "UNACK_ACTIVE", "traffic"))
    rows.append(row(T0 + 10 * MIN, "conflict_fault", "J-DIJ-004", "NOTE", "UNACK_ACTIVE", "traffic", "carol"))
    # A lamp alarm raised 23 h before the end, acked in 30 s by traffic: not stale yet.
    rows.append(row(end - 23 * 3600 * NS, "lamp_out", "J-DIJ-005", "ACTIVATE", "UNACK_ACTIVE", "traffic"))
    rows.append(row(end - 23 * 3600 * NS + 30 * NS, "lamp_out", "J-DIJ-005", "ACK", "ACK_ACTIVE", "traffic"))
    # Traffic acknowledges a lamp-out of 10:15 after 2,000 s (over its 600 s deadline).
    rows.append(row(T0 + 15 * MIN, "lamp_out", "J-DIJ-006", "ACTIVATE", "UNACK_ACTIVE", "traffic"))
    rows.append(row(T0 + 15 * MIN + 2000 * NS, "lamp_out", "J-DIJ-006", "ACK", "ACK_ACTIVE", "traffic"))
    # An old alarm that is out of service: not stale.
    rows.append(row(T0 - 30 * 3600 * NS, "comm_loss", "LC-200", "ACTIVATE", "UNACK_ACTIVE"))
    rows.append(row(T0 - 29 * 3600 * NS, "comm_loss", "LC-200", "REMOVE_FROM_SERVICE", "OUT_OF_SERVICE"))
    # After the range: ignored (and stale alarms are then reconstructed from the journal).
    rows.append(row(end + NS, "mains_loss", "LC-300", "ACTIVATE", "UNACK_ACTIVE"))

    with Journal(tmp_path / "alarms.db") as j:
        j.record(rows)
        rep = m.metrics_report(j, start, end, {"traffic": 600, "lighting": 1800})

    assert rep["announcements"] == 12 + 6 + 1 and rep["activations"] == 19
    assert [w["alarms"] for w in rep["alarm_rate"]["windows"]] == [6, 1, 12, 0, 0, 0]
    assert rep["alarm_rate"]["max_per_window"] == 12
    assert rep["flood"]["periods"] == [
        {"start_ns": T0 + 20 * MIN, "end_ns": T0 + 30 * MIN, "alarms": 12, "windows": 1, "peak": 12}]
    assert rep["flood"]["share_of_time"] == pytest.approx(1 / 6)
    top = rep["top_alarms"]
    assert top[:2] == [{"alarm": "door_open", "device": "LC-100", "count": 3},
                       {"alarm": "door_open", "device": "LC-101", "count": 3}]
    assert len(top) == 10
    assert rep["chattering"] == [{"alarm": "door_open", "device": "LC-100", "peak": 3}]
    assert [(s["alarm"], s["device"], s["state"]) for s in rep["stale"]] == [
        ("conflict_fault", "J-DIJ-004", "UNACK_ACTIVE")]
    assert rep["stale"][0]["active_s"] == pytest.approx(26 * 3600)
    light, traffic = rep["ack_by_service"]["lighting"], rep["ack_by_service"]["traffic"]
    # lighting: 12 mains losses in 120 s; the doors acked at 10:05, their first activation at 10:02
    assert light["count"] == 14 and light["median_s"] == 120 and light["over_deadline"] == 0
    assert light["max_s"] == 180
    # traffic: only the 2,000 s ack is in the range (the 30 s one was yesterday)
    assert traffic["count"] == 1 and traffic["median_s"] == 2000 and traffic["over_deadline"] == 1


def test_metrics_report_of_an_empty_journal(tmp_path):
    with Journal(tmp_path / "alarms.db") as j:
        rep = m.metrics_report(j, T0, T0 + 20 * MIN)
    assert rep["announcements"] == 0 and rep["flood"]["periods"] == [] and rep["flood"]["share_of_time"] == 0
    assert [w["alarms"] for w in rep["alarm_rate"]["windows"]] == [0, 0]
    assert rep["top_alarms"] == rep["chattering"] == rep["stale"] == [] and rep["ack_by_service"] == {}


def test_stale_alarms_now_come_from_the_persisted_states(tmp_path):
    """Live metrics (nothing journalled after the end): no scan, the current states answer."""
    day = 24 * 3600 * NS
    with Journal(tmp_path / "alarms.db") as j:
        j.record([row(T0 - 2 * day, "conflict_fault", "J-DIJ-004", "ACTIVATE", "UNACK_ACTIVE", "traffic")],
                 states={("conflict_fault", "J-DIJ-004"): StateRecord(State.UNACK_ACTIVE, True, False, T0 - 2 * day)})
        j.record([row(T0 - 3 * day, "comm_loss", "LC-200", "REMOVE_FROM_SERVICE", "OUT_OF_SERVICE")],
                 states={("comm_loss", "LC-200"): StateRecord(State.OUT_OF_SERVICE, True, True, T0 - 3 * day)})
        j.record([row(T0 - day // 2, "door_open", "LC-001", "ACTIVATE", "SHELVED")],
                 states={("door_open", "LC-001"): StateRecord(State.SHELVED, True, True, T0 - 2 * day)})
        j.save_states({("lamp_out", "J-DIJ-005"): StateRecord(State.NORMAL, False, True, None)})
        rep = m.metrics_report(j, T0 - 10 * MIN, T0)
    assert [(s["alarm"], s["device"], s["state"], s["active_s"]) for s in rep["stale"]] == [
        ("conflict_fault", "J-DIJ-004", "UNACK_ACTIVE", 2 * 86400), ("door_open", "LC-001", "SHELVED", 2 * 86400)]
