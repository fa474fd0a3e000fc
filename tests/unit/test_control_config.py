"""tags.yaml's control sections (scada/control/config.py): what the shipped file declares, and
every mistake a technician can make, refused with its file, line, key and a message.

Each error case writes a small tags.yaml (one Modbus cabinet type, two cabinets, one MQTT
bollard) with the piece under test, and asserts the whole message: ``tags.yaml:<line>: <key>:
<message> (got <value>)``, the line found by the text it is on.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from city_scada import load_config
from common.yamlsrc import ConfigError
from scada.control import config as control_config
from scada.control.model import BAD_INVALID_STATE, BAD_REQUEST_NOT_ALLOWED, ControlSettings, RateLimit, Step, ZoneDef

ROOT = Path(__file__).resolve().parents[2]

TYPES = """\
equipment_types:
  cab:
    class: lighting
    driver: modbus
    timeout: 1.0
    points:
      mode: {table: holding, address: 0, type: uint16, writable: true, enum: {0: auto, 1: forced_on, 2: forced_off, 3: manual_dim}}
      dim_setpoint: {table: holding, address: 1, type: uint16, writable: true, range: [0, 100]}
      dim_level: {table: input, address: 0, type: uint16, range: [0, 100]}
      power: {table: input, address: 1, type: uint16}
      trip: {table: discrete, address: 0}
      reset: {table: coil, address: 0, writable: true}
CAB
  bol:
    class: bollard
    driver: mqtt
    command_topic: b/{device}/cmd
    ack_topic: b/{device}/ack
    points:
      position: {topic: "b/{device}/state", json: position, enum: {0: down, 2: up}}
      vehicle: {topic: "b/{device}/state", json: vehicle, type: bool}
      label: {topic: "b/{device}/state", json: label, type: text}
      command: {type: command, writable: true, enum: {0: lower, 1: raise}}
BOL
devices:
  - {name: C1, type: cab, commune: Dijon, lat: 47.3220, lon: 5.0415, endpoint: 127.0.0.1:15020}
  - {name: C2, type: cab, commune: Talant, lat: 47.3400, lon: 5.0000, endpoint: 127.0.0.1:15021}
  - {name: B1, type: bol, commune: Dijon, lat: 47.3243, lon: 5.0302, endpoint: 127.0.0.1:1883}
"""

DIM = """\
    commands:
      SetDimLevel:
        arguments:
          level: {type: float, range: [0, 100], unit: "%"}
          until: {type: datetime}
        writes: {mode: manual_dim, dim_setpoint: $level}
        confirm: {dim_level: $level}
        interlocks: [no_trip]
      SetMode:
        arguments:
          mode: {type: enum, enum: {0: auto, 1: forced_on, 2: forced_off}}
        writes: {mode: $mode}
        confirm: {mode: $mode}
      ResetTrip:
        role: Engineer
        critical: true
        writes: {reset: 1}
        confirm: {trip: false}
    interlocks:
      no_trip:
        when: not trip
        message: the breaker has tripped
