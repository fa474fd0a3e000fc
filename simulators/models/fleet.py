"""Field crews' vehicles as a pure model: GPS positions along plausible paths between communes,
and the work orders the crews carry out.

Each vehicle is available at a base, then sent to a commune (en route), works there (on site)
and becomes available again where it is. Paths go through the city centre when they cross
it, as crews use the ring road and main avenues; positions are interpolated along the
path at a road speed. Randomness (next destination, time on site) comes from the seed and
the step count.

A vehicle is also a crew that takes work orders (:class:`Order`, the server's order messages,
given to :func:`step` as its inputs): it accepts one (or refuses it while busy with another),
leaves at once for the site by the direct path at the road speed, arrives, repairs for the
time its kind of equipment takes (:data:`REPAIR_S`, simulated seconds), reports the repair and
becomes available again where it is. Each step's answers (:class:`Answer`, stamped with the
simulated instant each happened, not the step's) are in ``state.answers`` for the adapter to
publish; a vehicle holding an order is never sent on a random trip. The answers' words are the
server's MQTT contract (scada/operations/model.py), repeated here because the simulators never
import the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

AVAILABLE, EN_ROUTE, ON_SITE = 0, 1, 2
STATUSES = {AVAILABLE: "available", EN_ROUTE: "en_route", ON_SITE: "on_site"}
SPEED_KMH = 30.0
KM_PER_DEG_LAT = 111.2

# The order messages' actions and the crews' answers (the server's MQTT contract).
ASSIGN, CANCEL = "assign", "cancel"
ACCEPTED, REFUSED, DEPARTED, ARRIVED, REPAIRED = "accepted", "refused", "en_route", "on_site", "repaired"
# Simulated seconds on site before the repair is done, per kind of equipment (the simulator's
# kinds: simulators/faults.py); an order on anything else (an unknown or unlocated device) takes
# DEFAULT_REPAIR_S: the crew looks, finds or fixes what it can.
REPAIR_S = {"lighting": 1800.0, "traffic": 2700.0, "bollard": 3600.0}
DEFAULT_REPAIR_S = 1200.0
MAX_ID = 200  # characters of an order or correlation id: beyond, the message is garbage


@dataclass(frozen=True, slots=True)
class Order:
    """An order message for one vehicle (its index), as :func:`parse_order` read it."""

    vehicle: int
    action: str  # ASSIGN | CANCEL
    order_id: str
    correlation_id: str
    lat: float = math.nan  # the site (an assignment has one)
    lon: float = math.nan
    device: str | None = None
    kind: str | None = None  # the device's kind of equipment (the adapter knows it): the repair time


@dataclass(frozen=True, slots=True)
class Job:
    """The order a vehicle carries out, with the simulated instants of its steps (known when it
    accepts: it leaves at once by the direct path at the road speed)."""

    order_id: str
    correlation_id: str
    device: str | None
    kind: str | None
    lat: float
    lon: float
    depart_at: float
    arrive_at: float
    done_at: float
    on_site: bool = False  # the arrival was announced


@dataclass(frozen=True, slots=True)
class Answer:
    """A crew's answer to publish: ``status`` one of ACCEPTED ... REPAIRED, at simulated time ``t``."""

    vehicle: int
    order_id: str
    correlation_id: str
    status: str
    t: float
    reason: str = ""
    device: str | None = None  # the repaired equipment (REPAIRED)


@dataclass(frozen=True)
class FleetState:
    t: float
    steps: int
    seed: int
    places: np.ndarray  # (p, 2) lat, lon of the communes' centres; place 0 is the city centre
    lat: np.ndarray
    lon: np.ndarray
    status: np.ndarray
    origin: np.ndarray  # (n, 2)
    via: np.ndarray  # (n, 2): the centre, or the origin itself for a direct path
    dest: np.ndarray  # (n, 2)
    depart: np.ndarray  # time the current leg started
    until: np.ndarray  # time the current status ends
    speed_kmh: np.ndarray
    heading: np.ndarray  # degrees from north
    jobs: tuple[Job | None, ...] = ()  # per vehicle (empty: none has one)
    answers: tuple[Answer, ...] = ()  # the last step's, in order; the adapter publishes and clears them

    @property
    def count(self) -> int:
        return len(self.lat)


def _km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dlat = (b[..., 0] - a[..., 0]) * KM_PER_DEG_LAT
    dlon = (b[..., 1] - a[..., 1]) * KM_PER_DEG_LAT * np.cos(np.radians((a[..., 0] + b[..., 0]) / 2))
    return np.hypot(dlat, dlon)


