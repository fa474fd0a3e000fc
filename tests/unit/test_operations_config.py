"""operations.yaml's loader (scada/operations/config.py), its schema, and where it is read.

Every mistake a technician can make is a located error (file, line, key, value): each one below is
written in a file and the error's line is looked up in that text. The shipped file loads with the
shipped tags.yaml and alarms.yaml, and with the simulated cities the simulator generates (the
crews are patterns over their vehicles).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from city_scada import REGISTRY, load_config
from city_scada import main as scada_main
from common.yamlsrc import ConfigError
from scada import schema as schema_gen
from scada.alarms.config import PRIORITIES
from scada.config import Config
from scada.operations import config as ops_config
from scada.operations.model import Delays, OperationsConfig
from scada.reload import apply, diff
from simulators import city as citygen

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "scada" / "schemas" / "operations.schema.json"

# A valid file against the shipped configuration (the demo city: V-001 to V-010).
BASE = """\
services:
  lighting_maintenance:
    delays:
      high: {on_site: 24h, repaired: 48h}
      default: {on_site: 48h, repaired: 5d}
    open311: {code: streetlight, name: Street light out}
  security:
    warn_before: 10m
    delays:
      default: {on_site: 2h, repaired: 8h}
crews:
  - vehicles: ["V-00[1-5]"]
    skills: [lighting_maintenance]
  - vehicles: [V-006, "V-01?"]
    skills: [security]
