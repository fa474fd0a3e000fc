"""Faults that can be injected into a running simulated city, by name, as a table.

Each fault names the kinds of equipment it applies to and what it does. The same table
serves the control port (``python -m simulators fault ...``) and scenario files, so a
fault spelt in a scenario is checked against it when the scenario is loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulators.models import bollards as bo
from simulators.models import lighting as li
from simulators.models import traffic as tr

if TYPE_CHECKING:
    from simulators.runner import CitySimulator

LIGHTING, TRAFFIC, BOLLARD, CITY = "lighting", "traffic", "bollard", "city"


@dataclass(frozen=True)
class Fault:
    name: str
    kinds: tuple[str, ...]  # equipment it applies to; CITY: no device
    run: Callable[[CitySimulator, str, int, dict[str, Any]], Awaitable[None] | None]
    params: tuple[str, ...] = ()  # required
    description: str = ""
    optional: tuple[str, ...] = ()


def _model(fn_by_kind: dict[str, Callable], *args_from_params: str):
    """A fault that applies a pure model function to one device."""

    def run(city: CitySimulator, kind: str, i: int, params: dict[str, Any]) -> None:
        city.apply(kind, fn_by_kind[kind], i, *(params[a] for a in args_from_params))

    return run


def _const(fn_by_kind: dict[str, Callable], *args):
    def run(city: CitySimulator, kind: str, i: int, params: dict[str, Any]) -> None:
        city.apply(kind, fn_by_kind[kind], i, *args)

    return run


def _signal_lamps_ok(s: tr.TrafficState, i: int) -> tr.TrafficState:
    """Every signal group's lamps of junction ``i`` replaced."""
    for group in range(s.lamp_out.shape[1]):
        s = tr.set_lamp_out(s, i, group, 0)
    return s


async def _silent(city, kind, i, params, on=True):
    city.lighting.set_silent(i, on)


async def _offline(city, kind, i, params, on=True):
    if kind == LIGHTING:
        await city.lighting.set_offline(i, on)
    else:
        city.bollards.set_offline(i, on)


async def _burst(city, kind, i, params):
    city.burst(int(params.get("count", 100)))


async def _broker_outage(city, kind, i, params):
    await city.broker_outage(float(params.get("seconds", 30)))


FAULTS = {
    f.name: f
    for f in (
        Fault(
            "lamp_failure",
            (LIGHTING,),
            _model({LIGHTING: li.fail_lamps}, "count"),
            ("count",),
            "luminaires of a cabinet fail",
        ),
        Fault("lamp_repair", (LIGHTING,), _const({LIGHTING: li.repair_lamps}), (), "every luminaire repaired"),
        Fault("mains_loss", (LIGHTING, TRAFFIC), _const({LIGHTING: li.set_mains, TRAFFIC: tr.set_mains}, False)),
        Fault("mains_restore", (LIGHTING, TRAFFIC), _const({LIGHTING: li.set_mains, TRAFFIC: tr.set_mains}, True)),
        Fault("earth_leakage", (LIGHTING,), _const({LIGHTING: li.trip_earth_leakage}), (), "the breaker trips"),
        Fault("leakage_reset", (LIGHTING,), _const({LIGHTING: li.reset_trip}), (), "the tripped breaker is reset"),
        Fault("door_open", (LIGHTING, TRAFFIC), _const({LIGHTING: li.set_door, TRAFFIC: tr.set_door}, True)),
        Fault("door_close", (LIGHTING, TRAFFIC), _const({LIGHTING: li.set_door, TRAFFIC: tr.set_door}, False)),
        Fault("device_silent", (LIGHTING,), _silent, (), "stops answering; the connection stays open"),
        Fault("device_answer", (LIGHTING,), lambda c, k, i, p: _silent(c, k, i, p, False)),
        Fault("device_offline", (LIGHTING, BOLLARD), _offline, (), "drops off the network"),
        Fault("device_online", (LIGHTING, BOLLARD), lambda c, k, i, p: _offline(c, k, i, p, False)),
        Fault(
            "conflict_fault",
            (TRAFFIC,),
            _const({TRAFFIC: tr.conflict_fault}, True),
            (),
            "conflicting greens: flashing amber, latched",
        ),
        Fault(
            "conflict_clear",
            (TRAFFIC,),
            _const({TRAFFIC: tr.conflict_fault}, False),
            (),
            "the condition is gone (the latch stays until a local reset)",
        ),
        Fault("local_reset", (TRAFFIC,), _const({TRAFFIC: tr.local_reset}), (), "a technician resets the cabinet"),
        Fault(
            "lamp_out",
            (TRAFFIC,),
            _model({TRAFFIC: tr.set_lamp_out}, "group", "lamp"),
            ("group", "lamp"),
            "group 0-3, lamp 1 red / 2 amber / 3 green (0: repaired)",
        ),
        Fault("signal_lamps_repair", (TRAFFIC,), _const({TRAFFIC: _signal_lamps_ok}), (), "every signal lamp replaced"),
        Fault("obstruction", (BOLLARD,), _const({BOLLARD: bo.set_obstruction}, True)),
        Fault("obstruction_clear", (BOLLARD,), _const({BOLLARD: bo.set_obstruction}, False)),
        Fault("bollard_fault", (BOLLARD,), _const({BOLLARD: bo.set_fault}, True)),
        Fault("bollard_repair", (BOLLARD,), _const({BOLLARD: bo.set_fault}, False)),
        Fault(
            "vehicle_arrival", (BOLLARD,), _model({BOLLARD: bo.vehicle_arrives}, "vehicle_class"), ("vehicle_class",)
        ),
        Fault("burst", (CITY,), _burst, (), "many cabinets change mode at once: a burst of changes", ("count",)),
        Fault("broker_outage", (CITY,), _broker_outage, (), "every MQTT link drops for a while", ("seconds",)),
    )
}

# What a crew's repair does to each kind of equipment (simulators/runner.py CitySimulator.repair):
# the faults that undo what a technician on site can fix, in order, whatever the order's alarm
# (an earth-leakage order's breaker, a door found open, as well as the lamps). A junction's
# conflict latches: the condition is cleared first, then the local reset can release the latch.
# Not a crew's to fix: mains loss (the grid operator's), links (the network's).
REPAIRS: dict[str, tuple[str, ...]] = {
    LIGHTING: ("lamp_repair", "leakage_reset", "door_close"),
    TRAFFIC: ("conflict_clear", "local_reset", "signal_lamps_repair", "door_close"),
    BOLLARD: ("bollard_repair",),
}
assert all(name in FAULTS for names in REPAIRS.values() for name in names), "REPAIRS names a fault FAULTS lacks"
