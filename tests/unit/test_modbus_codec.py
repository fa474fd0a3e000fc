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
