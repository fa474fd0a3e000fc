"""``python -m simulators lighting ...``: run simulated equipment in its own process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import structlog

from scada import logs
from simulators import inventory
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.models import lighting

log = structlog.get_logger("simulators")


async def run_lighting(args: argparse.Namespace) -> None:
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
    state = lighting.create([c.lat for c in cabinets], [c.lon for c in cabinets], [c.lamps for c in cabinets],
                            t=time.time(), seed=args.seed)
    sim = LightingModbusSimulator(state, cabinets[0].host, ports[0], units_per_port, args.acceleration)
    await sim.start()
    log.info("lighting_simulator_started", cabinets=len(cabinets), host=cabinets[0].host,
             ports=f"{ports[0]}-{ports[-1]}", units_per_port=units_per_port, acceleration=args.acceleration)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
        log.info("lighting_simulator_stopped", requests=sim.requests)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-json", action="store_true")
    args = parser.parse_args(argv)
    logs.configure(json=args.log_json)

    async def guarded() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_lighting(args)

    asyncio.run(guarded())
    return 0


if __name__ == "__main__":
    sys.exit(main())
