"""Pure Modbus framing: request PDUs, TCP (MBAP) and RTU (CRC-16) frames, response checks.

No I/O here: bytes in, bytes or arrays out, tested with literal frames. The driver's
transports (``transport.py``) only move these bytes. Every check that stops a garbled or
mismatched answer from landing on the wrong tags lives here: transaction id, unit,
function code, byte count and CRC.
"""

from __future__ import annotations

import struct

import numpy as np

from scada.driver_api import DeviceRejected

READ_COILS, READ_DISCRETE, READ_HOLDING, READ_INPUT = 1, 2, 3, 4
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
READ_FUNCTION = {"coil": READ_COILS, "discrete": READ_DISCRETE, "holding": READ_HOLDING, "input": READ_INPUT}
BIT_FUNCTIONS = (READ_COILS, READ_DISCRETE)

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit + PDU), unit id
MAX_PDU = 253


class FrameError(ValueError):
    """An answer that cannot be the answer to the request: never decoded into values."""


# Request PDUs


def read_request(function: int, start: int, count: int) -> bytes:
    return struct.pack(">BHH", function, start, count)


def write_coil_request(address: int, value: bool) -> bytes:
    return struct.pack(">BHH", WRITE_COIL, address, 0xFF00 if value else 0)


def write_registers_request(address: int, words: list[int]) -> bytes:
    return struct.pack(f">BHHB{len(words)}H", WRITE_REGISTERS, address, len(words), 2 * len(words), *words)


# Response PDUs


def check_response(request: bytes, response: bytes) -> bytes:
    """The response PDU's data after the function code, once it is known to answer ``request``.

    Raises DeviceRejected(code) for an exception response, FrameError for anything that
    does not fit the request (other function, wrong byte count, echo mismatch).
    """
    if not response:
        raise FrameError("empty response")
    function = request[0]
    got = response[0]
    if got == function | 0x80:
        if len(response) != 2:
            raise FrameError(f"exception response of {len(response)} bytes")
        raise DeviceRejected(response[1])
    if got != function:
        raise FrameError(f"function {got} in answer to function {function}")
    if function <= READ_INPUT:
        count = struct.unpack_from(">H", request, 3)[0]
        expected = (count + 7) // 8 if function in BIT_FUNCTIONS else 2 * count
        if len(response) < 2 or response[1] != expected or len(response) != 2 + expected:
            raise FrameError(f"expected {expected} data bytes, got a {len(response)}-byte answer")
        return response[2:]
    # Writes echo the address, and the quantity (15, 16) or the value (5, 6). Only the
    # address is held to for single writes: devices (and pymodbus's server) echo the value
    # the point holds after the write, which a self-resetting coil has already cleared.
    echoed = 5 if function in (WRITE_COILS, WRITE_REGISTERS) else 3
    if len(response) != 5 or response[1:echoed] != request[1:echoed]:
        raise FrameError("write echo does not match the request")
    return response[1:]


def registers(data: bytes) -> np.ndarray:
    """Big-endian 16-bit registers of a read response's data."""
    return np.frombuffer(data, ">u2").astype(np.uint16)


def bits(data: bytes, count: int) -> np.ndarray:
    """The first ``count`` bits of a read response's data (bit 0 of byte 0 first)."""
    return np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count].astype(bool)


# Modbus TCP


def tcp_frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    return MBAP.pack(transaction, 0, len(pdu) + 1, unit) + pdu


def split_tcp(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Take every complete frame out of ``buffer``: (transaction id, unit, PDU) each.

    A header that cannot be Modbus (protocol id not 0, impossible length) raises FrameError:
    the stream is lost and the connection must be closed, since nothing after it can be
    trusted to start at a frame boundary.
    """
    frames = []
    pos = 0
    n = len(buffer)
    while n - pos >= 7:
        tid, pid, length, unit = MBAP.unpack_from(buffer, pos)
        if pid != 0 or not 2 <= length <= MAX_PDU + 1:
            raise FrameError(f"not a Modbus TCP header (protocol {pid}, length {length})")
        end = pos + 6 + length
        if end > n:
            break
        frames.append((tid, unit, bytes(buffer[pos + 7 : end])))
        pos = end
    del buffer[:pos]
    return frames


# Modbus RTU


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + struct.pack("<H", crc16(body))


def rtu_response_length(buffer: bytes | bytearray, request: bytes) -> int | None:
    """Bytes of the whole RTU answer to ``request`` once enough of it is in ``buffer``.

    RTU has no length field: the length follows from the function code (exception: 5 bytes;
    reads: 5 + byte count; writes: 8). None while too few bytes have arrived to tell.
    """
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function & 0x80:
        return 5
    if function != request[0]:
        raise FrameError(f"function {function} in answer to function {request[0]}")
    if function <= READ_INPUT:
        return None if len(buffer) < 3 else 5 + buffer[2]
    return 8


def parse_rtu(frame: bytes, unit: int) -> bytes:
    """The PDU of one whole RTU answer, after its CRC and unit are checked."""
    if len(frame) < 4 or crc16(frame[:-2]) != struct.unpack("<H", frame[-2:])[0]:
        raise FrameError("CRC mismatch")
    if frame[0] != unit:
        raise FrameError(f"answer from unit {frame[0]}, asked unit {unit}")
    return frame[1:-2]
