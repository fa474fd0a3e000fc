"""The process conditions of alarm instances, recomputed vectorised from the TagDB's columns.

``raw`` is the process condition as the values say now: limits with deadband hysteresis,
states, rate of change, communication loss, expressions. A process alarm whose tag is Bad (or
NaN) keeps its condition: no data neither raises nor clears.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scada import status as st
from scada.alarms.config import LIMIT_CONDITIONS
from scada.alarms.instances import AlarmInstances

COMM_LOSS_CODES = np.array([st.BAD_COMMUNICATION_ERROR, st.BAD_NO_COMMUNICATION], np.uint32)


def bad(status: np.ndarray) -> np.ndarray:
    """Bad statuses (severity bits 10)."""
    return (status & np.uint32(0xC0000000)) == np.uint32(0x80000000)


def usable(status: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Data that may raise or clear a process alarm: a number, with a status not Bad."""
    ok = ~bad(status)
    ok &= ~np.isnan(value)
    return ok


@dataclass(frozen=True, slots=True)
class TagColumns:
    """The TagDB columns an evaluation reads (the arrays themselves, not copies)."""

    value: np.ndarray
    status: np.ndarray
    source_time: np.ndarray


@dataclass(frozen=True, slots=True)
class RateMemory:
    """Per instance, the last usable value and its source time: a rate of change is from them."""

    value: np.ndarray
    time: np.ndarray


def raw_flips(
    instances: AlarmInstances,
    tags_now: TagColumns,
    raw: np.ndarray,
    rate: RateMemory,
    inst: np.ndarray,
    tags: np.ndarray,
    bounds: np.ndarray,
    every: bool,
) -> np.ndarray:
    """The instances among ``inst`` whose raw condition changes (``raw`` is left as it is).

    ``inst`` holds definition k's instances at rows bounds[k]:bounds[k + 1], each beside the tag
    it was reached by (``tags``); ``every``: ``inst`` is every instance once, in order. ``rate``
    takes the new values of the rate-of-change instances.

    The watched tags' values are gathered once for the whole batch (random reads of
    million-row columns are the cost here); each definition reads its slice. Statuses are read
    where a condition needs them (comm loss), else only where the condition would change, to
    check that the data may change it (a number, not Bad): few rows of a batch.
    """
    if not len(inst):
        return inst
    value, status = tags_now.value, tags_now.status
    v_all = value[tags]
    cur_all = raw if every else raw[inst]
    moves = np.zeros(len(inst), bool)  # the condition changes, if the data is usable
    flips = []  # instances whose raw condition changes
    b = bounds.tolist()
    for k, a in enumerate(instances.defs):
        lo, hi = b[k], b[k + 1]
        if lo == hi:
            continue
        sel = inst[lo:hi]
        cur = cur_all[lo:hi]
        if a.condition == "comm_loss":
            s = status[tags[lo:hi]]
            flips.append(sel[((s == COMM_LOSS_CODES[0]) | (s == COMM_LOSS_CODES[1])) != cur])
            continue
        if a.condition == "expression":
            expr = instances.expressions[k]
            if not every:  # reached by each of its changed points
                sel = np.unique(sel)
                cur = raw[sel]
            local = sel - instances.starts[k]
            env = {p: value[tg[local]] for p, tg in zip(expr.points, expr.tags)}
            good = np.ones(len(sel), bool)
            for tg in expr.tags:
                good &= ~bad(status[tg[local]])
            flips.append(sel[good & (expr.evaluate(env) != cur)])
            continue
        v = v_all[lo:hi]
        if a.condition in LIMIT_CONDITIONS:
            assert a.limit is not None, "the loader requires a limit for a limit condition"
            # Hysteresis: an active alarm clears only once the value is past limit -/+ deadband.
            if a.condition in ("high", "high_high"):
                new = v > a.limit
                if a.deadband:
                    new |= cur & (v > a.limit - a.deadband)
            else:
                new = v < a.limit
                if a.deadband:
                    new |= cur & (v < a.limit + a.deadband)
        elif a.condition == "state":
            new = np.isin(v, np.array(a.states, np.float64))
        elif a.condition == "rate_of_change":
            assert a.limit is not None, "the loader requires a limit for a rate of change"
            t = tags_now.source_time[tags[lo:hi]]
            dt = (t - rate.time[sel]) / 1e9
            with np.errstate(invalid="ignore", divide="ignore"):
                speed = np.abs(v - rate.value[sel]) / dt
            new = np.where((dt > 0) & ~np.isnan(rate.value[sel]), speed > a.limit, cur)
            moved = usable(status[tags[lo:hi]], v) & (t != rate.time[sel])
            rate.value[sel[moved]] = v[moved]
            rate.time[sel[moved]] = t[moved]
        else:  # pragma: no cover - the loader knows every condition
            raise AssertionError(a.condition)
        np.not_equal(new, cur, out=moves[lo:hi])
    rows = np.flatnonzero(moves)
    if len(rows):
        flips.append(inst[rows[usable(status[tags[rows]], v_all[rows])]])
    return np.concatenate(flips) if flips else inst[:0]
