"""alarms.yaml's loader (scada/alarms/config.py) and its expression compiler (scada/alarms/expr.py).

The loader is checked against the shipped tags.yaml (its types and its inventory's devices):
the new keys (device, latching, suppressed_by, rate_of_change, expression) land in AlarmDef,
and the keys a condition does not take are errors. The compiled expressions are evaluated
on numpy arrays, one row per device, as the engine does.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from scada.alarms import config as alarms_config
from scada.alarms.config import AlarmDef
from scada.alarms.expr import ExpressionError, compile_expression
from scada.config import Config
from city_scada import load_config
from common.yamlsrc import ConfigError

ROOT = Path(__file__).resolve().parents[2]

SERVICES = """\
services:
  lighting_maintenance: {label: Lighting maintenance, ack_deadline_s: 1800}
  security: {ack_deadline_s: 300}
alarms:
"""


@pytest.fixture(scope="module")
def shipped() -> Config:
    return load_config(ROOT)


def load_alarms(tmp_path: Path, shipped: Config, alarms: str) -> alarms_config.AlarmsConfig:
    """Load ``alarms`` (the list under ``alarms:``, without indentation) against the shipped tags.yaml."""
    path = tmp_path / "alarms.yaml"
    path.write_text(SERVICES + textwrap.indent(textwrap.dedent(alarms), "  "), encoding="utf-8")
    return alarms_config.load(path, shipped.types, shipped.devices)


def load_error(tmp_path: Path, shipped: Config, alarms: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_alarms(tmp_path, shipped, alarms)
    return info.value


# The shipped files.

def test_shipped_alarms_load_with_the_shipped_tags(shipped: Config) -> None:
    alarms = shipped.alarms.alarms
    assert alarms and shipped.alarms.services
    again = alarms_config.load(ROOT / "alarms.yaml", shipped.types, shipped.devices)
    assert again.alarms == alarms
    devices = {d.name: d for d in shipped.devices}
    by_type: dict[str, set[str]] = {}
    for a in alarms:
        assert a.type in shipped.types, a
        assert a.service in shipped.alarms.services, a
        assert a.severity == alarms_config.PRIORITIES[a.priority]
        points = {p.name for p in shipped.types[a.type].points}
        if a.device is not None:
            assert devices[a.device].type == a.type
        if a.point is not None:
            assert a.point in points
        assert set(a.expression_points) <= points
        assert (a.expression != "") == (a.condition == "expression") == bool(a.expression_points)
        assert a.key not in {b.key for b in alarms if b is not a}
        by_type.setdefault(a.type, set()).add(a.name)
    for a in alarms:
        assert set(a.suppressed_by) <= by_type[a.type] - {a.name}, a
    # Every type of the shipped tags.yaml has its communication-loss alarm.
    assert {a.type for a in alarms if a.condition == "comm_loss"} == set(shipped.types)


def test_shipped_alarms_use_the_new_keys(shipped: Config) -> None:
    alarms = {a.key: a for a in shipped.alarms.alarms}
    low_power = alarms[("lighting_cabinet", "lamps_on_power_low")]
    assert (low_power.condition, low_power.point, low_power.limit) == ("expression", None, None)
    assert low_power.expression_points == ("lamps_on", "power", "lamp_count")
    assert low_power.suppressed_by == ("mains_loss",)
    assert alarms[("lighting_cabinet", "earth_leakage")].latching is True
    assert alarms[("lighting_cabinet", "door_open")].latching is False
    assert alarms[("traffic_junction", "conflict_fault")].latching is True
    assert alarms[("traffic_junction", "red_lamp_out")].suppressed_by == ("junction_dark",)
    assert alarms[("traffic_junction", "red_lamp_out")].expression_points == ("main_lamp_out", "side_lamp_out")


# The new keys, parsed.

def test_new_keys_parse_into_alarm_def(tmp_path: Path, shipped: Config) -> None:
    config = load_alarms(tmp_path, shipped, """\
        - name: mains_loss
          type: lighting_cabinet
          point: mains_voltage
          condition: low
          limit: 180
          deadband: 5
          priority: critical
          message: "{device}: mains {value} {unit}"
          service: lighting_maintenance
        - name: voltage_jump
          type: lighting_cabinet
          point: mains_voltage
          condition: rate_of_change
          limit: 20.5
          priority: low
          message: "{device}: mains voltage moves faster than {limit} {unit}/s"
          service: lighting_maintenance
          suppressed_by: mains_loss
        - name: dark
          type: lighting_cabinet
          condition: expression
          expression: "lamps_on and power < 0.2 * lamp_count * 0.05"
          priority: high
          message: "{device}: lamps on but power low"
          service: lighting_maintenance
          on_delay: 60
          off_delay: 5
          suppressed_by: [mains_loss, voltage_jump]
        - name: school_door
          device: LC-DIJ-001
          point: door_open
          condition: state
          states: [1]
          priority: critical
          message: "{device}: door open by the school"
          service: security
          latching: true
        """)
    mains, jump, dark, door = config.alarms
    assert mains == AlarmDef(
        name="mains_loss", type="lighting_cabinet", point="mains_voltage", condition="low", priority="critical",
        severity=900, message="{device}: mains {value} {unit}", service="lighting_maintenance", limit=180.0,
        deadband=5.0, source=f"{tmp_path / 'alarms.yaml'}:5")
    assert (mains.device, mains.latching, mains.suppressed_by, mains.expression, mains.expression_points) == (
        None, False, (), "", ())
    assert (jump.condition, jump.point, jump.limit, jump.deadband) == ("rate_of_change", "mains_voltage", 20.5, 0.0)
    assert jump.suppressed_by == ("mains_loss",)  # one name as text
    assert (dark.condition, dark.point, dark.limit, dark.states) == ("expression", None, None, ())
    assert dark.expression == "lamps_on and power < 0.2 * lamp_count * 0.05"
    assert dark.expression_points == ("lamps_on", "power", "lamp_count")
    assert dark.suppressed_by == ("mains_loss", "voltage_jump")
    assert (dark.on_delay, dark.off_delay) == (60.0, 5.0)
    assert (door.device, door.type, door.latching, door.states) == ("LC-DIJ-001", "lighting_cabinet", True, (1,))
    assert (door.key, mains.key) == (("LC-DIJ-001", "school_door"), ("lighting_cabinet", "mains_loss"))
    assert door.source == f"{tmp_path / 'alarms.yaml'}:33"


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("false", False), ("yes", True), ('"no"', False), ('" True "', True), ('"0"', False),
])
def test_latching_takes_true_or_false(tmp_path: Path, shipped: Config, text: str, expected: bool) -> None:
    config = load_alarms(tmp_path, shipped, f"""\
        - {{name: door, type: lighting_cabinet, point: door_open, condition: state, states: [1],
           priority: high, message: "{{device}}: door open", service: security, latching: {text}}}
        """)
    assert config.alarms[0].latching is expected


@pytest.mark.parametrize("text", ["maybe", "1", "2", "[true]"])
def test_latching_refuses_anything_else(tmp_path: Path, shipped: Config, text: str) -> None:
    err = load_error(tmp_path, shipped, f"""\
        - {{name: door, type: lighting_cabinet, point: door_open, condition: state, states: [1],
           priority: high, message: "{{device}}: door open", service: security, latching: {text}}}
        """)
    assert (err.key, err.message) == ("alarms[0].latching", "expected true or false")


def test_device_alarm_takes_its_type_from_the_device(tmp_path: Path, shipped: Config) -> None:
    config = load_alarms(tmp_path, shipped, """\
        - {name: dark, device: J-DIJ-001, condition: expression, expression: "effective_mode == 0",
           priority: high, message: "{device}: dark", service: security}
        - {name: door, device: J-DIJ-002, type: traffic_junction, point: door_open, condition: state,
           states: [1], priority: high, message: "{device}: door open", service: security}
        """)
    assert [(a.device, a.type) for a in config.alarms] == [("J-DIJ-001", "traffic_junction"),
                                                           ("J-DIJ-002", "traffic_junction")]


def test_device_alarm_with_another_type_is_an_error(tmp_path: Path, shipped: Config) -> None:
    err = load_error(tmp_path, shipped, """\
        - {name: door, device: J-DIJ-002, type: lighting_cabinet, point: door_open, condition: state,
           states: [1], priority: high, message: "{device}: door open", service: security}
        """)
    assert (err.key, err.value) == ("alarms[0].type", "lighting_cabinet")
    assert err.message == "device J-DIJ-002 is a traffic_junction: give its type, or leave type out"


def test_unknown_device_is_an_error(tmp_path: Path, shipped: Config) -> None:
    err = load_error(tmp_path, shipped, """\
        - {name: door, device: J-DIJ-999, point: door_open, condition: state,
           states: [1], priority: high, message: "{device}: door open", service: security}
        """)
    assert (err.line, err.key, err.value) == (5, "alarms[0].device", "J-DIJ-999")
    assert "unknown device" in err.message


def test_alarm_needs_a_type_or_a_device(tmp_path: Path, shipped: Config) -> None:
    err = load_error(tmp_path, shipped, """\
        - {name: door, point: door_open, condition: state,
           states: [1], priority: high, message: "{device}: door open", service: security}
        """)
    assert (err.key, err.value) == ("alarms[0].type", ...)
    assert "device:" in err.message


TYPE_DOOR = """\
- {name: door, type: lighting_cabinet, point: door_open, condition: state, states: [1],
   priority: high, message: "{device}: door open", service: security}
