"""The configuration loader on valid input: names, ids, defaults, inventories, immutability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from drivers.modbus.config import ModbusEndpoint, ModbusPoint, parse_endpoint
from scada.config import DIAG_COUNT, DIAG_POINTS, Config, load_config
from scada.tagdb import ANALOG, DISCRETE
from scada.yamlsrc import ConfigError

TYPES = """\
equipment_types:
  lighting_cabinet:
    class: lighting
    driver: modbus
    poll_interval: 2.5
    points:
      mode:
        table: holding
        address: 0
        enum: {2: forced_off, 0: auto, 1: forced_on}
        writable: true
      power:
        table: input
        address: 0
        type: float32
        unit: kW
        deadband: 0.01
      energy:
        table: input
        address: 2
        type: uint32
        word_order: little
        scale: 0.1
      door_open:
        table: discrete
        address: 0
  bollard:
    class: bollard
    driver: modbus
    timeout: 3
    points:
      position:
        table: input
        address: 0
      raised:
        table: discrete
        address: 0
"""

DEVICES = """\
devices:
  - name: LC-TAL-001
    type: lighting_cabinet
    commune: Talant
    lat: 47.33721
    lon: 5.00652
    endpoint: 10.20.1.11:502
  - name: BO-DIJ-001
    type: bollard
    commune: Dijon
    lat: 47.32164
    lon: 5.04148
    endpoint: tcp://bollards.dijon.local
    unit: 7
    poll_interval: 0.5
  - name: LC-TAL-002
    type: lighting_cabinet
    commune: Talant
    lat: 47.33402
    lon: 5.01187
    endpoint: 10.20.1.12:1502
    timeout: 4
    description: Rue des Ecoles
"""


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write(tmp_path, {"tags.yaml": TYPES + "\n" + DEVICES}))


def test_tag_names_are_commune_class_device_point(config: Config) -> None:
    names, _, _ = config.tag_table()
    assert names[:config.tag_count] == [
        "Talant/lighting/LC-TAL-001/mode", "Talant/lighting/LC-TAL-001/power",
        "Talant/lighting/LC-TAL-001/energy", "Talant/lighting/LC-TAL-001/door_open",
        "Dijon/bollard/BO-DIJ-001/position", "Dijon/bollard/BO-DIJ-001/raised",
        "Talant/lighting/LC-TAL-002/mode", "Talant/lighting/LC-TAL-002/power",
        "Talant/lighting/LC-TAL-002/energy", "Talant/lighting/LC-TAL-002/door_open",
    ]
    device = config.device("BO-DIJ-001")
    assert config.tag_name(device, config.types["bollard"].point("raised")) == "Dijon/bollard/BO-DIJ-001/raised"


def test_tag_ids_are_dense_and_follow_the_devices(config: Config) -> None:
    assert [d.name for d in config.devices] == ["LC-TAL-001", "BO-DIJ-001", "LC-TAL-002"]
    assert [d.first_tag_id for d in config.devices] == [0, 4, 6]
    assert config.tag_count == 10
    ids = np.concatenate([config.tag_ids(d) for d in config.devices])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.arange(10))
    np.testing.assert_array_equal(config.tag_ids(config.device("LC-TAL-002")), [6, 7, 8, 9])

    names, kinds, deadbands = config.tag_table()
    assert len(names) == len(kinds) == len(deadbands) == config.total_tag_count == 10 + 3 * DIAG_COUNT
    assert kinds.dtype == np.uint8 and deadbands.dtype == np.float64
    for d in config.devices:  # row i of the table is tag id i
        for tag_id, point in zip(config.tag_ids(d), config.types[d.type].points):
            assert names[tag_id] == config.tag_name(d, point)
            assert kinds[tag_id] == point.kind
            assert deadbands[tag_id] == point.deadband
    assert deadbands[1] == 0.01


def test_every_device_has_diagnostic_tags_after_the_process_tags(config: Config) -> None:
    names, kinds, _ = config.tag_table()
    assert len(config.max_ages()) == len(names)
    bollard = config.device("BO-DIJ-001")
    ids = config.diag_ids(bollard)
    np.testing.assert_array_equal(ids, np.arange(10 + DIAG_COUNT, 10 + 2 * DIAG_COUNT))
    assert [names[i] for i in ids] == [f"Dijon/bollard/BO-DIJ-001/Diagnostics/{p.name}" for p in DIAG_POINTS]
    assert [kinds[i] for i in ids] == [p.kind for p in DIAG_POINTS]
    assert len(set(names)) == len(names)


def test_defaults(config: Config) -> None:
    lc1, bo1, lc2 = config.devices
    # poll_interval and timeout: the type's, unless the device says otherwise; 1 s when neither does
    assert (lc1.poll_interval, lc1.timeout) == (2.5, 1.0)
    assert (lc2.poll_interval, lc2.timeout) == (2.5, 4.0)
    assert (bo1.poll_interval, bo1.timeout) == (0.5, 3.0)
    assert config.types["bollard"].poll_interval == 1.0
    # Modbus endpoint: unit 1, port 502, tcp:// accepted
    assert lc1.io == ModbusEndpoint("10.20.1.11", 502, 1)
    assert lc2.io == ModbusEndpoint("10.20.1.12", 1502, 1)
    assert bo1.io == ModbusEndpoint("bollards.dijon.local", 502, 7)
    assert (lc1.description, lc2.description) == ("", "Rue des Ecoles")
    first_device_line = TYPES.count("\n") + 3  # after the types, a blank line and `devices:`
    assert lc1.source == f"{config.directory / 'tags.yaml'}:{first_device_line}"
    # points: type by table, big-endian words, no scaling, not writable, no deadband
    t = config.types["lighting_cabinet"]
    assert t.point("mode").io == ModbusPoint("holding", 0, "uint16", "big", 1.0, 0.0)
    assert t.point("power").io.word_order == "big"
    assert t.point("energy").io == ModbusPoint("input", 2, "uint32", "little", 0.1, 0.0)
    assert t.point("door_open").io.type == "bool"
    assert config.types["bollard"].point("position").io.type == "uint16"
    assert (t.point("power").writable, t.point("mode").writable) == (False, True)
    assert (t.point("energy").deadband, t.point("energy").unit, t.point("energy").range) == (0.0, "", None)


def test_enum_makes_a_discrete_point_with_sorted_labels(config: Config) -> None:
    t = config.types["lighting_cabinet"]
    mode = t.point("mode")
    assert mode.io.kind == ANALOG  # a uint16 register...
    assert mode.kind == DISCRETE  # ...holding states
    assert mode.enum == ((0, "auto"), (1, "forced_on"), (2, "forced_off"))
    assert t.point("power").kind == ANALOG and t.point("power").enum is None
    assert t.point("door_open").kind == DISCRETE


def test_configuration_is_frozen(config: Config) -> None:
    device = config.devices[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.lat = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.types["bollard"].points[0].deadband = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.devices = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.types["other"] = config.types["bollard"]  # type: ignore[index]
    assert isinstance(config.devices, tuple)
    assert isinstance(config.types["bollard"].points, tuple)


INVENTORY_TAGS = TYPES + """
devices:
  - name: LC-TAL-001
    type: lighting_cabinet
    commune: Talant
    lat: 47.33721
    lon: 5.00652
    endpoint: 10.20.1.11:502
