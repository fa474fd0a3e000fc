"""MQTT ingest: JSON messages per second through Mosquitto into the tag database.

    .venv/bin/python bench/bench_mqtt.py [--messages 200000] [--devices 1000] [--publishers 2]
                                         [--repeats 3] [--publisher raw|paho]

Starts a Mosquitto on a free loopback port. For each measurement, publisher processes send
``--messages`` bollard-state JSON messages (QoS 0, 6 fields, ~170 bytes) for ``--devices``
bollards as fast as they can; the receiver drains them from the broker, and its rate runs
from its first message to its last. Three receivers, each in its own process, measured in
turn on the same stream in the same run (the order alternates between repetitions):

* ``paho thread``: a bare paho client with its own network thread (``loop_start()``),
  counting messages: the library as shipped, the baseline of issue 4;
* ``paho event loop``: paho driven by our event-loop link (``drivers/mqtt/aio.py``: epoll,
  buffered reads), counting messages: what the library costs at best here;
* ``fast path``: the same link splitting QoS-0 PUBLISH packets itself
  (``drivers/mqtt/frames.py``; paho keeps the rest), counting: the ceiling of the driver;
* ``driver, paho path``: the MQTT driver (link, bounded inbox, codec, one ``TagDB.update``
  per batch) with the fast path off (``fast_path=False``): every packet read by paho;
* ``driver``: the MQTT driver as shipped, fast path on; both drivers with ``--devices``
  ``access_bollard`` devices configured from the shipped tags.yaml, every message decoded
  into 6 rows of the TagDB.

The publishers write pre-encoded PUBLISH packets to a socket (``--publisher raw``): field
devices publish from other machines, and the stream must not take this 2-core machine's
CPU from the receiver. A paho publisher costs ~35 µs of CPU per message, so two of them
took most of a core while the receiver was measured (``--publisher paho`` reproduces it).

Beside each rate: the receiver's CPU share during its window (1.00: it had a core to itself
and used all of it; less: it waited for the CPU, which others on this shared machine held)
and its CPU time per message, which such waits do not inflate.

Then, in-process and without the network, CPU time per message of (a) the link's packet
path, counting only (a scripted broker on loopback streams the same packets), through paho
and through the fast path, (b) the fast path's hand-over to the driver (``_on_messages``:
the inbox entries) and (c) the driver's decode-and-store (``MqttDriver._process`` on batches
of 500, as the link hands them over): their sum is the one-core cost of a message into the TagDB.

Target (issue 4): at least 50,000 JSON messages per second into the tag database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import PY, Mosquitto, write_inventory  # noqa: E402
from drivers.mqtt.frames import remaining_length  # noqa: E402

POSITIONS = ["down", "rising", "up", "lowering"]


def packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 0."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    return b"\x30" + remaining_length(len(body)) + body


def state_messages(first: int, count: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` bollard states cycling over devices ``first .. first + count - 1``."""
    out = []
    for k in range(n):
        payload = json.dumps(
            {
                "position": POSITIONS[k % 4],
                "height": (k % 100) / 100,
                "vehicle": k % 2 == 0,
                "obstruction": False,
                "emergency": False,
                "fault": False,
                "ts": "2026-11-28T10:00:00Z",
            }
        ).encode()
        out.append((f"city/bollards/B-{first + k % count:05d}/state", payload))
    return out


RAW_PUBLISHER = """
import socket, sys, time
sys.path.insert(0, sys.argv[6])
from bench.bench_mqtt import packet, state_messages
from drivers.mqtt.frames import remaining_length
port, first, count, devices, messages = (int(a) for a in sys.argv[1:6])
cycle = [packet(t, p) for t, p in state_messages(first, count, min(messages, 4 * count))]
s = socket.create_connection(("127.0.0.1", port))
cid = f"bench-pub-{first}".encode()
var = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c" + len(cid).to_bytes(2, "big") + cid
s.sendall(b"\\x10" + remaining_length(len(var)) + var)
assert s.recv(4)[:2] == b"\\x20\\x02", "no CONNACK"
t0, sent = time.monotonic(), 0
while sent < messages:
    start = sent % len(cycle)
    chunk = cycle[start:start + min(500, messages - sent)]
    s.sendall(b"".join(chunk))
    sent += len(chunk)
print(messages / (time.monotonic() - t0))
s.sendall(b"\\xe0\\x00")  # DISCONNECT: the broker reads everything before it
s.close()
"""

