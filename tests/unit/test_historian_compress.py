"""Historian compression on known signals, and against a scalar reference on random walks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from scada import status as st
from scada.historian.compress import Compressor, StoredBatch, deviation_from_percent
from scada.tagdb import ANALOG, DISCRETE, TEXT, ChangeBatch

S = 1_000_000_000  # ns per second
T0 = 1_795_000_000 * S


def batch(ids, values, status=st.GOOD, times=None, texts=None) -> ChangeBatch:
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    n = len(ids)
    return ChangeBatch(0, ids, np.broadcast_to(np.asarray(values, np.float64), (n,)).copy(),
                       np.broadcast_to(np.asarray(status, np.uint32), (n,)).copy(),
                       np.broadcast_to(np.asarray(times, np.int64), (n,)).copy(), 0, texts)


def feed(c: Compressor, tag: int, values, status=None, t0=T0, dt=S) -> StoredBatch:
    """One row per batch, as a TagDB would deliver a tag's changes over time."""
    out = []
    for k, v in enumerate(values):
        s = st.GOOD if status is None else status[k]
        out.append(c.compress(batch([tag], [v], s, t0 + k * dt)))
    return StoredBatch.concat(out)


def points(b: StoredBatch, tag: int | None = None) -> list[tuple[float, int]]:
    """(seconds after T0, value) of the stored points, of one tag if given."""
    m = slice(None) if tag is None else b.ids == tag
    return [(round((t - T0) / S, 6), v) for t, v in zip(b.times[m].tolist(), b.values[m].tolist())]


# -- known signals -----------------------------------------------------------------------

def test_ramp_stores_two_points():
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    stored = feed(c, 0, [2.0 * k for k in range(100)])
    assert points(stored) == [(0, 0.0)]
    assert points(c.flush()) == [(99, 198.0)]
    assert len(c.flush()) == 0  # nothing held any more


def test_noise_within_deviation_stores_only_the_first():
    rng = np.random.default_rng(1)
    noise = 10.0 + rng.uniform(-0.2, 0.2, 500)
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    stored = feed(c, 0, noise)
    assert points(stored) == [(0, noise[0])]
    # The last value received is held, not lost: flush (or pending, for reads) gives it.
    assert points(c.pending()) == [(499, noise[-1])]
    assert points(c.flush()) == [(499, noise[-1])]


def test_step_stores_the_point_before_and_the_point_after():
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    stored = feed(c, 0, [0.0] * 50 + [10.0] * 50)
    assert points(stored) == [(0, 0.0), (49, 0.0), (50, 10.0)]
    assert points(c.flush()) == [(99, 10.0)]


def test_deadband_quantises_but_keeps_the_step_shape():
    rng = np.random.default_rng(2)
    wobble = list(5.0 + rng.uniform(-0.05, 0.05, 30))
    c = Compressor(1, deviation=0.0, deadband=0.1, kind=ANALOG)  # lossless door after the deadband
    stored = feed(c, 0, wobble + [8.0, 8.02, 7.99])
    # Within the deadband every value is the first one: a flat line, then the step.
    assert points(stored) == [(0, wobble[0]), (29, wobble[0]), (30, 8.0)]
    assert points(c.flush()) == [(32, 8.0)]


def test_deviation_zero_keeps_every_change_as_interpolation_sees_it():
    c = Compressor(1, deviation=0.0, deadband=0.0, kind=ANALOG)
    values = [0.0, 1.0, 3.0, 3.0, 3.0, 2.0]
    stored = StoredBatch.concat([feed(c, 0, values), c.flush()])
    t = np.array([p[0] for p in points(stored)])
    v = np.array([p[1] for p in points(stored)])
    assert np.allclose(np.interp(np.arange(len(values)), t, v), values)
    assert (3, 3.0) not in points(stored)  # the middle of a flat run is not needed


def test_status_change_is_stored_and_resets_the_door():
    bad = st.BAD_COMMUNICATION_ERROR
    status = [st.GOOD] * 20 + [bad] * 10 + [st.GOOD] * 10
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    stored = feed(c, 0, [1.0] * 40, status)
    assert points(stored) == [(0, 1.0), (19, 1.0), (20, 1.0), (29, 1.0), (30, 1.0)]
    assert stored.status.tolist() == [st.GOOD, st.GOOD, bad, bad, st.GOOD]


def test_nan_value_with_the_same_status_is_a_change():
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    stored = feed(c, 0, [1.0, 1.0, math.nan, math.nan, 2.0])
    assert [p[0] for p in points(stored)] == [0, 1, 2, 4]


def test_discrete_is_stored_on_every_change():
    c = Compressor(1, deviation=0.0, deadband=0.0, kind=DISCRETE)
    stored = feed(c, 0, [0, 1, 1, 0, 0, 3, 1])
    assert points(stored) == [(0, 0.0), (1, 1.0), (3, 0.0), (5, 3.0), (6, 1.0)]
    assert len(c.flush()) == 0  # nothing is ever held


