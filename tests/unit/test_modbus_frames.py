"""Modbus framing with literal frames: requests, TCP and RTU frames, and every check of an answer."""

from __future__ import annotations

import numpy as np
import pytest
from pymodbus.framer import FramerRTU

from scada.driver_api import DeviceRejected
from drivers.modbus import frames
from drivers.modbus.frames import FrameError


def test_request_pdus_are_the_protocol_bytes() -> None:
    assert frames.read_request(frames.READ_HOLDING, 0x006B, 3) == bytes.fromhex("03006B0003")
    assert frames.read_request(frames.READ_COILS, 19, 19) == bytes.fromhex("0100130013")
    assert frames.write_coil_request(0xAC, True) == bytes.fromhex("0500ACFF00")
    assert frames.write_coil_request(0xAC, False) == bytes.fromhex("0500AC0000")
    assert frames.write_registers_request(1, [0x000A, 0x0102]) == bytes.fromhex("1000010002 04 000A 0102".replace(" ", ""))


def test_tcp_frame_and_split() -> None:
    pdu = frames.read_request(frames.READ_INPUT, 8, 1)
    frame = frames.tcp_frame(0x1234, 7, pdu)
    assert frame == bytes.fromhex("1234" "0000" "0006" "07" "0400080001")
    # Two answers and the first half of a third arrive in one read: two come out, the rest waits.
    a1 = frames.tcp_frame(1, 7, bytes.fromhex("0402000A"))
    a2 = frames.tcp_frame(2, 7, bytes.fromhex("8402"))
    a3 = frames.tcp_frame(3, 7, bytes.fromhex("0402000B"))
    buf = bytearray(a1 + a2 + a3[:5])
    assert frames.split_tcp(buf) == [(1, 7, bytes.fromhex("0402000A")), (2, 7, bytes.fromhex("8402"))]
    assert buf == a3[:5]
    buf += a3[5:]
    assert frames.split_tcp(buf) == [(3, 7, bytes.fromhex("0402000B"))]
    assert buf == b""


@pytest.mark.parametrize("garbage", [
    bytes.fromhex("0001" "0001" "0006" "01" "0400000001"),  # protocol id 1: not Modbus
    bytes.fromhex("0001" "0000" "0000" "01"),  # length 0
    bytes.fromhex("0001" "0000" "FFFF" "01"),  # length beyond any PDU
    b"HTTP/1.1 400 Bad Request\r\n",
])
def test_a_stream_that_is_not_modbus_tcp_is_refused(garbage: bytes) -> None:
    with pytest.raises(FrameError):
        frames.split_tcp(bytearray(garbage))


def test_read_answers_decode_to_registers_and_bits() -> None:
    request = frames.read_request(frames.READ_HOLDING, 0x6B, 3)
    data = frames.check_response(request, bytes.fromhex("0306022B00000064"))
    np.testing.assert_array_equal(frames.registers(data), [0x022B, 0, 0x64])
    assert frames.registers(data).dtype == np.uint16
    request = frames.read_request(frames.READ_COILS, 19, 19)
    data = frames.check_response(request, bytes.fromhex("0103CD6B05"))
    # Modbus spec example: coils 20..38 = CD 6B 05, first coil in the lowest bit.
    expected = [1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(frames.bits(data, 19), np.array(expected, bool))


@pytest.mark.parametrize("answer, why", [
    ("0406022B00000064", "another function"),
    ("0304022B0000", "byte count for 2 registers when 3 were asked"),
    ("0306022B000000", "fewer bytes than its byte count says"),
    ("0306022B0000006400", "more bytes than its byte count says"),
    ("", "nothing"),
    ("8302FF", "an exception response with extra bytes"),
])
def test_an_answer_that_does_not_fit_the_request_never_decodes(answer: str, why: str) -> None:
    request = frames.read_request(frames.READ_HOLDING, 0x6B, 3)
    with pytest.raises(FrameError):
        frames.check_response(request, bytes.fromhex(answer))


def test_exception_responses_carry_their_code() -> None:
    request = frames.read_request(frames.READ_INPUT, 60, 1)
    with pytest.raises(DeviceRejected) as info:
        frames.check_response(request, bytes.fromhex("8402"))
    assert info.value.args == (2,)


def test_write_echoes() -> None:
    request = frames.write_registers_request(1, [10, 258])
    assert frames.check_response(request, bytes.fromhex("1000010002")) == bytes.fromhex("00010002")
    with pytest.raises(FrameError):  # the echo names another quantity
        frames.check_response(request, bytes.fromhex("1000010001"))
    # A self-resetting coil echoes the value it holds after the write (0): the address is what counts.
    coil = frames.write_coil_request(1, True)
    frames.check_response(coil, bytes.fromhex("0500010000"))
    with pytest.raises(FrameError):
        frames.check_response(coil, bytes.fromhex("050002FF00"))


def test_crc16_matches_the_specification_and_pymodbus() -> None:
    # Modbus over serial line spec, 6.2.2 example: 02 07 -> CRC 0x1241 sent low byte first (41 12).
    assert frames.rtu_frame(2, bytes([7])) == bytes.fromhex("020741 12".replace(" ", ""))
    rng = np.random.default_rng(1)
    for n in (1, 5, 60, 250):
        body = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        # pymodbus keeps the CRC byte-swapped and sends it big-endian: the same bytes on the wire.
        assert frames.rtu_frame(body[0], body[1:])[-2:] == FramerRTU.compute_CRC(body).to_bytes(2, "big")


def test_rtu_answer_length_and_checks() -> None:
    request = frames.read_request(frames.READ_INPUT, 0, 2)
    answer = frames.rtu_frame(3, bytes.fromhex("0404000A000B"))
    assert [frames.rtu_response_length(answer[:k], request) for k in (0, 1, 2)] == [None, None, None]
    assert frames.rtu_response_length(answer[:3], request) == len(answer) == 9
    assert frames.parse_rtu(answer, 3) == bytes.fromhex("0404000A000B")
    exception = frames.rtu_frame(3, bytes.fromhex("8402"))
    assert frames.rtu_response_length(exception[:2], request) == 5
    write = frames.write_registers_request(0, [1])
    assert frames.rtu_response_length(frames.rtu_frame(3, bytes.fromhex("1000000001"))[:2], write) == 8
    with pytest.raises(FrameError, match="CRC"):
        frames.parse_rtu(answer[:-1] + bytes([answer[-1] ^ 1]), 3)
    with pytest.raises(FrameError, match="unit"):
        frames.parse_rtu(answer, 4)
    with pytest.raises(FrameError, match="function"):
        frames.rtu_response_length(frames.rtu_frame(3, bytes.fromhex("0304000A000B")), request)
