"""Section 3 of bench_skeleton: the OPC UA address-space build, ours beside stock asyncua, in fresh
interpreters."""

from __future__ import annotations

import asyncio
import gc
import math
import subprocess
import time
from argparse import Namespace
from typing import Any

from bench import citygen
from bench.harness import Report, emit, log, med, rss, run_child, string_node_id
from bench.skeleton import SCRIPT


async def _stock_build(server: Any, ns: int, config: Any) -> int:
    """The same commune/class/device/point tree through asyncua's public node API."""
    from asyncua import ua

    from scada.opcua.address_space import ROOT_NAME, variant_type

    initial = {
        ua.VariantType.Double: 0.0,
        ua.VariantType.Int32: 0,
        ua.VariantType.Boolean: False,
        ua.VariantType.String: "",
    }
    root = await server.nodes.objects.add_folder(string_node_id(ROOT_NAME, ns), ua.QualifiedName(ROOT_NAME, ns))
    folders: dict[str, Any] = {}
    count = 0
    for d in config.devices:
        t = config.types[d.type]
        commune = folders.get(d.commune)
        if commune is None:
            commune = folders[d.commune] = await root.add_folder(
                string_node_id(d.commune, ns), ua.QualifiedName(d.commune, ns)
            )
        cls_path = f"{d.commune}/{t.cls}"
        cls = folders.get(cls_path)
        if cls is None:
            cls = folders[cls_path] = await commune.add_folder(
                string_node_id(cls_path, ns), ua.QualifiedName(t.cls, ns)
            )
        dev_path = f"{cls_path}/{d.name}"
        dev = await cls.add_object(string_node_id(dev_path, ns), ua.QualifiedName(d.name, ns))
        for p in t.points:
            vt = variant_type(p)
            await dev.add_variable(
                string_node_id(f"{dev_path}/{p.name}", ns), ua.QualifiedName(p.name, ns), ua.Variant(initial[vt], vt)
            )
            count += 1
    return count


