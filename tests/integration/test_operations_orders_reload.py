"""The work orders across a configuration reload, in a real Application (OPC UA front in its own
process, Modbus drivers polling cabinets that do not answer): the comm_loss alarms of the dead
cabinets make orders; a reload that adds a cabinet (new tag table, new alarm engine) keeps the
orders and the service follows the new engine: the new cabinet's alarm makes its order too.

Needs ``Config.operations`` (operations.yaml, the configuration part); skipped before it is there.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.ports import free_port

from .helpers import DEADLINE, ROOT, _dead_cabinets, until

pytestmark = pytest.mark.integration


# The contract of the lighting service alone (no crews: nothing is dispatched; no HTTP server).
OPERATIONS = """
services:
  lighting_maintenance:
    delays:
      default: {on_site: 48h, repaired: 5d, warn_before: 4h}
http:
  listen: false
"""


@contextlib.asynccontextmanager
async def running_app(tmp_path):
    """helpers.running_app with operations.yaml beside tags.yaml: a real Application on two dead
    cabinets, and the configuration with a third one."""
    from city_scada import load_config
    from scada.app import Application

    ports = [free_port() for _ in range(3)]
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    for folder, names in (("a", ["LC-1", "LC-2"]), ("b", ["LC-1", "LC-2", "LC-3"])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tags.yaml").write_text(head + _dead_cabinets(ports, names))
        (tmp_path / folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
        (tmp_path / folder / "operations.yaml").write_text(OPERATIONS)
    old, new = load_config(tmp_path / "a"), load_config(tmp_path / "b")
    app = Application(old, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data")
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        yield app, old, new, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def devices_with_orders(app) -> set[str]:
    return {o.device for o in app.operations.open_orders() if o.cause == "comm_loss"}


async def test_orders_survive_a_reload_and_follow_the_new_alarm_engine(tmp_path):
    async with running_app(tmp_path) as (app, _old, new, _task):
        ops = app.operations
        assert ops is not None and list(ops.ops.services) == ["lighting_maintenance"]
        assert ops.on_alarm_events in app.alarms.subscribers
        await until(lambda: devices_with_orders(app) == {"LC-1", "LC-2"}, what="comm_loss orders of LC-1 and LC-2")
        before = {o.id: o for o in ops.open_orders()}
        old_engine = app.alarms
        await app.reload(new)
        assert app.alarms is not old_engine and app.operations is ops  # the same service, the orders kept
        assert ops.alarms is app.alarms and ops.config is new
        assert ops.on_alarm_events in app.alarms.subscribers
        assert {o.id for o in ops.open_orders()} >= set(before)
        await until(lambda: "LC-3" in devices_with_orders(app), what="the added cabinet's comm_loss order")
        assert "operations" in app.supervisor.tasks
        status = app.status()
        assert status["orders_open"] == len(ops.open_orders()) >= 3 and status["orders_breached"] == 0
        # One order per device and cause: the reload did not create the old ones again.
        assert sorted(o.device for o in ops.open_orders() if o.cause == "comm_loss") == ["LC-1", "LC-2", "LC-3"]