def test_text_points_are_stored_on_change_of_text_or_status():
    c = Compressor(2, deviation=0.0, deadband=0.0, kind=np.array([TEXT, ANALOG]))
    texts = ["timeout", "timeout", "refused", "refused"]
    out = [c.compress(batch([0, 1], [math.nan, float(k)], times=T0 + k * S, texts=(txt, None)))
           for k, txt in enumerate(texts)]
    out.append(c.compress(batch([0], [math.nan], st.BAD_COMMUNICATION_ERROR, T0 + 9 * S, texts=("refused",))))
    stored = StoredBatch.concat(out)
    text_rows = [(x, int(t - T0) // S) for i, x, t in zip(stored.ids.tolist(), stored.texts, stored.times.tolist()) if i == 0]
    assert text_rows == [("timeout", 0), ("refused", 2), ("refused", 9)]
    assert all(x is None for i, x in zip(stored.ids.tolist(), stored.texts) if i == 1)


def test_two_tags_interleaved_and_a_tag_twice_in_one_batch():
    ramp = [2.0 * k for k in range(40)]
    step = [0.0] * 20 + [10.0] * 20
    one_by_one = Compressor(2, deviation=0.5, deadband=0.0, kind=ANALOG)
    a = feed(one_by_one, 0, ramp)
    b = feed(one_by_one, 1, step)
    expected = {0: points(a), 1: points(b)}
    # The same rows in one batch, the two tags interleaved, each tag 40 times.
    together = Compressor(2, deviation=0.5, deadband=0.0, kind=ANALOG)
    ids = np.tile([0, 1], 40)
    values = np.column_stack([ramp, step]).ravel()
    times = T0 + np.repeat(np.arange(40), 2) * S
    stored = together.compress(batch(ids, values, st.GOOD, times))
    assert {0: points(stored, 0), 1: points(stored, 1)} == expected
    assert points(stored, 1) == [(0, 0.0), (19, 0.0), (20, 10.0)]
    for tag in (0, 1):
        assert np.all(np.diff(stored.times[stored.ids == tag]) > 0)


def test_times_stay_strictly_increasing_per_tag():
    c = Compressor(1, deviation=0.0, deadband=0.0, kind=ANALOG)
    # A status change published with the last report's source time (TagDB.set_status keeps it).
    stored = StoredBatch.concat([c.compress(batch([0], [1.0], st.GOOD, T0)),
                                 c.compress(batch([0], [1.0], st.BAD_COMMUNICATION_ERROR, T0)),
                                 c.compress(batch([0], [2.0], st.GOOD, T0 - 5 * S))])
    assert stored.times.tolist() == [T0, T0 + 1, T0 + 2]


def test_heartbeat_stores_a_quiet_tag():
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG, max_interval_ns=10 * S)
    stored = feed(c, 0, [3.0] * 35)
    # A beat closes the door on the held snapshot: one point per beat.
    assert [p[0] for p in points(stored)] == [0, 9, 18, 27]
    assert len(c.heartbeat(T0 + 30 * S)) == 0  # stored 3 s ago
    # Due (27 + 10 <= 40): the held snapshot is stored; from it the next beat is not due yet.
    assert points(c.heartbeat(T0 + 40 * S)) == [(34, 3.0)]
    assert points(c.heartbeat(T0 + 44 * S)) == [(44, 3.0)]  # nothing held: the value again, now
    assert len(c.heartbeat(T0 + 50 * S)) == 0


def test_disabled_tags_are_ignored():
    c = Compressor(2, deviation=np.array([-1.0, 0.5]), deadband=0.0, kind=ANALOG)
    stored = c.compress(batch([0, 1], [1.0, 2.0], times=T0))
    assert stored.ids.tolist() == [1]
    assert c.received == 1


def test_prime_continues_the_history():
    c = Compressor(1, deviation=0.5, deadband=0.0, kind=ANALOG)
    c.prime([0], [5.0], [st.GOOD], [T0])
    stored = feed(c, 0, [5.1, 5.2], t0=T0 - S)  # a clock behind the stored history
    assert len(stored) == 0
    assert c.pending().times.tolist() == [T0 + 2]  # after the stored point, never before


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="one entry per tag"):
        Compressor(3, deviation=np.zeros(2), deadband=0.0, kind=ANALOG)
    with pytest.raises(ValueError, match="deadband"):
        Compressor(1, deviation=0.1, deadband=-1.0, kind=ANALOG)
    with pytest.raises(ValueError, match="NaN"):
        Compressor(1, deviation=math.nan, deadband=0.0, kind=ANALOG)


