"""The stock asyncua peer server: the tag tree of our server built with asyncua's public API
(``add_folder`` / ``add_variable``: Objects/City/<commune>/<class>/<device>/<point>, string
NodeIds equal to the tag path, namespace urn:city-scada:tags), Double variables, the listed ones
changed by the same synthetic field as ours (bench/front/field.py) through
``Server.write_attribute_value``, asyncua's one way to change a value.

    python -m bench.front.asyncua_peer --port P --names FILE [--changing FILE --rate R --tick-ms T]

Prints ``LISTENING <seconds>`` when it serves and ``RESULT {json}`` (the field's statistics) on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

T0 = time.monotonic()

from bench.front.field import FieldStats, run_field  # noqa: E402
from bench.front.workload import NAMESPACE_URI, read_names  # noqa: E402


async def serve(args: argparse.Namespace, stats: FieldStats) -> None:
    """Build the tree, serve it and run the field until SIGTERM."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/scada/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE_URI)
    objects = server.nodes.objects
    root = await objects.add_folder(ua.NodeId("City", ns), "City")
    folders: dict[str, object] = {}

    async def folder(path: str):
        if path in folders:
            return folders[path]
        parent_path, _, leaf = path.rpartition("/")
        parent = await folder(parent_path) if parent_path else root
        f = await parent.add_folder(ua.NodeId(path + "/", ns), leaf)  # type: ignore[attr-defined]
        folders[path] = f
        return f

    nodeids: dict[str, ua.NodeId] = {}
    for name in read_names(Path(args.names)):
        parent_path, _, leaf = name.rpartition("/")
        parent = await folder(parent_path)
        var = await parent.add_variable(ua.NodeId(name, ns), leaf, 0.0, ua.VariantType.Double)  # type: ignore[attr-defined]
        nodeids[name] = var.nodeid
    changing = [nodeids[n] for n in read_names(Path(args.changing))] if args.changing else []

    async def write(positions: np.ndarray, value_ms: float) -> None:
        dv = ua.DataValue(ua.Variant(value_ms, ua.VariantType.Double))
        for p in positions.tolist():
            await server.write_attribute_value(changing[p], dv)

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with server:
        print(f"LISTENING {time.monotonic() - T0:.3f}", flush=True)
        await run_field(write, len(changing), args.rate, args.tick_ms / 1000, stats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--names", required=True)
    ap.add_argument("--changing")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--tick-ms", type=float, default=10.0)
    args = ap.parse_args()
    stats = FieldStats()

    async def run() -> None:
        try:
            await serve(args, stats)
        except asyncio.CancelledError:  # SIGTERM: the way this process is meant to stop
            pass

    asyncio.run(run())
    print("RESULT " + json.dumps(vars(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
