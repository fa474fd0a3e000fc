"""The JSON Schemas of tags.yaml and alarms.yaml (scada/schemas/) against the loader.

The schemas give technicians validation and hover help while they type; the loader
(scada.config) stays the authority. `scada schema` generates them from the loaders' key tables
(scada/schema.py), so their keys, defaults and value checks cannot drift: the first test checks
the shipped files are the generated ones. What is still written by hand, and checked here, is
the cross-key rules (the *_RULES fragments) and the patterns of the hand-parsed values
(endpoints, topics, node ids, messages): each document below is judged by both.

Documents are validated the way the editor sees them: parsed YAML turned into JSON (mapping
keys become text, as in `enum: {0: auto}`).
"""

from __future__ import annotations

import copy
import json
import shutil
import string
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from city_scada import load_config
from city_scada.registry import REGISTRY
from common.fields import Fields
from common.yamlsrc import ConfigError
from drivers.modbus import config as modbus_config
from drivers.mqtt import config as mqtt_config
from drivers.opcua import config as opcua_config
from scada import schema as schema_gen
from scada.alarms import config as alarms_config
from tests.integration.helpers import DEADLINE

ROOT = Path(__file__).resolve().parents[2]
# The drivers' config modules by name, as the composition point hands them to the loader and to `scada schema`.
DRIVER_CONFIGS = {name: plugin.config for name, plugin in REGISTRY.items()}
SCHEMAS = ROOT / "scada" / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


TAGS_SCHEMA = _schema("tags")
ALARMS_SCHEMA = _schema("alarms")
VALIDATORS = {"tags": Draft7Validator(TAGS_SCHEMA), "alarms": Draft7Validator(ALARMS_SCHEMA)}
SHIPPED = {
    "tags": yaml.safe_load((ROOT / "tags.yaml").read_text(encoding="utf-8")),
    "alarms": yaml.safe_load((ROOT / "alarms.yaml").read_text(encoding="utf-8")),
}


DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # PyYAML built without libyaml: the Python one


def test_the_fast_dumper_writes_what_safe_dump_writes() -> None:
    for doc in SHIPPED.values():
        assert dump(doc) == yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def as_json(doc: Any) -> Any:
    """The document as the editor's validator sees it: JSON, so mapping keys are text."""
    return json.loads(json.dumps(doc))


def schema_errors(which: str, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in VALIDATORS[which].iter_errors(as_json(doc))]


def dump(doc: Any) -> str:
    """``yaml.safe_dump``'s text, written by libyaml: the same bytes (the shipped documents
    compared), a quarter of the time; several hundred cases write a tags.yaml each."""
    return yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=True)


def write_config(directory: Path, tags: Any = None, alarms: Any = ...) -> Path:
    """A configuration folder: tags.yaml (the shipped one unless given), the shipped CSV
    inventory, and alarms.yaml when ``alarms`` is given (``None`` writes an empty file)."""
    shutil.copytree(ROOT / "inventory", directory / "inventory")
    tags = SHIPPED["tags"] if tags is None else tags
    (directory / "tags.yaml").write_text(dump(tags), encoding="utf-8")
    if alarms is not ...:
        text = "" if alarms is None else dump(alarms)
        (directory / "alarms.yaml").write_text(text, encoding="utf-8")
    return directory


def mutated(which: str, change: Callable[[dict], Any]) -> dict:
    doc = copy.deepcopy(SHIPPED[which])
    change(doc)
    return doc


def load_with(tmp_path: Path, which: str, doc: Any) -> None:
    """Run the project's loader on ``doc`` as tags.yaml (no alarms) or as alarms.yaml."""
    if which == "tags":
        load_config(write_config(tmp_path, tags=doc))
    else:
        load_config(write_config(tmp_path, alarms=doc))


# Helpers that reach into the shipped documents.

def point(doc: dict, name: str) -> dict:
    return doc["equipment_types"]["lighting_cabinet"]["points"][name]


def etype(doc: dict) -> dict:
    return doc["equipment_types"]["lighting_cabinet"]


def bollard(doc: dict) -> dict:
    """The shipped MQTT type (with a command point)."""
    return doc["equipment_types"]["access_bollard"]


def junction(doc: dict) -> dict:
    """The shipped OPC UA type."""
    return doc["equipment_types"]["traffic_junction"]


def alarm(doc: dict, name: str) -> dict:
    return next(a for a in doc["alarms"] if a["name"] == name)


DEVICE = {"name": "LC-DIJ-900", "type": "lighting_cabinet", "commune": "Dijon",
          "lat": 47.32, "lon": 5.04, "endpoint": "127.0.0.1:15099"}
RTU = "rtu:///dev/ttyUSB0"  # a Modbus RTU serial line


def with_device(**changes: Any) -> Callable[[dict], None]:
    """Add one inline device (the shipped inventory stays), with keys changed or removed (None)."""
    def change(doc: dict) -> None:
        d = {**DEVICE, **changes}
        doc["devices"] = [{k: v for k, v in d.items() if v is not None}]
    return change


