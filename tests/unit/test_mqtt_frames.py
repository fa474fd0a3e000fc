"""Pure MQTT framing: QoS-0 PUBLISH packets split off the front of a stream, everything else left
in place, in order, for paho; literal bytes in, (topic, payload, retain) out."""

from __future__ import annotations

import pytest

from drivers.mqtt.frames import MAX_REMAINING, remaining_length, split_publishes


def publish(topic: str | bytes, payload: bytes = b"", *, qos: int = 0, retain: bool = False, dup: bool = False,
            mid: int = 7, properties: bytes | None = None) -> bytes:
    """A PUBLISH packet; ``properties``: MQTT 5 (their encoded block, length prefix included)."""
    t = topic.encode() if isinstance(topic, str) else topic
    body = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"")
    body += (properties or b"") + payload
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + remaining_length(len(body)) + body


CONNACK = b"\x20\x02\x00\x00"
SUBACK = b"\x90\x03\x00\x01\x01"
PINGRESP = b"\xd0\x00"


@pytest.mark.parametrize("n, encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
                                        (16_384, b"\x80\x80\x01"), (2_097_152, b"\x80\x80\x80\x01"),
                                        (MAX_REMAINING, b"\xff\xff\xff\x7f")])
def test_remaining_length_encoding(n, encoded):
    assert remaining_length(n) == encoded
    with pytest.raises(ValueError):
        remaining_length(MAX_REMAINING + 1)


def test_one_message_topic_payload_and_retain_flag():
    assert split_publishes(publish("city/b/1/state", b'{"x": 1}')) == ([("city/b/1/state", b'{"x": 1}', False)], 26)
    assert split_publishes(publish("t", b"on", retain=True)) == ([("t", b"on", True)], 7)


def test_an_empty_payload_is_a_message():
    assert split_publishes(publish("city/b/1/status")) == ([("city/b/1/status", b"", False)], 19)


def test_payload_types_and_unicode_topic():
    msgs, _ = split_publishes(publish("ville/bornes/é/état", b"\x00\xff"))
    assert msgs == [("ville/bornes/é/état", b"\x00\xff", False)] and type(msgs[0][1]) is bytes


def test_many_packets_from_an_offset():
    sent = [(f"t/{k}", bytes([k]) * k, k % 3 == 0) for k in range(50)]
    stream = b"".join(publish(t, p, retain=r) for t, p, r in sent)
    head = b"\xff" * 9  # whatever was consumed before
    assert split_publishes(head + stream, 9) == (sent, 9 + len(stream))
    assert split_publishes(stream, len(stream)) == ([], len(stream))
    assert split_publishes(b"") == ([], 0)


@pytest.mark.parametrize("size, length_bytes", [(0, 1), (122, 1), (123, 2), (16_378, 2), (16_379, 3),
                                                (2_097_146, 3), (2_097_147, 4)])
def test_remaining_length_of_one_to_four_bytes(size, length_bytes):
    packet = publish("t/x", b"p" * size)  # body: 2 + 3 + size bytes
    assert packet[1:1 + length_bytes][-1] < 128 and all(b >= 128 for b in packet[1:length_bytes])
    msgs, end = split_publishes(packet + PINGRESP)
    assert [(t, len(p)) for t, p, _ in msgs] == [("t/x", size)] and end == len(packet)


def test_a_stream_cut_anywhere_gives_whole_packets_only_and_resumes_where_it_stopped():
    sent = [(f"city/t/{k}", bytes([k % 251]) * (k * 37 % 300), bool(k % 2)) for k in range(20)]
    small = sum(len(publish(t, p, retain=r)) for t, p, r in sent)
    sent.append(("big", b"b" * 20_000, False))  # 3 bytes of remaining length
    stream = b"".join(publish(t, p, retain=r) for t, p, r in sent)
    boundaries = set()
    pos = 0
    for t, p, r in sent:
        pos += len(publish(t, p, retain=r))
        boundaries.add(pos)
    # Every cut among the small packets and through the big one's header, then every 251st byte.
    for cut in [*range(small + 8), *range(small + 8, len(stream), 251), len(stream) - 1, len(stream)]:
        got, end = split_publishes(stream[:cut])
        assert end == max((b for b in boundaries | {0} if b <= cut), default=0), cut
        assert got == sent[:len(got)]
        rest, end2 = split_publishes(stream, end)  # the rest of the stream arrived
        assert got + rest == sent and end2 == len(stream)


def test_a_cut_inside_the_remaining_length_waits_for_more():
    packet = publish("t", b"x" * 300)  # remaining length 0xB2 0x02
    assert split_publishes(packet[:2]) == ([], 0)
    assert split_publishes(publish("a", b"1") + packet[:2]) == ([("a", b"1", False)], 6)


def test_stops_at_a_qos1_packet_in_the_middle_and_resumes_after_it():
    before, after = publish("a", b"1"), publish("c", b"3")
    qos1 = publish("b/status", b"offline", qos=1, mid=300)
    stream = before + qos1 + after
    assert split_publishes(stream) == ([("a", b"1", False)], len(before))  # paho's turn: QoS 1
    # paho reads the QoS 1 packet from the same buffer; the split resumes after it, in order.
    assert split_publishes(stream, len(before) + len(qos1)) == ([("c", b"3", False)], len(stream))


