"""Bollards and crews' vehicles over MQTT (paho-mqtt), JSON payloads.

Topics (``<id>`` is the device name):

* ``city/bollards/<id>/status``  ``online`` on connect / ``offline`` as last will (retained)
* ``city/bollards/<id>/state``   position, height, vehicle, obstruction, emergency, fault (retained)
* ``city/bollards/<id>/cmd``     ``{"command": "raise|lower|emergency_lower|reset", "correlation_id": "..."}``
* ``city/bollards/<id>/ack``     ``{"correlation_id": "...", "result": "accepted|rejected", "reason": "..."}``
* ``city/bollards/<id>/event``   access events: ``{"event": "access", "vehicle_class": "...", "granted": true}``
* ``city/vehicles/<id>/position`` ``{"lat", "lon", "speed_kmh", "heading", "status"}`` every report interval
* ``city/vehicles/<id>/order``   the server's work orders: ``{"order_id", "correlation_id", "action":
  "assign|cancel", "device", "lat", "lon", ...}`` (the contract: scada/operations/model.py)
* ``city/vehicles/<id>/order_status`` the crew's answers: ``{"order_id", "correlation_id", "status":
  "accepted|refused|en_route|on_site|repaired", "reason", "ts"}``

Every bollard has its own MQTT connection, as in the field, so that its last will marks it
offline when it drops. The vehicles report through one connection (the fleet's tracking
gateway). The clients are driven by the asyncio loop through paho's public API
(``simulators/adapters/mqtt_link.py`` says why not paho's threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from simulators.adapters.mqtt_link import QOS, MqttLink
from simulators.clock import Paced
from simulators.models import bollards as bo
from simulators.models import fleet as fl

log = logging.getLogger("simulators.mqtt")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BollardMqttSimulator(Paced):
    """Bollards, each on its own MQTT connection: state, access events, commands and acks."""

    def __init__(
        self,
        state: bo.BollardState,
        names: list[str],
        host: str,
        port: int,
        *,
        prefix: str = "city/bollards",
        acceleration: float = 1.0,
        step_interval: float = 0.25,
        start_time: float | None = None,
    ) -> None:
        if len(names) != state.count:
            raise ValueError("one name per bollard")
        super().__init__(acceleration, step_interval, start_time)
        self.state = state
        self.names = names
        self.host, self.port, self.prefix = host, port, prefix
        self.links: list[MqttLink] = []
        self._commands: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self._last: np.ndarray | None = None
        self.commands_received = 0
        self.invalid_commands = 0

    def topic(self, i: int, leaf: str) -> str:
        return f"{self.prefix}/{self.names[i]}/{leaf}"

    async def start(self) -> None:
        self.state = bo.step(self.state, self.sim_time())
        for i in range(self.state.count):

            def connected(link: MqttLink, i=i) -> None:
                link.publish(self.topic(i, "status"), "online", retain=True)
                link.client.subscribe(self.topic(i, "cmd"), qos=QOS)
                link.publish(self.topic(i, "state"), self._state_payload(i), retain=True)

            def message(client, userdata, msg, i=i) -> None:
                self._enqueue(i, msg.payload)

            link = MqttLink(
                f"bollard-{self.names[i]}",
                self.host,
                self.port,
                will=(self.topic(i, "status"), "offline"),
                on_connect=connected,
                on_message=message,
            )
            link.start()
            self.links.append(link)
        self._last = self._signature()
        self.spawn(self._step_loop(), "bollards-step")
        self.spawn(self._command_loop(), "bollards-commands")

    def _enqueue(self, i: int, payload: bytes) -> None:
        try:
            self._commands.put_nowait((i, payload))
        except asyncio.QueueFull:
            self.invalid_commands += 1

    def _signature(self) -> np.ndarray:
        s = self.state
        return np.stack([s.position, np.round(s.height * 10), s.vehicle, s.obstruction, s.emergency, s.fault], axis=1)

    def _state_payload(self, i: int) -> dict:
        s = self.state
        return {
            "position": bo.POSITIONS[int(s.position[i])],
            "height": round(float(s.height[i]), 2),
            "vehicle": bool(s.vehicle[i]),
            "obstruction": bool(s.obstruction[i]),
            "emergency": bool(s.emergency[i]),
            "fault": bool(s.fault[i]),
            "ts": iso(s.t),
        }

    def publish_changes(self) -> None:
        sig = self._signature()
        changed = (
            np.flatnonzero((sig != self._last).any(axis=1)).tolist() if self._last is not None else range(len(sig))
        )
        for i in changed:
            self.links[i].publish(self.topic(i, "state"), self._state_payload(i), retain=True)
        self._last = sig
        for e in self.state.events:
            self.links[e.bollard].publish(
                self.topic(e.bollard, "event"),
                {"event": "access", "vehicle_class": e.vehicle_class, "granted": e.granted, "ts": iso(e.t)},
            )
        self.state = replace(self.state, events=())

    async def _step_loop(self) -> None:
        while True:
            self.state = bo.step(self.state, self.sim_time())
            self.publish_changes()
            await asyncio.sleep(self.step_interval)

    async def _command_loop(self) -> None:
        while True:
            i, payload = await self._commands.get()
            self.commands_received += 1
            correlation = None
            try:
                msg = json.loads(payload)
                if not isinstance(msg, dict):
                    raise ValueError("a command is a JSON object")
                correlation = msg.get("correlation_id")
                name = msg.get("command")
                if not isinstance(name, str):
                    raise ValueError("missing 'command'")
                self.state, accepted, reason = bo.command(self.state, i, name)
            except (ValueError, UnicodeDecodeError) as exc:
                self.invalid_commands += 1
                accepted, reason = False, f"invalid command: {exc}"
            ack = {
                "correlation_id": correlation,
                "result": "accepted" if accepted else "rejected",
                "ts": iso(self.state.t),
            }
            if reason:
                ack["reason"] = reason
            self.links[i].publish(self.topic(i, "ack"), ack)
            self.publish_changes()

    def apply(self, fn, *args) -> None:
        """Apply a model function (fault injection) and publish what changed."""
        self.state = fn(self.state, *args)
        self.publish_changes()

    def set_offline(self, i: int, offline: bool) -> None:
        """The bollard's link drops (the broker announces its last will) or comes back."""
        (self.links[i].drop if offline else self.links[i].restore)()

    async def stop(self) -> None:
        await self.stop_tasks()
        for link in self.links:
            await link.stop()
        self.links.clear()


