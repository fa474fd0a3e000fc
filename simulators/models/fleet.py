"""Field crews' vehicles as a pure model: GPS positions along plausible paths between communes.

Each vehicle is available at a base, then sent to a commune (en route), works there (on site)
and becomes available again where it is. Paths go through the city centre when they cross
it, as crews use the ring road and main avenues; positions are interpolated along the
path at a road speed. Randomness (next destination, time on site) comes from the seed and
the step count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

AVAILABLE, EN_ROUTE, ON_SITE = 0, 1, 2
STATUSES = {AVAILABLE: "available", EN_ROUTE: "en_route", ON_SITE: "on_site"}
SPEED_KMH = 30.0
KM_PER_DEG_LAT = 111.2


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
    )


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


def step(s: FleetState, t: float) -> FleetState:
    rng = np.random.default_rng([s.seed, s.steps])
    status, origin, via, dest = s.status.copy(), s.origin.copy(), s.via.copy(), s.dest.copy()
    depart, until = s.depart.copy(), s.until.copy()
    pos, heading, arrived = _position(s, t)
    moving = status == EN_ROUTE
    lat = np.where(moving, pos[:, 0], s.lat)
    lon = np.where(moving, pos[:, 1], s.lon)
    # Arrivals: on site for 10-60 minutes.
    reach = moving & arrived
    status[reach] = ON_SITE
    until[reach] = t + rng.uniform(600, 3600, s.count)[reach]
    # Work done: available again, where they are.
    free = (s.status == ON_SITE) & (t >= s.until)
    status[free] = AVAILABLE
    until[free] = t + rng.uniform(300, 2400, s.count)[free]
    # Dispatch: available vehicles whose wait is over leave for another commune.
    go = (status == AVAILABLE) & (t >= until) & ~free
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
    speed = np.where(status == EN_ROUTE, SPEED_KMH, 0.0)
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
        speed_kmh=speed,
        heading=np.where(moving, heading, s.heading),
    )