async def _browse_read(server: Any, ns: int, config: Any) -> dict:
    """Browse and Read through the server's own services (no network): the biggest class
    folder's devices in one Browse request, and 1,000 variables' Value and DisplayName per Read."""
    from asyncua import ua

    from scada.opcua.typed_ua import NodeId

    session = server.iserver.isession
    counts: dict[str, int] = {}
    for d in config.devices:
        key = f"{d.commune}/{config.types[d.type].cls}"
        counts[key] = counts.get(key, 0) + 1
    folder = max(counts, key=lambda k: counts[k])
    hier = NodeId(ua.ObjectIds.HierarchicalReferences)

    def browse_of(nids: list) -> ua.BrowseParameters:
        return ua.BrowseParameters(
            NodesToBrowse=[
                ua.BrowseDescription(NodeId=nid, ReferenceTypeId=hier, ResultMask=ua.BrowseResultMask.All)
                for nid in nids
            ]
        )

    [res] = await session.browse(browse_of([string_node_id(folder, ns)]))
    devices = [r.NodeId for r in res.References if r.NodeClass == ua.NodeClass.Object]
    params = browse_of(devices)
    t0, rounds, refs = time.perf_counter(), 0, 0
    while rounds < 3 or time.perf_counter() - t0 < 2.0:
        refs = sum(len(r.References) for r in await session.browse(params))
        rounds += 1
    browse_s = (time.perf_counter() - t0) / rounds
    names = [
        f"{d.commune}/{config.types[d.type].cls}/{d.name}/{p.name}"
        for d in config.devices
        for p in config.types[d.type].points
    ]
    step = max(1, len(names) // 1000)
    reads = [
        ua.ReadValueId(NodeId=string_node_id(name, ns), AttributeId=attr)
        for name in names[::step][:1000]
        for attr in (ua.AttributeIds.Value, ua.AttributeIds.DisplayName)
    ]

    async def timed_read(reads: list) -> tuple[float, list]:
        params = ua.ReadParameters(NodesToRead=reads)
        t0, rounds = time.perf_counter(), 0
        while rounds < 3 or time.perf_counter() - t0 < 2.0:
            dvs = await session.read(params)
            rounds += 1
        return (time.perf_counter() - t0) / rounds, dvs

    read_s, dvs = await timed_read(reads)
    # DisplayName alone: the tree's part (a Value is made by the publisher's TagValue when read).
    names_s, _ = await timed_read(reads[1::2])
    return {
        "browse_devices": len(devices),
        "browse_refs": refs,
        "browse_s": browse_s,
        "read_attrs": len(reads),
        "read_s": read_s,
        "read_names_s": names_s,
        "read_good": sum(1 for dv in dvs if dv.StatusCode is None or not dv.StatusCode.is_bad()),
    }


def child_build(impl: str, n: int) -> None:
    async def main():
        from asyncua import Server

        from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder
        from scada.opcua.asyncua_private.nodes import address_space

        t0 = time.perf_counter()
        config = citygen.load_config(n)
        config_s = time.perf_counter() - t0
        server = Server()
        await server.init()
        ns = await server.register_namespace(NAMESPACE_URI)
        nodes0 = len(address_space(server).keys())
        gc_time = [0.0, 0]
        started = []

        def on_gc(phase, info):
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                gc_time[0] += time.perf_counter() - started.pop()
                gc_time[1] += 1

        gc.collect()
        r0 = rss()
        gc.callbacks.append(on_gc)
        t0 = time.perf_counter()
        if impl == "ours":
            values = AddressSpaceBuilder(server, ns).build(config)
            variables = len(values)
        else:
            variables = await _stock_build(server, ns, config)
        build_s = time.perf_counter() - t0
        gc.callbacks.remove(on_gc)
        t1 = time.perf_counter()
        gc.collect()
        full_gc_s = time.perf_counter() - t1
        r1 = rss()
        # What a full collection costs once the (immortal) tree is frozen out of the GC.
        gc.freeze()
        t1 = time.perf_counter()
        gc.collect()
        frozen_gc_s = time.perf_counter() - t1
        services = await _browse_read(server, ns, config)
        emit(
            {
                "impl": impl,
                "n": n,
                "tags": config.tag_count,
                "variables": variables,
                "nodes": len(address_space(server).keys()) - nodes0,
                "build_s": build_s,
                "config_s": config_s,
                "rss_delta": r1 - r0,
                "gc_s": gc_time[0],
                "gc_runs": gc_time[1],
                "full_gc_s": full_gc_s,
                "frozen_gc_s": frozen_gc_s,
                **services,
            }
        )

    asyncio.run(main())


def bench_build(args: Namespace, rep: Report) -> None:
    log("\n== 3. OPC UA address-space build, fresh subprocesses ==")
    res: dict[tuple[str, int], list[dict]] = {}

    def measure(impl, n, reps, timeout=None):
        runs = []
        for _ in range(reps):
            r = run_child(SCRIPT, ["build", impl, n], timeout=timeout)
            runs.append(r)
            log(
                f"  {impl:5s} {r['tags']:>8,} tags: {r['build_s']:7.2f} s, RSS +{r['rss_delta'] / 1e6:7.1f} MB "
                f"({r['rss_delta'] / r['variables']:6.0f} B/var), {r['nodes']:,} nodes; "
                f"in GC {r['gc_s']:.2f} s; a full gc.collect() after: {r['full_gc_s']:.2f} s "
                f"(after gc.freeze(): {r['frozen_gc_s'] * 1e3:.0f} ms)"
            )
            log(
                f"        Browse of {r['browse_devices']} devices: {r['browse_devices'] / r['browse_s']:,.0f} nodes/s "
                f"({r['browse_refs'] / r['browse_s']:,.0f} refs/s); Read of {r['read_attrs']} attributes: "
                f"{r['read_attrs'] / r['read_s']:,.0f} attrs/s (DisplayName alone "
                f"{r['read_attrs'] / 2 / r['read_names_s']:,.0f} attrs/s)"
            )
        res[(impl, n)] = runs
        return runs

    small, large = args.build_sizes
    for n in (small, large):
        measure("ours", n, args.reps)
    stock_sizes = [small]
    measure("stock", small, args.reps)
    stock_timed_out = False
    try:
        # One timed attempt first: stock at the large size may take minutes.
        measure("stock", large, 1, timeout=args.stock_budget)
        if args.reps > 1:
            res[("stock", large)] += measure("stock", large, args.reps - 1)
        stock_sizes.append(large)
    except subprocess.TimeoutExpired:
        stock_timed_out = True
        rep.note(
            f"stock asyncua at {large:,} tags took more than {args.stock_budget:.0f} s: stopped; "
            f"measured at {', '.join(f'{s:,}' for s in args.stock_fallback)} instead and the scaling is stated."
        )
        for n in args.stock_fallback:
            measure("stock", n, args.reps)
            stock_sizes.append(n)
    # City scale: the 1M-tag start, beside the sizes the bench was sized for.
    extra_ours = (*args.extra_ours, 1_000_000) if args.extra_ours else ()
    for n in extra_ours:
        measure("ours", n, 1)

    def m(impl, n, key):
        return med([r[key] for r in res[(impl, n)]])

    def per_var(impl, n):
        return med([r["rss_delta"] / r["variables"] for r in res[(impl, n)]])

    rep.section("3. OPC UA address space (commune/class/device/point), build time and RSS")
    for n in sorted({small, large, *stock_sizes}):
        have_ours, have_stock = ("ours", n) in res, ("stock", n) in res
        tags = res[("ours", n) if have_ours else ("stock", n)][0]["tags"]
        if have_ours:
            o_t, o_b = m("ours", n, "build_s"), per_var("ours", n)
        if have_stock:
            s_t, s_b = m("stock", n, "build_s"), per_var("stock", n)
        if have_ours and have_stock:
            rep.add(
                f"build time, ours, {tags:,} tags",
                f"{o_t:.2f} s",
                f"stock {s_t:.2f} s",
                f"{o_t / s_t:.2f}x",
                "PASS" if o_t < s_t else "MISS",
            )
            rep.add(
                f"RSS per variable, ours, {tags:,} tags",
                f"{o_b:.0f} B",
                f"stock {s_b:.0f} B",
                f"{o_b / s_b:.2f}x",
                "PASS" if o_b < s_b else "MISS",
            )
            for what, count, secs, unit in (
                ("Browse of a class folder's devices", "browse_devices", "browse_s", "nodes/s"),
                ("Read of Value+DisplayName, 1,000 variables", "read_attrs", "read_s", "attrs/s"),
                ("Read of DisplayName, 1,000 variables", "read_attrs", "read_names_s", "attrs/s"),
            ):
                half = 2 if secs == "read_names_s" else 1
                o_r = med([r[count] / half / r[secs] for r in res[("ours", n)]])
                s_r = med([r[count] / half / r[secs] for r in res[("stock", n)]])
                rep.add(
                    f"{what}, ours, {tags:,} tags",
                    f"{o_r:,.0f} {unit}",
                    f"stock {s_r:,.0f}",
                    f"{o_r / s_r:.2f}x",
                    "PASS" if o_r >= s_r else "MISS",
                )
            rep.add(
                f"  RSS delta, ours / stock, {tags:,} tags",
                f"{m('ours', n, 'rss_delta') / 1e6:.0f} MB",
                f"stock {m('stock', n, 'rss_delta') / 1e6:.0f} MB",
            )
        elif have_stock:
            rep.add(f"build time, stock, {tags:,} tags", f"{s_t:.2f} s", "(ours not run at this size)")
            rep.add(f"RSS per variable, stock, {tags:,} tags", f"{s_b:.0f} B", "DESIGN.md: ~7.8 KB")
        else:
            rep.add(f"build time, ours, {tags:,} tags", f"{o_t:.2f} s", "(stock not measured at this size)")
            rep.add(f"RSS per variable, ours, {tags:,} tags", f"{o_b:.0f} B", "(stock not measured at this size)")
    for n in extra_ours:
        r = res[("ours", n)][0]
        rep.add(
            f"build time, ours, {r['tags']:,} tags (city scale, 1 run)",
            f"{r['build_s']:.2f} s",
            f"{r['rss_delta'] / 1e6:.0f} MB RSS",
            f"{r['rss_delta'] / r['variables']:.0f} B/var",
        )

    def scaling(impl, sizes):
        pts = sorted((res[(impl, s)][0]["tags"], m(impl, s, "build_s")) for s in sizes if (impl, s) in res)
        if len(pts) < 2:
            return None
        (n1, t1), (n2, t2) = pts[0], pts[-1]
        return n1, n2, t1 / n1, t2 / n2, math.log(t2 / t1) / math.log(n2 / n1)

    for impl, sizes in (("ours", [small, large, *extra_ours]), ("stock", stock_sizes)):
        sc = scaling(impl, sizes)
        if sc:
            n1, n2, p1, p2, k = sc
            rep.add(
                f"build scaling, {impl}, {n1:,} -> {n2:,} tags",
                f"t ~ n^{k:.2f}",
                "linear: n^1.00",
                f"{p2 / p1:.2f}x per-tag",
                "info" if impl == "stock" or args.quick else ("PASS" if k < 1.15 else "MISS"),
            )
            log(f"  {impl}: {p1 * 1e6:.0f} us/tag at {n1:,}, {p2 * 1e6:.0f} us/tag at {n2:,}: time ~ n^{k:.2f}")
    if stock_timed_out:
        sc = scaling("stock", stock_sizes)
        if sc:
            n1, n2, p1, p2, k = sc
            est = p2 * large * (large / n2) ** (k - 1)
            rep.add(f"stock build at {large:,} tags, extrapolated", f"~{est:.0f} s", "(not measured)", f"n^{k:.2f}")
    # GC share and the full-collection pause of a built tree: what a running server pays.
    for impl in ("ours", "stock"):
        if (impl, large) in res:
            g = m(impl, large, "gc_s") / m(impl, large, "build_s")
            rep.add(
                f"  share of build time in cyclic GC, {impl}, {res[(impl, large)][0]['tags']:,} tags",
                f"{g:.0%}",
                "",
                "",
            )
    for n in (large, *extra_ours):
        if ("ours", n) in res:
            rep.add(
                f"  full gc.collect() pause after build, ours, {res[('ours', n)][0]['tags']:,} tags",
                f"{m('ours', n, 'full_gc_s') * 1e3:.0f} ms",
                f"after gc.freeze() {m('ours', n, 'frozen_gc_s') * 1e3:.0f} ms",
                "",
                "info",
            )
    rep.data["build"] = {f"{k[0]}-{k[1]}": v for k, v in res.items()}
    rep.note(
        "OPC UA build: RSS delta is measured around the build only (server initialised and Config "
        "loaded before); bytes per variable divide it by the number of tag variables, so the device "
        "objects and folders are included. Ours also shares EngineeringUnits/EURange properties and "
        "writes Descriptions; the stock baseline builds bare variables (no properties), which favours stock."
    )
