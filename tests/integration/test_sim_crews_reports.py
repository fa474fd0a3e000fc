"""Citizen reports from the simulated city, POSTed over real HTTP on loopback to an Open311
endpoint that records what it receives (the server's own Open311 front is tested with it in
the end-to-end test): form-encoded GeoReport v2 requests, about the city's real faults, and the
answers (accepted, refused, no server) logged and counted, never raised."""

from __future__ import annotations

import json
import math

import pytest
import structlog
import structlog.testing
from aiohttp import web

from simulators.city import generate
from simulators.reports import DUPLICATE, FALSE, FAULT, ReportGenerator
from simulators.runner import CitySimulator

from .helpers import Process, free_port, free_port_range, until

pytestmark = pytest.mark.integration


class Open311Endpoint:
    """A real aiohttp server answering POST requests.json as GeoReport v2 does: 201 and the new
    request's id, or 400 and Open311's error list for a service code it does not offer."""

    def __init__(self, codes=("streetlight", "traffic_signal", "bollard")) -> None:
        self.codes = codes
        self.posts: list[tuple[str, dict[str, str]]] = []  # (content type, form)
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/open311/v2"

    async def requests(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.posts.append((request.content_type, form))
        if form.get("service_code") not in self.codes:
            return web.json_response([{"code": 400, "description": "unknown service_code"}], status=400)
        return web.json_response([{"service_request_id": f"CR-{len(self.posts):06d}", "service_notice": ""}], status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/open311/v2/requests.json", self.requests)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def metres(lat: float, lon: float, site) -> float:
    return math.hypot((lat - site.lat) * 111_200, (lon - site.lon) * 111_200 * math.cos(math.radians(site.lat)))


async def test_reports_about_the_citys_faults_reach_the_endpoint_form_encoded():
    endpoint = Open311Endpoint()
    await endpoint.start()
    city = generate("tiny", base_port=free_port_range(6))
    sim = CitySimulator(city, control_port=None, failure_rate=0.0)
    await sim.start()
    gen = ReportGenerator(sim, endpoint.url, 864_000.0, seed=5)  # ten a second: a test's worth quickly
    try:
        broken = {city.cabinets[1].name, city.cabinets[4].name}
        for name in broken:
            await sim.inject("lamp_failure", name, count=2)
        await gen.start()
        await until(lambda: len(endpoint.posts) >= 30, what="30 reports received")
        await gen.stop()  # the endpoint has had every report the generator sent

        # Form-encoded GeoReport v2 arguments, with the made-up contact details.
        for content_type, form in endpoint.posts:
            assert content_type == "application/x-www-form-urlencoded"
            assert form["service_code"] == "streetlight"  # lighting only: no traffic or bollard simulated
            assert {"lat", "long", "description", "email", "first_name", "last_name", "phone"} <= set(form)
            assert form["email"].endswith("@example.org")
        # Each report as the endpoint received it: real faults a few metres from the broken
        # cabinets (each reported once first, then duplicates), false ones elsewhere.
        sites = {c.name: c for c in city.cabinets}
        # (the stop may have cut the last POST short: sent, not answered)
        assert len(gen.answers) == gen.accepted >= 29 and gen.sent - gen.accepted <= 1
        assert gen.refused == gen.failed == 0
        for (report, status, body), (_, form) in zip(gen.answers, endpoint.posts, strict=False):
            assert status == 201 and body[0]["service_request_id"].startswith("CR-")
            assert metres(float(form["lat"]), float(form["long"]), sites[report.spot.name]) <= 15.0 + 0.1
            assert (report.spot.name in broken) == (report.nature != FALSE)
        natures = [r.nature for r, _, _ in gen.answers]
        assert natures.count(FAULT) == 2 and DUPLICATE in natures and FALSE in natures
        assert natures.count(DUPLICATE) > natures.count(FALSE)  # most are about real faults

        # The lamps repaired, nobody reports them again: only false reports remain.
        for name in broken:
            await sim.repair(name)
        await gen.open()
        after = [await gen.report_once() for _ in range(20)]
        assert {r.nature for r in after if r} == {FALSE} and gen.reported == {}
    finally:
        await gen.stop()
        await sim.stop()
        await endpoint.stop()


async def test_a_refused_report_and_an_absent_server_are_logged_not_raised():
    endpoint = Open311Endpoint(codes=())  # offers nothing: every report is refused
    await endpoint.start()
    city = generate("tiny", base_port=free_port_range(6))
    sim = CitySimulator(city, control_port=None, failure_rate=0.0)
    await sim.inject("lamp_failure", city.cabinets[0].name, count=1)
    refused = ReportGenerator(sim, endpoint.url, 10.0, seed=1)
    nobody = ReportGenerator(sim, f"http://127.0.0.1:{free_port()}/open311/v2", 10.0, seed=1, timeout=10.0)
    try:
        await refused.open()
        await nobody.open()
        # The log records themselves (how structlog prints depends on what configured it first
        # in this test process: its output is not the test's to capture).
        with structlog.testing.capture_logs() as logged:
            r = await refused.report_once()
        assert r is not None and refused.refused == 1 and refused.accepted == 0
        assert refused.answers[-1][1:] == (400, [{"code": 400, "description": "unknown service_code"}])
        assert refused.reported == {}  # not taken: the next one about it is still a first report
        assert [e for e in logged if e["event"] == "citizen_report_refused" and "unknown service_code" in str(e)]
        with structlog.testing.capture_logs() as logged:
            await nobody.report_once()
        assert nobody.failed == 1 and nobody.sent == 1
        assert [e for e in logged if e["event"] == "citizen_report_not_sent"]
    finally:
        await refused.stop()
        await nobody.stop()
        await endpoint.stop()


async def test_simulators_city_reports_per_day_posts_to_the_open311_url(tmp_path):
    endpoint = Open311Endpoint()
    await endpoint.start()
    base, control, opcua = free_port_range(6), free_port(), free_port()
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("- {at: 0, fault: lamp_failure, device: LC-DIJ-001, count: 3}\n")
    sim = Process(
        ["-m", "simulators", "city", "--preset", "tiny", "--base-port", str(base), "--control-port", str(control),
         "--opcua-port", str(opcua),
         "--failure-rate", "0", "--scenario", str(scenario), "--reports-per-day", "864000",
         "--open311", endpoint.url, "--report-services", "lighting=streetlight", "--log-json"],
        tmp_path / "sim.log",
    )
    try:
        await until(lambda: len(endpoint.posts) >= 5 or sim.proc.poll() is not None, what="reports from the process")
        assert sim.proc.poll() is None, sim.output()
        forms = [form for _, form in endpoint.posts]
        assert {f["service_code"] for f in forms} == {"streetlight"}
    finally:
        sim.stop()
        await endpoint.stop()
    lines = [json.loads(line) for line in sim.output().splitlines() if line.startswith("{")]
    started = next(e for e in lines if e.get("event") == "city_simulator_started")
    assert started["reports_per_day"] == 864000 and started["open311"] == endpoint.url
    accepted = [e for e in lines if e.get("event") == "citizen_report_accepted"]
    assert accepted and accepted[0]["device"] == "LC-DIJ-001" and "CR-000001" in accepted[0]["answer"]