def setter(get: Callable[[dict], dict], **changes: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        target = get(doc)
        for k, v in changes.items():
            if v is ...:
                del target[k]
            else:
                target[k] = v
    return change


def pt(which: str, /, **changes: Any) -> Callable[[dict], None]:
    return setter(lambda d: point(d, which), **changes)


def pt_uncommanded(which: str, /, **changes: Any) -> Callable[[dict], None]:
    """Change a point of the cabinet type that its commands write (and drop them, and the schedules
    that run them: a command writes only a writable point, a value among its enum)."""
    def change(doc: dict) -> None:
        pt(which, **changes)(doc)
        etype(doc).pop("commands")
        doc.pop("schedules")
    return change


def bpt(which: str, /, **changes: Any) -> Callable[[dict], None]:
    """Change a point of the MQTT bollard type."""
    return setter(lambda d: bollard(d)["points"][which], **changes)


def jpt(which: str, /, **changes: Any) -> Callable[[dict], None]:
    """Change a point of the OPC UA junction type."""
    return setter(lambda d: junction(d)["points"][which], **changes)


def al(which: str, /, **changes: Any) -> Callable[[dict], None]:
    return setter(lambda d: alarm(d, which), **changes)


# The schemas themselves.

@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_shipped_schema_is_the_generated_one(which: str) -> None:
    name = f"{which}.schema.json"
    shipped = (SCHEMAS / name).read_text(encoding="utf-8")
    assert shipped == schema_gen.schemas(DRIVER_CONFIGS)[name], (
        f"scada/schemas/{name} is stale: regenerate it with `scada schema`"
    )


def test_generation_is_deterministic() -> None:
    assert schema_gen.schemas(DRIVER_CONFIGS) == schema_gen.schemas(dict(DRIVER_CONFIGS))


def test_schema_check_command_flags_stale_files(tmp_path: Path) -> None:
    """`scada schema --check` exits 1 naming the stale file and the command; `scada schema` writes them."""

    def scada(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "city_scada", "schema", "--out", str(tmp_path), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)

    # The shipped files, against the drivers the command line's registry knows.
    shipped = subprocess.run([sys.executable, "-m", "city_scada", "schema", "--check"], cwd=ROOT, capture_output=True,
                             text=True, timeout=DEADLINE)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    missing = scada("--check")
    assert missing.returncode == 1 and "tags.schema.json" in missing.stdout and "scada schema" in missing.stdout
    assert scada().returncode == 0
    assert (tmp_path / "tags.schema.json").read_text(encoding="utf-8") == (SCHEMAS / "tags.schema.json").read_text(
        encoding="utf-8")
    assert scada("--check").returncode == 0
    (tmp_path / "alarms.schema.json").write_text("{}", encoding="utf-8")
    stale = scada("--check")
    assert stale.returncode == 1 and "alarms.schema.json" in stale.stdout and "tags.schema" not in stale.stdout


@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_schema_is_a_valid_draft_07_schema_marked_generated(which: str) -> None:
    schema = TAGS_SCHEMA if which == "tags" else ALARMS_SCHEMA
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "Generated by `scada schema`" in schema["$comment"] and "do not edit by hand" in schema["$comment"]
    Draft7Validator.check_schema(schema)


def test_editor_maps_the_schemas_to_the_files() -> None:
    settings = json.loads((ROOT / ".vscode" / "settings.json").read_text(encoding="utf-8"))
    for which in ("tags", "alarms"):
        assert f"{which}.yaml" in settings["yaml.schemas"][f"scada/schemas/{which}.schema.json"]


@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_shipped_file_is_valid_and_points_at_its_schema(which: str) -> None:
    first_line = (ROOT / f"{which}.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first_line == f"# yaml-language-server: $schema=scada/schemas/{which}.schema.json"
    assert (ROOT / first_line.split("$schema=")[1]).is_file()
    assert schema_errors(which, SHIPPED[which]) == []


def test_shipped_configuration_loads() -> None:
    config = load_config(ROOT)
    assert config.devices and config.alarms.alarms


def test_schemas_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "schemas/*.json" in pyproject["tool"]["setuptools"]["package-data"]["scada"]


def _properties_without_help(node: Any, path: str = "#") -> list[str]:
    """Properties without a description, anywhere in a schema: every table entry has its help.

    Conditions and their branches (if/then, anyOf) only refine properties declared elsewhere."""
    missing: list[str] = []
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            if "description" not in sub:
                missing.append(f"{path}/properties/{key}")
        for key, sub in node.items():
            if key not in ("if", "then", "else", "anyOf", "not"):
                missing += _properties_without_help(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += _properties_without_help(sub, f"{path}/{i}")
    return missing


@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_every_property_has_hover_help(which: str) -> None:
    schema = TAGS_SCHEMA if which == "tags" else ALARMS_SCHEMA
    assert _properties_without_help(schema) == []


def _nodes(node: Any) -> list[dict]:
    """Every subschema (every mapping) of a schema."""
    if isinstance(node, dict):
        return [node] + [n for v in node.values() for n in _nodes(v)]
    if isinstance(node, list):
        return [n for v in node for n in _nodes(v)]
    return []


POST_DRAFT_07 = {"$defs", "prefixItems", "unevaluatedProperties", "unevaluatedItems", "dependentRequired",
                 "dependentSchemas", "minContains", "maxContains", "$anchor", "$dynamicRef", "$dynamicAnchor"}


@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_schema_keeps_to_what_the_editor_understands(which: str) -> None:
    """VS Code's YAML extension validates with draft-07 semantics: there a keyword beside a $ref
    is ignored, and the 2019-09/2020-12 keywords mean nothing."""
    nodes = _nodes(TAGS_SCHEMA if which == "tags" else ALARMS_SCHEMA)
    assert [n for n in nodes if "$ref" in n and len(n) > 1] == []
    assert {k for n in nodes for k in n} & POST_DRAFT_07 == set()


@pytest.mark.parametrize("which", ["tags", "alarms"])
def test_examples_are_values_the_schema_accepts(which: str) -> None:
    """The editor offers a key's examples for completion: each one is a valid value of the key."""
    with_examples = [n for n in _nodes(TAGS_SCHEMA if which == "tags" else ALARMS_SCHEMA) if "examples" in n]
    assert with_examples
    for node in with_examples:
        validator = Draft7Validator({k: v for k, v in node.items() if k != "examples"})
        assert [e for e in node["examples"] if not validator.is_valid(e)] == [], node["description"]


def test_endpoint_examples_are_taken_by_a_driver() -> None:
    examples = TAGS_SCHEMA["definitions"]["device"]["properties"]["endpoint"]["examples"]
    for endpoint in examples:
        assert _modbus_takes(endpoint) or any(_parses(DRIVER_CONFIGS[name].parse_endpoint, endpoint)
                                              for name in DRIVER_CONFIGS if name != "modbus"), endpoint


def test_driver_list_is_the_drivers() -> None:
    driver = TAGS_SCHEMA["definitions"]["equipmentType"]["properties"]["driver"]
    assert driver["enum"] == list(DRIVER_CONFIGS)
    assert driver["enumDescriptions"] == [m.SCHEMA_DESCRIPTION for m in DRIVER_CONFIGS.values()]


def _parses(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
        return True
    except ValueError:
        return False


# A device's driver is its type's, which the schema cannot see from the device: its endpoint
# pattern is the union of the drivers' forms. These endpoints are taken by a parser laxer than
# the schema (the MQTT parser keeps any text before the last ':' as the broker's host; the
# OPC UA parser any host urlparse finds) but name no host a device could be reached at; the
# schema holds every host to the Modbus rules. Never a Modbus endpoint.
ENDPOINTS_ONLY_A_LAX_PARSER_TAKES: set[str] = set()  # none since every driver checks hosts alike
ENDPOINTS_NO_DRIVER_TAKES = {
    "tcp://tcp://x:1", "TCP://h:502", "a:b:502", "::1", "[zz::1]:502", "[::1", "10.20.1.12;502", "10.20.1.312:502",
    "1.2.3.4.5", "010.1.2.3", "-host:502", "host-:502", "my_host:502", "h :502", "tcp://mqtt://h:1",
    "mqtt://tcp://h:1", "MQTT://h:1883", "mqtt://10.20.1.12;1883", "opc.tcp:/srv:4840", "opc.tcp://my_host:4840/",
    "opc.tcp://300.1.2.3:4840",
}


@pytest.mark.parametrize("endpoint", [
    "10.1.2.3:502", "10.1.2.3", "255.255.255.255:1", "host", "tcp://host", "tcp://host:1", " h:5 ",
    "cabinet-17.lan:1502", "10.1.2.3a:502", "h:65535", "h:00502", "[::1]:502", "[::1]", "[fd00::15]:1502",
    # MQTT brokers and OPC UA servers
    "127.0.0.1:1883", "mqtt://broker.lan", "mqtt://10.1.2.3:8883", "tcp://broker.lan:1883", "[fd00::1]:1883",
    "opc.tcp://127.0.0.1:4841/traffic/", "opc.tcp://traffic-srv.lan:4840", "opc.tcp://[fd00::2]:4840/UA/Traffic",
    "OPC.TCP://srv:4840/", "opc.tcp://srv:4840?x=1",
    # rejected by every driver
    "h:65536", "h:99999", "h:0", "h:", ":502", "tcp://:502", "tcp://", "host:50a", "", "mqtt://", "mqtt://:1883",
    "opc.tcp://srv", "opc.tcp://srv:0/", "opc.tcp://srv:65536/", "opc.tcp://:4840/",
    "opc.tcp://srv:4840path", "http://srv:4840/", "opc.tcp://srv: 4840",
    # malformed hosts and schemes, refused by every driver since they share one host check
    *sorted(ENDPOINTS_NO_DRIVER_TAKES),
])
def test_endpoint_pattern_matches_the_drivers_parsers(endpoint: str) -> None:
    takers = [name for name in DRIVER_CONFIGS if _parses(DRIVER_CONFIGS[name].parse_endpoint, endpoint)]
    subschema = TAGS_SCHEMA["definitions"]["device"]["properties"]["endpoint"]
    schema_ok = Draft7Validator(subschema).is_valid(endpoint)
    if endpoint in ENDPOINTS_ONLY_A_LAX_PARSER_TAKES:
        assert takers and "modbus" not in takers and not schema_ok, takers
    else:
        assert schema_ok == bool(takers), takers


def _modbus_takes(text: str) -> bool:
    """Whether the Modbus driver takes ``text`` as an endpoint: rtu:///dev/... or host:port."""
    try:
        if modbus_config._serial_path(text) is None:
            modbus_config.parse_endpoint(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("endpoint", [
    RTU, "RTU:///dev/ttyS1", "Rtu:///dev/ttyAMA0", " rtu:///dev/ttyUSB0 ", "rtu:///x", "rtu:////",
    "rtu:///dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5XYZ-if00-port0", "rtu:///dev/tty USB0",
    # rejected: the serial device is an absolute path after rtu://, three slashes in all
    "rtu://ttyUSB0", "rtu://dev/ttyUSB0", "rtu://", "rtu:///", "rtu:///  ", "rtu:// /dev/ttyUSB0",
    "rtu:/dev/ttyUSB0", "rtu//dev/ttyUSB0", "/dev/ttyUSB0", "rtu://COM3", "serial:///dev/ttyUSB0",
    "rtu:///dev/ttyUSB0:502",
])
def test_rtu_endpoint_pattern_matches_the_modbus_loader(endpoint: str) -> None:
    takers = [name for name in DRIVER_CONFIGS if (_modbus_takes(endpoint) if name == "modbus"
                                            else _parses(DRIVER_CONFIGS[name].parse_endpoint, endpoint))]
    assert takers in ([], ["modbus"]), takers
    subschema = TAGS_SCHEMA["definitions"]["device"]["properties"]["endpoint"]
    assert Draft7Validator(subschema).is_valid(endpoint) == bool(takers), takers


DEVICE_SCHEMA = Draft7Validator({"$ref": "#/definitions/device", "definitions": TAGS_SCHEMA["definitions"]})


def _modbus_device_ok(**keys: Any) -> bool:
    """Whether the Modbus driver takes a device's keys (its endpoint, unit, serial settings)."""
    try:
        modbus_config.parse_device(Fields(dict(keys), "d"))
        return True
    except ConfigError:
        return False


@pytest.mark.parametrize("endpoint", ["10.20.1.15:502", RTU])
@pytest.mark.parametrize(("key", "values"), [
    ("unit", (-1, 0, 1, 17, 247, 248, 255, 256, 1.5)),
    ("baudrate", (0, 300, 600, 1200, 1234, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600, 76800,
                  115200, 230400, 460800, 921600)),
    ("parity", ("none", "even", "odd", "mark", "space", "N", "E", "O", "Even")),
    ("stop_bits", (0, 1, 1.5, 2, 3)),
], ids=["unit", "baudrate", "parity", "stop_bits"])
def test_modbus_device_keys_match_the_loader(endpoint: str, key: str, values: tuple) -> None:
    """Units (0-255 on TCP, 1-247 on a serial line) and the serial keys (a serial line only)."""
    for value in values:
        device = {**DEVICE, "endpoint": endpoint, key: value}
        assert DEVICE_SCHEMA.is_valid(device) == _modbus_device_ok(endpoint=endpoint, **{key: value}), value


# {device} with a conversion, a format spec, an attribute or an index: a topic or node id is a
# literal with {device} as its only placeholder. Schema and drivers both refuse them.
TEMPLATES_ONLY_THE_DRIVER_TAKES = {"{device!r}", "x/{device:>8}", "{device.upper}", "{device[0]}/x"}


@pytest.mark.parametrize("text", [
    "city/bollards/{device}/state", "a", "/", "city//x", "{device}", "x/{device}/{device}", "{{literal}}",
    "{{{device}}}", "a b/c", "$SYS/broker/uptime", "Chenôve/{device}",
    # rejected by both
    "", "{name}", "{}", "{0}", "{device", "device}", "{{device}", "{device}}", "}{", "{ device}",
    *sorted(TEMPLATES_ONLY_THE_DRIVER_TAKES),
    # topics only: wildcards and NUL are no part of a topic, but may be in a node id
    "city/#", "city/+/{device}", "+", "#", "a\0b",
])
@pytest.mark.parametrize(("schema_path", "parse"), [
    (("equipmentType", "properties", "status_topic"), mqtt_config._topic),
    (("equipmentType", "properties", "command_topic"), mqtt_config._topic),
    (("equipmentType", "properties", "ack_topic"), mqtt_config._topic),
    (("mqttPoint", "properties", "topic"), mqtt_config._topic),
    (("opcuaPoint", "properties", "node"), opcua_config._node),
], ids=["status_topic", "command_topic", "ack_topic", "topic", "node"])
def test_topic_and_node_patterns_match_the_drivers(text: str, schema_path: tuple[str, ...],
                                                   parse: Callable[[str], Any]) -> None:
    subschema = TAGS_SCHEMA["definitions"]
    for part in schema_path:
        subschema = subschema[part]
    schema_ok = Draft7Validator(subschema).is_valid(text)
    # The drivers now refuse these too (common.fields.device_template_ok): both reject.
    assert schema_ok == _parses(parse, text)


@pytest.mark.parametrize("message", [
    "no fields at all", "{device}", "{commune} {device}: {value} {unit}", "{value:.1f} {unit} > {limit}",
    "{point}!", "{{literal}} {value}", "{value!r}", "{limit:>8}", "{voltage}", "{}", "{0}", "{value",
    "value}", "{value.real}", "{value[0]}", "{ value}", "{value!rr}",
])
def test_message_pattern_matches_the_alarm_loader(message: str) -> None:
    try:
        alarms_config._message(message)
        loader_ok = True
    except ValueError:
        loader_ok = False
    subschema = ALARMS_SCHEMA["definitions"]["alarm"]["properties"]["message"]
    assert Draft7Validator(subschema).is_valid(message) == loader_ok


# Documents both reject, and documents both accept.

DEVICE_ALARM = {"name": "school_lamps_failed", "device": "LC-DIJ-001", "point": "failed_lamps", "condition": "high",
                "limit": 0, "priority": "high", "message": "{device}: {value} failed lamps by the school",
                "service": "lighting_maintenance"}


def add_alarm(**changes: Any) -> Callable[[dict], None]:
    """Append an alarm for one device (LC-DIJ-001 of the shipped inventory), keys changed or removed (...)."""
    def change(doc: dict) -> None:
        a = {**DEVICE_ALARM, **changes}
        doc["alarms"].append({k: v for k, v in a.items() if v is not ...})
    return change


REJECTED = [
    # tags.yaml: points
    pytest.param("tags", pt("power", gain=2), id="unknown-key-in-point"),
    pytest.param("tags", pt("power", table="holdings"), id="bad-table"),
    pytest.param("tags", pt("power", table=...), id="point-without-table"),
    pytest.param("tags", pt("power", address=...), id="point-without-address"),
    pytest.param("tags", pt("power", type="float64"), id="bad-data-type"),
    pytest.param("tags", pt("lamp_test", type="uint16"), id="coil-not-bool"),
    pytest.param("tags", pt("door_open", type="int16"), id="discrete-not-bool"),
    pytest.param("tags", pt("mode", type="bool"), id="holding-bool"),
    pytest.param("tags", pt("failed_lamps", address=65536), id="address-above-65535"),
    pytest.param("tags", pt("failed_lamps", address=-1), id="negative-address"),
    pytest.param("tags", pt("failed_lamps", address="first"), id="address-not-a-number"),
    pytest.param("tags", pt("power", address=65535), id="float32-past-last-register"),
    pytest.param("tags", pt("energy", word_order="middle"), id="bad-word-order"),
    pytest.param("tags", pt("energy", scale=0), id="zero-scale"),
    pytest.param("tags", pt("energy", scale=float("inf")), id="infinite-scale"),
    pytest.param("tags", pt("power", deadband=-0.1), id="negative-deadband"),
    pytest.param("tags", pt("mode", writable="maybe"), id="writable-not-boolean"),
    pytest.param("tags", pt("mode", writable=1), id="writable-number"),
    pytest.param("tags", pt("power", range=[0, 10, 50]), id="range-three-items"),
    pytest.param("tags", pt("power", range=[0, "max"]), id="range-not-numbers"),
    pytest.param("tags", pt("mode", enum={}), id="empty-enum"),
    pytest.param("tags", pt("mode", enum={0: "forced on"}), id="enum-label-not-a-name"),
    pytest.param("tags", pt("mode", enum={"zero": "auto"}), id="enum-value-not-integer"),
    pytest.param("tags", pt("mode", enum={0: False, 1: True}), id="enum-label-yaml-boolean"),
    pytest.param("tags", lambda d: etype(d)["points"].update({"bad name": {"table": "coil", "address": 9}}),
                 id="bad-point-name"),
    # tags.yaml: equipment types and top level
    pytest.param("tags", setter(etype, vendor="acme"), id="unknown-key-in-type"),
    pytest.param("tags", setter(etype, driver="bacnet"), id="unknown-driver"),
    pytest.param("tags", setter(etype, driver=...), id="type-without-driver"),
    pytest.param("tags", setter(etype, **{"class": ...}), id="type-without-class"),
    pytest.param("tags", setter(etype, **{"class": "street lighting"}), id="bad-class"),
    pytest.param("tags", setter(etype, points={}), id="type-without-points"),
    pytest.param("tags", setter(etype, poll_interval=0), id="zero-poll-interval"),
    pytest.param("tags", setter(etype, timeout=-1), id="negative-timeout"),
    pytest.param("tags", setter(etype, demote_after=-1), id="negative-demote-after"),
    pytest.param("tags", setter(etype, demote_after="often"), id="demote-after-not-a-number"),
    pytest.param("tags", setter(etype, demote_for=0), id="zero-demote-for"),
    pytest.param("tags", setter(etype, demote_for=float("inf")), id="infinite-demote-for"),
    pytest.param("tags", setter(etype, read_gap=126), id="read-gap-above-125"),
    pytest.param("tags", setter(etype, read_gap=-1), id="negative-read-gap"),
    pytest.param("tags", setter(etype, read_gap=2.5), id="fractional-read-gap"),
    pytest.param("tags", setter(etype, poll_groups={}), id="empty-poll-groups"),
    pytest.param("tags", setter(etype, poll_groups=[60]), id="poll-groups-as-a-list"),
    pytest.param("tags", setter(etype, poll_groups={"slow": -60}), id="negative-poll-group-interval"),
    pytest.param("tags", setter(etype, poll_groups={"slow": 0}), id="zero-poll-group-interval"),
    pytest.param("tags", setter(etype, poll_groups={"every minute": 60}), id="bad-poll-group-name"),
    pytest.param("tags", pt("energy", poll_group="every minute"), id="bad-poll-group-name-on-point"),
    pytest.param("tags", setter(bollard, read_gap=8), id="modbus-read-gap-on-mqtt-type"),
    pytest.param("tags", setter(junction, poll_groups={"slow": 60}), id="modbus-poll-groups-on-opcua-type"),
    pytest.param("tags", bpt("position", poll_group="slow"), id="modbus-poll-group-on-mqtt-point"),
    pytest.param("tags", lambda d: d["equipment_types"].update({"bad type": etype(d)}), id="bad-type-name"),
    pytest.param("tags", lambda d: d.update(equipment_types={}), id="no-equipment-types"),
    pytest.param("tags", lambda d: d.update(device=[DEVICE]), id="unknown-top-level-key"),
    pytest.param("tags", lambda d: d.pop("inventories"), id="no-devices"),
    pytest.param("tags", lambda d: d.update(inventories=[]), id="empty-inventories-and-no-devices"),
    # tags.yaml: devices and inventories
    pytest.param("tags", with_device(ip="10.0.0.1"), id="unknown-key-in-device"),
    pytest.param("tags", with_device(endpoint=None), id="device-without-endpoint"),
    pytest.param("tags", with_device(commune=None), id="device-without-commune"),
    pytest.param("tags", with_device(name="LC 900"), id="bad-device-name"),
    pytest.param("tags", with_device(commune="Dijon/Nord"), id="commune-with-slash"),
    pytest.param("tags", with_device(commune="  "), id="blank-commune"),
    pytest.param("tags", with_device(lat=91), id="latitude-above-90"),
    pytest.param("tags", with_device(lon=-180.5), id="longitude-below-minus-180"),
    pytest.param("tags", with_device(unit=256), id="unit-256"),
    pytest.param("tags", with_device(unit=-1), id="negative-unit"),
    # tags.yaml: Modbus RTU devices (a serial line) and the serial keys
    pytest.param("tags", with_device(endpoint=RTU, unit=0), id="rtu-unit-0"),
    pytest.param("tags", with_device(endpoint=RTU, unit=248), id="rtu-unit-248"),
    pytest.param("tags", with_device(endpoint="rtu://ttyUSB0"), id="rtu-endpoint-without-absolute-path"),
    pytest.param("tags", with_device(endpoint="rtu:///"), id="rtu-endpoint-without-device"),
    pytest.param("tags", with_device(endpoint=RTU, baudrate=1234), id="rtu-baudrate-1234"),
    pytest.param("tags", with_device(endpoint=RTU, parity="mark"), id="rtu-parity-mark"),
    pytest.param("tags", with_device(endpoint=RTU, parity="E"), id="rtu-parity-letter"),
    pytest.param("tags", with_device(endpoint=RTU, stop_bits=1.5), id="rtu-stop-bits-1.5"),
    pytest.param("tags", with_device(baudrate=19200), id="baudrate-on-tcp-device"),
    pytest.param("tags", with_device(parity="even"), id="parity-on-tcp-device"),
    pytest.param("tags", with_device(stop_bits=1), id="stop-bits-on-tcp-device"),
    pytest.param("tags", with_device(type="access_bollard", endpoint="broker.lan:1883", baudrate=9600),
                 id="baudrate-on-mqtt-device"),
    # tags.yaml: demotion (common to every driver)
    pytest.param("tags", with_device(demote_after=-1), id="device-negative-demote-after"),
    pytest.param("tags", with_device(demote_after=1.5), id="device-fractional-demote-after"),
    pytest.param("tags", with_device(demote_for=0), id="device-zero-demote-for"),
    pytest.param("tags", with_device(endpoint="10.0.0.1:70000"), id="port-above-65535"),
    pytest.param("tags", with_device(endpoint="10.0.0.1:"), id="empty-port"),
    pytest.param("tags", with_device(endpoint="tcp://:502"), id="empty-host"),
    pytest.param("tags", with_device(poll_interval=0), id="device-zero-poll-interval"),
    pytest.param("tags", lambda d: d["inventories"][0].update(path="x.csv"), id="unknown-key-in-inventory"),
    pytest.param("tags", lambda d: d.update(inventories=[{"type": "lighting_cabinet"}]), id="inventory-without-file"),
    # tags.yaml: MQTT types and points
    pytest.param("tags", bpt("position", topic="city/bollards/#"), id="mqtt-topic-with-hash-wildcard"),
    pytest.param("tags", bpt("height", topic="city/+/{device}/state"), id="mqtt-topic-with-plus-wildcard"),
    pytest.param("tags", bpt("position", topic="city/bollards/{name}/state"), id="mqtt-topic-unknown-placeholder"),
    pytest.param("tags", bpt("position", topic="city/bollards/{device/state"), id="mqtt-topic-unbalanced-brace"),
    pytest.param("tags", bpt("position", topic=...), id="mqtt-point-without-topic"),
    pytest.param("tags", bpt("position", json="state/position"), id="mqtt-json-path-with-slash"),
    pytest.param("tags", bpt("position", json="gps..lat"), id="mqtt-json-path-empty-field"),
    pytest.param("tags", bpt("vehicle", type="boolean"), id="mqtt-bad-point-type"),
    pytest.param("tags", bpt("position", qos=3), id="mqtt-qos-3"),
    pytest.param("tags", bpt("position", qos=-1), id="mqtt-negative-qos"),
    pytest.param("tags", bpt("position", writable=True), id="mqtt-read-point-writable"),
    pytest.param("tags", bpt("last_access_class", deadband=1), id="mqtt-text-point-with-deadband"),
    pytest.param("tags", bpt("position", node="{device}.Position"), id="mqtt-point-with-opcua-key"),
    pytest.param("tags", bpt("position", table="input"), id="mqtt-point-with-modbus-key"),
    pytest.param("tags", bpt("command", topic="city/bollards/{device}/cmd"), id="mqtt-command-point-with-topic"),
    pytest.param("tags", bpt("command", json="command"), id="mqtt-command-point-with-json"),
    pytest.param("tags", setter(bollard, command_topic=...), id="mqtt-command-point-without-command-topic"),
    pytest.param("tags", setter(bollard, ack_topic=...), id="mqtt-command-point-without-ack-topic"),
    pytest.param("tags", setter(bollard, status_topic="city/bollards/+/status"), id="mqtt-status-topic-wildcard"),
    pytest.param("tags", setter(bollard, ack_topic="city/bollards/{id}/ack"), id="mqtt-ack-topic-unknown-placeholder"),
    pytest.param("tags", setter(bollard, offline_payload=False), id="mqtt-payload-yaml-boolean"),
    pytest.param("tags", setter(bollard, namespace="urn:city-scada:bollards"), id="opcua-key-on-mqtt-type"),
    pytest.param("tags", setter(bollard, publishing_interval=500), id="opcua-interval-on-mqtt-type"),
    pytest.param("tags", setter(etype, driver="mqtt"), id="modbus-points-under-mqtt-driver"),
    # tags.yaml: OPC UA types and points
    pytest.param("tags", jpt("mode", node=...), id="opcua-point-without-node"),
    pytest.param("tags", jpt("mode", node="{junction}.Mode"), id="opcua-node-unknown-placeholder"),
    pytest.param("tags", jpt("mode", node=""), id="opcua-empty-node"),
    pytest.param("tags", jpt("conflict_fault", type="boolean"), id="opcua-bad-point-type"),
    pytest.param("tags", jpt("mode", type="command"), id="opcua-command-point-type"),
    pytest.param("tags", jpt("cycle_second", sampling_interval=-1), id="opcua-negative-sampling-interval"),
    pytest.param("tags", jpt("cycle_second", sampling_interval=3_600_001), id="opcua-sampling-interval-above-1h"),
    pytest.param("tags", jpt("cycle_second", type="text", deadband=0.5), id="opcua-text-point-with-deadband"),
    pytest.param("tags", jpt("mode", topic="traffic/{device}/mode"), id="opcua-point-with-mqtt-key"),
    pytest.param("tags", jpt("mode", address=0), id="opcua-point-with-modbus-key"),
    pytest.param("tags", setter(junction, namespace=...), id="opcua-type-without-namespace"),
    pytest.param("tags", setter(junction, publishing_interval=0), id="opcua-zero-publishing-interval"),
    pytest.param("tags", setter(junction, publishing_interval=float("inf")), id="opcua-infinite-publishing-interval"),
    pytest.param("tags", setter(junction, status_topic="traffic/{device}/status"), id="mqtt-key-on-opcua-type"),
    pytest.param("tags", setter(junction, security={"policy": "Basic256SHA256", "mode": "Sign", "certificate": "c.der",
                                                     "private_key": "k.pem"}), id="opcua-unknown-security-policy"),
    pytest.param("tags", setter(junction, security={"policy": "Basic256Sha256", "mode": "Sign"}),
                 id="opcua-security-mode-without-certificate"),
    pytest.param("tags", setter(junction, security={"policy": "Basic256Sha256", "certificate": "c.der",
                                                     "private_key": "k.pem"}), id="opcua-security-without-mode"),
    pytest.param("tags", setter(junction, security={"policy": "Basic256Sha256", "mode": "Encrypt", "certificate": "c.der",
                                                     "private_key": "k.pem"}), id="opcua-security-bad-mode"),
    pytest.param("tags", setter(junction, security={"policy": "None", "mode": "Sign"}), id="opcua-security-none-with-mode"),
    pytest.param("tags", setter(junction, security={"policy": "None", "certificate": "c.der"}),
                 id="opcua-security-none-with-certificate"),
    pytest.param("tags", setter(junction, security={"mode": "Sign"}), id="opcua-security-without-policy"),
    pytest.param("tags", setter(junction, security={"policy": "None", "trust": "all"}), id="opcua-security-unknown-key"),
    pytest.param("tags", setter(junction, security="Basic256Sha256"), id="opcua-security-not-a-mapping"),
    pytest.param("tags", setter(bollard, security={"policy": "None"}), id="opcua-security-on-mqtt-type"),
    pytest.param("tags", setter(etype, security={"policy": "None"}), id="opcua-security-on-modbus-type"),
    pytest.param("tags", setter(etype, command_topic="lighting/{device}/cmd"), id="mqtt-key-on-modbus-type"),
    pytest.param("tags", setter(etype, namespace="urn:city-scada:lighting"), id="opcua-key-on-modbus-type"),
    # tags.yaml: MQTT and OPC UA devices
    pytest.param("tags", with_device(type="access_bollard", endpoint="broker.lan:70000"), id="mqtt-broker-port-above-65535"),
    pytest.param("tags", with_device(type="access_bollard", endpoint="mqtt://"), id="mqtt-broker-without-host"),
    pytest.param("tags", with_device(type="traffic_junction", endpoint="opc.tcp://traffic-srv.lan/traffic/"),
                 id="opcua-endpoint-without-port"),
    pytest.param("tags", with_device(type="traffic_junction", endpoint="http://traffic-srv.lan:4840/"),
                 id="opcua-endpoint-not-opc-tcp"),
    # alarms.yaml
    pytest.param("alarms", al("lamps_failed", limit=...), id="high-alarm-without-limit"),
    pytest.param("alarms", al("mains_loss", limit="low"), id="limit-not-a-number"),
    pytest.param("alarms", al("mains_loss", priority="urgent"), id="bad-priority"),
    pytest.param("alarms", al("mains_loss", priority=...), id="alarm-without-priority"),
    pytest.param("alarms", al("mains_loss", condition="too_low"), id="bad-condition"),
    pytest.param("alarms", al("mains_loss", condition=...), id="alarm-without-condition"),
    pytest.param("alarms", al("mains_loss", point=...), id="limit-alarm-without-point"),
    pytest.param("alarms", al("mains_loss", states=[1]), id="states-on-limit-alarm"),
    pytest.param("alarms", al("door_open", states=...), id="state-alarm-without-states"),
    pytest.param("alarms", al("door_open", states=[]), id="state-alarm-empty-states"),
    pytest.param("alarms", al("door_open", states=["open"]), id="states-not-integers"),
    pytest.param("alarms", al("door_open", limit=1), id="limit-on-state-alarm"),
    pytest.param("alarms", al("comm_loss", point="power"), id="point-on-comm-loss-alarm"),
    pytest.param("alarms", al("comm_loss", limit=1), id="limit-on-comm-loss-alarm"),
    pytest.param("alarms", al("comm_loss", deadband=1, off_delay=3), id="deadband-on-comm-loss-alarm"),
    pytest.param("alarms", al("door_open", deadband=1), id="deadband-on-state-alarm"),
    pytest.param("alarms", al("door_open", expression="door_open == 1"), id="expression-on-state-alarm"),
    pytest.param("alarms", al("mains_loss", expression="mains_voltage < 180"), id="expression-on-limit-alarm"),
    pytest.param("alarms", al("comm_loss", expression="power > 0"), id="expression-on-comm-loss-alarm"),
    # rate_of_change: point and limit > 0 (units per second), no deadband
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=..., deadband=...),
                 id="rate-of-change-without-limit"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=0, deadband=...),
                 id="rate-of-change-zero-limit"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=-20, deadband=...),
                 id="rate-of-change-negative-limit"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=20),
                 id="deadband-on-rate-of-change-alarm"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=20, deadband=..., point=...),
                 id="rate-of-change-without-point"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=20, deadband=..., states=[1]),
                 id="states-on-rate-of-change-alarm"),
    # expression: the expression and nothing of the other conditions
    pytest.param("alarms", al("lamps_on_power_low", expression=...), id="expression-alarm-without-expression"),
    pytest.param("alarms", al("lamps_on_power_low", expression="  "), id="blank-expression"),
    pytest.param("alarms", al("lamps_on_power_low", expression=["lamps_on", "power < 1"]), id="expression-as-a-list"),
    pytest.param("alarms", al("lamps_on_power_low", point="power"), id="point-on-expression-alarm"),
    pytest.param("alarms", al("lamps_on_power_low", limit=1), id="limit-on-expression-alarm"),
    pytest.param("alarms", al("lamps_on_power_low", deadband=1), id="deadband-on-expression-alarm"),
    pytest.param("alarms", al("lamps_on_power_low", message="{device}: power under {limit}"),
                 id="limit-in-expression-message"),
    # type or device; latching; suppressed_by
    pytest.param("alarms", al("mains_loss", type=...), id="alarm-without-type-or-device"),
    pytest.param("alarms", add_alarm(device="LC DIJ 001"), id="bad-device-name"),
    pytest.param("alarms", add_alarm(device=None), id="device-without-value"),
    pytest.param("alarms", al("earth_leakage", latching="maybe"), id="latching-not-boolean"),
    pytest.param("alarms", al("earth_leakage", latching=1), id="latching-as-a-number"),
    pytest.param("alarms", al("earth_leakage", latching=None), id="latching-without-value"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=[]), id="suppressed-by-empty-list"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=None), id="suppressed-by-without-value"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=["mains loss"]), id="suppressed-by-bad-name"),
    pytest.param("alarms", al("lamps_failed", suppressed_by={"mains_loss": True}), id="suppressed-by-mapping"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=[["mains_loss"]]), id="suppressed-by-nested-list"),
    pytest.param("alarms", al("mains_loss", name="mains loss"), id="bad-alarm-name"),
    pytest.param("alarms", al("mains_loss", severity=900), id="unknown-key-in-alarm"),
    pytest.param("alarms", al("mains_loss", message=...), id="alarm-without-message"),
    pytest.param("alarms", al("mains_loss", message=""), id="empty-message"),
    pytest.param("alarms", al("mains_loss", message="{device}: {voltage} V"), id="unknown-message-field"),
    pytest.param("alarms", al("mains_loss", message="{device: low"), id="unbalanced-brace"),
    pytest.param("alarms", al("mains_loss", service=...), id="alarm-without-service"),
    pytest.param("alarms", al("mains_loss", on_delay=-1), id="negative-on-delay"),
    pytest.param("alarms", al("mains_loss", off_delay=-0.5), id="negative-off-delay"),
    pytest.param("alarms", al("mains_loss", deadband=-5), id="negative-alarm-deadband"),
    pytest.param("alarms", lambda d: d.update(alarm=[]), id="unknown-top-level-key"),
    pytest.param("alarms", lambda d: d.pop("services"), id="alarms-without-services"),
    pytest.param("alarms", lambda d: d["services"]["lighting_maintenance"].pop("ack_deadline_s"),
                 id="service-without-ack-deadline"),
    pytest.param("alarms", lambda d: d["services"]["lighting_maintenance"].update(ack_deadline_s=0),
                 id="zero-ack-deadline"),
    pytest.param("alarms", lambda d: d["services"]["lighting_maintenance"].update(email="x@y"),
                 id="unknown-key-in-service"),
    pytest.param("alarms", lambda d: d["services"].update({"bad name": {"ack_deadline_s": 60}}),
                 id="bad-service-name"),
    # `key:` with nothing after it is an error, not an absent key
    pytest.param("tags", pt("power", unit=None), id="point-key-without-value"),
    pytest.param("tags", pt("mode", enum=None), id="enum-without-value"),
    pytest.param("tags", lambda d: d.update(devices=[{**DEVICE, "description": None}]), id="device-key-without-value"),
    pytest.param("tags", lambda d: d["inventories"][0].update(type=None), id="inventory-key-without-value"),
    pytest.param("tags", lambda d: d.update(inventories=None), id="inventories-without-value"),
    pytest.param("tags", lambda d: etype(d)["points"].update(door_open=None), id="empty-point"),
    pytest.param("alarms", al("mains_loss", on_delay=None), id="alarm-key-without-value"),
    pytest.param("alarms", al("comm_loss", point=None), id="empty-point-on-comm-loss-alarm"),
]


