import struct

import numpy as np
import pytest

from drivers.modbus.codec import Block, ReadPlan, encode, plan_blocks
from drivers.modbus.config import ModbusPoint as P


def words(fmt: str, value) -> list[int]:
    b = struct.pack(fmt, value)
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


def test_blocks_merge_contiguous_and_nearby_addresses():
    pts = [P("holding", 0, "uint16"), P("holding", 1, "uint16"), P("holding", 5, "float32"),
           P("holding", 40, "uint16"), P("input", 0, "uint32"), P("coil", 3, "bool"), P("coil", 0, "bool")]
    blocks = plan_blocks(pts, max_gap=8)
    assert blocks == [Block("holding", 0, 7), Block("holding", 40, 1), Block("input", 0, 2), Block("coil", 0, 4)]


def test_blocks_respect_the_125_register_limit():
    pts = [P("input", a, "uint16") for a in range(0, 300)]
    blocks = plan_blocks(pts)
    assert [b.count for b in blocks] == [125, 125, 50]
    assert all(b.count <= 125 for b in blocks)


def test_blocks_respect_the_2000_bit_limit():
    pts = [P("discrete", a, "bool") for a in range(0, 4500)]
    assert [b.count for b in plan_blocks(pts)] == [2000, 2000, 500]


def test_a_32_bit_value_is_never_split_across_blocks():
    pts = [P("input", a, "uint16") for a in range(124)] + [P("input", 124, "float32")]
    blocks = plan_blocks(pts)
    assert blocks == [Block("input", 0, 124), Block("input", 124, 2)]


def test_decode_every_type_from_literal_registers():
    pts = [
        P("input", 0, "uint16"),
        P("input", 1, "int16"),
        P("input", 2, "uint32"),
        P("input", 4, "int32"),
        P("input", 6, "float32"),
        P("input", 8, "float32", word_order="little"),
        P("input", 10, "uint32", word_order="little", scale=0.1),
        P("input", 12, "int16", scale=0.5, offset=-10),
        P("discrete", 0, "bool"),
        P("discrete", 2, "bool"),
    ]
    plan = ReadPlan(pts)
    regs = ([0xFFFF, 0xFFFE] + [0x0001, 0x0002] + [0xFFFF, 0xFFFE] + [0x4049, 0x0FDB]
            + [0x0FDB, 0x4049] + [0x2345, 0x0001] + [0x0014])
    assert len(regs) == 13
    values = plan.decode([regs, [True, False, True]])
    assert values[0] == 65535
    assert values[1] == -2
    assert values[2] == 0x00010002
    assert values[3] == -2
    assert values[4] == pytest.approx(3.14159274)
    assert values[5] == pytest.approx(3.14159274)
    assert values[6] == pytest.approx(0x00012345 * 0.1)
    assert values[7] == 20 * 0.5 - 10
    assert values[8] == 1 and values[9] == 1


def test_decode_with_gaps_maps_each_point_to_its_own_register():
    pts = [P("holding", 10, "uint16"), P("holding", 13, "uint16")]
    plan = ReadPlan(pts)
    assert plan.blocks == [Block("holding", 10, 4)]
    assert plan.decode([[1, 2, 3, 4]]).tolist() == [1.0, 4.0]


def test_short_response_is_rejected_not_shifted():
    plan = ReadPlan([P("input", 0, "uint16"), P("input", 1, "uint16")])
    with pytest.raises(ValueError, match="expected 2 values, got 1"):
        plan.decode([[5]])
    with pytest.raises(ValueError, match="expected 1 responses"):
        plan.decode([])


def test_encode_round_trips_through_decode():
    cases = [
        (P("holding", 0, "uint16"), 65535.0),
        (P("holding", 0, "int16"), -300.0),
        (P("holding", 0, "int32", word_order="little"), -123456.0),
        (P("holding", 0, "uint32"), 4_000_000_000.0),
        (P("holding", 0, "float32", word_order="little"), 2.5),
        (P("holding", 0, "uint16", scale=0.1, offset=5), 25.5),
    ]
    for point, value in cases:
        regs = encode(point, value)
        assert ReadPlan([point]).decode([regs])[0] == pytest.approx(value), point


def test_encode_literal_words():
    assert encode(P("holding", 0, "float32"), 1.0) == words(">f", 1.0) == [0x3F80, 0]
    assert encode(P("holding", 0, "float32", word_order="little"), 1.0) == [0, 0x3F80]
    assert encode(P("holding", 0, "int16"), -1) == [0xFFFF]
    assert encode(P("coil", 0, "bool"), 1) is True


def test_encode_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        encode(P("holding", 0, "uint16"), -1)
    with pytest.raises(ValueError):
        encode(P("holding", 0, "uint16", scale=0.1), 7000)
    with pytest.raises(ValueError):
        encode(P("coil", 0, "bool"), 2)


def test_decode_is_vectorised_over_many_points():
    pts = [P("input", a, "uint16") for a in range(100)]
    plan = ReadPlan(pts)
    out = plan.decode([list(range(100))])
    assert np.array_equal(out, np.arange(100, dtype=float))


def test_decode_polls_equals_decoding_each_poll_alone():
    """The driver decodes a flush period's polls together: same values as one by one."""
    pts = [P("input", 0, "float32"), P("input", 2, "uint32", word_order="little", scale=0.1),
           P("input", 4, "int16", scale=0.5), P("coil", 0, "bool"), P("coil", 9, "bool"),
           P("discrete", 3, "bool"), P("holding", 0, "uint16")]
    plan = ReadPlan(pts)
    rng = np.random.default_rng(7)
    polls = []
    for _ in range(5):
        polls.append([rng.integers(0, 2, b.count).astype(bool).tolist() if b.is_bits
                      else rng.integers(0, 0x10000, b.count).tolist() for b in plan.blocks])
    one_by_one = np.array([plan.decode(r) for r in polls])

    def data(responses, bits: bool) -> bytes:
        out = b""
        for b, r in zip(plan.blocks, responses):
            if b.is_bits and bits:
                out += np.packbits(np.array(r, bool), bitorder="little").tobytes()
            elif not b.is_bits and not bits:
                out += struct.pack(f">{len(r)}H", *r)
        return out

    together = plan.decode_polls(b"".join(data(r, False) for r in polls), b"".join(data(r, True) for r in polls), 5)
    np.testing.assert_array_equal(together, one_by_one)
    assert plan.register_bytes == 2 * (5 + 1) and plan.bit_bytes == 2 + 1  # coils 0..9: 2 bytes, discrete 0..3: 1


def test_decode_polls_refuses_data_of_the_wrong_size():
    plan = ReadPlan([P("input", 0, "uint16"), P("coil", 0, "bool")])
    with pytest.raises(ValueError, match="expected 2 x"):
        plan.decode_polls(b"\x00\x01" * 2 + b"\x00", b"\x01\x00", 2)
