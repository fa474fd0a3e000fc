"""A synthetic field for a server under bench: tags changed at a steady rate, each new value the
machine's CLOCK_MONOTONIC in milliseconds at the change, so that a client in another process
reads the field-change-to-client latency from the value itself (node's ``process.hrtime`` and
Python's ``time.monotonic`` read the same clock)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np


def now_ms() -> float:
    """CLOCK_MONOTONIC in milliseconds: the value a change carries."""
    return time.monotonic_ns() / 1e6


@dataclass
class FieldStats:
    """What the field did: ticks run, values changed, ticks that started more than a tick late."""

    ticks: int = 0
    changes: int = 0
    late_ticks: int = 0


async def run_field(
    write: Callable[[np.ndarray, float], Awaitable[None] | None], n: int, rate: float, tick_s: float, stats: FieldStats
) -> None:
    """Change ``n`` items ``rate`` times a second each, spread over ticks of ``tick_s``: every tick
    calls ``write(positions, now_ms())`` once with the next slice of ``range(n)`` (one batch, as a
    driver's poll would) and awaits what it returns, if anything (a server whose writes are
    coroutines). Runs until cancelled; a late tick is counted, never made up twice."""
    if n == 0 or rate <= 0:
        await asyncio.Event().wait()
    per_tick = min(n, max(1, round(n * rate * tick_s)))  # ids never repeat within a batch
    order = np.arange(n, dtype=np.int64)
    pos = 0
    due = time.monotonic()
    while True:
        due += tick_s
        delay = due - time.monotonic()
        if delay < -tick_s:
            stats.late_ticks += 1
            due = time.monotonic()  # behind: go on from now rather than bursting to catch up
        await asyncio.sleep(max(0.0, delay))
        chunk = np.take(order, np.arange(pos, pos + per_tick), mode="wrap")
        pos = (pos + per_tick) % n
        pending = write(chunk, now_ms())
        if pending is not None:
            await pending
        stats.ticks += 1
        stats.changes += per_tick


def serve_until_sigterm(
    serve: Callable[[FieldStats], Coroutine[Any, Any, None]],
    run: Callable[[Coroutine[Any, Any, None]], object] = asyncio.run,
) -> int:
    """The main of a server under bench: ``serve(stats)`` on the loop ``run`` gives until SIGTERM
    (the way the bench stops it), then the field's statistics as the ``RESULT`` line."""
    stats = FieldStats()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None, "run() runs main as a task"
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await serve(stats)
        except asyncio.CancelledError:  # SIGTERM
            pass

    run(main())
    print("RESULT " + json.dumps(vars(stats)), flush=True)
    return 0