@pytest.mark.parametrize(("which", "change"), REJECTED)
def test_schema_and_loader_both_reject(which: str, change: Callable[[dict], Any], tmp_path: Path) -> None:
    doc = mutated(which, change)
    assert schema_errors(which, doc), "the schema accepts a document the loader must reject"
    with pytest.raises(ConfigError):
        load_with(tmp_path, which, doc)


def _inline_devices(doc: dict) -> None:
    doc.pop("inventories")
    for section in ("zones", "schedules"):  # they name the inventories' devices and communes
        doc.pop(section)
    doc["devices"] = [DEVICE, {**DEVICE, "name": "LC-DIJ-901", "endpoint": "tcp://10.0.0.2", "unit": 247,
                               "poll_interval": 2, "timeout": 0.5, "description": "spare"}]


def _full_bollard_type(doc: dict) -> None:
    """An MQTT type written out with every type-level and point key."""
    doc["equipment_types"]["access_bollard"] = {
        "class": "bollard", "driver": "mqtt", "description": "Retractable bollard", "poll_interval": 5, "timeout": 2,
        "status_topic": "city/bollards/{device}/status", "online_payload": "1", "offline_payload": "0",
        "command_topic": "city/bollards/{device}/cmd", "ack_topic": "city/bollards/{device}/ack",
        "points": {
            "position": {"topic": "city/bollards/{device}/state", "json": "state.position", "type": "number",
                         "qos": 2, "enum": {0: "down", 1: "up"}, "description": "Where the bollard stands"},
            "height": {"topic": "city/bollards/{device}/height", "unit": "m", "deadband": 0.01, "range": [0, 1]},
            "vehicle": {"topic": "city/bollards/{device}/state", "json": "vehicle", "type": "bool", "qos": 0},
            "label": {"topic": "city/bollards/{device}/label", "type": "text"},
            "command": {"type": "command", "writable": True, "qos": 1, "enum": {0: "lower", 1: "raise"}},
        },
    }


