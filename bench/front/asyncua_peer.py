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
import sys
import time
from pathlib import Path

import numpy as np

T0 = time.monotonic()

from bench.front.field import FieldStats, run_field, serve_until_sigterm  # noqa: E402
from bench.front.workload import NAMESPACE_URI, read_names  # noqa: E402
from bench.harness import string_node_id  # noqa: E402


async def serve(args: argparse.Namespace, stats: FieldStats) -> None:
    """Build the tree, serve it and run the field until SIGTERM."""
    from asyncua import Node, Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/scada/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE_URI)
    objects = server.nodes.objects
    root = await objects.add_folder(string_node_id("City", ns), "City")
    folders: dict[str, Node] = {}

    async def folder(path: str) -> Node:
        if path in folders:
            return folders[path]
        parent_path, _, leaf = path.rpartition("/")
        parent = await folder(parent_path) if parent_path else root
        f = await parent.add_folder(string_node_id(path + "/", ns), leaf)
        folders[path] = f
        return f

    nodeids: dict[str, ua.NodeId] = {}
    for name in read_names(Path(args.names)):
        parent_path, _, leaf = name.rpartition("/")
        parent = await folder(parent_path)
        var = await parent.add_variable(string_node_id(name, ns), leaf, 0.0, ua.VariantType.Double)
        nodeids[name] = var.nodeid
    changing = [nodeids[n] for n in read_names(Path(args.changing))] if args.changing else []

    async def write(positions: np.ndarray, value_ms: float) -> None:
        dv = ua.DataValue(ua.Variant(value_ms, ua.VariantType.Double))
        for p in positions.tolist():
            await server.write_attribute_value(changing[p], dv)

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
    return serve_until_sigterm(lambda stats: serve(args, stats))


if __name__ == "__main__":
    sys.exit(main())
