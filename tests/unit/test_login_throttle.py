"""LoginThrottle's cap on attempts waiting to be checked (review finding 4), with a fake clock."""

from __future__ import annotations

from scada.security.login_throttle import LoginThrottle
from scada.security.settings import LoginSettings


def test_waiting_attempts_are_capped_per_user_and_per_host():
    throttle = LoginThrottle(LoginSettings(), clock=lambda: 0.0, max_waiting=2, max_waiting_per_host=3)
    assert throttle.admit("alice", "10.0.0.1:1000")
    assert throttle.admit("alice", "10.0.0.2:1000")
    assert not throttle.admit("alice", "10.0.0.3:1000")  # alice has two in flight, whoever sends
    assert throttle.admit("bob", "10.0.0.1:1001")
    assert throttle.admit(None, "10.0.0.1:1002")  # an unknown name counts for its host only
    assert not throttle.admit(None, "10.0.0.1:1003")  # the host has three in flight
    throttle.release("alice", "10.0.0.1:1000")
    assert throttle.admit("alice", "10.0.0.3:1000")
    for user, address in [("alice", "10.0.0.2:1000"), ("alice", "10.0.0.3:1000"), ("bob", "10.0.0.1:1001")]:
        throttle.release(user, address)
    throttle.release(None, "10.0.0.1:1002")
    assert throttle.waiting() == 0
    assert throttle._waiting_users == {} and throttle._waiting_hosts == {}  # only attempts in flight are kept
