"""A flood of refused requests fills neither the audit trail nor its queues (review finding 2): a
real HmiServer with its security layer on loopback, an anonymous Observer (what the demo allows)
sending refused Writes and method Calls as fast as asyncua pipelines them. The first refusals of
each (session, service or method, code) are recorded, the rest counted in one summary record
when the window ends; a login after the flood is recorded as always.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from scada.opcua.server import HmiServer
from scada.security.audit import MemoryAudit
from scada.security.identity import Role
from scada.security.refusal_audit import PER_KEY, refusal_audit_for
from scada.security.settings import SecuritySettings
from scada.tagdb import TagDB
from tests import configs
from tests.integration.helpers import free_port, serving

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OI = ua.ObjectIds
SC = ua.StatusCodes
DEVICES = '\ndevices:\n  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}\n'
WRITES, CALLS = 400, 60


class Clock:
    """The limiter's clock, moved by the test (a window is a minute)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_of_refusals_is_recorded_at_a_bounded_rate_and_summed_up(tmp_path):
    config = configs.write_config(tmp_path, DEVICES, "alarms: []\n")
    settings = dataclasses.replace(
        SecuritySettings.defaults(tmp_path / "data"), allow_none=True, anonymous=frozenset({Role.OBSERVER})
    )
    trail, clock = MemoryAudit(), Clock()
    # The server's own limiter in front of its sink (the gate, the methods and the limits share
    # it): its clock is the test's.
    audit = refusal_audit_for(trail)
    audit.clock = clock
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    hmi = HmiServer(config, TagDB(*config.tag_table()), url, security=settings, audit=trail)
    async with serving(hmi), Client(url, timeout=30) as client:
        target = client.get_node(OI.Server_ServerStatus_BuildInfo_ProductName)
        server = client.get_node(OI.Server)
        method = client.get_node(OI.Server_GetMonitoredItems)  # not a condition method: needs command
        writes = [target.write_value(ua.DataValue(ua.Variant("x"))) for _ in range(WRITES)]
        calls = [server.call_method(method, ua.Variant(1, ua.VariantType.UInt32)) for _ in range(CALLS)]
        results = await asyncio.gather(*writes, *calls, return_exceptions=True)
        assert all(isinstance(r, UaStatusCodeError) and r.code == SC.BadUserAccessDenied for r in results)

        def refused(action: str) -> list:
            return [r for r in trail.records if r.action == action and r.result == "BadUserAccessDenied"]

        assert [r.target for r in refused("denied")] == ["Write"] * PER_KEY
        assert [r.target for r in refused("call")] == [f"i={OI.Server_GetMonitoredItems}"] * PER_KEY
        assert audit.not_recorded == WRITES + CALLS - 2 * PER_KEY

        async with Client(url, timeout=30):  # a login after the flood: recorded as always
            pass
        assert [r.result for r in trail.records if r.action == "activate_session"] == ["Good", "Good"]

        clock.now += 60  # the window ends: one summary per (session, service or method, code)
        assert audit.flush() == 2
        summaries = {r.target: (r.action, json.loads(r.arguments)) for r in trail.records[-2:]}
        assert summaries["Write"][0] == "denied" and summaries["Write"][1]["not_audited"] == WRITES - PER_KEY
        method_summary = summaries[f"i={OI.Server_GetMonitoredItems}"]
        assert method_summary[0] == "call" and method_summary[1]["not_audited"] == CALLS - PER_KEY
        assert {r.session for r in trail.records[-2:]} == {refused("denied")[0].session} != {""}
