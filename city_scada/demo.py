"""``scada demo``: the simulated city and the server on this machine, together.

The demo lives at the composition point, not in the server's command line (scada/cli.py):
it is the one place that starts both the server and the simulators (as separate processes,
talking over the protocols only).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from city_scada import demo_broker, demo_users, processes
from common import logs
from scada import cli
from scada.security.settings import SecuritySettings

DEMO_SIM_OPCUA_PORT = 4841
DEMO_CONTROL_PORT = 14999  # below the cabinets' ports (15020 and up)
DEMO_HTTP = "127.0.0.1:8080"  # Open311, the GeoJSON map feed, Prometheus /metrics
DEMO_MQTT_PORT = 1883
DEMO_SECURITY = Path(__file__).resolve().parent / "demo_security.yaml"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``scada`` command's subparsers."""
    p = sub.add_parser("demo", help="run the simulated city and the server together")
    cli.add_serving_arguments(p)
    p.add_argument(
        "--city", default="small", help="small (default: 48 cabinets), tiny, or dijon (the whole metropolis)"
    )
    p.add_argument(
        "--broker",
        choices=demo_broker.CHOICES,
        default="auto",
        help="MQTT broker of the bollards and vehicles on 127.0.0.1:1883: auto (default: one already "
        "listening, else Mosquitto if installed, else the embedded amqtt), or force one",
    )
    # The demo is easy to try: a None endpoint and anonymous read-only sessions (city_scada/demo_security.yaml).
    p.set_defaults(func=cmd_demo, security=str(DEMO_SECURITY))
    return p


def _demo_broker(want: str, run_dir: Path) -> tuple[subprocess.Popen | None, str | None]:
    """The bollards' and vehicles' MQTT broker (city_scada/demo_broker.py chooses): its process
    (None if the demo did not start one) and host:port (None: no broker, the demo goes on without)."""
    choice = demo_broker.choose("127.0.0.1", DEMO_MQTT_PORT, want)
    print(choice.describe(), flush=True)
    try:
        return demo_broker.start(choice, run_dir), choice.endpoint
    except demo_broker.BrokerError as exc:  # the rest of the city still runs: its MQTT devices show why
        print(f"{exc}: no bollards or vehicles", file=sys.stderr, flush=True)
        return None, None


# Real seconds after the city starts at which the demo's opening faults come (a lamp failure, a
# signal conflict, a bollard fault): at real-time speed the simulated city fails a lamp about
# once a day, and a demo should show the operations loop (alarm, work order, crew) at once.
DEMO_FAULTS_S = (20.0, 40.0, 60.0)


def _opening_faults(city, acceleration: float, run_dir: Path, mqtt: str | None) -> Path:
    """A scenario (simulators/scenario.py) of the demo's opening faults, written in ``run_dir``;
    the bollard's only with a broker (no MQTT: no bollards simulated)."""
    at = [round(s * acceleration, 3) for s in DEMO_FAULTS_S]
    steps = [f"- {{at: {at[0]}, fault: lamp_failure, device: {city.cabinets[0].name}, count: 3}}"]
    if city.junctions:
        steps.append(f"- {{at: {at[1]}, fault: conflict_fault, device: {city.junctions[0].name}}}")
    if mqtt and city.bollards:
        steps.append(f"- {{at: {at[2]}, fault: bollard_fault, device: {city.bollards[0].name}}}")
    path = run_dir / "demo-scenario.yaml"
    path.write_text(
        "# The demo's opening faults (city_scada/demo.py), in simulated seconds.\n" + "\n".join(steps) + "\n"
    )
    return path


