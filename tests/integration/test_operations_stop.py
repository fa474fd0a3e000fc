"""A stop sees the work orders' running acts through before the drivers stop (review of issue 16:
an Assign waiting for the broker's answer at a stop left a crew holding an order the journal
showed as new). A real Application (test_operations_orders_reload.running_app)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from .helpers import DEADLINE, until
from .test_operations_orders_reload import running_app

pytestmark = pytest.mark.integration


async def test_a_stop_settles_the_running_acts_while_the_drivers_still_run(tmp_path):
    async with running_app(tmp_path) as (app, _old, _new, task):
        ops = app.operations
        drivers = [n for n in app.supervisor.tasks if n.startswith("driver:")]
        assert drivers
        gate = asyncio.Event()
        seen: list[bool] = []

        async def act() -> None:  # stands for an Assign waiting for the broker's acknowledgement
            await gate.wait()
            seen.append(all(not app.supervisor._supervising[n].done() for n in drivers))

        running = asyncio.ensure_future(ops._shielded(act(), "assign WO-1 by dora"))
        task.cancel()  # SIGTERM
        await until(lambda: ops._stopping, what="the stop to begin")
        await asyncio.sleep(0.05)  # the stop is held: nothing has been cancelled yet
        assert not task.done() and all(not app.supervisor._supervising[n].done() for n in drivers)
        gate.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, DEADLINE)
        assert seen == [True]  # the act ended while the drivers ran
        assert running.done() and not running.cancelled()
