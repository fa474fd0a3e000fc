"""Supervisory control on the whole simulated city (issue 15): commands from an HMI to the field
and back, one at a time and as group actions, with the field's polling running.

    .venv/bin/python bench/bench_control.py [--city dijon] [--commands 50] [--repeats 3]

Starts, on loopback, the city simulator (``--preset dijon``: 1,100 lighting cabinets on Modbus
TCP, 113 junctions on OPC UA, 26 bollards through Mosquitto) and the real ``scada run`` polling
it, its HMI server with the real login (a users file with one Operator; no anonymous session).
A real asyncua client logs in as that Operator and measures:

- the raw field round trip, without our server (the baseline): a plain pymodbus client writes a
  cabinet's mode and dimming set-point on the simulator and reads its applied dimming level back
  until it matches; one cabinet at a time (``--commands`` cabinets), then every cabinet at once
  (one connection each, opened before the clock starts);
- one command's round trip from the HMI call to the confirmed read-back: ``SetDimLevel`` on
  ``--commands`` cabinets spread over the city, one after the other (the call returns when the
  pipeline has seen the read-back; the bench then reads the tag and checks it itself): p50, p99;
- the group actions over every device of a class: ``DimAll`` (1,100 cabinets), ``OpenZone`` /
  ``CloseZone`` (26 bollards), ``SetCorridorPlan`` (113 junctions), on zones the bench declares
  (a circle over the whole city per class) or, when the server exposes no zone, on every
  commune's class folder at once: the time until the call returns with every device's result,
  the results, the confirm points read back by the bench, and the server's late polls and
  missed cycles during the action beside a window of the same length without commands.

The bench lifts the control rate limits (its Operator sends more than a control room would: the
limiter is not what is measured) and drops the shipped lighting schedules (a schedule step must
not command the cabinets in the middle of a measurement). Every figure is a median over
``--repeats`` (the single commands: percentiles over ``--commands``); the load average is printed
with the table: the machine is shared. A piece of the control path that is missing or fails
makes its rows ``NOT MEASURED`` and the exit status 1: the bench never prints a figure it did not
measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import (  # noqa: E402
    ROOT,
    Mosquitto,
    Process,
    Report,
    free_port,
    free_port_range,
    load_config,
    log,
    med,
    scada_run,
    wait_port,
)

NAMESPACE_URI = "urn:city-scada:tags"  # scada.opcua.address_space.NAMESPACE_URI
OPERATOR, PASSWORD = "bench-operator", "the bench operator's password"
# The zones the bench declares: every device of one class, a circle over the whole metropolis.
CITY_CENTRE, CITY_RADIUS_M = (47.32, 5.04), 60_000.0
ZONES = {"lighting": "bench_all_lighting", "bollard": "bench_all_bollards", "traffic": "bench_all_traffic"}
# Far above what a bench sends: the limiter is not measured here.
UNLIMITED = {"per_minute": 1_000_000, "burst": 100_000}
TARGET_ROUND_TRIP_CYCLES = 2  # p99 of one command under two poll cycles
TARGET_GROUP_S = 5.0  # every cabinet confirmed within 5 s
MIN_DATETIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's "no time" (an optional DateTime not given)


# --------------------------------------------------------------------------------------------
# The city, the configuration, the server


def patch_config(folder: Path, zones: bool = True, group_concurrency: int | None = None) -> list[str]:
    """The bench's additions to the simulator's tags.yaml: one zone per class over the whole city,
    the rate limits lifted, the shipped schedules dropped; what was changed (for the notes).
    Sections the running server's tags.yaml does not know yet (the control parser not merged)
    are left out: the server would refuse them."""
    from scada.config import TAGS_KEYS

    path = folder / "tags.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    done = []
    if "control" in TAGS_KEYS:
        control = dict(doc.get("control") or {})
        control.update(user_rate=UNLIMITED, device_rate=UNLIMITED)
        done.append("rate limits lifted")
        if group_concurrency is not None:
            control["group_concurrency"] = group_concurrency
            done.append(f"group_concurrency {group_concurrency}")
        doc["control"] = control
    if zones and "zones" in TAGS_KEYS:
        zones_ = dict(doc.get("zones") or {})
        lat, lon = CITY_CENTRE
        for cls, name in ZONES.items():
            zones_[name] = {"circle": {"lat": lat, "lon": lon, "radius_m": CITY_RADIUS_M}, "classes": [cls]}
        doc["zones"] = zones_
        done.append(f"zones {', '.join(ZONES.values())}")
    if doc.pop("schedules", None):
        done.append("shipped schedules dropped")
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return done


def write_security(work: Path) -> Path:
    """security.yaml (a None endpoint beside the secure ones, no anonymous session) and the users
    file with the bench's Operator (every commune); the settings file's path."""
    from scada.security.settings import SecuritySettings
    from scada.security.users import hash_password, make_user, save_users

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = work / "security.yaml"
    path.write_text("allow_none: true\nanonymous: []\n", encoding="utf-8")
    users = SecuritySettings.defaults(data).users
    save_users(users, {OPERATOR: make_user(OPERATOR, hash_password(PASSWORD), ["operator"])})
    return path


def status_lines(server: Process) -> list[dict[str, Any]]:
    """The server's status lines so far (``--log-json``), each with ``t``: its Unix time."""
    out = []
    for ln in server.output().splitlines():
        if '"event": "status"' not in ln:
            continue
        try:
            x = json.loads(ln)
        except ValueError:
            continue  # a line being written
        x["t"] = datetime.fromisoformat(x["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append(x)
    return out


async def status_after(server: Process, t: float, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The status lines once one is dated after ``t`` (the line that closes a window)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = status_lines(server)
        if lines and lines[-1]["t"] >= t:
            return lines
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.output()[-3000:]}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no status line after {datetime.fromtimestamp(t, UTC):%H:%M:%S} within {timeout:.0f} s")


@dataclass
class Window:
    """The server's late polls, missed cycles and longest loop lag over a time window: the growth
    of its counters between the status lines that bracket the window."""

    seconds: float
    late: int
    missed: int
    lag_ms: float

    def text(self) -> str:
        return f"{self.late} / {self.missed}"


async def window(server: Process, t0: float, t1: float) -> Window:
    lines = await status_after(server, t1 + 0.5)
    before = [x for x in lines if x["t"] <= t0]
    after = [x for x in lines if x["t"] >= t1]
    first, last = (before[-1] if before else lines[0]), after[0]
    inside = [x for x in lines if first["t"] < x["t"] <= last["t"]]
    return Window(
        last["t"] - first["t"],
        int(last["late_polls"] - first["late_polls"]),
        int(last["missed_cycles"] - first["missed_cycles"]),
        max((float(x.get("loop_lag_ms", 0.0)) for x in inside), default=0.0),
    )


async def quiet_window(server: Process, seconds: float, pause: float = 2.0) -> Window:
    """A window of ``seconds`` without commands (after ``pause``, for what a command left behind)."""
    await asyncio.sleep(pause)
    t0 = time.time()
    await asyncio.sleep(seconds)
    return await window(server, t0, time.time())


async def wait_online(server: Process, timeout: float) -> str:
    """Wait until the status line says every device is online; its ``devices`` text."""
    deadline = time.monotonic() + timeout
    seen = "?"
    while time.monotonic() < deadline:
        lines = status_lines(server)
        if lines:
            seen = lines[-1]["devices"]
            online, total = (int(x) for x in seen.split("/"))
            if total and online == total:
                return seen
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}):\n{server.output()[-3000:]}")
        await asyncio.sleep(1.0)
    raise TimeoutError(f"devices online {seen} after {timeout:.0f} s")


