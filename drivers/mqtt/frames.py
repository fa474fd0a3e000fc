"""Pure MQTT framing: complete QoS-0 PUBLISH packets split off the front of a byte stream.

No I/O. The link (``aio.py``) reads the socket into a buffer and, while paho is between
packets, calls :func:`split_publishes` on it: the leading QoS-0 PUBLISH packets are
delivered without paho (about 2 µs a message instead of 22), and everything from the first
packet that is anything else on (CONNACK, SUBACK, PINGRESP, QoS 1/2 PUBLISH and their
acknowledgements, DISCONNECT, an incomplete packet) is left, in order, to paho.

Malformed input is never parsed here: a packet whose fixed header, remaining length, topic
or (MQTT 5) properties are not what a plain QoS-0 PUBLISH carries stops the split exactly
as an unknown packet does, and paho, the reference, decides. For a broken frame (a
remaining length of more than 4 bytes, an empty MQTT 3.1.1 topic, a topic longer than its packet)
paho reports a protocol error and drops the connection, which the link then re-establishes
with backoff (what the MQTT specification requires of a client, and what happens without
this fast path). A topic that is not UTF-8 inside a well-framed packet is delivered by paho
too; the driver counts it as garbage (no device can own it) and the link stays up.
"""

from __future__ import annotations

PUBLISH_QOS0 = 0x30  # fixed header: packet type 3, DUP 0, QoS 0 (bit 0, RETAIN, is masked off)
MAX_REMAINING = 268_435_455  # what 4 bytes of remaining length can say

Buffer = bytes | bytearray | memoryview
Message = tuple[str, bytes, bool]  # topic, payload, retain flag


def split_publishes(
    buf: Buffer, start: int = 0, *, v5: bool = False, limit: int | None = None, max_packet: int | None = None
) -> tuple[list[Message], int]:
    """The complete QoS-0 PUBLISH packets at the front of ``buf[start:]``, and where they end.

    Returns ``(messages, offset)``: ``messages`` in stream order, at most ``limit`` of them;
    ``offset`` the first byte not consumed, which starts the first packet that is not a
    well-formed complete QoS-0 PUBLISH (or is ``len(buf)``). ``v5``: the stream is MQTT 5,
    whose PUBLISH carries properties after the topic; only packets with none are split off
    (a topic alias, a content type, user properties ... go to paho, which decodes them).
    MQTT 3.1 and 3.1.1 share one PUBLISH format: ``v5=False``. A packet whose remaining
    length is above ``max_packet`` stops the split too: the link refuses it (aio.py).
    """
    if buf.__class__ is not bytes:  # sliced in place; anything else is copied once
        data = bytes(memoryview(buf)[start:])
        messages, pos = split_publishes(data, v5=v5, limit=limit, max_packet=max_packet)
        return messages, start + pos
    out: list[Message] = []
    append = out.append
    end = len(buf)
    pos = start
    for _ in range(end if limit is None else limit):  # a message takes 5 bytes or more
        if pos + 1 >= end:
            break
        first = buf[pos]
        if first & 0xFE != PUBLISH_QOS0:
            break
        # Remaining length: 1 to 4 bytes, 7 bits each, least significant first.
        b = buf[pos + 1]
        if b < 0x80:
            length, body = b, pos + 2
        else:
            length, shift, p = b & 0x7F, 7, pos + 2
            while True:
                if p >= end or p - pos > 4:  # incomplete, or a 5th length byte (malformed)
                    return out, pos
                b = buf[p]
                length |= (b & 0x7F) << shift
                p += 1
                if b < 0x80:
                    break
                shift += 7
            body = p
        if max_packet is not None and length > max_packet:
            break  # too large: left to the link's check, which closes the connection
        packet_end = body + length
        if packet_end > end:
            break  # incomplete: the rest has not arrived
        if length < 2:
            break  # no room for the topic's length: malformed
        topic_end = body + 2 + ((buf[body] << 8) | buf[body + 1])
        if topic_end == body + 2 or topic_end > packet_end:
            break  # an empty topic, or one longer than its packet: malformed
        payload_start = topic_end
        if v5:
            if topic_end >= packet_end or buf[topic_end] != 0:
                break  # properties present (or their length missing): paho's
            payload_start += 1
        try:
            topic = buf[body + 2 : topic_end].decode()
        except UnicodeDecodeError:
            break
        append((topic, buf[payload_start:packet_end], first == 0x31))
        pos = packet_end
    return out, pos


def remaining_length(n: int) -> bytes:
    """The fixed header's remaining-length field for ``n`` bytes: what the split decodes
    (for building packets in tests and benches)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} out of 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)
