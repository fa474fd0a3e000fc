"""ISA-18.2 alarm-system performance metrics, vectorised over journal-like arrays.

The pure functions take parallel numpy arrays (times in int64 ns UTC, alarm-instance keys of
any sortable dtype) and never touch the journal; :func:`metrics_report` reads a time range of
a :class:`~scada.alarms.journal.Journal` and computes all of them.

Definitions (ISA-18.2's monitoring and assessment clause, ISA-TR18.2.5 and EEMUA 191, which
count per 10-minute period):

* **Alarm rate**: announcements (transitions into UNACK_ACTIVE, i.e. what the operator was
  shown: activations, and re-announcements when an alarm leaves SHELVED, SUPPRESSED or
  OUT_OF_SERVICE with its condition active) per fixed 10-minute window. Windows are aligned on
  the clock (multiples of 10 minutes since the epoch: 10:00, 10:10, ...) so that two reports
  agree on them whatever their start; the first and last windows are clipped to the span and
  count only what falls inside it. A burst that straddles a window boundary is split: fixed
  periods are what the ISA-18.2 key performance indicator ("percentage of 10-minute periods
  with more than 10 alarms") is defined on, and what operators compare between shifts.
* **Flood**: a window with *more than* 10 announcements; consecutive flood windows form one
  flood period. Share of time in flood = time covered by flood windows (clipped to the span)
  divided by the span.
* **Most frequent alarms**: the alarm instances (alarm, device) with the most announcements.
* **Chattering**: an alarm instance with 3 or more *activations* within 60 s (first to last
  inclusive). The issue's "three transitions in a minute" is read as three activations, the
  usual ISA-TR18.2.5 measure; every activation counts, shown or not (a shelved chattering
  alarm still chatters, and that is why it was shelved).
* **Stale**: an alarm instance whose condition has been active for more than 24 h at a given
  time, out-of-service instances excepted. The report takes it from the persisted current
  states when nothing was journalled after that time (live metrics), else from the last
  ACTIVATE/CLEAR of each instance in the journal: the engine must journal them in every state,
  shelved and suppressed included (the state table makes them legal there).
* **Time to acknowledge**: from the first announcement of an episode to the ACK that ends it.
  An episode starts at an announcement and ends at the ACK, or unmeasured at a SHELVE,
  SUPPRESS or REMOVE_FROM_SERVICE. Re-activations inside an episode (RTN_UNACK -> ACTIVATE)
  do not restart its clock: the operator has owed the acknowledgement since the first one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from scada.alarms.states import Event, State

if TYPE_CHECKING:
    from scada.alarms.journal import Journal

NS = 1_000_000_000
WINDOW_NS = 600 * NS
FLOOD_THRESHOLD = 10  # a flood is MORE than this many alarms in one window
CHATTER_WINDOW_NS = 60 * NS
CHATTER_COUNT = 3
STALE_NS = 24 * 3600 * NS
ACK_LOOKBACK_NS = 24 * 3600 * NS

# Kinds of row for ack_delays().
ANNOUNCE, ACK, END = 0, 1, 2
_TRANSITION_EVENTS = tuple(e.name for e in Event)
_ENDING = (Event.SHELVE.name, Event.SUPPRESS.name, Event.REMOVE_FROM_SERVICE.name)


def window_counts(
    times: np.ndarray, start_ns: int, end_ns: int, window_ns: int = WINDOW_NS
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``times`` per fixed window over ``[start_ns, end_ns)``.

    Windows are aligned on multiples of ``window_ns`` since the epoch; every window that
    overlaps the span is returned, the first and last clipped to it. Returns (window starts,
    counts), int64.
    """
    if end_ns <= start_ns:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = start_ns // window_ns * window_ns
    n = -(-(end_ns - first) // window_ns)
    t = np.asarray(times, dtype=np.int64)
    t = t[(t >= start_ns) & (t < end_ns)]
    counts = np.bincount((t - first) // window_ns, minlength=n).astype(np.int64)
    return first + np.arange(n, dtype=np.int64) * window_ns, counts


def _clipped(starts: np.ndarray, window_ns: int, start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(starts, start_ns), np.minimum(starts + window_ns, end_ns)


def flood_periods(
    starts: np.ndarray,
    counts: np.ndarray,
    start_ns: int,
    end_ns: int,
    window_ns: int = WINDOW_NS,
    threshold: int = FLOOD_THRESHOLD,
) -> list[dict[str, int]]:
    """Runs of consecutive windows with more than ``threshold`` alarms.

    Each period: ``start_ns``, ``end_ns`` (clipped to the span), ``alarms`` (sum of its
    windows), ``windows``, ``peak`` (most alarms in one of its windows).
    """
    flood = np.asarray(counts) > threshold
    if not flood.any():
        return []
    edges = np.diff(np.concatenate(([0], flood.astype(np.int8), [0])))
    run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end) in windows
    lo, hi = _clipped(np.asarray(starts), window_ns, start_ns, end_ns)
    counts = np.asarray(counts, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(counts)))
    sums = cum[run_end] - cum[run_start]
    # reduceat runs from one run's start to the next one's: zero the calm windows in between.
    peaks = np.maximum.reduceat(np.where(flood, counts, 0), run_start)
    return [
        {"start_ns": int(lo[a]), "end_ns": int(hi[b - 1]), "alarms": int(s), "windows": int(b - a), "peak": int(p)}
        for a, b, s, p in zip(run_start, run_end, sums, peaks)
    ]


def flood_share(
    starts: np.ndarray,
    counts: np.ndarray,
    start_ns: int,
    end_ns: int,
    window_ns: int = WINDOW_NS,
    threshold: int = FLOOD_THRESHOLD,
) -> float:
    """Share (0-1) of ``[start_ns, end_ns)`` covered by windows with more than ``threshold`` alarms."""
    if end_ns <= start_ns:
        return 0.0
    lo, hi = _clipped(np.asarray(starts), window_ns, start_ns, end_ns)
    flood = np.asarray(counts) > threshold
    return float((hi - lo)[flood].sum()) / (end_ns - start_ns)


def top_alarms(keys: np.ndarray, n: int = 10) -> list[tuple[Any, int]]:
    """The ``n`` most frequent keys with their counts; ties in key order."""
    keys = np.asarray(keys)
    if keys.size == 0:
        return []
    uniq, counts = np.unique(keys, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:n]  # np.unique sorted the keys: stable = key order
    return [(_py(uniq[i]), int(counts[i])) for i in order]


def window_peaks(
    keys: np.ndarray, times: np.ndarray, window_ns: int = CHATTER_WINDOW_NS
) -> tuple[np.ndarray, np.ndarray]:
    """For each key, the most of its events inside any window ``[t, t + window_ns]``.

    Vectorised over all keys at once: events and window ends are merged in one sort by (key,
    time), so that the number of events of the same key up to each window end is a cumulative
    sum. Returns (unique keys, peaks).
    """
    keys, times = np.asarray(keys), np.asarray(times, dtype=np.int64)
    if keys.size == 0:
        return keys[:0], np.zeros(0, np.int64)
    uniq, codes = np.unique(keys, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.lexsort((times, codes))
    c, t = codes[order], times[order]
    n = len(c)
    # Data points (kind 0) sort before window ends (kind 1) at equal time: the window is closed.
    all_c = np.concatenate((c, c))
    all_t = np.concatenate((t, t + window_ns))
    kind = np.concatenate((np.zeros(n, np.int8), np.ones(n, np.int8)))
    merged = np.lexsort((kind, all_t, all_c))
    data_before = np.cumsum(kind[merged] == 0)
    pos = np.empty(2 * n, np.int64)
    pos[merged] = np.arange(2 * n)
    # Events of the same key within [t_i, t_i + w]: data up to the window end, minus the i
    # events sorted before event i (all of them are before the window end too).
    in_window = data_before[pos[n:]] - np.arange(n)
    group_start = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))
    return uniq[c[group_start]], np.maximum.reduceat(in_window, group_start)


