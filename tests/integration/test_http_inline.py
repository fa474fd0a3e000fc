"""``--front inline``: the same HTTP server on the core's loop, served by the core's objects.

A real core (Application, inline OPC UA front, no drivers) and the real aiohttp server
(``serve_inline``, the app's supervised task ``http``) and the core's work-order service, which
loads an order a previous run left in its journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest

from scada.app import Application
from scada.operations.journal import JOURNAL_FILE, OrderJournal
from scada.operations.model import OrderState, WorkOrder
from tests.ops_city import city, ops_config, with_operations

from .helpers import DEADLINE, free_port, wait_port_closed

pytestmark = pytest.mark.integration


async def test_inline_http_serves_from_the_core(tmp_path):
    port = free_port()
    internal = free_port()
    config = with_operations(city(tmp_path / "cfg"), ops_config(("127.0.0.1", port), internal=("127.0.0.1", internal)))
    data = tmp_path / "data"
    data.mkdir()
    # An order on site, as a previous run of the server left it: the core's service loads it.
    now = time.time_ns()
    on_site = WorkOrder(
        "WO-000009", "operator", "traffic_control", "high", "J-D-1", "Dijon", 47.307, 5.052, "checks", "",
        OrderState.ON_SITE, now, now, "op1", crew="V-1",
    )  # fmt: skip
    with OrderJournal(data / JOURNAL_FILE) as journal:
        journal.write([on_site])
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, data, front="inline")
    app.drivers = []
    assert app.operations is not None and [o.id for o in app.operations.open_orders()] == ["WO-000009"]
    core = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        assert "http" in app.supervisor.tasks  # the app runs it (--front inline)
        base, inside = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + DEADLINE
            while True:  # the server binds in its task: wait for its first answer
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{inside}/map.geojson") as r:
                        fc = json.loads(await r.read())
                        if any(f["properties"]["name"] == "WO-000009" for f in fc["features"]):
                            break
                assert time.monotonic() < deadline, "the inline HTTP server never answered"
                await asyncio.sleep(0.1)
            crew = next(f for f in fc["features"] if f["properties"]["name"] == "V-1")
            assert crew["properties"]["order"] == "WO-000009"
            form = {"service_code": "traffic_signal", "lat": "47.307", "long": "5.052", "email": "a@b.fr"}
            async with http.post(f"{base}/open311/v2/requests.json", data=form) as r:
                assert r.status == 201 and (await r.json())[0]["service_request_id"] == "CR-000001"
            # Attached to the order on site (same service, same place); the contact kept in the core.
            assert app.operations.orders["WO-000009"].reports == ("CR-000001",)
            assert app.operations.writer.flush()
            assert app.operations.journal.contact("CR-000001") == {"email": "a@b.fr"}
            async with http.get(f"{base}/open311/v2/requests/CR-000001.json") as r:
                text = await r.text()
                assert r.status == 200 and "a@b.fr" not in text and json.loads(text)[0]["status"] == "open"
            async with http.get(f"{inside}/metrics") as r:
                text = await r.text()
                assert 'scada_work_orders_open{service="traffic_control",state="on_site"} 1.0' in text
                assert "scada_opcua_sessions 0.0" in text and "scada_core_stats_age_seconds -1" not in text
    finally:
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
    await asyncio.to_thread(wait_port_closed, port, DEADLINE)

