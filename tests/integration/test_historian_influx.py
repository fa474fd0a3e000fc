"""The historian's InfluxDB sink against a real VictoriaMetrics on loopback.

What is checked: values arrive and read back; the database stopped under load and started again
(every value there, in order, none twice, live data not held behind the backlog); the sink's own
process SIGKILLed during an outage and started again (the same); a batch the database rejects is
quarantined and the rest continues; a dead database is retried with backoff, never in a busy loop.

The database is stopped with SIGTERM, not SIGKILL: VictoriaMetrics acknowledges writes before
they are on its disk, so killing it loses samples it already accepted, which no client can see
(tests/integration/victoria.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scada import status as st
from scada.historian.influx import InfluxSink, TagMeta
from scada.historian.spool import Spool

from .helpers import DEADLINE, Process, free_port, until
from .victoria import Victoria

pytestmark = pytest.mark.integration


@pytest.fixture
def victoria(tmp_path):
    vm = Victoria(tmp_path / "vm")
    yield vm
    vm.stop()


def names(n: int, cls: str = "lighting") -> list[str]:
    communes = ["Dijon", "Chenôve", "Saint-Apollinaire"]
    return [f"{communes[i % 3]}/{cls}/LC-{i // 3:03d}/p{i % 3}" for i in range(n)]


def make_sink(url: str, folder: Path, tags: TagMeta, **kw) -> InfluxSink:
    spool = Spool(folder, capacity_bytes=kw.pop("capacity_bytes", 64 << 20))
    kw.setdefault("backoff_min", 0.05)
    kw.setdefault("backoff_max", 0.5)
    kw.setdefault("timeout", 5.0)
    return InfluxSink(url, "token", "org", "bucket", spool, tags, **kw)


def series_by_key(rows: list[dict]) -> dict[tuple, tuple[list, list]]:
    """{(metric name, commune, device): (values, timestamps in ms)}"""
    return {(r["metric"]["__name__"], r["metric"].get("commune"), r["metric"].get("device")):
            (r["values"], r["timestamps"]) for r in rows}


def expected_series(tag_names: list[str], ks, t0_ms: int) -> dict[tuple, tuple[list, list]]:
    """Batch k gives every tag the value k at time t0 + k ms."""
    out = {}
    for name in tag_names:
        commune, cls, device, point = name.split("/")
        out[(f"{cls}_{point}", commune, device)] = ([float(k) for k in ks], [t0_ms + k for k in ks])
    return out


async def stop_sink(task: asyncio.Task, sink: InfluxSink) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sink.spool.close()


async def exported(vm: Victoria, match: str) -> dict:
    return series_by_key(await asyncio.to_thread(vm.export, match))


async def until_exported(vm: Victoria, match: str, predicate, timeout: float = 20.0, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await exported(vm, match)
        if predicate(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s; last export: {str(last)[:2000]}")


def submit_batch(sink: InfluxSink, n_tags: int, k: int, t0_ns: int) -> int | None:
    ids = np.arange(n_tags)
    return sink.submit(ids, np.full(n_tags, float(k)), np.full(n_tags, st.GOOD, dtype=np.uint32),
                       np.full(n_tags, t0_ns + k * 1_000_000, dtype=np.int64))


async def test_values_arrive_and_read_back(victoria, tmp_path):
    tag_names = ["Dijon/lighting/LC-DIJ-001/power", "Dijon/lighting/LC-DIJ-001/Diagnostics/state",
                 "Saint-Apollinaire/traffic/J 4,b/mode"]
    sink = make_sink(victoria.url, tmp_path / "spool", TagMeta.from_names(tag_names))
    task = asyncio.create_task(sink.run())
    t0 = time.time_ns() // 1_000_000 * 1_000_000
    bad = st.BAD_COMMUNICATION_ERROR
    sink.submit([0, 1, 2], [3.25, 1.0, 2.0], [st.GOOD] * 3, [t0] * 3)
    sink.submit([0, 2], [np.nan, 7.0], [bad, st.GOOD], [t0 + 1_000_000] * 2)
    sink.submit([0], [4.5], [st.GOOD], [t0 + 2_000_000])
    ms = t0 // 1_000_000
    got = await until_exported(victoria, '{__name__=~"(lighting|traffic)_.*"}', lambda s: len(s) == 4,
                               what="4 series")
    await until(lambda: sink.spool.backlog_entries == 0, what="backlog acknowledged")
    await stop_sink(task, sink)
    assert got[("lighting_power", "Dijon", "LC-DIJ-001")] == ([3.25, 4.5], [ms, ms + 2])
    assert got[("lighting_power_status", "Dijon", "LC-DIJ-001")] == ([bad, 0], [ms + 1, ms + 2])
    assert got[("lighting_Diagnostics_state", "Dijon", "LC-DIJ-001")] == ([1.0], [ms])
    assert got[("traffic_mode", "Saint-Apollinaire", "J 4,b")] == ([2.0, 7.0], [ms, ms + 1])
    assert sink.status().connected and sink.status().sent_values == 7


async def test_database_stopped_under_load_then_everything_arrives_once_in_order(victoria, tmp_path):
    n_tags = 30
    tag_names = names(n_tags)
    acks: list[tuple[str, float, list[int]]] = []
    replay_statuses = []  # the sink's status taken right after each replay request was acknowledged

    def on_ack(lane: str, seqs: list[int]) -> None:
        acks.append((lane, time.monotonic(), seqs))
        if lane == "replay":
            # Sampled at the event it describes, not at some moment of the test's choosing: a
            # fast machine replays the whole backlog between two samples of a polling loop.
            replay_statuses.append(sink.status())

    sink = make_sink(victoria.url, tmp_path / "spool", TagMeta.from_names(tag_names),
                     max_request_bytes=24 * 1024,  # several replay requests, so live data interleaves
                     on_ack=on_ack)
    task = asyncio.create_task(sink.run())
    t0 = time.time_ns() // 1_000_000 * 1_000_000
    k = 0

    async def produce_until(predicate, what: str, timeout: float = 30.0) -> None:
        """Submit a batch every few ms (the load) until ``predicate()`` holds."""
        nonlocal k
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s ({k} batches submitted)"
            assert submit_batch(sink, n_tags, k, t0) is not None
            k += 1
            await asyncio.sleep(0.004)

    await produce_until(lambda: sink.status().connected and sink.status().sent_values > 0, "first values sent")
    await asyncio.to_thread(victoria.stop)  # the database goes away under load
    # Enough backlog for many replay requests (about 13 entries each), whatever the machine's speed.
    await produce_until(lambda: not sink.status().connected and sink.status().backlog_entries > 300,
                        "outage noticed and backlog accumulated")
    down = sink.status()
    assert not down.connected and down.backlog_entries > 300 and down.last_error
    await asyncio.to_thread(victoria.start)
    reconnected = time.monotonic()
    # Live data keeps coming for as long as the backlog replays (the drain must interleave it).
    await produce_until(lambda: bool(replay_statuses) and not sink.status().replaying, "backlog replayed",
                        timeout=DEADLINE)
    await until(lambda: sink.spool.backlog_entries == 0, timeout=DEADLINE, what="backlog acknowledged")
    await stop_sink(task, sink)

    want = expected_series(tag_names, range(k), t0 // 1_000_000)
    got = await until_exported(victoria, '{__name__=~"lighting_.*"}',
                               lambda s: all(len(s.get(key, ([], []))[1]) >= len(want[key][1]) for key in want),
                               what="every value")
    for key, (values, stamps) in want.items():
        assert got[key] == (values, stamps), f"{key}: not every value exactly once"
    # the drain: replay in order, live data delivered while the backlog was still replaying
    all_seqs = [s for _, _, seqs in acks for s in seqs]
    assert len(all_seqs) == len(set(all_seqs)), "an entry was acknowledged twice"
    replay = [s for lane, _, seqs in acks if lane == "replay" for s in seqs]
    assert replay == sorted(replay) and len(replay) > 50
    last_replay = max(t for lane, t, _ in acks if lane == "replay")
    assert any(lane == "live" and reconnected < t < last_replay for lane, t, _ in acks), \
        "live data waited for the whole backlog"
    # while replaying, the status says so and shows the replay's rate
    assert all(s.replaying and s.replay_rate > 0 for s in replay_statuses), replay_statuses


SINK_SCRIPT = textwrap.dedent("""
    # A small server: submits batch k (value k at t0 + k ms to every tag of --measurement) every
    # few ms and runs the InfluxDB sink; prints "S k" once submit(k) returned.
    import asyncio, sys, time
    import numpy as np
    from scada import status as st
    from scada.historian.influx import InfluxSink, TagMeta
    from scada.historian.spool import Spool

    url, folder, cls, n_tags, t0 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    names = [f"Dijon/{cls}/D{i}/v" for i in range(n_tags)]

    async def main():
        spool = Spool(folder, capacity_bytes=64 << 20)
        sink = InfluxSink(url, "t", "o", "b", spool, TagMeta.from_names(names), timeout=5.0,
                          backoff_min=0.05, backoff_max=0.5, max_request_bytes=16 * 1024)
        task = asyncio.create_task(sink.run())
        ids = np.arange(n_tags)
        k = 0
        last_report = 0.0
        while True:
            sink.submit(ids, np.full(n_tags, float(k)), np.full(n_tags, st.GOOD, dtype=np.uint32),
                        np.full(n_tags, t0 + k * 1_000_000, dtype=np.int64))
            print("S", k, flush=True)
            k += 1
            if time.monotonic() - last_report > 0.2:
                s = sink.status()
                print("B", s.backlog_entries, int(s.connected), int(s.replaying), flush=True)
                last_report = time.monotonic()
            await asyncio.sleep(0.005)

    asyncio.run(main())
