"""The configuration loader on valid input: names, ids, defaults, inventories, immutability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from drivers.modbus.config import (
    DEFAULT_GROUP,
    ModbusEndpoint,
    ModbusPoint,
    ModbusType,
    parse_endpoint,
)
from scada.config import DIAG_COUNT, DIAG_POINTS, Config
from city_scada import load_config
from scada.tagdb import ANALOG, DISCRETE
from common.yamlsrc import ConfigError

ROOT = Path(__file__).resolve().parents[2]

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


# Modbus type options (read_gap, poll groups), RTU endpoints, demotion.

POLL_GROUP_TAGS = """\
equipment_types:
  lighting_cabinet:
    class: lighting
    driver: modbus
    poll_interval: 2
    read_gap: 0
    poll_groups:
      slow: 60
      hourly: 3600.5
    points:
      power: {table: input, address: 0, type: float32}
      energy: {table: input, address: 2, type: uint32, poll_group: slow}
      lamp_hours: {table: input, address: 4, type: uint32, poll_group: hourly}
  bollard:
    class: bollard
    driver: modbus
    points:
      position: {table: input, address: 0}
devices:
  - {name: LC-TAL-001, type: lighting_cabinet, commune: Talant, lat: 47.33721, lon: 5.00652, endpoint: 10.20.1.11}
  - {name: BO-DIJ-001, type: bollard, commune: Dijon, lat: 47.32164, lon: 5.04148, endpoint: 10.30.0.1}
"""


def test_modbus_type_options_and_poll_groups(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"tags.yaml": POLL_GROUP_TAGS}))
    lighting, bollard = config.types["lighting_cabinet"], config.types["bollard"]
    # groups keep their order of declaration; intervals are seconds as floats
    assert lighting.io == ModbusType(read_gap=0, poll_groups=(("slow", 60.0), ("hourly", 3600.5)))
    assert [(p.name, p.io.poll_group) for p in lighting.points] == [
        ("power", DEFAULT_GROUP), ("energy", "slow"), ("lamp_hours", "hourly")]
    assert DEFAULT_GROUP == ""  # a point without poll_group is polled at the device's poll_interval
    # a type without the keys: read_gap 8, no poll groups
    assert bollard.io == ModbusType() == ModbusType(read_gap=8, poll_groups=())
    assert bollard.point("position").io.poll_group == DEFAULT_GROUP
    assert config.device("LC-TAL-001").poll_interval == 2.0


def test_an_unknown_poll_group_names_the_types_groups(tmp_path: Path) -> None:
    tags = POLL_GROUP_TAGS.replace("poll_group: hourly}", "poll_group: daily}")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"tags.yaml": tags}))
    err = info.value
    assert (err.line, err.key, err.value) == (
        13, "equipment_types.lighting_cabinet.points.lamp_hours.poll_group", "daily")
    assert "slow, hourly" in str(err)


RTU_TAGS = TYPES + """
devices:
  - {name: LC-TAL-001, type: lighting_cabinet, commune: Talant, lat: 47.33721, lon: 5.00652,
     endpoint: "rtu:///dev/ttyUSB0"}
  - {name: LC-TAL-002, type: lighting_cabinet, commune: Talant, lat: 47.33402, lon: 5.01187,
     endpoint: " RTU:///dev/ttyUSB2 ", unit: 247, baudrate: 9600, parity: none, stop_bits: 2}
  - {name: LC-TAL-003, type: lighting_cabinet, commune: Talant, lat: 47.33518, lon: 5.00970,
     endpoint: "rtu:///dev/serial/by-id/usb-FTDI-if00-port0", unit: 1, baudrate: 115200, parity: odd}
  - {name: BO-DIJ-001, type: bollard, commune: Dijon, lat: 47.32164, lon: 5.04148,
     endpoint: "rtu:///dev/ttyUSB0", unit: 2, parity: even, stop_bits: 1}
  - {name: BO-DIJ-002, type: bollard, commune: Dijon, lat: 47.32201, lon: 5.04316, endpoint: "10.30.0.1", unit: 0}
  - {name: BO-DIJ-003, type: bollard, commune: Dijon, lat: 47.32210, lon: 5.04320, endpoint: "10.30.0.2", unit: 255}
