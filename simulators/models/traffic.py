"""Traffic-signal cabinets (junction controllers) as a pure model, vectorised over junctions.

Every junction has the same four signal groups (main road, side road, and a pedestrian
crossing on each) and four detectors (one per approach). Signal plans are shared tables:
a cycle length and, per group, when its green starts and ends within the cycle. The colour
of each group is a pure function of the mode, the plan and the cycle second, itself a
function of the time; so ``step(state, t)`` can jump to any time.

Behaviour:
* controller modes dark, flashing amber, fixed time, actuated (the plan follows the demand
  measured by the detectors), centrally controlled (the centre's plan);
* detector counts and occupancy follow a daily profile with morning and evening peaks;
* a conflict-monitor fault forces flashing amber and latches until a *local* reset;
* lamp-out per group and colour (a red lamp out is the critical case); door; mains loss
  (the junction goes dark).
The centre may change the plan or the mode, never a colour: there is no command for that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simulators.models.columns import with_element

DARK, FLASHING_AMBER, FIXED_TIME, ACTUATED, CENTRAL = 0, 1, 2, 3, 4
MODES = {
    DARK: "dark",
    FLASHING_AMBER: "flashing_amber",
    FIXED_TIME: "fixed_time",
    ACTUATED: "actuated",
    CENTRAL: "central",
}
# Modes the centre may select: every one, "dark" (signals off) included, as a real controller
# allows; the server sends dark only through its critical SetMode (select-before-operate).
CENTRE_MODES = (DARK, FLASHING_AMBER, FIXED_TIME, ACTUATED, CENTRAL)
OFF, RED, AMBER, GREEN, FLASHING = 0, 1, 2, 3, 4
COLOURS = {OFF: "off", RED: "red", AMBER: "amber", GREEN: "green", FLASHING: "flashing_amber"}
GROUPS = ("main", "side", "ped_main", "ped_side")
VEHICLE = np.array([True, True, False, False])
DETECTORS = ("main_in", "main_out", "side_in", "side_out")
AMBER_S = 3.0
LAMP_OK, LAMP_RED_OUT, LAMP_AMBER_OUT, LAMP_GREEN_OUT = 0, 1, 2, 3


@dataclass(frozen=True)
class Plan:
    number: int
    name: str
    cycle: float  # seconds
    green: tuple[tuple[float, float], ...]  # per group: (start, end) of green within the cycle


PLANS = (
    Plan(1, "day", 60.0, ((0, 27), (33, 52), (33, 50), (0, 25))),
    Plan(2, "peak", 90.0, ((0, 47), (53, 82), (53, 80), (0, 45))),
    Plan(3, "night", 45.0, ((0, 22), (28, 38), (28, 36), (0, 20))),
)
PLAN_NUMBERS = tuple(p.number for p in PLANS)
_CYCLE = np.array([p.cycle for p in PLANS])
_GREEN = np.array([p.green for p in PLANS])  # (plans, groups, 2)


@dataclass(frozen=True)
class TrafficState:
    t: float
    steps: int
    seed: int
    lat: np.ndarray
    lon: np.ndarray
    mode: np.ndarray  # configured mode
    plan: np.ndarray  # plan number in force (1-based)
    central_plan: np.ndarray  # plan the centre asked for
    offset: np.ndarray  # seconds: coordination offset of each junction
    demand: np.ndarray  # traffic scale of each junction (1 = average)
    conflict: np.ndarray  # conflict monitor fault latched
    conflict_present: np.ndarray  # the fault condition itself (a reset only clears once it is gone)
    lamp_out: np.ndarray  # (n, groups): LAMP_OK or which lamp is out
    door_open: np.ndarray
    mains_ok: np.ndarray
    # outputs
    effective_mode: np.ndarray  # what the controller actually does (conflict -> flashing amber)
    cycle_second: np.ndarray
    colour: np.ndarray  # (n, groups)
    counts: np.ndarray  # (n, detectors): vehicles since start (wraps at 2**31)
    occupancy: np.ndarray  # (n, detectors): percent of time occupied

    @property
    def count(self) -> int:
        return len(self.lat)


def create(lat, lon, t: float = 0.0, seed: int = 0, mode: int = ACTUATED) -> TrafficState:
    lat = np.atleast_1d(np.asarray(lat, np.float64))
    n = len(lat)
    rng = np.random.default_rng(seed)
    g, d = len(GROUPS), len(DETECTORS)
    s = TrafficState(
        t=t,
        steps=0,
        seed=seed,
        lat=lat,
        lon=np.broadcast_to(np.asarray(lon, np.float64), (n,)).copy(),
        mode=np.full(n, mode, np.int64),
        plan=np.ones(n, np.int64),
        central_plan=np.ones(n, np.int64),
        offset=rng.uniform(0, 90, n).round(),
        demand=rng.uniform(0.5, 1.8, n),
        conflict=np.zeros(n, bool),
        conflict_present=np.zeros(n, bool),
        lamp_out=np.zeros((n, g), np.int64),
        door_open=np.zeros(n, bool),
        mains_ok=np.ones(n, bool),
        effective_mode=np.full(n, mode, np.int64),
        cycle_second=np.zeros(n),
        colour=np.zeros((n, g), np.int64),
        counts=np.zeros((n, d), np.int64),
        occupancy=np.zeros((n, d)),
    )
    return step(s, t)


def flow_per_hour(t: float, tz_offset_h: float = 1.0) -> float:
    """Vehicles per hour on an average approach: night trough, morning and evening peaks."""
    h = ((t / 3600.0) + tz_offset_h) % 24
    return (
        40
        + 520 * np.exp(-(((h - 8.0) / 1.2) ** 2))
        + 600 * np.exp(-(((h - 17.75) / 1.5) ** 2))
        + 250 * np.exp(-(((h - 13.0) / 3.0) ** 2))
    )


def _plan_for_demand(flow: np.ndarray) -> np.ndarray:
    return np.where(flow > 450, 2, np.where(flow < 120, 3, 1))


def step(s: TrafficState, t: float) -> TrafficState:
    dt = max(0.0, t - s.t)
    flow = flow_per_hour(t) * s.demand  # (n,)
    # Mode actually applied: no mains -> dark; a latched conflict -> flashing amber.
    eff = np.where(s.conflict, FLASHING_AMBER, s.mode)
    eff = np.where(s.mains_ok, eff, DARK)
    plan = np.select([eff == ACTUATED, eff == CENTRAL], [_plan_for_demand(flow), s.central_plan], s.plan)
    k = plan - 1
    cycle = _CYCLE[k]
    sec = np.mod(t + s.offset, cycle)
    start, end = _GREEN[k, :, 0], _GREEN[k, :, 1]  # (n, groups)
    x = sec[:, None]
    green = (x >= start) & (x < end)
    amber = VEHICLE & (x >= end) & (x < end + AMBER_S)
    colour = np.where(green, GREEN, np.where(amber, AMBER, RED))
    running = (eff == FIXED_TIME) | (eff == ACTUATED) | (eff == CENTRAL)
    flashing = np.where(VEHICLE, FLASHING, OFF)  # vehicle heads flash amber, pedestrian heads go dark
    colour = np.where(running[:, None], colour, np.where((eff == FLASHING_AMBER)[:, None], flashing, OFF))
    # Detectors: Poisson arrivals at the profile's rate; occupancy ~ flow / saturation.
    rng = np.random.default_rng([s.seed, s.steps])
    lam = np.repeat(flow[:, None], len(DETECTORS), axis=1) * dt / 3600.0
    counts = (s.counts + rng.poisson(lam)) % (2**31)
    occupancy = np.minimum(95.0, np.repeat(flow[:, None], len(DETECTORS), axis=1) / 1800.0 * 100.0)
    occupancy = np.where(s.mains_ok[:, None], occupancy, 0.0)
    return replace(
        s,
        t=t,
        steps=s.steps + 1,
        effective_mode=eff,
        plan=np.where(running, plan, s.plan),
        cycle_second=np.where(running, sec, 0.0),
        colour=colour,
        counts=counts,
        occupancy=occupancy,
    )


def conflicting_greens(colour: np.ndarray) -> np.ndarray:
    """Junctions where the main and side roads show green at once: what a conflict monitor catches."""
    return (colour[..., 0] == GREEN) & (colour[..., 1] == GREEN)


def _set(s: TrafficState, field: str, i, value) -> TrafficState:
    """``s`` with one value set, stepped at its own time so that what follows from it does."""
    return step(with_element(s, field, i, value), s.t)


def set_mode(s: TrafficState, i: int, mode: int) -> TrafficState:
    """The centre selects a mode (one of CENTRE_MODES); raises ValueError otherwise."""
    if mode not in CENTRE_MODES:
        raise ValueError(f"the centre may select modes {[MODES[m] for m in CENTRE_MODES]}, not {mode}")
    return _set(s, "mode", i, mode)


def set_plan(s: TrafficState, i: int, plan: int) -> TrafficState:
    """The centre selects a plan; it applies in fixed-time and central modes."""
    if plan not in PLAN_NUMBERS:
        raise ValueError(f"unknown plan {plan} (plans: {list(PLAN_NUMBERS)})")
    s = _set(s, "central_plan", i, plan)
    return _set(s, "plan", i, plan) if s.mode[i] == FIXED_TIME else s


def conflict_fault(s: TrafficState, i: int, present: bool = True) -> TrafficState:
    """The conflict monitor sees (or stops seeing) conflicting greens; the fault latches."""
    s = _set(s, "conflict_present", i, present)
    return _set(s, "conflict", i, True) if present else s


def local_reset(s: TrafficState, i: int) -> TrafficState:
    """A technician's reset at the cabinet: clears the latch once the condition is gone."""
    if s.conflict_present[i]:
        return s
    return _set(s, "conflict", i, False)


def set_lamp_out(s: TrafficState, i: int, group: int, lamp: int) -> TrafficState:
    lo = s.lamp_out.copy()
    lo[i, group] = lamp
    return step(replace(s, lamp_out=lo), s.t)


def set_door(s: TrafficState, i: int, open_: bool) -> TrafficState:
    return _set(s, "door_open", i, bool(open_))


def set_mains(s: TrafficState, i: int, ok: bool) -> TrafficState:
    return _set(s, "mains_ok", i, bool(ok))
