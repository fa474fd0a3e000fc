import pytest

from common.yamlsrc import ConfigError
from simulators.city import generate
from simulators.runner import CitySimulator, FaultError
from simulators.scenario import load_scenario


@pytest.fixture
def city():
    return CitySimulator(generate("tiny"), opcua_endpoint="opc.tcp://127.0.0.1:1/traffic/")


def test_scenario_is_loaded_sorted_and_checked(tmp_path, city):
    p = tmp_path / "s.yaml"
    p.write_text("- {at: 30, fault: mains_loss, device: LC-DIJ-001}\n"
                 "- {at: 5, fault: lamp_failure, device: LC-DIJ-002, count: 2}\n"
                 "- {at: 9, fault: burst, count: 3}\n")
    steps = load_scenario(p, city)
    assert [(s.at, s.fault) for s in steps] == [(5, "lamp_failure"), (9, "burst"), (30, "mains_loss")]
    assert steps[0].params == {"count": 2}


@pytest.mark.parametrize("line, message", [
    ("- {at: 1, fault: lamp_explosion, device: LC-DIJ-001}", "unknown fault 'lamp_explosion'"),
    ("- {at: 1, fault: mains_loss, device: LC-XXX-001}", "unknown device 'LC-XXX-001'"),
    ("- {at: 1, fault: lamp_failure, device: LC-DIJ-001}", "missing count"),
    ("- {at: 1, fault: conflict_fault, device: LC-DIJ-001}", "does not apply to a lighting device"),
    ("- {at: -1, fault: mains_loss, device: LC-DIJ-001}", "must not be negative"),
    ("- {fault: mains_loss, device: LC-DIJ-001}", "required key is missing"),
    ("- {at: 1, fault: obstruction, device: B-DIJ-001}", "bollard simulator is not running"),
])
def test_bad_scenario_lines_are_located_errors(tmp_path, city, line, message):
    p = tmp_path / "s.yaml"
    p.write_text("- {at: 0, fault: door_open, device: LC-DIJ-001}\n" + line + "\n")
    with pytest.raises(ConfigError) as exc:
        load_scenario(p, city)
    assert message in str(exc.value)
    assert exc.value.line == 2


def test_check_refuses_parameters_a_fault_does_not_take(city):
    with pytest.raises(FaultError, match="unknown colour"):
        city.check("mains_loss", "LC-DIJ-001", {"colour": 1})
    with pytest.raises(FaultError, match="whole city"):
        city.check("burst", "LC-DIJ-001", {})
