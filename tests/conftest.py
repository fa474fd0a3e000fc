"""Fixtures shared by every test: nothing may leak asyncio tasks or threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (after a short grace for threads that are ending)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        # asyncio_N: the event loop's default executor, shut down by pytest-asyncio when it closes
        # the test's loop, which happens after this fixture's teardown.
        left = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"test left threads running: {[t.name for t in left]}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks():
    """Fail an async test that leaves asyncio tasks pending on its loop."""
    yield
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=1.0)
        pending = [t for t in pending if not t.done()]
    names = [t.get_name() + ": " + repr(t.get_coro()) for t in pending]
    for t in pending:
        t.cancel()
    assert not pending, f"test left asyncio tasks pending: {names}"
