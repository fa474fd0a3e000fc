"""The one backoff: bounded for ever, whatever the number of failures in a row."""

from scada.backoff import Backoff


def test_hours_of_failures_still_give_a_capped_delay():
    # 2**n of a dead peer's failure count once overflowed a float (OverflowError) after ~1,000 tries.
    b = Backoff(base=0.5, cap=15.0)
    for failures in (1_024, 1_025, 100_000):
        assert 7.5 <= b.delay(failures) <= 15.0


def test_the_first_failure_waits_about_the_base():
    b = Backoff(base=0.2, cap=1.0)
    assert all(0.1 <= b.delay(n) <= 0.2 for n in (0, 1))
    assert all(0.5 <= b.delay(40) <= 1.0 for _ in range(20))