"""


@pytest.fixture(scope="module")
def shipped() -> Config:
    return load_config(ROOT)


def load_ops(tmp_path: Path, shipped: Config, text: str) -> OperationsConfig:
    path = tmp_path / "operations.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return ops_config.load(path, shipped.types, shipped.devices, shipped.alarms)


def error(tmp_path: Path, shipped: Config, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_ops(tmp_path, shipped, text)
    return info.value


def line_of(text: str, needle: str, after: str = "") -> int:
    """1-based line of the first line containing ``needle`` (after the line containing ``after``)."""
    lines = textwrap.dedent(text).splitlines()
    start = next(i for i, x in enumerate(lines) if after in x) + 1 if after else 0
    return next(i for i, x in enumerate(lines) if i >= start and needle in x) + 1


def assert_located(e: ConfigError, text: str, needle: str, key: str, message: str, value: Any = ..., after: str = "") -> None:
    assert e.file.endswith("operations.yaml"), e
    assert e.line == line_of(text, needle, after), e
    assert e.key == key, e
    assert message in e.message, e
    if value is not ...:
        assert e.value == value, e


# -- what loads ----------------------------------------------------------------------------------


def test_a_valid_file_becomes_the_model_objects(tmp_path: Path, shipped: Config) -> None:
    ops = load_ops(tmp_path, shipped, BASE)
    light = ops.services["lighting_maintenance"]
    # default: stands for the priorities not listed; the service's warn_before (default 15 min) applies.
    assert light.delays["high"] == Delays(24 * 3600.0, 48 * 3600.0, 900.0)
    assert light.delays["low"] == light.delays["medium"] == light.delays["critical"] == Delays(48 * 3600.0, 5 * 86400.0, 900.0)
    assert (light.open311_code, light.open311_name, light.default_priority) == ("streetlight", "Street light out", "medium")
    assert light.classes == ("lighting",)  # from alarms.yaml: its alarms are on lighting cabinets
    sec = ops.services["security"]
    assert sec.delays["critical"].warn_before_s == 600.0 and sec.open311_code == ""
    # security's alarms are on cabinets, junctions and bollards (alarms.yaml's order)
    assert sec.classes == ("lighting", "traffic", "bollard")
    assert sorted(ops.crews) == [f"V-{n:03d}" for n in (1, 2, 3, 4, 5, 6, 10)]  # V-007..9 are in no crew
    assert ops.crews["V-005"].skills == ("lighting_maintenance",) and ops.crews["V-010"].skills == ("security",)
    assert ops.crews_for("security") == ("V-006", "V-010")
    assert ops.service_of_code("streetlight") is light
    # sections left out: the model's defaults
    assert (ops.dispatch, ops.open311, ops.http, ops.availability) == (
        OperationsConfig().dispatch, OperationsConfig().open311, OperationsConfig().http, {})


def test_durations_take_seconds_or_a_unit(tmp_path: Path, shipped: Config) -> None:
    ops = load_ops(tmp_path, shipped, """\
        services:
          security:
            delays:
              low: {on_site: 90, repaired: 90s, warn_before: 0}
              medium: {on_site: 30m, repaired: 1.5h, warn_before: 5 min}
              high: {on_site: 2h, repaired: 2d}
              critical: {on_site: 1d, repaired: 1w}
        dispatch: {answer_timeout: 2m}
        open311: {purge_contact_after: 7d}
        """)
    d = ops.services["security"].delays
    assert (d["low"].on_site_s, d["low"].repaired_s, d["low"].warn_before_s) == (90.0, 90.0, 0.0)
    assert (d["medium"].on_site_s, d["medium"].repaired_s, d["medium"].warn_before_s) == (1800.0, 5400.0, 300.0)
    assert (d["high"].repaired_s, d["critical"].on_site_s, d["critical"].repaired_s) == (172800.0, 86400.0, 604800.0)
    assert ops.dispatch.answer_timeout_s == 120.0 and ops.open311.purge_contact_after_s == 7 * 86400.0


def test_settings_sections_and_targets(tmp_path: Path, shipped: Config) -> None:
    ops = load_ops(tmp_path, shipped, BASE + textwrap.dedent("""\
        dispatch: {auto_assign: false, speed_kmh: 25}
        open311: {radius_m: 80, rate_per_minute: 2, rate_burst: 1, max_body_bytes: 4096, territory_margin_m: 0,
                  jurisdiction_id: example.org}
        http: {listen: "0.0.0.0:9090"}
        energy:
          savings_target: 65 %
          baseline_kwh_per_day: 21
          communes: {Talant: 40}
          cabinets: {LC-DIJ-001: 25.5}
        availability: {lighting: 0.98, traffic: 99.5 %, bollard: 1}
        """))
    assert (ops.dispatch.auto_assign, ops.dispatch.speed_kmh) == (False, 25.0)
    assert (ops.open311.radius_m, ops.open311.rate_burst, ops.open311.jurisdiction_id) == (80.0, 1, "example.org")
    assert ops.open311.territory_margin_m == 0.0 and ops.open311.max_body_bytes == 4096
    assert ops.http.listen == ("0.0.0.0", 9090)
    assert ops.energy.savings_target == pytest.approx(0.65) and ops.energy.baseline_kwh_per_day == 21.0
    assert dict(ops.energy.communes) == {"Talant": 40.0} and dict(ops.energy.cabinets) == {"LC-DIJ-001": 25.5}
    assert dict(ops.availability) == {"lighting": 0.98, "traffic": pytest.approx(0.995), "bollard": 1.0}


def test_http_listen_false_is_no_http_server(tmp_path: Path, shipped: Config) -> None:
    assert load_ops(tmp_path, shipped, BASE + "http: {listen: false}\n").http.listen is None


def test_http_internal_listener_is_loopback_by_default(tmp_path: Path, shipped: Config) -> None:
    # The map feed and /metrics (review 16 #11): their own listener, loopback unless told.
    assert load_ops(tmp_path, shipped, BASE + "http: {listen: 0.0.0.0:8080}\n").http.internal == ("127.0.0.1", 9464)
    http = load_ops(tmp_path, shipped, BASE + "http: {internal: 10.1.2.3:9100}\n").http
    assert http.internal == ("10.1.2.3", 9100) and http.listen == ("127.0.0.1", 8080)
    assert load_ops(tmp_path, shipped, BASE + "http: {internal: false}\n").http.internal is None


def test_vehicles_all_and_overlapping_patterns_of_one_group(tmp_path: Path, shipped: Config) -> None:
    ops = load_ops(tmp_path, shipped, """\
        services:
          security: {delays: {default: {on_site: 2h, repaired: 8h}}}
        crews:
          - {vehicles: all, skills: [security]}
        """)
    assert len(ops.crews) == 10
    ops = load_ops(tmp_path, shipped, """\
        services:
          security: {delays: {default: {on_site: 2h, repaired: 8h}}}
        crews:
          - {vehicles: ["V-00*", "V-001"], skills: security}
        """)
    assert sorted(ops.crews) == [f"V-00{n}" for n in range(1, 10)]


def test_an_empty_or_missing_file_is_operations_off(tmp_path: Path, shipped: Config) -> None:
    assert load_ops(tmp_path, shipped, "# nothing yet\n") == OperationsConfig()
    folder = tmp_path / "cfg"
    folder.mkdir()
    for name in ("tags.yaml", "alarms.yaml"):
        (folder / name).write_text((ROOT / name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "inventory").symlink_to(ROOT / "inventory")
    config = load_config(folder)
    assert config.operations == OperationsConfig() and not config.operations.services
    assert "operations: off" in config.summary()


# -- every mistake, located ----------------------------------------------------------------------


def test_unknown_keys_are_errors_with_a_hint(tmp_path: Path, shipped: Config) -> None:
    text = BASE + "dispach: {auto_assign: false}\n"
    assert_located(error(tmp_path, shipped, text), text, "dispach:", "dispach", "did you mean 'dispatch'", "dispach")
    # A misspelt section is the error, not what its absence makes of the rest.
    text = BASE.replace("services:", "servises:")
    assert_located(error(tmp_path, shipped, text), text, "servises:", "servises", "did you mean 'services'")
    text = BASE.replace("    warn_before: 10m\n", "    warn_befor: 10m\n")
    assert_located(error(tmp_path, shipped, text), text, "warn_befor:", "services.security.warn_befor", "unknown key")
    text = BASE.replace("{on_site: 24h, repaired: 48h}", "{on_site: 24h, repaired: 48h, onsite: 1h}")
    assert_located(error(tmp_path, shipped, text), text, "high:", "services.lighting_maintenance.delays.high.onsite",
                   "unknown key")
    text = BASE.replace("    skills: [security]\n", "    skills: [security]\n    label: patrols\n")
    assert_located(error(tmp_path, shipped, text), text, "label:", "crews[1].label", "unknown key")
    text = BASE + "dispatch:\n  speed: 30\n"
    assert_located(error(tmp_path, shipped, text), text, "speed:", "dispatch.speed", "did you mean 'speed_kmh'")
    text = BASE.replace("{code: streetlight, name: Street light out}", "{code: streetlight, title: x}")
    assert_located(error(tmp_path, shipped, text), text, "open311:", "services.lighting_maintenance.open311.title",
                   "unknown key")


def test_a_service_not_in_alarms_yaml(tmp_path: Path, shipped: Config) -> None:
    text = BASE + "  street_cleaning:\n    delays: {default: {on_site: 1d, repaired: 2d}}\n"
    text = text.replace("crews:\n", "").replace("  - vehicles", "#").replace("    skills", "#")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "street_cleaning:", "services.street_cleaning", "not a service of alarms.yaml",
                   "street_cleaning")
    assert "lighting_maintenance" in e.message  # the services it could have meant


def test_a_priority_without_delays_and_no_default(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("      default: {on_site: 48h, repaired: 5d}\n", "      critical: {on_site: 4h, repaired: 1d}\n")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "delays:", "services.lighting_maintenance.delays", "no delays for priority low, medium")
    assert "default:" in e.message
    text = BASE.replace("      default: {on_site: 2h", "      urgent: {on_site: 2h")
    assert_located(error(tmp_path, shipped, text), text, "urgent:", "services.security.delays.urgent", "not a priority",
                   "urgent")
    text = BASE.replace("    warn_before: 10m\n    delays:\n      default: {on_site: 2h, repaired: 8h}\n", "    warn_before: 10m\n")
    # A missing key is blamed on its mapping's first line.
    assert_located(error(tmp_path, shipped, text), text, "warn_before: 10m", "services.security.delays",
                   "required key is missing")


def test_repaired_before_on_site_and_a_warning_before_the_fault(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("{on_site: 24h, repaired: 48h}", "{on_site: 24h, repaired: 12h}")
    assert_located(error(tmp_path, shipped, text), text, "high:", "services.lighting_maintenance.delays.high.repaired",
                   "shorter than on_site (1d)", "12h")
    text = BASE.replace("{on_site: 2h, repaired: 8h}", "{on_site: 2h, repaired: 8h, warn_before: 3h}")
    assert_located(error(tmp_path, shipped, text), text, "on_site: 2h", "services.security.delays.default.warn_before",
                   "make warn_before shorter than on_site (2h)", "3h")
    # The service's warn_before is inherited: the delay that it does not fit is blamed.
    text = BASE.replace("warn_before: 10m", "warn_before: 3h")
    assert_located(error(tmp_path, shipped, text), text, "on_site: 2h", "services.security.delays.default.on_site",
                   "warn_before shorter than on_site", "2h")


@pytest.mark.parametrize("bad", ["4 hours", "-5", "1:30h", "[1]", "true"])
def test_a_bad_duration(tmp_path: Path, shipped: Config, bad: str) -> None:
    text = BASE.replace("on_site: 24h", f"on_site: {bad}")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "high:", "services.lighting_maintenance.delays.high.on_site", "duration")


def test_a_zero_delay(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("on_site: 24h", "on_site: 0m")
    assert_located(error(tmp_path, shipped, text), text, "high:", "services.lighting_maintenance.delays.high.on_site",
                   "longer than zero", "0m")


def test_a_crew_pattern_matching_no_vehicle(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace('"V-01?"', '"V-02?"')
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "V-02?", "crews[1].vehicles", "matches no vehicle of the fleet", "V-02?")
    assert "V-001" in e.message
    # Patterns are case-sensitive, as device names are.
    text = BASE.replace('"V-00[1-5]"', '"v-00[1-5]"')
    assert_located(error(tmp_path, shipped, text), text, "v-00", "crews[0].vehicles", "matches no vehicle", "v-00[1-5]")
    # A device that is not a vehicle is not a crew.
    text = BASE.replace("V-006", "LC-DIJ-001")
    assert_located(error(tmp_path, shipped, text), text, "LC-DIJ-001", "crews[1].vehicles", "matches no vehicle")


def test_a_vehicle_in_two_crews(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("[V-006,", "[V-005, V-006,")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "V-005, V-006", "crews[1].vehicles", "V-005 is already in crews[0]", "V-005")
    assert f"line {line_of(text, 'V-00[1-5]')}" in e.message


def test_crew_groups_without_vehicles_or_with_unknown_skills(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("skills: [security]", "skills: [traffic_control]")
    assert_located(error(tmp_path, shipped, text), text, "traffic_control", "crews[1].skills",
                   "'traffic_control' is not a service of this file")
    text = BASE.replace('  - vehicles: [V-006, "V-01?"]\n', "  - vehicles:\n")
    assert_located(error(tmp_path, shipped, text), text, "  - vehicles:\n".strip(), "crews[1].vehicles",
                   "required key is missing", after="V-00[1-5]")
    text = BASE.replace("    skills: [lighting_maintenance]\n", "")
    assert_located(error(tmp_path, shipped, text), text, "V-00[1-5]", "crews[0].skills", "required key is missing")
    text = BASE.replace('[V-006, "V-01?"]', "{V-006: 1}")
    assert_located(error(tmp_path, shipped, text), text, "V-006", "crews[1].vehicles", "expected vehicle names")
    text = BASE.replace("crews:\n", "crews:\n  V-001: [security]\n").split("  - vehicles")[0]
    assert_located(error(tmp_path, shipped, text), text, "crews:", "crews", "expected a list of crew groups")


def test_an_unknown_class(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("    warn_before: 10m\n", "    warn_before: 10m\n    classes: [bollard, tram]\n")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "classes:", "services.security.classes", "unknown class 'tram'", ["bollard", "tram"])
    assert "lighting" in e.message and "fleet" in e.message
    text = BASE + "availability: {lighting: 0.98, tram: 0.9}\n"
    assert_located(error(tmp_path, shipped, text), text, "availability:", "availability.tram", "unknown class", "tram")


def test_duplicate_open311_codes(tmp_path: Path, shipped: Config) -> None:
    text = BASE.replace("    warn_before: 10m\n", "    warn_before: 10m\n    open311:\n      code: streetlight\n")
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "code: streetlight", "services.security.open311.code",
                   "already the code of lighting_maintenance", "streetlight", after="security:")
    assert f"line {line_of(text, 'code: streetlight')}" in e.message


def test_an_energy_baseline_for_an_unknown_commune_or_cabinet(tmp_path: Path, shipped: Config) -> None:
    text = BASE + "energy:\n  communes: {Talant: 40, Paris: 900}\n"
    e = error(tmp_path, shipped, text)
    assert_located(e, text, "Paris", "energy.communes.Paris", "unknown commune", "Paris")
    assert "Ahuy" in e.message  # the communes it knows
    text = BASE + "energy:\n  cabinets:\n    LC-DIJ-001: 25\n    LC-XXX-001: 25\n"
    assert_located(error(tmp_path, shipped, text), text, "LC-XXX-001", "energy.cabinets.LC-XXX-001", "unknown cabinet")
    junction = next(d.name for d in shipped.devices if shipped.types[d.type].cls == "traffic")
    text = BASE + f"energy:\n  cabinets:\n    {junction}: 25\n"
    assert_located(error(tmp_path, shipped, text), text, junction, f"energy.cabinets.{junction}",
                   "not a lighting cabinet", junction)
    text = BASE + "energy:\n  cabinets:\n    LC-DIJ-001: -3\n"
    assert_located(error(tmp_path, shipped, text), text, "LC-DIJ-001", "energy.cabinets.LC-DIJ-001", "not negative", -3)
    text = BASE + "energy:\n  baseline_kwh_per_day: lots\n"
    assert_located(error(tmp_path, shipped, text), text, "baseline", "energy.baseline_kwh_per_day", "number", "lots")


@pytest.mark.parametrize("bad", ["0", "1.5", "150 %", "0 %", "-0.2", "high"])
def test_targets_outside_0_1(tmp_path: Path, shipped: Config, bad: str) -> None:
    text = BASE + f"availability:\n  lighting: {bad}\n"
    assert_located(error(tmp_path, shipped, text), text, "lighting:", "availability.lighting", "(0, 1]",
                   after="availability")
    text = BASE + f"energy:\n  savings_target: {bad}\n"
    assert_located(error(tmp_path, shipped, text), text, "savings_target", "energy.savings_target", "(0, 1]")


@pytest.mark.parametrize(
    ("section", "needle", "key", "message"),
    [
        ("dispatch: {speed_kmh: 0}", "dispatch", "dispatch.speed_kmh", "greater than 0"),
        ("dispatch: {topic_prefix: city/vehicles}", "dispatch", "dispatch.topic_prefix", "unknown"),
        ("dispatch: {auto_assign: maybe}", "dispatch", "dispatch.auto_assign", "true or false"),
        ("open311: {rate_burst: 0}", "open311", "open311.rate_burst", "greater than 0"),
        ("http: {listen: 'localhost:99999'}", "http", "http.listen", "1 to 65535"),
        ("http: {listen: 8080}", "http", "http.listen", "host:port"),
        ("http:\n  listen:\n", "listen", "http.listen", "no value given"),
        ("dispatch: [auto_assign]", "dispatch", "dispatch", "expected a mapping"),
    ],
)
def test_bad_settings(tmp_path: Path, shipped: Config, section: str, needle: str, key: str, message: str) -> None:
    text = BASE + section + "\n"
    assert_located(error(tmp_path, shipped, text), text, needle, key, message, after="crews:")


def test_a_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path, shipped: Config) -> None:
    e = error(tmp_path, shipped, "- services\n")
    assert e.line == 1 and "expected a mapping" in e.message
    e = error(tmp_path, shipped, "services:\n  security: {delays: {default: {on_site: 2h\n")
    assert "YAML syntax error" in e.message and e.file.endswith("operations.yaml")
    text = "services:\n  'on': {delays: {default: {on_site: 2h, repaired: 3h}}}\n"
    assert error(tmp_path, shipped, text).key == "services.on"  # quoted: a name, not in alarms.yaml
    text = "services:\n  on: {delays: {default: {on_site: 2h, repaired: 3h}}}\n"
    assert "quote the name" in error(tmp_path, shipped, text).message


# -- the shipped file, the generated cities ------------------------------------------------------


def test_the_shipped_file_loads_with_the_shipped_configuration(shipped: Config) -> None:
    ops = shipped.operations
    assert set(ops.services) == set(shipped.alarms.services)  # the five services have a contract
    for s in ops.services.values():
        assert set(s.delays) == set(PRIORITIES)
        for d in s.delays.values():
            assert 0 <= d.warn_before_s < d.on_site_s <= d.repaired_s
        assert ops.crews_for(s.name), f"no crew for {s.name}"  # every service's orders can be dispatched
    tc = ops.services["traffic_control"].delays["critical"]
    assert (tc.on_site_s, tc.repaired_s) == (3600.0, 4 * 3600.0)
    light = ops.services["lighting_maintenance"].delays["medium"]
    assert (light.on_site_s, light.repaired_s) == (48 * 3600.0, 5 * 86400.0)
    codes = [s.open311_code for s in ops.services.values() if s.open311_code]
    assert sorted(codes) == ["bollard", "streetlight", "traffic_signal"]
    assert ops.services["security"].classes == ("bollard",)  # a bollard report goes to a bollard
    assert ops.energy.savings_target == pytest.approx(0.65) and ops.energy.baseline_kwh_per_day > 0
    assert set(ops.availability) == {t.cls for t in shipped.types.values()}
    assert len(ops.crews) == 10 and ops.http.listen == ("127.0.0.1", 8080)
    again = ops_config.load(ROOT / "operations.yaml", shipped.types, shipped.devices, shipped.alarms)
    assert again == ops


def test_the_shipped_energy_baseline_is_the_simulated_cabinets_at_full_power() -> None:
    """The baseline is a simulated cabinet's consumption without dimming, averaged over a year (the
    model's astronomical clock at Dijon): the savings the KPIs show are against that."""
    from simulators.models import lighting as li

    c = citygen.generate("small").cabinets
    t0 = 1767225600.0  # 2026-01-01 UTC; a day every 3 weeks: the year's nights, long and short
    days = range(0, 365, 21)
    energy = 0.0
    for day in days:
        s = li.create([x.lat for x in c], [x.lon for x in c], 31, t=t0 + day * 86400, schedule=((0.0, 100.0),))
        for k in range(1, 24 * 12 + 1):  # 5-minute steps: the model integrates the power held
            s = li.step(s, t0 + day * 86400 + k * 300)
        energy += float(s.energy_kwh.mean())
    per_day = energy / len(days)
    baseline = load_config(ROOT).operations.energy.baseline_kwh_per_day
    assert baseline == pytest.approx(per_day, rel=0.05), per_day


