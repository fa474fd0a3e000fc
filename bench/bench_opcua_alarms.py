"""OPC UA Alarms & Conditions: condition build cost, event throughput, ConditionRefresh time.

    .venv/bin/python bench/bench_opcua_alarms.py [--instances 5000] [--events 6000]

1. **build**: time and RSS to create the condition nodes (``AlarmConditions.build``: two
   nodes per alarm instance, the notifier tree, the method callbacks) after the tag tree,
   for the shipped configuration and for a city of ``--instances`` alarm instances (shipped
   ``lighting_cabinet`` type and ``alarms.yaml``: 7 alarms per cabinet, bench/citygen.py).
   Each size runs in a fresh subprocess. Beside it, the stock asyncua way measured on a few
   conditions (``add_object(objecttype=OffNormalAlarmType)``), extrapolated.
2. **events**: alarm transitions made by the engine (limit and state alarms of every cabinet
   raised then cleared in one batch each: 1,430 transitions a batch at 5,000 instances) until
   ``--events`` are sent. First with no client (engine evaluation + journal + building the
   events), then to one asyncua client subscribed on the Server object for AlarmConditionType
   (85 fields an event), run in its own process as an HMI is, with asyncua's default 1 s
   watchdog: the rate it receives them (asyncua's encoding of the events, about 0.3 ms each,
   is the ceiling; ``scada.opcua.conditions.delivery.MAX_PENDING`` bounds each Publish), and the server
   loop's longest stall meanwhile (over 1 s, that client drops its link).
3. **refresh**: ConditionRefresh of every retained condition to that client.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import citygen  # noqa: E402
from bench.harness import ROOT, Clock, emit, free_port, load_config, rss, run_child  # noqa: E402

PER_CABINET = 7  # alarms of the shipped lighting_cabinet type


def _config_dir(instances: int | None, work: Path) -> Path:
    if instances is None:
        return ROOT
    cabinets = -(-instances // PER_CABINET)
    folder = citygen.write_config(cabinets * len(citygen.cabinet_points()), work)
    shutil.copy(ROOT / "alarms.yaml", folder / "alarms.yaml")
    return folder


def _rss() -> int:
    gc.collect()
    return rss()


async def _build(instances: int | None) -> dict:
    from asyncua import Server

    from scada.alarms.engine import AlarmEngine
    from scada.alarms.journal import Journal
    from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder
    from scada.opcua.conditions import AlarmConditions
    from scada.tagdb import TagDB

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(_config_dir(instances, Path(tmp)))
        tagdb = TagDB(*config.tag_table())
        journal = Journal(Path(tmp) / "j.sqlite")
        engine = AlarmEngine(config, tagdb, journal)
        server = Server()
        await server.init()
        ns = await server.register_namespace(NAMESPACE_URI)
        builder = AddressSpaceBuilder(server, ns)
        builder.build(config)
        rss0 = _rss()
        t0 = time.perf_counter()
        conds = AlarmConditions(server, ns, engine)
        conds.build()
        dt = time.perf_counter() - t0
        rss1 = _rss()
        journal.close()
        return {
            "instances": engine.n,
            "devices": len(config.devices),
            "nodes": conds.node_count,
            "tag_nodes": builder.node_count,
            "seconds": dt,
            "rss_mib": (rss1 - rss0) / 2**20,
        }


async def _stock(n: int) -> dict:
    from asyncua import Server, ua

    server = Server()
    await server.init()
    idx = await server.register_namespace("urn:bench")
    parents = [await server.nodes.objects.add_object(idx, f"dev{i}") for i in range(n)]
    rss0 = _rss()
    t0 = time.perf_counter()
    for i, p in enumerate(parents):
        await p.add_object(idx, f"alarm{i}", objecttype=ua.ObjectIds.OffNormalAlarmType)
    dt = time.perf_counter() - t0
    return {"instances": n, "seconds": dt, "rss_mib": (_rss() - rss0) / 2**20}


async def _events(instances: int, target: int) -> dict:
    from scada.alarms.engine import AlarmEngine
    from scada.alarms.journal import Journal
    from scada.opcua.server import HmiServer
    from scada.tagdb import TagDB

    sys.path.insert(0, str(ROOT))

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(_config_dir(instances, Path(tmp)))
        tagdb = TagDB(*config.tag_table())
        journal = Journal(Path(tmp) / "j.sqlite")
        clock = Clock()
        engine = AlarmEngine(config, tagdb, journal, clock)
        devs = config.devices
        cls = {d.type: config.types[d.type].cls for d in devs}

        def ids(point: str) -> np.ndarray:
            return np.array([tagdb.id_of(f"{d.commune}/{cls[d.type]}/{d.name}/{point}") for d in devs])

        temp, door = ids("temperature"), ids("door_open")
        both = np.concatenate([temp, door])
        normal = np.concatenate([np.full(len(temp), 30.0), np.zeros(len(door))])
        high = np.concatenate([np.full(len(temp), 80.0), np.ones(len(door))])
        engine.process(tagdb.update(both, normal, 0, clock()))
        url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
        hmi = HmiServer(config, tagdb, url, alarms=engine)
        await hmi.start()
        task = asyncio.create_task(hmi.run())
        conds = hmi.conditions
        assert conds is not None  # the server was given the engine

        up = False

        async def cycle() -> int:
            """Every cabinet hot and its door open, or back to normal; the delays (door on-delay,
            temperature off-delay) run out on the test clock."""
            nonlocal up
            up = not up
            clock.t += 100 * 1_000_000_000
            n = len(engine.process(tagdb.update(both, high if up else normal, 0, clock())))
            clock.t += 100 * 1_000_000_000
            return n + len(engine.tick())

        async def drained() -> None:
            while conds._queue:
                await asyncio.sleep(0.001)

        try:
            # Server side alone: no client subscribed.
            sent, t0 = 0, time.perf_counter()
            while sent < target:
                sent += await cycle()
                await drained()
            server_rate = sent / (time.perf_counter() - t0)
            # One client on the Server object, in its own process (as an HMI would be): its
            # decoding must not eat the server's CPU. It prints "ready", then the seconds between
            # the first and the last of the events it was told to expect.
            client_err = open(Path(tmp) / "client.err", "w+")  # noqa: SIM115  (the child writes it until it ends)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--child",
                "client",
                url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=client_err,
            )
            assert proc.stdin is not None and proc.stdout is not None  # both piped

            async def line() -> str:
                assert proc.stdout is not None  # piped
                text = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode().strip()
                if not text:
                    client_err.seek(0)
                    err = client_err.read()
                    raise RuntimeError(
                        "the client process ended:\n"
                        + "\n".join(
                            ln for ln in err.splitlines() if "rror" in ln or "isconnect" in ln or "imeout" in ln
                        )[-4000:]
                    )
                return text

            assert await line() == "ready"
            lag = [0.0]

            async def watch_lag() -> None:
                # The server loop's worst stall while the storm is sent to a client: a client's
                # requests wait that long (asyncua's client drops the link after 1 s).
                while True:
                    t = time.perf_counter()
                    await asyncio.sleep(0.01)
                    lag[0] = max(lag[0], time.perf_counter() - t - 0.01)

            lag_task = asyncio.create_task(watch_lag())
            sent, t0 = 0, time.perf_counter()
            while sent < target:
                sent += await cycle()
                await drained()
            emitted_at = time.perf_counter() - t0
            proc.stdin.write(f"{sent}\n".encode())
            await proc.stdin.drain()
            received_s = float(await line())
            total_s = time.perf_counter() - t0
            lag_task.cancel()
            # Refresh: everything raised, then a refresh of all retained conditions.
            if not up:
                await cycle()
                await drained()
            await asyncio.sleep(1.0)
            retained = len(conds._retained)
            t0 = time.perf_counter()
            proc.stdin.write(f"refresh {retained + 2}\n".encode())
            await proc.stdin.drain()
            call_s, refresh_s = (float(x) for x in (await line()).split())
            await proc.wait()
            client_err.close()
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await hmi.stop()
            journal.close()
        return {
            "instances": engine.n,
            "events": sent,
            "server_only_per_s": server_rate,
            "with_client_server_per_s": sent / emitted_at,
            "client_received_per_s": sent / received_s,
            "end_to_end_per_s": sent / total_s,
            "max_loop_stall_s": lag[0],
            "retained": retained,
            "refresh_call_s": call_s,
            "refresh_all_received_s": refresh_s,
            "dropped": conds.dropped,
        }


async def _client(url: str) -> None:
    """The HMI side of section 2-3 (a subprocess driven through stdin/stdout)."""
    from asyncua import Client, ua

    loop = asyncio.get_running_loop()
    times: list[float] = []
    want = [10**12]
    done = asyncio.Event()

    class Handler:
        def event_notification(self, event) -> None:
            times.append(time.perf_counter())
            if len(times) >= want[0]:
                done.set()

    async def line() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    import logging

    logging.getLogger("asyncua.client.client").setLevel(logging.INFO)  # says why a link is dropped
    async with Client(url, timeout=30) as client:  # asyncua's default 1 s watchdog, as an HMI would
        sub = await client.create_subscription(100, Handler())
        await sub.subscribe_alarms_and_conditions(client.nodes.server, ua.ObjectIds.AlarmConditionType)
        print("ready", flush=True)
        want[0] = int(await line())
        if len(times) < want[0]:
            await asyncio.wait_for(done.wait(), 600)
        print(times[-1] - times[0], flush=True)
        _, n = (await line()).split()
        times.clear()
        done.clear()
        want[0] = int(n)
        t0 = time.perf_counter()
        # asyncua annotates NodeId's identifier with NewTypes; a plain int is what it takes.
        await client.get_node(ua.NodeId(ua.ObjectIds.ConditionType)).call_method(  # type: ignore[arg-type]
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),  # type: ignore[arg-type]
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
        )
        call_s = time.perf_counter() - t0
        if len(times) < want[0]:
            await asyncio.wait_for(done.wait(), 600)
        print(call_s, times[-1] - t0, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=5000)
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--stock", type=int, default=50, help="conditions built the stock asyncua way (0: skip)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, arg = a.child[0], a.child[1]
        if kind == "build":
            res = asyncio.run(_build(None if arg == "shipped" else int(arg)))
        elif kind == "stock":
            res = asyncio.run(_stock(int(arg)))
        elif kind == "client":
            asyncio.run(_client(arg))
            return 0
        else:
            res = asyncio.run(_events(int(arg), int(a.child[2])))
        emit(res)
        return 0
    print("1. build (fresh subprocess each)")
    print(
        f"{'config':>10} {'devices':>8} {'instances':>9} {'nodes':>7} {'seconds':>8} {'RSS MiB':>8} "
        f"{'us/cond':>8} {'KiB/cond':>8}"
    )
    for label, arg in (("shipped", "shipped"), (str(a.instances), str(a.instances))):
        r = run_child(__file__, ["build", arg])
        n = max(r["instances"], 1)
        print(
            f"{label:>10} {r['devices']:>8} {r['instances']:>9} {r['nodes']:>7} {r['seconds']:>8.3f} "
            f"{r['rss_mib']:>8.1f} {r['seconds'] / n * 1e6:>8.1f} {r['rss_mib'] * 1024 / n:>8.2f}"
        )
    if a.stock:
        r = run_child(__file__, ["stock", str(a.stock)])
        each_s, each_kib = r["seconds"] / r["instances"], r["rss_mib"] * 1024 / r["instances"]
        print(
            f"{'stock':>10} {'':>8} {r['instances']:>9} {'':>7} {r['seconds']:>8.2f} {r['rss_mib']:>8.1f} "
            f"{each_s * 1e6:>8.0f} {each_kib:>8.1f}   -> {a.instances} the stock way: "
            f"{each_s * a.instances / 60:.0f} min, {each_kib * a.instances / 2**20:.1f} GiB"
        )
    print("\n2-3. events and refresh")
    r = run_child(__file__, ["events", str(a.instances), str(a.events)])
    print(
        f"instances {r['instances']}, events {r['events']}: no client {r['server_only_per_s']:,.0f}/s, "
        f"with one client: server {r['with_client_server_per_s']:,.0f}/s, "
        f"client received {r['client_received_per_s']:,.0f}/s (first to last), "
        f"end to end {r['end_to_end_per_s']:,.0f}/s; dropped {r['dropped']}; "
        f"server loop's longest stall {r['max_loop_stall_s'] * 1e3:.0f} ms"
    )
    print(
        f"ConditionRefresh of {r['retained']} retained conditions: call returned in {r['refresh_call_s']:.2f} s, "
        f"all received in {r['refresh_all_received_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