class FleetMqttSimulator(Paced):
    """Vehicles reporting their positions through one connection (the fleet's tracking gateway),
    whose crews take work orders on the same connection and answer them.

    ``kind_of(device)`` names a device's kind of equipment (its repair time), and
    ``on_repair(device)`` repairs it in the simulated city when a crew reports it repaired.
    """

    MAX_PENDING = 10_000  # order messages waiting for the next step: beyond, they are dropped (counted)

    def __init__(
        self,
        state: fl.FleetState,
        names: list[str],
        host: str,
        port: int,
        *,
        prefix: str = "city/vehicles",
        acceleration: float = 1.0,
        report_interval: float = 10.0,
        start_time: float | None = None,
        kind_of: Callable[[str], str | None] | None = None,
        on_repair: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        # Trackers report every report_interval of simulated time.
        super().__init__(acceleration, report_interval / acceleration, start_time)
        self.state = state
        self.names = names
        self.prefix = prefix
        self.report_interval = report_interval
        self.kind_of, self.on_repair = kind_of, on_repair
        self._vehicle = {name: i for i, name in enumerate(names)}
        self.link = MqttLink("fleet-gateway", host, port, on_connect=self._subscribe, on_message=self._message)
        self._orders: list[fl.Order] = []  # received since the last step
        self._woken = asyncio.Event()  # an order came: step now rather than at the next report
        self.reports = 0
        self.orders_received = 0
        self.invalid_orders = 0  # garbage, or an unknown vehicle's topic, or beyond MAX_PENDING
        self.answers_sent = 0
        self.repairs = 0

    def _subscribe(self, link: MqttLink) -> None:
        # On every (re)connection: the session is clean, the broker forgot the subscription.
        link.client.subscribe(f"{self.prefix}/+/order", qos=QOS)

    def _message(self, client, userdata, msg) -> None:
        """paho's callback, on the event loop: the order waits for the next step (now)."""
        self.orders_received += 1
        try:
            name = msg.topic[len(self.prefix) + 1 : -len("/order")]
            if name not in self._vehicle:
                raise ValueError(f"no vehicle {name!r}")
            order = fl.parse_order(self._vehicle[name], msg.payload)
            if order.device is not None and self.kind_of is not None:
                order = replace(order, kind=self.kind_of(order.device))
            if len(self._orders) >= self.MAX_PENDING:
                raise ValueError(f"{self.MAX_PENDING} orders wait already")
        except ValueError as exc:
            self.invalid_orders += 1
            log.warning("order ignored on %s: %s (payload %.120r)", msg.topic, exc, msg.payload)
            return
        self._orders.append(order)
        self._woken.set()

    def report(self) -> None:
        s = self.state
        for i, name in enumerate(self.names):
            self.link.publish(
                f"{self.prefix}/{name}/position",
                {
                    "lat": round(float(s.lat[i]), 6),
                    "lon": round(float(s.lon[i]), 6),
                    "speed_kmh": round(float(s.speed_kmh[i]), 1),
                    "heading": round(float(s.heading[i])),
                    "status": fl.STATUSES[int(s.status[i])],
                    "ts": iso(s.t),
                },
            )
        self.reports += 1

    async def answer(self) -> None:
        """Publish the last step's answers, and repair what the crews repaired."""
        answers, self.state = self.state.answers, replace(self.state, answers=())
        for a in answers:
            self.link.publish(
                f"{self.prefix}/{self.names[a.vehicle]}/order_status",
                {
                    "order_id": a.order_id,
                    "correlation_id": a.correlation_id,
                    "status": a.status,
                    "reason": a.reason,
                    "ts": iso(a.t),
                },
            )
            self.answers_sent += 1
            log.info("crew %s: order %s %s %s", self.names[a.vehicle], a.order_id, a.status, a.reason)
            if a.status == fl.REPAIRED and a.device is not None and self.on_repair is not None:
                self.repairs += 1
                try:
                    await self.on_repair(a.device)
                except Exception:  # the city's fault, not the fleet's: the crews keep working
                    log.exception("repair of %s failed", a.device)

    async def start(self) -> None:
        self.link.start()
        self.spawn(self._loop(), "fleet-step")

    async def _loop(self) -> None:
        while True:
            # No await between taking the orders and stepping: none is lost in between.
            orders, self._orders = self._orders, []
            self._woken.clear()
            self.state = fl.step(self.state, self.sim_time(), orders)
            await self.answer()
            if self.link.connected:
                self.report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.step_interval)

    async def stop(self) -> None:
        await self.stop_tasks()
        await self.link.stop()
