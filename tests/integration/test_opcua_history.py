"""OPC UA HistoryRead end to end: the historian's store behind a real HmiServer, an asyncua client.

The history of a lighting cabinet is written through the Historian's own store (a known
irregular series, some of it merged, some still pending) and through its compressor (points
held, not stored yet); the server listens on a free loopback port; an asyncua client reads
raw history in small pages (continuation points) forward and backward, with bounds, and
processed history (Average, Minimum, Maximum, Count, Interpolative, TimeAverage) compared
with numpy. Refusals are Bad status codes. The last test runs the real server process
against the lighting simulator and reads a cabinet's history over OPC UA and with
`scada history`.

The tests on ``cab`` share one server (an asyncua server takes seconds to load its nodeset):
each writes and reads the history of a cabinet of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import io
import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.ua import uaerrors

from scada import status as st
from scada.historian.compress import StoredBatch
from scada.historian.service import Historian
from scada.opcua.address_space import NAMESPACE_URI
from scada.opcua.history import CALCULATED, INFO_DATA_VALUE, INTERPOLATED, PARTIAL
from scada.opcua.server import HmiServer
from scada.tagdb import TagDB
from simulators.inventory import Cabinet
from tests import configs
from tests.leaks import tasks_left

from .helpers import (
    DEADLINE,
    ROOT,
    Process,
    free_port,
    free_port_range,
    scada_run_args,
    serving,
    until_read,
    wait_port,
    write_cabinets,
)

pytestmark = pytest.mark.integration

S = 1_000_000_000
MIN = 60 * S
HOUR = 3600 * S
T0 = 1_795_000_000 * S // HOUR * HOUR  # a whole hour (2026-11-19T...)
SPAN = 2 * HOUR
OI = ua.ObjectIds
SC = ua.StatusCodes
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CABINETS = 12  # one per test on the shared server
DEVICES = "\ndevices:\n" + "".join(
    f"  - {{name: LC-{k}, type: lighting_cabinet, commune: {('Talant', 'Dijon')[k % 2 == 0]}, lat: 47.3, lon: 5.0, "
    f'endpoint: "10.0.0.{k}:502"}}\n'
    for k in range(1, CABINETS + 1)
)


def dt(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(ns) // 1000)


def ns(d: datetime) -> int:
    delta = d - EPOCH
    return (delta.days * 86400 + delta.seconds) * S + delta.microseconds * 1000


def series(seed: int, n: int, bad_share: float = 0.0):
    """Irregular times in [T0, T0 + SPAN) on whole microseconds (what OPC UA carries), a random walk."""
    rng = np.random.default_rng(seed)
    times = T0 + np.sort(rng.choice(SPAN // 1000, n, replace=False)) * 1000
    values = np.round(100 + np.cumsum(rng.normal(0, 1, n)), 3)
    status = np.where(rng.random(n) < bad_share, st.BAD_COMMUNICATION_ERROR, st.GOOD).astype(np.uint32)
    return times.astype(np.int64), values, status


def write_config(folder: Path, base_port: int) -> list[Cabinet]:
    """Three simulated cabinets (two in Dijon) for the real server process, polled fast."""
    return write_cabinets(folder, base_port, "LC-H")


class Cabinets:
    """Config + TagDB + Historian (its store, its compressor) + HmiServer on loopback; ``device``
    is the cabinet that ``tag``, ``node`` and ``store`` name when given none."""

    def __init__(self, folder: Path) -> None:
        self.config = configs.write_config(folder, DEVICES, "alarms: []\n")
        self.tagdb = TagDB(*self.config.tag_table())
        (folder / "data").mkdir()
        self.historian = Historian(self.config, self.tagdb, folder / "data")
        self.url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
        self.hmi = HmiServer(self.config, self.tagdb, self.url, history=self.historian)
        self.ns = 0
        self.device = "LC-1"

    def tag(self, point: str, device: str | None = None) -> int:
        device = device or self.device
        d = self.config.device(device)
        return self.tagdb.id_of(f"{d.commune}/lighting/{device}/{point}")

    def node(self, point: str, device: str | None = None) -> ua.NodeId:
        return ua.NodeId(self.tagdb.names[self.tag(point, device)], self.ns)

    def store(self, point: str, times, values, status, device: str | None = None, chunks: int = 5) -> None:
        """Write through the historian's store in several batches, the first ones merged."""
        tag = self.tag(point, device)
        for k, part in enumerate(np.array_split(np.arange(len(times)), chunks)):
            self.historian.store.write(
                StoredBatch(np.full(len(part), tag, np.int64), values[part], status[part], times[part])
            )
            if k < chunks - 2:
                self.historian.store.merge()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    c = Cabinets(tmp_path_factory.mktemp("history") / "cfg")
    try:
        async with serving(c.hmi):
            c.ns = c.hmi.ns
            yield c
    finally:
        c.historian.store.close()
    left = await tasks_left()
    assert not left, f"the module's server left asyncio tasks pending: {left}"


