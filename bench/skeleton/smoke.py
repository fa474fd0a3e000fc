"""Section 3b of bench_skeleton: the built address space serves an asyncua client on loopback."""

from __future__ import annotations

import asyncio
import time
from argparse import Namespace

import numpy as np

from bench.harness import Report, emit, log, run_child
from bench.skeleton import SCRIPT
from bench.skeleton.hmi import serving_hmi


def child_smoke(n: int) -> None:
    async def main():
        from asyncua import Client

        from scada.config import DIAG_FOLDER
        from scada.opcua.address_space import NAMESPACE_URI

        config, names, _, db, url, hmi = await serving_hmi(n)
        try:
            tag = next(i for i, nm in enumerate(names) if nm.endswith("/mains_voltage"))
            db.update(np.array([tag]), np.array([231.5]), 0, time.time_ns())
            await hmi.publisher.apply(hmi.publisher.consumer.get_nowait())
            async with Client(url, timeout=10) as client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                node = client.get_node(f"ns={ns};s={names[tag]}")
                dv = await node.read_data_value()
                device = client.get_node(f"ns={ns};s={names[tag].rsplit('/', 1)[0]}")
                children = [(await c.read_browse_name()).Name for c in await device.get_children()]
                units = await (await node.get_child("0:EngineeringUnits")).read_value()
            # A device's children are its type's points plus its Diagnostics object.
            expected = [p.name for p in config.types[config.device(names[tag].split("/")[2]).type].points]
            expected.append(DIAG_FOLDER)
            points = len(expected) - 1
            ok = dv.Value.Value == 231.5 and dv.StatusCode.is_good() and sorted(children) == sorted(expected)
            emit(
                {
                    "ok": ok,
                    "points": points,
                    "tag": names[tag],
                    "value": dv.Value.Value,
                    "status": dv.StatusCode.name,
                    "children": len(children),
                    "missing": sorted(set(expected) - set(children)),
                    "unexpected": sorted(set(children) - set(expected)),
                    "unit": units.DisplayName.Text,
                    "url": url,
                }
            )
        finally:
            await hmi.stop()

    asyncio.run(main())


def bench_smoke(args: Namespace, rep: Report) -> None:
    log("\n== 3b. The built address space serves a client ==")
    r = run_child(SCRIPT, ["smoke", args.smoke_tags], timeout=120)
    log(
        f"  {r['url']}: read {r['tag']} = {r['value']} {r['unit']} ({r['status']}); device has {r['children']} children"
        f" (missing {r['missing']}, unexpected {r['unexpected']})"
    )
    rep.add(
        "built space usable: client read over loopback",
        f"{r['value']} {r['unit']}, {r['status']}",
        f"231.5 V, Good, {r['points']} points + Diagnostics",
        "",
        "OK" if r["ok"] else "FAIL",
    )
    rep.data["smoke"] = r
