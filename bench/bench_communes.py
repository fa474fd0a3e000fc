"""The cost of hiding communes (``see_other_communes: false``) on the OPC UA front's Read and
Browse services, server side: milliseconds per request for an identity that sees everything
and for one limited to one commune that does not see the others, in the same run.

    cd <checkout> && .venv/bin/python <this file> [--devices 400] [--communes 8] [--repeats 7]

An HmiServer with its security layer on a generated city (``--devices`` lighting cabinets
spread over ``--communes`` communes); the Read service (every tag's Value: one request of
~``devices`` x 24 nodes) and the Browse service (the City folder and every device, forward) are
called directly with the request context of each identity set, as the front's processor sets
it: no client, no network, so the figures are the services' own cost. Run from a checkout, it
imports that checkout's ``scada``: run it from main and from a branch one after the other,
alternating, to compare (main has no filter: its "restricted" is the unfiltered answer).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())


async def measure(devices: int, communes: int, repeats: int) -> dict[str, list[float]]:
    from asyncua import ua

    from scada.opcua.server import HmiServer
    from scada.opcua.typed_ua import NodeId
    from scada.security.context import REQUEST, RequestContext
    from scada.security.identity import Identity, Role
    from scada.security.settings import SecuritySettings
    from tests.alarm_rig import SERVICES, AlarmRig, Clock
    from tests.integration.helpers import free_port, serving

    lines = [
        f'  - {{name: LC-{i:04d}, type: lighting_cabinet, commune: C{i % communes}, lat: 47.3, lon: 5.0, endpoint: "10.0.{i // 250}.{i % 250}:502"}}'
        for i in range(devices)
    ]
    folder = Path(tempfile.mkdtemp())
    rig = AlarmRig(folder / "cfg", SERVICES, folder / "j.sqlite", Clock(), "devices:\n" + "\n".join(lines) + "\n")
    settings = dataclasses.replace(SecuritySettings.defaults(folder / "data"), allow_none=True)
    hmi = HmiServer(rig.config, rig.tagdb, f"opc.tcp://127.0.0.1:{free_port()}/scada/", security=settings)
    observer = frozenset({Role.OBSERVER})
    who = {
        "everything": Identity("olga", observer),
        "restricted": Identity("dora", observer, frozenset({"C0"}), see_other_communes=False),
    }
    out: dict[str, list[float]] = {}
    async with serving(hmi):
        ns = hmi.ns
        read = ua.ReadParameters(
            NodesToRead=[
                ua.ReadValueId(NodeId=NodeId(n, ns), AttributeId=ua.AttributeIds.Value) for n in rig.tagdb.names
            ]
        )
        starts = [NodeId("City", ns)] + [
            NodeId(f"{d.commune}/{rig.config.types[d.type].cls}/{d.name}", ns) for d in rig.config.devices
        ]
        browse = ua.BrowseParameters(
            NodesToBrowse=[ua.BrowseDescription(NodeId=n, BrowseDirection=ua.BrowseDirection.Forward) for n in starts]
        )
        iserver = hmi.server.iserver
        services = {
            "read": lambda: iserver.attribute_service.read(read),
            "browse": lambda: iserver.view_service.browse(browse),
        }
        for _ in range(repeats):
            for name, identity in who.items():
                token = REQUEST.set(RequestContext(identity))
                try:
                    for service, fn in services.items():
                        fn()  # warm (the node table's caches)
                        t0 = time.perf_counter()
                        fn()
                        out.setdefault(f"{service} ({name})", []).append((time.perf_counter() - t0) * 1000)
                finally:
                    REQUEST.reset(token)
        out["nodes read"] = [float(len(read.NodesToRead))]
        out["nodes browsed"] = [float(len(starts))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--communes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    res = asyncio.run(measure(args.devices, args.communes, args.repeats))
    print(f"{'ms per request (median of ' + str(args.repeats) + ')':34} {os.getcwd()}")
    for key, values in res.items():
        print(f"{key:34} {statistics.median(values):10.2f}")


if __name__ == "__main__":
    main()
