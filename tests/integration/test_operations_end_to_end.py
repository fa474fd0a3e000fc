"""The issue's end-to-end check on the simulated city: every part real, on loopback, as processes.

A Mosquitto broker, the tiny city's simulators (the fleet plays the crews, the control port
injects the faults) and ``scada run`` (the OPC UA front and the HTTP server in their own
process), the server's clock and the city's the same accelerated simulated time, started alike
(``--clock-start``/``--clock-origin`` and the simulator's ``--start``/``--start-origin``, as
``scada demo`` does). A lamp failure, a junction's signal conflict and a bollard fault each make
an order (service, priority, the contract's deadlines); a citizen's report near the faulty
cabinet joins that order (its GET shows the order's status, never the contact), one far from
everything makes its own, unlocated; an Observer may not Assign; the dispatcher (this test,
over OPC UA: auto_assign is off) assigns each order to the proposed crew; the crews accept,
drive, repair the simulated faults and say so; the alarms clear and the server closes the
orders. Then the journal (``scada workorders``: every transition, who and when), the delays
against the contract, the live contract KPIs on the OPC UA Contract object, the GeoJSON map
(validated against the schema) and /metrics.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import jsonschema
import pytest
from asyncua import Client, ua
from asyncua.ua import uaerrors
from prometheus_client.parser import text_string_to_metric_families

from scada.opcua.operations import CONTRACT_PATH, EVENT_TYPE_PATH, FOLDER_PATH

from .helpers import (
    DEADLINE,
    ROOT,
    Mosquitto,
    Process,
    fault,
    free_port,
    scada_run_args,
    start_tiny_city,
    until,
    until_read,
    wait_port,
)
from .test_opcua_login_run import add_user

pytestmark = pytest.mark.integration

ACCELERATION = 300  # simulated s per real s: a bollard's hour of repair takes 12 s
S = 1_000_000_000
NS_URI = "urn:city-scada:tags"
SCHEMA = json.loads((ROOT / "tests" / "data" / "geojson-featurecollection.schema.json").read_text())
# The simulated crews' time on site per kind of equipment (simulators/models/fleet.py REPAIR_S).
REPAIR_S = {"lighting": 1800.0, "traffic": 2700.0, "bollard": 3600.0}
TRANSITIONS = {"create", "assign", "accept", "depart", "arrive", "repair", "close", "cancel", "refuse", "reopen"}
OBSERVER, OBSERVER_PASSWORD = "olga", "olga's long password"
CONTACT = "jeanne.e2e@example.org"


def scada(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "city_scada", *args], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def journal_orders(data) -> list:
    """Every order of the journal (read directly: cheap enough to poll; none before it exists)."""
    from scada.operations.journal import OrderJournal, OrderJournalError

    try:
        with OrderJournal(data / "workorders.sqlite", readonly=True) as journal:
            return list(journal.orders(open_only=False))
    except OrderJournalError:
        return []


def http(method: str, url: str, form: dict | None = None) -> tuple[int, bytes]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def feed(base: str) -> list[dict]:
    """The map feed's features, the feed validated against the GeoJSON schema each time."""
    status, body = http("GET", f"{base}/map.geojson")
    assert status == 200, body[:300]
    doc = json.loads(body)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    return doc["features"]


