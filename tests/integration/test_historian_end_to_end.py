"""The historian end to end: the server process, a simulated city, a real VictoriaMetrics.

The tiny city (cabinets over Modbus, junctions over OPC UA, bollards and vehicles over MQTT
through a real Mosquitto) runs in its own process; ``python -m city_scada run --influx-url ...``
supervises it and writes its history both to its embedded store and, through the durable
spool, to VictoriaMetrics. Then:

1. values arrive in VictoriaMetrics;
2. VictoriaMetrics is stopped for a few seconds while the city runs, then started again: every
   value the embedded store recorded is in VictoriaMetrics, in order, none twice;
3. VictoriaMetrics is stopped again, the server is SIGKILLed during the outage and started
   again, then VictoriaMetrics: the same holds over the whole test (the first run's spool is
   replayed by the second).

"Every value": for every tag and every stored point that the sink writes (Good or Uncertain,
finite: see scada/historian/influx.py), the VictoriaMetrics series ``<class>_<point>{commune,
device}`` holds the same value at the same millisecond (VictoriaMetrics keeps milliseconds;
the server's times are nanoseconds, truncated). The store is read first, then VictoriaMetrics
until it holds at least that; points of a tag are stored in time order, so a value stored after
the read is later than every value read and cannot hide a missing or doubled one.

VictoriaMetrics is stopped with SIGTERM (it flushes what it acknowledged; a SIGKILL loses
acknowledged samples, which no client can see: tests/integration/victoria.py).
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scada.historian.store import HistoryStore

from .helpers import DEADLINE, OPEN_SECURITY, ROOT, Mosquitto, Process, free_port, free_port_range, wait_port, wait_port_closed, write_tags
from .victoria import Victoria

pytestmark = pytest.mark.integration

_SEVERITY_BAD = 0x80000000


def series_key(tag: str) -> tuple[str, str, str]:
    """The VictoriaMetrics series of a tag path ``<commune>/<class>/<device>/<point...>``."""
    commune, cls, device, *point = tag.split("/")
    return f"{cls}_{'_'.join(point)}", commune, device


def store_values(path: Path) -> tuple[dict[tuple, tuple[list[int], list[float]]], set[tuple]]:
    """What the sink sends of every tag the store holds: (ms timestamps, values), in time order;
    and the series of every tag in the store, with their ``_status`` series."""
    out = {}
    every = set()
    with HistoryStore(path, readonly=True) as store:
        for name in store.names():
            metric, commune, device = series_key(name)
            every |= {(metric, commune, device), (metric + "_status", commune, device)}
            raw = store.read_raw(name, 0, 2**62)
            if raw.texts is not None and all(x is not None for x in raw.texts):
                continue  # text points are not written to InfluxDB
            sent = ((raw.status & _SEVERITY_BAD) == 0) & np.isfinite(raw.values)
            if sent.any():
                out[series_key(name)] = ((raw.times[sent] // 1_000_000).tolist(), raw.values[sent].tolist())
    return out, every


def vm_values(vm: Victoria) -> dict[tuple, tuple[list[int], list[float]]]:
    rows = vm.export('{__name__=~".+"}')
    return {(r["metric"]["__name__"], r["metric"].get("commune"), r["metric"].get("device")):
            (r["timestamps"], r["values"]) for r in rows}


def missing(stored: dict, exported: dict) -> list[str]:
    """Series whose stored values are not all in VictoriaMetrics yet (as a multiset of ms)."""
    out = []
    for key, (ts, _) in stored.items():
        got = exported.get(key, ([], []))[0]
        if len(got) < len(ts) or not set(ts) <= set(got):
            out.append(f"{key}: {len(ts)} stored, {len(got)} exported")
    return out


async def every_stored_value_is_in_victoria(data: Path, vm: Victoria, what: str, timeout: float = DEADLINE):
    """Read the store, wait until VictoriaMetrics holds all of it, then compare exactly.

    Returns the ms timestamps of every value compared (all series together).
    """
    stored, every = await asyncio.to_thread(store_values, data / "history.sqlite")
    assert stored, "the store holds nothing"
    deadline = time.monotonic() + timeout
    while True:
        exported = await asyncio.to_thread(vm_values, vm)
        lacking = missing(stored, exported)
        if not lacking:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: values stored but not in VictoriaMetrics after {timeout} s "
                                 f"({len(lacking)} series), e.g. {lacking[:5]}")
        await asyncio.sleep(0.5)
    compared: list[int] = []
    for key, (ts, values) in stored.items():
        got_ts, got_values = exported[key]
        assert got_ts == sorted(got_ts), f"{what}: {key} not in time order"
        last = ts[-1]
        # Up to the last stored millisecond, exactly the stored values: nothing missing, nothing
        # twice, nothing else. (A value stored after the read is later; it may share that ms.)
        n = sum(1 for t in got_ts if t < last)
        m = sum(1 for t in ts if t < last)
        assert got_ts[:n] == ts[:m], f"{what}: {key} timestamps differ from the store's"
        assert np.allclose(got_values[:n], values[:m], rtol=1e-12, atol=0), f"{what}: {key} values differ"
        tail = [(t, v) for t, v in zip(got_ts[n:], got_values[n:]) if t == last]
        for pair in [(t, v) for t, v in zip(ts[m:], values[m:])]:
            assert any(t == pair[0] and math.isclose(v, pair[1], rel_tol=1e-12) for t, v in tail), \
                f"{what}: {key} lacks its last stored value {pair}"
        assert len([t for t in got_ts if t == last]) <= len(ts) - m + 1, f"{what}: {key} has {last} twice"
        compared += ts
    unknown = set(exported) - every
    assert not unknown, f"{what}: series in VictoriaMetrics that the store does not hold: {sorted(unknown)[:5]}"
    return compared


async def until_stored(data: Path, when, n: int, what: str, timeout: float = DEADLINE) -> None:
    """Wait until the store holds ``n`` values (of any tags) whose ms time satisfies ``when``."""
    deadline = time.monotonic() + timeout
    while True:
        stored, _ = await asyncio.to_thread(store_values, data / "history.sqlite")
        count = sum(when(t) for ts, _ in stored.values() for t in ts)
        if count >= n:
            return
        assert time.monotonic() < deadline, f"{what}: {count} of {n} within {timeout} s"
        await asyncio.sleep(0.5)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start_server(config: Path, data: Path, vm: Victoria, opc_port: int, log: Path) -> Process:
    return Process(["-m", "city_scada", "run", "--config", str(config), "--data", str(data), "--security", str(OPEN_SECURITY),
                    "--opcua-endpoint", f"opc.tcp://127.0.0.1:{opc_port}/scada/", "--status-interval", "0",
                    "--influx-url", vm.url, "--influx-org", "city", "--influx-bucket", "scada"], log)


async def test_history_reaches_victoria_through_outages_and_a_server_crash(tmp_path):
    vm = Victoria(tmp_path / "vm")
    broker = Mosquitto(tmp_path / "mqtt")
    base = free_port_range(6)
    opc_sim, opc_scada, control = free_port(), free_port(), free_port()
    config, data = tmp_path / "config", tmp_path / "data"
    # A winter evening at 60x: lamps switch on, energy counters and traffic counters move.
    sim = Process(["-m", "simulators", "city", "--preset", "tiny", "--base-port", str(base),
                   "--opcua-port", str(opc_sim), "--mqtt", f"127.0.0.1:{broker.port}", "--control-port", str(control),
                   "--config-out", str(config), "--types-from", str(ROOT / "tags.yaml"),
                   "--start", "2026-11-28T16:00:00+00:00", "--acceleration", "60"], tmp_path / "sim.log")
    server = None
    try:
        await asyncio.to_thread(wait_port, control, proc=sim)
        server = start_server(config, data, vm, opc_scada, tmp_path / "server1.log")
        await asyncio.to_thread(wait_port, opc_scada, proc=server)

        # 1. Values arrive.
        deadline = time.monotonic() + DEADLINE
        while True:
            got = await asyncio.to_thread(vm_values, vm)
            classes = {k[0].split("_")[0] for k in got}
            if {"lighting", "traffic", "bollard"} <= classes:
                break
            assert time.monotonic() < deadline, f"no values in VictoriaMetrics: {sorted(got)[:10]}\n" \
                                                f"{server.output()[-3000:]}"
            await asyncio.sleep(0.3)

        # 2. The database goes away while the city runs, until the server has recorded (and
        # spooled) a good number of values: counted, not a pause of a few seconds.
        await asyncio.to_thread(vm.stop)
        down = now_ms()
        await until_stored(data, lambda t: t > down, 100, "values recorded during the outage", timeout=DEADLINE)
        up = now_ms()
        await asyncio.to_thread(vm.start)
        first = await every_stored_value_is_in_victoria(data, vm, "after an outage", timeout=DEADLINE)
        during = sum(down < t < up for t in first)
        assert during > 50, f"only {during} values recorded during the outage"  # all replayed from the spool

        # 3. Down again; the server is killed during the outage and started again, then the database.
        await asyncio.to_thread(vm.stop)
        down = now_ms()
        await until_stored(data, lambda t: t > down, 100, "values recorded before the kill", timeout=DEADLINE)
        killed = now_ms()
        server.stop(signal.SIGKILL)
        # Its front, a process of its own, may hold the port a moment longer than the server lived.
        await asyncio.to_thread(wait_port_closed, opc_scada)
        server = start_server(config, data, vm, opc_scada, tmp_path / "server2.log")
        await asyncio.to_thread(wait_port, opc_scada, proc=server)
        # The restarted server records (and spools) with the database still down.
        await until_stored(data, lambda t: t > killed, 100, "values recorded after the restart", timeout=DEADLINE)
        up = now_ms()
        await asyncio.to_thread(vm.start)
        second = await every_stored_value_is_in_victoria(data, vm, "after a server crash during an outage",
                                                         timeout=DEADLINE)
        before_kill = sum(down < t < killed for t in second)
        after_restart = sum(killed < t < up for t in second)
        assert before_kill > 50 and after_restart > 50, (before_kill, after_restart)
        assert len(second) > len(first)
        assert "Traceback" not in server.output(), server.output()[-3000:]
    finally:
        if server is not None:
            server.stop(timeout=5)  # see test_server_writing_to_influx_stops_on_sigterm
        sim.stop()
        broker.stop()
        vm.stop()


async def test_server_writing_to_influx_stops_on_sigterm(tmp_path):
    """SIGTERM stops the server within seconds: the historian flushes its held points into the store
    and the spool, then the sink stops (its spool is replayed by the next start)."""
    vm = Victoria(tmp_path / "vm")
    base = free_port_range(2)
    config, data = tmp_path / "config", tmp_path / "data"
    (config / "inventory").mkdir(parents=True)
    write_tags(config, ["inventory/lighting-cabinets.csv"])
    inventory = config / "inventory" / "lighting-cabinets.csv"
    inventory.write_text("name,type,commune,lat,lon,endpoint,unit,poll_interval,timeout\n"
                         + "".join(f"LC-T-{i},lighting_cabinet,Dijon,47.32,5.04,127.0.0.1:{base + i},1,0.3,0.5\n"
                                   for i in range(2)))
    sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory), "--acceleration", "600"],
                  tmp_path / "sim.log")
    opc_port = free_port()
    server = None
    try:
        await asyncio.to_thread(wait_port, base + 1, proc=sim)
        server = start_server(config, data, vm, opc_port, tmp_path / "server.log")
        await asyncio.to_thread(wait_port, opc_port, proc=server)
        await until_stored(data, lambda t: True, 20, "values stored")
        # SIGTERM while the sink is delivering (the case that could hang on a request in flight).
        deadline = time.monotonic() + DEADLINE
        while not await asyncio.to_thread(vm_values, vm):
            assert time.monotonic() < deadline, f"nothing reached VictoriaMetrics:\n{server.output()[-2000:]}"
            await asyncio.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(server.proc.wait, 20)  # seconds, generously
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"the server did not stop within 20 s of SIGTERM:\n{server.output()[-2000:]}"
    finally:
        if server is not None:
            server.stop(signal.SIGKILL)
        sim.stop()
        vm.stop()
