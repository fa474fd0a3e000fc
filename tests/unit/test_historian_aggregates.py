"""The history aggregates as pure functions (scada/historian/aggregates.py) on literal arrays."""

from __future__ import annotations

import numpy as np
import pytest

from scada.historian.aggregates import (
    BAD_NO_DATA,
    GOOD,
    UNCERTAIN_DATA_SUB_NORMAL,
    from_partials,
    good,
    interpolate,
    partials,
    point_partials,
    time_average,
)

S = 1_000_000_000
BAD = 0x80000000
NAN = float("nan")


def arr(*x, dtype=np.float64):
    return np.array(x, dtype)


def test_good_needs_good_severity_and_a_finite_value():
    status = arr(GOOD, UNCERTAIN_DATA_SUB_NORMAL, BAD, GOOD, dtype=np.uint32)
    assert good(status, arr(1, 2, 3, NAN)).tolist() == [True, False, False, False]


def test_partials_per_tag_and_bucket():
    sid = arr(0, 0, 0, 1, 1, dtype=np.int64)
    t = arr(0, 5, 12, 3, 4, dtype=np.int64)
    v = arr(1, 3, 7, 2, 9)
    s = arr(GOOD, GOOD, GOOD, GOOD, BAD, dtype=np.uint32)
    keys, bucket, n, vsum, vmin, vmax, nbad = partials(sid, t, v, s, 10)
    assert keys.tolist() == [0, 0, 1] and bucket.tolist() == [0, 10, 0]
    assert n.tolist() == [2, 1, 1] and nbad.tolist() == [0, 0, 1]
    assert vsum.tolist() == [4, 7, 2] and vmin.tolist() == [1, 7, 2] and vmax.tolist() == [3, 7, 2]


def test_a_bucket_without_good_values_has_no_minimum():
    _, _, n, vsum, vmin, vmax, nbad = partials(arr(0, dtype=np.int64), arr(1, dtype=np.int64), arr(5),
                                               arr(BAD, dtype=np.uint32), 10)
    assert (n[0], vsum[0], nbad[0]) == (0, 0, 1) and np.isnan(vmin[0]) and np.isnan(vmax[0])


@pytest.mark.parametrize(("aggregate", "want"), [("Average", [2.0, 6.0, NAN]), ("Minimum", [1.0, 6.0, NAN]),
                                                 ("Maximum", [3.0, 6.0, NAN]), ("Count", [2.0, 1.0, 0.0])])
def test_from_partials_per_interval(aggregate, want):
    # Interval 0: two Good points 1 and 3; interval 1: 6 and a Bad one; interval 2: nothing.
    n, nbad, vsum, vmin, vmax = point_partials(arr(1, 3, 6, 100), arr(GOOD, GOOD, GOOD, BAD, dtype=np.uint32))
    values, status = from_partials(arr(0, 0, 1, 1, dtype=np.int64), n, nbad, vsum, vmin, vmax, 3, aggregate)
    np.testing.assert_array_equal(values, want)
    last = GOOD if aggregate == "Count" else BAD_NO_DATA
    assert status.tolist() == [GOOD, UNCERTAIN_DATA_SUB_NORMAL, last]


def test_from_partials_refuses_a_time_based_aggregate():
    with pytest.raises(ValueError, match="TimeAverage"):
        from_partials(arr(0, dtype=np.int64), arr(1), arr(0), arr(1), arr(1), arr(1), 1, "TimeAverage")


def test_interpolate_between_points_held_after_the_last():
    t = arr(10, 20, dtype=np.int64)
    v, s = arr(0, 10), arr(GOOD, GOOD, dtype=np.uint32)
    values, status = interpolate(t, v, s, arr(5, 10, 15, 25, dtype=np.int64), stepped=False)
    np.testing.assert_array_equal(values, [NAN, 0, 5, 10])
    assert status.tolist() == [BAD_NO_DATA, GOOD, GOOD, UNCERTAIN_DATA_SUB_NORMAL]
    stepped, _ = interpolate(t, v, s, arr(15, dtype=np.int64), stepped=True)
    assert stepped.tolist() == [0]


def test_interpolate_without_points_is_no_data():
    values, status = interpolate(arr(dtype=np.int64), arr(), arr(dtype=np.uint32), arr(0, 1, dtype=np.int64), False)
    assert np.isnan(values).all() and status.tolist() == [BAD_NO_DATA, BAD_NO_DATA]


def test_time_average_of_a_ramp_and_a_step():
    t = arr(0, 10 * S, dtype=np.int64)
    v, s = arr(0, 10), arr(GOOD, GOOD, dtype=np.uint32)
    edges = arr(0, 5 * S, dtype=np.int64)
    values, status = time_average(t, v, s, edges, 10 * S, stepped=False)
    np.testing.assert_allclose(values, [2.5, 7.5])
    assert status.tolist() == [GOOD, GOOD]
    values, _ = time_average(t, v, s, edges, 10 * S, stepped=True)
    np.testing.assert_allclose(values, [0, 0])


def test_time_average_leaves_a_bad_segment_out_and_says_uncertain():
    # Good 2 for 5 s, then Bad for 5 s: the average is 2 over the covered half.
    t = arr(0, 5 * S, 10 * S, dtype=np.int64)
    v, s = arr(2, 50, 2), arr(GOOD, BAD, GOOD, dtype=np.uint32)
    values, status = time_average(t, v, s, arr(0, dtype=np.int64), 10 * S, stepped=False)
    np.testing.assert_allclose(values, [2])
    assert status.tolist() == [UNCERTAIN_DATA_SUB_NORMAL]


def test_time_average_after_the_last_point_is_extrapolated():
    values, status = time_average(arr(0, dtype=np.int64), arr(4), arr(GOOD, dtype=np.uint32),
                                  arr(0, dtype=np.int64), 10 * S, stepped=False)
    assert values.tolist() == [4] and status.tolist() == [UNCERTAIN_DATA_SUB_NORMAL]