"""


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(textwrap.dedent(text), " " * spaces)


def write(tmp_path: Path, cab: str = DIM, bol: str = "", top: str = "") -> str:
    text = TYPES.replace("CAB\n", cab).replace("BOL\n", bol) + textwrap.dedent(top)
    (tmp_path / "tags.yaml").write_text(text, encoding="utf-8")
    return text


def error(tmp_path: Path, cab: str = DIM, bol: str = "", top: str = "") -> tuple[str, str]:
    """(the error's text without the folder, the file's text)."""
    text = write(tmp_path, cab, bol, top)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    return str(info.value).replace(f"{tmp_path}/", ""), text


def line(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line holding ``needle``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    return hits[nth - 1]


def cab_with(old: str, new: str) -> str:
    assert old in DIM, old
    return DIM.replace(old, new)


# -- what loads ----------------------------------------------------------------------------


def test_a_type_s_commands_and_interlocks_are_read(tmp_path: Path) -> None:
    write(tmp_path)
    c = load_config(tmp_path).control
    dim = c.commands["cab"]["SetDimLevel"]
    assert dim.writes == (Step("mode", value=3.0), Step("dim_setpoint", arg="level"))  # the label resolved
    assert dim.confirm == (Step("dim_level", arg="level"),)
    assert [(a.name, a.type, a.range, a.unit) for a in dim.arguments] == [
        ("level", "float", (0.0, 100.0), "%"),
        ("until", "datetime", None, ""),
    ]
    assert dim.timeout == 3.0  # 3 x the type's 1 s
    assert (dim.role, dim.critical, dim.interlocks, dim.tolerance) == ("Operator", False, ("no_trip",), 0.0)
    assert dim.source.endswith(f"tags.yaml:{line(TYPES.replace('CAB', DIM), 'SetDimLevel:')}")
    reset = c.commands["cab"]["ResetTrip"]
    assert (reset.role, reset.critical, reset.confirm) == ("Engineer", True, (Step("trip", value=0.0),))
    assert c.commands["cab"]["SetMode"].arguments[0].enum == ((0, "auto"), (1, "forced_on"), (2, "forced_off"))
    interlock = c.interlocks["cab"]["no_trip"]
    assert (interlock.when, interlock.message, interlock.status) == (
        "not trip",
        "the breaker has tripped",
        BAD_INVALID_STATE,
    )
    assert "bol" not in c.commands and c.zones == {} and c.schedules == ()


def test_an_emergency_command_is_read(tmp_path: Path) -> None:
    write(tmp_path, cab=cab_with("        writes: {mode: $mode}", "        emergency: yes\n        writes: {mode: $mode}"))
    c = load_config(tmp_path).control
    assert {n: cmd.emergency for n, cmd in c.commands["cab"].items()} == {
        "SetDimLevel": False,
        "SetMode": True,
        "ResetTrip": False,
    }
    assert c.settings.emergency_rate == RateLimit(10.0, 3)  # the default, without a control section


def test_the_default_timeout_is_at_least_two_seconds(tmp_path: Path) -> None:
    write(tmp_path, cab=DIM.replace("    commands:", "    commands:", 1), top="")
    text = (tmp_path / "tags.yaml").read_text().replace("    timeout: 1.0\n", "    timeout: 0.2\n", 1)
    (tmp_path / "tags.yaml").write_text(text)
    assert load_config(tmp_path).control.commands["cab"]["SetMode"].timeout == 2.0


def test_the_shipped_configuration_declares_the_simulated_equipment_s_commands() -> None:
    config = load_config(ROOT)
    c = config.control
    assert {t: list(cmds) for t, cmds in c.commands.items()} == {
        "lighting_cabinet": ["SetMode", "SetDimLevel", "ResetTrip"],
        "traffic_junction": ["SetPlan", "SetMode"],
        "access_bollard": ["Raise", "Lower", "EmergencyLower", "Reset"],
    }
    dim = c.commands["lighting_cabinet"]["SetDimLevel"]
    assert dim.writes == (Step("mode", value=3.0), Step("dim_setpoint", arg="level"))
    assert dim.confirm == (Step("dim_level", arg="level"),)
    assert [a.name for a in dim.arguments] == ["level", "until"]
    reset = c.commands["lighting_cabinet"]["ResetTrip"]
    assert (reset.writes, reset.confirm) == ((Step("reset_trip", value=1.0),), (Step("earth_leakage_trip", value=0.0),))
    junction_mode = c.commands["traffic_junction"]["SetMode"]
    assert junction_mode.critical and junction_mode.arguments[0].enum == ((0, "off"), (1, "flashing"), (3, "normal"))
    assert "no_conflict" in junction_mode.interlocks
    assert c.interlocks["traffic_junction"]["no_conflict"].status == BAD_REQUEST_NOT_ALLOWED
    assert "reset on site" in c.interlocks["traffic_junction"]["no_conflict"].message
    plan = c.commands["traffic_junction"]["SetPlan"]
    assert plan.writes == (Step("mode", value=4.0), Step("plan", arg="plan"))  # central, then the plan
    raise_ = c.commands["access_bollard"]["Raise"]
    assert raise_.writes == (Step("command", value=1.0),) and raise_.confirm == (Step("position", value=2.0),)
    assert set(raise_.interlocks) == {"no_vehicle", "no_emergency", "no_obstruction"}
    assert c.commands["access_bollard"]["EmergencyLower"].confirm == (
        Step("position", value=0.0),
        Step("emergency", value=1.0),
    )
    # The fire brigade's lowering has its own budget; no other shipped command does.
    emergency = [(t, n) for t, cmds in c.commands.items() for n, cmd in cmds.items() if cmd.emergency]
    assert emergency == [("access_bollard", "EmergencyLower")]
    assert not c.commands["access_bollard"]["EmergencyLower"].critical
    assert c.settings.emergency_rate == RateLimit(10.0, 3) == ControlSettings().emergency_rate
    # Every device but the crews' vehicles is controlled.
    assert len(config.controlled) == sum(1 for d in config.devices if d.type != "crew_vehicle")
    # Zones and the schedule.
    members = {z: control_config.zone_members(zone, config.devices, config.types) for z, zone in c.zones.items()}
    assert members["fire_access_centre"] == ("B-DIJ-001", "B-DIJ-002")
    assert members["centre_1km"] and all(m.startswith("B-") for m in members["centre_1km"])
    assert members["south_corridor"] and all(m.startswith("J-") for m in members["south_corridor"])
    (night,) = c.schedules
    assert [(s.anchor, s.offset_s, s.command, dict(s.arguments)) for s in night.steps] == [
        ("sunset", 0.0, "SetMode", {"mode": 1.0, "until": 0.0}),
        ("clock", 23 * 3600.0, "SetDimLevel", {"level": 50.0, "until": 0.0}),
        ("clock", 3600.0, "SetDimLevel", {"level": 30.0, "until": 0.0}),
        ("sunrise", 0.0, "SetMode", {"mode": 2.0, "until": 0.0}),
    ]
    assert c.settings.timezone == "Europe/Paris" and c.settings.select_timeout == 10.0


def test_the_check_command_prints_the_commands() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "city_scada", "check", "--config", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SetDimLevel(level, until)  [Operator; interlocks no_trip, mains_present, no_lamp_test]" in out.stdout
    assert "SetMode(mode)  [Operator; select-before-operate; interlocks no_conflict, powered]" in out.stdout
    assert "EmergencyLower()  [Operator; emergency]" in out.stdout
    assert "schedules: metropole_night" in out.stdout


def test_top_level_sections_are_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        top="""\
        control:
          select_timeout: 5
          user_rate: {per_minute: 30, burst: 3}
          emergency_rate: {per_minute: 12, burst: 2}
          group_concurrency: 8
          timezone: Europe/Paris
        zones:
          listed: {devices: [C1, B1]}
          round: {circle: {lat: 47.3220, lon: 5.0415, radius_m: 1000}, classes: [bollard]}
          box: {polygon: [[47.33, 4.99], [47.35, 4.99], [47.35, 5.01]]}
        schedules:
          - name: night
            communes: [Dijon]
            zones: [box]
            steps:
              - {at: sunset-00:15, command: SetMode, arguments: {mode: auto}}
              - {at: "23:30", command: SetDimLevel, arguments: {level: 40}}
              - {at: sunrise+01:00, command: SetMode, arguments: {mode: 2}}
        """,
    )
    config = load_config(tmp_path)
    c = config.control
    assert (c.settings.select_timeout, c.settings.user_rate.per_minute, c.settings.user_rate.burst) == (5.0, 30.0, 3)
    assert c.settings.device_rate.per_minute == 20.0 and c.settings.group_concurrency == 8
    assert c.settings.emergency_rate == RateLimit(12.0, 2)
    members = {z: control_config.zone_members(zone, config.devices, config.types) for z, zone in c.zones.items()}
    assert members == {"listed": ("C1", "B1"), "round": ("B1",), "box": ("C2",)}
    assert c.zones["round"] == ZoneDef(
        "round", circle=(47.322, 5.0415, 1000.0), classes=("bollard",), source=c.zones["round"].source
    )
    (night,) = c.schedules
    assert (night.communes, night.zones, night.classes) == (("Dijon",), ("box",), ("lighting",))
    assert [(s.anchor, s.offset_s, s.text) for s in night.steps] == [
        ("sunset", -900.0, "sunset-00:15"),
        ("clock", 23.5 * 3600, "23:30"),
        ("sunrise", 3600.0, "sunrise+01:00"),
    ]
    assert dict(night.steps[0].arguments) == {"mode": 0.0}  # no datetime argument: nothing to default


# -- mistakes in a type's commands ----------------------------------------------------------


CASES_IN_COMMANDS = [
    # (what, old text of DIM, new text, needle of the blamed line, key, message and value)
    (
        "unknown written point",
        "writes: {mode: $mode}",
        "writes: {mood: $mode}",
        "writes: {mood",
        "equipment_types.cab.commands.SetMode.writes.mood",
        "the type has no such point (points: mode, dim_setpoint, dim_level, power, trip, reset) (got 'mood')",
    ),
    (
        "unknown confirmed point",
        "confirm: {dim_level: $level}",
        "confirm: {dim_lvl: $level}",
        "confirm: {dim_lvl",
        "equipment_types.cab.commands.SetDimLevel.confirm.dim_lvl",
        "the type has no such point (points: mode, dim_setpoint, dim_level, power, trip, reset) (got 'dim_lvl')",
    ),
    (
        "written point not writable",
        "writes: {reset: 1}",
        "writes: {trip: 1}",
        "writes: {trip",
        "equipment_types.cab.commands.ResetTrip.writes.trip",
        "this point is not writable: declare it `writable: true` to command it (got 'trip')",
    ),
    (
        "$arg naming no argument",
        "dim_setpoint: $level}",
        "dim_setpoint: $levle}",
        "dim_setpoint: $levle",
        "equipment_types.cab.commands.SetDimLevel.writes.dim_setpoint",
        "no such argument (arguments: $level, $until) (got '$levle')",
    ),
    (
        "argument type",
        "level: {type: float,",
        "level: {type: double,",
        "level: {type: double",
        "equipment_types.cab.commands.SetDimLevel.arguments.level.type",
        "must be one of: float, int, bool, enum, datetime (got 'double')",
    ),
    (
        "bad range",
        "range: [0, 100], unit",
        "range: [100, 0], unit",
        "range: [100, 0]",
        "equipment_types.cab.commands.SetDimLevel.arguments.level.range",
        "min must be below max (got [100, 0])",
    ),
    (
        "range on an enum",
        "mode: {type: enum, enum:",
        "mode: {type: enum, range: [0, 2], enum:",
        "range: [0, 2]",
        "equipment_types.cab.commands.SetMode.arguments.mode.range",
        "only a float or int argument has a range (this one is enum) (got [0, 2])",
    ),
    (
        "enum without values",
        "mode: {type: enum, enum: {0: auto, 1: forced_on, 2: forced_off}}",
        "mode: {type: enum}",
        "mode: {type: enum}",
        "equipment_types.cab.commands.SetMode.arguments.mode.enum",
        "required key is missing: an enum argument lists its values, e.g. {1: day, 2: peak}",
    ),
    (
        "enum with a bad label",
        "2: forced_off}}\n        writes",
        "2: forced off}}\n        writes",
        "2: forced off",
        "equipment_types.cab.commands.SetMode.arguments.mode.enum.2",
        "a name uses letters, digits, '_', '.' and '-' only, and starts with a letter or digit "
        "(an enum maps integer values to labels) (got 'forced off')",
    ),
    (
        "argument enum value the point lacks",
        "2: forced_off}}\n        writes",
        "7: forced_off}}\n        writes",
        "writes: {mode: $mode}",
        "equipment_types.cab.commands.SetMode.writes.mode",
        "the argument's value 7 is not a value of mode (0 (auto), 1 (forced_on), 2 (forced_off), 3 (manual_dim)) "
        "(got '$mode')",
    ),
    (
        "argument range beyond the point's",
        "range: [0, 100], unit",
        "range: [0, 120], unit",
        "dim_setpoint: $level",
        "equipment_types.cab.commands.SetDimLevel.writes.dim_setpoint",
        "the argument's range [0.0, 120.0] exceeds dim_setpoint's (0 to 100) (got '$level')",
    ),
    (
        "constant outside the point's range",
        "writes: {mode: manual_dim, dim_setpoint: $level}",
        "writes: {mode: manual_dim, dim_setpoint: 150}",
        "dim_setpoint: 150",
        "equipment_types.cab.commands.SetDimLevel.writes.dim_setpoint",
        "outside dim_setpoint's range (0 to 100) (got 150)",
    ),
    (
        "constant not in the point's enum",
        "writes: {mode: manual_dim,",
        "writes: {mode: dimmed,",
        "writes: {mode: dimmed",
        "equipment_types.cab.commands.SetDimLevel.writes.mode",
        "expected a number or one of its labels (auto, forced_on, forced_off, manual_dim), or $argument (got 'dimmed')",
    ),
    (
        "constant number not in the point's enum",
        "writes: {mode: manual_dim,",
        "writes: {mode: 9,",
        "writes: {mode: 9",
        "equipment_types.cab.commands.SetDimLevel.writes.mode",
        "not a value of mode (its values: 0 (auto), 1 (forced_on), 2 (forced_off), 3 (manual_dim)) (got 9)",
    ),
    (
        "bool point given 2",
        "confirm: {trip: false}",
        "confirm: {trip: 2}",
        "confirm: {trip: 2}",
        "equipment_types.cab.commands.ResetTrip.confirm.trip",
        "trip is true or false (0 or 1) (got 2)",
    ),
    (
        "role without the command permission",
        "role: Engineer",
        "role: Observer",
        "role: Observer",
        "equipment_types.cab.commands.ResetTrip.role",
        "the least role allowed to send the command: one of Operator, Engineer, Supervisor (got 'Observer')",
    ),
    (
        "role that is no role",
        "role: Engineer",
        "role: Admin",
        "role: Admin",
        "equipment_types.cab.commands.ResetTrip.role",
        "the least role allowed to send the command: one of Operator, Engineer, Supervisor (got 'Admin')",
    ),
    (
        "zero timeout",
        "critical: true\n",
        "critical: true\n        timeout: 0\n",
        "timeout: 0",
        "equipment_types.cab.commands.ResetTrip.timeout",
        "must be greater than 0 (got 0)",
    ),
    (
        "negative timeout",
        "critical: true\n",
        "critical: true\n        timeout: -1\n",
        "timeout: -1",
        "equipment_types.cab.commands.ResetTrip.timeout",
        "must be greater than 0 (got -1)",
    ),
    (
        "undeclared interlock",
        "interlocks: [no_trip]",
        "interlocks: [no_trip, no_door]",
        "interlocks: [no_trip, no_door]",
        "equipment_types.cab.commands.SetDimLevel.interlocks",
        "the type declares no such interlock (its interlocks: no_trip) (got 'no_door')",
    ),
    (
        "interlock that does not compile",
        "when: not trip",
        "when: not trip and",
        "when: not trip and",
        "equipment_types.cab.interlocks.no_trip.when",
        "incomplete expression (something is missing at the end) (got 'not trip and')",
    ),
    (
        "interlock over an unknown point",
        "when: not trip",
        "when: not tripped",
        "when: not tripped",
        "equipment_types.cab.interlocks.no_trip.when",
        "unknown point 'tripped' (points: mode, dim_setpoint, dim_level, power, trip, reset) (got 'not tripped')",
    ),
    (
        "interlock status",
        "message: the breaker has tripped",
        "message: the breaker has tripped\n        status: BadTimeout",
        "status: BadTimeout",
        "equipment_types.cab.interlocks.no_trip.status",
        "the refusal's status code: one of BadUserAccessDenied, BadInvalidState, BadRequestNotAllowed, BadNotExecutable "
        "(got 'BadTimeout')",
    ),
    (
        "unknown command key",
        "critical: true\n",
        "critical: true\n        confirm_timeout: 3\n",
        "confirm_timeout: 3",
        "equipment_types.cab.commands.ResetTrip.confirm_timeout",
        "unknown key (known keys: arguments, confirm, critical, description, emergency, interlocks, role, timeout, tolerance, writes) "
        "(got 'confirm_timeout')",
    ),
    (
        "unknown interlock key",
        "message: the breaker has tripped",
        "message: the breaker has tripped\n        severity: 3",
        "severity: 3",
        "equipment_types.cab.interlocks.no_trip.severity",
        "unknown key (known keys: inputs, message, status, when) (got 'severity')",
    ),
    (
        "command writing nothing",
        "        writes: {reset: 1}\n",
        "",
        "ResetTrip:",
        "equipment_types.cab.commands.ResetTrip.writes",
        "required key is missing: the points written, e.g. {mode: 3, dim_setpoint: $level}",
    ),
    (
        "command without read-back",
        "        confirm: {trip: false}\n",
        "",
        "ResetTrip:",
        "equipment_types.cab.commands.ResetTrip.confirm",
        "required key is missing: the read-back that confirms the command, e.g. {dim_level: $level}",
    ),
    (
        "a command named Write",
        "      ResetTrip:",
        "      Write:",
        "      Write:",
        "equipment_types.cab.commands.Write",
        "Write is the Write of a writable tag: choose another name (got 'Write')",
    ),
    (
        "datetime written to a point",
        "dim_setpoint: $level}",
        "dim_setpoint: $until}",
        "dim_setpoint: $until",
        "equipment_types.cab.commands.SetDimLevel.writes.dim_setpoint",
        "a datetime argument is not a point's value (got '$until')",
    ),
    (
        "argument named on",
        "          until: {type: datetime}",
        "          on: {type: bool}",
        "on: {type: bool}",
        "equipment_types.cab.commands.SetDimLevel.arguments.True",
        "YAML reads on/off/yes/no as true/false: quote the name (got True)",
    ),
    (
        "an emergency command that is critical",
        "        critical: true\n",
        "        critical: true\n        emergency: true\n",
        "emergency: true",
        "equipment_types.cab.commands.ResetTrip.emergency",
        "an emergency command cannot be critical: it goes at once, without Select/Operate "
        "(drop `critical: true`, or make it a routine command) (got True)",
    ),
    (
        "emergency not a boolean",
        "        critical: true\n",
        "        critical: true\n        emergency: soon\n",
        "emergency: soon",
        "equipment_types.cab.commands.ResetTrip.emergency",
        "expected true or false (got 'soon')",
    ),
    (
        "an input alias shadowing a point",
        "when: not trip",
        "when: not trip\n        inputs: {power: Dijon/lighting/C2/trip}",
        "inputs: {power",
        "equipment_types.cab.interlocks.no_trip.inputs.power",
        "the type has a point of this name: choose another alias (got 'power')",
    ),
]


@pytest.mark.parametrize(
    ("what", "old", "new", "needle", "key", "message"), CASES_IN_COMMANDS, ids=[c[0] for c in CASES_IN_COMMANDS]
)
def test_a_mistake_in_a_command_is_located(
    tmp_path: Path, what: str, old: str, new: str, needle: str, key: str, message: str
) -> None:
    text, source = error(tmp_path, cab=cab_with(old, new))
    assert text == f"tags.yaml:{line(source, needle)}: {key}: {message}"


def test_a_text_point_cannot_be_commanded(tmp_path: Path) -> None:
    bol = indent(
        """\
        commands:
          Raise:
            writes: {command: raise}
            confirm: {label: up}
        """,
        4,
    )
    text, source = error(tmp_path, bol=bol)
    assert text == (
        f"tags.yaml:{line(source, 'confirm: {label')}: equipment_types.bol.commands.Raise.confirm.label: "
        "a text point cannot be commanded or confirmed (got 'label')"
    )


# -- interlock inputs: other devices' tags, checked once the devices are read ----------------


def with_input(tag: str) -> str:
    return cab_with("when: not trip", f"when: not trip and not upstream\n        inputs: {{upstream: {tag}}}")


def test_an_interlock_input_names_another_device_s_tag(tmp_path: Path) -> None:
    write(tmp_path, cab=with_input("Talant/lighting/C2/trip"))
    interlock = load_config(tmp_path).control.interlocks["cab"]["no_trip"]
    assert dict(interlock.inputs) == {"upstream": "Talant/lighting/C2/trip"}
    write(tmp_path, cab=with_input("Dijon/bollard/B1/Diagnostics/state"))
    assert load_config(tmp_path).control.interlocks["cab"]["no_trip"].inputs["upstream"].endswith("Diagnostics/state")


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("Dijon/lighting/C9/trip", "no device is named 'C9': expected <commune>/<class>/<device>/<point>"),
        ("Dijon/lighting/C2/trip", "no such tag: C2's tags are Talant/lighting/C2/<point>"),
        (
            "Talant/lighting/C2/tripped",
            "C2 has no point 'tripped' (its points: mode, dim_setpoint, dim_level, power, trip, reset)",
        ),
        ("Dijon/bollard/B1/label", "a text point cannot be an interlock's input"),
    ],
)
def test_an_interlock_input_naming_no_tag_is_located(tmp_path: Path, tag: str, message: str) -> None:
    text, source = error(tmp_path, cab=with_input(tag))
    assert text == (
        f"tags.yaml:{line(source, 'inputs: {upstream')}: equipment_types.cab.interlocks.no_trip.inputs.upstream: "
        f"{message} (got '{tag}')"
    )


def test_an_interlock_input_is_not_a_tag_name(tmp_path: Path) -> None:
    text, source = error(tmp_path, cab=with_input("C2.trip"))
    assert text == (
        f"tags.yaml:{line(source, 'inputs: {upstream')}: equipment_types.cab.interlocks.no_trip.inputs.upstream: "
        "expected a tag name: <commune>/<class>/<device>/<point> (got 'C2.trip')"
    )


# -- zones, schedules and settings -------------------------------------------------------------


TOP_CASES = [
    (
        "zone with two shapes",
        "zones:\n  z: {devices: [C1], circle: {lat: 47.3, lon: 5.0, radius_m: 10}}\n",
        "  z:",
        "zones.z: a zone gives exactly one of devices, circle or polygon (this one gives devices and circle)",
    ),
    (
        "zone with no shape",
        "zones:\n  z: {classes: [lighting]}\n",
        "  z:",
        "zones.z: a zone gives exactly one of devices, circle or polygon (this one gives none)",
    ),
    (
        "zone with an unknown device",
        "zones:\n  z:\n    devices: [C1, C7]\n",
        "devices: [C1, C7]",
        "zones.z.devices: no device has this name (got 'C7')",
    ),
    (
        "zone listing a device twice",
        "zones:\n  z:\n    devices: [C1, C1]\n",
        "devices: [C1, C1]",
        "zones.z.devices[1]: listed twice (got 'C1')",
    ),
    (
        "polygon of two vertices",
        "zones:\n  z:\n    polygon: [[47.3, 5.0], [47.4, 5.1]]\n",
        "polygon:",
        "zones.z.polygon: a polygon has at least 3 vertices, each [lat, lon] (got [[47.3, 5.0], [47.4, 5.1]])",
    ),
    (
        "polygon latitude out of range",
        "zones:\n  z:\n    polygon:\n      - [47.3, 5.0]\n      - [97.4, 5.1]\n      - [47.4, 5.2]\n",
        "[97.4, 5.1]",
        "zones.z.polygon[1]: latitude must be between -90 and 90 (got [97.4, 5.1])",
    ),
    (
        "circle longitude out of range",
        "zones:\n  z:\n    circle: {lat: 47.3, lon: 185, radius_m: 10}\n",
        "circle:",
        "zones.z.circle.lon: must be between -180 and 180 (got 185)",
    ),
    (
        "circle radius zero",
        "zones:\n  z:\n    circle: {lat: 47.3, lon: 5.0, radius_m: 0}\n",
        "circle:",
        "zones.z.circle.radius_m: must be greater than 0 (got 0)",
    ),
    (
        "zone of an unknown class",
        "zones:\n  z:\n    devices: [C1]\n    classes: [lamps]\n",
        "classes: [lamps]",
        "zones.z.classes: no equipment type has this class (classes: bollard, lighting) (got 'lamps')",
    ),
    (
        "zone with no device inside",
        "zones:\n  z:\n    circle: {lat: 48.85, lon: 2.35, radius_m: 500}\n",
        "  z:",
        "zones.z: the zone contains no device: check its coordinates (lat, lon) and classes",
    ),
    (
        "zone with no device of its classes",
        "zones:\n  z:\n    devices: [C1]\n    classes: [bollard]\n",
        "  z:",
        "zones.z: the zone contains no device of class bollard: check its coordinates (lat, lon) and classes",
    ),
    (
        "unknown zone key",
        "zones:\n  z:\n    devices: [C1]\n    colour: red\n",
        "colour: red",
        "zones.z.colour: unknown key (known keys: circle, classes, devices, polygon) (got 'colour')",
    ),
    (
        "duplicate zone",
        "zones:\n  z: {devices: [C1]}\n  z: {devices: [C2]}\n",
        "  z: {devices:",
        "zones.z: duplicate key (first defined on line LINE) (got 'z')",
    ),
    (
        "control: unknown time zone",
        "control:\n  timezone: Europe/Dijon\n",
        "timezone:",
        "control.timezone: not a time zone this machine knows: an IANA name such as Europe/Paris (got 'Europe/Dijon')",
    ),
    (
        "control: burst zero",
        "control:\n  user_rate: {per_minute: 10, burst: 0}\n",
        "user_rate:",
        "control.user_rate.burst: must be greater than 0 (got 0)",
    ),
    (
        "control: unknown key",
        "control:\n  select_time: 5\n",
        "select_time:",
        "control.select_time: unknown key, did you mean 'select_timeout'? (known keys: device_rate, emergency_rate, "
        "group_concurrency, select_timeout, timezone, user_rate) (got 'select_time')",
    ),
    (
        "control: emergency rate without burst",
        "control:\n  emergency_rate: {per_minute: 10}\n",
        "emergency_rate:",
        "control.emergency_rate.burst: required key is missing: a whole number",
    ),
]

SCHEDULE = """\
schedules:
  - name: night
    communes: [Dijon]
    steps:
      - {at: sunset, command: SetMode, arguments: {mode: auto}}