def _full_junction_type(doc: dict) -> None:
    """An OPC UA type written out with every type-level and point key."""
    doc["equipment_types"]["traffic_junction"] = {
        "class": "traffic", "driver": "opcua", "description": "Junction controller", "poll_interval": 1, "timeout": 3,
        "namespace": "http://vendor.example/UA/Traffic/", "publishing_interval": 250.5,
        "points": {
            "mode": {"node": "{device}.Mode", "type": "number", "writable": True, "sampling_interval": 100,
                     "enum": {1: "flashing_amber", 2: "fixed_time"}, "description": "Operating mode"},
            "occupancy": {"node": "{device}.Detectors/main_in/Occupancy", "unit": "%", "deadband": 1,
                          "range": [0, 100], "sampling_interval": 0},
            "door_open": {"node": "Cabinet[{device}].DoorOpen", "type": "bool"},
            "plan_name": {"node": "{device}.PlanName", "type": "text", "deadband": 0},
        },
    }


def _modbus_type_with_every_key(doc: dict) -> None:
    """The Modbus type with its type-level keys, demotion and a point in a poll group."""
    etype(doc).update(read_gap=0, poll_groups={"slow": 60, "hourly": 3600.5}, demote_after=5, demote_for=120)
    point(doc, "energy")["poll_group"] = "slow"
    point(doc, "lamp_count")["poll_group"] = "hourly"