inventories:
  - file: inventory/lighting.csv
    type: lighting_cabinet
  - file: bollards.csv
    commune: Dijon
"""


def test_csv_inventories(tmp_path: Path) -> None:
    lighting = (
        "\ufeff# GIS export, 2024-03: lighting cabinets\n"
        "name,commune,lat,lon,endpoint,unit\n"
        "LC-TAL-002,Talant,47.33402,5.01187,10.20.1.12:502,1\n"
        "   # LC-TAL-003 dismantled in 2023\n"
        "\n"
        "LC-CHE-001,Chenôve,47.28955,5.01402,10.20.3.11:502,\n"
    )
    bollards = (
        "name,type,lat,lon,endpoint,unit,poll_interval\n"
        "BO-DIJ-001,bollard,47.32164,5.04148,10.30.0.1:502,1,0.5\n"
        "BO-DIJ-002,bollard,47.32201,5.04316,10.30.0.1:502,2,\n"
    )
    config = load_config(write(tmp_path, {
        "tags.yaml": INVENTORY_TAGS, "inventory/lighting.csv": lighting, "bollards.csv": bollards,
    }))
    names = [d.name for d in config.devices]
    assert names == ["LC-TAL-001", "LC-TAL-002", "LC-CHE-001", "BO-DIJ-001", "BO-DIJ-002"]
    lc2, che = config.device("LC-TAL-002"), config.device("LC-CHE-001")
    # `type` comes from the inventory entry when the CSV has no such column
    assert lc2.type == che.type == "lighting_cabinet"
    # the BOM is not part of the first column's name; comment and blank lines count as lines
    assert lc2.source == f"{tmp_path / 'inventory' / 'lighting.csv'}:3"
    assert che.source == f"{tmp_path / 'inventory' / 'lighting.csv'}:6"
    assert che.commune == "Chenôve"
    assert che.io == ModbusEndpoint("10.20.3.11", 502, 1)  # an empty cell takes the default
    # `commune` comes from the inventory entry; CSV values are converted like YAML ones
    bo1, bo2 = config.device("BO-DIJ-001"), config.device("BO-DIJ-002")
    assert (bo1.commune, bo1.lat, bo1.poll_interval) == ("Dijon", 47.32164, 0.5)
    assert bo2.poll_interval == 1.0
    # a gateway: one host:port, several unit ids, is not a duplicate
    assert (bo1.io.connection, bo1.io.unit, bo2.io.unit) == (("10.30.0.1", 502), 1, 2)
    assert [d.first_tag_id for d in config.devices] == [0, 4, 8, 12, 14]
    assert config.tag_name(bo2, config.types["bollard"].points[1]) == "Dijon/bollard/BO-DIJ-002/raised"


def test_a_csv_type_column_wins_over_the_inventory_default(tmp_path: Path) -> None:
    tags = TYPES + "inventories:\n  - file: mixed.csv\n    type: lighting_cabinet\n"
    csv = ("name,type,commune,lat,lon,endpoint\n"
           "LC-TAL-001,,Talant,47.33721,5.00652,10.20.1.11:502\n"
           "BO-TAL-001,bollard,Talant,47.33518,5.00970,10.20.1.50:502\n")
    config = load_config(write(tmp_path, {"tags.yaml": tags, "mixed.csv": csv}))
    assert [d.type for d in config.devices] == ["lighting_cabinet", "bollard"]


def test_yaml_merge_key_shares_keys_and_allows_overrides(tmp_path: Path) -> None:
    tags = """\