# --------------------------------------------------------------------------------------------
# The raw field round trip (the baseline): pymodbus on the simulator, our server left out


async def raw_dim(client: Any, unit: int, level: int) -> float:
    """Write mode manual-dim, then the set-point (two requests, as the command's two writes), and
    read the applied level back until it matches; the seconds it took."""
    t0 = time.perf_counter()
    for address, value in ((0, 3), (1, level)):  # as SetDimLevel writes: the mode, then the set-point
        r = await client.write_register(address, value, device_id=unit)
        if r.isError():
            raise RuntimeError(f"raw write refused: {r}")
    while True:
        r = await client.read_input_registers(8, count=1, device_id=unit)
        if r.isError():
            raise RuntimeError(f"raw read refused: {r}")
        if r.registers[0] == level:
            return time.perf_counter() - t0


async def raw_clients(cabinets: list[Any]) -> list[Any]:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient(d.io.host, port=d.io.port, timeout=10, retries=0) for d in cabinets]
    ok = await asyncio.gather(*(c.connect() for c in clients))
    if not all(ok):
        raise RuntimeError(f"{ok.count(False)} raw Modbus connections failed")
    return clients


# --------------------------------------------------------------------------------------------
# The HMI side: a real asyncua client logged in as the Operator


@dataclass
class Method:
    """A method to call: on ``obj`` (a device, a folder, a zone), ``method``, the input types."""

    obj: Any
    method: Any
    label: str
    inputs: list[tuple[str, Any]] = field(default_factory=list)  # (name, ua.VariantType) per input argument


