"""The crews' board (scada/operations/crews.py): which crew is proposed for an order, from the
fleet's tags, and what is sent to it. The tags are a real TagDB fed as the MQTT driver feeds it;
the only fake is the message channel's driver (its real counterpart: the integration tests with
Mosquitto, tests/integration/test_mqtt_messages.py)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from scada import status as st
from scada.driver_api import CommandRejected, DeviceUnreachable, MessageChannel
from scada.operations.crews import CrewBoard, iso
from scada.operations.model import CrewDef, DispatchSettings, OperationsConfig, OrderState, ServiceDef, WorkOrder
from scada.tagdb import TagDB
from tests.configs import load, write_inventory

SITE = (47.3220, 5.0410)  # the order's place
T0 = 1_780_000_000 * 10**9
# Extra types: a vehicle that reports no status (cannot be told available), a Modbus-free MQTT sensor.
EXTRA_TYPES = """
  bare_vehicle:
    class: fleet
    driver: mqtt
    points:
      lat: {topic: "city/bare/{device}/position", json: lat}
      lon: {topic: "city/bare/{device}/position", json: lon}
"""


def with_operations(cfg, ops: OperationsConfig):
    """``cfg`` with ``ops`` as its operations.yaml (Config.operations, from the config loader)."""
    if "operations" in {f.name for f in dataclasses.fields(cfg)}:
        return dataclasses.replace(cfg, operations=ops)
    object.__setattr__(cfg, "operations", ops)  # before the loader has the field
    return cfg


def services() -> dict[str, ServiceDef]:
    return {s: ServiceDef(s, ("lighting",), {}) for s in ("lighting_maintenance", "traffic_control")}


def crews(**skills: tuple[str, ...]) -> dict[str, CrewDef]:
    return {v.replace("_", "-"): CrewDef(v.replace("_", "-"), s) for v, s in skills.items()}


LIGHT, TRAFFIC = ("lighting_maintenance",), ("traffic_control",)


class Fleet:
    """Vehicles V-001.. (crew_vehicle) and B-001 (bare_vehicle) in a real configuration and TagDB."""

    def __init__(self, folder: Path, ops: OperationsConfig, n: int = 5) -> None:
        rows = [f"V-{i:03d},crew_vehicle,Dijon,47.32,5.04,127.0.0.1:1883" for i in range(1, n + 1)]
        rows.append("B-001,bare_vehicle,Dijon,47.32,5.04,127.0.0.1:1883")
        write_inventory(folder, "vehicles.csv", "name,type,commune,lat,lon,endpoint", rows, EXTRA_TYPES)
        self.cfg = with_operations(load(folder), ops)
        self.tagdb = TagDB(*self.cfg.tag_table(), self.cfg.max_ages())
        self.sent: list[tuple[str, str, dict]] = []
        self.listeners: list = []
        self.driver = FakeChannel(self)
        self.board = CrewBoard(self.cfg, self.tagdb, {"mqtt": self.driver}, lambda: T0)

    def report(self, vehicle: str, lat: float, lon: float, status: str = "available", t: int | None = None) -> None:
        """A tracker's message, as the MQTT driver stores it."""
        d = self.cfg.device(vehicle)
        names = [p.name for p in self.cfg.types[d.type].points]
        code = {"available": 0, "en_route": 1, "on_site": 2}[status]
        values = {"lat": lat, "lon": lon, "speed": 0.0, "heading": 0.0, "status": code}
        ids = [d.first_tag_id + names.index(p) for p in values if p in names]
        vals = [values[p] for p in values if p in names]
        self.tagdb.update(np.array(ids), np.array(vals, np.float64), st.GOOD, t or time.time_ns())

    def tag(self, vehicle: str, point: str) -> int:
        d = self.cfg.device(vehicle)
        return d.first_tag_id + [p.name for p in self.cfg.types[d.type].points].index(point)


