"""The OPC UA driver checks what the field sends at the edge: a ClientHandle that is not one of
its own items (out of the tag table, or another driver's tag) is counted and logged, never
stored and never raised (before, one such value stopped the driver, then the whole server)."""

from __future__ import annotations

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