"""


def test_rtu_endpoints(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"tags.yaml": RTU_TAGS}))
    lc1, lc2, lc3, bo1, bo2, bo3 = (d.io for d in config.devices)
    # defaults: unit 1, 19200 bit/s, even parity, 1 stop bit (the Modbus RTU standard)
    assert lc1 == ModbusEndpoint("", 0, 1, serial_port="/dev/ttyUSB0", baudrate=19200, parity="E", stop_bits=1)
    # rtu:// in any case and surrounding spaces; parity none -> N, odd -> O, even -> E
    assert lc2 == ModbusEndpoint("", 0, 247, serial_port="/dev/ttyUSB2", baudrate=9600, parity="N", stop_bits=2)
    assert lc3 == ModbusEndpoint("", 0, 1, serial_port="/dev/serial/by-id/usb-FTDI-if00-port0",
                                 baudrate=115200, parity="O", stop_bits=1)
    assert (bo1.unit, bo1.parity, bo1.stop_bits) == (2, "E", 1)
    assert lc1.is_rtu and not bo2.is_rtu
    # devices on one serial line share its connection; the unit tells them apart
    assert lc1.connection == bo1.connection == ("rtu", "/dev/ttyUSB0") != lc2.connection
    assert lc3.connection == ("rtu", "/dev/serial/by-id/usb-FTDI-if00-port0")
    assert lc1.identity == (("rtu", "/dev/ttyUSB0"), 1) != bo1.identity
    assert lc1.identity != lc3.identity  # unit 1 on two lines: two devices
    # Modbus TCP: units 0 and 255 are what directly connected devices answer to
    assert (bo2, bo3) == (ModbusEndpoint("10.30.0.1", 502, 0), ModbusEndpoint("10.30.0.2", 502, 255))
    assert bo2.connection == ("10.30.0.1", 502) and bo2.serial_port == ""


def test_rtu_settings_from_a_csv_inventory(tmp_path: Path) -> None:
    csv = ("name,commune,lat,lon,endpoint,unit,baudrate,parity,stop_bits\n"
           "LC-TAL-001,Talant,47.33721,5.00652,rtu:///dev/ttyUSB1,3,9600,none,2\n"
           "LC-TAL-002,Talant,47.33402,5.01187,rtu:///dev/ttyUSB2,4,,,\n"
           "LC-TAL-003,Talant,47.33518,5.00970,10.20.1.13:502,,,,\n")
    tags = TYPES + "inventories:\n  - file: cabinets.csv\n    type: lighting_cabinet\n"
    config = load_config(write(tmp_path, {"tags.yaml": tags, "cabinets.csv": csv}))
    lc1, lc2, lc3 = (d.io for d in config.devices)
    assert lc1 == ModbusEndpoint("", 0, 3, serial_port="/dev/ttyUSB1", baudrate=9600, parity="N", stop_bits=2)
    assert lc2 == ModbusEndpoint("", 0, 4, serial_port="/dev/ttyUSB2")  # empty cells take the defaults
    assert lc3 == ModbusEndpoint("10.20.1.13", 502, 1)  # empty serial cells on a TCP row are absent, not an error


@pytest.mark.parametrize(("second", "key", "fragment"), [
    ("endpoint: 10.20.1.12:502, baudrate: 9600", "devices[1].baudrate", "serial line setting"),
    ("endpoint: 10.20.1.12:502, stop_bits: 2", "devices[1].stop_bits", "serial line setting"),
    ("endpoint: 'rtu:///dev/ttyUSB0', unit: 0", "devices[1].unit", "between 1 and 247"),
    ("endpoint: 'rtu:///dev/ttyUSB0', unit: 248", "devices[1].unit", "between 1 and 247"),
    ("endpoint: 10.20.1.12:502, unit: 256", "devices[1].unit", "between 0 and 255"),
    ("endpoint: 'rtu://ttyUSB0'", "devices[1].endpoint", "rtu:///dev/"),
    ("endpoint: 'rtu:///dev/ttyUSB0', baudrate: 14400", "devices[1].baudrate", "19200"),
    ("endpoint: 'rtu:///dev/ttyUSB0', parity: mark", "devices[1].parity", "none, even, odd"),
    ("endpoint: 'rtu:///dev/ttyUSB0', stop_bits: 3", "devices[1].stop_bits", "1, 2"),
])
def test_bad_rtu_and_unit_settings(tmp_path: Path, second: str, key: str, fragment: str) -> None:
    tags = TYPES + f"""
devices:
  - {{name: LC-TAL-001, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: 10.20.1.11:502}}
  - {{name: LC-TAL-002, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, {second}}}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"tags.yaml": tags}))
    assert (info.value.key, info.value.line) == (key, TYPES.count("\n") + 4)
    assert fragment in str(info.value)