@pytest.mark.parametrize("preset", ["tiny", "dijon"])
def test_the_generated_cities_load_with_the_shipped_file(tmp_path: Path, preset: str) -> None:
    city = citygen.generate(preset)
    citygen.write_config(city, tmp_path, ROOT / "tags.yaml")
    # The shipped file, without its fixed HTTP address (several servers run from generated ones).
    shipped = (ROOT / "operations.yaml").read_text().replace("listen: 127.0.0.1:8080", "listen: false   # generated: scada run --http HOST:PORT")
    assert (tmp_path / "operations.yaml").read_text() == shipped
    ops = load_config(tmp_path).operations
    assert ops.http.listen is None
    assert sorted(ops.crews) == sorted(city.vehicles)  # every vehicle in one crew
    for service in ops.services:
        assert ops.crews_for(service), f"{preset}: no crew for {service}"
    kinds = {c.skills for c in ops.crews.values()}
    assert len(kinds) == 3  # lighting, traffic, security crews


def test_a_city_without_vehicles_gets_no_operations_file(tmp_path: Path) -> None:
    citygen.write_config(citygen.generate("cabinets-3"), tmp_path, ROOT / "tags.yaml")
    assert (tmp_path / "alarms.yaml").is_file() and not (tmp_path / "operations.yaml").exists()
    assert not load_config(tmp_path).operations.services


