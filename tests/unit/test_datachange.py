"""The vectorised DataChangeNotification encoder against asyncua's own encoder: literal bytes
equal to ``struct_to_binary`` of the equivalent objects, and decoded back by asyncua's
``struct_from_binary`` to the values, statuses and timestamps written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from scada.opcua.datachange import BOOLEAN, DOUBLE, INT32, STRING, encode_items, notification_body

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VT = {BOOLEAN: ua.VariantType.Boolean, INT32: ua.VariantType.Int32, DOUBLE: ua.VariantType.Double}


def _when(ns: int) -> datetime | None:
    return _EPOCH + timedelta(microseconds=ns // 1000) if ns else None


def reference(handles, vtypes, values, status, src, srv, texts) -> list[ua.MonitoredItemNotification]:
    """The notifications as asyncua objects, built the way the DataValue path builds them."""
    out = []
    for k in range(len(handles)):
        vt, v = int(vtypes[k]), float(values[k])
        if vt == STRING:
            t = texts[k]
            var = ua.Variant(t, ua.VariantType.String) if t is not None else ua.Variant(None, ua.VariantType.Null)
        elif v != v:
            var = ua.Variant(None, ua.VariantType.Null)
        elif vt == INT32:
            var = ua.Variant(int(v), ua.VariantType.Int32)
        elif vt == BOOLEAN:
            var = ua.Variant(bool(v), ua.VariantType.Boolean)
        else:
            var = ua.Variant(v, ua.VariantType.Double)
        code = int(status[k])
        dv = ua.DataValue(
            var,
            StatusCode=ua.StatusCode(code) if code else None,  # Good is left out of the encoding
            SourceTimestamp=_when(int(src[k])),
            ServerTimestamp=_when(int(srv[k])),
        )
        out.append(ua.MonitoredItemNotification(ClientHandle=int(handles[k]), Value=dv))
    return out


def random_rows(rng: np.random.Generator, n: int):
    vtypes = rng.choice(np.array([BOOLEAN, INT32, DOUBLE, STRING], np.uint8), n)
    values = rng.normal(0, 1e6, n)
    values[vtypes == BOOLEAN] = rng.integers(0, 2, int((vtypes == BOOLEAN).sum()))
    values[vtypes == INT32] = rng.integers(-(2**31), 2**31 - 1, int((vtypes == INT32).sum())) + 0.75
    values[rng.random(n) < 0.15] = np.nan  # no value yet: a Null variant
    status = rng.choice(np.array([0, 0, 0x80310000, 0x80050000, 0x40000000, 0x00960000], np.uint32), n)
    src = rng.integers(1_600_000_000_000_000_000, 1_900_000_000_000_000_000, n)
    src[rng.random(n) < 0.05] = 0  # never changed: no SourceTimestamp
    srv = np.full(n, 1_764_000_000_123_456_789, np.int64)
    words = ["", "no answer", "défaut lampe", "灯", "x" * 300, None]
    texts = np.empty(n, object)
    texts[:] = [words[i] for i in rng.integers(0, len(words), n)]
    texts[vtypes != STRING] = None
    handles = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    return handles, vtypes, values, status, src, srv, texts


@pytest.mark.parametrize("seed", range(8))
def test_random_batches_encode_to_asyncua_bytes(seed):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, int(rng.integers(1, 400)))
    ours = encode_items(*rows)
    theirs = b"".join(struct_to_binary(n) for n in reference(*rows))
    assert ours == theirs


def test_every_shape_on_its_own_encodes_to_literal_bytes():
    """One row per shape, compared with bytes written out by hand from Part 6."""
    t = 1_700_000_000_123_456_789  # -> 133_439_...; truncated to the microsecond
    ticks = ((t // 1000) * 10 + 116_444_736_000_000_000).to_bytes(8, "little")
    one = encode_items(np.array([7]), np.array([DOUBLE]), np.array([1.5]), np.array([0]), np.array([t]), np.array([t]))
    assert one == bytes([7, 0, 0, 0, 0x0D, 11]) + np.float64(1.5).tobytes() + ticks + ticks
    bad_null = encode_items(
        np.array([1]), np.array([INT32]), np.array([np.nan]), np.array([0x80310000]), np.array([0]), np.array([0])
    )
    assert bad_null == bytes([1, 0, 0, 0, 0x03, 0]) + (0x80310000).to_bytes(4, "little")
    texts = np.array(["é", ""], object)
    both = encode_items(
        np.array([2, 3]),
        np.array([STRING, STRING]),
        np.array([np.nan, np.nan]),
        np.zeros(2),
        np.zeros(2),
        np.zeros(2),
        texts,
    )
    assert both == bytes([2, 0, 0, 0, 1, 12, 2, 0, 0, 0, 0xC3, 0xA9, 3, 0, 0, 0, 1, 12, 0, 0, 0, 0])


def test_a_body_decodes_as_a_data_change_notification_with_the_values_written():
    rng = np.random.default_rng(99)
    rows = random_rows(rng, 300)
    body = notification_body(300, encode_items(*rows))
    decoded = struct_from_binary(ua.DataChangeNotification, Buffer(body))
    assert decoded.DiagnosticInfos == []
    expected = reference(*rows)
    assert len(decoded.MonitoredItems) == 300
    for got, want in zip(decoded.MonitoredItems, expected, strict=True):
        assert got.ClientHandle == want.ClientHandle
        assert got.Value.Value.VariantType == want.Value.Value.VariantType
        assert got.Value.Value.Value == want.Value.Value.Value
        assert got.Value.StatusCode.value == (want.Value.StatusCode.value if want.Value.StatusCode else 0)
        assert got.Value.SourceTimestamp == want.Value.SourceTimestamp
        assert got.Value.ServerTimestamp == want.Value.ServerTimestamp


def test_an_empty_batch_is_an_empty_notification():
    e = np.array([], np.int64)
    assert encode_items(e, e, e.astype(float), e, e, e) == b""
    assert notification_body(0, b"") == struct_to_binary(ua.DataChangeNotification(MonitoredItems=[]))