class FakeChannel:
    """The MQTT driver's message channel, recording what is sent (a unit test's stand-in)."""

    name = "mqtt"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def send(self, device, channel, payload) -> None:
        self.fleet.sent.append((device, channel, dict(payload)))

    def listen(self, channel, callback) -> None:
        self.fleet.listeners.append((channel, callback))


def order(service: str = "lighting_maintenance", lat: float | None = SITE[0], lon: float | None = SITE[1], **kw):
    values = dict(id="WO-000001", source="alarm", service=service, priority="medium", device="LC-001",
                  commune="Dijon", lat=lat, lon=lon, cause="lamps_failed", description="3 lamps failed",
                  state=OrderState.NEW, origin_ns=T0, created_ns=T0, created_by="server")
    values.update(kw)
    return WorkOrder(**values)


def haversine_m(lat1, lon1, lat2, lon2) -> float:
    """Plain-Python great circle, the test's own check of the board's distances."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    ops = OperationsConfig(
        services=services(),
        crews=crews(V_001=LIGHT, V_002=LIGHT, V_003=LIGHT + TRAFFIC, V_004=TRAFFIC, V_005=LIGHT, B_001=LIGHT),
        dispatch=DispatchSettings(speed_kmh=36.0),  # 10 m/s: an ETA in s is a tenth of the metres
    )
    return Fleet(tmp_path / "c", ops)


def test_the_nearest_available_crews_with_the_skill_come_first_with_their_eta(fleet):
    fleet.report("V-001", 47.3400, 5.0410)  # ~2 km north
    fleet.report("V-002", 47.3230, 5.0410)  # ~111 m
    fleet.report("V-003", 47.3300, 5.0410)  # ~890 m
    fleet.report("V-004", 47.3221, 5.0410)  # nearest, but traffic only
    fleet.report("V-005", 47.3600, 5.0410)  # ~4.2 km
    got = fleet.board.propose(order(), limit=3)
    assert [v for v, _ in got] == ["V-002", "V-003", "V-001"]
    for vehicle, eta in got:
        lat = float(fleet.tagdb.value[fleet.tag(vehicle, "lat")])
        assert eta == pytest.approx(haversine_m(lat, 5.0410, *SITE) / 10.0, rel=1e-9)
    assert fleet.board.propose(order(), limit=10)[-1][0] == "V-005"  # every lighting crew, farthest last
    # The other skill: V-004 then V-003.
    assert [v for v, _ in fleet.board.propose(order("traffic_control"))] == ["V-004", "V-003"]
    assert fleet.board.propose(order("snow_service")) == []  # a service no crew has
    assert fleet.board.propose(order(), limit=0) == []


def test_equal_distances_keep_the_order_of_operations_yaml(fleet):
    for v in ("V-005", "V-002", "V-001"):
        fleet.report(v, 47.33, 5.05)
    assert [v for v, _ in fleet.board.propose(order(), limit=2)] == ["V-001", "V-002"]


def test_crews_that_are_busy_away_silent_or_unplaced_are_not_proposed(fleet):
    for v in ("V-001", "V-002", "V-003", "V-005"):
        fleet.report(v, 47.33, 5.04)
    fleet.report("V-002", 47.33, 5.04, status="en_route")  # driving to another site
    fleet.report("V-003", 47.33, 5.04, status="on_site")
    assert [v for v, _ in fleet.board.propose(order(), limit=5)] == ["V-001", "V-005"]
    # V-004 never reported (Bad_NoCommunication): not a candidate even for its own skill.
    assert fleet.board.propose(order("traffic_control")) == []

    # A tracker silent beyond its max_age (60 s in tags.yaml): Uncertain, so not available.
    old = time.time_ns() - 120 * 10**9
    fleet.report("V-005", 47.33, 5.04, t=old)
    stale = fleet.tagdb.mark_stale()
    assert stale is not None and fleet.tag("V-005", "status") in stale.ids.tolist()
    assert [v for v, _ in fleet.board.propose(order(), limit=5)] == ["V-001"]

    # Holding an open order (the orders service's busy set), then freed.
    fleet.board.busy(["V-001", "V-404"])  # an unknown vehicle is ignored
    assert fleet.board.propose(order()) == []
    fleet.board.busy([])
    assert [v for v, _ in fleet.board.propose(order())] == ["V-001"]

    # A position lost (link down: Bad_CommunicationError) is no position.
    fleet.tagdb.set_status(np.array([fleet.tag("V-001", "lat")]), st.BAD_COMMUNICATION_ERROR)
    assert fleet.board.propose(order()) == []


def test_an_order_without_a_place_gets_no_proposal(fleet):
    fleet.report("V-001", 47.33, 5.04)
    assert fleet.board.propose(order(lat=None, lon=None)) == []
    assert fleet.board.propose(order(lat=float("nan"))) == []


def test_a_vehicle_without_a_status_point_is_never_a_candidate(fleet):
    with capture_logs() as logs:
        fleet.board.reload(fleet.cfg, fleet.tagdb, {"mqtt": fleet.driver})
    assert fleet.board.vehicles == ("V-001", "V-002", "V-003", "V-004", "V-005")  # not B-001
    assert [(e["event"], e["vehicle"], e["missing"]) for e in logs] == [("crew_cannot_be_placed", "B-001", ["status"])]
    fleet.report("B-001", 47.33, 5.04)
    assert fleet.board.propose(order()) == []


async def test_an_assignment_is_sent_by_the_contract_and_holds_the_crew(fleet):
    fleet.report("V-002", 47.33, 5.04)
    fleet.report("V-001", 47.34, 5.04)
    o = order(crew="V-002", correlation_id="c0ffee", state=OrderState.ASSIGNED)
    await fleet.board.send(o, "assign")
    device, channel, payload = fleet.sent[-1]
    assert (device, channel) == ("V-002", "order")
    assert payload == {
        "order_id": "WO-000001", "correlation_id": "c0ffee", "action": "assign", "service": "lighting_maintenance",
        "device": "LC-001", "lat": SITE[0], "lon": SITE[1], "priority": "medium", "description": "3 lamps failed",
        "ts": iso(T0),
    }
    assert payload["ts"] == "2026-05-28T20:26:40.000Z"
    # The next order in the same turn goes to the next crew, before the service's busy().
    assert [v for v, _ in fleet.board.propose(order(id="WO-000002"))] == ["V-001"]
    await fleet.board.send(o, "cancel")
    assert fleet.sent[-1][2]["action"] == "cancel"


async def test_an_order_that_cannot_be_addressed_is_refused_before_anything_goes_out(fleet, tmp_path):
    with pytest.raises(CommandRejected, match="unknown action"):
        await fleet.board.send(order(crew="V-001"), "repair")
    with pytest.raises(CommandRejected, match="no crew"):
        await fleet.board.send(order(), "assign")
    with pytest.raises(CommandRejected, match="unknown vehicle"):
        await fleet.board.send(order(crew="V-999"), "assign")
    fleet.board.reload(fleet.cfg, fleet.tagdb, {})  # no driver of the vehicle: no channel
    with pytest.raises(CommandRejected, match="carries no messages"):
        await fleet.board.send(order(crew="V-001"), "assign")
    assert fleet.sent == []


def test_answers_reach_the_callback_once_per_driver_and_only_from_crews(fleet):
    got: list[tuple[str, dict]] = []
    assert isinstance(fleet.driver, MessageChannel)
    fleet.board.start(lambda v, p: got.append((v, dict(p))))
    assert [c for c, _ in fleet.listeners] == ["order"]
    (_, deliver) = fleet.listeners[0]
    deliver("V-003", {"order_id": "WO-1", "status": "accepted"})
    deliver("V-404", {"order_id": "WO-1", "status": "accepted"})  # not a crew: logged, dropped
    assert got == [("V-003", {"order_id": "WO-1", "status": "accepted"})]
    # A reload keeping the driver registers nothing more; a new driver is listened to.
    fleet.board.reload(fleet.cfg, fleet.tagdb, [fleet.driver])
    assert len(fleet.listeners) == 1
    fleet.board.reload(fleet.cfg, fleet.tagdb, {"mqtt": FakeChannel(fleet)})
    assert len(fleet.listeners) == 2


def test_a_reload_follows_new_crews_and_keeps_the_busy_set(fleet):
    fleet.report("V-001", 47.33, 5.04)
    fleet.report("V-002", 47.33, 5.04)
    fleet.board.busy(["V-001"])
    ops = dataclasses.replace(fleet.cfg.operations, crews=crews(V_001=LIGHT, V_002=TRAFFIC))
    fleet.board.reload(with_operations(fleet.cfg, ops), fleet.tagdb, {"mqtt": fleet.driver})
    assert fleet.board.propose(order()) == []  # V-001 still holds its order; V-002 no longer lights
    assert [v for v, _ in fleet.board.propose(order("traffic_control"))] == ["V-002"]


async def test_a_crew_is_held_from_its_assignment_until_cancelled_refused_or_repaired(fleet):
    fleet.report("V-001", 47.33, 5.04)
    fleet.board.start(lambda v, p: None)
    (_, deliver) = fleet.listeners[0]

    def free() -> list[str]:
        return [v for v, _ in fleet.board.propose(order(), limit=5)]

    assert free() == ["V-001"]
    await fleet.board.send(order(crew="V-001", correlation_id="a1"), "assign")
    assert free() == []
    await fleet.board.send(order(crew="V-001", correlation_id="old"), "cancel")  # an earlier assignment's
    assert free() == []
    await fleet.board.send(order(crew="V-001", correlation_id="a1"), "cancel")
    assert free() == ["V-001"]

    for status in ("refused", "repaired"):
        await fleet.board.send(order(crew="V-001", correlation_id="a2"), "assign")
        deliver("V-001", {"order_id": "WO-000001", "correlation_id": "a1", "status": status})  # stale: no effect
        deliver("V-001", {"order_id": "WO-000001", "correlation_id": "a2", "status": "accepted"})
        assert free() == []
        deliver("V-001", {"order_id": "WO-000001", "correlation_id": "a2", "status": status})
        assert free() == ["V-001"], status

    # The orders service's busy() is the authority: it holds and frees whatever the board saw.
    await fleet.board.send(order(crew="V-001", correlation_id="a3"), "assign")
    fleet.board.busy([])  # the service knows that order is gone (say, closed by an operator)
    assert free() == ["V-001"]
    fleet.board.busy(["V-001"])
    assert free() == []


async def test_a_reload_keeps_the_crews_held_by_assignments_the_board_sent(fleet):
    fleet.report("V-001", 47.33, 5.04)
    await fleet.board.send(order(crew="V-001", correlation_id="a1"), "assign")
    fleet.board.reload(fleet.cfg, fleet.tagdb, {"mqtt": fleet.driver})
    assert fleet.board.propose(order()) == []
    await fleet.board.send(order(crew="V-001", correlation_id="a1"), "cancel")
    assert [v for v, _ in fleet.board.propose(order())] == ["V-001"]


async def test_a_cancel_releases_the_crew_even_when_it_cannot_be_sent(fleet):
    fleet.report("V-001", 47.33, 5.04)
    await fleet.board.send(order(crew="V-001", correlation_id="a1"), "assign")

    async def broker_down(device, channel, payload):
        raise DeviceUnreachable("broker down")

    fleet.driver.send = broker_down  # type: ignore[method-assign]
    with pytest.raises(DeviceUnreachable):
        await fleet.board.send(order(crew="V-001", correlation_id="a2"), "assign")  # not sent: holds nothing new
    with pytest.raises(DeviceUnreachable):
        await fleet.board.send(order(crew="V-001", correlation_id="a1"), "cancel")
    assert [v for v, _ in fleet.board.propose(order())] == ["V-001"]