ACCEPTED = [
    pytest.param("tags", pt("failed_lamps", type=...), id="register-type-defaults-to-uint16"),
    pytest.param("tags", pt("lamp_test", type="bool"), id="coil-explicit-bool"),
    pytest.param("tags", pt("mode", writable="yes"), id="writable-as-quoted-yes"),
    pytest.param("tags", pt_uncommanded("mode", writable=" False "), id="writable-as-quoted-false"),
    pytest.param("tags", pt("power", address=65534), id="float32-at-last-pair"),
    pytest.param("tags", pt("failed_lamps", address=65535), id="uint16-at-last-register"),
    pytest.param("tags", pt_uncommanded("mode", enum={-1: "fault", 0: "auto"}), id="negative-enum-value"),
    pytest.param("tags", pt_uncommanded("mode", enum={0: "off", 1: "on"}), id="enum-labels-quoted-on-off"),
    pytest.param("tags", pt("power", range=[-1.5, 2e3], offset=-40, scale=-0.5), id="negative-scale"),
    pytest.param("tags", pt("door_open", deadband=0, writable=False, unit="", description="Door"),
                 id="point-with-every-common-key"),
    pytest.param("tags", _inline_devices, id="inline-devices-only"),
    pytest.param("tags", with_device(lat=-90, lon=180, unit=1), id="coordinate-bounds"),
    pytest.param("tags", with_device(unit=0), id="tcp-unit-0"),
    pytest.param("tags", with_device(unit=255), id="tcp-unit-255"),
    pytest.param("tags", with_device(endpoint=RTU), id="rtu-device-with-defaults"),
    pytest.param("tags", with_device(endpoint=" RTU:///dev/serial/by-id/usb-FTDI_FT232R-if00-port0 ", unit=247,
                                     baudrate=9600, parity="none", stop_bits=2), id="rtu-device-with-every-serial-key"),
    pytest.param("tags", with_device(endpoint=RTU, unit=1, baudrate=115200, parity="odd", stop_bits=1),
                 id="rtu-device-odd-parity"),
    pytest.param("tags", with_device(demote_after=0, demote_for=0.5), id="device-never-demoted"),
    pytest.param("tags", _modbus_type_with_every_key, id="modbus-type-with-every-key"),
    pytest.param("tags", setter(junction, demote_after=10, demote_for=60), id="demotion-on-opcua-type"),
    pytest.param("tags", lambda d: d.update(devices=None), id="empty-devices-with-inventory"),
    pytest.param("tags", lambda d: d["inventories"][0].update(type="lighting_cabinet", commune="Dijon"),
                 id="inventory-defaults"),
    pytest.param("tags", _full_bollard_type, id="mqtt-bollard-type-with-every-key"),
    pytest.param("tags", _full_junction_type, id="opcua-junction-type-with-every-key"),
    pytest.param("tags", setter(junction, security={"policy": "None"}), id="opcua-explicit-security-none"),
    pytest.param("tags", bpt("position", json=..., qos=0), id="mqtt-whole-payload-as-value"),
    pytest.param("tags", bpt("last_access_class", deadband=0), id="mqtt-text-point-with-zero-deadband"),
    pytest.param("tags", bpt("command", writable="yes", qos=2), id="mqtt-command-writable-as-quoted-yes"),
    pytest.param("tags", bpt("position", writable=False), id="mqtt-read-point-explicitly-read-only"),
    pytest.param("tags", setter(bollard, status_topic=...), id="mqtt-type-without-status-topic"),
    pytest.param("tags", jpt("cycle_second", sampling_interval=3_600_000, type="number"), id="opcua-sampling-at-1h"),
    pytest.param("tags", jpt("conflict_fault", writable=True), id="opcua-bool-point-writable"),
    pytest.param("tags", jpt("mode", node="ns-free {device} #1 + more"), id="opcua-node-with-hash-and-plus"),
    pytest.param("tags", with_device(type="access_bollard", endpoint="mqtt://broker.lan"), id="mqtt-broker-default-port"),
    pytest.param("tags", with_device(type="crew_vehicle", endpoint="tcp://10.0.0.5:8883"), id="mqtt-broker-tcp-prefix"),
    pytest.param("tags", with_device(type="traffic_junction", endpoint="opc.tcp://[fd00::2]:4840"),
                 id="opcua-endpoint-ipv6-without-path"),
    pytest.param("alarms", al("comm_loss", off_delay=3, on_delay=0), id="comm-loss-with-delays"),
    pytest.param("alarms", al("mains_loss", condition="rate_of_change", limit=20.5, deadband=...,
                              message="{device}: {point} changes faster than {limit} {unit}/s"),
                 id="rate-of-change-with-limit-in-message"),
    pytest.param("alarms", al("lamps_on_power_low", expression="not (power > 1.5e3) or abs(-mains_voltage) < "
                              "min(230, max(temperature, 1)) / 2 and 0 <= dim_level <= 100 * 1 - 0 "
                              "and lamps_on != True"), id="expression-with-every-construct"),
    pytest.param("alarms", add_alarm(), id="device-alarm"),
    pytest.param("alarms", add_alarm(type="lighting_cabinet"), id="device-alarm-with-its-type"),
    pytest.param("alarms", add_alarm(name="lamps_on_power_very_low", condition="expression", limit=..., point=...,
                                     expression="lamps_on and power < 0.1", suppressed_by="mains_loss",
                                     latching=True, message="{device}: power low"),
                 id="device-expression-alarm-with-every-key"),
    pytest.param("alarms", lambda d: [add_alarm(device=dev)(d) for dev in ("LC-DIJ-001", "LC-DIJ-002")],
                 id="one-name-on-two-devices"),
    pytest.param("alarms", al("earth_leakage", latching="no"), id="latching-as-quoted-no"),
    pytest.param("alarms", al("lamps_failed", suppressed_by="mains_loss"), id="suppressed-by-one-name-as-text"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=["mains_loss", "comm_loss"]),
                 id="suppressed-by-two-alarms"),
    pytest.param("alarms", al("mains_loss", condition="low_low", message="{value:.1f} {{V}} < {limit}"),
                 id="low-low-with-formatted-message"),
    pytest.param("alarms", al("door_open", states=[0, 1, 2.0]), id="states-integral-float"),
    pytest.param("alarms", lambda d: d["services"]["lighting_maintenance"].pop("label"), id="service-without-label"),
    pytest.param("alarms", lambda d: d.update(alarms=None), id="services-only"),
    pytest.param("alarms", lambda d: d.clear(), id="empty-mapping"),
]


