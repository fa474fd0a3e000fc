"""History reads of an OPC UA front process: the mirror answers what the real historian answers.

A real Historian writes into a store in a temp folder (some rows merged, some still in
``staging``), holds points in its compressor and in its write queue; a HistoryMirror opens
the same file read-only and asks for the unstored points through ``serve_unstored`` with the
reply pickled, as the front's channel carries it. The same HistoryRead requests through
TagHistory over the mirror and over the historian give identical results. A second process
reads the store while this one writes.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from asyncua import Server, ua

from scada import status as st
from scada.front.history import OP_UNSTORED, HistoryMirror, serve_unstored, unpack_unstored
from scada.historian.compress import StoredBatch
from scada.historian.merge import Part, merge_parts
from scada.historian.service import Historian
from scada.historian.store import HistoryError
from scada.opcua.history import (
    HistorySource,
    LocalHistory,
    TagHistory,
    history_source,
    unstored_columns,
    unstored_points,
)
from scada.tagdb import ChangeBatch, TagDB
from tests import configs
from tests.integration.helpers import DEADLINE
from tests.integration.test_opcua_history import EPOCH, HOUR, OI, SC, T0, S, processed, raw

ROOT = Path(__file__).resolve().parents[2]

DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}
  - {name: BO-1, type: access_bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.3:1883"}
"""
POWER, DOOR, CLASS = (
    "Talant/lighting/LC-1/power",
    "Talant/lighting/LC-1/door_open",
    "Dijon/bollard/BO-1/last_access_class",
)


class Core:
    """A configuration, its TagDB and a real Historian over a store in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.config = configs.write_config(folder / "cfg", DEVICES, "alarms: []\n")
        self.tagdb = TagDB(*self.config.tag_table())
        (folder / "data").mkdir()
        self.historian = Historian(self.config, self.tagdb, folder / "data")
        self.path = self.historian.store.path
        self.requests: list[tuple] = []

    def id(self, name: str) -> int:
        return self.tagdb.id_of(name)

    async def request(self, op: str, *args):
        """The front channel's request, as the lead's link serves it: the handler's reply pickled."""
        self.requests.append((op, *args))
        assert op == OP_UNSTORED
        return pickle.loads(pickle.dumps(serve_unstored(self.historian, *pickle.loads(pickle.dumps(args)))))

    def mirror(self) -> HistoryMirror:
        return HistoryMirror(self.path, list(self.tagdb.names), self.request)


