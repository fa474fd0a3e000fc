"""One clock for operations through the HTTP server: in a simulated run (`scada run
--acceleration`, the operations clock ahead of real time) a citizen's report is found by its id
and by the default window, and the map's recent reports keep it (review 16, finding 6).

The core's real orders service (tests/unit/test_operations_orders.py's Rig: a real alarm engine,
a real SQLite journal) with a simulated ScheduleClock, served in process as `--front inline` does,
behind the real aiohttp application."""

from __future__ import annotations

import time
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from scada.control.schedules import ScheduleClock
from scada.front.orders import OrdersMirror, clock_anchor, clock_of
from scada.operations.http import OpsHttp, in_process
from tests.ports import free_port
from tests.unit.test_operations_orders import Rig, ops_config

S = 10**9
REPORT = {"service_code": "streetlight", "lat": "47.3", "long": "5.0", "email": "a@b.fr"}


async def test_reports_found_and_recent_in_a_simulated_run(tmp_path):
    # scada run --acceleration 60 started 2 real minutes ago: the operations clock is ~2 h ahead.
    real0 = time.time_ns()
    sim = ScheduleClock(acceleration=60.0, origin_ns=real0 - 120 * S, start_ns=real0 - 120 * S)
    rig = Rig(tmp_path, ops_config(auto_assign=False), ops_clock=sim.now_ns)
    try:
        clock = clock_of(clock_anchor(sim))  # what the front is handed at its start
        assert abs(clock() - sim.now_ns()) < 60 * S  # both read the simulated time (60 x a second)
        mirror = OrdersMirror(clock)
        app = SimpleNamespace(operations=rig.service)
        http = OpsHttp(rig.config, rig.ops, ("127.0.0.1", 0), None, None, mirror, in_process(app), None, clock)
        async with TestClient(TestServer(http.app(), host="127.0.0.1", port=free_port())) as client:
            r = await client.post("/open311/v2/requests.json", data=REPORT)
            assert r.status == 201, await r.text()
            rid = (await r.json())[0]["service_request_id"]
            r = await client.get(f"/open311/v2/requests/{rid}.json")
            assert r.status == 200, await r.text()
            r = await client.get("/open311/v2/requests.json")
            assert [x["service_request_id"] for x in await r.json()] == [rid]
        # The map's recent reports: one clock in the mirror, the report is the last moment's.
        (shown,) = mirror.recent_reports()
        stored = rig.service.journal.reports([rid])[0][0]
        assert shown.id == rid and abs(shown.requested_ns - stored.requested_ns) < 60 * S
        # A report loaded from the core (ops-clock stamps) sits with it and is kept too.
        loaded = OrdersMirror(clock)
        http2 = OpsHttp(rig.config, rig.ops, ("127.0.0.1", 0), None, None, loaded, in_process(app), None, clock)
        await http2._load_reports()  # noqa: SLF001 - the front's start
        assert [x.id for x in loaded.recent_reports()] == [rid]
    finally:
        rig.close()


def test_the_front_reads_the_cores_operations_clock():
    from scada.front.link import FrontLink
    from scada.front.process import Front

    def init(core):
        return FrontLink._init.__get__(SimpleNamespace(app=core, settings=None, _state=lambda *a: {}))()  # noqa: SLF001

    # Without operations the front gets no clock, and the simulated one is not started by it (the
    # lighting schedules' clock starts when the schedules do).
    sim = ScheduleClock(time.time_ns() + 3600 * S, 60.0)
    off = SimpleNamespace(operations=SimpleNamespace(services={}))
    assert (
        init(SimpleNamespace(schedule_clock=sim, config=off, tagdb=None, alarms=None, historian=None))["ops_clock"]
        is None
    )
    assert sim.t0 is None
    on = SimpleNamespace(operations=SimpleNamespace(services={"lighting_maintenance": object()}))
    core = SimpleNamespace(schedule_clock=sim, config=on, tagdb=None, alarms=None, historian=None)
    anchor = init(core)["ops_clock"]
    front = Front(None, None, anchor)  # type: ignore[arg-type]
    assert abs(front.orders.clock() - sim.now_ns()) < 60 * S
    # ... but how old the core's figures are is real time (/metrics' scada_core_stats_age_seconds)
    front.orders.receive_stats({})
    assert abs(front.orders.stats_ns - time.time_ns()) < 60 * S
    assert Front(None, None, None).orders.clock is time.time_ns  # type: ignore[arg-type]  # real time