def test_one_serial_line_and_unit_under_two_names_is_a_duplicate(tmp_path: Path) -> None:
    tags = TYPES + """
devices:
  - {name: LC-TAL-001, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0,
     endpoint: "rtu:///dev/ttyUSB0", unit: 5}
  - {name: LC-TAL-002, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0,
     endpoint: "rtu:///dev/ttyUSB1", unit: 5}
  - {name: LC-TAL-003, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0,
     endpoint: "RTU:///dev/ttyUSB0", unit: 5, baudrate: 9600}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"tags.yaml": tags}))
    err = info.value
    # unit 5 on ttyUSB1 is another device; the third is LC-TAL-001 again, whatever its line speed
    assert (err.key, err.line, err.value) == ("devices[2].endpoint", TYPES.count("\n") + 8, "RTU:///dev/ttyUSB0")
    assert "same device address as LC-TAL-001" in str(err)


def test_demotion_defaults_and_overrides(tmp_path: Path) -> None:
    tags = TYPES.replace("    timeout: 3\n", "    timeout: 3\n    demote_after: 5\n    demote_for: 60\n") + """
devices:
  - {name: LC-TAL-001, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: 10.20.1.11}
  - {name: LC-TAL-002, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: 10.20.1.12,
     demote_after: 0, demote_for: 2.5}
  - {name: BO-DIJ-001, type: bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: 10.30.0.1}
  - {name: BO-DIJ-002, type: bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: 10.30.0.2, demote_after: 1}
