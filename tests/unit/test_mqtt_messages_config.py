"""An MQTT type's message channels (tags.yaml ``messages:``, drivers/mqtt/config.py): read into
frozen objects, every mistake a located ConfigError, and the editor's schema agrees with the
loader on what is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from city_scada import load_config
from common.yamlsrc import ConfigError
from drivers.mqtt.config import MqttChannel
from tests.configs import ROOT

SCHEMA = json.loads((ROOT / "scada/schemas/tags.schema.json").read_text("utf-8"))
KEY = "equipment_types.van.messages"


def document(messages) -> dict:
    van = {
        "class": "fleet",
        "driver": "mqtt",
        "status_topic": "city/vans/{device}/status",
        "messages": messages,
        "points": {"lat": {"topic": "city/vans/{device}/position", "json": "lat"}},
    }
    device = {"name": "V-1", "type": "van", "commune": "Dijon", "lat": 47.3, "lon": 5.0, "endpoint": "127.0.0.1:1883"}
    return {"equipment_types": {"van": van}, "devices": [device]}


def write(folder: Path, messages) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tags.yaml").write_text(yaml.safe_dump(document(messages), sort_keys=False))
    return folder


def schema_errors(messages) -> list[str]:
    return [e.message for e in Draft7Validator(SCHEMA).iter_errors(document(messages))]


def test_the_shipped_crew_vehicle_has_its_order_channel():
    t = load_config(ROOT).types["crew_vehicle"]
    assert t.io.messages == (
        MqttChannel("order", "city/vehicles/{device}/order", "city/vehicles/{device}/order_status", 1),
    )
    assert t.io.channel("order") is t.io.messages[0] and t.io.channel("nope") is None


def test_channels_with_their_defaults(tmp_path):
    messages = {"order": {"send": "city/vans/{device}/order", "answers": "city/vans/{device}/done"},
                "notice": {"send": "city/vans/{device}/notice", "qos": 2}}
    assert schema_errors(messages) == []
    io = load_config(write(tmp_path, messages)).types["van"].io
    assert io.messages == (
        MqttChannel("order", "city/vans/{device}/order", "city/vans/{device}/done", 1),
        MqttChannel("notice", "city/vans/{device}/notice", None, 2),
    )


@pytest.mark.parametrize(
    ("messages", "key", "message"),
    [
        ({"order": {"answers": "a/{device}"}}, f"{KEY}.order.send", "required key is missing"),
        ({"order": {"send": "a/{device}", "answer": "b/{device}"}}, f"{KEY}.order.answer", "did you mean 'answers'"),
        ({"order": {"send": "a/+/x"}}, f"{KEY}.order.send", "no + or # wildcard"),
        ({"order": {"send": "a/{vehicle}"}}, f"{KEY}.order.send", "only placeholder"),
        ({"order": {"send": "a/{device}", "qos": 0}}, f"{KEY}.order.qos", "between 1 and 2"),
        ({"order": "a/{device}"}, f"{KEY}.order", "expected a mapping"),
        ({"or der": {"send": "a/{device}"}}, f"{KEY}.or der", "channel name"),
        ([{"send": "a/{device}"}], KEY, "expected a mapping"),
        ({"order": {"send": "a/{device}", "answers": "a/{device}"}}, f"{KEY}.order.answers", "messages.order.send"),
        ({"order": {"send": "a/{device}", "answers": "city/vans/{device}/status"}}, f"{KEY}.order.answers",
         "status_topic"),
        ({"a": {"send": "a/{device}"}, "b": {"send": "x/{device}", "answers": "a/{device}"}}, f"{KEY}.b.answers",
         "messages.a.send"),
        ({"order": {"send": "a/{device}", "answers": "city/vans/{device}/position"}}, "equipment_types.van.points.lat",
         "message channel 'order'"),
    ],
)
def test_each_mistake_is_located(tmp_path, messages, key, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, messages))
    err = info.value
    assert err.key == key and message in str(err), str(err)
    assert err.line is not None and str(err).startswith(str(tmp_path / "tags.yaml"))


@pytest.mark.parametrize(
    "messages",
    [
        {"order": {"answers": "a/{device}"}},
        {"order": {"send": "a/{device}", "answer": "b/{device}"}},
        {"order": {"send": "a/+/x"}},
        {"order": {"send": "a/{device}", "qos": 0}},
        {"order": "a/{device}"},
        {"or der": {"send": "a/{device}"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(messages):
    assert schema_errors(messages), messages