@pytest.mark.parametrize("packet", [
    publish("q", b"2", qos=2), publish("q", b"1", qos=1, retain=True),
    bytes([0x36]) + publish("q", b"x")[1:],  # QoS bits 3: invalid, paho's to refuse
    publish("q", b"d", dup=True),  # DUP on QoS 0 is a protocol violation: paho decides
    CONNACK, SUBACK, PINGRESP, b"\xe0\x00",  # DISCONNECT
    b"\x40\x02\x00\x01",  # PUBACK
], ids=["qos2", "qos1-retained", "qos3", "dup", "connack", "suback", "pingresp", "disconnect", "puback"])
def test_anything_but_a_qos0_publish_stops_the_split(packet):
    first = publish("a", b"1")
    assert split_publishes(first + packet + publish("z")) == ([("a", b"1", False)], len(first))


@pytest.mark.parametrize("bad", [
    b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 8,  # a fifth remaining-length byte
    b"\x30\x80\x80\x80\x80",  # the same, cut after the fourth
    b"\x30\x00",  # no room for the topic length
    b"\x30\x01\x00",
    b"\x30\x03\x00\x00x",  # empty topic (MQTT 3.1.1 forbids it)
    b"\x30\x05\x00\x09abc",  # topic longer than its packet
    b"\x30\x05\x00\x02\xff\xfeX",  # topic that is not UTF-8
    b"\x30\x05\x00\x02\xc3a",  # topic with a UTF-8 sequence cut short
], ids=["5-length-bytes", "5-length-bytes-cut", "length-0", "length-1", "empty-topic", "topic-beyond-packet",
        "topic-not-utf8", "topic-truncated-utf8"])
def test_malformed_packets_stop_the_split_for_paho_to_judge(bad):
    first = publish("a", b"1")
    assert split_publishes(first + bad + publish("z", b"9")) == ([("a", b"1", False)], len(first))
    assert split_publishes(bad) == ([], 0)


def test_mqtt5_without_properties_is_split_with_them_is_left_to_paho():
    plain = publish("a", b"1", properties=b"\x00")
    alias = publish("", b"2", properties=b"\x03\x23\x00\x05")  # topic alias 5, empty topic
    content = publish("c", b"3", properties=b"\x02\x01\x01")  # payload format indicator
    assert split_publishes(plain + plain, v5=True) == ([("a", b"1", False)] * 2, 2 * len(plain))
    assert split_publishes(plain + alias, v5=True) == ([("a", b"1", False)], len(plain))
    assert split_publishes(plain + content, v5=True) == ([("a", b"1", False)], len(plain))
    no_property_length = b"\x30\x03\x00\x01a"  # a 3.1.1 packet read as MQTT 5: malformed
    assert split_publishes(no_property_length, v5=True) == ([], 0)
    assert split_publishes(no_property_length) == ([("a", b"", False)], 5)
    # The same bytes read as 3.1.1 keep the property length in the payload: the version matters.
    assert split_publishes(plain) == ([("a", b"\x001", False)], len(plain))


def test_limit_bounds_the_messages_of_one_call():
    stream = b"".join(publish(f"t/{k}", b"x") for k in range(10))
    msgs, end = split_publishes(stream, limit=4)
    assert [t for t, _, _ in msgs] == ["t/0", "t/1", "t/2", "t/3"] and end == 4 * len(publish("t/0", b"x"))
    assert split_publishes(stream, end, limit=0) == ([], end)
    rest, end = split_publishes(stream, end, limit=100)
    assert len(rest) == 6 and end == len(stream)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytearray_and_memoryview_give_bytes_payloads_and_absolute_offsets(kind):
    stream = b"??" + publish("a", b"1") + publish("b", b"22", retain=True) + PINGRESP
    msgs, end = split_publishes(kind(stream), 2)
    assert msgs == [("a", b"1", False), ("b", b"22", True)] and end == len(stream) - 2
    assert all(type(p) is bytes for _, p, _ in msgs)


def test_same_messages_as_paho_decodes():
    _packet = pytest.importorskip("paho.mqtt._packet")  # paho-mqtt 2.2's pure decoder
    from paho.mqtt.enums import MQTTProtocolVersion
    cases = [("t", b""), ("city/bollards/B-00001/state", b'{"position": "up"}'), ("é/ü", b"\x00" * 200),
             ("x" * 300, b"y" * 70_000)]
    for retain in (False, True):
        for topic, payload in cases:
            packet = publish(topic, payload, retain=retain)
            (got,), end = split_publishes(packet)
            body = 2 + len(topic.encode()) + len(payload)
            ref = _packet.decode_publish(packet[0], packet[-body:], MQTTProtocolVersion.MQTTv311)
            assert got == (ref.topic.decode(), ref.payload, ref.retain) and end == len(packet)


def test_a_packet_above_max_packet_stops_the_split_for_the_link_to_refuse():
    small, big = publish("a", b"1"), publish("a", b"x" * 1000)
    stream = small + big + small
    assert split_publishes(stream, max_packet=100) == ([("a", b"1", False)], len(small))
    remaining = 2 + 1 + 1000  # topic length, topic, payload: what the fixed header announces
    assert split_publishes(stream, max_packet=remaining - 1) == ([("a", b"1", False)], len(small))
    assert len(split_publishes(stream, max_packet=remaining)[0]) == 3  # the limit is on the remaining length
    # The announced length is enough: the body need not have arrived.
    assert split_publishes(big[:5], max_packet=100) == ([], 0)
