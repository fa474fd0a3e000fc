"""What a test, or a fixture shared by several tests, left running on its event loop."""

from __future__ import annotations

import asyncio


async def tasks_left(grace: float = 1.0) -> list[str]:
    """The tasks of the running loop, other than the caller's, still pending after ``grace``
    seconds (given to the ones that are ending); they are cancelled, and named in the result."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=grace)
        pending = [t for t in pending if not t.done()]
    names = [t.get_name() + ": " + repr(t.get_coro()) for t in pending]
    for t in pending:
        t.cancel()
    return names