class Hmi:
    def __init__(self, client: Any, ns: int) -> None:
        self.client, self.ns = client, ns

    def node_id(self, path: str) -> Any:
        from asyncua import ua

        return ua.NodeId(path, self.ns)  # type: ignore[arg-type]

    async def children(self, node_id: Any) -> list[Any]:
        """Forward hierarchical references of a node (BrowseName, NodeId, NodeClass each)."""
        from asyncua import ua

        node = self.client.get_node(node_id)
        return list(
            await node.get_references(
                refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward, includesubtypes=True
            )
        )

    async def method(self, obj: Any, name: str, label: str) -> Method | None:
        """``obj``'s method ``name`` with its input argument types; None when it has none."""
        from asyncua import ua

        for ref in await self.children(obj):
            if ref.NodeClass == ua.NodeClass.Method and ref.BrowseName.Name == name:
                return Method(obj, ref.NodeId, label, await self.input_types(ref.NodeId))
        return None

    async def input_types(self, method: Any) -> list[tuple[str, Any]]:
        for ref in await self.children(method):
            if ref.BrowseName.Name == "InputArguments":
                args = await self.client.get_node(ref.NodeId).read_value()
                return [(a.Name, variant_type(a.DataType)) for a in args]
        return []

    async def call(self, m: Method, values: dict[str, float]) -> Any:
        """One Call request with the inputs by name (a DateTime not given: none, MinDateTime); its
        CallMethodResult (a refusal is its status, not an exception)."""
        from asyncua import ua

        args = []
        for name, vtype in m.inputs:
            if name in values:
                args.append(ua.Variant(cast(values[name], vtype), vtype))
            elif vtype == ua.VariantType.DateTime:
                args.append(ua.Variant(MIN_DATETIME, vtype))
            else:
                raise RuntimeError(f"{m.label}: the server asks for the input {name!r}, the bench has {sorted(values)}")
        if unknown := set(values) - {name for name, _ in m.inputs}:
            raise RuntimeError(f"{m.label}: the server declares no input {sorted(unknown)} ({m.inputs})")
        req = ua.CallMethodRequest(ObjectId=m.obj, MethodId=m.method, InputArguments=args)
        (res,) = await self.client.uaclient.call([req])
        return res

    async def read(self, paths: list[str]) -> list[Any]:
        """Values of tags by path, in requests of at most 1,000."""
        from asyncua import ua

        out = []
        for k in range(0, len(paths), 1000):
            ids = [
                ua.ReadValueId(NodeId=self.node_id(p), AttributeId=ua.AttributeIds.Value) for p in paths[k : k + 1000]
            ]
            out.extend(await self.client.uaclient.read(ua.ReadParameters(NodesToRead=ids)))
        return out

    async def find(self, name: str, depth: int = 3, skip: frozenset[str] = frozenset()) -> Any | None:
        """The first node named ``name`` under City, breadth first down to ``depth`` levels,
        without looking inside the nodes in ``skip`` (the class folders: devices only)."""
        from asyncua import ua

        level = [self.node_id("City")]
        for _ in range(depth):
            below = []
            for n in level:
                for ref in await self.children(n):
                    if ref.BrowseName.Name == name:
                        return ref.NodeId
                    ident = ref.NodeId.Identifier
                    if isinstance(ident, str) and ident not in skip and ref.NodeClass == ua.NodeClass.Object:
                        below.append(ref.NodeId)
            level = below
        return None


def variant_type(data_type: Any) -> Any:
    """The VariantType of an argument's DataType: a built-in type's own, Int32 for an enumeration."""
    from asyncua import ua

    if data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int) and 1 <= data_type.Identifier <= 25:
        return ua.VariantType(data_type.Identifier)
    return ua.VariantType.Int32


def cast(value: float, vtype: Any) -> Any:
    from asyncua import ua

    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    return int(value)


def load_text() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def status_name(code: int) -> str:
    from scada.control.model import status_name as name

    return name(code)


