"""Frames between the core and a front process: literal bytes, round trips, refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import numpy as np
import pytest

from scada.front import wire
from scada.tagdb import ChangeBatch
from tests.configs import ROOT


def batch(texts=None) -> ChangeBatch:
    return ChangeBatch(
        7,
        np.array([3, 1], np.int64),
        np.array([1.5, np.nan]),
        np.array([0, 0x80310000], np.uint32),
        np.array([10, 20], np.int64),
        99,
        texts,
    )


def test_a_batch_frame_is_its_columns_as_raw_little_endian_bytes():
    data = wire.encode_batch(batch())
    payload = (
        struct.pack("<QqIB", 7, 99, 2, 0)
        + struct.pack("<2q", 3, 1)
        + struct.pack("<2d", 1.5, float("nan"))
        + struct.pack("<2I", 0, 0x80310000)
        + struct.pack("<2q", 10, 20)
    )
    assert data == struct.pack("<IB", len(payload), wire.BATCH) + payload


@pytest.mark.parametrize("texts", [None, ("on", None)])
def test_a_batch_comes_back_equal(texts):
    b = batch(texts)
    data = wire.encode_batch(b)
    got = wire.decode_batch(data[wire.HEADER.size :])
    assert got.seq == 7 and got.server_time == 99 and got.texts == texts
    for name in ("ids", "values", "status", "source_time"):
        np.testing.assert_array_equal(getattr(got, name), getattr(b, name))
        assert getattr(got, name).dtype == getattr(b, name).dtype
        assert getattr(got, name).flags.writeable  # a copy the receiver owns


def test_a_truncated_or_padded_batch_is_refused():
    payload = wire.encode_batch(batch())[wire.HEADER.size :]
    with pytest.raises(wire.FrameError, match="does not hold 2 rows"):
        wire.decode_batch(payload[:-1])
    with pytest.raises(wire.FrameError, match="does not hold 2 rows"):
        wire.decode_batch(payload + b"\0")
    with pytest.raises(wire.FrameError, match="shorter than its header"):
        wire.decode_batch(payload[:5])


def test_texts_that_do_not_match_the_rows_are_refused():
    b = dataclasses.replace(batch(), texts=("only one",))
    with pytest.raises(wire.FrameError, match="texts"):
        wire.decode_batch(wire.encode_batch(b)[wire.HEADER.size :])


def test_the_frozen_configuration_crosses_as_a_message():
    from city_scada import load_config

    config = dataclasses.replace(load_config(ROOT), drivers={})
    data = wire.encode_message("init", {"config": config})
    tag, fields = wire.decode_message(data[wire.HEADER.size :])
    assert tag == "init" and fields["config"] == config
    assert dict(fields["config"].types) == dict(config.types)


def test_a_message_must_be_a_tagged_tuple():
    import pickle

    with pytest.raises(wire.FrameError, match="tuple"):
        wire.decode_message(pickle.dumps(["init"]))


async def read(data: bytes, max_size: int = wire.MAX_FRAME):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await wire.read_frame(reader, max_size)


async def test_frames_are_read_whole_and_sizes_checked_before_reading_the_payload():
    one = wire.encode_message("ready", 12)
    kind, payload = await read(one + wire.encode_batch(batch()))
    assert kind == wire.MESSAGE and wire.decode_message(payload) == ("ready", 12)
    # A header announcing more than allowed is refused before anything is buffered.
    with pytest.raises(wire.FrameError, match="at most 100"):
        await read(struct.pack("<IB", 1 << 30, wire.MESSAGE), max_size=100)
    with pytest.raises(wire.FrameError, match="unknown frame kind 9"):
        await read(struct.pack("<IB", 0, 9))
    with pytest.raises(asyncio.IncompleteReadError):  # the channel ended inside a frame
        await read(one[:-1])
