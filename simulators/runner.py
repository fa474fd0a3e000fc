"""A whole simulated city in one process: lighting (Modbus), traffic (OPC UA), bollards and
vehicles (MQTT), a control port for faults, and an optional scenario timeline. The vehicles'
crews repair the equipment they are sent to (:meth:`CitySimulator.repair`), and the city
tells the citizen reports' generator what a passer-by sees (:meth:`CitySimulator.spots`,
:meth:`CitySimulator.faulty`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np

from common.limits import raise_open_file_limit
from simulators import faults as fa
from simulators.adapters.modbus_lighting import LightingModbusSimulator
from simulators.adapters.mqtt_city import BollardMqttSimulator, FleetMqttSimulator
from simulators.adapters.opcua_traffic import Junction, ServerSecurity, TrafficOpcUaSimulator
from simulators.city import City
from simulators.models import bollards as bo
from simulators.models import fleet as fl
from simulators.models import lighting as li
from simulators.models import traffic as tr
from simulators.reports import Spot

log = logging.getLogger("simulators.city")


class FaultError(ValueError):
    """A fault request that names an unknown fault or device, or lacks a parameter."""


class CitySimulator:
    def __init__(
        self,
        city: City,
        *,
        host: str = "127.0.0.1",
        opcua_endpoint: str | None = None,
        mqtt: tuple[str, int] | None = None,
        control_port: int | None = None,
        acceleration: float = 1.0,
        start_time: float | None = None,
        seed: int = 0,
        failure_rate: float = li.DEFAULT_FAILURE_RATE,
        opcua_security: ServerSecurity | None = None,
    ) -> None:
        self.city = city
        t0 = time.time() if start_time is None else start_time
        c = city.cabinets
        units = max(x.unit for x in c)
        state = li.create(
            [x.lat for x in c], [x.lon for x in c], city.lamps, t=t0, seed=seed, failure_rate=failure_rate
        )
        self.lighting = LightingModbusSimulator(state, c[0].host, c[0].port, units, acceleration, start_time=t0)
        self.traffic = None
        if opcua_endpoint and city.junctions:
            j = city.junctions
            ts = tr.create([x.lat for x in j], [x.lon for x in j], t=t0, seed=seed)
            self.traffic = TrafficOpcUaSimulator(
                ts,
                [Junction(x.name, x.commune, x.lat, x.lon) for x in j],
                opcua_endpoint,
                acceleration,
                start_time=t0,
                security=opcua_security,
            )
        self.bollards = self.fleet = None
        if mqtt and city.bollards:
            self.bollards = BollardMqttSimulator(
                bo.create(len(city.bollards), t=t0, seed=seed),
                [b.name for b in city.bollards],
                *mqtt,
                acceleration=acceleration,
                start_time=t0,
            )
        if mqtt and city.vehicles:
            self.fleet = FleetMqttSimulator(
                fl.create(city.places, len(city.vehicles), t=t0, seed=seed),
                city.vehicles,
                *mqtt,
                acceleration=acceleration,
                start_time=t0,
                kind_of=self.kind_of,
                on_repair=self.repair,
            )
        self.control_port = control_port
        self._control: asyncio.Server | None = None
        self._index: dict[str, tuple[str, int]] = {}
        for i, x in enumerate(c):
            self._index[x.name] = (fa.LIGHTING, i)
        for kind, sites in ((fa.TRAFFIC, city.junctions), (fa.BOLLARD, city.bollards)):
            for i, site in enumerate(sites):
                self._index[site.name] = (kind, i)
        self._rng = np.random.default_rng(seed + 1)
        self._tasks: set[asyncio.Task] = set()
        self.injected = 0
        self.repaired = 0

    @property
    def parts(self) -> list:
        return [p for p in (self.lighting, self.traffic, self.bollards, self.fleet) if p is not None]

    async def start(self) -> None:
        raise_open_file_limit()
        ports = {c.port for c in self.city.cabinets}
        if self.control_port in ports:
            raise ValueError(f"control port {self.control_port} is one of the cabinets' Modbus ports")
        for part in self.parts:
            await part.start()
        if self.control_port is not None:
            self._control = await asyncio.start_server(self._serve_control, "127.0.0.1", self.control_port)
            self.control_port = self._control.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._control:
            self._control.close()
            await self._control.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for part in reversed(self.parts):
            await part.stop()

    # Faults

    def check(self, fault: str, device: str | None, params: dict[str, Any]) -> tuple[fa.Fault, str, int]:
        """Validate a fault request without applying it; raises FaultError."""
        f = fa.FAULTS.get(fault)
        if f is None:
            raise FaultError(f"unknown fault {fault!r} (faults: {', '.join(sorted(fa.FAULTS))})")
        if f.kinds == (fa.CITY,):
            if device:
                raise FaultError(f"{fault} applies to the whole city, not to a device")
            kind, i = fa.CITY, -1
        else:
            if device not in self._index:
                raise FaultError(f"unknown device {device!r}")
            kind, i = self._index[device]
            if kind not in f.kinds:
                raise FaultError(f"{fault} does not apply to a {kind} device ({device})")
        missing = [p for p in f.params if p not in params]
        unknown = [p for p in params if p not in f.params + f.optional]
        if missing or unknown:
            raise FaultError(
                f"{fault} takes {', '.join(f.params + f.optional) or 'no parameters'}"
                f"{'; missing ' + ', '.join(missing) if missing else ''}"
                f"{'; unknown ' + ', '.join(unknown) if unknown else ''}"
            )
        part = {fa.TRAFFIC: self.traffic, fa.BOLLARD: self.bollards}.get(kind, True)
        if part is None:
            raise FaultError(f"the {kind} simulator is not running")
        return f, kind, i

    async def inject(self, fault: str, device: str | None = None, **params: Any) -> None:
        f, kind, i = self.check(fault, device, params)
        result = f.run(self, kind, i, params)
        if asyncio.iscoroutine(result):
            await result
        self.injected += 1
        log.info("fault injected: %s %s %s", fault, device or "", params or "")

    def apply(self, kind: str, fn, i: int, *args) -> None:
        if kind == fa.LIGHTING:
            self.lighting.state = fn(self.lighting.state, i, *args)
        elif kind == fa.TRAFFIC and self.traffic is not None:  # check() refused it otherwise
            self.traffic.apply(fn, i, *args)
        elif kind == fa.BOLLARD and self.bollards is not None:
            self.bollards.apply(fn, i, *args)

    def kind_of(self, device: str) -> str | None:
        """The kind of equipment (faults.LIGHTING, TRAFFIC, BOLLARD) ``device`` is, None if unknown."""
        found = self._index.get(device)
        return found[0] if found else None

    async def repair(self, device: str) -> tuple[str, ...]:
        """A crew repaired ``device``: undo its faults (faults.REPAIRS), so that its alarm clears.
        Returns the faults applied; a device the city does not simulate gets none (logged)."""
        kind = self.kind_of(device)
        done: list[str] = []
        for name in fa.REPAIRS.get(kind or "", ()):
            try:
                f, part, i = self.check(name, device, {})
            except FaultError as exc:  # that part of the city is not running
                log.warning("repair of %s: %s", device, exc)
                continue
            result = f.run(self, part, i, {})
            if asyncio.iscoroutine(result):
                await result
            done.append(name)
        if done:
            self.repaired += 1
            log.info("crew repaired %s: %s", device, ", ".join(done))
        else:
            log.warning("crew reported %s repaired: nothing the simulator can repair there", device)
        return tuple(done)

    def spots(self) -> list[Spot]:
        """The equipment a citizen can see in the street (cabinets, junctions, bollards)."""
        out = [Spot(fa.LIGHTING, c.name, c.commune, c.lat, c.lon) for c in self.city.cabinets]
        if self.traffic is not None:
            out += [Spot(fa.TRAFFIC, j.name, j.commune, j.lat, j.lon) for j in self.city.junctions]
        if self.bollards is not None:
            out += [Spot(fa.BOLLARD, b.name, b.commune, b.lat, b.lon) for b in self.city.bollards]
        return out

    def faulty(self) -> set[str]:
        """The devices whose fault shows in the street now: failed lamps (or all dark on a tripped
        breaker), a junction flashing amber on a latched conflict or with a signal lamp out, a
        bollard stuck in fault."""
        names = [c.name for c in self.city.cabinets]
        lights = self.lighting.state
        out = {names[i] for i in np.flatnonzero((lights.failed > 0) | lights.leakage_trip).tolist()}
        if self.traffic is not None:
            ts = self.traffic.state
            shows = ts.conflict | (ts.lamp_out != 0).any(axis=1)
            out.update(self.city.junctions[i].name for i in np.flatnonzero(shows).tolist())
        if self.bollards is not None:
            out.update(self.city.bollards[i].name for i in np.flatnonzero(self.bollards.state.fault).tolist())
        return out

    def burst(self, count: int) -> None:
        """``count`` random cabinets switch to forced-on or manual dim at once."""
        s = self.lighting.state
        for i in self._rng.choice(s.count, size=min(count, s.count), replace=False).tolist():
            s = li.set_dim(li.set_mode(s, i, li.MANUAL_DIM), i, int(self._rng.integers(10, 100)))
        self.lighting.state = s

    async def broker_outage(self, seconds: float) -> None:
        links = ([*self.bollards.links] if self.bollards else []) + ([self.fleet.link] if self.fleet else [])
        for link in links:
            link.drop()

        async def restore() -> None:
            await asyncio.sleep(seconds / max(self.lighting.acceleration, 1e-9))
            for link in links:
                link.restore()

        task = asyncio.create_task(restore())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        return {
            "modbus_requests": self.lighting.requests,
            "faults": self.injected,
            "cabinets": self.lighting.state.count,
            "junctions": self.traffic.state.count if self.traffic else 0,
            "bollard_commands": self.bollards.commands_received if self.bollards else 0,
            "vehicle_reports": self.fleet.reports if self.fleet else 0,
            "crew_orders": self.fleet.orders_received if self.fleet else 0,
            "crew_orders_invalid": self.fleet.invalid_orders if self.fleet else 0,
            "crew_answers": self.fleet.answers_sent if self.fleet else 0,
            "crew_repairs": self.repaired,
        }

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """JSON lines: {"fault": "...", "device": "...", ...params} -> {"ok": true} or {"ok": false, "error"};
        {"stats": true} -> counters."""
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if req == {"stats": True}:
                        writer.write((json.dumps({"ok": True, **self.stats()}) + "\n").encode())
                        await writer.drain()
                        continue
                    if not isinstance(req, dict) or "fault" not in req:
                        raise FaultError('expected {"fault": name, "device": name, ...parameters}')
                    fault, device = req.pop("fault"), req.pop("device", None)
                    await self.inject(fault, device, **req)
                    reply: dict[str, object] = {"ok": True}
                except (ValueError, TypeError) as exc:  # FaultError, bad JSON, bad parameter values
                    reply = {"ok": False, "error": str(exc)}
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