def create(places, n: int, t: float = 0.0, seed: int = 0) -> FleetState:
    """``n`` vehicles spread over ``places`` ((lat, lon) pairs; the first is the city centre)."""
    places = np.asarray(places, np.float64)
    rng = np.random.default_rng(seed)
    home = places[rng.integers(0, len(places), n)]
    z = np.zeros(n)
    return FleetState(
        t=t,
        steps=0,
        seed=seed,
        places=places,
        lat=home[:, 0].copy(),
        lon=home[:, 1].copy(),
        status=np.full(n, AVAILABLE, np.int64),
        origin=home.copy(),
        via=home.copy(),
        dest=home.copy(),
        depart=np.full(n, t),
        until=t + rng.uniform(60, 1800, n),
        speed_kmh=z.copy(),
        heading=z.copy(),
        jobs=(None,) * n,
    )


def parse_order(vehicle: int, payload: bytes | str) -> Order:
    """An order message (JSON, the server's contract) for vehicle ``vehicle``; ValueError says
    what is wrong with a garbage one."""
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ValueError("an order is a JSON object")
    ids = {}
    for key in ("order_id", "correlation_id"):
        v = msg.get(key)
        if not isinstance(v, str) or not v or len(v) > MAX_ID:
            raise ValueError(f"{key} must be a non-empty string of at most {MAX_ID} characters, not {v!r:.60}")
        ids[key] = v
    action = msg.get("action")
    if action not in (ASSIGN, CANCEL):
        raise ValueError(f"action must be {ASSIGN!r} or {CANCEL!r}, not {action!r:.60}")
    device = msg.get("device")
    if device is not None and (not isinstance(device, str) or len(device) > MAX_ID):
        raise ValueError(f"device must be a name or null, not {device!r:.60}")
    if action == CANCEL:
        return Order(vehicle, CANCEL, ids["order_id"], ids["correlation_id"], device=device)
    if msg.get("lat", 0) is None and msg.get("lon", 0) is None:
        # An unlocated order (a citizen's report without a place): valid, but the crew cannot go.
        return Order(vehicle, ASSIGN, ids["order_id"], ids["correlation_id"], device=device)
    site = []
    for key, bound in (("lat", 90.0), ("lon", 180.0)):
        v = msg.get(key)
        # bool is an int to Python, not a coordinate to anyone
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > bound:
            raise ValueError(f"an assignment needs {key} in degrees (within ±{bound:g}), not {v!r:.60}")
        site.append(float(v))
    return Order(vehicle, ASSIGN, ids["order_id"], ids["correlation_id"], site[0], site[1], device)


def _position(s: FleetState, t: float):
    """Where each vehicle en route is at ``t``: along origin -> via -> dest at road speed."""
    leg1, leg2 = _km(s.origin, s.via), _km(s.via, s.dest)
    done_km = np.clip((t - s.depart) / 3600.0 * SPEED_KMH, 0, leg1 + leg2)
    f1 = np.where(leg1 > 0, np.clip(done_km / np.maximum(leg1, 1e-9), 0, 1), 1.0)
    f2 = np.where(leg2 > 0, np.clip((done_km - leg1) / np.maximum(leg2, 1e-9), 0, 1), 1.0)
    on_leg1 = done_km < leg1
    a = np.where(on_leg1[:, None], s.origin, s.via)
    b = np.where(on_leg1[:, None], s.via, s.dest)
    f = np.where(on_leg1, f1, f2)[:, None]
    pos = a + (b - a) * f
    heading = np.degrees(np.arctan2((b[:, 1] - a[:, 1]) * np.cos(np.radians(a[:, 0])), b[:, 0] - a[:, 0])) % 360
    arrived = done_km >= leg1 + leg2
    return pos, heading, arrived


