"""The OPC UA driver checks what the field sends at the edge: a ClientHandle that is not one of
its own items (out of the tag table, or another driver's tag) is counted and logged, never
stored and never raised (before, one such value stopped the driver, then the whole server)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from asyncua import ua

from drivers.opcua.driver import OpcUaDriver
from scada import status as st
from city_scada import load_config
from scada.tagdb import TEXT, TagDB
from tests.integration.helpers import write_tags

T = datetime(2026, 11, 28, 10, 0, 0, tzinfo=timezone.utc)


def item(handle, value: float) -> ua.MonitoredItemNotification:
    return ua.MonitoredItemNotification(ClientHandle=handle, Value=ua.DataValue(
        ua.Variant(value), StatusCode=ua.StatusCode(st.GOOD), SourceTimestamp=T))


def test_foreign_and_out_of_range_client_handles_touch_no_tag(tmp_path):
    write_tags(tmp_path, ["devices.csv"])
    (tmp_path / "devices.csv").write_text(
        "name,type,commune,lat,lon,endpoint,unit\n"
        "J-DIJ-001,traffic_junction,Dijon,47.32,5.04,opc.tcp://127.0.0.1:1/traffic/,\n"
        "LC-DIJ-001,lighting_cabinet,Dijon,47.30,5.04,127.0.0.1:1,1\n")
    config = load_config(tmp_path)
    names, kinds, deadbands = config.tag_table()
    tagdb = TagDB(names, kinds, deadbands, config.max_ages())
    junction, cabinet = config.devices if config.devices[0].type == "traffic_junction" else config.devices[::-1]
    driver = OpcUaDriver(config, [junction], tagdb)
    own = int(next(t for t in config.tag_ids(junction).tolist() if tagdb.kind[t] != TEXT))  # a numeric tag
    foreign = int(config.tag_ids(cabinet)[0])
    foreign_status = int(tagdb.status[foreign])

    driver._ingest([item(own, 3.0), item(foreign, 99.0), item(len(tagdb) + 5, 1.0), item(2**32 - 1, 1.0)])
    driver.flush()

    assert tagdb.value[own] == 3.0 and tagdb.status[own] == st.GOOD
    assert tagdb.status[foreign] == foreign_status and tagdb.value[foreign] != 99.0  # another driver's tag
    assert driver.rejected_items == 3
    assert driver.diagnostics()["rejected_items"] == 3


class SwallowingDriver(OpcUaDriver):
    """A session attempt that, like asyncua under Python 3.11's asyncio.wait_for race, turns the
    task's cancellation into an ordinary error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attempted = asyncio.Event()

    async def _session(self, s) -> None:
        self.attempted.set()
        try:
            await asyncio.Event().wait()  # connecting: only a cancellation ends this
        except asyncio.CancelledError:
            raise ConnectionError("connection lost while connecting") from None


async def test_a_cancellation_a_library_turned_into_an_error_still_stops_the_session_loop(tmp_path):
    write_tags(tmp_path, ["devices.csv"])
    (tmp_path / "devices.csv").write_text(
        "name,type,commune,lat,lon,endpoint,unit\nJ-DIJ-001,traffic_junction,Dijon,47.32,5.04,opc.tcp://127.0.0.1:1/traffic/,\n"
    )
    config = load_config(tmp_path)
    tagdb = TagDB(*config.tag_table())
    driver = SwallowingDriver(config, list(config.devices), tagdb, backoff_base=0.01, backoff_cap=0.01)
    (session,) = driver.sessions.values()
    task = asyncio.create_task(driver._session_loop(session))
    await asyncio.wait_for(driver.attempted.wait(), 10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)  # before the fix: retried for ever, never ended
    assert task in done, f"the session loop went on after its cancellation ({session.attempts} attempts)"
    assert task.cancelled() and session.attempts == 1