@pytest.mark.parametrize(("which", "change"), ACCEPTED)
def test_schema_and_loader_both_accept(which: str, change: Callable[[dict], Any], tmp_path: Path) -> None:
    doc = mutated(which, change)
    assert schema_errors(which, doc) == []
    load_with(tmp_path, which, doc)


def test_opcua_security_with_certificates_is_accepted_by_both(tmp_path: Path) -> None:
    """Secure sessions name files relative to tags.yaml; the loader reads and checks them."""
    from simulators.pki import make_certificate
    make_certificate(tmp_path / "pki" / "client.der", tmp_path / "pki" / "client.pem", "urn:test:scada", server=False)
    make_certificate(tmp_path / "pki" / "server.der", tmp_path / "pki" / "server.pem", "urn:test:traffic", server=True)
    doc = mutated("tags", setter(junction, security={
        "policy": "Basic256Sha256", "mode": "SignAndEncrypt", "certificate": "pki/client.der",
        "private_key": "pki/client.pem", "server_certificate": "pki/server.der"}))
    assert schema_errors("tags", doc) == []
    config = load_config(write_config(tmp_path, tags=doc))
    security = config.types["traffic_junction"].io.security
    assert (security.policy, security.mode, security.application_uri) == ("Basic256Sha256", "SignAndEncrypt",
                                                                          "urn:test:scada")
    assert security.server_certificate == (tmp_path / "pki" / "server.der").read_bytes()


