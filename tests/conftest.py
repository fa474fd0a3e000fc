"""Fixtures shared by every test: nothing may leak asyncio tasks or threads."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest
import structlog

from tests.leaks import tasks_left


def pytest_configure(config: pytest.Config) -> None:
    """structlog's default processors, but a logged exception's traceback is plain.

    By default (rich installed: amqtt's typer brings it) the console renderer draws each logged
    exception with rich, every frame's locals included: with an Application, a tag table or a
    configuration among them, one ``log.exception`` took seconds, most of a fault test's time.
    A plain traceback says where it failed just as well.
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the integration files first, then the unit files, each group by number
    of tests (with ``--no-loadscope-reorder`` xdist hands the files out in this order).

    xdist's own order (by number of tests only) put the integration files of one long test (the
    end-to-end ones, 30-70 s each) last, after every unit file: one worker ran them alone at the
    end while the others had finished (80 s of a 9-minute run measured). The many short unit files
    now fill the gaps at the end instead."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a serial run keeps pytest's order: the quick unit tests first
    per_file = Counter(item.nodeid.split("::", 1)[0] for item in items)

    def key(item: pytest.Item) -> tuple[bool, int]:
        path = item.nodeid.split("::", 1)[0]
        return (not path.startswith("tests/integration/"), -per_file[path])

    items.sort(key=key)  # stable: a file's tests keep their order


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
