"""The map feed: a valid GeoJSON FeatureCollection (the schema in tests/data), [lon, lat], the
state and worst alarm of each device, crews, open orders, recent reports without personal data,
the filters, and one encoding per second however many clients poll."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scada.front.alarms import AlarmMirror
from scada.front.orders import OrdersMirror
from scada.operations.geo import FilterError, GeoFeed
from scada.operations.http import OpsHttp
from scada.operations.model import CitizenReport, OrderState, WorkOrder
from tests.ops_city import city, ops_config, tag_table
from tests.ports import free_port

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "geojson-featurecollection.schema.json").read_text())
NOW = 1_764_000_000 * 10**9


def order(oid: str, state=OrderState.ASSIGNED, **kw) -> WorkOrder:
    base = dict(id=oid, source="alarm", service="lighting_maintenance", priority="medium", device="LC-D-1",
                commune="Dijon", lat=47.322, lon=5.041, cause="lamps_failed", description="3 lamps out",
                state=state, origin_ns=NOW, created_ns=NOW, created_by="server", crew="V-1")  # fmt: skip
    return WorkOrder(**{**base, **kw})


@pytest.fixture
def world(tmp_path):
    ops = ops_config()
    config = city(tmp_path / "cfg", ops)
    tags = tag_table(config)

    def set_tag(name: str, value: float) -> None:
        tags.value[tags.id_of(name)] = value

    set_tag("Dijon/lighting/LC-D-1/Diagnostics/state", 1)
    set_tag("Ahuy/lighting/LC-A-1/Diagnostics/state", 2)
    set_tag("Dijon/fleet/V-1/lat", 47.3301)
    set_tag("Dijon/fleet/V-1/lon", 5.0402)
    set_tag("Dijon/fleet/V-1/status", 1)
    alarms = AlarmMirror(config, len(tags), request=None)  # type: ignore[arg-type]
    for name, device in (("lamps_failed", "LC-D-1"), ("door_open", "LC-D-1"), ("cabinet_hot", "LC-A-1")):
        alarms.cond[alarms.instance(name, device)] = True
    alarms.cond_since[alarms.instance("door_open", "LC-D-1")] = NOW
    orders = OrdersMirror(clock=lambda: NOW)
    orders.load([order("WO-1").to_wire(), order("WO-2", state=OrderState.NEW, device=None, lat=None, lon=None,
                                                   crew=None, source="citizen").to_wire()])  # fmt: skip
    orders.add_report(
        CitizenReport(
            "CR-1",
            "streetlight",
            "Lamp out",
            47.3221,
            5.0412,
            "",
            NOW - 10**9,
            "WO-1",
            "10.0.0.9",
            {"email": "jeanne@example.org", "phone": "0600000000"},
        )  # fmt: skip
    )
    return config, ops, tags, alarms, orders


def by_name(fc: dict) -> dict[str, dict]:
    return {f["properties"]["name"]: f for f in fc["features"]}


def test_feed_is_valid_geojson_with_states_alarms_crews_orders_reports(world):
    config, ops, tags, alarms, orders = world
    feed = GeoFeed(config, ops, tags, alarms, orders)
    fc = json.loads(feed.body())
    jsonschema.Draft7Validator(SCHEMA).validate(fc)
    f = by_name(fc)
    assert set(f) == {"LC-A-1", "LC-D-1", "B-D-1", "J-D-1", "V-1", "WO-1", "WO-2", "CR-1"}
    # RFC 7946: [lon, lat]
    assert f["LC-D-1"]["geometry"] == {"type": "Point", "coordinates": [5.041, 47.322]}
    assert f["V-1"]["geometry"]["coordinates"] == [5.0402, 47.3301]  # where it is, not its depot
    d = f["LC-D-1"]["properties"]
    assert (d["kind"], d["state"], d["online"], d["class"], d["commune"]) == (
        "equipment",
        "online",
        True,
        "lighting",
        "Dijon",
    )
    # the worst of lamps_failed (medium) and door_open (high)
    assert d["alarm"] == {"name": "door_open", "priority": "high", "severity": 750, "since": "2025-11-24T16:00:00Z"}
    assert (
        f["LC-A-1"]["properties"]["state"] == "offline" and f["LC-A-1"]["properties"]["alarm"]["name"] == "cabinet_hot"
    )
    assert f["B-D-1"]["properties"]["state"] == "not_connected" and f["B-D-1"]["properties"]["alarm"] is None
    assert f["V-1"]["properties"] == {"kind": "crew", "name": "V-1", "class": "fleet", "commune": "Dijon",
                                           "status": "en_route", "order": "WO-1"}  # fmt: skip
    assert f["WO-1"]["properties"]["state"] == "assigned" and f["WO-1"]["properties"]["class"] == "lighting"
    assert f["WO-2"]["geometry"] is None and f["WO-2"]["properties"]["class"] == "lighting"  # its service's
    r = f["CR-1"]["properties"]
    assert (r["kind"], r["status"], r["order"]) == ("citizen_report", "open", "WO-1")
    text = feed.body().decode()
    assert "jeanne@example.org" not in text and "0600000000" not in text and "10.0.0.9" not in text


def test_closed_order_leaves_the_map_and_its_report_shows_closed(world):
    config, ops, tags, alarms, orders = world
    orders.receive([order("WO-1", state=OrderState.CLOSED, closed_ns=NOW).to_wire()], [])
    f = by_name(GeoFeed(config, ops, tags, alarms, orders).collection())
    assert "WO-1" not in f and f["CR-1"]["properties"]["status"] == "closed"
    assert f["V-1"]["properties"]["order"] is None


@pytest.mark.parametrize(
    ("commune", "cls", "names"),
    [
        ("Ahuy", None, {"LC-A-1"}),
        (None, "fleet", {"V-1"}),
        (None, "lighting", {"LC-A-1", "LC-D-1", "WO-1", "WO-2", "CR-1"}),
        ("Dijon", "traffic", {"J-D-1"}),
        ("Dijon", "lighting", {"LC-D-1", "WO-1", "WO-2", "CR-1"}),
    ],
)
def test_filters(world, commune, cls, names):
    config, ops, tags, alarms, orders = world
    fc = GeoFeed(config, ops, tags, alarms, orders).collection(commune, cls)
    assert set(by_name(fc)) == names


def test_unknown_filter_is_refused(world):
    feed = GeoFeed(*world)
    with pytest.raises(FilterError, match="unknown commune 'Paris'"):
        feed.body("Paris")
    with pytest.raises(FilterError, match="unknown class 'lamps'"):
        feed.body(None, "lamps")


def test_one_encoding_per_second(world):
    now = [100.2]
    feed = GeoFeed(*world, clock=lambda: now[0])
    first = feed.body()
    assert feed.body() is first and feed.encoded == 1
    world[2].value[world[2].id_of("Dijon/lighting/LC-D-1/Diagnostics/state")] = 2
    now[0] = 100.9
    assert feed.body() is first  # same second: the same bytes, even after a change
    now[0] = 101.0
    assert b'"state":"offline"' in feed.body().split(b'"LC-D-1"')[1][:200] and feed.encoded == 2


async def test_fifty_clients_cost_one_encoding(world):
    config, ops, tags, alarms, orders = world
    http = OpsHttp(config, ops, ("127.0.0.1", 0), tags, alarms, orders, request=None, monotonic=lambda: 7.0)  # type: ignore[arg-type]
    async with TestClient(TestServer(http.internal_app(), host="127.0.0.1", port=free_port())) as client:
        answers = await asyncio.gather(*(client.get("/map.geojson") for _ in range(50)))
        assert {r.status for r in answers} == {200}
        assert {r.content_type for r in answers} == {"application/geo+json"}
        bodies = {await r.read() for r in answers}
        assert len(bodies) == 1 and http.geo.encoded == 1
        r = await client.get("/map.geojson?commune=Nowhere")
        assert r.status == 400 and "unknown commune" in (await r.json())["error"]
        # tags the feed reads are used as numbers: a feed built from NaN rows still validates
        tags.value[:] = np.nan
        http.geo._cache.clear()
        jsonschema.Draft7Validator(SCHEMA).validate(json.loads(await (await client.get("/map.geojson")).read()))