def _watch(proc: subprocess.Popen, what: str) -> None:
    """If ``proc`` dies while the demo runs, say so and stop the demo (not a server without its city)."""

    def wait() -> None:
        code = proc.wait()
        if code not in (0, -signal.SIGTERM):
            print(f"{what} stopped (exit code {code}): stopping the demo", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="demo-watch", daemon=True).start()


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the simulated city and the server on this machine; Ctrl-C stops everything."""
    from simulators import city as citygen  # here: the server's other commands do not load the simulators

    logs.configure(json=args.log_json, level=args.log_level)
    city = citygen.generate(args.city)
    config_dir = Path(args.config)
    if args.city != "small":  # the shipped configuration is the small city; others are generated
        config_dir = Path("var") / f"demo-{args.city}"
        citygen.write_config(city, config_dir, Path(args.config) / "tags.yaml")
    ports = [(c.host, c.port) for c in city.cabinets]
    needed = [*ports, ("127.0.0.1", DEMO_SIM_OPCUA_PORT), ("127.0.0.1", DEMO_CONTROL_PORT)]
    taken = [p for h, p in needed if processes.accepts(h, p)]
    if taken:
        print(
            f"port {taken[0]} is already in use (another demo still running?); the simulated city needs "
            f"ports {ports[0][1]}-{ports[-1][1]}, {DEMO_SIM_OPCUA_PORT} and {DEMO_CONTROL_PORT}",
            file=sys.stderr,
        )
        return 1
    run_dir = Path("var")
    run_dir.mkdir(exist_ok=True)
    broker, mqtt = _demo_broker(args.broker, run_dir)
    # One simulated clock for the city and the server's lighting schedules (--clock-start,
    # --acceleration): both read the start at the same real instant, whenever each process starts.
    args.clock_start = args.clock_start or datetime.now(UTC).isoformat(timespec="seconds")
    args.clock_origin = args.clock_origin if args.clock_origin is not None else time.time()
    sim_args = [
        sys.executable,
        "-m",
        "simulators",
        "city",
        "--preset",
        args.city,
        "--opcua-port",
        str(DEMO_SIM_OPCUA_PORT),
        "--control-port",
        str(DEMO_CONTROL_PORT),
        "--acceleration",
        str(args.acceleration),
        "--start",
        args.clock_start,
        "--start-origin",
        repr(args.clock_origin),
        "--event-loop",
        args.event_loop,
    ]
    if mqtt:
        sim_args += ["--mqtt", mqtt]
    scenario = _opening_faults(city, args.acceleration, run_dir, mqtt)
    sim_args += ["--scenario", str(scenario)]
    # The HTTP server (Open311, the map feed, /metrics): a generated city's operations.yaml has no
    # fixed address, the demo serves it here; the simulated citizens report to it, at Dijon's
    # ~630 calls a day scaled to the city's size.
    args.http = args.http or DEMO_HTTP
    if args.http.lower() != "none" and mqtt:
        per_day = max(20, round(630 * len(city.cabinets) / 1100))
        sim_args += ["--reports-per-day", str(per_day), "--open311", f"http://{args.http}/open311/v2"]
    if args.log_json:
        sim_args.append("--log-json")
    sim = None
    try:
        sim = subprocess.Popen(sim_args, start_new_session=True)  # our Ctrl-C handling stops it, in order
        if not processes.wait_listening(sim, [*ports, ("127.0.0.1", DEMO_CONTROL_PORT)], timeout=120):
            print("the city simulator did not start (see its messages above)", file=sys.stderr)
            return 1
        print(
            f"simulated city '{args.city}': {len(city.cabinets)} lighting cabinets on Modbus "
            f"{ports[0][1]}-{ports[-1][1]}; traffic on opc.tcp://localhost:{DEMO_SIM_OPCUA_PORT}/traffic/; "
            + (f"bollards and vehicles on MQTT {mqtt}" if mqtt else "no MQTT broker: no bollards or vehicles")
            + f"; opening faults in {scenario} (a work order each, a crew sent)"
            + f"; more: .venv/bin/python -m simulators fault --control-port {DEMO_CONTROL_PORT} ...",
            flush=True,
        )
        _watch(sim, "the city simulator")
        args.config = str(config_dir)
        users = SecuritySettings.defaults(Path(args.data)).users
        print(demo_users.describe(demo_users.ensure_demo_users(users), users), flush=True)
        return cli.cmd_run(args)
    finally:
        processes.stop(sim)
        processes.stop(broker)
        print("demo stopped", flush=True)
