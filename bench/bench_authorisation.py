"""The cost of authorisation on the OPC UA front's request path: requests per second with the
security layer off (``security=None``: nothing installed) and on (the service gate, the
request's context, the subscription owner checks), in the same run.

    .venv/bin/python bench/bench_authorisation.py [--seconds 3] [--repeats 5]

Each mode runs in a fresh interpreter (the gate's wrapper is installed once per process): an
HmiServer of the alarm tests' small city on loopback, one asyncua client logged in (an
Observer; anonymous with the layer off) sending, one at a time, for ``--seconds`` each: a Read
of one tag value (the smallest request: the gate's share is the largest there), a Read of every
tag value and a Browse of a device (a Publish passes the same gate, and the owner check of its
acknowledgements: one comparison each). Client and server share the process and its core: the figures are the round trips of both, the ratio on/off is what to read. Modes
alternate which goes first; medians over ``--repeats``.

Run it from the checkout to measure (``cd <checkout> && python <this file>``): the checkout's
``scada`` is imported, so that main and a branch are measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
PASSWORD = "bench password"


async def child(mode: str, seconds: float) -> dict[str, float]:
    from asyncua import Client, ua

    from scada.opcua.server import HmiServer
    from scada.opcua.typed_ua import NodeId
    from scada.security.settings import SecuritySettings
    from scada.security.users import hash_password, make_user, save_users
    from tests.alarm_rig import DEVICES, SERVICES, AlarmRig, Clock
    from tests.integration.helpers import free_port, serving

    alarms = (
        SERVICES
        + """alarms:
  - {name: hot, type: lighting_cabinet, point: temperature, condition: high, limit: 60, deadband: 5,
     priority: high, message: "{device}: hot", service: lighting_maintenance}
"""
    )
    # On: the real login (an Observer of the users file; the password sent encrypted with the
    # server's certificate over the None channel, as an HMI would).
    data = Path(tempfile.mkdtemp())
    settings = SecuritySettings.defaults(data) if mode == "on" else None
    if settings is not None:
        settings = dataclasses.replace(settings, allow_none=True)
        save_users(settings.users, {"olga": make_user("olga", hash_password(PASSWORD), ["observer"])})

    rig = AlarmRig(Path(tempfile.mkdtemp()) / "cfg", alarms, Path(tempfile.mkdtemp()) / "j.sqlite", Clock(), DEVICES)
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    hmi = HmiServer(rig.config, rig.tagdb, url, alarms=rig.engine, security=settings)
    out: dict[str, float] = {}
    async with serving(hmi):
        client = Client(url, timeout=10)
        if mode == "on":  # off: asyncua's own (anyone, role User), as before issue 14
            client.set_user("olga")
            client.set_password(PASSWORD)
        async with client:
            ns = hmi.ns
            names = list(rig.tagdb.names)
            nodes = [NodeId(n, ns) for n in names]
            one = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=nodes[0], AttributeId=ua.AttributeIds.Value)])
            every = ua.ReadParameters(
                NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in nodes]
            )
            device = NodeId("/".join(names[0].split("/")[:3]), ns)
            browse = ua.BrowseParameters(
                NodesToBrowse=[ua.BrowseDescription(NodeId=device, BrowseDirection=ua.BrowseDirection.Forward)]
            )

            async def rate(name: str, fn) -> None:
                for _ in range(20):  # warm up
                    await fn()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    await fn()
                    n += 1
                out[name] = n / (time.perf_counter() - t0)

            await rate("read_1", lambda: client.uaclient.read(one))
            await rate("read_all", lambda: client.uaclient.read(every))
            await rate("browse", lambda: client.uaclient.browse(browse))

    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.seconds))))
        return
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.repeats):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            res = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--seconds", str(args.seconds)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'requests/s (median of ' + str(args.repeats) + ')':32} {'off':>10} {'on':>10} {'on/off':>8}")
    for key in runs["off"][0]:
        off = statistics.median(x[key] for x in runs["off"])
        on = statistics.median(x[key] for x in runs["on"])
        print(f"{key:32} {off:10.0f} {on:10.0f} {on / off:8.2f}")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