def per_device(outputs: list[Any]) -> list[tuple[str, int]]:
    """A group call's per-device results from its output arguments: the list of names and the
    list of status codes (their order as declared by the server)."""
    names = codes = None
    for v in outputs:
        value = v.Value
        if not isinstance(value, list) or not value:
            continue
        if names is None and all(isinstance(x, str) for x in value):
            names = value
        elif codes is None and all(isinstance(x, int) or hasattr(x, "value") for x in value):
            codes = [int(x.value if hasattr(x, "value") else x) for x in value]
    if names is None or codes is None or len(names) != len(codes):
        raise RuntimeError(f"cannot read per-device results from the outputs {[type(v.Value) for v in outputs]}")
    return list(zip(names, codes, strict=True))


# --------------------------------------------------------------------------------------------
# The bench


@dataclass
class City:
    config: Any
    server: Process
    report: Report
    args: argparse.Namespace
    data: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def devices(self, type_name: str) -> list[Any]:
        return [d for d in self.config.devices if d.type == type_name]

    def cls(self, d: Any) -> str:
        return str(self.config.types[d.type].cls)

    def path(self, d: Any) -> str:
        return f"{d.commune}/{self.cls(d)}/{d.name}"

    def command(self, type_name: str, name: str) -> Any:
        """The CommandDef ``name`` of ``type_name`` (its confirm points); a loud error when the
        configuration has none."""
        c = self.config.control.commands.get(type_name, {}).get(name)
        if c is None:
            raise RuntimeError(f"the configuration has no command {name} for {type_name} (control config not merged?)")
        return c

    def poll_s(self, type_name: str) -> float:
        return float(med(d.poll_interval for d in self.devices(type_name)))


