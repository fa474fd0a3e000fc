"""``python -m simulators lighting ...``: run simulated equipment in its own process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import structlog

from common import eventloop, logs
from common.gcfreeze import freeze_built
from common.limits import raise_open_file_limit
from simulators import inventory
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.clock import start_at
from simulators.models import lighting
from simulators.reports import ADDRESSES, FIRST_ADDRESS, client_addresses

log = structlog.get_logger("simulators")


async def run_lighting(args: argparse.Namespace) -> None:
    raise_open_file_limit()
    if args.inventory:
        cabinets = inventory.read_cabinets(args.inventory)
    else:
        cabinets = inventory.generate_cabinets(args.per_commune, args.host, args.base_port, args.units_per_port)
    if args.write_inventory:
        inventory.write_cabinets(args.write_inventory, cabinets)
    ports = sorted({c.port for c in cabinets})
    if ports != list(range(ports[0], ports[0] + len(ports))):
        raise SystemExit("inventory ports must be consecutive (one simulator serves base_port, base_port+1, ...)")
    units_per_port = max(c.unit for c in cabinets)
    start = _start(args)
    state = lighting.create(
        [c.lat for c in cabinets],
        [c.lon for c in cabinets],
        [c.lamps for c in cabinets],
        t=time.time() if start is None else start,
        seed=args.seed,
    )
    sim = LightingModbusSimulator(
        state, cabinets[0].host, ports[0], units_per_port, args.acceleration, start_time=start
    )
    await sim.start()
    log.info(
        "lighting_simulator_started",
        cabinets=len(cabinets),
        host=cabinets[0].host,
        ports=f"{ports[0]}-{ports[-1]}",
        units_per_port=units_per_port,
        acceleration=args.acceleration,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
        log.info("lighting_simulator_stopped", requests=sim.requests)


def _start(args: argparse.Namespace) -> float | None:
    """The simulated time now from ``--start`` (ISO 8601, UTC unless it gives an offset) and
    ``--start-origin`` (the real instant at which the clock read it); None: real time."""
    from datetime import UTC, datetime

    if not args.start:
        return None
    t = datetime.fromisoformat(args.start)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return start_at(t.timestamp(), args.start_origin, args.acceleration)


async def run_city(args: argparse.Namespace) -> None:
    from pathlib import Path

    from simulators import city as citygen
    from simulators.runner import CitySimulator
    from simulators.scenario import load_scenario, play

    city = citygen.generate(args.preset, args.host, args.base_port, args.units_per_port)
    opcua_endpoint = f"opc.tcp://{args.host}:{args.opcua_port}/traffic/"
    if args.config_out:
        path = citygen.write_config(
            city, Path(args.config_out), Path(args.types_from), opcua_endpoint, args.mqtt or "127.0.0.1:1883"
        )
        log.info("city_config_written", path=str(path), cabinets=len(city.cabinets))
    mqtt = None
    if args.mqtt:
        h, _, p = args.mqtt.rpartition(":")
        mqtt = (h or "127.0.0.1", int(p))
    security = None
    if args.opcua_pki:
        from simulators.adapters.opcua_traffic import ServerSecurity

        pki = Path(args.opcua_pki)
        trusted = pki / "trusted"
        security = ServerSecurity(
            pki / "traffic-server.der", pki / "traffic-server.pem", (trusted,) if trusted.is_dir() else ()
        )
    start = _start(args)  # just before the clocks are made: the time since the origin is counted
    sim = CitySimulator(
        city,
        host=args.host,
        opcua_endpoint=opcua_endpoint,
        mqtt=mqtt,
        control_port=args.control_port,
        acceleration=args.acceleration,
        start_time=start,
        seed=args.seed,
        failure_rate=args.failure_rate,
        opcua_security=security,
    )
    steps = load_scenario(args.scenario, sim) if args.scenario else []
    reports = None
    if args.reports_per_day:
        from simulators.reports import ReportGenerator

        reports = ReportGenerator(
            sim,
            args.open311,
            args.reports_per_day,
            acceleration=args.acceleration,
            seed=args.seed,
            codes=args.report_services,
            api_key=args.open311_api_key,
            addresses=args.report_addresses,
            first_address=args.report_first_address,
        )
    await sim.start()
    if reports is not None:
        await reports.start()
    freeze_built()  # the city's models and servers live as long as the simulator (common/gcfreeze.py)
    log.info(
        "city_simulator_started",
        preset=args.preset,
        cabinets=len(city.cabinets),
        light_points=sum(city.lamps),
        junctions=len(city.junctions),
        bollards=len(city.bollards),
        vehicles=len(city.vehicles),
        modbus=f"{city.cabinets[0].port}-{city.cabinets[-1].port}",
        opcua=sim.traffic.endpoint if sim.traffic else None,
        opcua_security="Basic256Sha256 Sign/SignAndEncrypt only" if security else "None",
        mqtt=args.mqtt,
        control_port=sim.control_port,
        acceleration=args.acceleration,
        reports_per_day=args.reports_per_day,
        open311=args.open311,
    )
    try:
        if steps:
            await play(steps, sim, args.acceleration)
            log.info("scenario_done", steps=len(steps))
        await asyncio.Event().wait()
    finally:
        if reports is not None:
            await reports.stop()
        await sim.stop()
        log.info(
            "city_simulator_stopped",
            modbus_requests=sim.lighting.requests,
            faults=sim.injected,
            crew_repairs=sim.repaired,
            # What became of the citizens' reports (sent, accepted, refused, throttled by 429, ...).
            **{f"citizen_reports_{k}": v for k, v in (reports.stats() if reports else {}).items()},
        )


def send_fault(args: argparse.Namespace) -> int:
    import json
    import socket

    req = {"fault": args.fault}
    if args.device:
        req["device"] = args.device
    for kv in args.params:
        k, _, v = kv.partition("=")
        try:
            req[k] = json.loads(v)
        except json.JSONDecodeError:
            req[k] = v
    with socket.create_connection(("127.0.0.1", args.control_port), timeout=10) as s:
        s.sendall((json.dumps(req) + "\n").encode())
        reply = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        print(f"fault refused: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0


def _start_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", help="simulated start time, ISO 8601, UTC unless an offset is given (default: now)")
    p.add_argument(
        "--start-origin",
        type=float,
        help="Unix time (s) of the real instant at which the simulated clock reads --start (default: when "
        "the simulator starts): give the server's --clock-origin the same, and both clocks read alike",
    )


def _service_codes(text: str) -> dict[str, str]:
    """``lighting=streetlight,traffic=traffic_signal``: the Open311 code for each kind of equipment."""
    from simulators.faults import BOLLARD, LIGHTING, TRAFFIC

    out = {}
    for item in text.split(","):
        kind, sep, code = item.strip().partition("=")
        if not sep or not code or kind not in (LIGHTING, TRAFFIC, BOLLARD):
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=CODE with KIND lighting, traffic or bollard")
        out[kind] = code
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scada-sim", description="Simulated city equipment")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("lighting", help="street-lighting cabinets over Modbus TCP")
    p.add_argument("--inventory", help="CSV inventory to simulate (name,type,commune,lat,lon,endpoint,unit)")
    p.add_argument("--per-commune", type=int, default=2, help="without --inventory: cabinets per commune")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=15020)
    p.add_argument("--units-per-port", type=int, default=1, help="cabinets per port (a gateway) 1-247")
    p.add_argument("--write-inventory", help="write the simulated cabinets as a CSV inventory")
    p.add_argument("--acceleration", type=float, default=1.0, help="simulated seconds per real second")
    _start_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-json", action="store_true")
    eventloop.add_argument(p)

    c = sub.add_parser(
        "city", help="a whole simulated city: lighting (Modbus), traffic (OPC UA), bollards and vehicles (MQTT)"
    )
    c.add_argument(
        "--city",
        "--preset",
        dest="preset",
        default="small",
        help="tiny, small (default) or dijon (the whole metropolis)",
    )
    c.add_argument("--config-out", help="write tags.yaml and the inventories of this city into this folder")
    c.add_argument("--types-from", default="tags.yaml", help="tags.yaml whose equipment types the written one uses")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--base-port", type=int, default=15020, help="first Modbus port of the lighting cabinets")
    c.add_argument("--units-per-port", type=int, default=1)
    c.add_argument("--opcua-port", type=int, default=4841, help="port of the traffic-management OPC UA server")
    c.add_argument(
        "--opcua-pki",
        metavar="DIR",
        help="serve the traffic OPC UA server secure-only (Basic256Sha256 Sign and SignAndEncrypt, security "
        "None refused) with DIR/traffic-server.der and .pem (made when absent); when DIR/trusted/ "
        "exists, only the client certificates in it are accepted",
    )
    c.add_argument("--mqtt", help="broker host:port for bollards and vehicles (none: they are not simulated)")
    c.add_argument("--control-port", type=int, default=14999, help="JSON-lines port for fault injection")
    c.add_argument("--scenario", help="YAML timeline of faults")
    c.add_argument("--acceleration", type=float, default=1.0, help="simulated seconds per real second")
    _start_arguments(c)
    c.add_argument("--failure-rate", type=float, default=1e-5, help="lamp failures per lamp-hour")
    c.add_argument(
        "--reports-per-day",
        type=float,
        default=0.0,
        help="citizen reports a day of simulated time, POSTed to --open311 (0: none); most about real "
        "faults, some duplicates, some false",
    )
    c.add_argument(
        "--open311",
        metavar="URL",
        help="the server's Open311 GeoReport v2 endpoint, e.g. "
        "http://127.0.0.1:8080/open311/v2 (the reports go to URL/requests.json)",
    )
    c.add_argument("--open311-api-key", default="", help="api_key sent with each report (none by default)")
    c.add_argument(
        "--report-services",
        type=_service_codes,
        default=None,
        metavar="KIND=CODE,...",
        help="Open311 service codes citizens pick per kind of equipment "
        "(default lighting=streetlight,traffic=traffic_signal,bollard=bollard)",
    )
    c.add_argument(
        "--report-addresses",
        type=int,
        default=ADDRESSES,
        metavar="N",
        help=f"when --open311 is on loopback, each citizen's report leaves from one of N loopback addresses "
        f"(the server rate-limits per address; default {ADDRESSES}; 1: one address, as to any other target)",
    )
    c.add_argument(
        "--report-first-address",
        default=FIRST_ADDRESS,
        metavar="IP",
        help=f"the first of those addresses, in 127.0.0.0/8 (default {FIRST_ADDRESS})",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--log-json", action="store_true")
    eventloop.add_argument(c)

    f = sub.add_parser("fault", help="inject a fault into a running city simulator")
    f.add_argument(
        "fault", help="lamp_failure, mains_loss, conflict_fault, device_offline, ... (see simulators/faults.py)"
    )
    f.add_argument("device", nargs="?", help="device name (none for city-wide faults)")
    f.add_argument("params", nargs="*", help="key=value parameters, e.g. count=3")
    f.add_argument("--control-port", type=int, default=14999)

    args = parser.parse_args(argv)
    if args.kind == "city":
        if args.reports_per_day < 0 or args.reports_per_day != args.reports_per_day:
            parser.error("--reports-per-day must be zero or more")
        if args.reports_per_day and not args.open311:
            parser.error("--reports-per-day needs --open311 URL (where citizens send their reports)")
        try:
            client_addresses(args.open311 or "http://127.0.0.1/", args.report_addresses, args.report_first_address)
        except ValueError as exc:
            parser.error(f"--report-addresses/--report-first-address: {exc}")
        if args.report_services is None:
            from simulators.reports import SERVICE_CODES

            args.report_services = dict(SERVICE_CODES)
    if args.kind == "fault":
        return send_fault(args)
    logs.configure(json=args.log_json)
    runner = run_city if args.kind == "city" else run_lighting

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None  # runs as asyncio.run's main task
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await runner(args)

    try:
        eventloop.run(guarded(), args.event_loop)
    except OSError as exc:  # a port in use, an address that does not exist
        print(f"simulator cannot start: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad preset, a control port among the Modbus ports...
        print(f"simulator cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
