import json

import pytest

from drivers.mqtt.codec import MAX_PAYLOAD, GarbageError, Layout, Reader, decode, decode_batch
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


@pytest.mark.parametrize("payload", [b'{"height": 1' + b"0" * 400 + b"}", b'{"height": 1' + b"0" * 5000 + b"}"])
def test_numbers_beyond_float_or_int_parsing_are_errors_not_crashes(payload):
    # 10**400 overflows float(); an integer of more than 4,300 digits is refused by int().
    try:
        ids, values, errors = decode(payload, [POS, HEIGHT])
    except GarbageError:
        return
    assert 11 not in ids and errors


def test_whitespace_around_json_is_accepted_as_json_loads_does():
    assert decode(b'  {"height": 0.25}\n', [HEIGHT]) == ([11], [0.25], [])
    with pytest.raises(GarbageError):
        decode(b'{"height": 0.25} {"height": 1}', [HEIGHT])


# Batches: decode_batch must say exactly what decode says, message by message.

BATCH_READERS = [POS, HEIGHT, VEHICLE, NESTED, TEXT]
MIXED = [
    {"position": "up", "height": 0.5, "vehicle": True, "gps": {"lat": 47.3}, "vehicle_class": "bus"},
    {"position": 1, "height": 3, "vehicle": False, "gps": {"lat": -1}, "vehicle_class": "car"},
    {"position": "sideways", "height": "tall", "vehicle": 2, "gps": {}, "vehicle_class": ["x"]},
    {"position": 7, "height": True, "vehicle": "on", "gps": 5, "vehicle_class": 12},
    {"height": 1.5},
    {"position": None, "height": None, "vehicle": None, "gps": None, "vehicle_class": None},
    ["up"],
    "just a string",
    3,
]
MIXED_PAYLOADS = [json.dumps(d).encode() for d in MIXED] + [
    b"{not json", b"\xff\xfe", b"x" * (MAX_PAYLOAD + 1), b"[" * 100000, b"", b" ",
    b'{"height": 1e400, "position": "down"}', b'{"height": NaN, "vehicle": 1}',
    b'{"height": 1' + b"0" * 400 + b'}', b'{"height": 1' + b"0" * 5000 + b'}',
    b'\t{"position": "up", "vehicle_class": "van"}  ', b'{"height": 1} trailing',
]


def _by_message(layout, payloads):
    got = decode_batch(layout, payloads)
    out = []
    for i in range(len(payloads)):
        errors = [e for m, _, e in got.errors if m == i]
        values = {}
        for j, r in enumerate(layout.readers):
            if got.ok[i, j]:
                values[j] = got.texts[j][i] if j in got.texts else float(got.values[i, j])
        out.append((values, errors))
    return out


def _reference(readers, payloads):
    out = []
    for p in payloads:
        try:
            ids, values, errors = decode(p, readers)
        except GarbageError as exc:
            out.append(({}, [str(exc)]))
            continue
        columns = {r.tag: j for j, r in enumerate(readers)}
        out.append(({columns[t]: v for t, v in zip(ids, values)}, errors))
    return out


@pytest.mark.parametrize("order", ["as_is", "reversed", "good_only", "bad_only"])
def test_decode_batch_says_what_decode_says(order):
    payloads = {"as_is": MIXED_PAYLOADS, "reversed": MIXED_PAYLOADS[::-1],
                "good_only": MIXED_PAYLOADS[:2] * 50, "bad_only": MIXED_PAYLOADS[2:]}[order]
    readers = [Reader(j, r.point, r.labels) for j, r in enumerate(BATCH_READERS)]
    assert _by_message(Layout(readers), payloads) == _reference(readers, payloads)


def test_decode_batch_fast_columns_and_a_plain_payload_layout():
    readers = [Reader(0, POS.point, POS.labels), Reader(1, HEIGHT.point), Reader(2, VEHICLE.point),
               Reader(3, TEXT.point)]
    payloads = [json.dumps({"position": p, "height": h, "vehicle": v, "vehicle_class": c}).encode()
                for p, h, v, c in [("down", 0, False, "bus"), ("up", 1, True, "car"), ("rising", 0.5, True, "")]]
    got = decode_batch(Layout(readers), payloads)
    assert got.ok.all() and got.errors == []
    assert got.values[:, :3].tolist() == [[0.0, 0.0, 0.0], [2.0, 1.0, 1.0], [1.0, 0.5, 1.0]]
    assert got.texts[3] == ["bus", "car", ""]
    plain = [Reader(0, PLAIN.point)]
    assert _by_message(Layout(plain), [b"21.5", b"x", b" 3 "]) == _reference(plain, [b"21.5", b"x", b" 3 "])


def test_layout_key_ignores_tag_ids_only():
    assert Layout.key([POS, HEIGHT]) == Layout.key([Reader(99, POS.point, POS.labels), Reader(98, HEIGHT.point)])
    assert Layout.key([POS, HEIGHT]) != Layout.key([HEIGHT, POS])
    assert Layout.key([POS]) != Layout.key([Reader(10, POS.point, {"down": 0})])