def open_orders_metric(base: str) -> dict[tuple[str, str], float]:
    """/metrics' open work orders by (service, state), parsed by prometheus-client."""
    status, body = http("GET", f"{base}/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "scada_work_orders_open":
            for s in fam.samples:
                if s.value:
                    out[(s.labels["service"], s.labels["state"])] = s.value
    return out


class OrderEvents:
    """The WorkOrderEventType events an HMI receives (its order log)."""

    def __init__(self) -> None:
        self.events: list = []

    def event_notification(self, event) -> None:
        self.events.append(event)

    def of(self, oid: str) -> list[str]:
        return [e.Transition for e in self.events if e.OrderId == oid]


async def test_lamp_junction_bollard_orders_crews_repairs_reports_kpis_map_metrics(tmp_path):
    from city_scada import load_config

    broker = Mosquitto(tmp_path / "mqtt")
    # One simulated clock for the city and the server: the same start read at the same real instant.
    clock_start, origin = datetime.now(UTC).isoformat(timespec="seconds"), time.time()
    clock_start_ns = datetime.fromisoformat(clock_start).timestamp() * S
    city = start_tiny_city(
        tmp_path,
        mqtt=f"127.0.0.1:{broker.port}",
        acceleration=ACCELERATION,
        extra=["--start", clock_start, "--start-origin", repr(origin)],
    )
    data, server, hmi, observer = tmp_path / "data", None, None, None
    try:
        wait_port(city.control, proc=city.sim)
        # The dispatcher assigns (this test, over OPC UA): the orders wait for it, so a citizen's
        # report reaches an order surely still open, and the Assign is the operator's.
        ops_file = city.config / "operations.yaml"
        text = ops_file.read_text()
        assert "auto_assign: true" in text
        ops_file.write_text(text.replace("auto_assign: true", "auto_assign: false"))
        config = load_config(city.config)
        ops = config.operations
        # Anonymous sessions may dispatch (the tests' Supervisor); olga is an Observer.
        security = tmp_path / "security.yaml"
        # Secure endpoints too (the defaults): the Observer's password travels encrypted.
        security.write_text("allow_none: true\nanonymous: [Supervisor]\n")
        add_user(data, OBSERVER, "observer", OBSERVER_PASSWORD)
        http_port, internal_port = free_port(), free_port()
        base = f"http://127.0.0.1:{http_port}"  # Open311: the citizens' listener
        internal = f"http://127.0.0.1:{internal_port}"  # the map feed and /metrics: the city's own network
        args = scada_run_args(city.config, data, city.endpoint, security=security)
        args[args.index("--http") + 1] = f"127.0.0.1:{http_port}"
        args += ["--http-internal", f"127.0.0.1:{internal_port}"]
        args += ["--acceleration", str(ACCELERATION), "--clock-start", clock_start, "--clock-origin", repr(origin)]
        args += ["--kpi-interval", "1"]  # the contract's live figures each second (default: a minute)
        server = Process(args, tmp_path / "server.log")
        wait_port(city.opc_scada, proc=server)
        wait_port(http_port, proc=server)

        def first(cls: str) -> str:
            return next(d.name for d in config.devices if config.types[d.type].cls == cls)

        lamp, junction, bollard = first("lighting"), first("traffic"), first("bollard")
        expected = {  # device: (service, cause, priority, class) as alarms.yaml routes them
            lamp: ("lighting_maintenance", "lamps_failed", "medium", "lighting"),
            junction: ("traffic_control", "conflict_fault", "critical", "traffic"),
            bollard: ("security", "bollard_fault", "high", "bollard"),
        }
        fault(city.control, "lamp_failure", lamp, "count=3")
        fault(city.control, "conflict_fault", junction)
        fault(city.control, "bollard_fault", bollard)
        await until(
            lambda: {o.device for o in journal_orders(data)} >= set(expected),
            what=f"the three orders (see {tmp_path}/server.log)",
        )
        orders = {o.device: o for o in journal_orders(data)}
        assert len(journal_orders(data)) == 3  # one per fault, nothing else
        for device, (service, cause, priority, _cls) in expected.items():
            o = orders[device]
            assert (o.source, o.service, o.cause, o.priority, o.state.label) == (
                "alarm",
                service,
                cause,
                priority,
                "new",
            ), o
            delays = ops.services[service].delays[priority]
            assert o.on_site_due_ns == o.origin_ns + int(delays.on_site_s * S)
            assert o.repaired_due_ns == o.origin_ns + int(delays.repaired_s * S)
        ids = {device: o.id for device, o in orders.items()}

        # A citizen's report 10 m from the faulty cabinet joins its order; the GET shows the
        # order's status and never the contact details.
        cabinet = config.device(lamp)
        status, body = http(
            "POST",
            f"{base}/open311/v2/requests.json",
            {"service_code": "streetlight", "lat": str(cabinet.lat + 0.00009), "long": str(cabinet.lon),
             "description": "three lamps out", "email": CONTACT, "first_name": "Jeanne", "phone": "0600000000"},
        )  # fmt: skip
        assert status == 201, body
        near = json.loads(body)[0]["service_request_id"]
        status, body = http("GET", f"{base}/open311/v2/requests/{near}.json")
        assert status == 200, body
        (public,) = json.loads(body)
        assert public["status"] == "open" and ids[lamp] in public["status_notes"], public
        assert not {"email", "first_name", "last_name", "phone"} & set(public)
        assert CONTACT.encode() not in body and b"0600000000" not in body
        assert near in {o.id: o for o in journal_orders(data)}[ids[lamp]].reports
        # One far from any equipment (1 km north of the northernmost, inside the territory's
        # margin) makes an order of its own, unlocated (orders.py: no equipment within the radius).
        north = max(config.devices, key=lambda d: d.lat)
        status, body = http(
            "POST",
            f"{base}/open311/v2/requests.json",
            {"service_code": "streetlight", "lat": str(north.lat + 0.009), "long": str(north.lon), "email": CONTACT},
        )
        assert status == 201, body
        far = json.loads(body)[0]["service_request_id"]
        status, body = http("GET", f"{base}/open311/v2/requests/{far}.json")
        (far_public,) = json.loads(body)
        far_order = next(o for o in journal_orders(data) if far in o.reports)
        assert far_order.id not in ids.values() and far_order.id in far_public["status_notes"]
        assert (far_order.source, far_order.device, far_order.service) == ("citizen", None, "lighting_maintenance")
        assert CONTACT.encode() not in body

        # The map: the four orders and the crews at their positions; /metrics: four open orders.
        async def on_map(pred, what):
            t0 = time.monotonic()
            while time.monotonic() - t0 < DEADLINE:
                features = feed(internal)
                if pred(features):
                    return features
                await asyncio.sleep(0.2)  # the map is rebuilt once a second
            raise AssertionError(f"{what}: not on the map within {DEADLINE} s")

        every = {*ids.values(), far_order.id}
        features = await on_map(
            lambda fs: every <= {f["properties"]["name"] for f in fs if f["properties"]["kind"] == "work_order"},
            "the four orders",
        )
        lamp_feature = next(f for f in features if f["properties"]["name"] == ids[lamp])
        assert lamp_feature["properties"]["state"] == "new" and lamp_feature["properties"]["reports"] == 1
        assert lamp_feature["geometry"]["coordinates"] == [round(cabinet.lon, 6), round(cabinet.lat, 6)]
        crews = {f["properties"]["name"]: f for f in features if f["properties"]["kind"] == "crew"}
        assert set(crews) == set(ops.crews) and all(f["geometry"] for f in crews.values())
        await until(lambda: sum(open_orders_metric(internal).values()) == 4, what="/metrics: four open orders")

        # OPC UA: the Operations folder shows the orders; an Observer may look, not Assign.
        hmi = Client(city.endpoint, timeout=30)
        await hmi.connect()
        ns = await hmi.get_namespace_index(NS_URI)
        log = OrderEvents()
        sub = await hmi.create_subscription(50, log)
        folder = hmi.get_node(ua.NodeId(FOLDER_PATH, ns))
        await sub.subscribe_events(folder, hmi.get_node(ua.NodeId(EVENT_TYPE_PATH, ns)))
        names = {(await n.read_browse_name()).Name for n in await folder.get_children()}
        assert every <= names
        observer = Client(city.endpoint, timeout=30)
        observer.set_user(OBSERVER)
        observer.set_password(OBSERVER_PASSWORD)
        await observer.connect()
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await observer.get_node(ua.NodeId(FOLDER_PATH, ns)).call_method(
                ua.NodeId(f"{FOLDER_PATH}/Assign", ns), ids[lamp], ""
            )
        assert {o.id: o for o in journal_orders(data)}[ids[lamp]].state.label == "new"  # nothing changed

        # The dispatcher assigns each order to the crew the server proposes.
        # The simulated fleet roams between jobs of its own: a crew is proposed once it is
        # available again (the tiny city has one crew per skill: the proposed one is assigned).
        crew_of = {}
        for device, oid in ids.items():
            proposed, etas, crew_of[device] = await assign_proposed(folder, ns, oid)
            assert all(c in ops.crews_for(expected[device][0]) for c in proposed), proposed
            assert all(math.isfinite(e) and e >= 0 for e in etas)
            assert crew_of[device] == proposed[0]
        # The bollard's crew holds its order on the map while it drives and repairs (an hour).
        await on_map(
            lambda fs: any(
                f["properties"]["kind"] == "crew"
                and f["properties"]["name"] == crew_of[bollard]
                and f["properties"]["order"] == ids[bollard]
                for f in fs
            ),
            "the bollard's crew holding its order",
        )

        await until(
            lambda: all(o.state.label == "closed" for o in journal_orders(data) if o.id in ids.values()),
            what=f"the three orders closed (see {tmp_path}/server.log and sim.log)",
        )
        assert "crew repaired" in city.sim.output()

        # The journal, through `scada workorders`: every transition, who and when.
        closed = {o.device: o for o in journal_orders(data) if o.id in ids.values()}
        late: dict[str, tuple[bool, bool]] = {}  # device: (on site late, repaired late)
        for device, oid in ids.items():
            events = csv_rows(scada("workorders", "--data", str(data), "--order", oid, "--csv"))
            steps = [e for e in events if e["event"] in TRANSITIONS]
            crew = crew_of[device]
            # The anonymous dispatcher is named with its address (the audit trail's name too).
            who = [(e["event"], "anonymous" if e["user"].startswith("anonymous@") else e["user"]) for e in steps]
            assert who == [
                ("create", "server"),
                ("assign", "anonymous"),
                ("accept", f"crew:{crew}"),
                ("depart", f"crew:{crew}"),
                ("arrive", f"crew:{crew}"),
                ("repair", f"crew:{crew}"),
                ("close", "server"),
            ], events
            times = [int(e["time_ns"]) for e in events]
            assert times == sorted(times) and all(e["time"] for e in events)
            # The delays, in the simulated city's time, against the contract.
            o = closed[device]
            service, _cause, priority, cls = expected[device]
            contract = ops.services[service].delays[priority]
            # (The dispatcher waited for a crew back from a job of its own: a critical hour may pass.)
            assert o.origin_ns < o.on_site_ns < o.repaired_ns < o.closed_ns
            late[device] = (
                o.on_site_ns - o.origin_ns > contract.on_site_s * S,
                o.repaired_ns - o.origin_ns > contract.repaired_s * S,
            )
            assert o.breached == any(late[device])
            assert any(e["event"] == "breach" for e in events) == o.breached
            # The clocks agree: the crew's time on site, simulated by the city, is the server's too
            # (had the server counted real time, an hour's repair would measure 12 s).
            on_site_s = (o.repaired_ns - o.on_site_ns) / S
            assert 0.5 * REPAIR_S[cls] <= on_site_s <= 2 * REPAIR_S[cls], (device, on_site_s)
            # Its alarm cleared (the alarm journal), the cause of the closing.
            alarm = csv_rows(scada("journal", "--data", str(data), "--device", device))
            assert any(r["alarm"] == expected[device][1] and r["event"] == "CLEAR" for r in alarm), alarm

        # The client saw each order's transitions as events.
        for oid in ids.values():
            await until(lambda oid=oid: "close" in log.of(oid), what=f"the close event of {oid}")
            assert [t for t in log.of(oid) if t in TRANSITIONS][-5:] == [
                "accept",
                "depart",
                "arrive",
                "repair",
                "close",
            ]

        # The contract's live KPIs reach the OPC UA client: each order's delay is measured.
        for device in ids:
            o = closed[device]
            service, _cause, priority, _cls = expected[device]
            node = hmi.get_node(ua.NodeId(f"{CONTRACT_PATH}/delay.{service}.{priority}.on_site_p50_s", ns))
            p50 = await until_read(
                lambda node=node: read_or_nan(node),
                lambda v: math.isfinite(v),
                what=f"the live on-site delay of {service}/{priority}",
            )
            assert p50 == pytest.approx((o.on_site_ns - o.origin_ns) / S, abs=1.0)
            for kind, was_late in zip(("on_site", "repaired"), late[device], strict=True):
                within = hmi.get_node(ua.NodeId(f"{CONTRACT_PATH}/delay.{service}.{priority}.{kind}_within", ns))
                assert await within.read_value() == (0.0 if was_late else 1.0), (device, kind)

        # Energy and availability on the orders' clock (the history's and the alarm journal's real
        # stamps mapped into it): the baseline counts the simulated time the cabinets were
        # recorded, the lamp failure's hours of fault count against the lighting's availability.
        # (This clock starts at real now, where the real stamps happen to fall in the right month:
        # a clock started elsewhere is test_operations_kpi_clock.py's.)
        from scada.opendata import ENERGY, sites_from_config

        cabinets = [s for s in sites_from_config(config).cabinets if ENERGY in s.tags]
        per_s = ops.energy.baseline_kwh_per_day / 86400.0
        baseline = hmi.get_node(ua.NodeId(f"{CONTRACT_PATH}/energy.all.baseline_kwh", ns))
        recorded_s = await until_read(
            lambda: read_or_nan(baseline),
            lambda v: math.isfinite(v) and v > 0,
            what="the live energy baseline",
        ) / (per_s * len(cabinets))
        clock_now = clock_start_ns + (time.time() - origin) * ACCELERATION * S
        month = datetime.fromtimestamp(clock_now / S, UTC).replace(day=1, hour=0, minute=0, second=0)
        since = max(clock_start_ns, month.timestamp() * S)  # month to date
        assert 0.3 * (clock_now - since) / S <= recorded_s <= 1.05 * (clock_now - since) / S, recorded_s
        kwh = await read_or_nan(hmi.get_node(ua.NodeId(f"{CONTRACT_PATH}/energy.all.kwh", ns)))
        assert math.isfinite(kwh) and kwh >= 0.0
        lighting = await read_or_nan(hmi.get_node(ua.NodeId(f"{CONTRACT_PATH}/availability.lighting", ns)))
        assert 0.5 < lighting < 1.0, lighting  # one cabinet of the tiny city out for its repair

        # The closed orders leave the map and /metrics; the far report's stays, new.
        await on_map(
            lambda fs: (
                {f["properties"]["name"] for f in fs if f["properties"]["kind"] == "work_order"} == {far_order.id}
            ),
            "only the far report's order",
        )
        await until(
            lambda: open_orders_metric(internal) == {("lighting_maintenance", "new"): 1.0},
            what="/metrics: the far report's order alone open",
        )
        status, body = http("GET", f"{base}/open311/v2/requests/{near}.json")
        (public,) = json.loads(body)
        assert public["status"] == "closed" and CONTACT.encode() not in body
        assert server.proc.poll() is None
        # The server's log follows each order (what an operator reads of `scada demo`).
        log_lines = server.output()
        for oid, crew in zip(ids.values(), crew_of.values(), strict=True):
            for step in ("create", "assign", "repair", "close"):
                assert re.search(rf"work_order .*order={oid} order_event={step}", log_lines), (oid, step)
            assert re.search(rf"work_order .*crew={crew} .*order={oid} order_event=assign", log_lines)
    finally:
        for client in (hmi, observer):
            if client is not None:
                try:
                    await client.disconnect()
                except Exception:  # noqa: BLE001 - the server may be the failure being reported
                    pass
        if server:
            server.stop()
        city.sim.stop()
        broker.stop()


async def assign_proposed(folder, ns: int, oid: str) -> tuple[list, list, str]:
    """Propose, then Assign with no crew named (the proposed one), once a crew is available:
    (the proposal's crews, their ETAs, the crew assigned)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        proposed, etas = await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Propose", ns), oid)
        if proposed:
            try:
                return proposed, etas, await folder.call_method(ua.NodeId(f"{FOLDER_PATH}/Assign", ns), oid, "")
            except uaerrors.BadInvalidState:  # gone on another job in between
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"no crew proposed for {oid} within {DEADLINE} s")


async def read_or_nan(node) -> float:
    """A Contract variable's value; NaN before the variable exists (its name's first push)."""
    try:
        return float(await node.read_value())
    except uaerrors.BadNodeIdUnknown:
        return math.nan
