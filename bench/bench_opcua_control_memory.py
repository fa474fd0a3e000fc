"""Memory of the OPC UA tree with control (issue 15) against without: the address space's bytes
per tag (tracemalloc around building it), on a city of cabinets, junctions and bollards.

With control each controlled device gains its Control object (4 tags: counted as tags) and
references to its type's shared method nodes (one list slot each), and every group folder its
GroupAction progress variables. The target is issue 13's: <= 1.5 KB per tag, not raised measurably.

    python -m bench.bench_opcua_control_memory [--cabinets 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import tempfile
import tracemalloc
from pathlib import Path

from asyncua import Server

from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder
from scada.opcua.commands import CommandMethods
from scada.opcua.group_actions import GroupActions
from tests import configs
from tests.unit.test_opcua_commands import control


def devices(cabinets: int) -> str:
    rows = ["devices:"]
    communes = [f"C{k:02d}" for k in range(24)]
    for k in range(cabinets):
        rows.append(
            f"  - {{name: LC-{k}, type: lighting_cabinet, commune: {communes[k % 24]}, lat: 47.3, lon: 5.0,"
            f" endpoint: '10.0.{k // 250}.{k % 250 + 1}:502'}}"
        )
    for k in range(max(1, cabinets // 10)):
        rows.append(
            f"  - {{name: TJ-{k}, type: traffic_junction, commune: {communes[k % 24]}, lat: 47.3, lon: 5.0,"
            f" endpoint: 'opc.tcp://10.1.0.{k % 250 + 1}:4840/'}}"
        )
        rows.append(
            f"  - {{name: BO-{k}, type: access_bollard, commune: {communes[k % 24]}, lat: 47.3, lon: 5.0,"
            f" endpoint: '10.2.0.{k % 250 + 1}:1883'}}"
        )
    return "\n".join(rows) + "\n"


async def measure(config, with_control: bool) -> tuple[int, int]:
    server = Server()
    await server.init()
    ns = await server.register_namespace(NAMESPACE_URI)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    values = AddressSpaceBuilder(server, ns).build(config)
    if with_control:

        async def request(op, payload):  # never called: only the tree is measured
            raise AssertionError(op)

        CommandMethods(server, ns, request).install(config)
        GroupActions(server, ns, request).install(config)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used, len(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cabinets", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = configs.write_config(Path(tmp) / "cfg", devices(args.cabinets), "alarms: []\n")
    controlled = dataclasses.replace(config, control=control())
    print(f"[OPC UA tree memory, {len(config.devices)} devices, tracemalloc around the build]")
    for label, cfg, on in (("without control", config, False), ("with control", controlled, True)):
        used, tags = asyncio.run(measure(cfg, on))
        print(f"{label:<16} {tags:>8} tags  {used / tags:8.0f} B per tag   target <= 1536 B")


if __name__ == "__main__":
    main()
