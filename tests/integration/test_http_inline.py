"""``--front inline``: the same HTTP server on the core's loop, served by the core's objects.

A real core (Application, inline OPC UA front, no drivers) and the real aiohttp server
(``serve_inline``, run here as the supervised task the app will run); the work-order service
is a small stand-in with the WorkOrders surface (scada/operations/service.py) until the real
one lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest

from scada.app import Application
from scada.operations.http import serve_inline
from scada.operations.model import CitizenReport, OrderState, WorkOrder
from tests.ops_city import city, ops_config, with_operations

from .helpers import DEADLINE, free_port, wait_port_closed

pytestmark = pytest.mark.integration


class FakeOrders:
    """WorkOrders' surface: open orders, citizen reports (kept with their contact), a query."""

    def __init__(self) -> None:
        now = time.time_ns()
        self.orders = [
            WorkOrder(
                "WO-000009",
                "operator",
                "traffic_control",
                "high",
                "J-D-1",
                "Dijon",
                47.307,
                5.052,
                "checks",
                "",
                OrderState.ON_SITE,
                now,
                now,
                "op1",
                crew="V-1",
            )  # fmt: skip
        ]
        self.taken: list[CitizenReport] = []

    def open_orders(self):
        return self.orders

    async def citizen_report(self, report: CitizenReport):
        self.taken.append(report)
        return (0, "", f"CR-{len(self.taken):06d}", "WO-000009")

    def reports(self, ids, code, start_ns, end_ns, bbox, limit):
        """REQUEST_REPORTS's query (the contact included: the front must leave it out)."""
        return [({**{f: getattr(r, f) for f in ("service_code", "description", "lat", "lon", "address",
                                                   "requested_ns")}, "id": f"CR-{i + 1:06d}", "order": "WO-000009",
                  "contact": dict(r.contact)}, "on_site")
                for i, r in enumerate(self.taken)]  # fmt: skip


async def test_inline_http_serves_from_the_core(tmp_path):
    port = free_port()
    config = with_operations(city(tmp_path / "cfg"), ops_config(("127.0.0.1", port)))
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data", front="inline")
    app.drivers = []
    fake = FakeOrders()
    app.operations = fake  # type: ignore[attr-defined]
    core = asyncio.create_task(app.run(), name="core")
    http_task = None
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        http_task = asyncio.create_task(serve_inline(app), name="http")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + DEADLINE
            while True:  # the server binds in its task: wait for its first answer
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{base}/map.geojson") as r:
                        fc = json.loads(await r.read())
                        if any(f["properties"]["name"] == "WO-000009" for f in fc["features"]):
                            break
                assert time.monotonic() < deadline and not http_task.done(), "the inline HTTP server never answered"
                await asyncio.sleep(0.1)
            crew = next(f for f in fc["features"] if f["properties"]["name"] == "V-1")
            assert crew["properties"]["order"] == "WO-000009"
            form = {"service_code": "traffic_signal", "lat": "47.307", "long": "5.052", "email": "a@b.fr"}
            async with http.post(f"{base}/open311/v2/requests.json", data=form) as r:
                assert r.status == 201 and (await r.json())[0]["service_request_id"] == "CR-000001"
            assert fake.taken[0].contact == {"email": "a@b.fr"} and fake.taken[0].client == "127.0.0.1"
            async with http.get(f"{base}/open311/v2/requests/CR-000001.json") as r:
                text = await r.text()
                assert r.status == 200 and "a@b.fr" not in text and json.loads(text)[0]["status"] == "open"
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert 'scada_work_orders_open{service="traffic_control",state="on_site"} 1.0' in text
                assert "scada_opcua_sessions 0.0" in text and "scada_core_stats_age_seconds -1" not in text
    finally:
        if http_task is not None:
            http_task.cancel()
            await asyncio.gather(http_task, return_exceptions=True)
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
    await asyncio.to_thread(wait_port_closed, port, DEADLINE)


async def test_taken_http_port_fails_the_start_naming_the_setting(tmp_path):
    """A front whose HTTP address is taken does not start (as for its OPC UA port): the core's
    start fails with the address and the setting, nothing half-running."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))  # held: nothing else can take it meanwhile
        taken.listen()
        port = taken.getsockname()[1]
        config = with_operations(city(tmp_path / "cfg"), ops_config(("127.0.0.1", port)))
        app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data")
        app.drivers = []
        with pytest.raises(OSError, match=rf"HTTP server on 127.0.0.1:{port} \(operations.http.listen\)"):
            await asyncio.wait_for(app.run(), DEADLINE)
        assert app.hmi.proc is None  # the front process is gone