equipment_types:
  lighting_cabinet:
    class: lighting
    driver: modbus
    points:
      phase_1_current: &current {table: input, type: float32, unit: A, deadband: 0.1, address: 10}
      phase_2_current:
        <<: *current
        address: 12
      phase_3_current: {<<: *current, address: 14, deadband: 0.2}
devices:
  - &cabinet
    name: LC-TAL-001
    type: lighting_cabinet
    commune: Talant
    lat: 47.33721
    lon: 5.00652
    endpoint: 10.20.1.11:502
  - <<: *cabinet
    name: LC-TAL-002
    endpoint: 10.20.1.12:502
"""
    config = load_config(write(tmp_path, {"tags.yaml": tags}))
    points = config.types["lighting_cabinet"].points
    assert [(p.name, p.io.address, p.io.type, p.unit, p.deadband) for p in points] == [
        ("phase_1_current", 10, "float32", "A", 0.1),
        ("phase_2_current", 12, "float32", "A", 0.1),
        ("phase_3_current", 14, "float32", "A", 0.2),
    ]
    lc1, lc2 = config.devices
    assert (lc2.name, lc2.commune, lc2.lat, lc2.io.host) == ("LC-TAL-002", "Talant", 47.33721, "10.20.1.12")
    assert lc1.io.host == "10.20.1.11"


def test_a_key_written_twice_next_to_a_merge_key_is_still_a_duplicate(tmp_path: Path) -> None:
    tags = """\
equipment_types:
  lighting_cabinet:
    class: lighting
    driver: modbus
    points:
      power: &power {table: input, type: float32, address: 0}
      power_l2:
        <<: *power
        address: 2
        address: 4
devices: []
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"tags.yaml": tags}))
    err = info.value
    assert (err.line, err.key) == (10, "equipment_types.lighting_cabinet.points.power_l2.address")
    assert "duplicate key (first defined on line 9)" in str(err)


def test_alarms_are_loaded_against_the_types(tmp_path: Path) -> None:
    alarms = """\
services:
  lighting_maintenance: {label: Lighting maintenance, ack_deadline_s: 1800}
alarms:
  - {name: door_open, type: lighting_cabinet, point: door_open, condition: state, states: [1],
     priority: high, message: "{device}: door open", service: lighting_maintenance}
  - {name: comm_loss, type: bollard, condition: comm_loss, priority: critical,
     message: "{commune} {device}: no communication", service: lighting_maintenance, on_delay: 10}
"""
    config = load_config(write(tmp_path, {"tags.yaml": TYPES + DEVICES, "alarms.yaml": alarms}))
    door, comm = config.alarms.alarms
    assert (door.point, door.states, door.severity, door.limit) == ("door_open", (1,), 750, None)
    assert (comm.point, comm.severity, comm.on_delay) == (None, 900, 10.0)
    assert config.alarms.services["lighting_maintenance"].ack_deadline_s == 1800.0
    assert door.source.endswith("alarms.yaml:4")


def test_the_shipped_configuration_loads() -> None:
    config = load_config(Path(__file__).resolve().parents[2])
    assert config.tag_count == sum(len(config.types[d.type].points) for d in config.devices) > 0
    names, _, _ = config.tag_table()
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("text", "expected"), [
    ("10.1.2.3:502", ("10.1.2.3", 502)),
    ("10.1.2.3", ("10.1.2.3", 502)),
    ("tcp://cabinet-12.lighting.local:1502", ("cabinet-12.lighting.local", 1502)),
    ("[fd00::12]:502", ("fd00::12", 502)),
    ("[fd00::12]", ("fd00::12", 502)),
])
def test_modbus_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", [
    "10.1.2.3;502", "10.1.2.3:", "10.1.2.3:70000", "10.1.2.300:502", "http://10.1.2.3:502",
    "10.1.2.3:502:1", "10.1.2.3 502", "[fd00::zz]:502", ":502",
])
def test_bad_modbus_endpoints(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)
