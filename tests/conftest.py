"""Fixtures shared by every test: nothing may leak asyncio tasks or threads."""

from __future__ import annotations

import threading
import time

import pytest

from tests.leaks import tasks_left


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
    names = await tasks_left()
    assert not names, f"test left asyncio tasks pending: {names}"
