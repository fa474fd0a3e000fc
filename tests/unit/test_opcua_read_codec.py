"""A Read's results written by scada/opcua/read_codec.py are the bytes asyncua writes: the tag
Values built from the publisher's columns (every variant type, no value, Bad statuses, missing
timestamps) and any other DataValue of the response (left to asyncua's encoder)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from asyncua import ua

from scada.opcua.asyncua_private.binary import struct_to_binary
from scada.opcua.publisher import PublishedValue
from scada.opcua.read_codec import data_values


def _published(rnd: random.Random) -> ua.DataValue:
    kind = rnd.randrange(7)
    variant = [
        ua.Variant(rnd.uniform(-1e9, 1e9), ua.VariantType.Double),
        ua.Variant(rnd.randrange(-(2**31), 2**31), ua.VariantType.Int32),
        ua.Variant(rnd.random() < 0.5, ua.VariantType.Boolean),
        ua.Variant(rnd.choice(["no answer", "", "défaut", "x" * 300]), ua.VariantType.String),
        ua.Variant(None, ua.VariantType.Null),
        ua.Variant(float("nan"), ua.VariantType.Double),
        ua.Variant([1.0, 2.0], ua.VariantType.Double),  # an array: asyncua's encoder
    ][kind]
    when = lambda: rnd.choice(  # noqa: E731
        [None, datetime(2026, 12, 5, 10, 0, tzinfo=UTC) + timedelta(microseconds=rnd.randrange(10**12))]
    )
    return PublishedValue(
        variant,
        StatusCode=ua.StatusCode(rnd.choice([0, ua.StatusCodes.BadCommunicationError, ua.StatusCodes.Uncertain])),
        SourceTimestamp=when(),
        ServerTimestamp=when(),
    )


def _other(rnd: random.Random) -> ua.DataValue:
    return rnd.choice(
        [
            ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)),
            ua.DataValue(ua.Variant(ua.QualifiedName("power", 2), ua.VariantType.QualifiedName)),
            ua.DataValue(ua.Variant(3, ua.VariantType.Byte)),
            ua.DataValue(ua.Variant(1.5), SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC), SourcePicoseconds=5),
            PublishedValue(ua.Variant(2**40, ua.VariantType.Int64)),
        ]
    )


def test_read_results_are_written_as_asyncua_writes_them():
    rnd = random.Random(11)
    for n in (0, 1, 50, 2000):
        results = [_published(rnd) if rnd.random() < 0.8 else _other(rnd) for _ in range(n)]
        header = ua.ResponseHeader()  # one timestamp for both
        whole = struct_to_binary(ua.ReadResponse(ResponseHeader=header, Results=results))
        head = struct_to_binary(ua.ReadResponse(ResponseHeader=header))[:-8]  # TypeId and ResponseHeader
        assert whole == head + data_values(results) + b"\x00\x00\x00\x00", n