@pytest.fixture(scope="module")
def cabinets_used():
    return itertools.count(1)


@pytest.fixture
def cab(server: Cabinets, cabinets_used) -> Cabinets:
    """The module's server, on a cabinet no test has used."""
    k = next(cabinets_used)
    assert k <= CABINETS, "one more cabinet in DEVICES for the new test"
    view = copy.copy(server)
    view.device = f"LC-{k}"
    return view


on_server = pytest.mark.asyncio(loop_scope="module")


@contextlib.asynccontextmanager
async def connect(url: str):
    async with Client(url, timeout=10) as client:
        yield client


async def history_read(
    client: Client,
    details,
    nodes: list[ua.NodeId],
    cps: list[bytes | None] | None = None,
    timestamps=ua.TimestampsToReturn.Source,
    release: bool = False,
) -> list[ua.HistoryReadResult]:
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = timestamps
    params.ReleaseContinuationPoints = release
    for k, n in enumerate(nodes):
        params.NodesToRead.append(ua.HistoryReadValueId(NodeId=n, ContinuationPoint=cps[k] if cps else None))
    return await client.uaclient.history_read(params)


def raw(start: int | None, end: int | None, n: int = 0, bounds: bool = False) -> ua.ReadRawModifiedDetails:
    return ua.ReadRawModifiedDetails(
        IsReadModified=False,
        StartTime=dt(start) if start is not None else ua.get_win_epoch(),
        EndTime=dt(end) if end is not None else ua.get_win_epoch(),
        NumValuesPerNode=n,
        ReturnBounds=bounds,
    )


def processed(start: int, end: int, interval_ns: int, aggregates: list[int]) -> ua.ReadProcessedDetails:
    return ua.ReadProcessedDetails(
        StartTime=dt(start),
        EndTime=dt(end),
        ProcessingInterval=interval_ns / 1e6,
        AggregateType=[ua.NodeId(a) for a in aggregates],
    )


async def read_all_pages(client, details, node) -> tuple[list[ua.DataValue], int]:
    """Every page of a read, following continuation points: (values, pages)."""
    out: list[ua.DataValue] = []
    cp = None
    pages = 0
    while True:
        res = (await history_read(client, details, [node], [cp]))[0]
        assert res.StatusCode.is_good(), res.StatusCode
        pages += 1
        out.extend(res.HistoryData.DataValues)
        cp = res.ContinuationPoint
        if not cp:
            return out, pages
        assert pages < 10_000


def columns(dvs: list[ua.DataValue]):
    t = np.array([ns(d.SourceTimestamp) for d in dvs], np.int64)
    v = np.array([np.nan if d.Value.Value is None else d.Value.Value for d in dvs], np.float64)
    s = np.array([d.StatusCode.value for d in dvs], np.uint32)
    return t, v, s