"""
DEVICE_DOOR = """\
- {name: door, device: LC-DIJ-001, point: door_open, condition: state, states: [0],
   priority: low, message: "{device}: door closed", service: security}
"""


@pytest.mark.parametrize("alarms", [TYPE_DOOR + DEVICE_DOOR, DEVICE_DOOR + TYPE_DOOR],
                         ids=["type-alarm-first", "device-alarm-first"])
def test_device_alarm_may_not_reuse_a_name_of_its_types_alarms(tmp_path: Path, shipped: Config,
                                                                alarms: str) -> None:
    err = load_error(tmp_path, shipped, alarms)
    assert (err.key, err.value, err.line) == ("alarms[1].name", "door", 7)
    assert "duplicate alarm" in err.message and "first on line 5" in err.message


def test_devices_may_each_have_an_alarm_of_one_name(tmp_path: Path, shipped: Config) -> None:
    config = load_alarms(tmp_path, shipped, DEVICE_DOOR + DEVICE_DOOR.replace("LC-DIJ-001", "LC-DIJ-002"))
    assert [a.key for a in config.alarms] == [("LC-DIJ-001", "door"), ("LC-DIJ-002", "door")]
    # ... and another type may have an alarm of that name too.
    config = load_alarms(tmp_path, shipped, TYPE_DOOR + TYPE_DOOR.replace("lighting_cabinet", "traffic_junction"))
    assert [a.key for a in config.alarms] == [("lighting_cabinet", "door"), ("traffic_junction", "door")]


# Keys per condition (CONDITION_KEYS): what a condition does not take is an error, never ignored.

VALID = {
    **{c: {"point": "mains_voltage", "limit": 180} for c in alarms_config.LIMIT_CONDITIONS},
    "state": {"point": "door_open", "states": [1]},
    "rate_of_change": {"point": "mains_voltage", "limit": 20},
    "comm_loss": {},
    "expression": {"expression": "power > 1"},
}
EXTRA = {"point": "power", "limit": 1, "deadband": 1, "states": [1], "expression": "power > 1"}


def _alarm(condition: str, **keys: object) -> str:
    """One alarm of the condition with its keys (VALID), keys changed or removed (...), as a YAML flow mapping."""
    fields = {"name": "a", "type": "lighting_cabinet", "condition": condition, **VALID[condition], **keys,
              "priority": "low", "message": "{device}", "service": "security"}
    return "- {" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items() if v is not ...) + "}\n"


def test_every_condition_has_its_keys() -> None:
    assert set(VALID) == set(alarms_config.CONDITIONS) == set(alarms_config.CONDITION_KEYS)
    assert set(EXTRA) == set().union(*alarms_config.CONDITION_KEYS.values())
    for condition, keys in alarms_config.CONDITION_KEYS.items():
        assert set(VALID[condition]) == set(keys) - {"deadband"}, condition


@pytest.mark.parametrize("condition", alarms_config.CONDITIONS)
def test_each_condition_loads_with_its_keys(tmp_path: Path, shipped: Config, condition: str) -> None:
    (a,) = load_alarms(tmp_path, shipped, _alarm(condition)).alarms
    assert a.condition == condition
    assert (a.point is not None) == ("point" in alarms_config.CONDITION_KEYS[condition])
    assert (a.limit is not None) == ("limit" in alarms_config.CONDITION_KEYS[condition])


@pytest.mark.parametrize(("condition", "key"), [
    (c, k) for c in alarms_config.CONDITIONS for k in EXTRA if k not in alarms_config.CONDITION_KEYS[c]])
def test_a_key_the_condition_does_not_take_is_an_error(tmp_path: Path, shipped: Config, condition: str,
                                                       key: str) -> None:
    err = load_error(tmp_path, shipped, _alarm(condition, **{key: EXTRA[key]}))
    assert (err.key, err.value) == (f"alarms[0].{key}", EXTRA[key])
    article = "an" if condition[0] in "aeiou" else "a"
    assert err.message == f"{article} {condition} alarm has no {key} (remove this key)"


@pytest.mark.parametrize("condition", [c for c in alarms_config.CONDITIONS
                                       if set(alarms_config.CONDITION_KEYS[c]) - {"deadband"}])
def test_a_key_the_condition_needs_is_required(tmp_path: Path, shipped: Config, condition: str) -> None:
    for key in VALID[condition]:
        err = load_error(tmp_path, shipped, _alarm(condition, **{key: ...}))
        assert err.key == f"alarms[0].{key}", key
        # states: the loader says what it expected, with the None it found
        assert "required key is missing" in err.message or (key, err.value) == ("states", None), err


@pytest.mark.parametrize("limit", [0, -20])
def test_rate_of_change_limit_is_positive(tmp_path: Path, shipped: Config, limit: float) -> None:
    err = load_error(tmp_path, shipped, _alarm("rate_of_change", limit=limit))
    assert (err.key, err.value, err.message) == ("alarms[0].limit", limit, "must be greater than 0")


def test_limit_alarms_keep_negative_limits(tmp_path: Path, shipped: Config) -> None:
    text = _alarm("low", limit=-20)
    assert load_alarms(tmp_path, shipped, text).alarms[0].limit == -20.0


# Expressions in alarms.yaml.

def test_expression_naming_an_unknown_point_lists_the_points(tmp_path: Path, shipped: Config) -> None:
    err = load_error(tmp_path, shipped, _alarm("expression", expression="lamps_on and pwr < 1"))
    points = ", ".join(p.name for p in shipped.types["lighting_cabinet"].points)
    assert (err.key, err.value) == ("alarms[0].expression", "lamps_on and pwr < 1")
    assert err.message == f"unknown point 'pwr' (points: {points})"


@pytest.mark.parametrize(("expression", "culprit"), [
    ("__import__('os')", "__import__('os')"),
    ("power.real > 1", "power.real"),
    ("power ** 2 > 1", "power ** 2"),
    ("len(power) > 1", "len(power)"),
    ("'power' > 1", "'power'"),
])
def test_expression_with_what_is_not_allowed_names_it(tmp_path: Path, shipped: Config, expression: str,
                                                      culprit: str) -> None:
    err = load_error(tmp_path, shipped, _alarm("expression", expression=expression))
    assert (err.key, err.value) == ("alarms[0].expression", expression)
    assert err.message.startswith(f"{culprit!r} is not allowed (use point names")


# The expression compiler, on numpy arrays (one row per device).

POINTS = ["a", "b", "c", "lamps_on", "power", "lamp_count"]
NAN = math.nan


def run(text: str, **values: list[float]) -> list[bool]:
    evaluate, used = compile_expression(text, POINTS)
    assert set(used) <= set(values), used
    out = evaluate({k: np.array(v, dtype=np.float64) for k, v in values.items()})
    assert out.dtype == bool and out.shape == (len(next(iter(values.values()))),)
    return out.tolist()


def test_compile_returns_the_points_read_in_order_of_appearance() -> None:
    _, used = compile_expression("lamps_on and power < 0.2 * lamp_count * 0.05 or power > lamp_count", POINTS)
    assert used == ("lamps_on", "power", "lamp_count")


def test_arithmetic_and_precedence() -> None:
    # 20 lamps of 50 W: under 20 % of 1 kW is under 0.2 kW.
    assert run("lamps_on and power < 0.2 * lamp_count * 0.05", lamps_on=[1, 1, 0, 1],
               power=[0.1, 0.3, 0.1, 0.19], lamp_count=[20, 20, 20, 20]) == [True, False, False, True]
    assert run("a + b * 2 == 7", a=[1, 3], b=[3, 2]) == [True, True]
    assert run("(a + b) * 2 == 8", a=[1, 3], b=[3, 2]) == [True, False]
    assert run("a - b - c == 0", a=[5, 5], b=[3, 2], c=[2, 3]) == [True, True]
    assert run("-a > 0", a=[-1, 1]) == [True, False]
    assert run("a / 4 == 0.5", a=[2, 4]) == [True, False]


def test_nan_makes_comparisons_false() -> None:
    for op in ("<", "<=", ">", ">=", "=="):
        assert run(f"a {op} 1", a=[NAN]) == [False], op
        assert run(f"1 {op} a", a=[NAN]) == [False], op
    assert run("a > 1", a=[NAN, 2, 0]) == [False, True, False]
    assert run("a + 1 > 0", a=[NAN, 0]) == [False, True]


def test_nan_makes_negated_conditions_false_too() -> None:
    assert run("a != 1", a=[NAN]) == [False]
    assert run("not a > 1", a=[NAN]) == [False]


def test_a_point_alone_is_true_when_non_zero_and_false_without_a_value() -> None:
    assert run("a", a=[0, 1, 2, -1, NAN]) == [False, True, True, True, False]
    assert run("a and b", a=[1, 1, 0, NAN], b=[1, 0, 1, 1]) == [True, False, False, False]
    assert run("a or b", a=[1, 0, 0, NAN], b=[0, 1, 0, NAN]) == [True, True, False, False]


def test_not_and_or() -> None:
    a, b, c = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1]
    rows = list(zip(a, b, c))
    assert run("a and b or c", a=a, b=b, c=c) == [bool((x and y) or z) for x, y, z in rows]
    assert run("a or b and c", a=a, b=b, c=c) == [bool(x or (y and z)) for x, y, z in rows]
    assert run("not a and b", a=a, b=b, c=c) == [bool((not x) and y) for x, y, z in rows]
    assert run("not (a or b)", a=a, b=b, c=c) == [not (x or y) for x, y, z in rows]
    assert run("a and b and c", a=a, b=b, c=c) == [bool(x and y and z) for x, y, z in rows]
    assert run("a > 0 and not b == 1", a=[1, 1], b=[1, 0]) == [False, True]
    assert run("a == True or b == False", a=[1, 0, 0], b=[1, 0, 1]) == [True, True, False]


def test_comparison_chains() -> None:
    assert run("0 < a <= 5", a=[-1, 0, 3, 5, 6, NAN]) == [False, False, True, True, False, False]
    assert run("a < b < c", a=[1, 1, 3], b=[2, 2, 2], c=[3, 2, 1]) == [True, False, False]
    assert run("a == b != c", a=[1, 1, 2], b=[1, 1, 1], c=[2, 1, 1]) == [True, False, False]


def test_abs_min_max() -> None:
    assert run("abs(a - b) > 1", a=[0, 3, 1, NAN], b=[3, 0, 1.5, 0]) == [True, True, False, False]
    assert run("min(a, b) < 0", a=[-1, 1, 1], b=[1, -1, 1]) == [True, True, False]
    assert run("max(a, b, c) >= 5", a=[5, 1, 1], b=[1, 6, 1], c=[1, 1, 4.9]) == [True, True, False]
    assert run("min(a, 2) == 2", a=[3, 1]) == [True, False]
    assert run("max(a, b) > 0", a=[NAN], b=[NAN]) == [False]  # no value at all: no alarm


def test_division_by_zero_gives_no_exception() -> None:
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a RuntimeWarning
        assert run("a / b > 1", a=[1, 0, -1, 4], b=[0, 0, 0, 2]) == [True, False, False, True]
        assert run("a / (b - b) < 0", a=[1, -1], b=[5, 5]) == [False, True]


def test_constants_broadcast_to_every_device() -> None:
    assert run("a > 0 or 1 > 0", a=[NAN, -1, 1]) == [False, True, True]  # no data for a: never in alarm
    assert run("a > 0 and 1 > 2", a=[NAN, -1, 1]) == [False, False, False]


@pytest.mark.parametrize(("text", "message"), [
    ("a.real > 1", "'a.real' is not allowed"),
    ("a[0] > 1", "'a[0]' is not allowed"),
    ("a ** 2 > 1", "'a ** 2' is not allowed"),
    ("a // 2 > 1", "'a // 2' is not allowed"),
    ("a % 2 == 1", "'a % 2' is not allowed"),
    ("a & b", "'a & b' is not allowed"),
    ("a is b", "'a is b' is not allowed"),
    ("a in (1, 2)", "'a in (1, 2)' is not allowed"),
    ("round(a) > 1", "'round(a)' is not allowed"),
    ("max(a, b, key=c) > 1", "'max(a, b, key=c)' is not allowed"),
    ("a if b else c", "'a if b else c' is not allowed"),
    ("(lambda: a)()", "'(lambda: a)()' is not allowed"),
    ("__import__('os').system('true')", "is not allowed"),
    ("a > None", "'None' is not allowed"),
    ("a == 'on'", "\"'on'\" is not allowed"),
    ("a > 1j", "'1j' is not allowed"),
    ("abs(a, b) > 1", "abs() takes 1"),
    ("max(a) > 1", "max() takes 2 to 8 arguments"),
    ("min(a, a, a, a, a, a, a, a, a) > 1", "min() takes 2 to 8 arguments"),
    ("a >", "incomplete expression"),
    ("", "empty expression"),
    ("a > 1; b", "not a valid expression"),
    ("1 > 0", "the expression reads no point"),
    ("voltage > 1", "unknown point 'voltage' (points: a, b, c, lamps_on, power, lamp_count)"),
])
def test_what_is_not_allowed_is_an_expression_error(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, POINTS)
    assert message in str(info.value)


def test_nothing_is_executed_at_compile_time(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ExpressionError):
        compile_expression(f"__import__('pathlib').Path({str(marker)!r}).touch()", POINTS)
    assert not marker.exists()


# Suppression is scoped by device (the lead's fixes after review).

ALARM = """\
- {{name: {name}, {scope}, point: {point}, condition: state, states: [1], priority: low,
   message: "{{device}}", service: security{extra}}}
