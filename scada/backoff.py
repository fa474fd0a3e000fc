"""The one backoff of the project: capped, jittered exponential delays between attempts.

Drivers reconnecting to a device, the supervisor restarting a task and the historian retrying
a failing store all wait with it, so that nothing hammers a dead peer and many clients that
failed together do not retry in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: delay(n) in [d/2, d], d = min(cap, base * 2**(n-1))."""

    base: float = 0.25
    cap: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts in a row (1: the first failure)."""
        # The exponent is bounded: after ~1,000 failures (hours of a dead peer) 2**n would no
        # longer convert to a float; 2**32 times any sensible base is far beyond any cap.
        d = min(self.cap, self.base * 2 ** min(max(0, failures - 1), 32))
        return d * random.uniform(0.5, 1.0)