def fill(core: Core) -> dict[str, np.ndarray]:
    """A history in every place a point can be: merged, in staging, in the historian's write
    queue, held by its compressor. Returns the times of each place (power)."""
    h, store = core.historian, core.historian.store
    power, door, cls = core.id(POWER), core.id(DOOR), core.id(CLASS)
    rng = np.random.default_rng(7)
    times = T0 + np.sort(rng.choice(HOUR // S, 300, replace=False)) * S
    values = np.round(100 + np.cumsum(rng.normal(0, 1, 300)), 3)
    status = np.where(rng.random(300) < 0.05, st.BAD_COMMUNICATION_ERROR, st.GOOD).astype(np.uint32)
    doors = (np.arange(300) % 2).astype(float)
    labels = tuple(["car", "bus", "truck"][k % 3] for k in range(300))

    def batch(part: slice) -> StoredBatch:
        n = len(times[part])
        ids = np.concatenate([np.full(n, power), np.full(n, door), np.full(n, cls)])
        return StoredBatch(
            ids,
            np.concatenate([values[part], doors[part], np.full(n, np.nan)]),
            np.concatenate([status[part], np.full(2 * n, st.GOOD, np.uint32)]),
            np.concatenate([times[part]] * 3),
            (None,) * (2 * n) + labels[part],
        )

    store.write(batch(slice(0, 150)))
    store.merge()
    store.write(batch(slice(150, 250)))  # committed, not merged: in staging
    assert store.pending_rows == 300
    # The historian's own path for a TagDB batch: compressed, kept points queued for its next
    # write, the newest held by the compressor. A ramp: the compressor holds its end.
    later = T0 + HOUR + np.arange(1, 41) * S
    for k, t in enumerate(later.tolist()):
        h._take(
            ChangeBatch(k, np.array([power]), np.array([50.0 + k]), np.array([st.GOOD], np.uint32), np.array([t]), t)
        )
        h._take(
            ChangeBatch(
                k, np.array([cls]), np.array([np.nan]), np.array([st.GOOD], np.uint32), np.array([t]), t, (f"van-{k}",)
            )
        )
    queued = np.concatenate([b.times[b.ids == power] for b in h.unstored()])
    held = h.compressor.pending(np.array([power])).times
    assert len(queued) and len(held)  # both places hold points of the read below
    return {"merged": times[:150], "staging": times[150:250], "queued": queued, "held": held}


def history_params(details, nodes: Sequence[ua.NodeId], cps: Sequence[bytes | None] | None = None):
    """What a client's HistoryRead carries (as tests/integration/test_opcua_history.history_read)."""
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ua.TimestampsToReturn.Source
    params.ReleaseContinuationPoints = False  # asyncua's default is True
    for k, n in enumerate(nodes):
        params.NodesToRead.append(ua.HistoryReadValueId(NodeId=n, ContinuationPoint=cps[k] if cps else None))
    return params


def plain(results: list[ua.HistoryReadResult]) -> list[tuple]:
    """A HistoryRead answer as comparable tuples: status, continuation point, every value."""
    out = []
    for r in results:
        dvs = getattr(r.HistoryData, "DataValues", None)  # a Bad result has an empty ExtensionObject
        values = (
            None
            if dvs is None
            else [
                (d.Value.VariantType, d.Value.Value, d.StatusCode.value, d.SourceTimestamp, d.ServerTimestamp)
                for d in dvs
            ]
        )
        out.append((r.StatusCode.value, r.ContinuationPoint, values))
    return out


@pytest.fixture
async def server():
    s = Server()
    await s.init()
    ns = await s.register_namespace("urn:test:history-mirror")
    return s, ns


async def read_pages(th: TagHistory, details, nodes: list[ua.NodeId]) -> list[list[tuple]]:
    """Every page of a read, following the continuation points: one plain answer per page."""
    pages = []
    cps: list[bytes | None] = [None] * len(nodes)
    while True:
        res = await th.read_history(history_params(details, nodes, cps))
        pages.append(plain(res))
        cps = [r.ContinuationPoint for r in res]
        if not any(cps):
            return pages
        assert len(pages) < 1000


async def test_reads_through_the_mirror_equal_reads_through_the_historian(tmp_path: Path, server) -> None:
    core = Core(tmp_path)
    mirror = core.mirror()
    try:
        places = fill(core)
        srv, ns = server
        local = TagHistory(srv, ns, core.config, core.tagdb, core.historian)
        front = TagHistory(srv, ns, core.config, core.tagdb, mirror)
        await local.install()
        await front.install()
        assert isinstance(local.source, LocalHistory) and front.source is mirror
        nodes = [ua.NodeId(name, ns) for name in (POWER, DOOR, CLASS)]
        t_first, t_held = int(places["merged"][0]), int(places["held"][-1])
        mid = int(places["staging"][20])
        reads = [
            raw(T0 - HOUR, T0 + 3 * HOUR, n=37, bounds=True),  # forward in pages, every place, bounds
            raw(T0 + 3 * HOUR, T0 - HOUR, n=41, bounds=True),  # backward in pages
            raw(mid, None, n=500),  # start + N: from staging into the queue and the held point
            raw(None, t_held, n=60),  # end + N, newest first: the held point included
            raw(t_held, t_held),  # the value at one time: the held one
            raw(mid, mid, bounds=True),
            raw(t_first + 1, int(places["queued"][0]) + 1, bounds=True),
            raw(T0 - 2 * HOUR, T0 - HOUR, bounds=True),  # nothing: bounds not found / the first point
        ]
        for details in reads:
            want = await read_pages(local, details, nodes)
            got = await read_pages(front, details, nodes)
            assert got == want, details
        # The comparison covered every place: the forward read returned each of them.
        forward = [v for page in await read_pages(front, reads[0], nodes) for v in page[0][2]]
        seen = {(ts - EPOCH) // timedelta(microseconds=1) * 1000 for *_, ts, _ in forward}
        for where, times in places.items():
            assert set(times.tolist()) <= seen, where
        # Processed reads, aligned on hours (rollups plus staging) and not (raw points).
        for details in (
            processed(T0, T0 + 2 * HOUR, HOUR, [OI.AggregateFunction_Average] * 3),
            processed(T0 + 7 * S, T0 + HOUR + 7 * S, 600 * S, [OI.AggregateFunction_TimeAverage] * 3),
            processed(T0 + HOUR, T0, 300 * S, [OI.AggregateFunction_Interpolative] * 3),
            processed(
                T0,
                T0 + HOUR,
                60 * S,
                [OI.AggregateFunction_Count, OI.AggregateFunction_Maximum, OI.AggregateFunction_Minimum],
            ),
        ):
            want = await read_pages(local, details, nodes)
            assert want[0][0][0] == SC.Good and want[0][0][2]
            assert await read_pages(front, details, nodes) == want
        # Raw reads asked the core once per request, processed ones never.
        assert core.requests and all(op == OP_UNSTORED for op, *_ in core.requests)
    finally:
        mirror.close()
        core.historian.store.close()


async def test_a_failed_unstored_request_fails_the_raw_reads_only(tmp_path: Path, server) -> None:
    core = Core(tmp_path)

    async def unreachable(op: str, *args):
        raise ConnectionError("front channel closed")

    mirror = HistoryMirror(core.path, list(core.tagdb.names), unreachable)
    try:
        fill(core)
        srv, ns = server
        th = TagHistory(srv, ns, core.config, core.tagdb, mirror)
        await th.install()
        node = ua.NodeId(POWER, ns)
        [r] = await th.read_history(history_params(raw(T0, T0 + 3 * HOUR), [node]))
        # Without the newest points the answer would be wrong: none, and a clear status.
        assert r.StatusCode.value == SC.BadDataUnavailable
        [p] = await th.read_history(
            history_params(processed(T0, T0 + HOUR, HOUR, [OI.AggregateFunction_Count]), [node])
        )
        count = core.historian.store.read_processed(core.id(POWER), T0, T0 + HOUR, HOUR, "Count").values[0]
        assert p.StatusCode.value == SC.Good and p.HistoryData.DataValues[0].Value.Value == count > 200
    finally:
        mirror.close()
        core.historian.store.close()


def per_tag_merge(batches: list[StoredBatch], ids: Sequence[int]) -> dict[int, Part]:
    """The unstored points as the historian read them before (one tag at a time): the reference."""
    out = {}
    for tag in sorted(set(ids)):
        parts: list[Part] = []
        for b in batches:
            m = np.flatnonzero(b.ids == tag)
            if len(m):
                parts.append(
                    (
                        b.times[m],
                        b.values[m],
                        b.status[m],
                        None if b.texts is None else tuple(b.texts[i] for i in m.tolist()),
                    )
                )
        out[tag] = merge_parts(parts, keep="first")
    return out


def test_unstored_columns_are_the_per_tag_merge_and_cross_the_channel_unchanged(tmp_path: Path) -> None:
    core = Core(tmp_path)
    try:
        fill(core)
        h = core.historian
        power, door, cls = core.id(POWER), core.id(DOOR), core.id(CLASS)
        # A failing disk's backlog that holds copies of queued points (one time in two batches).
        queued = h.unstored()
        copy = StoredBatch(
            np.array([power, cls, door]),
            np.array([-1.0, np.nan, 1.0]),
            np.zeros(3, np.uint32),
            np.array([queued[0].times[0], T0 + HOUR + S, 5]),
            (None, "copy", None),
        )
        h._backlog.append(copy)
        ids = [cls, power, door, power, 0]
        want = per_tag_merge(h.unstored() + [h.compressor.pending(np.array(sorted(set(ids))))], ids)
        for got in (unstored_points(h, ids), unpack_unstored(pickle.loads(pickle.dumps(serve_unstored(h, ids))))):
            assert sorted(got) == sorted(want)
            for tag, (t, v, s, x) in want.items():
                u = got[tag]
                np.testing.assert_array_equal(u.times, t)
                np.testing.assert_array_equal(u.values, v)
                np.testing.assert_array_equal(u.status, s)
                assert u.texts == x, tag
        # Of two copies of a point the older batch's is kept: the backlog's, before the queue's.
        assert got[power].values[0] == -1.0 and got[cls].texts is not None and got[cls].texts[0] == "copy"
        assert got[door].values.tolist() == [1.0] and got[0].times.tolist() == []
        # The ramp's start (its copy dropped) and its end, held by the compressor: one each.
        assert got[power].times.tolist() == [T0 + HOUR + S, T0 + HOUR + 40 * S]
        empty = unstored_columns(h, [])
        assert len(empty.tags) == 0 and empty.split() == {}
    finally:
        core.historian.store.close()


def test_bad_ids_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    core = Core(tmp_path)
    try:
        n = len(core.tagdb)
        with pytest.raises(ValueError, match=f"within 0-{n - 1}"):
            serve_unstored(core.historian, [0, n])
        with pytest.raises(ValueError, match="within"):
            serve_unstored(core.historian, [-1])
        with pytest.raises(ValueError, match="list of tag ids"):
            serve_unstored(core.historian, ["power"])
        with pytest.raises(ValueError, match="7 columns"):
            unpack_unstored(("not", "ours"))  # type: ignore[arg-type]
        assert serve_unstored(core.historian, [])[0].tolist() == []
    finally:
        core.historian.store.close()


async def test_a_historian_is_wrapped_and_a_source_is_taken_as_it_is(tmp_path: Path) -> None:
    core = Core(tmp_path)
    mirror = core.mirror()
    try:
        assert not isinstance(core.historian, HistorySource)
        local = history_source(core.historian)
        assert isinstance(local, LocalHistory) and local.store is core.historian.store
        assert history_source(mirror) is mirror and history_source(local) is local
        assert isinstance(await local.unstored_points([0]), dict)
    finally:
        mirror.close()
        core.historian.store.close()


def test_the_mirror_rebinds_to_a_reload_s_names(tmp_path: Path) -> None:
    core = Core(tmp_path)
    mirror = core.mirror()
    try:
        power = core.id(POWER)
        core.historian.store.write(
            StoredBatch(np.array([power]), np.array([7.0]), np.zeros(1, np.uint32), np.array([T0]))
        )
        assert mirror.store.read_raw(power, T0, T0 + 1).values.tolist() == [7.0]
        reordered = list(core.tagdb.names)[::-1]
        old = mirror.store
        mirror.rebind(reordered)
        assert old is not mirror.store
        with pytest.raises(RuntimeError, match="closed"):  # a read still on the old one fails clearly
            old.read_raw(power, T0, T0 + 1)
        assert mirror.store.read_raw(reordered.index(POWER), T0, T0 + 1).values.tolist() == [7.0]
        # A name the core's historian never registered: refused, the mirror keeps its names.
        with pytest.raises(HistoryError, match="not in the store"):
            mirror.rebind(reordered + ["Nowhere/lighting/LC-9/power"])
        assert mirror.store.read_raw(reordered.index(POWER), T0, T0 + 1).values.tolist() == [7.0]
    finally:
        mirror.close()
        mirror.close()  # idempotent (front shutdown after a failed start)
        core.historian.store.close()


READER = """
import json, sys
from scada.front.history import HistoryMirror

async def never(op, *args):
    raise AssertionError("the reader only reads the store")

names = json.loads(sys.stdin.readline())
mirror = HistoryMirror(sys.argv[1], names, never)
print("ready", flush=True)
for line in sys.stdin:
    tag, lo, hi = json.loads(line)
    r = mirror.store.read_raw(tag, lo, hi)
    print(json.dumps([r.times.tolist(), r.values.tolist(), r.status.tolist(), mirror.store.bound_before(tag, hi)]),
          flush=True)
mirror.close()
"""


def test_another_process_reads_what_the_writer_commits(tmp_path: Path) -> None:
    core = Core(tmp_path)
    store = core.historian.store
    power = core.id(POWER)
    child = subprocess.Popen(
        [sys.executable, "-c", READER, str(core.path)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None

    def ask(lo: int, hi: int) -> list:
        child.stdin.write(json.dumps([power, lo, hi]) + "\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line, "the reader process died"
        return json.loads(line)

    def mine(lo: int, hi: int) -> list:
        r = store.read_raw(power, lo, hi)
        b = store.bound_before(power, hi)
        return [r.times.tolist(), r.values.tolist(), r.status.tolist(), None if b is None else list(b)]

    try:
        child.stdin.write(json.dumps(list(core.tagdb.names)) + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        assert ask(T0, T0 + HOUR) == [[], [], [], None]
        # Committed after the reader opened the file, not merged: in staging.
        times = T0 + np.arange(10) * S
        store.write(StoredBatch(np.full(10, power), np.arange(10.0), np.zeros(10, np.uint32), times))
        assert store.pending_rows == 10
        assert ask(T0, T0 + HOUR) == mine(T0, T0 + HOUR) and len(ask(T0, T0 + HOUR)[0]) == 10
        # Merged, then more in staging: one point never seen twice or lost across the move.
        store.merge()
        store.write(
            StoredBatch(
                np.full(5, power), np.arange(5.0) + 10, np.zeros(5, np.uint32), times[-1] + S * (1 + np.arange(5))
            )
        )
        got = ask(T0, T0 + HOUR)
        assert got == mine(T0, T0 + HOUR) and got[1] == list(np.arange(15.0))
        assert ask(T0 + 3 * S, T0 + 12 * S) == mine(T0 + 3 * S, T0 + 12 * S)
    finally:
        child.stdin.close()
        assert child.wait(timeout=DEADLINE) == 0
        store.close()


def test_a_reader_keeps_staged_rows_only_while_nothing_is_committed(tmp_path: Path) -> None:
    """The read-only store keeps the staged rows it scanned until the next commit: every read
    answers what the writer's own reads answer, across writes, a rewrite of a point and a merge."""
    core = Core(tmp_path)
    writer = core.historian.store
    mirror = core.mirror()
    reader = mirror.store
    power, cls = core.id(POWER), core.id(CLASS)

    def same() -> None:
        for tag in (power, cls):
            for lo, hi in ((T0, T0 + HOUR), (T0 + 3 * S, T0 + 7 * S)):
                a, b = writer.read_raw(tag, lo, hi), reader.read_raw(tag, lo, hi)
                assert (a.times.tolist(), a.status.tolist(), a.texts) == (b.times.tolist(), b.status.tolist(), b.texts)
                np.testing.assert_array_equal(a.values, b.values)
            # repr: a text point's value is NaN, which equals nothing
            assert repr(writer.bound_before(tag, T0 + HOUR)) == repr(reader.bound_before(tag, T0 + HOUR))
            assert repr(writer.bound_after(tag, T0)) == repr(reader.bound_after(tag, T0))
        for agg in ("Count", "Average", "TimeAverage"):
            a, b = (s.read_processed(power, T0, T0 + HOUR, HOUR // 4, agg) for s in (writer, reader))
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.status, b.status)

    def write(times, values, texts=None) -> None:
        n = len(times)
        tags = np.full(n, power if texts is None else cls)
        writer.write(StoredBatch(tags, np.asarray(values, float), np.zeros(n, np.uint32), np.asarray(times), texts))

    try:
        write(T0 + np.arange(5) * S, np.arange(5.0))
        same()
        write(T0 + np.arange(5, 10) * S, np.arange(5.0, 10.0))  # a commit: the rows kept are stale
        write(T0 + np.arange(3) * S, [None] * 3, ("car", "bus", "van"))
        assert reader.read_raw(power, T0, T0 + HOUR).values.tolist() == list(np.arange(10.0))
        same()
        writer.merge()  # staging emptied into raw: nothing kept shows twice
        assert writer.pending_rows == 0
        same()
        write([T0 + 4 * S], [40.0])  # a merged point written again: the later write wins, for both
        assert reader.read_raw(power, T0 + 4 * S, T0 + 5 * S).values.tolist() == [40.0]
        same()
        write(T0 + np.arange(10, 12) * S, [10.0, 11.0])
        same()
        assert reader.read_raw(power, T0, T0 + HOUR).values.tolist() == [0, 1, 2, 3, 40, 5, 6, 7, 8, 9, 10, 11]
    finally:
        mirror.close()
        writer.close()