def test_empty_alarms_file_is_accepted_by_both(tmp_path: Path) -> None:
    assert schema_errors("alarms", None) == []
    assert load_config(write_config(tmp_path, alarms=None)).alarms.alarms == ()


# Former loader gaps of the MQTT and OPC UA drivers: mistakes that loaded and then failed at
# run time or did nothing. The schema flagged them first; now the loader rejects them too.

OPEN_LOADER_GAPS = [
    pytest.param("tags", bpt("command", writable=...),
                 id="mqtt-command-point-not-writable"),  # the driver refuses every write: "not writable"
    pytest.param("tags", bpt("command", enum=...),
                 id="mqtt-command-point-without-enum"),  # the driver publishes a label: without enum, none
    pytest.param("tags", setter(junction, namespace=2),
                 id="opcua-namespace-as-index"),  # taken as the URI "2", which no server has
    pytest.param("tags", bpt("position", topic="city/bollards/{device!r}/state"),
                 id="mqtt-topic-with-conversion"),  # subscribes to city/bollards/'B-DIJ-001'/state
    pytest.param("tags", with_device(type="access_bollard", endpoint="10.20.1.12;1883"),
                 id="mqtt-broker-host-with-semicolon"),  # host "10.20.1.12;1883", port 1883
]


@pytest.mark.parametrize(("which", "change"), OPEN_LOADER_GAPS)
def test_schema_rejects_open_loader_gaps(which: str, change: Callable[[dict], Any]) -> None:
    assert schema_errors(which, mutated(which, change))


