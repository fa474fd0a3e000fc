"""Retractable access bollards as a pure model, vectorised over bollards.

A bollard closes a street to traffic when up. Its position moves down -> rising -> up ->
lowering -> down; rising and lowering take seconds. Local access control lowers it for an
authorised vehicle that arrives on its induction loop, and raises it again once the
vehicle has passed; the centre can hold it down or up, or lower it in an emergency. An
obstruction while rising (a vehicle on the loop, or anything injected) reverses it.
Each step returns the access events (which vehicle class arrived, whether it was let in)
produced since the previous step, in ``state.events``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simulators.models.columns import with_element

DOWN, RISING, UP, LOWERING, FAULT = 0, 1, 2, 3, 4
POSITIONS = {DOWN: "down", RISING: "rising", UP: "up", LOWERING: "lowering", FAULT: "fault"}
COMMANDS = ("raise", "lower", "emergency_lower", "reset")
VEHICLE_CLASSES = ("resident", "delivery", "bus", "taxi", "emergency", "unauthorised")
CLASS_P = np.array([0.40, 0.25, 0.10, 0.08, 0.02, 0.15])
AUTHORISED = np.array([True, True, True, True, True, False])
RISE_S, LOWER_S, EMERGENCY_LOWER_S = 6.0, 4.0, 1.5
ON_LOOP_S = 8.0  # a vehicle stays on the loop this long
OPEN_HOLD_S = 15.0  # local access keeps the bollard down this long after an authorised arrival


@dataclass(frozen=True)
class AccessEvent:
    bollard: int
    t: float
    vehicle_class: str
    granted: bool


@dataclass(frozen=True)
class BollardState:
    t: float
    steps: int
    seed: int
    position: np.ndarray
    height: np.ndarray  # 0 (down) .. 1 (up)
    hold: np.ndarray  # centre's command: UP (normal), DOWN (held down)
    emergency: np.ndarray  # emergency lowering latched until reset
    fault: np.ndarray  # hydraulic fault injected
    obstruction: np.ndarray  # something in the way (injected)
    vehicle_until: np.ndarray  # a vehicle is on the loop until this time
    open_until: np.ndarray  # local access holds the bollard down until this time
    arrivals_per_hour: np.ndarray
    reversals: np.ndarray  # times an obstruction reversed a rise
    events: tuple[AccessEvent, ...] = ()

    @property
    def count(self) -> int:
        return len(self.position)

    @property
    def vehicle(self) -> np.ndarray:
        return self.vehicle_until > self.t


def create(n: int, t: float = 0.0, seed: int = 0, arrivals_per_hour: float = 6.0) -> BollardState:
    z = np.zeros(n)
    return BollardState(
        t=t,
        steps=0,
        seed=seed,
        position=np.full(n, UP, np.int64),
        height=np.ones(n),
        hold=np.full(n, UP, np.int64),
        emergency=np.zeros(n, bool),
        fault=np.zeros(n, bool),
        obstruction=np.zeros(n, bool),
        vehicle_until=z.copy(),
        open_until=z.copy(),
        arrivals_per_hour=np.full(n, float(arrivals_per_hour)),
        reversals=np.zeros(n, np.int64),
    )


def _arrivals(s: BollardState, t: float, dt: float):
    """Vehicles arriving on each loop during (s.t, t]: at most one per bollard per step."""
    rng = np.random.default_rng([s.seed, s.steps])
    p = -np.expm1(-s.arrivals_per_hour * dt / 3600.0)
    arrived = (rng.random(s.count) < p) & (s.vehicle_until <= s.t) & ~s.fault
    classes = rng.choice(len(VEHICLE_CLASSES), size=s.count, p=CLASS_P)
    when = s.t + rng.random(s.count) * dt
    return arrived, classes, when


def step(s: BollardState, t: float) -> BollardState:
    dt = max(0.0, t - s.t)
    if dt > 0:
        arrived, classes, when = _arrivals(s, t, dt)
    else:  # no time, no arrivals
        arrived, classes, when = np.zeros(s.count, bool), np.zeros(s.count, np.int64), np.zeros(s.count)
    vehicle_until, open_until = s.vehicle_until.copy(), s.open_until.copy()
    events = []
    for i in np.flatnonzero(arrived).tolist():
        granted = bool(AUTHORISED[classes[i]])
        events.append(AccessEvent(i, float(when[i]), VEHICLE_CLASSES[classes[i]], granted))
        vehicle_until[i] = when[i] + ON_LOOP_S
        if granted:
            open_until[i] = when[i] + OPEN_HOLD_S
    want_down = (s.hold == DOWN) | s.emergency | (open_until > t)
    on_loop = vehicle_until > t
    blocked = s.obstruction | on_loop
    pos, h = s.position.copy(), s.height.copy()
    reversals = s.reversals.copy()
    # Start moving.
    start_down = want_down & ((pos == UP) | (pos == RISING))
    start_up = ~want_down & ((pos == DOWN) | (pos == LOWERING)) & ~blocked
    pos[start_down] = LOWERING
    pos[start_up] = RISING
    # An obstruction while rising reverses it.
    reverse = (pos == RISING) & blocked
    pos[reverse] = LOWERING
    reversals += reverse
    lower_s = np.where(s.emergency, EMERGENCY_LOWER_S, LOWER_S)
    h = np.where(pos == RISING, h + dt / RISE_S, h)
    h = np.where(pos == LOWERING, h - dt / lower_s, h)
    h = np.clip(h, 0.0, 1.0)
    pos = np.where((pos == RISING) & (h >= 1.0), UP, pos)
    pos = np.where((pos == LOWERING) & (h <= 0.0), DOWN, pos)
    pos = np.where(s.fault, FAULT, pos)
    return replace(
        s,
        t=t,
        steps=s.steps + 1,
        position=pos,
        height=h,
        vehicle_until=vehicle_until,
        open_until=open_until,
        reversals=reversals,
        events=tuple(events),
    )


def command(s: BollardState, i: int, name: str) -> tuple[BollardState, bool, str]:
    """Apply a centre command; returns (state, accepted, reason)."""
    if name not in COMMANDS:
        return s, False, f"unknown command {name!r} (commands: {', '.join(COMMANDS)})"
    if s.fault[i] and name != "reset":
        return s, False, "bollard in fault"
    if name == "raise":
        if s.emergency[i]:
            return s, False, "emergency lowering in force: reset first"
        return _set(s, "hold", i, UP), True, ""
    if name == "lower":
        return _set(s, "hold", i, DOWN), True, ""
    if name == "emergency_lower":
        return _set(s, "emergency", i, True), True, ""
    # reset: clears the emergency latch and a fault that is no longer injected
    s = _set(s, "emergency", i, False)
    return s, True, ""


def _set(s: BollardState, field: str, i: int, value) -> BollardState:
    return with_element(s, field, i, value)


def set_obstruction(s: BollardState, i: int, present: bool) -> BollardState:
    return _set(s, "obstruction", i, bool(present))


def set_fault(s: BollardState, i: int, present: bool) -> BollardState:
    s = _set(s, "fault", i, bool(present))
    if not present:  # repaired: it restarts from down, safely
        s = _set(_set(s, "position", i, DOWN), "height", i, 0.0)
    return s


def vehicle_arrives(s: BollardState, i: int, vehicle_class: str) -> BollardState:
    """Inject an arrival now (tests, scenarios)."""
    k = VEHICLE_CLASSES.index(vehicle_class)
    granted = bool(AUTHORISED[k])
    s = _set(s, "vehicle_until", i, s.t + ON_LOOP_S)
    if granted:
        s = _set(s, "open_until", i, s.t + OPEN_HOLD_S)
    return replace(s, events=s.events + (AccessEvent(i, s.t, vehicle_class, granted),))