def step(s: FleetState, t: float, orders: Sequence[Order] = ()) -> FleetState:
    """The fleet at ``t``: vehicles move, crews progress on their orders, then take ``orders``
    (received since the last step) in the order given."""
    rng = np.random.default_rng([s.seed, s.steps])
    status, origin, via, dest = s.status.copy(), s.origin.copy(), s.via.copy(), s.dest.copy()
    depart, until = s.depart.copy(), s.until.copy()
    jobs: list[Job | None] = list(s.jobs) if s.jobs else [None] * s.count
    busy = np.array([j is not None for j in jobs], bool)
    pos, heading, arrived = _position(s, t)
    moving = status == EN_ROUTE
    lat = np.where(moving, pos[:, 0], s.lat)
    lon = np.where(moving, pos[:, 1], s.lon)
    # Arrivals: on site for 10-60 minutes (crews on an order: below).
    reach = moving & arrived & ~busy
    status[reach] = ON_SITE
    until[reach] = t + rng.uniform(600, 3600, s.count)[reach]
    # Work done: available again, where they are.
    free = (s.status == ON_SITE) & (t >= s.until) & ~busy
    status[free] = AVAILABLE
    until[free] = t + rng.uniform(300, 2400, s.count)[free]
    # Dispatch: available vehicles whose wait is over leave for another commune.
    go = (status == AVAILABLE) & (t >= until) & ~free & ~busy
    if go.any():
        here = np.stack([lat, lon], axis=1)
        target = s.places[rng.integers(0, len(s.places), s.count)]
        centre = np.broadcast_to(s.places[0], here.shape)
        # Through the centre when that is not a big detour (crossing the city), else direct.
        through = _km(here, centre) + _km(centre, target) < 1.3 * _km(here, target) + 1.0
        origin[go] = here[go]
        via[go] = np.where(through[:, None], centre, here)[go]
        dest[go] = target[go]
        depart[go] = t
        status[go] = EN_ROUTE
    # Crews on an order: one Python step per busy vehicle (a few among hundreds).
    answers: list[Answer] = []
    for i in np.flatnonzero(busy).tolist():
        job = jobs[i]
        assert job is not None
        if not job.on_site and t >= job.arrive_at:
            answers.append(Answer(i, job.order_id, job.correlation_id, ARRIVED, job.arrive_at))
            job = jobs[i] = replace(job, on_site=True)
            status[i], lat[i], lon[i] = ON_SITE, job.lat, job.lon
        if t >= job.done_at:
            answers.append(Answer(i, job.order_id, job.correlation_id, REPAIRED, job.done_at, device=job.device))
            jobs[i] = None
            status[i], until[i] = AVAILABLE, t + rng.uniform(300, 2400)
    for o in orders:
        answers.extend(_take(o, t, jobs, status, lat, lon, origin, via, dest, depart, until, rng))
    return replace(
        s,
        t=t,
        steps=s.steps + 1,
        lat=lat,
        lon=lon,
        status=status,
        origin=origin,
        via=via,
        dest=dest,
        depart=depart,
        until=until,
        speed_kmh=np.where(status == EN_ROUTE, SPEED_KMH, 0.0),
        heading=np.where(moving, heading, s.heading),
        jobs=tuple(jobs),
        answers=tuple(answers),
    )


def _take(o: Order, t: float, jobs, status, lat, lon, origin, via, dest, depart, until, rng) -> list[Answer]:
    """One order message for vehicle ``o.vehicle``: its answers; the arrays change in place."""
    i, job = o.vehicle, jobs[o.vehicle]
    if o.action == CANCEL:
        if job is not None and job.order_id == o.order_id:
            # Stopped where it is (on the road or on site), free for other work after a pause.
            jobs[i] = None
            status[i], until[i] = AVAILABLE, t + rng.uniform(300, 2400)
        return []  # the contract has no answer to a cancellation; one for another order changes nothing
    if math.isnan(o.lat) or math.isnan(o.lon):
        return [Answer(i, o.order_id, o.correlation_id, REFUSED, t, reason="no site to go to (lat and lon are null)")]
    if job is not None and job.order_id != o.order_id:
        return [Answer(i, o.order_id, o.correlation_id, REFUSED, t, reason=f"busy with {job.order_id}")]
    if job is not None:
        # The same order again (a reassignment): the new correlation id, and where the crew stands.
        job = jobs[i] = replace(job, correlation_id=o.correlation_id)
        out = [
            Answer(i, o.order_id, o.correlation_id, ACCEPTED, t),
            Answer(i, o.order_id, o.correlation_id, DEPARTED, t),
        ]
        if job.on_site:
            out.append(Answer(i, o.order_id, o.correlation_id, ARRIVED, t))
        return out
    here = np.array([lat[i], lon[i]])
    site = np.array([o.lat, o.lon])
    arrive = t + float(_km(here, site)) / SPEED_KMH * 3600.0
    jobs[i] = Job(
        o.order_id,
        o.correlation_id,
        o.device,
        o.kind,
        o.lat,
        o.lon,
        t,
        arrive,
        arrive + REPAIR_S.get(o.kind or "", DEFAULT_REPAIR_S),
    )
    origin[i] = via[i] = here  # the direct path: the server's ETA is a straight line too
    dest[i], depart[i], status[i] = site, t, EN_ROUTE
    return [Answer(i, o.order_id, o.correlation_id, ACCEPTED, t), Answer(i, o.order_id, o.correlation_id, DEPARTED, t)]