def chattering(
    keys: np.ndarray, times: np.ndarray, window_ns: int = CHATTER_WINDOW_NS, min_count: int = CHATTER_COUNT
) -> list[tuple[Any, int]]:
    """Keys with ``min_count`` or more events within ``window_ns``, with their peak count.

    Sorted by peak, highest first, then key.
    """
    uniq, peaks = window_peaks(keys, times, window_ns)
    hit = peaks >= min_count
    uniq, peaks = uniq[hit], peaks[hit]
    order = np.argsort(-peaks, kind="stable")
    return [(_py(uniq[i]), int(peaks[i])) for i in order]


def stale_alarms(
    keys: np.ndarray, since_ns: np.ndarray, at_ns: int, threshold_ns: int = STALE_NS, active: np.ndarray | None = None
) -> list[tuple[Any, int]]:
    """Keys active for more than ``threshold_ns`` at ``at_ns``, with their activation time, oldest first."""
    keys, since = np.asarray(keys), np.asarray(since_ns, dtype=np.int64)
    hit = (at_ns - since) > threshold_ns
    if active is not None:
        hit &= np.asarray(active, dtype=bool)
    idx = np.flatnonzero(hit)
    idx = idx[np.argsort(since[idx], kind="stable")]
    return [(_py(keys[i]), int(since[i])) for i in idx]


