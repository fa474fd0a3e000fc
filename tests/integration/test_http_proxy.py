"""The citizens' listener behind the city's reverse proxy (``http.trusted_proxies``), for real:
a core with its front process and aiohttp server on loopback, real HTTP clients.

The "proxy" is any client connecting from 127.0.0.1 (trusted); the citizens it serves are the
addresses its X-Forwarded-For names. A client connecting from 127.0.0.2 is not trusted: what it
writes in X-Forwarded-For is its own claim, ignored. One token per client and a refill of one a
minute: a second POST of the same client within the test is refused (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import sqlite3

import aiohttp
import pytest

from scada.app import Application
from scada.operations.journal import JOURNAL_FILE
from scada.security.audit_log import AuditLog
from tests.ops_city import city, ops_config, with_operations

from .helpers import DEADLINE, free_port

pytestmark = pytest.mark.integration

REPORT = {"service_code": "streetlight", "lat": "47.3221", "long": "5.0412", "description": "Lamp out"}
CITIZEN_A, CITIZEN_B = "203.0.113.7", "198.51.100.9"  # documentation addresses (RFC 5737)
UNTRUSTED = "127.0.0.2"  # loopback too, but not the trusted proxy


async def test_citizens_behind_the_trusted_proxy_have_their_own_buckets(tmp_path):
    port = free_port()
    ops = ops_config(("127.0.0.1", port), rate_burst=1, rate_per_minute=1)
    ops = dataclasses.replace(
        ops, http=dataclasses.replace(ops.http, trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
    )
    config = with_operations(city(tmp_path / "cfg"), ops)
    data = tmp_path / "data"
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, data)
    app.drivers = []
    app.audit.LINGER_S = 0.05  # the trail's writer thread ends with the test
    core = asyncio.create_task(app.run(), name="core")
    url = f"http://127.0.0.1:{port}/open311/v2/requests.json"

    async def post(http: aiohttp.ClientSession, forwarded: str) -> tuple[int, str]:
        async with http.post(url, data=REPORT, headers={"X-Forwarded-For": forwarded}) as r:
            return r.status, await r.text()

    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        async with aiohttp.ClientSession() as proxy:
            # Two citizens behind the proxy: one bucket each, not the proxy's one.
            assert (await post(proxy, CITIZEN_A))[0] == 201
            assert (await post(proxy, f"10.9.9.9, {CITIZEN_B}"))[0] == 201  # what B wrote itself is left of it
            status, text = await post(proxy, CITIZEN_A)
            assert status == 429 and f"from {CITIZEN_A}" in text, text
            # A chain of proxies: the trusted hop (the proxy itself) is skipped.
            status, text = await post(proxy, f"{CITIZEN_B}, 127.0.0.1")
            assert status == 429 and f"from {CITIZEN_B}" in text, text
        untrusted = aiohttp.TCPConnector(local_addr=(UNTRUSTED, 0))
        async with aiohttp.ClientSession(connector=untrusted) as spoofer:
            # Not a trusted proxy: its header is ignored, whatever address it claims each time.
            assert (await post(spoofer, "192.0.2.1"))[0] == 201
            status, text = await post(spoofer, "192.0.2.2")
            assert status == 429 and f"from {UNTRUSTED}" in text, text
        # The recorded client of each report, and its audit record, is the same address.
        assert app.operations is not None and app.operations.writer.flush()
        with contextlib.closing(sqlite3.connect(f"file:{data / JOURNAL_FILE}?mode=ro", uri=True)) as db:
            clients = [c for (c,) in db.execute("SELECT client FROM reports ORDER BY id")]
        assert clients == [CITIZEN_A, CITIZEN_B, UNTRUSTED]
        assert app.audit.flush()
        with AuditLog(app.audit.path, read_only=True) as trail:
            audited = [e.record.client_address for e in trail.query(action="citizen_report")]
        assert audited == clients
    finally:
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