"""


def alarm(name: str, scope: str = "type: lighting_cabinet", point: str = "door_open", extra: str = "") -> str:
    return ALARM.format(name=name, scope=scope, point=point, extra=extra)


def test_a_device_alarm_cannot_be_suppressed_by_another_devices_alarm(tmp_path: Path, shipped: Config) -> None:
    err = load_error(tmp_path, shipped, alarm("a", "device: LC-DIJ-001")
                     + alarm("b", "device: LC-DIJ-002", extra=", suppressed_by: [a]"))
    assert "no alarm of that name on device LC-DIJ-002" in err.message


def test_a_type_alarm_may_be_suppressed_by_one_devices_alarm(tmp_path: Path, shipped: Config) -> None:
    cfg = load_alarms(tmp_path, shipped, alarm("a", "device: LC-DIJ-001") + alarm("b", extra=", suppressed_by: [a]"))
    assert cfg.alarms[1].suppressed_by == ("a",)


def test_cycles_are_found_per_device(tmp_path: Path, shipped: Config) -> None:
    # Device 1's own "d" does not make a loop for device 2, which has no "d".
    load_alarms(tmp_path, shipped, alarm("t", extra=", suppressed_by: [d]")
                + alarm("d", "device: LC-DIJ-001", point="mains_fault"))
    # A loop through a type alarm and a device's own alarm is found.
    err = load_error(tmp_path, shipped, alarm("t", extra=", suppressed_by: [d]")
                     + alarm("d", "device: LC-DIJ-002", point="mains_fault", extra=", suppressed_by: [t]"))
    assert "circle: t -> d -> t" in err.message or "circle: d -> t -> d" in err.message
