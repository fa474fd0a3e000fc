"""MQTT ingest: JSON messages per second through Mosquitto into the tag database.

    .venv/bin/python bench/bench_mqtt.py [--messages 200000] [--devices 1000] [--publishers 2] [--repeats 3]

Starts a Mosquitto on a free loopback port and, for each measurement, publisher processes
that send bollard-state JSON messages (QoS 0) for ``--devices`` bollards as fast as they can.
Two receivers are measured in turn, each in the same run and on the same stream:

* baseline: a bare paho client subscribed to the same topics, counting messages (nothing
  decoded): what the library and the broker deliver at best on this machine;
* ours: the MQTT driver (``drivers/mqtt``: event-loop client, bounded inbox, pure codec,
  one TagDB.update per batch) with 1,000 ``access_bollard`` devices configured from the
  shipped tags.yaml, counting rows stored in the TagDB.

Target (issue 4): at least 50,000 JSON messages per second into the tag database.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable

PUBLISHER = """
import json, sys, time
import paho.mqtt.client as mqtt
port, first, count, devices, messages = (int(a) for a in sys.argv[1:6])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
positions = ["down", "rising", "up", "lowering"]
for k in range(messages):
    d = first + k % count
    payload = json.dumps({"position": positions[k % 4], "height": (k % 100) / 100, "vehicle": k % 2 == 0,
                          "obstruction": False, "emergency": False, "fault": False, "ts": "2026-11-28T10:00:00Z"})
    c.publish(f"city/bollards/B-{d:05d}/state", payload, qos=0)
    if k % 2000 == 0:
        time.sleep(0)
c.loop_stop()
c.disconnect()
"""

BASELINE = """
import sys, time
import paho.mqtt.client as mqtt
port, expected, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
n = [0, None, None]
def on_message(c, u, msg):
    if n[0] == 0:
        n[1] = time.monotonic()
    n[0] += 1
    n[2] = time.monotonic()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.on_message = on_message
c.connect("127.0.0.1", port)
c.subscribe("city/bollards/+/state", qos=0)
c.loop_start()
print("ready", flush=True)
deadline = time.monotonic() + timeout
while n[0] < expected and time.monotonic() < deadline:
    time.sleep(0.05)
c.loop_stop()
print(n[0], (n[2] or 0) - (n[1] or 0))
"""

OURS = """
import asyncio, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from drivers.mqtt.driver import MqttDriver
from scada import logs
from scada.config import load_config
from scada.tagdb import TagDB
port, expected, timeout, root, folder = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
logs.configure(level="WARNING")  # logs go to stderr; stdout carries the figures
cfg = load_config(folder)
db = TagDB(*cfg.tag_table())
drv = MqttDriver(cfg, list(cfg.devices), db)
async def main():
    task = asyncio.create_task(drv.run())
    while not any(b.connected for b in drv.brokers.values()):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    t0 = None
    while drv.received < expected and time.monotonic() < deadline:
        if t0 is None and drv.received:
            t0 = time.monotonic()
        await asyncio.sleep(0.01)
    t1 = time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    print(drv.received, t1 - (t0 or t1), db.updates, drv.garbage, drv.dropped)
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def write_config(folder: Path, devices: int, port: int) -> None:
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tags.yaml").write_text(head + "\ninventories:\n  - file: bollards.csv\n")
    rows = ["name,type,commune,lat,lon,endpoint"]
    rows += [f"B-{d:05d},access_bollard,Dijon,47.32,5.04,127.0.0.1:{port}" for d in range(devices)]
    (folder / "bollards.csv").write_text("\n".join(rows) + "\n")


def run(receiver: list[str], port: int, args) -> list[str]:
    rx = subprocess.Popen(receiver, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert rx.stdout.readline().strip() == "ready"
    per = args.messages // args.publishers
    chunk = args.devices // args.publishers
    pubs = [subprocess.Popen([PY, "-c", PUBLISHER, str(port), str(k * chunk), str(chunk), str(args.devices), str(per)],
                             cwd=ROOT) for k in range(args.publishers)]
    for p in pubs:
        p.wait(300)
    out, _ = rx.communicate(timeout=120)
    return out.split()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    port = free_port()
    (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                 "max_queued_messages 1000000\n")
    broker = subprocess.Popen([exe, "-c", str(work / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        write_config(work / "config", args.devices, port)
        timeout = 60.0
        base, ours, details = [], [], []
        for _ in range(args.repeats):
            n, secs = run([PY, "-c", BASELINE, str(port), str(args.messages), str(timeout)], port, args)
            base.append((int(n), float(secs)))
            n, secs, rows, garbage, dropped = run([PY, "-c", OURS, str(port), str(args.messages), str(timeout),
                                                   str(ROOT), str(work / "config")], port, args)
            ours.append((int(n), float(secs)))
            details.append((int(rows), int(garbage), int(dropped)))
    finally:
        broker.terminate()
        broker.wait(10)

    def rate(runs):
        return statistics.median(n / s for n, s in runs if s > 0)

    rb, ro = rate(base), rate(ours)
    print(f"\nMQTT ingest, {args.messages:,} JSON messages (QoS 0) for {args.devices:,} bollards from "
          f"{args.publishers} publisher processes through Mosquitto; medians of {args.repeats}")
    print(f"  delivered (messages received / sent)  baseline {statistics.median(n for n, _ in base):,.0f}  "
          f"ours {statistics.median(n for n, _ in ours):,.0f}  of {args.messages:,}")
    print(f"  bare paho client, counting only        {rb:>10,.0f} msg/s   library + broker baseline")
    print(f"  MQTT driver into the TagDB             {ro:>10,.0f} msg/s   target >= 50,000 msg/s: "
          f"{'met' if ro >= 50_000 else 'MISSED'}; ratio {ro / rb:.2f} of the baseline")
    rows, garbage, dropped = details[-1]
    print(f"  rows offered to TagDB (last run)       {rows:>10,}   (6 points per message); garbage {garbage}, "
          f"dropped {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
