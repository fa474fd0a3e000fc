"""Token buckets of the control path: per user and per device, refilled at their rate."""

from __future__ import annotations

from scada.control.limits import PRUNE_EVERY, RateLimiter, TokenBuckets
from scada.control.model import RateLimit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_gives_its_burst_then_refills_at_its_rate():
    clock = Clock()
    b = TokenBuckets(RateLimit(per_minute=60, burst=3), clock)
    assert [b.take("u") for _ in range(4)] == [True, True, True, False]
    assert round(b.retry_after("u"), 6) == 1.0
    clock.t += 0.5
    assert not b.take("u")
    clock.t += 0.5
    assert b.take("u") and not b.take("u")
    clock.t += 3600
    assert [b.take("u") for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_keys_have_their_own_buckets_and_full_ones_are_pruned():
    clock = Clock()
    b = TokenBuckets(RateLimit(per_minute=600, burst=1), clock)
    assert b.take("a") and b.take("b") and not b.take("a")
    for k in range(PRUNE_EVERY):
        clock.t += 1.0  # every bucket refills between two takes
        assert b.take(f"k{k}")
    assert len(b) < 4  # only the last takes' buckets are kept


def test_the_limiter_takes_from_both_or_from_neither():
    clock = Clock()
    lim = RateLimiter(RateLimit(60, 2), RateLimit(60, 1), clock)
    assert lim.admit("u", "D1") == ""
    why = lim.admit("u", "D1")
    assert why.startswith("device D1 is over its command rate (60/min, burst 1)")
    assert lim.users.available("u") == 1.0  # the user's token came back
    assert lim.admit("u", "D2") == ""
    assert lim.admit("u", "D3").startswith("user 'u' is over the command rate (60/min, burst 2)")
    assert lim.devices.available("D3") == 1.0  # nothing taken from the device
    assert lim.admit(None, "D3") == ""  # a group's per-device command: only the device counts