PAHO_PUBLISHER = """
import sys, time
import paho.mqtt.client as mqtt
sys.path.insert(0, sys.argv[6])
from bench.bench_mqtt import state_messages
port, first, count, devices, messages = (int(a) for a in sys.argv[1:6])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
cycle = state_messages(first, count, min(messages, 4 * count))
t0 = time.monotonic()
for k in range(messages):
    c.publish(*cycle[k % len(cycle)], qos=0)
    if k % 2000 == 0:
        time.sleep(0)
print(messages / (time.monotonic() - t0))
c.loop_stop()
c.disconnect()
"""

# argv: mode port expected timeout root config. Prints "ready" once subscribed, then
# "messages seconds cpu_seconds [rows garbage dropped]".
RECEIVER = """
import asyncio, os, sys, threading, time
mode, port, expected, timeout, root, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
sys.path.insert(0, root)
import paho.mqtt.client as mqtt
TOPIC = "city/bollards/+/state"
def cpu():
    t = os.times()
    return t.user + t.system

# The counting receivers: wall and CPU time at the first and the last message.
n, marks = [0], {}
def on_message(c, u, msg):
    if not n[0]:
        marks["t0"], marks["c0"] = time.monotonic(), cpu()
    n[0] += 1
    if n[0] >= expected:
        marks["t1"], marks["c1"] = time.monotonic(), cpu()
def report():
    t1, c1 = marks.get("t1", time.monotonic()), marks.get("c1", cpu())
    print(n[0], t1 - marks.get("t0", t1), c1 - marks.get("c0", c1))
def counting_client():
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    return c
def on_messages(msgs):  # the fast path's callback: a list of messages
    if not n[0]:
        marks["t0"], marks["c0"] = time.monotonic(), cpu()
    n[0] += len(msgs)
    if n[0] >= expected and "t1" not in marks:
        marks["t1"], marks["c1"] = time.monotonic(), cpu()

if mode == "paho":
    subscribed = threading.Event()
    c = counting_client()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.subscribe(TOPIC, qos=0)
    c.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while n[0] < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    report()
    sys.exit(0)

async def main():
    subscribed = asyncio.Event()
    if mode in ("aio", "fast"):
        from drivers.mqtt.aio import AsyncioMqtt
        c = counting_client()
        c.on_connect = lambda c, *a: c.subscribe(TOPIC, qos=0)
        c.on_subscribe = lambda *a: subscribed.set()
        link = AsyncioMqtt(c, "127.0.0.1", port, on_messages=on_messages if mode == "fast" else None)
        link.start()
        await asyncio.wait_for(subscribed.wait(), 10)
        print("ready", flush=True)
        deadline = time.monotonic() + timeout
        while n[0] < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await link.stop()
        report()
        return
    from drivers.mqtt.driver import MqttDriver
    from common import logs
    from bench.harness import load_config
    from scada.tagdb import TagDB
    logs.configure(level="WARNING")  # logs go to stderr; stdout carries the figures
    cfg = load_config(folder)
    db = TagDB(*cfg.tag_table())
    drv = MqttDriver(cfg, list(cfg.devices), db, fast_path=mode == "driver")
    for b in drv.brokers.values():
        b.client.on_subscribe = lambda *a: subscribed.set()
    task = asyncio.create_task(drv.run())
    await asyncio.wait_for(subscribed.wait(), 10)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    t0 = c0 = None
    while drv.received + drv.dropped < expected and time.monotonic() < deadline:
        if t0 is None and drv.received:
            t0, c0 = time.monotonic(), cpu()
        await asyncio.sleep(0.005)
    t1, c1 = time.monotonic(), cpu()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    print(drv.received, t1 - (t0 or t1), c1 - (c0 or c1), db.updates, drv.garbage, drv.dropped)
from common import eventloop
eventloop.run(main(), sys.argv[7])
"""

MODES = {
    "paho": "paho thread, counting (baseline)",
    "aio": "paho event loop, counting",
    "fast": "fast path (event loop), counting",
    "driver-paho": "driver into the TagDB, paho path",
    "driver": "driver into the TagDB, fast path",
}


