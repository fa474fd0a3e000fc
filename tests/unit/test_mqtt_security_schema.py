"""The editor's schema of broker_security (scada/schemas/tags.schema.json) agrees with the loader
on the cross-key rules: a certificate with its key, a login with one password source, never an
inline password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "scada/schemas/tags.schema.json").read_text("utf-8"))


def document(security: dict) -> dict:
    return {
        "equipment_types": {
            "sensor": {
                "class": "sensor",
                "driver": "mqtt",
                "broker_security": security,
                "points": {"level": {"topic": "city/s/{device}/state", "json": "level"}},
            }
        },
        "devices": [
            {"name": "S-1", "type": "sensor", "commune": "Dijon", "lat": 47.3, "lon": 5.0, "endpoint": "10.0.0.5:8883"}
        ],
    }


def errors(security: dict) -> list[str]:
    return [e.message for e in Draft7Validator(SCHEMA).iter_errors(document(security))]


@pytest.mark.parametrize(
    "security",
    [
        {"ca": "pki/ca.pem"},
        {"ca": "pki/ca.pem", "certificate": "pki/c.pem", "private_key": "pki/c.key"},
        {"ca": "pki/ca.pem", "username": "scada", "password_file": "secrets/mqtt.pw"},
        {"username": "scada", "password_env": "SCADA_MQTT_PASSWORD"},
    ],
)
def test_valid_blocks(security):
    assert errors(security) == []


@pytest.mark.parametrize(
    "security",
    [
        {"username": "scada", "password": "hunter2"},  # never inline
        {"username": "scada"},  # a user needs a password source
        {"password_file": "x.pw"},  # a password needs a user
        {"username": "scada", "password_file": "x.pw", "password_env": "X"},  # one source
        {"ca": "pki/ca.pem", "certificate": "pki/c.pem"},  # a certificate needs its key
        {"certificate": "pki/c.pem", "private_key": "pki/c.key"},  # and TLS
        {"username": "scada", "password_env": "not a name"},
    ],
)
def test_invalid_blocks(security):
    assert errors(security), security


def test_broker_security_is_mqtt_only():
    doc = document({"ca": "pki/ca.pem"})
    sensor = doc["equipment_types"]["sensor"]
    sensor.update(driver="opcua", namespace="urn:x:y")
    sensor["points"] = {"level": {"node": "{device}.Level"}}
    assert list(Draft7Validator(SCHEMA).iter_errors(doc))
