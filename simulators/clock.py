"""Simulated time for the adapters: starts at a chosen instant and runs ``acceleration`` times faster."""

from __future__ import annotations

import time


class SimClock:
    def __init__(self, start_time: float | None = None, acceleration: float = 1.0) -> None:
        self.t0 = time.time() if start_time is None else start_time
        self.m0 = time.monotonic()
        self.acceleration = acceleration

    def now(self) -> float:
        """Simulated seconds since the Unix epoch, UTC."""
        return self.t0 + (time.monotonic() - self.m0) * self.acceleration