def spread_of(xs: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    ys = sorted(x * scale for x in xs)
    return f"{fmt.format(med(ys))} ({fmt.format(ys[0])}-{fmt.format(ys[-1])}, n={len(ys)})"


def spread_cabinets(cabinets: list[Any], n: int) -> list[Any]:
    """``n`` cabinets spread over the list (over the communes and the ports)."""
    step = max(1, len(cabinets) // n)
    return cabinets[::step][:n]


def simulator_write_cost(preset: str, n: int = 50) -> float:
    """Seconds the lighting simulator spends applying one write to its model (stepped whole at
    its own time, then re-encoded), measured here on a model of the same city: the part of the
    raw baseline, and of every command, that is the simulator's and not the server's."""
    from simulators.adapters.modbus_lighting import LightingModbusSimulator
    from simulators.city import generate
    from simulators.models import lighting

    c = generate(preset)
    state = lighting.create([x.lat for x in c.cabinets], [x.lon for x in c.cabinets], c.lamps, t=time.time())
    sim = LightingModbusSimulator(state)
    t0 = time.perf_counter()
    for i in range(n):
        sim.state = lighting.set_dim(sim.state, i % state.count, 10 + i % 80)
    return (time.perf_counter() - t0) / n


async def baseline(city: City) -> None:
    """The raw field round trip: one cabinet at a time, then every cabinet at once."""
    rep = city.report
    quiet = await quiet_window(city.server, 10.0, pause=0.0)
    rep.add(
        "late polls / missed cycles, 10 s without commands (the machine's noise)",
        quiet.text(),
        f"over {quiet.seconds:.0f} s",
        f"lag {quiet.lag_ms:.0f} ms",
    )
    cost = simulator_write_cost(city.args.city)
    rep.add(
        "simulator: one register write applied to its model (the whole city stepped)",
        f"{cost * 1e3:.2f} ms",
        f"x{len(city.devices('lighting_cabinet')) * 2:,} writes = {cost * len(city.devices('lighting_cabinet')) * 2:.1f} s",
        "",
        "context",
    )
    cabinets = city.devices("lighting_cabinet")
    some = spread_cabinets(cabinets, city.args.commands)
    clients = await raw_clients(cabinets)
    try:
        by_name = dict(zip((d.name for d in cabinets), clients, strict=True))
        single = []
        for k, d in enumerate(some):
            single.append(await raw_dim(by_name[d.name], d.io.unit, 11 + k % 40))
        p50, p99 = np.percentile(single, [50, 99])
        city.data["raw_single_s"] = single
        rep.add(
            f"raw Modbus write + read-back, 1 cabinet, p50 / p99 (n={len(single)})",
            f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms",
            "baseline",
        )
        totals, windows = [], []
        for r in range(city.args.repeats):
            level = 61 + r
            t0w, t0 = time.time(), time.perf_counter()
            await asyncio.gather(*(raw_dim(by_name[d.name], d.io.unit, level) for d in cabinets))
            totals.append(time.perf_counter() - t0)
            windows.append(await window(city.server, t0w, time.time()))
            await asyncio.sleep(1.0)
        city.data["raw_all_s"] = totals
        quiet = await quiet_window(city.server, max(1.0, med(totals)))
        rep.add(
            f"raw Modbus, all {len(cabinets):,} cabinets at once: until all read back",
            f"{med(totals):.2f} s",
            f"{spread_of(totals)} s",
            "",
            "baseline",
        )
        rep.add(
            "  late polls / missed cycles meanwhile (raw load)",
            " ; ".join(w.text() for w in windows),
            f"quiet {quiet.seconds:.0f} s window: {quiet.text()}",
            f"lag {max(w.lag_ms for w in windows):.0f} ms",
        )
    finally:
        for c in clients:
            c.close()


async def round_trips(city: City, hmi: Hmi) -> None:
    """SetDimLevel on cabinets spread over the city, one at a time, from the call to its result."""
    rep = city.report
    cdef = city.command("lighting_cabinet", "SetDimLevel")
    some = spread_cabinets(city.devices("lighting_cabinet"), city.args.commands)
    methods = []
    for d in some:
        m = await hmi.method(hmi.node_id(city.path(d)), "SetDimLevel", d.name)
        if m is None:
            raise RuntimeError(f"{city.path(d)} has no SetDimLevel method (the opcua front not merged?)")
        methods.append(m)
    confirm = [s.point for s in cdef.confirm]
    times: list[float] = []
    bad: Counter[str] = Counter()
    mismatched = 0
    t_first = time.time()
    for k, (d, m) in enumerate(zip(some, methods, strict=True)):
        level = 23 + (k * 7) % 50
        (before,) = await hmi.read([f"{city.path(d)}/{confirm[0]}"])
        if before.Value is not None and before.Value.Value == level:
            level += 1  # a command that changes something: the read-back must see it happen
        t0 = time.perf_counter()
        res = await hmi.call(m, {"level": level})
        times.append(time.perf_counter() - t0)
        if not res.StatusCode.is_good():
            bad[status_name(res.StatusCode.value)] += 1
            continue
        values = await hmi.read([f"{city.path(d)}/{p}" for p in confirm])
        want = [s.resolve({"level": level}) for s in cdef.confirm]
        if any(
            v.Value is None or abs(float(v.Value.Value) - w) > max(cdef.tolerance, 0.5)
            for v, w in zip(values, want, strict=True)
        ):
            mismatched += 1
    w = await window(city.server, t_first, time.time())
    city.data["round_trip_s"] = times
    p50, p99 = np.percentile(times, [50, 99])
    raw = city.data.get("raw_single_s")
    target = TARGET_ROUND_TRIP_CYCLES * city.poll_s("lighting_cabinet")
    good = len(times) - sum(bad.values())
    rep.add(
        f"SetDimLevel, HMI call to confirmed read-back, p50 / p99 (n={len(times)})",
        f"{p50 * 1e3:.0f} / {p99 * 1e3:.0f} ms",
        f"target p99 < {target * 1e3:.0f} ms",
        f"p50 x{p50 / med(raw):.0f} raw" if raw else "",
        "met" if p99 < target and not bad and not mismatched else "MISSED",
    )
    rep.add(
        "  results; tags read back by the bench",
        f"{good}/{len(times)} Good",
        ", ".join(f"{n} {c}" for c, n in bad.items()) or "no refusal",
        f"{good - mismatched} agree",
        "" if not bad and not mismatched else "FAILED",
    )
    rep.add(
        "  late polls / missed cycles meanwhile",
        w.text(),
        f"over {w.seconds:.0f} s",
        f"lag {w.lag_ms:.0f} ms",
    )


@dataclass
class GroupRun:
    seconds: float
    results: list[tuple[str, int]]
    agree: int
    during: Window
    quiet: Window
    read_wait_s: float  # the longest wait for a one-value Read on the same connection meanwhile


async def group_targets(city: City, hmi: Hmi, cls: str, action: str) -> tuple[list[Method], str]:
    """Where to call ``action`` on every device of ``cls``: the bench's zone when the server
    exposes it, else every commune's class folder (all called at once)."""
    devices = [d for d in city.config.devices if city.cls(d) == cls]
    folders = sorted({f"{d.commune}/{cls}" for d in devices})
    zone = await hmi.find(ZONES[cls], skip=frozenset(folders))
    if zone is not None:
        m = await hmi.method(zone, action, ZONES[cls])
        if m is not None:
            return [m], f"zone {ZONES[cls]}"
    found = []
    for f in folders:
        m = await hmi.method(hmi.node_id(f), action, f)
        if m is None:
            raise RuntimeError(f"no {action} method on the zone {ZONES[cls]} nor on the folder {f}")
        found.append(m)
    return found, f"{len(found)} commune folders at once"


async def group(city: City, hmi: Hmi, cls: str, type_name: str, action: str, value: float | None) -> GroupRun:
    """One group action over every device of ``cls``; timed from the call to its last result."""
    from scada.control.model import GROUP_ACTIONS

    ga = GROUP_ACTIONS[action]
    cdef = city.command(type_name, ga.command)
    targets = city.data.setdefault("targets", {})
    if (cls, action) not in targets:
        targets[(cls, action)] = await group_targets(city, hmi, cls, action)
    methods, _ = targets[(cls, action)]
    args = {} if value is None else {name: value for name in ga.arguments}
    probe_path = city.path(city.devices(type_name)[0]) + "/" + cdef.confirm[0].point
    done = asyncio.Event()
    waits: list[float] = []

    async def probe() -> None:
        """What an HMI on the same connection sees meanwhile: a Read of one value every 0.2 s."""
        while not done.is_set():
            r0 = time.perf_counter()
            await hmi.read([probe_path])
            waits.append(time.perf_counter() - r0)
            await asyncio.sleep(0.2)

    t0w, t0 = time.time(), time.perf_counter()
    prober = asyncio.create_task(probe())
    answers = await asyncio.gather(*(hmi.call(m, args) for m in methods))
    seconds = time.perf_counter() - t0
    t1w = time.time()
    done.set()
    await prober
    results: list[tuple[str, int]] = []
    for m, res in zip(methods, answers, strict=True):
        if not res.StatusCode.is_good() and not res.OutputArguments:
            raise RuntimeError(f"{action} on {m.label} refused: {status_name(res.StatusCode.value)}")
        results.extend(per_device(res.OutputArguments))
    during = await window(city.server, t0w, t1w)
    # The bench's own read-back of the confirm points of the devices the server says confirmed.
    devices = {d.name: d for d in city.devices(type_name)}
    good = [devices[n] for n, code in results if code & 0xC0000000 == 0 and n in devices]
    want = [s.resolve({a: value for a in ga.arguments} if value is not None else {}) for s in cdef.confirm]
    paths = [f"{city.path(d)}/{s.point}" for d in good for s in cdef.confirm]
    values = await hmi.read(paths)
    per = len(cdef.confirm)
    agree = 0
    for k in range(len(good)):
        vs = values[k * per : (k + 1) * per]
        if all(
            v.Value is not None and abs(float(v.Value.Value) - w) <= max(cdef.tolerance, 0.5)
            for v, w in zip(vs, want, strict=True)
        ):
            agree += 1
    quiet = await quiet_window(city.server, max(1.0, seconds))
    return GroupRun(seconds, results, agree, during, quiet, max(waits, default=float("nan")))


def add_group_rows(city: City, title: str, runs: list[GroupRun], total: int, target: float | None, where: str) -> None:
    rep = city.report
    secs = [r.seconds for r in runs]
    counts: Counter[str] = Counter()
    for r in runs:
        counts.update(status_name(c) for _, c in r.results)
    all_good = all(len(r.results) == total and all(c & 0xC0000000 == 0 for _, c in r.results) for r in runs)
    raw = city.data.get("raw_all_s") if title.startswith("DimAll") else None
    rep.add(
        f"{title}: until every device's result ({where})",
        f"{med(secs):.2f} s",
        (f"target <= {target:g} s; " if target else "") + f"{spread_of(secs)} s",
        f"x{med(secs) / med(raw):.1f} raw" if raw else "",
        ("met" if med(secs) <= target and all_good else "MISSED") if target else ("" if all_good else "NOT ALL GOOD"),
    )
    rep.add(
        "  results (all runs); confirm points read back by the bench",
        ", ".join(f"{n} {s}" for s, n in counts.most_common()),
        f"of {total} devices x {len(runs)} runs",
        f"{sum(r.agree for r in runs)} agree",
    )
    rep.add(
        "  longest wait for a one-value Read on the same connection meanwhile",
        f"{max(r.read_wait_s for r in runs):.2f} s",
        "an HMI's Read / Publish behind the call",
    )
    late = [r.during for r in runs]
    quiet = [r.quiet for r in runs]
    zero = all(w.late == 0 and w.missed == 0 for w in late)
    rep.add(
        "  late polls / missed cycles during; quiet window of the same length",
        " ; ".join(w.text() for w in late),
        "target 0 / 0; quiet: " + " ; ".join(w.text() for w in quiet),
        f"lag {max(w.lag_ms for w in late):.0f} ms (quiet {max(w.lag_ms for w in quiet):.0f})",
        "met" if zero else "MISSED",
    )


async def groups(city: City, hmi: Hmi, which: list[str]) -> None:
    n = city.args.repeats
    plans = (2, 3, 1)  # peak, night, day: each run changes the plan
    sections: dict[str, tuple[str, str, list[tuple[str, float | None]], float | None]] = {
        "dimall": ("lighting", "lighting_cabinet", [("DimAll", 37 + 8 * r) for r in range(n)], TARGET_GROUP_S),
        "bollards": (
            "bollard",
            "access_bollard",
            [a for _ in range(n) for a in (("OpenZone", None), ("CloseZone", None))],
            None,
        ),
        "junctions": ("traffic", "traffic_junction", [("SetCorridorPlan", plans[r % 3]) for r in range(n)], None),
    }
    for key in which:
        cls, type_name, calls, target = sections[key]
        total = len(city.devices(type_name))
        log(f"[{key}] {len(calls)} group actions over {total} devices (load average {load_text()})")
        try:
            runs: dict[str, list[GroupRun]] = {}
            for action, value in calls:
                runs.setdefault(action, []).append(await group(city, hmi, cls, type_name, action, value))
                await asyncio.sleep(1.0)
            for action, rs in runs.items():
                where = city.data["targets"][(cls, action)][1]
                add_group_rows(city, f"{action} over {total:,} {cls} devices", rs, total, target, where)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
            fail(city, key, exc)


def refusals(audit: Path, top: int = 6) -> list[str]:
    """The commands' refusals by reason, from the server's audit trail (read once it stopped): the
    message with device names, paths and numbers blurred, most frequent first."""
    import re
    import sqlite3

    if not audit.exists():
        return []
    counts: Counter[str] = Counter()
    with contextlib.closing(sqlite3.connect(f"file:{audit}?mode=ro", uri=True)) as db:
        for args, result in db.execute("SELECT arguments, result FROM audit WHERE action = 'command'"):
            if result == "Good":
                continue
            try:
                message = str(json.loads(args).get("message", ""))
            except (ValueError, AttributeError):
                message = ""
            reason = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\([^)]*\)", "(...)", message))
            reason = re.sub(r"\b[A-Z]+-[A-Z]+-N\b", "<device>", reason)
            counts[f"{result}: {reason}"[:110]] += 1
    return [f"{n} x {r}" for r, n in counts.most_common(top)]


def fail(city: City, section: str, exc: BaseException) -> None:
    city.failed.append(section)
    city.report.add(f"{section}", "NOT MEASURED", "", "", "FAILED")
    city.report.note(f"{section} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
    log("".join(traceback.format_exception(exc))[-3000:])


async def measure(city: City, endpoint: str) -> None:
    from asyncua import Client

    only = city.args.only
    if "baseline" in only:
        log(f"[baseline] raw Modbus round trips (load average {load_text()})")
        city.report.section("baseline: the field without our server (pymodbus on the simulator)")
        try:
            await baseline(city)
        except Exception as exc:  # noqa: BLE001
            fail(city, "baseline", exc)
    # A group action runs for seconds; asyncua's client probes the server every second with a 1-s
    # timeout and drops the connection when a probe waits behind a call (as it did before the front
    # served a connection's calls beside its other requests). The bench measures that wait itself.
    client = Client(endpoint, timeout=120, watchdog_intervall=3600.0)
    client.set_user(OPERATOR)
    client.set_password(PASSWORD)
    async with client:
        hmi = Hmi(client, await client.get_namespace_index(NAMESPACE_URI))
        if "single" in only:
            log(f"[single] SetDimLevel round trips (load average {load_text()})")
            city.report.section("one command from the HMI (an Operator) to the confirmed read-back")
            try:
                await round_trips(city, hmi)
            except Exception as exc:  # noqa: BLE001
                fail(city, "single", exc)
        city.report.section("group actions over every device of a class")
        await groups(city, hmi, [k for k in ("dimall", "bollards", "junctions") if k in only])


def main(argv: list[str] | None = None) -> int:
    sections = ("baseline", "single", "dimall", "bollards", "junctions")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--city", default="dijon", help="the simulated city (the simulators' --preset)")
    ap.add_argument(
        "--commands", type=int, default=50, help="single commands (and raw round trips), over as many cabinets"
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each group action (the figure is their median)")
    ap.add_argument("--only", help=f"comma-separated sections: {','.join(sections)}")
    ap.add_argument("--event-loop", default="uvloop", help="the simulator's and the server's event loop")
    ap.add_argument("--online-timeout", type=float, default=300.0, help="s to wait for every device online")
    ap.add_argument(
        "--no-zones", action="store_true", help="no bench zones: the group actions go to every commune's class folder"
    )
    ap.add_argument(
        "--group-concurrency", type=int, help="control.group_concurrency of the bench's config (default: tags.yaml's)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, configuration)")
    ap.add_argument("--json", help="also write the raw measurements to this file")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(sections)
    if unknown := [s for s in args.only if s not in sections]:
        ap.error(f"unknown section {unknown[0]!r}: choose among {', '.join(sections)}")

    from common.limits import raise_open_file_limit

    raise_open_file_limit()  # a connection per cabinet for the raw baseline
    work = Path(tempfile.mkdtemp(prefix="bench-control-"))
    report = Report()
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    log(f"bench_control: city {args.city}; sections {', '.join(args.only)}; work folder {work}")
    broker = sim = server = None
    city: City | None = None
    try:
        if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
            raise RuntimeError("the bollards need Mosquitto (Debian: apt-get install mosquitto)")
        broker = Mosquitto(work / "mqtt")
        from simulators.city import PRESETS

        base, opc_sim, control, opc = (
            free_port_range(PRESETS[args.city].cabinets),
            free_port(),
            free_port(),
            free_port(),
        )
        sim = Process(
            [
                *("-m", "simulators", "city", "--preset", args.city, "--base-port", str(base)),
                *("--opcua-port", str(opc_sim), "--control-port", str(control)),
                *("--config-out", str(work / "config"), "--types-from", str(ROOT / "tags.yaml")),
                *("--mqtt", f"127.0.0.1:{broker.port}", "--failure-rate", "0", "--log-json"),
                *("--event-loop", args.event_loop),
            ],
            work / "sim.log",
        )
        wait_port(control, 300, proc=sim)
        changed = patch_config(work / "config", zones=not args.no_zones, group_concurrency=args.group_concurrency)
        config = load_config(work / "config")
        url = f"opc.tcp://127.0.0.1:{opc}/scada/"
        run = scada_run(work / "config", work / "data", url, "--status-interval", "1", "--log-json")
        run += ["--security", str(write_security(work)), "--event-loop", args.event_loop]
        t0 = time.monotonic()
        server = Process(run, work / "server.log")
        wait_port(opc, 600, proc=server)
        log(f"  server listening after {time.monotonic() - t0:.0f} s")
        city = City(config, server, report, args)
        online = asyncio.run(wait_online(server, args.online_timeout))
        log(f"  devices online {online}")
        report.note(
            f"city {args.city}: {len(city.devices('lighting_cabinet'))} cabinets (poll "
            f"{city.poll_s('lighting_cabinet'):g} s), {len(city.devices('traffic_junction'))} junctions, "
            f"{len(city.devices('access_bollard'))} bollards; devices online {online}; bench config: "
            f"{', '.join(changed) or 'unchanged'}"
        )
        asyncio.run(measure(city, url))
    except Exception as exc:  # noqa: BLE001 - the table and the notes still print
        if city is None:
            city = City(None, server, report, args)  # type: ignore[arg-type]
        fail(city, "setup", exc)
    finally:
        for p in (server, sim):
            if p is not None:
                p.stop(timeout=60)
        if broker is not None:
            broker.stop()
        if city is not None and city.config is not None:
            for line in refusals(work / "data" / "audit.sqlite"):
                report.note(f"refused (audit trail): {line}")
        load1 = os.getloadavg()
        report.note(
            f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average (1/5/15 min) "
            f"{'/'.join(f'{x:.2f}' for x in load0)} at the start, {'/'.join(f'{x:.2f}' for x in load1)} at the end; "
            f"event loop {args.event_loop}; bench, server and simulator share the machine"
        )
        report.print_table()
        if args.json and city is not None:
            Path(args.json).write_text(
                json.dumps(
                    {"args": vars(args), **{k: v for k, v in city.data.items() if k != "targets"}},
                    indent=1,
                    default=str,
                )
            )
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if city is None or city.failed else 0


if __name__ == "__main__":
    sys.exit(main())