def write_config(folder: Path, devices: int, port: int) -> None:
    """The shipped types and ``devices`` access bollards on the broker at ``port``."""
    rows = [f"B-{d:05d},access_bollard,Dijon,47.32,5.04,127.0.0.1:{port}" for d in range(devices)]
    write_inventory(folder, "bollards.csv", "name,type,commune,lat,lon,endpoint", rows)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, port: int, folder: Path, args, broker_pid: int) -> dict:
    broker_cpu = cpu_seconds(broker_pid)
    rx = subprocess.Popen(
        [PY, "-c", RECEIVER, mode, str(port), str(args.messages), "60", str(ROOT), str(folder), args.event_loop],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "ready", f"{mode} receiver did not subscribe"
    per = args.messages // args.publishers
    chunk = args.devices // args.publishers
    script = RAW_PUBLISHER if args.publisher == "raw" else PAHO_PUBLISHER
    pubs = [
        subprocess.Popen(
            [PY, "-c", script, str(port), str(k * chunk), str(chunk), str(args.devices), str(per), str(ROOT)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for k in range(args.publishers)
    ]
    offered = sum(float(p.communicate(timeout=300)[0] or 0) for p in pubs)
    out, _ = rx.communicate(timeout=120)
    f = out.split()
    r = {
        "n": int(f[0]),
        "secs": float(f[1]),
        "cpu": float(f[2]),
        "offered": offered,
        "broker_cpu": cpu_seconds(broker_pid) - broker_cpu,
    }
    if len(f) > 3:
        r.update(rows=int(f[3]), garbage=int(f[4]), dropped=int(f[5]))
    return r


# In-process costs (no broker, no other process): CPU seconds per message.


def link_cpu_per_message(fast: bool, n: int = 100_000) -> float:
    """The link's packet path, counting only, fed by a scripted broker: paho's, or the fast path's."""
    import paho.mqtt.client as mqtt

    from drivers.mqtt.aio import AsyncioMqtt

    stream = b"".join(packet(t, p) for t, p in state_messages(0, 1000, 4000))
    copies = n // 4000

    async def main() -> float:
        done, count, marks = asyncio.Event(), [0], {}

        def counted(k: int) -> None:
            count[0] += k
            if count[0] >= copies * 4000 and not done.is_set():
                marks["c1"] = time.process_time()
                done.set()

        async def serve(reader, writer):
            await reader.read(1024)  # CONNECT
            writer.write(b"\x20\x02\x00\x00")
            await writer.drain()
            await asyncio.sleep(0.2)
            marks["c0"] = time.process_time()
            for _ in range(copies):
                writer.write(stream)
                await writer.drain()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, msg: counted(1)
        link = AsyncioMqtt(
            client,
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            on_messages=(lambda msgs: counted(len(msgs))) if fast else None,
        )
        link.start()
        await asyncio.wait_for(done.wait(), 120)
        await link.stop()
        server.close()
        return (marks["c1"] - marks["c0"]) / (copies * 4000)

    # The scripted broker's writes share the process: they are counted in, a small overestimate.
    return asyncio.run(main())


def handover_cpu_per_message(folder: Path, n: int = 100_000, batch: int = 375) -> float:
    """The fast path's callback into the driver: ``(topic, payload, retain)`` lists (one 64 KiB read
    of these messages each) -> inbox entries."""
    import collections

    from bench.harness import load_config
    from drivers.mqtt.driver import MqttDriver
    from scada.tagdb import TagDB

    cfg = load_config(folder)
    drv = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table()))
    drv._wake = asyncio.Event()
    broker = next(iter(drv.brokers.values()))
    msgs = [(t, p, False) for t, p in state_messages(0, len(cfg.devices), n)]
    batches = [msgs[i : i + batch] for i in range(0, n, batch)]
    c0 = time.process_time()
    for b in batches:
        drv._on_messages(broker, b)
        if len(drv._inbox) > 50_000:
            drv._inbox = collections.deque()
    return (time.process_time() - c0) / n


def driver_cpu_per_message(folder: Path, n: int = 100_000, batch: int = 500) -> float:
    from bench.harness import load_config
    from common import logs
    from drivers.mqtt.driver import MqttDriver
    from scada.tagdb import TagDB

    logs.configure(level="WARNING")
    cfg = load_config(folder)
    drv = MqttDriver(cfg, list(cfg.devices), TagDB(*cfg.tag_table()))
    broker = next(iter(drv.brokers.values()))
    now = time.time_ns()
    msgs = [(broker, t, p, now, 0) for t, p in state_messages(0, len(cfg.devices), n)]  # inbox entries
    c0 = time.process_time()
    for i in range(0, n, batch):
        drv._process(msgs[i : i + batch])
    c1 = time.process_time()
    assert drv.garbage == 0 and drv.received == n
    return (c1 - c0) / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--publisher", choices=["raw", "paho"], default="raw")
    ap.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the receivers' event loop (default: the server's, uvloop)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = Mosquitto(work / "mqtt", "max_queued_messages 1000000\n")
    port = broker.port
    assert broker.proc is not None  # started by the constructor
    broker_pid = broker.proc.pid
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    inproc_costs = {
        "paho": lambda: link_cpu_per_message(False),
        "fast": lambda: link_cpu_per_message(True),
        "handover": lambda: handover_cpu_per_message(work / "config"),
        "driver": lambda: driver_cpu_per_message(work / "config"),
    }
    inproc: dict[str, list[float]] = {what: [] for what in inproc_costs}
    try:
        write_config(work / "config", args.devices, port)
        order, in_order = list(MODES), list(inproc_costs)
        for rep in range(args.repeats):
            for mode in order if rep % 2 == 0 else order[::-1]:
                results[mode].append(run(mode, port, work / "config", args, broker_pid))
            for what in in_order if rep % 2 == 0 else in_order[::-1]:
                inproc[what].append(inproc_costs[what]())
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    def rate(mode):
        return statistics.median(r["n"] / r["secs"] for r in results[mode] if r["secs"] > 0)

    def share(mode):
        return statistics.median(r["cpu"] / r["secs"] for r in results[mode] if r["secs"] > 0)

    def cpu_us(mode):
        return statistics.median(r["cpu"] / r["n"] for r in results[mode]) * 1e6

    def ratio(mode, against):  # paired within each repetition, then the median
        return statistics.median(
            (r["n"] / r["secs"]) / (b["n"] / b["secs"]) for r, b in zip(results[mode], results[against])
        )

    print(
        f"\nMQTT ingest, {args.messages:,} JSON messages (QoS 0, {args.publisher} publishers x {args.publishers}) "
        f"for {args.devices:,} bollards through Mosquitto; medians of {args.repeats}, order alternating; "
        f"receivers on {args.event_loop}"
    )
    offered = statistics.median(r["offered"] for rs in results.values() for r in rs)
    per_msg = statistics.median(r["broker_cpu"] / args.messages for rs in results.values() for r in rs) * 1e6
    print(f"  publishers' send rate (taken by Mosquitto) {offered:>10,.0f} msg/s   Mosquitto CPU {per_msg:.1f} us/msg")
    for mode, label in MODES.items():
        delivered = min(r["n"] for r in results[mode])
        cost = cpu_us(mode)
        print(
            f"  {label:<40} {rate(mode):>10,.0f} msg/s  x{ratio(mode, 'paho'):.2f} of baseline  "
            f"receiver CPU {share(mode):.2f} cores, {cost:5.1f} us/msg  delivered {delivered:,}"
        )
    ro = rate("driver")
    print(
        f"  driver: target >= 50,000 msg/s {'met' if ro >= 50_000 else 'MISSED'}; "
        f"x{ratio('driver', 'driver-paho'):.2f} of the driver on the paho path, x{ratio('driver', 'fast'):.2f} of "
        f"the fast path counting; CPU per message {cpu_us('driver'):.1f} us (paho path {cpu_us('driver-paho'):.1f}), "
        f"of which the link and the loop {cpu_us('fast'):.1f} us (paho: {cpu_us('aio'):.1f}) (counting receivers)"
    )
    last = results["driver"][-1]
    print(
        f"  driver, last run: {last['rows']:,} rows stored in the TagDB (6 per message, a tag's last value per "
        f"batch), garbage {last['garbage']}, dropped {last['dropped']}"
    )
    us = {what: statistics.median(v) * 1e6 for what, v in inproc.items()}

    def line(label, cost):
        return f"    {label:<44} {cost:6.1f} us   ({1e6 / cost:>8,.0f} msg/s on one core)"

    print("  in-process CPU per message (no broker):")
    print(line("paho packet path via the link, counting", us["paho"]))
    print(line("fast path via the link, counting", us["fast"]))
    print(line("fast path hand-over to the driver's inbox", us["handover"]))
    print(line("driver decode + TagDB store (batch 500)", us["driver"]))
    for label, parts in (
        ("sum, paho path: one message into the TagDB", ("paho", "driver")),
        ("sum, fast path: one message into the TagDB", ("fast", "handover", "driver")),
    ):
        print(line(label, sum(us[p] for p in parts)))
    print("    (50,000 msg/s on one core needs <= 20.0 us a message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