@pytest.mark.parametrize(("which", "change"), OPEN_LOADER_GAPS)
def test_loader_rejects_open_loader_gaps(which: str, change: Callable[[dict], Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_with(tmp_path, which, mutated(which, change))


# Former loader gaps (the loader truncated fractions and accepted message templates that
# fail when formatted); both the schema and the loader now reject them.

LOADER_GAPS = [
    pytest.param("tags", pt("failed_lamps", address=5.5),
                 id="fractional-address-truncated"),  # common.fields.to_int(5.5) == 5
    pytest.param("alarms", al("door_open", states=[1.5]),
                 id="fractional-state-truncated"),
    pytest.param("alarms", al("mains_loss", message="{value!x}"),
                 id="unknown-conversion-in-message"),  # passes _message, fails at format time
    pytest.param("alarms", al("mains_loss", message="{value:{nope}}"),
                 id="unknown-nested-field-in-message"),
]


@pytest.mark.parametrize(("which", "change"), LOADER_GAPS)
def test_schema_rejects_loader_gaps(which: str, change: Callable[[dict], Any]) -> None:
    assert schema_errors(which, mutated(which, change))


@pytest.mark.parametrize(("which", "change"), LOADER_GAPS)
def test_loader_rejects_loader_gaps(which: str, change: Callable[[dict], Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_with(tmp_path, which, mutated(which, change))


# Mistakes the schema cannot express (cross-references, listed in the tags schema's $comment):
# only `scada check` rejects them. Listed so that the day the schema catches one, this says so.

def _point_in_undeclared_group(doc: dict) -> None:
    etype(doc)["poll_groups"] = {"slow": 60}
    point(doc, "energy")["poll_group"] = "hourly"


SCHEMA_BLIND_DOCUMENTS = [
    pytest.param("tags", _point_in_undeclared_group, id="unknown-poll-group"),
    pytest.param("tags", pt("energy", poll_group="slow"), id="poll-group-without-poll-groups"),
    pytest.param("tags", lambda d: d.update(devices=[{**DEVICE, "endpoint": RTU, "unit": 3},
                                                      {**DEVICE, "name": "LC-DIJ-901", "endpoint": RTU, "unit": 3}]),
                 id="two-devices-on-one-serial-line-and-unit"),
    # alarms.yaml: cross-references to tags.yaml and between alarms, and the expression's grammar
    pytest.param("alarms", add_alarm(device="LC-DIJ-999"), id="alarm-on-unknown-device"),
    pytest.param("alarms", add_alarm(type="traffic_junction"), id="device-alarm-with-another-type"),
    pytest.param("alarms", add_alarm(name="lamps_failed"), id="device-alarm-reusing-a-type-alarm-name"),
    pytest.param("alarms", lambda d: d["alarms"].append(dict(alarm(d, "door_open"))), id="duplicate-alarm-name"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=["mains_los"]), id="suppressed-by-unknown-alarm"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=["junction_dark"]), id="suppressed-by-alarm-of-another-type"),
    pytest.param("alarms", al("lamps_failed", suppressed_by=["lamps_failed"]), id="suppressed-by-itself"),
    pytest.param("alarms", al("mains_loss", suppressed_by=["lamps_on_power_low"]), id="suppression-cycle"),
    pytest.param("alarms", al("lamps_on_power_low", expression="lamps_on and pwr < 1"), id="expression-unknown-point"),
    pytest.param("alarms", al("lamps_on_power_low", expression="__import__('os')"), id="expression-calls-import"),
    pytest.param("alarms", al("lamps_on_power_low", expression="power.real > 1"), id="expression-attribute"),
    pytest.param("alarms", al("lamps_on_power_low", expression="power ** 2 > 1"), id="expression-power-operator"),
    pytest.param("alarms", al("lamps_on_power_low", expression="power >"), id="expression-syntax-error"),
    pytest.param("alarms", al("lamps_on_power_low", expression="1 > 0"), id="expression-reads-no-point"),
    pytest.param("alarms", al("lamps_on_power_low", expression="max(power) > 1"), id="expression-max-of-one"),
]


@pytest.mark.parametrize(("which", "change"), SCHEMA_BLIND_DOCUMENTS)
def test_only_the_loader_rejects_what_the_schema_cannot_express(which: str, change: Callable[[dict], Any],
                                                                 tmp_path: Path) -> None:
    doc = mutated(which, change)
    assert schema_errors(which, doc) == [], "the schema now catches this: move it to REJECTED"
    with pytest.raises(ConfigError):
        load_with(tmp_path, which, doc)


def test_message_format_check_covers_the_template_syntax() -> None:
    """What the message pattern accepts, string.Formatter fills in with the engine's fields."""
    fields = {"device": "LC-AHU-001", "commune": "Ahuy", "value": 181.5, "unit": "V", "point": "mains_voltage",
              "limit": 180.0}
    assert set(fields) == alarms_config.MESSAGE_FIELDS
    message = Draft7Validator(ALARMS_SCHEMA["definitions"]["alarm"]["properties"]["message"])
    for text in ("{device}: {value:.1f} {unit} above {limit}", "{commune}/{point} {{raw}} {value!r:>8}", "plain"):
        assert message.is_valid(text)
        string.Formatter().format(text, **fields)


# The corpus of technicians' mistakes (tests/config_cases/): the schema must flag every one it
# can express, at or above the key the loader blames. The others are listed with the reason.

CASES = ROOT / "tests" / "config_cases"
SCHEMA_BLIND = {
    "duplicate_yaml_key": "PyYAML keeps the last of two keys; the editor's YAML parser flags the duplicate itself",
    "overlapping_registers": "overlap between points is computed from addresses and sizes",
    "range_min_above_max": "JSON Schema cannot compare two items of an array",
    "unknown_type": "a device's type must name one of equipment_types: a cross-reference",
    "inventory_unknown_type": "an inventory's type must name one of equipment_types: a cross-reference",
    "duplicate_device": "unique device names across the file",
    "duplicate_endpoint": "unique endpoint and unit across devices",
    "serial_line_settings_disagree": "devices on one serial line must agree on its settings: across devices",
    "unknown_poll_group": "a point's poll_group must name one of its type's poll_groups: a cross-reference",
    "missing_csv_file": "the file system is not the schema's business",
    "opcua_security_missing_certificate_file": "the file system is not the schema's business",
    "alarm_unknown_point": "an alarm's point must exist in tags.yaml",
    "alarm_unknown_type": "an alarm's type must exist in tags.yaml",
    "alarm_unknown_service": "an alarm's service must be declared under services: a cross-reference",
    "alarm_unknown_device": "an alarm's device must exist in tags.yaml",
    "alarm_expression_unknown_point": "an expression's names must be points of the type in tags.yaml",
    "alarm_expression_forbidden_construct": "the expression's grammar is the loader's (scada/alarms/expr.py); "
                                            "the schema only asks for text",
    "alarm_suppressed_by_unknown_alarm": "suppressed_by must name alarms of the same type: a cross-reference",
    "alarm_suppression_cycle": "a circle through suppressed_by spans several alarms",
    "alarm_expression_too_deep": "the expression's nesting is its grammar, the loader's (scada/alarms/expr.py)",
}
# Files refused while they are read, before there is a document for a schema to look at (the
# bounds of scada/yamlsrc.py): not text, or aliases and nesting that would not end.
NO_DOCUMENT = {"yaml_not_utf8", "yaml_billion_laughs", "yaml_self_alias", "yaml_deep_nesting"}


def _loader_path(path: Any) -> str:
    """A jsonschema error path written as the loader writes keys: devices[1].endpoint."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.glob("*") if (p / "expected.txt").is_file())
                         if CASES.is_dir() else [])
def test_config_case_is_flagged_by_the_schema(case: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CASES / case)
    err = info.value
    blamed = Path(err.file)
    if case in NO_DOCUMENT:
        return
    if blamed.suffix != ".yaml":
        assert blamed.suffix == ".csv", err  # a CSV inventory: no schema looks at it
        return
    try:
        doc = yaml.safe_load(blamed.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return  # a YAML syntax error: the editor's YAML parser reports it before any schema
    errors = list(VALIDATORS[blamed.stem].iter_errors(as_json(doc)))
    if case in SCHEMA_BLIND:
        assert not errors, f"the schema now catches {case}: remove it from SCHEMA_BLIND"
        return
    paths = [_loader_path(e.absolute_path) for e in errors]
    assert paths, (f"the schema accepts {case}, which the loader rejects with: {err}. Teach the schema "
                   "the rule, or list the case in SCHEMA_BLIND with the reason it cannot")
    key = err.key
    assert any(p == "" or key == p or key.startswith((p + ".", p + "[")) for p in paths), (key, paths)