def test_the_readme_example_loads(tmp_path: Path, shipped: Config) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("### operations.yaml", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    ops = load_ops(tmp_path, shipped, example)
    assert ops.services["security"].classes == ("bollard",) and len(ops.crews) == 10
    assert ops.energy.communes["Talant"] == 42.0


def test_scada_check_summarises_operations(capsys: pytest.CaptureFixture[str]) -> None:
    assert scada_main(["check", "--config", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "operations: 5 services with a contract, 10 crew vehicles" in out
    assert "traffic_control: 3 crews; on site/repaired low 1d/3d; medium 1d/3d; high 2h/8h; critical 1h/4h" in out
    assert "savings target 65%" in out and "HTTP: 127.0.0.1:8080" in out


# -- the schema ----------------------------------------------------------------------------------


def as_json(doc: Any) -> Any:
    return json.loads(json.dumps(doc))


def test_the_schema_is_generated_current_and_mapped() -> None:
    drivers = {name: plugin.config for name, plugin in REGISTRY.items()}
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_gen.schemas(drivers)["operations.schema.json"], (
        "run `scada schema`")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    assert "Generated by `scada schema`" in schema["$comment"]
    settings = json.loads((ROOT / ".vscode" / "settings.json").read_text(encoding="utf-8"))
    assert "operations.yaml" in settings["yaml.schemas"]["scada/schemas/operations.schema.json"]
    first_line = (ROOT / "operations.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=scada/schemas/operations.schema.json"


def test_the_shipped_file_is_valid_for_its_schema() -> None:
    validator = Draft7Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    doc = yaml.safe_load((ROOT / "operations.yaml").read_text(encoding="utf-8"))
    assert [e.message for e in validator.iter_errors(as_json(doc))] == []
    assert [e.message for e in validator.iter_errors(as_json(yaml.safe_load(BASE)))] == []
    # What the loader takes in its short forms, the schema takes too.
    short = BASE.replace("skills: [security]", "skills: security").replace('[V-006, "V-01?"]', "V-006")
    short += "http: {listen: false}\navailability: {lighting: 98 %}\ndispatch: {answer_timeout: 300}\n"
    assert [e.message for e in validator.iter_errors(as_json(yaml.safe_load(short)))] == []


@pytest.mark.parametrize(
    "change",
    [
        "dispach: {}",
        "http: {listen: 'localhost:99999'}",
        "availability: {lighting: 1.5}",
        "availability: {lighting: '150'}",
        "energy: {savings_target: 0}",
        "dispatch: {answer_timeout: 4 hours}",
        "open311: {rate_burst: 0}",
    ],
)
def test_the_schema_and_the_loader_refuse_the_same_mistakes(tmp_path: Path, shipped: Config, change: str) -> None:
    text = BASE + change + "\n"
    validator = Draft7Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    assert list(validator.iter_errors(as_json(yaml.safe_load(text)))), change
    with pytest.raises(ConfigError):
        load_ops(tmp_path, shipped, text)


# -- reload --------------------------------------------------------------------------------------


async def test_a_reload_of_operations_yaml_alone_swaps_the_configuration_only(shipped: Config) -> None:
    """The diff names the sections that changed; the drivers and the alarm engine are left alone."""
    ops = shipped.operations
    new = dataclasses.replace(shipped, operations=dataclasses.replace(
        ops, dispatch=dataclasses.replace(ops.dispatch, auto_assign=False)))
    d = diff(shipped, new)
    assert d.operations_changed == ["dispatch"] and not d.empty and d.engines_untouched
    assert d.summary() == {"operations_changed": ["dispatch"]}
    assert diff(shipped, dataclasses.replace(shipped)).empty

    reloaded: list[Config] = []
    shown: list[Config] = []

    async def front_reload(config, tagdb, removed, added, retyped, alarms=None, history=None) -> int:
        shown.append(config)  # the front (its Open311 server, Operations folder) follows
        assert (removed, added, retyped) == ([], [], []) and alarms is app.alarms and history is app.historian
        return 0

    # A front in its own process (conditions None): the engine is not even paused.
    app = SimpleNamespace(config=shipped, tagdb=None, drivers=[], alarms=object(), historian=object(),
                          hmi=SimpleNamespace(conditions=None, reload=front_reload),
                          start_tasks=lambda: None,
                          commands=SimpleNamespace(reload=lambda config, tagdb, drivers: reloaded.append(config)))
    assert await apply(app, new) is not None
    # No engine rebuilt: the stand-in has none to rebuild.
    assert app.config is new and reloaded == [new] and shown == [new]
