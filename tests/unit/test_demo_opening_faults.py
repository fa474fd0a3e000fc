"""``scada demo``'s opening faults (city_scada/demo.py): a scenario the city simulator accepts, on
the city's own devices, at the same real seconds whatever the acceleration, no bollard fault
without a broker (no bollards are simulated then)."""

from __future__ import annotations

import pytest

from city_scada.demo import DEMO_FAULTS_S, _opening_faults
from common.yamlsrc import load
from simulators import city as citygen


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("acceleration", [1.0, 60.0])
def test_opening_faults_name_the_city_s_devices_at_real_seconds(tmp_path, preset, acceleration):
    city = citygen.generate(preset)
    steps = list(load(_opening_faults(city, acceleration, tmp_path, "127.0.0.1:1883")))
    assert [(s["fault"], s["device"]) for s in steps] == [
        ("lamp_failure", city.cabinets[0].name),
        ("conflict_fault", city.junctions[0].name),
        ("bollard_fault", city.bollards[0].name),
    ]
    assert [s["at"] / acceleration for s in steps] == pytest.approx(list(DEMO_FAULTS_S))


def test_no_bollard_fault_without_a_broker(tmp_path):
    steps = list(load(_opening_faults(citygen.generate("tiny"), 1.0, tmp_path, None)))
    assert [s["fault"] for s in steps] == ["lamp_failure", "conflict_fault"]
