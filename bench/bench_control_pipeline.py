"""The command pipeline on the whole simulated Dijon, with polling running (the core's side).

    .venv/bin/python bench/bench_control_pipeline.py [--preset dijon] [--commands 100]

Starts the city simulator on loopback (1,100 lighting cabinets on Modbus TCP, 113 junctions on
the traffic OPC UA server, 26 bollards on MQTT through Mosquitto when installed), runs the real
drivers polling every device in this process's event loop (as the core does) and the command
pipeline over them, then measures:

* the round trip of one command, from ``execute`` to the confirmed read-back (SetDimLevel on a
  cabinet, one at a time): p50 and p99; target p99 under two poll cycles (2 s);
* every cabinet dimmed at once (the DimAll fan-out: ``group_concurrency`` commands in flight),
  time until every cabinet is confirmed (target <= 5 s), and the late polls and missed cycles
  of the drivers meanwhile (target 0); the same for the 113 junctions (SetPlan) and the 26
  bollards (Lower, then Raise).

The HMI's hop (the OPC UA front and the channel to the core) is not in these figures.
Rates are lifted for the bench (one user sends every command; the limits are not measured here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ROOT, Mosquitto, Process, free_port, load_config, stop, wait_port  # noqa: E402
from scada.control.model import GOOD, Caller, CommandRequest, ControlSettings, RateLimit, status_name  # noqa: E402
from scada.control.pipeline import CommandPipeline  # noqa: E402
from scada.security.audit import MemoryAudit  # noqa: E402
from scada.tagdb import TagDB  # noqa: E402

OPERATOR = Caller("bench", ("Supervisor",), None, session="bench")
UNLIMITED = RateLimit(1e9, 1_000_000)


def control_config(config, concurrency: int | None = None):
    """The configuration's commands (tags.yaml), or the tests' definitions of the shipped types
    when this tags.yaml has none yet; rates lifted for the bench (and group_concurrency set
    when given)."""
    ctl = config.control
    if not ctl.commands:
        from tests.control_defs import control

        ctl = control()
    settings = dataclasses.replace(ctl.settings or ControlSettings(), user_rate=UNLIMITED, device_rate=UNLIMITED)
    if concurrency:
        settings = dataclasses.replace(settings, group_concurrency=concurrency)
    return dataclasses.replace(config, control=dataclasses.replace(ctl, settings=settings))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class Rig:
    def __init__(self, folder: Path, concurrency: int | None = None) -> None:
        self.config = control_config(load_config(folder), concurrency)
        self.tagdb = TagDB(*self.config.tag_table())
        by_driver: dict[str, list] = {}
        for d in self.config.devices:
            by_driver.setdefault(self.config.types[d.type].driver, []).append(d)
        self.drivers = {
            n: self.config.drivers[n].create(self.config, devs, self.tagdb) for n, devs in by_driver.items()
        }
        self.pipeline = CommandPipeline(self.config, self.tagdb, self.drivers, MemoryAudit())

    def devices(self, cls: str) -> list:
        return [d for d in self.config.devices if self.config.types[d.type].cls == cls]

    def online(self, devices) -> int:
        return sum(self.tagdb.value[self.config.diag_ids(d)[0]] == 1.0 for d in devices)

    def lateness(self) -> tuple[int, int]:
        diags = [d.diagnostics() for d in self.drivers.values()]
        return sum(x.get("late_polls", 0) for x in diags), sum(x.get("missed_cycles", 0) for x in diags)

    async def command(self, device: str, command: str, args: dict) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = await self.pipeline.execute(CommandRequest(device, command, args, OPERATOR, origin="group:bench"))
        return time.perf_counter() - t0, r.status

    async def fan_out(self, devices, command: str, args_of) -> tuple[float, list[int]]:
        """Every device at once, at most group_concurrency in flight (as a group action)."""
        gate = asyncio.Semaphore(self.config.control.settings.group_concurrency)

        async def one(d):
            async with gate:
                return (await self.command(d.name, command, args_of(d)))[1]

        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one(d) for d in devices))
        return time.perf_counter() - t0, list(statuses)


def summary(statuses: list[int]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[status_name(s)] = counts.get(status_name(s), 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid``."""
    if pid is None:
        return time.process_time()
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def measure(folder: Path, n_commands: int, sim_pid: int | None = None, concurrency: int | None = None) -> None:
    rig = Rig(folder, concurrency)
    print(f"group_concurrency {rig.config.control.settings.group_concurrency}")
    tasks = [asyncio.create_task(d.run()) for d in rig.drivers.values()]
    tasks.append(asyncio.create_task(rig.pipeline.run()))
    try:
        cabinets, junctions, bollards = rig.devices("lighting"), rig.devices("traffic"), rig.devices("bollard")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rig.online(cabinets + junctions + bollards) < len(
            cabinets + junctions + bollards
        ):
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # a few cycles at steady state
        late, missed = rig.lateness()
        print(f"before any command: late polls {late}, missed cycles {missed} (the drivers' counters since start)")
        print(
            f"devices online: {rig.online(cabinets)}/{len(cabinets)} cabinets, {rig.online(junctions)}/{len(junctions)}"
            f" junctions, {rig.online(bollards)}/{len(bollards)} bollards"
        )
        print(f"{'figure':<52} {'measured':>22}  target")
        rng = np.random.default_rng(1)
        times: list[float] = []
        bad: list[float] = []
        late0 = rig.lateness()
        for k in range(n_commands):
            d = cabinets[int(rng.integers(len(cabinets)))]
            dt, status = await rig.command(d.name, "SetDimLevel", {"level": float(20 + k % 60), "until": 0})
            (times if status == GOOD else bad).append(dt)
        late1 = rig.lateness()
        print(
            f"{'one SetDimLevel, call to confirmed read-back p50/p99':<52} "
            f"{1000 * pct(times, 50):>8.0f} / {1000 * pct(times, 99):>5.0f} ms  p99 < 2000 ms"
            f"  ({len(times)} Good, {len(bad)} not; late polls {late1[0] - late0[0]}, missed {late1[1] - late0[1]})"
        )
        for name, devices, command, args_of in (
            ("DimAll: every cabinet", cabinets, "SetDimLevel", lambda d: {"level": 42.0, "until": 0}),
            ("SetPlan: every junction", junctions, "SetPlan", lambda d: {"plan": 3.0}),
            ("Lower: every bollard", bollards, "Lower", lambda d: {}),
            ("Raise: every bollard", bollards, "Raise", lambda d: {}),
        ):
            if not devices:
                continue
            late0 = rig.lateness()
            cpu0 = cpu(None), cpu(sim_pid) if sim_pid else 0.0
            dt, statuses = await rig.fan_out(devices, command, args_of)
            cpu1 = cpu(None), cpu(sim_pid) if sim_pid else 0.0
            late1 = rig.lateness()
            print(
                f"{name + f' ({len(devices)})':<52} {dt:>19.2f} s  <= 5 s"
                f"  ({summary(statuses)}; late polls {late1[0] - late0[0]}, missed cycles {late1[1] - late0[1]};"
                f" CPU s: core {cpu1[0] - cpu0[0]:.1f}, simulators {cpu1[1] - cpu0[1]:.1f})"
            )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="dijon")
    ap.add_argument("--commands", type=int, default=100, help="single commands for the round trip")
    ap.add_argument("--concurrency", type=int, default=0, help="group_concurrency (default: the configuration's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-control-"))
    # Not within the cabinets' ports (31000 + one per cabinet): a collision there stalls the start.
    opc_sim, control_port = (next(p for p in iter(free_port, None) if not 31000 <= p < 33000) for _ in range(2))
    broker = None
    mqtt_args: list[str] = []
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        broker = Mosquitto(work / "mqtt")
        mqtt_args = ["--mqtt", f"127.0.0.1:{broker.port}"]
    sim = Process(
        [
            "-m",
            "simulators",
            "city",
            "--preset",
            args.preset,
            "--base-port",
            "31000",
            "--opcua-port",
            str(opc_sim),
            "--control-port",
            str(control_port),
            "--config-out",
            str(work / "config"),
            "--types-from",
            str(ROOT / "tags.yaml"),
            "--failure-rate",
            "0",
            *mqtt_args,
            "--log-json",
        ],
        work / "sim.log",
    )
    try:
        wait_port(control_port, 120)
        from common.eventloop import run as run_loop
        from common.logs import configure

        configure(level="WARNING")  # thousands of device_online lines would cost the loop the bench measures
        run_loop(measure(work / "config", args.commands, sim.proc.pid, args.concurrency or None))
    finally:
        stop(sim.proc)
        if broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
