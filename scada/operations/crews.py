"""The crews' board: which crew to send to an order, and the orders out to the crews over MQTT.

Positions and statuses are the fleet's tags (the ``crew_vehicle`` type's ``lat``, ``lon`` and
``status`` points, fed by the MQTT driver); the board never keeps a copy of them. A proposal is
one vectorised pass over the crews of operations.yaml (a few hundred vehicles): skill mask,
availability mask, great-circle distances, one stable sort. A crew is available when its
``status`` tag reads ``available`` with a Good status (the staleness task turns a tracker silent
for longer than its ``max_age`` Uncertain, so Good also means recent), its position is Good, and
it holds no open order.

Which crews hold an open order is the orders service's knowledge: it tells the board with
:meth:`CrewBoard.busy` (the whole set: at start, after a reload, and whenever it wants to
resynchronise). Between two such calls the board follows what passes through it: a crew is
held from the moment an assignment is sent to it (so that orders dispatched one after another
in the same turn of the loop do not all go to the same nearest crew), and released by a
"cancel" sent to it or by its own "refused" or "repaired" answer carrying that assignment's
correlation id (an answer about an earlier assignment releases nothing). An assignment that
could not be sent holds nothing; a cancel releases the crew even when it cannot be sent.

Orders go out through the vehicle's driver as a :class:`~scada.driver_api.MessageChannel`
(channel ``order``, the model's MQTT contract): the board opens no connection of its own. The
crews' answers come back through the same channel to the callback given to :meth:`start`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog

from scada.config import Config
from scada.control.zones import great_circle_m
from scada.driver_api import CommandRejected, Driver, MessageChannel
from scada.operations.model import WorkOrder
from scada.operations.service import Clock
from scada.tagdb import TagDB

log = structlog.get_logger("scada.operations")

CHANNEL = "order"  # the crew_vehicle type's message channel (tags.yaml messages:)
POINTS = ("lat", "lon", "status")  # what the board reads of a vehicle
AVAILABLE = "available"  # the status point's enum label of a crew that can take an order
ACTIONS = ("assign", "cancel")

Answer = Callable[[str, Mapping[str, Any]], None]


def iso(ns: int) -> str:
    """ISO 8601 UTC with milliseconds, as the crews' messages carry time."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CrewBoard:
    """The :class:`~scada.operations.service.Crews` of the server: proposals and orders out.

    ``drivers``: the running drivers by name (``app.drivers_by_name``) or as a list.
    ``clock``: the operations clock (the ``ts`` of the messages)."""

    def __init__(
        self,
        config: Config,
        tagdb: TagDB,
        drivers: Mapping[str, Driver] | Sequence[Driver],
        clock: Clock,
    ) -> None:
        self.clock = clock
        self._on_answer: Answer | None = None
        self._listening: list[object] = []  # the channels our callback is registered with
        self._held: set[str] = set()  # vehicles holding an open order (busy())
        self._assigned: dict[str, str] = {}  # vehicle -> correlation id of the assignment sent since
        self.reload(config, tagdb, drivers)

    def reload(self, config: Config, tagdb: TagDB, drivers: Mapping[str, Driver] | Sequence[Driver]) -> None:
        """Follow a new configuration, tag database and drivers (a reload); held crews stay held."""
        self.config, self.tagdb = config, tagdb
        self.drivers = drivers if isinstance(drivers, Mapping) else {d.name: d for d in drivers}
        self.operations = ops = config.operations
        self.speed_ms = ops.dispatch.speed_kmh / 3.6
        vehicles: list[str] = []
        ids: list[list[int]] = []
        available: list[float] = []
        for crew in ops.crews.values():
            row = self._vehicle_row(config, crew.vehicle)
            if row is not None:
                vehicles.append(crew.vehicle)
                ids.append(row[0])
                available.append(row[1])
        self.vehicles: tuple[str, ...] = tuple(vehicles)
        self._index = {v: i for i, v in enumerate(vehicles)}
        n = len(vehicles)
        cols = np.asarray(ids, np.int64).reshape(n, len(POINTS))  # a row per crew: lat, lon, status
        self._lat_ids, self._lon_ids, self._status_ids = (cols[:, k].copy() for k in range(len(POINTS)))
        self._available_value = np.asarray(available, np.float64)
        # Per service, which crews have the skill: one boolean row each.
        services = {*ops.services, *(s for c in ops.crews.values() for s in c.skills)}
        self._skills = {s: np.array([s in ops.crews[v].skills for v in vehicles], bool) for s in services}
        self._busy = np.zeros(n, bool)
        self._mark()  # the crews held before the reload stay held
        if self._on_answer is not None:
            self._listen()

    def _vehicle_row(self, config: Config, vehicle: str) -> tuple[list[int], float] | None:
        """The tag ids of a crew's lat, lon and status, and the status value meaning available;
        None (logged) for a vehicle the board cannot place: it is never proposed."""
        try:
            device = config.device(vehicle)
        except KeyError:
            log.error("crew_unknown_vehicle", vehicle=vehicle)
            return None
        t = config.types[device.type]
        names = [p.name for p in t.points]
        missing = [p for p in POINTS if p not in names]
        status = t.point("status")
        labels = {label: value for value, label in (status.enum or ())} if status else {}
        if missing or AVAILABLE not in labels:
            log.error(
                "crew_cannot_be_placed",
                vehicle=vehicle,
                type=device.type,
                missing=missing,
                reason="its type needs lat, lon and a status point whose enum has 'available'",
            )
            return None
        first = device.first_tag_id
        return [first + names.index(p) for p in POINTS], float(labels[AVAILABLE])

    # -- which crews are free ---------------------------------------------------------------------

    def busy(self, vehicles: Iterable[str]) -> None:
        """The vehicles holding an open order, all of them (the orders service's view, replacing
        the board's): never proposed until a later call leaves them out."""
        self._held = set(vehicles)
        self._assigned = {v: c for v, c in self._assigned.items() if v in self._held}
        self._mark()

    def _mark(self) -> None:
        self._busy[:] = False
        self._busy[[self._index[v] for v in self._held | self._assigned.keys() if v in self._index]] = True

    def _release(self, vehicle: str, correlation_id: object) -> None:
        """The assignment ``correlation_id`` of ``vehicle`` is over (cancelled, refused, repaired)."""
        if correlation_id and self._assigned.get(vehicle) == correlation_id:
            del self._assigned[vehicle]
            self._held.discard(vehicle)
            self._mark()

    def available(self) -> np.ndarray:
        """Which crews (``self.vehicles`` order) could take an order now, whatever its service."""
        db = self.tagdb
        status = db.status
        # Good is 0: the three points are Good when their statuses OR to 0 (the cheapest test).
        all_good = (status[self._lat_ids] | status[self._lon_ids] | status[self._status_ids]) == 0
        return all_good & (db.value[self._status_ids] == self._available_value) & ~self._busy

    def propose(self, order: WorkOrder, limit: int = 3) -> list[tuple[str, float]]:
        """The nearest available crews with the order's skill: (vehicle, ETA in s), nearest
        first (equal distances: operations.yaml's order). An order without a location gets none:
        no distance to rank crews by; a dispatcher chooses."""
        skill = self._skills.get(order.service)
        if skill is None or order.lat is None or order.lon is None or limit <= 0:
            return []
        candidates = np.flatnonzero(skill & self.available())
        if not candidates.size:
            return []
        db = self.tagdb
        d = great_circle_m(
            db.value[self._lat_ids[candidates]], db.value[self._lon_ids[candidates]], order.lat, order.lon
        )
        # A stable sort keeps operations.yaml's order between equal distances; NaN sorts last.
        nearest = np.argsort(d, kind="stable")[:limit]
        return [
            (self.vehicles[c], dist / self.speed_ms)
            for c, dist in zip(candidates[nearest].tolist(), d[nearest].tolist(), strict=True)
            if math.isfinite(dist)
        ]

    # -- orders out, answers in -------------------------------------------------------------------

    def payload(self, order: WorkOrder, action: str) -> dict[str, Any]:
        """The message to the crew (scada/operations/model.py, the crews' MQTT contract)."""
        return {
            "order_id": order.id,
            "correlation_id": order.correlation_id,
            "action": action,
            "service": order.service,
            "device": order.device,
            "lat": order.lat,
            "lon": order.lon,
            "priority": order.priority,
            "description": order.description,
            "ts": iso(self.clock()),
        }

    def _channel(self, vehicle: str) -> MessageChannel:
        try:
            device = self.config.device(vehicle)
        except KeyError:
            raise CommandRejected(f"unknown vehicle {vehicle!r}") from None
        driver = self.drivers.get(self.config.types[device.type].driver)
        if not isinstance(driver, MessageChannel):
            raise CommandRejected(f"{vehicle}: its driver carries no messages: no order can be sent to it")
        return driver

    async def send(self, order: WorkOrder, action: str) -> None:
        """Send the order ("assign" or "cancel") to its crew (``order.crew``, with the order's
        correlation id); CommandRejected when it cannot be addressed, DeviceUnreachable when the
        broker link is down."""
        if action not in ACTIONS:
            raise CommandRejected(f"unknown action {action!r} (actions: {', '.join(ACTIONS)})")
        if not order.crew:
            raise CommandRejected(f"{order.id} has no crew to send it to")
        channel = self._channel(order.crew)
        if action == "cancel":
            # The orders service has ended the assignment, whether or not the crew hears of it.
            self._release(order.crew, order.correlation_id)
        await channel.send(order.crew, CHANNEL, self.payload(order, action))
        if action == "assign":
            self._assigned[order.crew] = order.correlation_id
            self._mark()
        log.info("crew_order_sent", order=order.id, crew=order.crew, action=action)

    def start(self, on_answer: Answer) -> None:
        """Deliver every crew's answer on the order channel to ``on_answer(vehicle, payload)``,
        one by one in arrival order; answers of vehicles that are not crews are logged and dropped."""
        self._on_answer = on_answer
        self._listen()

    def _listen(self) -> None:
        # Once per driver: a reload that keeps a driver must not deliver its answers twice.
        current = [d for d in self.drivers.values() if isinstance(d, MessageChannel)]
        for d in current:
            if not any(d is seen for seen in self._listening):
                d.listen(CHANNEL, self._answer)
        self._listening = list(current)

    def _answer(self, vehicle: str, payload: Mapping[str, Any]) -> None:
        if vehicle not in self._index:
            log.warning("crew_answer_ignored", vehicle=vehicle, reason="not a crew of operations.yaml")
            return
        if payload.get("status") in ("refused", "repaired"):
            self._release(vehicle, payload.get("correlation_id"))
        if self._on_answer is not None:
            self._on_answer(vehicle, payload)
