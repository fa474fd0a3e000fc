from pathlib import Path

import pytest

from city_scada import load_config
from simulators import city as citygen

ROOT = Path(__file__).resolve().parents[2]


def test_dijon_has_the_reference_equipment_counts():
    c = citygen.generate("dijon")
    assert len(c.cabinets) == 1100
    assert sum(c.lamps) == 34_000
    assert len(c.junctions) == 113 and len(c.bollards) == 26 and len(c.vehicles) == 205
    assert len({x.commune for x in c.cabinets}) == 24  # every commune is lit
    names = [x.name for x in c.cabinets] + [x.name for x in c.junctions] + [x.name for x in c.bollards]
    assert len(names) == len(set(names))
    ports = [x.port for x in c.cabinets]
    assert ports == list(range(ports[0], ports[0] + 1100))  # consecutive, one per cabinet
    for x in c.cabinets:
        assert 47.2 < x.lat < 47.45 and 4.9 < x.lon < 5.25


def test_generation_is_stable():
    assert citygen.generate("small") == citygen.generate("small")


def test_gateway_layout_puts_units_behind_ports():
    c = citygen.generate("small", units_per_port=10)
    assert {x.port for x in c.cabinets} == set(range(15020, 15025))
    assert max(x.unit for x in c.cabinets) == 10


def test_written_config_is_what_is_simulated(tmp_path):
    c = citygen.generate("dijon")
    citygen.write_config(c, tmp_path, ROOT / "tags.yaml")
    cfg = load_config(tmp_path)
    names = [x.name for x in c.cabinets] + [x.name for x in c.junctions] + [x.name for x in c.bollards] + c.vehicles
    assert [d.name for d in cfg.devices] == names
    pts = {t: len(cfg.types[t].points) for t in cfg.types}
    assert cfg.tag_count == (1100 * pts["lighting_cabinet"] + 113 * pts["traffic_junction"]
                             + 26 * pts["access_bollard"] + 205 * pts["crew_vehicle"])
    assert cfg.devices[5].io.port == c.cabinets[5].port
    assert cfg.device(c.junctions[0].name).io.url == "opc.tcp://127.0.0.1:4841/traffic/"
    assert cfg.device(c.bollards[0].name).io.port == 1883
    assert (tmp_path / "inventory" / "junctions.csv").read_text().count("\n") == 114
    assert (tmp_path / "alarms.yaml").is_file()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown city preset"):
        citygen.generate("paris")


def test_shipped_demo_inventory_is_the_small_city():
    """`make demo` simulates the small preset and supervises the shipped configuration: the same cabinets."""
    from simulators.inventory import read_cabinets
    shipped = read_cabinets(ROOT / "inventory" / "lighting-cabinets.csv")
    assert shipped == citygen.generate("small").cabinets
