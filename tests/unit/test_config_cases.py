"""Every mistake in tests/config_cases/ gives one located error: file, line, key, value.

The folders and the rule for comparing messages are described in tests/config_cases/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from city_scada import load_config
from common.yamlsrc import ConfigError
from tests.integration.helpers import DEADLINE

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "config_cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "expected.txt").is_file())
NO_VALUE = ...  # ConfigError.value when the error has no offending value

REQUIRED = {
    "wrong_indentation", "unknown_type", "duplicate_device", "register_out_of_range", "unknown_data_type",
    "missing_csv_file", "duplicate_yaml_key", "unknown_point_key", "unknown_device_key", "overlapping_registers",
    "bool_type_on_holding_register", "bad_word_order", "duplicate_device_between_yaml_and_csv",
    "csv_wrong_column_count", "csv_bad_latitude", "unknown_driver", "alarm_unknown_point", "alarm_unknown_type",
    "alarm_bad_priority", "alarm_unknown_service", "alarm_bad_message_field", "tab_indentation", "empty_file",
    "enum_bad_label", "range_min_above_max", "unit_id_out_of_range", "bad_endpoint",
    "unknown_poll_group", "read_gap_out_of_range", "serial_key_on_tcp_device", "serial_line_settings_disagree", "rtu_endpoint_not_absolute",
    "bad_parity", "zero_demote_for",
    "alarm_expression_unknown_point", "alarm_expression_forbidden_construct", "alarm_suppressed_by_unknown_alarm",
    "alarm_suppression_cycle", "alarm_unknown_device", "alarm_deadband_on_state_alarm",
    "alarm_rate_of_change_without_limit",
}


def relative(text: str, folder: Path) -> str:
    """The loader's text with the case folder's absolute path removed (README: 'The expected text')."""
    return text.replace(f"{folder}{os.sep}", "")


def load_error(case: str) -> ConfigError:
    folder = CASES_DIR / case
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    return info.value


def attributes(case: str) -> tuple[str, int | None, str, Any]:
    err = load_error(case)
    return relative(err.file, CASES_DIR / case), err.line, err.key, err.value


def test_every_required_case_is_there() -> None:
    assert REQUIRED <= set(CASES), sorted(REQUIRED - set(CASES))


@pytest.mark.parametrize("case", CASES)
def test_case_gives_the_expected_message(case: str) -> None:
    folder = CASES_DIR / case
    expected = (folder / "expected.txt").read_text(encoding="utf-8").removesuffix("\n")
    assert relative(str(load_error(case)), folder) == expected


# The error object of each case, by family: (file relative to the case, line, key path, value).

SYNTAX = {
    "wrong_indentation": ("tags.yaml", 34, "", NO_VALUE),
    "tab_indentation": ("tags.yaml", 53, "", NO_VALUE),
}
SECURITY = "equipment_types.traffic_junction.security"
MISSING = {
    "empty_file": ("tags.yaml", None, "", NO_VALUE),
    "empty_value": ("tags.yaml", 34, "equipment_types.lighting_cabinet.points.mains_voltage.address", NO_VALUE),
    "missing_required_key": ("tags.yaml", 48, "devices[1].endpoint", NO_VALUE),
    "wrong_indentation_dedented": ("tags.yaml", 37, "equipment_types.lighting_cabinet.points.door_open", NO_VALUE),
    "opcua_security_mode_without_certificate": ("tags.yaml", 11, f"{SECURITY}.certificate", NO_VALUE),
}
UNKNOWN_KEYS = {
    "unknown_point_key": ("tags.yaml", 34, "equipment_types.lighting_cabinet.points.mains_voltage.adress", "adress"),
    "unknown_device_key": ("tags.yaml", 54, "devices[1].unit_id", "unit_id"),
    "unknown_top_level_key": ("tags.yaml", 41, "device", "device"),
}
DUPLICATES = {
    "duplicate_yaml_key": ("tags.yaml", 37, "equipment_types.lighting_cabinet.points.mains_voltage.scale", "scale"),
    "duplicate_device": ("tags.yaml", 48, "devices[1].name", "LC-TAL-001"),
    "duplicate_endpoint": ("tags.yaml", 53, "devices[1].endpoint", "10.20.1.11:502"),
    "duplicate_device_between_yaml_and_csv": ("inventory/talant.csv", 3, "name", "LC-TAL-001"),
    "overlapping_registers": ("tags.yaml", 34, "equipment_types.lighting_cabinet.points.mains_voltage.address", 3),
}
POINT = "equipment_types.lighting_cabinet.points"
BAD_VALUES = {
    "unknown_driver": ("tags.yaml", 6, "equipment_types.lighting_cabinet.driver", "modbus_tcp"),
    "unknown_data_type": ("tags.yaml", 23, f"{POINT}.power.type", "float"),
    "register_out_of_range": ("tags.yaml", 34, f"{POINT}.mains_voltage.address", 300005),
    "register_runs_past_end": ("tags.yaml", 22, f"{POINT}.power.address", 65535),
    "bool_type_on_holding_register": ("tags.yaml", 40, f"{POINT}.lamp_test.type", "bool"),
    "bad_word_order": ("tags.yaml", 29, f"{POINT}.energy.word_order", "CDAB"),
    "enum_bad_label": ("tags.yaml", 13, f"{POINT}.mode.enum.1", "forced on"),
    "enum_reversed": ("tags.yaml", 13, f"{POINT}.mode.enum.auto", "auto"),
    "range_min_above_max": ("tags.yaml", 19, f"{POINT}.dim_setpoint.range", [100, 0]),
    "unknown_type": ("tags.yaml", 49, "devices[1].type", "lighting-cabinet"),
    "unit_id_out_of_range": ("tags.yaml", 54, "devices[1].unit", 256),
    "bad_endpoint": ("tags.yaml", 53, "devices[1].endpoint", "10.20.1.12;502"),
    "endpoint_bad_ip": ("tags.yaml", 53, "devices[1].endpoint", "10.20.1.312:502"),
    "writable_input_register": ("tags.yaml", 25, f"{POINT}.power.writable", True),
    "fractional_address": ("tags.yaml", 34, f"{POINT}.mains_voltage.address", 4.5),
    "unknown_poll_group": ("tags.yaml", 34, f"{POINT}.energy.poll_group", "solw"),
    "read_gap_out_of_range": ("tags.yaml", 8, "equipment_types.lighting_cabinet.read_gap", 200),
    "serial_key_on_tcp_device": ("tags.yaml", 55, "devices[1].baudrate", 19200),
    "serial_line_settings_disagree": ("tags.yaml", 55, "devices[1].endpoint", "rtu:///dev/ttyUSB0"),
    "rtu_endpoint_not_absolute": ("tags.yaml", 57, "devices[1].endpoint", "rtu://ttyUSB0"),
    "bad_parity": ("tags.yaml", 60, "devices[1].parity", "E"),
    "zero_demote_for": ("tags.yaml", 8, "equipment_types.lighting_cabinet.demote_for", 0),
    "opcua_security_unknown_policy": ("tags.yaml", 11, f"{SECURITY}.policy", "Basic256Sha265"),
    "opcua_security_policy_with_mode": ("tags.yaml", 11, f"{SECURITY}.policy", "Basic256Sha256_SignAndEncrypt"),
    "opcua_security_missing_certificate_file": ("tags.yaml", 13, f"{SECURITY}.certificate", "pki/scada-client.der"),
}
INVENTORIES = {
    "missing_csv_file": ("tags.yaml", 42, "inventories[0].file", "inventory/talant_cabinets.csv"),
    "inventory_unknown_type": ("tags.yaml", 43, "inventories[0].type", "lighting_cabinets"),
    "csv_bad_latitude": ("inventory/talant.csv", 5, "lat", "4734018"),
    "csv_wrong_column_count": ("inventory/talant.csv", 4, "", "LC-TAL-002,Talant,47,33402,5,01187,10.20.1.12:502,1"),
    "csv_not_utf8": ("inventory/talant.csv", 6, "", b"\xe8"),
    "csv_utf16": ("inventory/talant.csv", 1, "", b"\xff\xfe"),
    "csv_unterminated_quote": ("inventory/talant.csv", 4, "", 'LC-TAL-002,"Talant,47.33402,5.01187,10.20.1.12:502,1'),
    "csv_nul_bytes": ("inventory/talant.csv", 4, "", "LC-TAL-002,Talant,47.33402,5.01187,10.20.1.12:502,1\0\0\0\0"),
}
# Files that would make the loader run without end, or crash it: refused where they are written.
BOUNDS = {
    "yaml_billion_laughs": ("tags.yaml", 9, "x_shared.l6[0]", "*l5"),
    "yaml_self_alias": ("tags.yaml", 49, "devices[0].spare", "*cabinet"),
    "yaml_not_utf8": ("tags.yaml", 1, "", b"\xe9"),
    "alarm_expression_too_deep": ("alarms.yaml", 35, "alarms[2].expression",
                                  "mode == 1 and " + " + ".join(["power"] * 45) + " < 0.5"),
    "yaml_deep_nesting": ("tags.yaml", 19, f"{POINT}.dim_setpoint.range[0][0][0][0][0][0]...", NO_VALUE),
}
ALARMS = {
    "alarm_unknown_point": ("alarms.yaml", 11, "alarms[0].point", "voltage"),
    "alarm_unknown_type": ("alarms.yaml", 19, "alarms[1].type", "lighting"),
    "alarm_bad_priority": ("alarms.yaml", 14, "alarms[0].priority", "urgent"),
    "alarm_unknown_service": ("alarms.yaml", 31, "alarms[2].service", "lighting_maint"),
    "alarm_bad_message_field": ("alarms.yaml", 15, "alarms[0].message", "{commune} {device}: mains voltage {voltage} V"),
    "alarm_point_on_comm_loss": ("alarms.yaml", 29, "alarms[2].point", "door_open"),
    "alarm_bad_service_name": ("alarms.yaml", 4, "services.lighting maintenance", "lighting maintenance"),
    "alarm_limit_in_state_message": ("alarms.yaml", 13, "alarms[0].message",
                                     "{commune} {device}: door open (limit {limit})"),
    "alarm_expression_unknown_point": ("alarms.yaml", 35, "alarms[2].expression", "lamps_on and power < 0.5"),
    "alarm_expression_forbidden_construct": ("alarms.yaml", 35, "alarms[2].expression",
                                             "mode == 1 and power.value < 0.5"),
    "alarm_suppressed_by_unknown_alarm": ("alarms.yaml", 40, "alarms[2].suppressed_by", "mains_failure"),
    "alarm_suppression_cycle": ("alarms.yaml", 22, "alarms[0].suppressed_by", ["forced_on_no_power"]),
    "alarm_unknown_device": ("alarms.yaml", 51, "alarms[4].device", "LC-TAL-003"),
    "alarm_deadband_on_state_alarm": ("alarms.yaml", 50, "alarms[3].deadband", 1),
    "alarm_rate_of_change_without_limit": ("alarms.yaml", 22, "alarms[1].limit", NO_VALUE),
}
FAMILIES = (SYNTAX, MISSING, UNKNOWN_KEYS, DUPLICATES, BAD_VALUES, INVENTORIES, ALARMS, BOUNDS)


def test_every_case_belongs_to_one_family() -> None:
    listed = [case for family in FAMILIES for case in family]
    assert sorted(listed) == CASES


@pytest.mark.parametrize("case", sorted(SYNTAX))
def test_syntax_error_names_file_and_line(case: str) -> None:
    assert attributes(case) == SYNTAX[case]
    assert str(load_error(case)).split(": ", 1)[1].startswith("YAML syntax error: ")


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_or_empty_names_the_key_and_has_no_value(case: str) -> None:
    assert attributes(case) == MISSING[case]


@pytest.mark.parametrize("case", sorted(UNKNOWN_KEYS))
def test_unknown_key_names_the_key_and_suggests_the_right_one(case: str) -> None:
    assert attributes(case) == UNKNOWN_KEYS[case]
    assert "unknown key, did you mean " in str(load_error(case))


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_duplicate_names_the_second_place_and_the_first(case: str) -> None:
    assert attributes(case) == DUPLICATES[case]
    message = relative(str(load_error(case)), CASES_DIR / case)
    assert any(f in message for f in ("first declared at tags.yaml:", "first defined on line",
                                      "declared at tags.yaml:", "overlaps point"))


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_names_key_and_value(case: str) -> None:
    assert attributes(case) == BAD_VALUES[case]


@pytest.mark.parametrize("case", sorted(INVENTORIES))
def test_inventory_error_names_the_csv_line_or_the_inventory_entry(case: str) -> None:
    assert attributes(case) == INVENTORIES[case]


@pytest.mark.parametrize("case", sorted(ALARMS))
def test_alarm_error_names_alarms_yaml(case: str) -> None:
    assert attributes(case) == ALARMS[case]


@pytest.mark.parametrize("case", sorted(BOUNDS))
def test_a_file_that_would_not_end_or_crash_is_refused_where_written(case: str) -> None:
    assert attributes(case) == BOUNDS[case]


LOCATED = sorted(case for family in FAMILIES for case, (_, line, _, value) in family.items()
                 if line is not None and value is not NO_VALUE)


@pytest.mark.parametrize("case", LOCATED)
def test_the_named_line_shows_the_offending_value(case: str) -> None:
    """The line an error names is the one to edit: it holds the value (or key) it blames."""
    err = load_error(case)
    line = Path(err.file).read_bytes().splitlines()[err.line - 1]
    if isinstance(err.value, bytes):
        assert err.value in line
        return
    text = line.decode("utf-8")
    shown = str(err.value)
    if isinstance(err.value, bool):
        shown = str(err.value).lower()  # YAML spells it true/false
    if isinstance(err.value, list):
        shown = "[" + ", ".join(map(str, err.value)) + "]"
    assert shown in text, (text, err.value)


def run_check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "city_scada", "check", "--config", str(folder)],
        capture_output=True, text=True, cwd=REPO, timeout=DEADLINE,
    )


def test_cli_check_reports_a_bad_case_on_stderr_with_exit_code_2() -> None:
    folder = CASES_DIR / "duplicate_device"
    result = run_check(folder)
    assert result.returncode == 2, result.stderr
    expected = (folder / "expected.txt").read_text(encoding="utf-8").removesuffix("\n")
    assert relative(result.stderr, folder) == f"configuration error: {expected}\n"
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_refuses_a_billion_laughs_fast_with_exit_code_2(command: str) -> None:
    """The 400-byte alias bomb used to keep `scada check` and `scada run` busy for hours.

    The bound is on the CPU the child used (not wall time, which a loaded machine stretches),
    Python's start and imports included; the load itself is bounded in test_yaml_bounds.py.
    """
    folder = CASES_DIR / "yaml_billion_laughs"
    before = os.times()
    result = subprocess.run([sys.executable, "-m", "city_scada", command, "--config", str(folder)],
                            capture_output=True, text=True, cwd=REPO, timeout=DEADLINE)
    after = os.times()
    assert result.returncode == 2, result.stderr
    expected = (folder / "expected.txt").read_text(encoding="utf-8").removesuffix("\n")
    assert relative(result.stderr, folder) == f"configuration error: {expected}\n"
    child_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    assert child_cpu < 5.0, child_cpu


@pytest.mark.parametrize("case", ["yaml_self_alias", "yaml_deep_nesting", "csv_unterminated_quote"])
def test_cli_check_gives_a_located_message_not_a_traceback(case: str) -> None:
    folder = CASES_DIR / case
    result = run_check(folder)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    expected = (folder / "expected.txt").read_text(encoding="utf-8").removesuffix("\n")
    assert relative(result.stderr, folder) == f"configuration error: {expected}\n"


def test_cli_check_accepts_the_shipped_configuration_and_prints_the_summary() -> None:
    result = run_check(REPO)
    assert result.returncode == 0, result.stderr
    config = load_config(REPO)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{REPO}: configuration OK"
    assert lines[1].split() == ["equipment", "type", "driver", "devices", "tags"]
    end = next(i for i, ln in enumerate(lines) if ln.endswith(" services"))  # then the commands
    rows = {cells[0]: cells[1:] for cells in (ln.split() for ln in lines[2:end])}
    for name, t in config.types.items():
        n = sum(d.type == name for d in config.devices)
        assert rows[name] == [t.driver, str(n), str(n * len(t.points))]
    assert rows["total"] == [str(len(config.devices)), str(config.tag_count)]
    assert config.tag_count == sum(int(r[-1]) for k, r in rows.items() if k != "total") > 0
    communes = len({d.commune for d in config.devices})
    assert lines[end] == (f"{communes} communes; {len(config.alarms.alarms)} alarm definitions, "
                          f"{len(config.alarms.services)} services")
    from scada.operations.config import summary as operations_summary  # then operations.yaml's

    assert lines[end + 1:] == config.control_summary() + operations_summary(config.operations)
    assert "commands of lighting_cabinet:" in lines
