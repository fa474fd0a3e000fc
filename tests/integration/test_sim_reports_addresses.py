"""The simulated citizens are many citizens: at a high acceleration, the report generator spreads
its POSTs over many loopback addresses, so the real server's per-address rate limit (its Open311
``RateLimiter``, tight here) refuses none; from one address it refuses most, and the generator
counts those 429s and logs them once per window, not once per report.

The server is the real one: a core (Application, no drivers) with its HTTP server on the core's
loop (``--front inline``), its work-order service storing each report with the client address
it saw in its journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sqlite3
from collections import Counter

import pytest
import structlog.testing

from scada.app import Application
from scada.operations.journal import JOURNAL_FILE
from simulators.reports import FIRST_ADDRESS, ReportGenerator, Spot
from tests.ops_city import city, ops_config, with_operations

from .helpers import DEADLINE, free_port, until, wait_port, wait_port_closed

pytestmark = pytest.mark.integration

BURST = 4  # reports one address may post; then (almost) never again: 1 token in 1000 minutes
CODES = {"lighting": "streetlight", "traffic": "traffic_signal"}  # the services tests.ops_city offers


class Passersby:
    """What a citizen sees in the server's own small city (tests.ops_city): its cabinets and
    junction, one cabinet broken; so every report is inside the server's territory and of a
    service it offers (answered 201, or 429 by the limiter alone)."""

    def __init__(self, config) -> None:
        kinds = {"lighting_cabinet": "lighting", "traffic_junction": "traffic"}
        self._spots = [Spot(kinds[d.type], d.name, d.commune, d.lat, d.lon) for d in config.devices if d.type in kinds]

    def spots(self) -> list[Spot]:
        return self._spots

    def faulty(self) -> set[str]:
        return {"LC-D-1"}


def answered(gen: ReportGenerator) -> int:
    return gen.accepted + gen.refused + gen.throttled + gen.failed


async def run_until_answered(gen: ReportGenerator, n: int) -> None:
    await gen.start()
    try:
        await until(lambda: answered(gen) >= n, what=f"{n} reports answered")
    finally:
        await gen.stop()


async def test_many_addresses_pass_a_tight_per_address_limit_one_address_does_not(tmp_path):
    port = free_port()
    ops = ops_config(("127.0.0.1", port), rate_per_minute=0.001, rate_burst=BURST)
    config = with_operations(city(tmp_path / "cfg"), ops)
    data = tmp_path / "data"
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, data, front="inline")
    app.drivers = []
    core = asyncio.create_task(app.run(), name="core")
    url = f"http://127.0.0.1:{port}/open311/v2"
    # Dijon's ~630 calls a day at 3000x: 22 reports a second, 400 times the limit of one address.
    common = {"acceleration": 3000.0, "seed": 7, "codes": CODES, "throttle_log_s": 3600.0}
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        await asyncio.to_thread(wait_port, port)
        assert app.operations is not None

        # Spread (the default, the target being on loopback): 24 reports, 6 times one address's
        # burst, all taken.
        many = ReportGenerator(Passersby(config), url, 630.0, **common)
        assert len(many.addresses) == 32
        await run_until_answered(many, 24)
        assert many.throttled == 0, many.stats()
        assert many.refused == many.failed == 0 and many.accepted >= 24, many.answers[-1]

        # The server saw (and stored) them from several addresses, those of the spread.
        assert app.operations.writer.flush()
        with contextlib.closing(sqlite3.connect(data / JOURNAL_FILE)) as db:
            clients = Counter(c for (c,) in db.execute("SELECT client FROM reports"))
        assert sum(clients.values()) == many.accepted
        assert len(clients) >= 8, clients
        first = ipaddress.ip_address(FIRST_ADDRESS)
        assert set(clients) <= {str(first + i) for i in range(32)} == set(many.addresses), clients
        assert max(clients.values()) <= BURST

        # The spread off: one address (127.0.0.1, the system's choice), a bucket of BURST reports;
        # the rest are 429s, counted apart and logged once at the first, once at the stop.
        one = ReportGenerator(Passersby(config), url, 630.0, addresses=1, **common)
        assert one.addresses == (None,)
        with structlog.testing.capture_logs() as logged:
            await run_until_answered(one, 3 * BURST)
        assert one.accepted == BURST and one.refused == one.failed == 0
        assert one.throttled == answered(one) - BURST >= 2 * BURST
        assert one.stats()["throttled"] == one.throttled
        throttled = [e for e in logged if e["event"] == "citizen_reports_throttled"]
        assert [e["throttled"] for e in throttled] == [1, one.throttled - 1], throttled
        assert throttled[0]["client"] is None and int(throttled[0]["retry_after"]) > 0
        assert not [e for e in logged if e["event"] == "citizen_report_refused"]  # not once per report
        assert app.operations.writer.flush()  # the taken ones stored, from the one address
        with contextlib.closing(sqlite3.connect(data / JOURNAL_FILE)) as db:
            assert db.execute("SELECT COUNT(*) FROM reports WHERE client = '127.0.0.1'").fetchone()[0] == BURST
    finally:
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
    await asyncio.to_thread(wait_port_closed, port, DEADLINE)
