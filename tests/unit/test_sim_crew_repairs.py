"""What a crew's repair does in the simulated city (CitySimulator.repair, faults.REPAIRS): each
kind of equipment back to working order, so that its alarm clears; and what a passer-by sees."""

from __future__ import annotations

import pytest

from simulators import faults as fa
from simulators.city import generate
from simulators.runner import CitySimulator


@pytest.fixture
def city():
    # Not started: the models are changed as the adapters would, no socket is opened.
    return CitySimulator(generate("tiny"), opcua_endpoint="opc.tcp://127.0.0.1:1/traffic/", failure_rate=0.0)


def test_every_repair_names_a_fault_of_its_kind():
    for kind, names in fa.REPAIRS.items():
        assert names and all(kind in fa.FAULTS[n].kinds for n in names), kind


async def test_a_cabinet_gets_its_lamps_breaker_and_door_back(city):
    cab = city.city.cabinets[1].name
    await city.inject("lamp_failure", cab, count=5)
    await city.inject("earth_leakage", cab)
    await city.inject("door_open", cab)
    assert city.faulty() == {cab}
    assert await city.repair(cab) == ("lamp_repair", "leakage_reset", "door_close")
    s = city.lighting.state
    assert s.failed[1] == 0 and not s.leakage_trip[1] and not s.door_open[1]
    assert city.faulty() == set() and city.repaired == 1


async def test_a_junction_is_cleared_then_reset_and_its_lamps_replaced(city):
    j = city.city.junctions[1].name
    await city.inject("conflict_fault", j)
    await city.inject("lamp_out", j, group=2, lamp=1)
    assert city.faulty() == {j}
    assert await city.repair(j) == ("conflict_clear", "local_reset", "signal_lamps_repair", "door_close")
    s = city.traffic.state
    # The latch is released only because the condition was cleared first.
    assert not s.conflict[1] and not s.conflict_present[1] and not s.lamp_out[1].any()
    assert city.faulty() == set()


async def test_what_the_city_cannot_repair_is_logged_not_raised(city, caplog):
    assert city.kind_of("V-001") is None and city.kind_of(city.city.bollards[0].name) == fa.BOLLARD
    assert await city.repair("V-001") == ()
    # The bollards run only with a broker: the repair says so and goes on.
    assert await city.repair(city.city.bollards[0].name) == ()
    assert "bollard simulator is not running" in caplog.text and city.repaired == 0


def test_a_passer_by_sees_the_equipment_of_the_parts_that_run(city):
    kinds = {s.kind for s in city.spots()}
    assert kinds == {fa.LIGHTING, fa.TRAFFIC}  # no broker: no bollards
    assert len(city.spots()) == len(city.city.cabinets) + len(city.city.junctions)
