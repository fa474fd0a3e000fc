import json

import pytest

from drivers.mqtt.codec import MAX_PAYLOAD, GarbageError, Reader, decode
from drivers.mqtt.config import MqttPoint

POS = Reader(10, MqttPoint("t", "position"), {"down": 0, "rising": 1, "up": 2})
HEIGHT = Reader(11, MqttPoint("t", "height"))
VEHICLE = Reader(12, MqttPoint("t", "vehicle", "bool"))
NESTED = Reader(13, MqttPoint("t", "gps.lat"))
TEXT = Reader(14, MqttPoint("t", "vehicle_class", "text"))
PLAIN = Reader(15, MqttPoint("t", None))


def test_one_parse_many_points():
    payload = json.dumps({"position": "up", "height": 0.5, "vehicle": True, "gps": {"lat": 47.3},
                          "vehicle_class": "bus"}).encode()
    ids, values, errors = decode(payload, [POS, HEIGHT, VEHICLE, NESTED, TEXT])
    assert ids == [10, 11, 12, 13, 14]
    assert values == [2.0, 0.5, 1.0, 47.3, "bus"]
    assert errors == []


def test_plain_payload():
    assert decode(b"21.5", [PLAIN]) == ([15], [21.5], [])


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe", b"x" * (MAX_PAYLOAD + 1), b"[" * 100000])
def test_garbage_payloads_are_refused_whole(payload):
    with pytest.raises(GarbageError):
        decode(payload, [POS, HEIGHT])


def test_unknown_state_gives_an_error_and_no_value_for_that_point_only():
    ids, values, errors = decode(b'{"position": "sideways", "height": 1}', [POS, HEIGHT])
    assert ids == [11] and values == [1.0] and errors == ["unknown state 'sideways'"]


@pytest.mark.parametrize("doc, error", [
    ({"position": "up", "height": "tall"}, "expected a number"),
    ({"position": "up", "height": [1]}, "expected a number"),
    ({"position": "up", "height": True}, "expected a number"),
    ({"position": "up"}, "field 'height' missing"),
    ({"position": "up", "height": 1e400}, "not a finite number"),
])
def test_wrong_fields_give_an_error_and_no_value_for_that_point_only(doc, error):
    text = json.dumps(doc) if "1e400" not in str(doc) else '{"position": "up", "height": 1e400}'
    ids, values, errors = decode(text.encode(), [POS, HEIGHT])
    assert ids == [10] and values == [2.0]
    assert len(errors) == 1 and error in errors[0]


def test_a_number_outside_an_enumeration_is_an_unknown_state():
    assert decode(b'{"position": 1}', [POS])[1] == [1.0]
    assert decode(b'{"position": 7}', [POS])[2] == ["unknown state 7"]


def test_bool_spellings():
    for raw, v in [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), ("on", 1.0), ("false", 0.0)]:
        assert decode(json.dumps({"vehicle": raw}).encode(), [VEHICLE])[1] == [v]
    assert decode(json.dumps({"vehicle": 2}).encode(), [VEHICLE])[2]


def test_a_json_document_that_is_not_an_object():
    ids, values, errors = decode(b"[1, 2]", [HEIGHT])
    assert ids == [] and errors == ["field 'height' missing"]