"""
    config = load_config(write(tmp_path, {"tags.yaml": tags}))
    lighting, bollard = config.types["lighting_cabinet"], config.types["bollard"]
    # the type's values: 3 failed polls, 10 s off scan, unless the type says otherwise
    assert (lighting.demote_after, lighting.demote_for) == (3, 10.0)
    assert (bollard.demote_after, bollard.demote_for) == (5, 60.0)
    lc1, lc2, bo1, bo2 = config.devices
    assert (lc1.demote_after, lc1.demote_for) == (3, 10.0)
    assert (lc2.demote_after, lc2.demote_for) == (0, 2.5)  # 0: never taken off scan
    assert (bo1.demote_after, bo1.demote_for) == (5, 60.0)
    assert (bo2.demote_after, bo2.demote_for) == (1, 60.0)  # one key overridden, the other inherited
    assert isinstance(lc1.demote_after, int) and isinstance(lc1.demote_for, float)


@pytest.mark.parametrize(("where", "text", "key"), [
    ("type", "    demote_after: -1\n", "equipment_types.bollard.demote_after"),
    ("type", "    demote_after: 2.5\n", "equipment_types.bollard.demote_after"),
    ("type", "    demote_for: 0\n", "equipment_types.bollard.demote_for"),
    ("device", ", demote_for: -5", "devices[0].demote_for"),
    ("device", ", demote_after: never", "devices[0].demote_after"),
])
def test_bad_demotion_settings(tmp_path: Path, where: str, text: str, key: str) -> None:
    types = TYPES.replace("    timeout: 3\n", "    timeout: 3\n" + text) if where == "type" else TYPES
    device = "  - {name: BO-DIJ-001, type: bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: 10.30.0.1%s}\n"
    tags = types + "devices:\n" + device % (text if where == "device" else "")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {"tags.yaml": tags}))
    assert info.value.key == key


def test_history_settings_per_type_and_point(tmp_path: Path) -> None:
    tags = (ROOT / "tags.yaml").read_text().partition("\ninventories:")[0].replace(
        "    poll_interval: 1.0        # seconds, for every device of this type unless it says otherwise",
        "    poll_interval: 1.0\n    history: {deviation: 2, max_interval: 600, retention_days: 30}", 1)
    tags = tags.replace("        deadband: 0.5\n        range: [0, 300]",
                        "        deadband: 0.5\n        range: [0, 300]\n        history_deviation: 0.5", 1)
    tags = tags.replace("  access_bollard:\n", "  access_bollard:\n    history: false\n", 1)
    tags += ("devices:\n  - {name: LC-1, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: '10.0.0.1:502'}\n"
             "  - {name: BO-1, type: access_bollard, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: '10.0.0.2:1883'}\n")
    config = load_config(write(tmp_path, {"tags.yaml": tags}))
    lc = config.types["lighting_cabinet"]
    assert (lc.history.deviation, lc.history.max_interval, lc.history.retention_days) == (2, 600, 30)
    assert lc.point("mains_voltage").history_deviation == 0.5
    assert config.types["access_bollard"].history.enabled is False
    h = config.history_table()
    names, _, _ = config.tag_table()
    at = {n: i for i, n in enumerate(names)}
    power, volts = at["Dijon/lighting/LC-1/power"], at["Dijon/lighting/LC-1/mains_voltage"]
    assert h["deviation"][power] == pytest.approx(0.02 * 50)  # 2 % of [0, 50] kW
    assert h["deviation"][volts] == pytest.approx(0.005 * 300)  # the point's own 0.5 % of [0, 300] V
    assert h["max_interval_ns"][power] == 600 * 10**9
    assert not h["enabled"][at["Dijon/bollard/BO-1/position"]]
    assert h["enabled"][at["Dijon/lighting/LC-1/Diagnostics/state"]]
    assert not h["enabled"][at["Dijon/lighting/LC-1/Diagnostics/successes"]]
    with pytest.raises(ConfigError, match="rollups are kept at least as long"):
        load_config(write(tmp_path / "bad", {"tags.yaml": tags.replace(
            "retention_days: 30}", "retention_days: 30, rollup_retention_days: 10}")}))


def test_each_driver_checks_its_own_devices_once_in_declaration_order() -> None:
    """The device-check hook: the core hands each driver all its devices, located, in one call."""
    from city_scada import REGISTRY
    from scada.config import load_config as load_with

    calls: dict[str, list[list[str]]] = {}

    def recording(name: str):
        real = REGISTRY[name].config

        def check_devices(devices) -> None:
            calls.setdefault(name, []).append([d.name for d in devices])
            for d in devices:  # each site knows where its device is written
                assert d.source.endswith(f":{d.fields.line}")
            real.check_devices(devices)

        return _with(real, check_devices=check_devices)

    drivers = {name: dataclasses.replace(p, config=recording(name)) for name, p in REGISTRY.items()}
    config = load_with(ROOT, drivers)
    expected = {name: [[d.name for d in config.devices if config.types[d.type].driver == name]] for name in REGISTRY}
    assert calls == expected
    assert all(devices for (devices,) in calls.values())  # the shipped city uses every driver
    assert config.drivers is drivers  # the server builds its drivers from the same plugins


def test_a_device_check_error_of_a_driver_stops_the_load_with_its_location(tmp_path: Path) -> None:
    from city_scada import REGISTRY
    from scada.config import load_config as load_with

    def refuse_second(devices) -> None:
        if len(devices) > 1:
            raise devices[1].fields.error("endpoint", "refused by the driver", devices[1].fields.mapping["endpoint"])

    modbus = REGISTRY["modbus"]
    drivers = {**REGISTRY, "modbus": dataclasses.replace(modbus, config=_with(modbus.config, check_devices=refuse_second))}
    text = TYPES + "\n" + DEVICES
    write(tmp_path, {"tags.yaml": text})
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, drivers)
    line = text.splitlines().index("    endpoint: tcp://bollards.dijon.local") + 1  # the second device's
    assert (err.value.line, err.value.key) == (line, "devices[1].endpoint")
    assert "refused by the driver" in str(err.value)


def _with(module, **overrides):
    """A driver config module with some of its functions replaced (a test double of the contract)."""
    from types import SimpleNamespace

    return SimpleNamespace(**{**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")}, **overrides})



@pytest.mark.parametrize(
    ("name", "commune"),
    [
        pytest.param("LC-TAL-003", "a/b", id="a later device's bad key"),
        pytest.param("LC-TAL-001", "Talant", id="a later duplicate name"),
    ],
)
def test_a_device_check_error_is_reported_before_a_later_devices_error(tmp_path: Path, name: str, commune: str) -> None:
    """The drivers check devices together, after reading them all; an error they find among the
    devices above a broken one is still the first reported, as a technician reads the file."""
    case = Path(__file__).resolve().parents[1] / "config_cases" / "duplicate_endpoint"
    text = (case / "tags.yaml").read_text(encoding="utf-8").rstrip("\n") + "\n"
    text += f"  - name: {name}\n    type: lighting_cabinet\n    commune: {commune}\n    lat: 47.3\n    lon: 5.0\n"
    text += "    endpoint: 10.20.1.12:502\n"
    write(tmp_path, {"tags.yaml": text})
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip()  # tags.yaml:53: devices[1].endpoint: ...
    assert str(err.value) == expected.replace("tags.yaml", str(tmp_path / "tags.yaml"))
    assert (err.value.line, err.value.key) == (53, "devices[1].endpoint")
