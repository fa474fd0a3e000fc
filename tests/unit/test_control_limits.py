"""Token buckets of the control path: per user and per device, refilled at their rate."""

from __future__ import annotations

from scada.control.limits import PRUNE_EVERY, RateLimiter, TokenBuckets
from scada.control.model import ControlSettings, RateLimit


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


def test_emergency_commands_have_a_device_budget_routine_ones_never_use():
    clock = Clock()
    lim = RateLimiter(RateLimit(60, 100), RateLimit(60, 2), clock, emergency_rate=RateLimit(30, 3))
    assert [lim.admit_device("B1") for _ in range(2)] == ["", ""]
    assert lim.admit_device("B1").startswith("device B1 is over its command rate (60/min, burst 2)")
    # The routine budget is spent: the emergency one is whole, and only emergency commands take from it.
    assert [lim.admit_device("B1", emergency=True) for _ in range(3)] == ["", "", ""]
    why = lim.admit_device("B1", emergency=True)
    assert why == "device B1 is over its emergency command rate (30/min, burst 3); retry in 2.0 s"
    assert lim.devices.available("B1") == 0.0 and lim.emergency.available("B2") == 3.0  # per device
    clock.t += 2.0  # the emergency bucket refills at its own rate (one token per 2 s)
    assert lim.admit_device("B1", emergency=True) == "" and lim.admit_device("B1", emergency=True) != ""
    clock.t += 1.0  # one routine token back (one per second): emergency takes did not touch it
    assert lim.admit_device("B1") == ""


def test_emergency_commands_have_a_user_allowance_of_their_own_at_the_user_rate():
    clock = Clock()
    lim = RateLimiter(RateLimit(6, 2), RateLimit(600, 100), clock)
    assert [lim.admit_user("olga") for _ in range(2)] == ["", ""]
    assert lim.admit_user("olga").startswith("user 'olga' is over the command rate (6/min, burst 2)")
    # Her routine attempts (refused ones too) do not block her emergency command...
    assert [lim.admit_user("olga", emergency=True) for _ in range(2)] == ["", ""]
    # ...but a loop of emergency commands is bounded too, at the user's rate.
    why = lim.admit_user("olga", emergency=True)
    assert why == "user 'olga' is over the emergency command rate (6/min, burst 2); retry in 10.0 s"
    assert lim.admit_user("otto", emergency=True) == ""  # per user


def test_the_emergency_rate_defaults_to_the_settings_default():
    lim = RateLimiter(RateLimit(60, 10), RateLimit(20, 4))
    assert lim.emergency.limit == ControlSettings().emergency_rate == RateLimit(10.0, 3)