def ack_delays(keys: np.ndarray, times: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time from the first announcement of each episode to the ACK that ends it.

    ``kinds`` per row: ANNOUNCE, ACK or END (episode closed without acknowledgement). Rows of
    one key are taken in time order (input order on equal times). Returns (indices of the ACK
    rows that close an episode with an announcement, their delays in ns); an ACK with no
    announcement before it (its alarm was announced before the data starts) is left out.
    """
    keys, times, kinds = np.asarray(keys), np.asarray(times, dtype=np.int64), np.asarray(kinds)
    if keys.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.int64)
    _, codes = np.unique(keys, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.lexsort((np.arange(len(keys)), times, codes))
    c, t, k = codes[order], times[order], kinds[order]
    # A new episode starts at a new key or after a row that ended the previous one.
    new = np.concatenate(([True], (c[1:] != c[:-1]) | (k[:-1] != ANNOUNCE)))
    episode = np.cumsum(new) - 1
    first = np.full(int(episode[-1]) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    ann = k == ANNOUNCE
    np.minimum.at(first, episode[ann], t[ann])
    acks = np.flatnonzero(k == ACK)
    start = first[episode[acks]]
    ok = start != np.iinfo(np.int64).max
    return order[acks[ok]], t[acks[ok]] - start[ok]


def delay_stats(
    delays_s: np.ndarray, groups: np.ndarray, deadlines_s: Mapping[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per group (service): count, median, 90th percentile and max in seconds, and how many
    exceeded the group's deadline when one is given (None otherwise)."""
    delays_s, groups = np.asarray(delays_s, dtype=np.float64), np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    if delays_s.size == 0:
        return out
    uniq, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    for i, g in enumerate(uniq):
        d = delays_s[codes == i]
        deadline = None if deadlines_s is None else deadlines_s.get(_py(g))
        out[_py(g)] = {
            "count": int(d.size),
            "median_s": float(np.median(d)),
            "p90_s": float(np.percentile(d, 90)),
            "max_s": float(d.max()),
            "deadline_s": deadline,
            "over_deadline": None if deadline is None else int((d > deadline).sum()),
        }
    return out


def _py(v: Any) -> Any:
    """A numpy scalar as the Python value (str, int), for dict keys and JSON."""
    return v.item() if isinstance(v, np.generic) else v


def _factorize(alarm: np.ndarray, device: np.ndarray, index: dict[tuple[str, str], int]) -> np.ndarray:
    # Instances are (alarm, device) pairs of strings: one dict pass is cheaper than sorting pairs.
    return np.fromiter(
        (index.setdefault((a, d), len(index)) for a, d in zip(alarm, device)), dtype=np.int64, count=len(alarm)
    )


def metrics_report(
    journal: Journal,
    start_ns: int,
    end_ns: int,
    ack_deadlines: dict[str, float] | None = None,
    *,
    window_ns: int = WINDOW_NS,
    flood_threshold: int = FLOOD_THRESHOLD,
    chatter_window_ns: int = CHATTER_WINDOW_NS,
    chatter_count: int = CHATTER_COUNT,
    stale_ns: int = STALE_NS,
    ack_lookback_ns: int = ACK_LOOKBACK_NS,
    top: int = 10,
) -> dict[str, Any]:
    """All the metrics over ``[start_ns, end_ns)`` of a journal, as a JSON-ready dict.

    ``ack_deadlines`` maps a service to its acknowledgement deadline in seconds
    (``Service.ack_deadline_s`` of alarms.yaml). Acknowledgements in the range are matched
    with announcements up to ``ack_lookback_ns`` before it. Stale alarms are evaluated at
    ``end_ns``: from the persisted current states when nothing was journalled since (the live
    case, no scan), else from the whole journal before it (SQLite scans the file).
    """
    index: dict[tuple[str, str], int] = {}
    names = ("time_ns", "alarm", "device", "event", "state", "service")
    cols = journal.columns(start_ns - ack_lookback_ns, end_ns, names=names)
    t, ev, state = cols["time_ns"], cols["event"], cols["state"]
    inst = _factorize(cols["alarm"], cols["device"], index)
    in_range = t >= start_ns
    announce = (state == State.UNACK_ACTIVE.name) & np.isin(ev, _TRANSITION_EVENTS)
    shown = announce & in_range

    starts, counts = window_counts(t[shown], start_ns, end_ns, window_ns)
    keys = list(index)

    def named(pairs, field):
        return [{"alarm": keys[k][0], "device": keys[k][1], field: v} for k, v in pairs]

    activations = in_range & (ev == Event.ACTIVATE.name)

    kinds = np.full(len(t), -1, np.int8)
    kinds[announce] = ANNOUNCE
    kinds[ev == Event.ACK.name] = ACK
    kinds[np.isin(ev, _ENDING)] = END
    rel = kinds >= 0
    rel_idx = np.flatnonzero(rel)
    ack_rows, delays = ack_delays(inst[rel], t[rel], kinds[rel])
    ack_rows = rel_idx[ack_rows]
    measured = t[ack_rows] >= start_ns
    by_service = delay_stats(delays[measured] / NS, cols["service"][ack_rows[measured]], ack_deadlines)

    return {
        "start_ns": int(start_ns),
        "end_ns": int(end_ns),
        "window_s": window_ns / NS,
        "announcements": int(shown.sum()),
        "activations": int(activations.sum()),
        "alarm_rate": {
            "windows": [{"start_ns": int(s), "alarms": int(c)} for s, c in zip(starts, counts)],
            "mean_per_window": float(counts.mean()) if counts.size else 0.0,
            "max_per_window": int(counts.max()) if counts.size else 0,
        },
        "flood": {
            "threshold": flood_threshold,
            "periods": flood_periods(starts, counts, start_ns, end_ns, window_ns, flood_threshold),
            "windows_in_flood": int((counts > flood_threshold).sum()),
            "share_of_time": flood_share(starts, counts, start_ns, end_ns, window_ns, flood_threshold),
        },
        "top_alarms": named(top_alarms(inst[shown], top), "count"),
        "chattering": named(chattering(inst[activations], t[activations], chatter_window_ns, chatter_count), "peak"),
        "stale": _stale_report(journal, end_ns, stale_ns),
        "ack_by_service": by_service,
    }


def _stale_report(journal: Journal, at_ns: int, stale_ns: int) -> list[dict[str, Any]]:
    newest = journal.newest_ns()
    if newest is None or newest < at_ns:
        # Nothing happened after at_ns: the persisted current states are the answer, no scan.
        saved = journal.load_states()
        keys = list(saved)
        since = np.array([saved[k].since_ns or 0 for k in keys], dtype=np.int64)
        state_of = {k: saved[k].state.name for k in keys}
        active = np.array(
            [
                saved[k].active and saved[k].since_ns is not None and saved[k].state is not State.OUT_OF_SERVICE
                for k in keys
            ],
            dtype=bool,
        )
    else:
        # The past: the last ACTIVATE or CLEAR of each instance says its condition, its last row its state.
        cond = journal.last_rows(at_ns, event=(Event.ACTIVATE.name, Event.CLEAR.name))
        state_of = {(r.alarm, r.device): r.state for r in journal.last_rows(at_ns)}
        keys = [(r.alarm, r.device) for r in cond]
        since = np.array([r.time_ns for r in cond], dtype=np.int64)
        active = np.array(
            [r.event == Event.ACTIVATE.name and state_of[k] != State.OUT_OF_SERVICE.name for r, k in zip(cond, keys)],
            dtype=bool,
        )
    return [
        {
            "alarm": keys[i][0],
            "device": keys[i][1],
            "since_ns": t,
            "active_s": (at_ns - t) / NS,
            "state": state_of[keys[i]],
        }
        for i, t in stale_alarms(np.arange(len(keys)), since, at_ns, stale_ns, active)
    ]
