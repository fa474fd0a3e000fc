"""Rate limits of the control path: token buckets per user and per device (pure, no I/O).

A stuck HMI (a key held down, a script in a loop) must not flood the field: each user and each
device has a bucket of ``burst`` tokens refilled at ``per_minute``, or is refused
(BadTooManyOperations). Every attempt takes from its user's bucket (a flood of refusals stays
bounded); a command takes from its device's only when it is about to write (after the
interlocks and the communication check: a refused attempt costs the field nothing). A group
action's or a schedule's per-device commands do not take from the user's bucket (the group
counts once, in scada/control/groups.py); the Scheduler draws on a device budget of its own
(key "<device> (Scheduler)", scada/control/pipeline.py), so that operators and schedules cannot
starve each other.

An emergency command (``emergency: true``, the fire brigade's EmergencyLower) has budgets that
routine commands never touch, so that a few Raise/Lower cannot leave a bollard unable to take
it: per device, its own buckets (``control.emergency_rate``, 3 then 10 per minute by default);
per user, its own allowance at the user's rate (key "<user> (emergency)"). Why a separate user
allowance rather than the user's bucket: that bucket counts every attempt, refusals too, so an
operator whose HMI is stuck in a loop of refused Raises (or who has just clicked a group action
ten times) would be refused the emergency command exactly when it is needed. A stuck HMI
sending the emergency command in a loop is still bounded, twice: by its own user allowance and
by each device's emergency bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from scada.control.model import ControlSettings, RateLimit

# A bucket that has refilled completely says nothing a new one would not: dropped, so that the
# table stays as small as the users and devices that commanded within the last burst's refill.
PRUNE_EVERY = 1024  # takes between two sweeps of the full buckets
EMERGENCY_RATE = ControlSettings().emergency_rate  # control.emergency_rate's default


class TokenBuckets:
    """One bucket per key (a user, a device), all with the same ``limit``."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._rate = limit.per_minute / 60.0  # tokens per second
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._takes = 0

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._tokens.get(key, (float(self.limit.burst), now))
        return min(float(self.limit.burst), tokens + (now - at) * self._rate)

    def available(self, key: str) -> float:
        return self._level(key, self.clock())

    def take(self, key: str) -> bool:
        """Take one token for ``key``: False (nothing taken) when its bucket is empty."""
        now = self.clock()
        level = self._level(key, now)
        if level < 1.0:
            return False
        self._tokens[key] = (level - 1.0, now)
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:
            self._prune(now)
        return True

    def give_back(self, key: str) -> None:
        """Return a token taken for a command that was then refused by another bucket."""
        now = self.clock()
        self._tokens[key] = (min(float(self.limit.burst), self._level(key, now) + 1.0), now)

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0: it has one)."""
        missing = 1.0 - self.available(key)
        return 0.0 if missing <= 0 else (missing / self._rate if self._rate > 0 else float("inf"))

    def _prune(self, now: float) -> None:
        full = float(self.limit.burst)
        for key in [k for k in self._tokens if self._level(k, now) >= full]:
            del self._tokens[key]

    def __len__(self) -> int:
        return len(self._tokens)


class RateLimiter:
    """The limits of the control path: per user and per device, and the emergency commands'
    own per device (and per user: key "<user> (emergency)" in the users' buckets)."""

    def __init__(
        self,
        user_rate: RateLimit,
        device_rate: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        emergency_rate: RateLimit = EMERGENCY_RATE,
    ) -> None:
        self.users = TokenBuckets(user_rate, clock)
        self.devices = TokenBuckets(device_rate, clock)
        self.emergency = TokenBuckets(emergency_rate, clock)

    def admit(self, user: str | None, device: str) -> str:
        """Take a token for ``user`` (None: a group's or a schedule's command, not counted per
        user) and one for ``device``; "" when admitted, else why not (nothing is taken)."""
        if user is not None and not self.users.take(user):
            return (
                f"user {user!r} is over the command rate ({self.users.limit.per_minute:g}/min, "
                f"burst {self.users.limit.burst}); retry in {self.users.retry_after(user):.1f} s"
            )
        if not self.devices.take(device):
            if user is not None:
                self.users.give_back(user)
            return (
                f"device {device} is over its command rate ({self.devices.limit.per_minute:g}/min, "
                f"burst {self.devices.limit.burst}); retry in {self.devices.retry_after(device):.1f} s"
            )
        return ""

    def admit_user(self, user: str, emergency: bool = False) -> str:
        """Take a token for ``user`` (an emergency command: from the user's emergency
        allowance): "" when admitted, else why not."""
        key = f"{user} (emergency)" if emergency else user
        if self.users.take(key):
            return ""
        what = "emergency command rate" if emergency else "command rate"
        return (
            f"user {user!r} is over the {what} ({self.users.limit.per_minute:g}/min, "
            f"burst {self.users.limit.burst}); retry in {self.users.retry_after(key):.1f} s"
        )

    def admit_device(self, device: str, emergency: bool = False) -> str:
        """Take a token for ``device`` (a command about to write; an emergency command: from the
        device's emergency bucket): "" when admitted, else why not."""
        buckets = self.emergency if emergency else self.devices
        if buckets.take(device):
            return ""
        what = "emergency command rate" if emergency else "command rate"
        return (
            f"device {device} is over its {what} ({buckets.limit.per_minute:g}/min, "
            f"burst {buckets.limit.burst}); retry in {buckets.retry_after(device):.1f} s"
        )
