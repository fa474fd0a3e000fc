"""``scada run | check | demo``: the command line of the server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from scada import logs
from scada.yamlsrc import ConfigError


def _load(directory: str):
    from scada.config import load_config
    return load_config(directory)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.directory.resolve()}: configuration OK")
    print(config.summary())
    return 0


async def _serve(config, endpoint: str, status_interval: float) -> None:
    from scada.app import Application
    app = Application(config, endpoint, status_interval)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    signals = 0

    def stop() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("stopping (press Ctrl-C again to force)", file=sys.stderr, flush=True)
            task.cancel()
        else:
            os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    with contextlib.suppress(asyncio.CancelledError):
        await app.run()


def cmd_run(args: argparse.Namespace) -> int:
    logs.configure(json=args.log_json, level=args.log_level)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"OPC UA endpoint: {_connectable(args.opcua_endpoint)}", flush=True)
    try:
        asyncio.run(_serve(config, args.opcua_endpoint, args.status_interval))
    except OSError as exc:  # the OPC UA port is taken, the address does not exist...
        print(f"cannot start the OPC UA server on {args.opcua_endpoint}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _connectable(endpoint: str) -> str:
    """The endpoint as a client on this machine would type it (0.0.0.0 is not an address to dial)."""
    return endpoint.replace("//0.0.0.0:", "//localhost:").replace("//[::]:", "//localhost:")


def _accepts(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_simulator(sim: subprocess.Popen, ports: list[tuple[str, int]], timeout: float = 30.0) -> bool:
    """True once every simulated port accepts connections; False if the simulator exited."""
    import socket
    import time
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if sim.poll() is not None:
            return False
        try:
            with socket.create_connection(pending[-1], timeout=0.5):
                pending.pop()
        except OSError:
            time.sleep(0.1)
    return not pending


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the simulators and the server on this machine; Ctrl-C stops both."""
    from simulators.inventory import read_cabinets
    logs.configure(json=args.log_json, level=args.log_level)
    config_dir = Path(args.config)
    inventory = config_dir / "inventory" / "lighting-cabinets.csv"
    ports = sorted({(c.host, c.port) for c in read_cabinets(inventory)})
    taken = [p for h, p in ports if _accepts(h, p)]
    if taken:
        print(f"port {taken[0]} is already in use (another demo still running?); the lighting simulator "
              f"needs ports {ports[0][1]}-{ports[-1][1]}", file=sys.stderr)
        return 1
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators", "lighting", "--inventory", str(inventory),
         *(["--log-json"] if args.log_json else [])],
        start_new_session=True,  # our Ctrl-C handling stops it, in order
    )
    try:
        if not _wait_simulator(sim, ports):
            print("the lighting simulator did not start (are its ports "
                  f"{ports[0][1]}-{ports[-1][1]} free?)", file=sys.stderr)
            return 1
        args.config = str(config_dir)
        return cmd_run(args)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sim.pid, signal.SIGTERM)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(sim.pid, signal.SIGKILL)
        print("demo stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    from scada.opcua.server import DEFAULT_ENDPOINT
    parser = argparse.ArgumentParser(prog="scada", description="City supervision server")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=".", help="folder holding tags.yaml and alarms.yaml (default: .)")

    def serving(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--opcua-endpoint", default=DEFAULT_ENDPOINT, help=f"default {DEFAULT_ENDPOINT}")
        p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines; 0: none")
        p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
        p.add_argument("--log-level", default="INFO")

    p = sub.add_parser("check", help="validate the configuration and print a summary")
    common(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("run", help="run the server")
    serving(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="run the simulators and the server together")
    serving(p)
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
