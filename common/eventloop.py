"""Which asyncio event loop the server and the simulators run on.

uvloop (libuv under asyncio's API) is the default: a Modbus request costs about half the CPU
it costs on the standard loop (bench/bench_modbus_client.py measures both), and the server
spends most of its time in socket round trips. ``--event-loop asyncio`` runs the standard
loop: the fallback if uvloop misbehaves on some platform, and the baseline of the benches.
The code is loop-agnostic (only standard asyncio APIs). The in-process tests run on asyncio's
loop (pytest-asyncio), the tests that start ``scada run`` or the simulators as processes on
uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

LOOPS = ("uvloop", "asyncio")


class EventLoopError(ValueError):
    """An unknown event loop, or uvloop asked for and not installed."""


DEFAULT = "uvloop"


def run(main: Coroutine[Any, Any, Any], loop: str = DEFAULT) -> Any:
    """``asyncio.run(main)`` on the chosen loop; a clear error for an unknown or missing one."""
    if loop == "asyncio":
        return asyncio.run(main)
    if loop != "uvloop":
        main.close()
        raise EventLoopError(f"unknown event loop {loop!r}: choose one of {', '.join(LOOPS)}")
    try:
        import uvloop
    except ImportError:
        main.close()
        raise EventLoopError(
            "event loop 'uvloop' is not installed (pip install uvloop), or run with --event-loop asyncio"
        ) from None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def add_argument(parser) -> None:
    """The ``--event-loop`` option, the same on every command that serves."""
    parser.add_argument(
        "--event-loop",
        choices=LOOPS,
        default=DEFAULT,
        help=f"asyncio event loop (default {DEFAULT}: about twice the Modbus requests per CPU-second)",
    )