def test_deviation_from_percent():
    assert deviation_from_percent(np.array([1.0, -1.0]), np.array([300.0, 50.0])).tolist() == [3.0, -1.0]


# -- against a scalar reference ------------------------------------------------------------

@dataclass
class _Tag:
    has: bool = False
    av: float = math.nan
    at: int = 0
    as_: int = 0
    held: bool = False
    hv: float = math.nan
    ht: int = 0
    hs: int = 0
    lo: float = -math.inf
    hi: float = math.inf


class Reference:
    """The algorithm of the module docstring, one row at a time, written plainly."""

    def __init__(self, dev, db, kind, maxint):
        self.dev, self.db, self.kind, self.maxint = dev, db, kind, maxint
        self.tags = [_Tag() for _ in dev]

    def feed(self, i: int, v: float, s: int, t: int) -> list[tuple[int, float, int, int]]:
        g = self.tags[i]
        out = []
        if g.has:
            last = g.ht if g.held else g.at
            if t <= last:
                t = last + 1
        cv, cs = (g.hv, g.hs) if g.held else (g.av, g.as_)
        vnan, cnan = math.isnan(v), math.isnan(cv)
        beat = self.maxint[i] > 0 and t - g.at >= self.maxint[i]
        force = not g.has or s != cs or vnan != cnan or (beat and not g.held)

        def archive_row():
            out.append((i, v, s, t))
            g.has, g.av, g.at, g.as_ = True, v, t, s
            g.held, g.lo, g.hi = False, -math.inf, math.inf

        if self.kind[i] != ANALOG:
            if force or (v != cv and not (vnan and cnan)):
                archive_row()
            return out
        if force:
            if g.held:
                out.append((i, g.hv, g.hs, g.ht))
            archive_row()
            return out
        if vnan:
            return out
        if abs(v - cv) <= self.db[i]:
            v = cv
        e = self.dev[i]
        span = (t - g.at) * 1e-9
        lo = max(g.lo, (v - g.av - e) / span)
        hi = min(g.hi, (v - g.av + e) / span)
        if lo > hi or beat:
            out.append((i, g.hv, g.hs, g.ht))
            g.av, g.at, g.as_ = g.hv, g.ht, g.hs
            span = (t - g.at) * 1e-9
            lo = (v - g.av - e) / span
            hi = (v - g.av + e) / span
        g.lo, g.hi = lo, hi
        g.held, g.hv, g.ht, g.hs = True, v, t, s
        return out


def _per_tag(rows):
    by: dict[int, list] = {}
    for i, v, s, t in rows:
        by.setdefault(i, []).append((t, None if math.isnan(v) else v, s))
    return by


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_the_scalar_reference_on_random_walks(seed):
    rng = np.random.default_rng(seed)
    n = 40
    kind = np.where(rng.random(n) < 0.2, DISCRETE, ANALOG).astype(np.uint8)
    dev = np.where(rng.random(n) < 0.15, 0.0, rng.uniform(0.1, 2.0, n))
    db = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 0.5, n))
    maxint = np.where(rng.random(n) < 0.3, rng.integers(5, 60, n) * S, 0)
    vec = Compressor(n, dev, db, kind, maxint)
    ref = Reference(dev.tolist(), db.tolist(), kind.tolist(), maxint.tolist())
    level = rng.normal(0, 5, n)
    status_now = np.zeros(n, np.uint32)
    t = T0
    expected, got = [], []
    for _ in range(150):
        size = int(rng.integers(1, 60))
        ids = rng.integers(0, n, size)  # repeats within a batch on purpose
        level[ids] += rng.normal(0, 0.6, size)
        values = np.where(kind[ids] == DISCRETE, np.round(level[ids]) % 3, level[ids])
        flip = rng.random(size) < 0.03
        status_now[ids[flip]] ^= np.uint32(st.BAD_COMMUNICATION_ERROR)
        values = np.where(rng.random(size) < 0.01, np.nan, values)
        # Times advance per batch with jitter; some rows arrive late or with equal times.
        times = t + rng.integers(-2 * S, S, size)
        t += int(rng.integers(0, 3 * S))
        status = status_now[ids]
        got.append(vec.compress(batch(ids, values, status, times)))
        for i, v, s, tt in zip(ids.tolist(), values.tolist(), status.tolist(), times.tolist()):
            expected.extend(ref.feed(i, v, s, tt))
    got_all = StoredBatch.concat(got)
    rows = list(zip(got_all.ids.tolist(), got_all.values.tolist(), got_all.status.tolist(), got_all.times.tolist()))
    assert _per_tag(rows) == _per_tag(expected)
    assert vec.stored == len(expected)
    # Every tag's stored points are in strictly increasing time.
    for pts in _per_tag(rows).values():
        assert all(a[0] < b[0] for a, b in zip(pts, pts[1:]))
