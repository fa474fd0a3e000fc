"""The front's HTTP server in the real front process, through a real core, seen by real HTTP
clients: aiohttp's and curl (the README's examples, run as written).

The core (Application) runs in this test's loop with no drivers: the test is the field
(``tagdb.update``). Everything is the real thing: the core's work-order service answering the
Open311 requests, the link's pushes (the orders, the core's PUSH_STATS), the front process, its
mirrors, aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import shlex
import shutil
import time
from pathlib import Path

import aiohttp
import jsonschema
import numpy as np
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from scada.app import Application
from scada.front import wire
from scada.operations.model import (
    PUSH_ORDERS,
    PUSH_ORDERS_SNAPSHOT,
    OrderEvent,
    OrderState,
    WorkOrder,
)
from tests.configs import ROOT
from tests.leaks import tasks_left
from tests.ops_city import city, ops_config, with_operations

from .helpers import DEADLINE, free_port

pytestmark = pytest.mark.integration

SCHEMA = json.loads((ROOT / "tests" / "data" / "geojson-featurecollection.schema.json").read_text())
README_HOST = "127.0.0.1:8080"  # the citizens' listener in the README's examples
README_INTERNAL = "127.0.0.1:9464"  # the internal one (map feed, metrics)


INTERNAL: dict[str, int] = {}  # a core's citizens' address -> its internal port


@contextlib.asynccontextmanager
async def core(tmp_path: Path):
    port = free_port()
    ops = ops_config(("127.0.0.1", port), internal=("127.0.0.1", free_port()), rate_burst=100)
    config = with_operations(city(tmp_path / "cfg"), ops)
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data")
    app.drivers = []  # the test is the field
    assert app.operations is not None  # the core's work-order service answers the front
    # A citizen's report is audited; the trail's writer thread lingers 5 s for more records, longer
    # than the leak check's grace after each test of this module's one core: it ends at once here.
    app.audit.LINGER_S = 0.05
    task = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        INTERNAL[f"http://127.0.0.1:{port}"] = ops.http.internal[1]  # type: ignore[index]
        yield app, app.operations, f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory):
    async with core(tmp_path_factory.mktemp("http")) as out:
        yield out
    left = await tasks_left()
    assert not left, f"the core left asyncio tasks pending: {left}"


GOOD = {"service_code": "streetlight", "lat": "47.3221", "long": "5.0412", "description": "Lamp out",
        "email": "jeanne@example.org", "first_name": "Jeanne", "phone": "0600000000"}  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_open311_through_the_front(served):
    app, orders, base = served

    def stored() -> int:
        assert orders.writer.flush()
        return len(orders.journal.reports())

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/open311/v2/services.json") as r:
            assert r.status == 200 and [s["service_code"] for s in await r.json()] == ["streetlight", "traffic_signal"]
        before = stored()
        async with http.post(f"{base}/open311/v2/requests.json", data=GOOD) as r:
            assert r.status == 201, await r.text()
            (answer,) = await r.json()
        rid = answer["service_request_id"]
        assert stored() == before + 1 and orders.journal.contact(rid)["email"] == GOOD["email"]
        for bad, code in (
            ({**GOOD, "service_code": "pothole"}, 400),
            ({**GOOD, "lat": "48.8566", "long": "2.3522"}, 400),
            ({**GOOD, "description": "x" * 20_000}, 400),  # oversized: 400, as the issue asks
        ):
            async with http.post(f"{base}/open311/v2/requests.json", data=bad) as r:
                body = await r.json()
                assert r.status == code and body[0]["code"] == code and set(body[0]) == {"code", "description"}
        async with http.post(
            f"{base}/open311/v2/requests.json", data=b"{", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400 and "malformed JSON" in (await r.json())[0]["description"]
        assert stored() == before + 1  # nothing stored by the refused ones
        async with http.get(f"{base}/open311/v2/requests/{rid}.json") as r:
            text = await r.text()
            assert r.status == 200 and json.loads(text)[0]["service_request_id"] == rid
            assert not any(v in text for v in ("jeanne@example.org", "Jeanne", "0600000000", "127.0.0.1"))


def internal(base: str) -> str:
    """The internal listener (map, metrics) of the core serving Open311 at ``base``."""
    return f"http://127.0.0.1:{INTERNAL[base]}"


async def map_of(http: aiohttp.ClientSession, base: str, query: str = "") -> dict:
    async with http.get(f"{internal(base)}/map.geojson{query}") as r:
        assert r.status == 200 and r.content_type == "application/geo+json"
        return json.loads(await r.read())


@pytest.mark.asyncio(loop_scope="module")
async def test_map_follows_the_tags_and_the_pushed_orders(served):
    app, _orders, base = served
    db = app.tagdb
    db.update(np.array([db.id_of("Dijon/lighting/LC-D-1/Diagnostics/state")]), np.array([1.0]))
    now = time.time_ns()
    wo = WorkOrder("WO-900001", "alarm", "lighting_maintenance", "medium", "LC-D-1", "Dijon", 47.322, 5.041,
                   "lamps_failed", "", OrderState.NEW, now, now, "server")  # fmt: skip
    app.hmi._send(wire.encode_message(PUSH_ORDERS_SNAPSHOT, [wo.to_wire()]))
    found: dict = {}

    async with aiohttp.ClientSession() as http:

        async def shown() -> bool:
            fc = await map_of(http, base, "?commune=Dijon&class=lighting")
            found.update({f["properties"]["name"]: f for f in fc["features"]})
            return "WO-900001" in found and found["LC-D-1"]["properties"]["state"] == "online"

        await until_async(shown, "the order and the cabinet's state on the map")
        jsonschema.Draft7Validator(SCHEMA).validate(await map_of(http, base))
        assert found["WO-900001"]["geometry"]["coordinates"] == [5.041, 47.322]
        assert found["WO-900001"]["properties"]["state"] == "new"
        # the order is closed: it leaves the map
        closed = dataclasses.replace(wo, state=OrderState.CLOSED, closed_ns=now)
        ev = OrderEvent(now, "WO-900001", "close", OrderState.NEW, OrderState.CLOSED, "operator")
        app.hmi._send(wire.encode_message(PUSH_ORDERS, [closed.to_wire()], [ev.to_wire()]))

        async def gone() -> bool:
            fc = await map_of(http, base)
            return all(f["properties"]["name"] != "WO-900001" for f in fc["features"])

        await until_async(gone, "the closed order off the map")


@pytest.mark.asyncio(loop_scope="module")
async def test_metrics_carry_the_core_figures(served):
    _app, _orders, base = served
    got: dict = {}

    async with aiohttp.ClientSession() as http:

        async def scraped() -> bool:
            async with http.get(f"{internal(base)}/metrics") as r:
                assert r.status == 200
                got.clear()
                for family in text_string_to_metric_families(await r.text()):
                    for s in family.samples:
                        got[(s.name, tuple(sorted(s.labels.items())))] = s.value
            return got.get(("scada_core_stats_age_seconds", ()), -1) >= 0

        await until_async(scraped, "the core's first PUSH_STATS in /metrics")
    assert ("scada_event_loop_lag_seconds", ()) in got and ("scada_alarms_last_10min", ()) in got
    assert got[("scada_devices", (("class", "lighting"), ("driver", "modbus")))] == 2
    assert got[("scada_opcua_sessions", ())] == 0  # the front's own figure (no client)
    assert any(name == "scada_consumer_dropped_batches_total" for name, _ in got)


@pytest.mark.asyncio(loop_scope="module")
async def test_map_and_metrics_are_not_on_the_citizens_listener(served):
    """Crews' positions, devices' states, the server's internals: the internal listener only
    (review 16 #11); the citizens' one answers them 404, and the internal one serves no Open311."""
    _app, _orders, base = served
    async with aiohttp.ClientSession() as http:
        for path in ("/map.geojson", "/map.geojson?commune=Dijon", "/metrics"):
            async with http.get(f"{base}{path}") as r:
                assert r.status == 404, path
            async with http.get(f"{internal(base)}{path}") as r:
                assert r.status == 200, path
        async with http.get(f"{internal(base)}/open311/v2/services.json") as r:
            assert r.status == 404


@pytest.mark.asyncio(loop_scope="module")
async def test_readme_examples_with_curl(served):
    assert shutil.which("curl"), "curl is missing: `make test` installs it (scripts/install-system-deps.sh)"
    _app, _orders, base = served
    examples = readme_examples()
    assert len(examples) >= 8
    for line, expected in examples:
        args = shlex.split(
            line.replace(README_HOST, base.removeprefix("http://")).replace(
                README_INTERNAL, internal(base).removeprefix("http://")
            )
        )
        proc = await asyncio.create_subprocess_exec(
            *args, "-o", "-", "-w", "\n%{http_code}", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
        body, _, code = out.decode().rpartition("\n")
        assert proc.returncode == 0 and int(code) == expected, f"{line}\n-> {code} {body[:300]}"
        if "map.geojson" in line:
            jsonschema.Draft7Validator(SCHEMA).validate(json.loads(body))
        if expected >= 400 and "/open311/" in line:
            assert json.loads(body)[0]["code"] == expected


def readme_examples() -> list[tuple[str, int]]:
    """The curl lines of the README's HTTP section, with the status each expects."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## HTTP: Open311, map, metrics", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        m = re.match(r"^(curl .*?)\s+#\s*(\d{3})\s*$", line)
        if m:
            out.append((m.group(1), int(m.group(2))))
    return out


async def until_async(predicate, what: str, timeout: float = DEADLINE) -> None:
    """``until`` for a coroutine predicate (the map is rebuilt once a second: poll, bounded)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_reload_keeps_serving_and_follows_the_new_configuration(tmp_path):
    """A reload (a cabinet added) keeps the HTTP server and its clients' address; the map shows
    the new cabinet, from the new tag table, and what the mirrors held (the orders) stays."""
    async with core(tmp_path / "a") as (app, _orders, base):
        now = time.time_ns()
        wo = WorkOrder("WO-000002", "operator", "security", "high", "B-D-1", "Dijon", 47.324, 5.030, "check", "",
                       OrderState.NEW, now, now, "op1")  # fmt: skip
        app.hmi._send(wire.encode_message(PUSH_ORDERS_SNAPSHOT, [wo.to_wire()]))
        extra = '  - {name: LC-D-2, type: lighting_cabinet, commune: Dijon, lat: 47.33, lon: 5.05, endpoint: "127.0.0.1:15023", unit: 1}\n'
        port = int(base.rsplit(":", 1)[1])
        new = with_operations(
            city(tmp_path / "b", extra_devices=extra),
            ops_config(("127.0.0.1", port), internal=("127.0.0.1", INTERNAL[base]), rate_burst=100),
        )
        await asyncio.wait_for(app.reload(new), DEADLINE)
        # The reload started the new configuration's drivers (no field here): the test is the field.
        await app.stop_tasks([n for n in app.task_names() if n.startswith("driver:")])
        db = app.tagdb
        db.update(np.array([db.id_of("Dijon/lighting/LC-D-2/Diagnostics/state")]), np.array([1.0]))
        seen: dict = {}
        async with aiohttp.ClientSession() as http:

            async def shown() -> bool:
                fc = await map_of(http, base)
                seen.update({f["properties"]["name"]: f["properties"] for f in fc["features"]})
                return seen.get("LC-D-2", {}).get("state") == "online"

            await until_async(shown, "the new cabinet online on the map after the reload")
        assert "WO-000002" in seen and seen["WO-000002"]["class"] == "bollard"