"""


def schedule_with(old: str, new: str) -> str:
    assert old in SCHEDULE, old
    return SCHEDULE.replace(old, new)


TOP_CASES += [
    (
        "schedule of an unknown commune",
        schedule_with("[Dijon]", "[Dijon, Dijonville]"),
        "communes:",
        "schedules[0].communes: no device stands in this commune (got 'Dijonville')",
    ),
    (
        "schedule of an unknown zone",
        schedule_with("communes: [Dijon]", "zones: [centre]"),
        "zones: [centre]",
        "schedules[0].zones: no such zone (zones: none declared) (got 'centre')",
    ),
    (
        "schedule of neither",
        schedule_with("    communes: [Dijon]\n", ""),
        "- name: night",
        "schedules[0]: a schedule names the communes or the zones it lights",
    ),
    (
        "schedule of an unknown command",
        schedule_with("command: SetMode", "command: SwitchOn"),
        "command: SwitchOn",
        "schedules[0].steps[0].command: the type cab has no such command (its commands: SetDimLevel, SetMode, ResetTrip) "
        "(got 'SwitchOn')",
    ),
    (
        "schedule of a critical command",
        schedule_with("command: SetMode, arguments: {mode: auto}", "command: ResetTrip"),
        "command: ResetTrip",
        "schedules[0].steps[0].command: a critical command (select-before-operate) cannot be scheduled (got 'ResetTrip')",
    ),
    (
        "schedule with a bad enum label",
        schedule_with("{mode: auto}", "{mode: dimmed}"),
        "{mode: dimmed}",
        "schedules[0].steps[0].arguments.mode: expected one of auto, forced_on, forced_off (got 'dimmed')",
    ),
    (
        "schedule with an enum number out of the list",
        schedule_with("{mode: auto}", "{mode: 3}"),
        "{mode: 3}",
        "schedules[0].steps[0].arguments.mode: expected one of auto (0), forced_on (1), forced_off (2) (got 3)",
    ),
    (
        "schedule with an unknown argument",
        schedule_with("{mode: auto}", "{mode: auto, level: 3}"),
        "level: 3",
        "schedules[0].steps[0].arguments.level: SetMode has no such argument (arguments: mode) (got 'level')",
    ),
    (
        "schedule with a missing argument",
        schedule_with("command: SetMode, arguments: {mode: auto}", "command: SetDimLevel"),
        "command: SetDimLevel",
        "schedules[0].steps[0].arguments: SetDimLevel needs its argument 'level'",
    ),
    (
        "schedule with an argument out of range",
        schedule_with("command: SetMode, arguments: {mode: auto}", "command: SetDimLevel, arguments: {level: 140}"),
        "level: 140",
        "schedules[0].steps[0].arguments.level: must be between 0 and 100 (got 140)",
    ),
    (
        "schedule at an unquoted clock time",
        schedule_with("at: sunset", "at: 23:00"),
        "at: 23:00",
        'schedules[0].steps[0].at: quote the time: at: "23:00" (unquoted, YAML reads 23:00 as the number 1380) (got 1380)',
    ),
    (
        "schedule at a bad time",
        schedule_with("at: sunset", "at: dusk"),
        "at: dusk",
        'schedules[0].steps[0].at: expected sunset, sunrise, "HH:MM" (local time), or sunset/sunrise with an offset: '
        '"sunset-00:30", "sunrise+00:15" (got \'dusk\')',
    ),
    (
        "schedule at 24:10",
        schedule_with("at: sunset", 'at: "24:10"'),
        'at: "24:10"',
        "schedules[0].steps[0].at: a time of day is 00:00 to 23:59 (got '24:10')",
    ),
    (
        "schedule at an offset clock time",
        schedule_with("at: sunset", 'at: "23:00+00:10"'),
        'at: "23:00+',
        'schedules[0].steps[0].at: expected sunset, sunrise, "HH:MM" (local time), or sunset/sunrise with an offset: '
        '"sunset-00:30", "sunrise+00:15" (got \'23:00+00:10\')',
    ),
    (
        "duplicate schedule",
        SCHEDULE + SCHEDULE.removeprefix("schedules:\n"),
        "- name: night",
        "schedules[1].name: duplicate schedule (first declared at tags.yaml:LINE) (got 'night')",
    ),
    (
        "schedule covering no lighting cabinet",
        schedule_with("communes: [Dijon]", "zones: [bollards]") + "zones:\n  bollards: {devices: [B1]}\n",
        "- name: night",
        "schedules[0]: the schedule covers no device of class lighting",
    ),
    (
        "unknown step key",
        schedule_with("arguments: {mode: auto}}", "arguments: {mode: auto}, every: day}"),
        "every: day",
        "schedules[0].steps[0].every: unknown key (known keys: arguments, at, command) (got 'every')",
    ),
]


@pytest.mark.parametrize(("what", "top", "needle", "message"), TOP_CASES, ids=[c[0] for c in TOP_CASES])
def test_a_mistake_in_zones_schedules_or_settings_is_located(
    tmp_path: Path, what: str, top: str, needle: str, message: str
) -> None:
    text, source = error(tmp_path, top=top)
    hits = [i for i, ln in enumerate(source.splitlines(), 1) if needle in ln]
    blamed = hits[-1] if what.startswith("duplicate") else hits[0]
    expected = f"tags.yaml:{blamed}: {message.replace('LINE', str(hits[0]))}"
    assert text == expected


def test_zone_geometry() -> None:
    """A circle by great-circle distance, a polygon by the even-odd rule (a concave one too)."""
    from types import SimpleNamespace

    devices = [
        SimpleNamespace(name=f"D{i}", type="t", lat=lat, lon=lon)
        for i, (lat, lon) in enumerate([(47.0, 5.0), (47.0045, 5.0), (47.0, 5.0066), (47.02, 5.02)])
    ]
    types = {"t": SimpleNamespace(cls="lighting")}
    circle = ZoneDef("c", circle=(47.0, 5.0, 520.0))  # 0.0045 deg of latitude = 500 m; 0.0066 deg of longitude ~ 500 m
    assert control_config.zone_members(circle, devices, types) == ("D0", "D1", "D2")  # type: ignore[arg-type]
    assert control_config.zone_members(ZoneDef("c", circle=(47.0, 5.0, 480.0)), devices, types) == ("D0",)  # type: ignore[arg-type]
    # A "U": the notch between its arms leaves N out.
    u = (
        (46.99, 4.99),
        (47.03, 4.99),
        (47.03, 5.03),
        (46.99, 5.03),
        (46.99, 5.012),
        (47.01, 5.012),
        (47.01, 5.008),
        (46.99, 5.008),
    )
    notch = [SimpleNamespace(name="N", type="t", lat=46.995, lon=5.010)]
    assert control_config.zone_members(ZoneDef("u", polygon=u), devices + notch, types) == ("D0", "D1", "D2", "D3")  # type: ignore[arg-type]
