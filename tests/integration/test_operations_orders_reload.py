"""The work orders across a configuration reload, in a real Application (OPC UA front in its own
process, Modbus drivers polling cabinets that do not answer): the comm_loss alarms of the dead
cabinets make orders; a reload that adds a cabinet (new tag table, new alarm engine) keeps the
orders and the service follows the new engine: the new cabinet's alarm makes its order too.

Needs ``Config.operations`` (operations.yaml, the configuration part); skipped before it is there
or when the shipped operations.yaml routes no lighting_maintenance.
"""

from __future__ import annotations

import pytest

from .helpers import running_app, until

pytestmark = pytest.mark.integration


def devices_with_orders(app) -> set[str]:
    return {o.device for o in app.operations.open_orders() if o.cause == "comm_loss"}


async def test_orders_survive_a_reload_and_follow_the_new_alarm_engine(tmp_path):
    from scada.config import Config

    if "operations" not in Config.__dataclass_fields__:
        pytest.skip("Config.operations (operations.yaml, the configuration part) is not there yet")
    async with running_app(tmp_path) as (app, _old, new, _task):
        ops = app.operations
        if ops is None or "lighting_maintenance" not in ops.ops.services:
            pytest.skip("no operations.yaml routing lighting_maintenance (the configuration part)")
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