""")


def submitted(log: str) -> list[int]:
    return [int(line.split()[1]) for line in log.splitlines() if line.startswith("S ")]


def backlog_reports(log: str) -> list[tuple[int, int, int]]:
    """(backlog entries, connected, replaying) of each status line."""
    return [(int(p[1]), int(p[2]), int(p[3])) for p in (line.split() for line in log.splitlines()) if p[:1] == ["B"]]


async def test_sink_process_killed_mid_outage_replays_after_restart(victoria, tmp_path):
    script = tmp_path / "sink.py"
    script.write_text(SINK_SCRIPT)
    spool_dir = tmp_path / "spool"
    t0 = time.time_ns() // 1_000_000 * 1_000_000
    n_tags = 10
    first = Process([str(script), victoria.url, str(spool_dir), "before", str(n_tags), str(t0)], tmp_path / "p1.log")
    try:
        await until(lambda: len(submitted(first.output())) > 100 and
                    any(c == 1 for _, c, _ in backlog_reports(first.output())),
                    timeout=DEADLINE, what="first sink running and delivering")
        await asyncio.to_thread(victoria.stop)  # outage
        # the sink noticed the outage and values accumulate in the spool
        await until(lambda: (r := backlog_reports(first.output())) and r[-1][1] == 0 and r[-1][0] >= 50,
                    timeout=DEADLINE, what="outage noticed with a backlog")
        first.stop(signal.SIGKILL)  # the server dies in the middle of the outage
    finally:
        first.stop(signal.SIGKILL)
    recorded = submitted(first.output())
    assert recorded == list(range(len(recorded)))

    await asyncio.to_thread(victoria.start)
    second = Process([str(script), victoria.url, str(spool_dir), "after", str(n_tags), str(t0)], tmp_path / "p2.log")
    try:
        await until(lambda: any(c == 1 and r == 0 for _, c, r in backlog_reports(second.output())),
                    timeout=DEADLINE, what="backlog replayed after the restart")
    finally:
        second.stop(signal.SIGKILL)
    # Every value recorded before the kill, in order, none twice; the value being submitted at
    # the kill (after its "S" line was due) may be there too: a prefix of the sequence either way.
    match = '{__name__="before_v"}'
    want_n = len(recorded)
    got = await until_exported(victoria, match, lambda s: len(s) == n_tags and
                               all(len(v[1]) >= want_n for v in s.values()), what="every recorded value")
    for name in [f"Dijon/before/D{i}/v" for i in range(n_tags)]:
        values, stamps = got[("before_v", "Dijon", name.split("/")[2])]
        n = len(values)
        assert n in (want_n, want_n + 1), f"{name}: {n} values for {want_n} recorded"
        assert values == [float(k) for k in range(n)] and stamps == [t0 // 1_000_000 + k for k in range(n)]
    # and the second process's own values went live meanwhile
    after = await exported(victoria, '{__name__="after_v"}')
    assert len(after) == n_tags


async def test_rejected_batch_is_quarantined_and_the_rest_continues(tmp_path):
    # VictoriaMetrics answers 400 to a line longer than -influx.maxLineSize (it reads 64 KiB
    # blocks, so the line must exceed that); a malformed short line is skipped with 204.
    vm = Victoria(tmp_path / "vm", extra_args=("-influx.maxLineSize=1024",))
    try:
        n_tags = 5
        tag_names = names(n_tags)
        sink = make_sink(vm.url, tmp_path / "spool", TagMeta.from_names(tag_names))
        task = asyncio.create_task(sink.run())
        t0 = time.time_ns() // 1_000_000 * 1_000_000
        for k in range(10):
            submit_batch(sink, n_tags, k, t0)
        await until(lambda: sink.spool.backlog_entries == 0, what="first batches delivered")
        bad_seq = sink.append_lines(b"lighting,commune=Dijon,device=" + b"x" * 70_000 + b" p0=1 " +
                                    str(t0).encode() + b"\n")
        for k in range(10, 20):  # in the same request as the bad batch, most likely
            submit_batch(sink, n_tags, k, t0)
        await until(lambda: sink.spool.backlog_entries == 0, what="rest delivered")
        for k in range(20, 25):  # and afterwards
            submit_batch(sink, n_tags, k, t0)
        await until(lambda: sink.spool.backlog_entries == 0, what="later batches delivered")
        status = sink.status()
        await stop_sink(task, sink)

        assert status.quarantined == 1 and status.connected
        text = (tmp_path / "spool" / "quarantine.lp").read_bytes()
        assert text.startswith(f"# quarantined seq={bad_seq} ".encode())
        assert b"reason=HTTP 400" in text and b"too long line" in text and b"x" * 70_000 in text
        want = expected_series(tag_names, range(25), t0 // 1_000_000)
        got = await until_exported(vm, '{__name__=~"lighting_.*"}',
                                   lambda s: all(len(s.get(key, ([], []))[1]) >= 25 for key in want),
                                   what="good values")
        for key in want:
            assert got[key] == want[key]
    finally:
        vm.stop()


async def test_dead_database_is_retried_with_backoff_and_the_spool_alarm_rises(tmp_path):
    port = free_port()  # nothing listens there
    sink = make_sink(f"http://127.0.0.1:{port}", tmp_path / "spool", TagMeta.from_names(names(3)),
                     capacity_bytes=128 * 1024, backoff_min=0.05, backoff_max=0.4)
    attempts = []
    original = sink._deliver

    def counting(entries, lane):
        attempts.append(time.monotonic())
        return original(entries, lane)

    sink._deliver = counting
    task = asyncio.create_task(sink.run())
    t0 = time.time_ns()
    k = 0
    while sink.spool.fill_ratio < 0.85:
        submit_batch(sink, 3, k, t0)
        k += 1
        if k % 50 == 0:
            await asyncio.sleep(0.01)
    await until(lambda: len(attempts) >= 6, timeout=DEADLINE, what="six delivery attempts")
    status = sink.status()
    await stop_sink(task, sink)
    assert not status.connected and status.spool_high and status.fill_ratio >= 0.8
    assert "Connection refused" in status.last_error or "NewConnectionError" in status.last_error
    # capped backoff, 0.05 doubling to 0.4 s, jittered down to half: each wait is at least half
    # its step (a lower bound, which a slow machine only lengthens), so never a busy loop
    gaps = np.diff(attempts[:6])
    floors = [min(0.05 * 2 ** i, 0.4) / 2 for i in range(len(gaps))]
    assert all(g >= f - 0.005 for g, f in zip(gaps, floors)), (gaps.tolist(), floors)
