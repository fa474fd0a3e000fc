"""The editor's JSON Schema of the control sections (generated from scada/control/config.py's key
tables) judges like the loader: what one refuses the other refuses, what one takes the other takes.

Documents are the shipped tags.yaml with one change, validated as the editor sees them (JSON)
and loaded by the project's loader (tests/unit/test_schemas.py's helpers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.yamlsrc import ConfigError

from .test_schemas import load_with, mutated, schema_errors


def lighting_command(name: str, **changes: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        command = doc["equipment_types"]["lighting_cabinet"]["commands"][name]
        for k, v in changes.items():
            if v is ...:
                del command[k]
            else:
                command[k] = v
    return change


def top(key: str, value: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc[key] = value
    return change


def step(**changes: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["schedules"][0]["steps"][0].update(changes)
    return change


REJECTED = [
    pytest.param(lighting_command("SetMode", role="Observer"), id="role-observer"),
    pytest.param(lighting_command("SetMode", timeout=0), id="zero-timeout"),
    pytest.param(lighting_command("SetMode", tolerance=-1), id="negative-tolerance"),
    pytest.param(lighting_command("SetMode", writes={}), id="writes-nothing"),
    pytest.param(lighting_command("SetMode", confirm=...), id="no-confirm"),
    pytest.param(lighting_command("SetMode", retries=3), id="unknown-command-key"),
    pytest.param(lighting_command("SetMode", arguments={"mode": {"type": "double"}}), id="argument-type"),
    pytest.param(lambda d: d["equipment_types"]["traffic_junction"]["interlocks"]["no_conflict"].update(
        status="BadTimeout"), id="interlock-status"),
    pytest.param(lambda d: d["equipment_types"]["traffic_junction"]["interlocks"]["no_conflict"].pop("message"),
                 id="interlock-without-message"),
    pytest.param(lambda d: d["zones"]["fire_access_centre"].update(circle={"lat": 47.3, "lon": 5.0, "radius_m": 9}),
                 id="zone-two-shapes"),
    pytest.param(lambda d: d["zones"]["centre_1km"]["circle"].update(radius_m=0), id="zone-radius-zero"),
    pytest.param(lambda d: d["zones"]["south_corridor"].update(polygon=[[47.3, 5.0], [47.4, 5.1]]),
                 id="polygon-two-vertices"),
    pytest.param(lambda d: d["zones"]["south_corridor"]["polygon"][0].__setitem__(0, 95), id="polygon-latitude"),
    pytest.param(step(at="dusk"), id="at-dusk"),
    pytest.param(step(at="sunset+1h"), id="at-offset-form"),
    pytest.param(step(when="sunset"), id="unknown-step-key"),
    pytest.param(lambda d: d["schedules"][0].pop("communes"), id="schedule-without-communes-or-zones"),
    pytest.param(lambda d: d["schedules"][0].update(steps=[]), id="schedule-without-steps"),
    pytest.param(top("control", {"select_timeout": -1}), id="negative-select-timeout"),
    pytest.param(top("control", {"user_rate": {"per_minute": 10}}), id="rate-without-burst"),
    pytest.param(top("control", {"group_concurrency": 0}), id="zero-concurrency"),
    pytest.param(top("control", {"select_time": 3}), id="unknown-control-key"),
    pytest.param(lighting_command("ResetTrip", emergency=True), id="emergency-and-critical"),
    pytest.param(lighting_command("SetMode", emergency="yes", critical="true"), id="emergency-and-critical-as-text"),
    pytest.param(lighting_command("SetMode", emergency="soon"), id="emergency-not-a-boolean"),
    pytest.param(top("control", {"emergency_rate": {"per_minute": 10}}), id="emergency-rate-without-burst"),
    pytest.param(top("control", {"emergency_rate": {"per_minute": 10, "burst": 0}}), id="emergency-rate-burst-zero"),
]


@pytest.mark.parametrize("change", REJECTED)
def test_schema_and_loader_both_reject(change: Callable[[dict], Any], tmp_path: Path) -> None:
    doc = mutated("tags", change)
    assert schema_errors("tags", doc), "the schema accepts a document the loader must reject"
    with pytest.raises(ConfigError):
        load_with(tmp_path, "tags", doc)


ACCEPTED = [
    pytest.param(lighting_command("ResetTrip", role="Supervisor", critical=False, timeout=0.5, tolerance=0,
                                  description="x", interlocks=["no_trip"]),
                 id="every-command-key"),
    pytest.param(lighting_command("SetDimLevel", interlocks=None), id="no-interlocks"),
    pytest.param(step(at="sunset-00:30"), id="at-sunset-minus"),
    pytest.param(step(at="23:59"), id="at-clock"),
    pytest.param(lambda d: d["schedules"][0].update(zones=["centre_1km"], communes=["Dijon"]),
                 id="schedule-of-communes-and-zones"),
    pytest.param(top("control", {"user_rate": {"per_minute": 0.5, "burst": 1}, "timezone": "UTC"}), id="slow-rate"),
    pytest.param(lambda d: d.pop("control"), id="no-control-section"),
    pytest.param(lighting_command("SetMode", emergency=True), id="emergency-command"),
    pytest.param(lighting_command("ResetTrip", emergency="no"), id="critical-not-emergency"),
    pytest.param(lighting_command("SetMode", emergency="yes", critical=False), id="emergency-not-critical"),
    pytest.param(top("control", {"emergency_rate": {"per_minute": 2.5, "burst": 1}}), id="emergency-rate"),
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_schema_and_loader_both_accept(change: Callable[[dict], Any], tmp_path: Path) -> None:
    doc = mutated("tags", change)
    assert schema_errors("tags", doc) == []
    load_with(tmp_path, "tags", doc)