# -- attributes --------------------------------------------------------------------------------


@on_server
async def test_tag_variables_are_historizing_with_history_read_access(cab: Cabinets) -> None:
    async with connect(cab.url) as client:
        power = client.get_node(cab.node("power"))
        assert (await power.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
        level = (await power.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        user_level = (await power.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value
        assert level & ua.AccessLevel.HistoryRead.mask and level & ua.AccessLevel.CurrentRead.mask
        assert user_level & ua.AccessLevel.HistoryRead.mask
        # Diagnostics counters are not recorded: not historizing, no HistoryRead bit.
        rtt = client.get_node(
            ua.NodeId(f"{cab.tagdb.names[cab.tag('power')].rsplit('/', 1)[0]}/Diagnostics/rtt", cab.ns)
        )
        assert (await rtt.read_attribute(ua.AttributeIds.Historizing)).Value.Value is False
        assert not (await rtt.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value & ua.AccessLevel.HistoryRead.mask
        # The capabilities say what the server does.
        assert await client.get_node(OI.HistoryServerCapabilities_AccessHistoryDataCapability).read_value() is True
        assert await client.get_node(OI.HistoryServerCapabilities_MaxReturnDataValues).read_value() == 10_000
        for folder in (
            OI.Server_ServerCapabilities_AggregateFunctions,
            OI.HistoryServerCapabilities_AggregateFunctions,
        ):
            children = {r.NodeId for r in await client.get_node(folder).get_references(OI.Organizes)}
            assert {
                ua.NodeId(OI.AggregateFunction_Average),
                ua.NodeId(OI.AggregateFunction_Interpolative),
                ua.NodeId(OI.AggregateFunction_TimeAverage),
            } <= children


# -- raw ---------------------------------------------------------------------------------------


@on_server
async def test_raw_history_in_pages_returns_every_value_once_in_order(cab: Cabinets) -> None:
    times, values, status = series(1, 1000, bad_share=0.05)
    cab.store("power", times, values, status)
    async with connect(cab.url) as client:
        node = cab.node("power")
        dvs, pages = await read_all_pages(client, raw(T0, T0 + SPAN, n=37), node)
        assert pages == -(-1000 // 37)
        t, v, s = columns(dvs)
        np.testing.assert_array_equal(t, times)
        np.testing.assert_array_equal(s, status)
        bad = status != st.GOOD
        np.testing.assert_array_equal(v[~bad], values[~bad])
        assert all(d.ServerTimestamp is None for d in dvs)  # only source times are recorded

        # A sub-range: [start, end), the end excluded.
        lo, hi = int(times[100]), int(times[200])
        dvs, _ = await read_all_pages(client, raw(lo, hi, n=0), node)
        np.testing.assert_array_equal(columns(dvs)[0], times[100:200])

        # asyncua's own helper (TimestampsToReturn Both) reads the same values.
        got = await client.get_node(node).read_raw_history(dt(T0), dt(T0 + SPAN), return_bounds=False)
        np.testing.assert_array_equal(columns(got)[0], times)

        # Backward (start > end): (end, start], newest first, in pages.
        dvs, pages = await read_all_pages(client, raw(int(times[-1]), int(times[0]), n=50), node)
        assert pages == -(-999 // 50)
        np.testing.assert_array_equal(columns(dvs)[0], times[1:][::-1])

        # End + NumValuesPerNode: the last values up to the end (included), newest first.
        res = (await history_read(client, raw(None, int(times[500]), n=10), [node]))[0]
        np.testing.assert_array_equal(columns(res.HistoryData.DataValues)[0], times[491:501][::-1])
        assert res.ContinuationPoint is None
        # Start + NumValuesPerNode: the first values from the start.
        res = (await history_read(client, raw(int(times[500]), None, n=10), [node]))[0]
        np.testing.assert_array_equal(columns(res.HistoryData.DataValues)[0], times[500:510])
        # Start == end: the value at that time.
        res = (await history_read(client, raw(int(times[7]), int(times[7])), [node]))[0]
        np.testing.assert_array_equal(columns(res.HistoryData.DataValues)[0], times[7:8])
        # Nothing in the range: GoodNoData.
        res = (await history_read(client, raw(T0 - HOUR, T0 - 1000), [node]))[0]
        assert res.StatusCode.value == SC.GoodNoData and res.HistoryData.DataValues == []


@on_server
async def test_raw_history_with_bounds(cab: Cabinets) -> None:
    times, values, status = series(2, 200)
    cab.store("power", times, values, status)
    async with connect(cab.url) as client:
        node = cab.node("power")
        # Between stored points: the point before the start and the one after the end come too.
        lo, hi = int(times[10]) + 1000, int(times[20]) + 1000
        dvs, _ = await read_all_pages(client, raw(lo, hi, bounds=True), node)
        np.testing.assert_array_equal(columns(dvs)[0], times[10:22])
        # On stored points: they are their own bounds.
        dvs, _ = await read_all_pages(client, raw(int(times[10]), int(times[20]), bounds=True), node)
        np.testing.assert_array_equal(columns(dvs)[0], times[10:21])
        # Before and after the history: Bad_BoundNotFound at the requested times.
        dvs, _ = await read_all_pages(client, raw(T0 - HOUR, T0 + 3 * HOUR, bounds=True), node)
        t, v, s = columns(dvs)
        assert (t[0], s[0], t[-1], s[-1]) == (T0 - HOUR, SC.BadBoundNotFound, T0 + 3 * HOUR, SC.BadBoundNotFound)
        assert np.isnan(v[0]) and np.isnan(v[-1])
        np.testing.assert_array_equal(t[1:-1], times)
        # Bounds in pages: each value once, the bounds included.
        dvs, pages = await read_all_pages(client, raw(lo, hi, n=4, bounds=True), node)
        assert pages == 3
        np.testing.assert_array_equal(columns(dvs)[0], times[10:22])
        # Backward with bounds: the point after the start first, the point before the end last.
        dvs, _ = await read_all_pages(client, raw(hi, lo, n=5, bounds=True), node)
        np.testing.assert_array_equal(columns(dvs)[0], times[10:22][::-1])


@on_server
async def test_raw_history_includes_points_not_stored_yet(cab: Cabinets) -> None:
    """A ramp through the compressor: its first point is stored, the rest is held; a read sees both."""
    tag = cab.tag("power")
    t0 = (time.time_ns() - 60 * S) // 1000 * 1000  # whole microseconds, as OPC UA carries them
    for k in range(6):
        batch = cab.tagdb.update(np.array([tag]), np.array([1.0 + k]), st.GOOD, t0 + k * S)
        kept = cab.historian.compressor.compress(batch)
        if len(kept):
            cab.historian.store.write(kept)
    assert cab.historian.store.read_raw(tag, t0, t0 + HOUR).times.tolist() == [t0]  # only the first
    async with connect(cab.url) as client:
        dvs, _ = await read_all_pages(client, raw(t0, t0 + HOUR), cab.node("power"))
        t, v, _ = columns(dvs)
        assert t.tolist() == [t0, t0 + 5 * S]  # the held snapshot, the ramp's end
        assert v.tolist() == [1.0, 6.0]
        # ... and as the bound after an end between them.
        dvs, _ = await read_all_pages(client, raw(t0, t0 + 2 * S, bounds=True), cab.node("power"))
        assert columns(dvs)[0].tolist() == [t0, t0 + 5 * S]


# -- processed ---------------------------------------------------------------------------------


def expected_simple(times, values, status, start, end, interval):
    """Per interval of [start, end): count, mean, min, max of the Good values (numpy)."""
    k = -(-(end - start) // interval)
    inside = (times >= start) & (times < end) & (status == st.GOOD)
    key = (times[inside] - start) // interval
    v = values[inside]
    count = np.bincount(key, minlength=k)
    with np.errstate(invalid="ignore"):
        mean = np.bincount(key, weights=v, minlength=k) / count
    mn = np.full(k, np.nan)
    mx = np.full(k, np.nan)
    np.fmin.at(mn, key, v)
    np.fmax.at(mx, key, v)
    return count, mean, mn, mx


@pytest.mark.parametrize(
    "start_offset,interval",
    [(0, 10 * MIN), (13 * S, 7 * MIN)],
    ids=["whole minutes (rollups)", "unaligned (raw values)"],
)
@on_server
async def test_processed_average_minimum_maximum_count(cab: Cabinets, start_offset: int, interval: int) -> None:
    times, values, status = series(3, 2000, bad_share=0.05)
    cab.store("power", times, values, status)
    start, end = T0 + start_offset, T0 + SPAN
    count, mean, mn, mx = expected_simple(times, values, status, start, end, interval)
    k = len(count)
    aggs = [
        OI.AggregateFunction_Average,
        OI.AggregateFunction_Minimum,
        OI.AggregateFunction_Maximum,
        OI.AggregateFunction_Count,
    ]
    node = cab.node("power")
    async with connect(cab.url) as client:
        res = await history_read(client, processed(start, end, interval, aggs), [node] * 4)
        for r in res:
            assert r.StatusCode.is_good() and r.ContinuationPoint is None
            t = columns(r.HistoryData.DataValues)[0]
            np.testing.assert_array_equal(t, start + np.arange(k) * interval)  # interval starts
        got = {a: columns(r.HistoryData.DataValues) for a, r in zip(aggs, res)}
        np.testing.assert_allclose(got[OI.AggregateFunction_Average][1], mean, rtol=1e-12)
        np.testing.assert_array_equal(got[OI.AggregateFunction_Minimum][1], mn)
        np.testing.assert_array_equal(got[OI.AggregateFunction_Maximum][1], mx)
        np.testing.assert_array_equal(got[OI.AggregateFunction_Count][1], count)
        assert all(type(d.Value.Value) is int for d in res[3].HistoryData.DataValues)
        # Status: Calculated; Uncertain where Bad values were left out; Partial on a short last interval.
        partial_last = (end - start) % interval != 0
        inside = (times >= start) & (times < end)
        had_bad = np.bincount((times[inside & (status != st.GOOD)] - start) // interval, minlength=k) > 0
        for j, d in enumerate(res[0].HistoryData.DataValues):
            code = d.StatusCode.value
            assert code & 0xFFFF == INFO_DATA_VALUE | CALCULATED | (PARTIAL if partial_last and j == k - 1 else 0)
            assert (code & 0xFFFF0000) == (SC.UncertainDataSubNormal if had_bad[j] else SC.Good)


@on_server
async def test_processed_interpolative_and_time_average(cab: Cabinets) -> None:
    times, values, status = series(4, 500)
    cab.store("mains_voltage", times, values, status)
    start, end, interval = T0 + 5 * MIN, T0 + SPAN - 5 * MIN, 4 * MIN
    edges = start + np.arange(-(-(end - start) // interval)) * interval
    node = cab.node("mains_voltage")
    async with connect(cab.url) as client:
        res = await history_read(
            client,
            processed(start, end, interval, [OI.AggregateFunction_Interpolative, OI.AggregateFunction_TimeAverage]),
            [node, node],
        )
        t, v, s = columns(res[0].HistoryData.DataValues)
        np.testing.assert_array_equal(t, edges)
        np.testing.assert_allclose(v, np.interp(edges, times, values), rtol=1e-9)
        assert [hex(c) for c in s.tolist()] == [hex(INFO_DATA_VALUE | INTERPOLATED)] * len(s)
        # TimeAverage: the mean of the linear signal over each interval (fine numeric integration).
        t, v, s = columns(res[1].HistoryData.DataValues)
        np.testing.assert_array_equal(t, edges)
        for j, a in enumerate(edges.tolist()):
            b = min(a + interval, end)
            grid = np.concatenate([[a], times[(times > a) & (times < b)], [b]]).astype(np.float64)
            y = np.interp(grid, times, values)
            exact = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(grid))) / (b - a)  # the signal is linear between points
            assert v[j] == pytest.approx(exact, rel=1e-9)
        assert all(code & 0xFFFF0000 == SC.Good for code in s.tolist())


@on_server
async def test_processed_backward_and_in_pages(cab: Cabinets, monkeypatch) -> None:
    times, values, status = series(5, 1500)
    cab.store("power", times, values, status)
    node = cab.node("power")
    interval = 7 * MIN
    start, end = T0 + SPAN, T0 + 13 * S  # backward: intervals (t - 7 min, t] from the start down
    async with connect(cab.url) as client:
        res = (await history_read(client, processed(start, end, interval, [OI.AggregateFunction_Count]), [node]))[0]
        t, v, s = columns(res.HistoryData.DataValues)
        k = -(-(start - end) // interval)
        np.testing.assert_array_equal(t, start - np.arange(k) * interval)
        lows = np.maximum(t - interval, end)
        expected = [int(((times > lo) & (times <= hi)).sum()) for lo, hi in zip(lows.tolist(), t.tolist())]
        assert v.tolist() == expected
        assert [bool(c & PARTIAL) for c in s.tolist()] == [False] * (k - 1) + [True]
        res = (
            await history_read(client, processed(start, end, interval, [OI.AggregateFunction_Interpolative]), [node])
        )[0]
        t, v, _ = columns(res.HistoryData.DataValues)
        np.testing.assert_allclose(v, np.interp(t, times, values), rtol=1e-9)

        # More intervals than a response holds: continuation points, every interval once.
        monkeypatch.setattr(cab.hmi.tag_history, "max_values", 5)
        details = processed(T0, T0 + SPAN, MIN, [OI.AggregateFunction_Maximum])
        dvs, pages = await read_all_pages(client, details, node)
        assert pages == 24
        t, v, _ = columns(dvs)
        np.testing.assert_array_equal(t, T0 + np.arange(120) * MIN)
        np.testing.assert_array_equal(v, expected_simple(times, values, status, T0, T0 + SPAN, MIN)[3])


# -- refusals ------------------------------------------------------------------------------------


@on_server
async def test_refusals_are_bad_status_codes(cab: Cabinets) -> None:
    times, values, status = series(6, 100)
    cab.store("power", times, values, status)
    power = cab.node("power")
    device = ua.NodeId(cab.tagdb.names[cab.tag("power")].rsplit("/", 1)[0], cab.ns)
    rtt = ua.NodeId(f"{device.Identifier}/Diagnostics/rtt", cab.ns)
    async with connect(cab.url) as client:
        # Per node: an unsupported aggregate beside a supported one; a folder; an unknown node;
        # a tag that is not recorded.
        aggs = [
            OI.AggregateFunction_Average,
            OI.AggregateFunction_Total,
            OI.AggregateFunction_Average,
            OI.AggregateFunction_Average,
            OI.AggregateFunction_Average,
        ]
        res = await history_read(
            client,
            processed(T0, T0 + HOUR, 10 * MIN, aggs),
            [power, power, device, ua.NodeId("Nowhere/x", cab.ns), rtt],
        )
        assert [r.StatusCode.value for r in res] == [
            SC.Good,
            SC.BadAggregateNotSupported,
            SC.BadHistoryOperationUnsupported,
            SC.BadNodeIdUnknown,
            SC.BadHistoryOperationUnsupported,
        ]
        res = await history_read(client, raw(T0, T0 + HOUR), [device, ua.NodeId(OI.Server), rtt])
        assert [r.StatusCode.value for r in res] == [SC.BadHistoryOperationUnsupported] * 3

        async def one(details, cp=None, **kw) -> int:
            return (await history_read(client, details, [power], [cp], **kw))[0].StatusCode.value

        assert await one(raw(None, None)) == SC.BadInvalidTimestampArgument  # no time at all
        assert await one(raw(T0, None)) == SC.BadInvalidTimestampArgument  # one time, no count
        assert await one(processed(T0, T0, MIN, [OI.AggregateFunction_Average])) == SC.BadInvalidArgument
        missing_end = processed(T0, T0 + HOUR, MIN, [OI.AggregateFunction_Average])
        missing_end.EndTime = ua.get_win_epoch()
        assert await one(missing_end) == SC.BadInvalidTimestampArgument
        negative = processed(T0, T0 + HOUR, -MIN, [OI.AggregateFunction_Average])
        assert await one(negative) == SC.BadInvalidArgument
        modified = raw(T0, T0 + HOUR)
        modified.IsReadModified = True
        assert await one(modified) == SC.BadHistoryOperationUnsupported
        config = processed(T0, T0 + HOUR, MIN, [OI.AggregateFunction_Average])
        config.AggregateConfiguration = ua.AggregateConfiguration(
            UseServerCapabilitiesDefaults=False, TreatUncertainAsBad=False
        )
        assert await one(config) == SC.BadAggregateConfigurationRejected
        assert await one(raw(T0, T0 + HOUR), timestamps=ua.TimestampsToReturn.Server) == SC.BadTimestampNotSupported

        # Continuation points: garbage, or one of another request, are refused; releasing is Good.
        first = (await history_read(client, raw(T0, T0 + HOUR, n=5), [power]))[0]
        assert first.ContinuationPoint
        assert await one(raw(T0, T0 + HOUR, n=5), b"garbage") == SC.BadContinuationPointInvalid
        assert await one(raw(T0, T0 + HOUR, n=6), first.ContinuationPoint) == SC.BadContinuationPointInvalid
        released = (
            await history_read(client, raw(T0, T0 + HOUR, n=5), [power], [first.ContinuationPoint], release=True)
        )[0]
        assert released.StatusCode.is_good() and not released.HistoryData.DataValues

        # The whole request: Neither is no timestamp to read history by; aggregates must match the nodes.
        with pytest.raises(uaerrors.BadTimestampsToReturnInvalid):
            await history_read(client, raw(T0, T0 + HOUR), [power], timestamps=ua.TimestampsToReturn.Neither)
        with pytest.raises(uaerrors.BadAggregateListMismatch):
            await history_read(client, processed(T0, T0 + HOUR, MIN, [OI.AggregateFunction_Average]), [power, power])


# -- the real server process ---------------------------------------------------------------------


async def test_cabinet_history_from_the_running_server(tmp_path: Path) -> None:
    """Simulator + `scada run` as processes: an asyncua client reads a cabinet's raw and processed
    history, and `scada history` exports it while the server runs."""
    base = free_port_range(3)
    cabinets = write_config(tmp_path / "config", base)
    inventory = tmp_path / "config" / "inventory" / "lighting-cabinets.csv"
    opc_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/scada/"
    data = tmp_path / "data"
    # Before the server starts, so every point it stores is in the range read below (on a busy
    # machine its first poll can come seconds before its OPC UA port opens).
    t_start = time.time_ns() - S
    sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory)], tmp_path / "sim.log")
    server = Process(scada_run_args(tmp_path / "config", data, endpoint), tmp_path / "server.log")
    try:
        wait_port(base + 2)
        wait_port(opc_port)
        cab = cabinets[0]
        async with Client(endpoint, timeout=5) as client:
            ns_ = await client.get_namespace_index(NAMESPACE_URI)
            voltage = client.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/mains_voltage", ns_))
            lamps = client.get_node(ua.NodeId(f"{cab.commune}/lighting/{cab.name}/lamp_count", ns_))

            async def live_and_history():
                live = await voltage.read_data_value(raise_on_bad_status=False)
                return live, await voltage.read_raw_history(dt(t_start), datetime.now(UTC), return_bounds=False)

            # The newest value in the history is the live one (stored, or held by the compressor).
            await until_read(
                live_and_history,
                lambda lh: (
                    lh[0].StatusCode.is_good()
                    and lh[1]
                    and lh[1][-1].StatusCode.is_good()
                    and lh[1][-1].Value.Value == lh[0].Value.Value
                ),
                15,
                "the live value in the cabinet's history",
            )
            # Both aggregates once the historian has the lamp count too (polled with the voltage,
            # in the same or a later batch): wait for that state, not for a guessed write period.
            lamp_count = await lamps.read_value()

            async def aggregates():
                return await history_read(
                    client,
                    processed(t_start, time.time_ns(), 0, [OI.AggregateFunction_Count, OI.AggregateFunction_Average]),
                    [voltage.nodeid, lamps.nodeid],
                )

            res = await until_read(
                aggregates,
                lambda r: (
                    r[0].StatusCode.is_good()
                    and r[0].HistoryData.DataValues
                    and r[0].HistoryData.DataValues[0].Value.Value >= 1
                    and r[1].StatusCode.is_good()
                    and r[1].HistoryData.DataValues
                    and r[1].HistoryData.DataValues[0].StatusCode.is_good()
                ),
                DEADLINE,
                "the voltage's count and the lamp count's average in the history",
            )
            assert res[0].StatusCode.is_good() and res[0].HistoryData.DataValues[0].Value.Value >= 1
            assert res[1].HistoryData.DataValues[0].Value.Value == lamp_count

        # The command line reads the same store while the server runs: every cabinet of the
        # commune once the historian's periodic write has put their lamp counts there.
        want = {f"{c.commune}/lighting/{c.name}/lamp_count" for c in cabinets if c.commune == cab.commune}

        async def exported():
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "city_scada",
                    "history",
                    f"{cab.commune}/lighting/*/lamp_count",
                    "--data",
                    str(data),
                    "--from",
                    dt(t_start).isoformat(),
                ],
                capture_output=True,
                text=True,
                timeout=DEADLINE,
                cwd=ROOT,
            )
            assert out.returncode == 0, out.stderr
            return list(csv.DictReader(io.StringIO(out.stdout)))

        rows = await until_read(
            exported, lambda rows: {r["tag"] for r in rows} == want, 60, "every lamp count exported"
        )
        assert all(r["status"] == "Good" and float(r["value"]) > 0 for r in rows)
        assert server.stop() == 0, server.output()
    finally:
        sim.stop()
        server.stop()


# -- Value attribute: reads and refused writes ---------------------------------------------------


@on_server
async def test_tag_values_read_as_published_and_no_client_can_write_them(cab: Cabinets) -> None:
    """A tag's Value is the tag database's as published; a Write is refused, even from a session
    that logs in as "admin" (asyncua's default would make it an administrator, skipping the
    AccessLevel check)."""
    tag = cab.tag("power")
    cab.tagdb.update(np.array([tag]), np.array([7.25]), st.GOOD)
    for user in (None, "admin"):
        client = Client(cab.url, timeout=10)
        if user:
            client.set_user(user)
            client.set_password("anything")
        async with client:
            node = client.get_node(cab.node("power"))
            dv = await until_read(
                lambda node=node: node.read_data_value(raise_on_bad_status=False),
                lambda d: d.Value.Value == 7.25,
                30,
                "the published value",
            )
            assert dv.StatusCode.is_good() and dv.SourceTimestamp is not None
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node.write_value(ua.DataValue(ua.Variant(99.0, ua.VariantType.Double)))
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied, user
            assert (await node.read_value()) == 7.25
