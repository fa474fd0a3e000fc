"""History aggregates as pure functions on numpy arrays (OPC 10000-13 definitions).

No database here: :mod:`scada.historian.reader` fetches the points or the rollup rows and
calls these; the writer calls :func:`partials` to compute the rollups it upserts. See
:mod:`scada.historian.store` for what each aggregate means and which status it gives.
"""

from __future__ import annotations

import numpy as np

GOOD = 0x00000000
UNCERTAIN_DATA_SUB_NORMAL = 0x40A40000
BAD_NO_DATA = 0x809B0000
_SEVERITY = np.uint32(0xC0000000)

AGGREGATES = ("Average", "TimeAverage", "Minimum", "Maximum", "Count", "Interpolative")
# Those computed from per-bucket partials (count, sum, min, max): rollups or raw points.
ROLLUP_AGGREGATES = ("Average", "Minimum", "Maximum", "Count")

Partials = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def good(status: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which points count as Good data: Good severity and a finite value."""
    return ((np.asarray(status, np.uint32) & _SEVERITY) == 0) & np.isfinite(values)


def partials(sid: np.ndarray, t: np.ndarray, v: np.ndarray, s: np.ndarray, width: int) -> Partials:
    """Per (tag, bucket) aggregates of rows sorted by (tag, time): keys, n, sum, min, max, nbad.

    ``n``, ``sum``, ``min`` and ``max`` are those of the Good values (min/max NaN when there is
    none); ``nbad`` counts the others. Buckets are ``width`` wide, aligned on multiples of it.
    """
    bucket = t - t % width
    new = np.ones(len(t), bool)
    new[1:] = (sid[1:] != sid[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    ok = good(s, v)
    n = np.add.reduceat(ok.astype(np.int64), starts)
    total = np.diff(np.append(starts, len(t)))
    vsum = np.add.reduceat(np.where(ok, v, 0.0), starts)
    vmin = np.fmin.reduceat(np.where(ok, v, np.nan), starts)
    vmax = np.fmax.reduceat(np.where(ok, v, np.nan), starts)
    return sid[starts], bucket[starts], n, vsum, vmin, vmax, total - n


def point_partials(v: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each raw point as its own partial: n, nbad, sum, min, max (for :func:`from_partials`)."""
    ok = good(s, v)
    kept = np.where(ok, v, np.nan)
    return ok.astype(np.int64), (~ok).astype(np.int64), np.where(ok, v, 0.0), kept, kept


def from_partials(
    key: np.ndarray,
    n: np.ndarray,
    nbad: np.ndarray,
    vsum: np.ndarray,
    vmin: np.ndarray,
    vmax: np.ndarray,
    k: int,
    aggregate: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Average, Minimum, Maximum or Count of ``k`` intervals from partials; ``key`` is each
    partial's interval (0..k-1). Returns (values, status).

    Status: Uncertain_DataSubNormal when non-Good values were left out of an interval,
    Bad_NoData when it has no Good value (Count then says 0 with the count's status).
    """
    key = key.astype(np.int64)
    cnt = np.bincount(key, weights=n, minlength=k)[:k]
    bad = np.bincount(key, weights=nbad, minlength=k)[:k]
    status = np.where(bad > 0, UNCERTAIN_DATA_SUB_NORMAL, GOOD).astype(np.uint32)
    if aggregate == "Count":
        return cnt, status
    if aggregate == "Average":
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.bincount(key, weights=vsum, minlength=k)[:k] / cnt
    elif aggregate in ("Minimum", "Maximum"):
        values = np.full(k, np.nan)
        if aggregate == "Minimum":
            np.fmin.at(values, key, vmin)
        else:
            np.fmax.at(values, key, vmax)
    else:
        raise ValueError(f"{aggregate!r} is not computed from partials: one of {', '.join(ROLLUP_AGGREGATES)}")
    empty = cnt == 0
    values[empty] = np.nan
    status[empty] = BAD_NO_DATA
    return values, status


def interpolate(
    t: np.ndarray, v: np.ndarray, s: np.ndarray, edges: np.ndarray, stepped: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Value at each edge from the points on either side (Interpolative): (values, status).

    Linear between two Good points (held with ``stepped``); an exact point is its own value
    and status; a Good point without a Good next one is held, Uncertain; Bad_NoData before
    the first point.
    """
    k = len(edges)
    values = np.full(k, np.nan)
    status = np.full(k, BAD_NO_DATA, np.uint32)
    if len(t) == 0:
        return values, status
    j = np.searchsorted(t, edges, "right") - 1
    has = j >= 0
    jj = np.clip(j, 0, len(t) - 1)
    nxt = np.minimum(jj + 1, len(t) - 1)
    has_next = has & (jj + 1 < len(t))
    exact = has & (t[jj] == edges)
    ok = good(s, v)
    p_good, n_good = ok[jj], ok[nxt] & has_next
    values[has] = v[jj][has]
    status[has] = s[jj][has]
    sloped = has & ~exact & p_good & n_good & (not stepped)
    if sloped.any():
        a, b = jj[sloped], nxt[sloped]
        frac = (edges[sloped] - t[a]) / (t[b] - t[a])
        values[sloped] = v[a] + (v[b] - v[a]) * frac
        status[sloped] = GOOD
    # A Good prior point without a Good next one: held, not quite certain (extrapolated).
    held = has & ~exact & p_good & ~n_good
    status[held] = UNCERTAIN_DATA_SUB_NORMAL
    return values, status


def time_average(
    t: np.ndarray, v: np.ndarray, s: np.ndarray, edges: np.ndarray, end: int, stepped: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted average per interval over the Good parts of the stored signal.

    The signal is linear between two Good points (stepped when ``stepped``, or when the next
    point is not Good), held after the last point; a non-Good point's segment is left out.
    Integrals are evaluated at the interval boundaries from cumulative sums (no Python loop).
    """
    k = len(edges)
    values = np.full(k, np.nan)
    status = np.full(k, BAD_NO_DATA, np.uint32)
    if len(t) == 0:
        return values, status
    origin = int(edges[0])
    x = (t - origin) * 1e-9
    ok = good(s, v)
    vz = np.where(ok, v, 0.0)
    m = len(t)
    seg = np.append(np.diff(x), np.inf)
    slope = np.zeros(m)
    if not stepped and m > 1:
        both = ok[:-1] & ok[1:]
        slope[:-1] = np.where(both, (vz[1:] - vz[:-1]) / np.where(seg[:-1] > 0, seg[:-1], 1.0), 0.0)
    full = np.where(ok[:-1], seg[:-1] * (vz[:-1] + 0.5 * slope[:-1] * seg[:-1]), 0.0)
    dur = np.where(ok[:-1], seg[:-1], 0.0)
    c_int = np.concatenate([[0.0], np.cumsum(full)])
    c_dur = np.concatenate([[0.0], np.cumsum(dur)])
    bounds = np.append((edges - origin) * 1e-9, (end - origin) * 1e-9)
    j = np.searchsorted(x, bounds, "right") - 1
    jj = np.clip(j, 0, m - 1)
    d = np.where(j >= 0, bounds - x[jj], 0.0)
    g = (j >= 0) & ok[jj]
    f_int = np.where(j >= 0, c_int[jj], 0.0) + np.where(g, d * (vz[jj] + 0.5 * slope[jj] * d), 0.0)
    f_dur = np.where(j >= 0, c_dur[jj], 0.0) + np.where(g, d, 0.0)
    covered = np.diff(f_dur)
    length = np.diff(bounds)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.diff(f_int) / covered
    has = covered > 0
    values[has] = avg[has]
    # Fully covered by Good data between stored points: Good; partly, or beyond the last point
    # (held value, extrapolated): Uncertain.
    extrapolated = bounds[1:] > x[-1]
    status[has] = np.where(
        (covered[has] >= length[has] * (1 - 1e-12)) & ~extrapolated[has], GOOD, UNCERTAIN_DATA_SUB_NORMAL
    )
    return values, status
