"""Simulated time for the adapters: starts at a chosen instant and runs ``acceleration`` times faster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any


def start_at(start_time: float | None, origin: float | None, acceleration: float) -> float | None:
    """The simulated time now, when the clock read ``start_time`` at the real instant ``origin``
    (Unix seconds; None: now): a process started after the origin catches up, so that several
    processes given the same start, origin and acceleration share one simulated clock."""
    if start_time is None or origin is None:
        return start_time
    return start_time + (time.time() - origin) * acceleration


class SimClock:
    """Simulated time: ``start_time`` (now if None) when created, ``acceleration`` times faster since."""

    def __init__(self, start_time: float | None = None, acceleration: float = 1.0) -> None:
        self.t0 = time.time() if start_time is None else start_time
        self.m0 = time.monotonic()
        self.acceleration = acceleration

    def now(self) -> float:
        """Simulated seconds since the Unix epoch, UTC."""
        return self.t0 + (time.monotonic() - self.m0) * self.acceleration


class Paced:
    """What every protocol adapter has: simulated time at its pace, a step every
    ``step_interval`` wall-clock seconds, and background tasks that :meth:`stop_tasks` ends."""

    def __init__(self, acceleration: float, step_interval: float, start_time: float | None) -> None:
        self.acceleration = acceleration
        self.step_interval = step_interval
        self.clock = SimClock(start_time, acceleration)
        self._tasks: list[asyncio.Task[None]] = []

    def sim_time(self) -> float:
        """Simulated seconds since the Unix epoch, UTC."""
        return self.clock.now()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` in the background until :meth:`stop_tasks`."""
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop_tasks(self) -> None:
        """Cancel the background tasks and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
