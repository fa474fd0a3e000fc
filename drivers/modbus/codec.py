"""Pure Modbus codec: read planning, registers -> value arrays, values -> registers.

No I/O here. A :class:`ReadPlan` is computed once per equipment type: the requests to send
(contiguous or nearby addresses merged, at most 125 registers or 2000 bits each) and, per
data type, where each point's words sit in the concatenated response. Decoding one poll is
then a handful of numpy operations whatever the number of points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drivers.modbus.config import BIT_TABLES, ModbusPoint
from scada import status as st

MAX_REGISTERS = 125  # Modbus limit for one read of holding/input registers
MAX_BITS = 2000  # Modbus limit for one read of coils/discrete inputs
TABLE_ORDER = ("holding", "input", "coil", "discrete")


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: str
    start: int
    count: int

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def plan_blocks(
    points: Sequence[ModbusPoint], max_gap: int = 8, max_registers: int = MAX_REGISTERS, max_bits: int = MAX_BITS
) -> list[Block]:
    """Merge points into as few requests as the protocol allows.

    Addresses at most ``max_gap`` apart join one request (reading a few unused registers is
    cheaper than another round trip), as long as the request stays within the size limit.
    """
    blocks: list[Block] = []
    for table in TABLE_ORDER:
        spans = sorted((p.address, p.address + p.size) for p in points if p.table == table)
        limit = max_bits if table in BIT_TABLES else max_registers
        if not spans:
            continue
        start, end = spans[0]
        for lo, hi in spans[1:]:
            if lo - end <= max_gap and max(end, hi) - start <= limit:
                end = max(end, hi)
                continue
            blocks.append(Block(table, start, end - start))
            start, end = lo, hi
        blocks.append(Block(table, start, end - start))
    return blocks


class ReadPlan:
    """Blocks to read for one equipment type, and how to decode their concatenation.

    Decoding works on many polls at once: the answers' data bytes, register blocks
    concatenated in block order (big-endian words, ``register_bytes`` per poll) and bit blocks
    concatenated as they came (packed bytes, ``bit_bytes`` per poll). A driver stacks the
    polls of a whole flush period and decodes them with one set of numpy operations: per
    poll, the same operations cost more than the request itself.
    """

    def __init__(self, points: Sequence[ModbusPoint], max_gap: int = 8) -> None:
        self.points = tuple(points)
        self.blocks = plan_blocks(self.points, max_gap)
        n = len(self.points)
        # Position of each block's first word in the concatenated registers; of its first bit
        # in the unpacked concatenation of the bit blocks' bytes (each block whole bytes).
        reg_base: dict[int, int] = {}
        bit_base: dict[int, int] = {}
        nregs = nbytes = 0
        for k, b in enumerate(self.blocks):
            if b.is_bits:
                bit_base[k], nbytes = 8 * nbytes, nbytes + (b.count + 7) // 8
            else:
                reg_base[k], nregs = nregs, nregs + b.count
        self.register_count = nregs
        self.register_bytes, self.bit_bytes = 2 * nregs, nbytes
        pos = np.zeros(n, np.int64)
        for i, p in enumerate(self.points):
            k = next(
                k for k, b in enumerate(self.blocks) if b.table == p.table and b.start <= p.address < b.start + b.count
            )
            base = bit_base[k] if self.blocks[k].is_bits else reg_base[k]
            pos[i] = base + p.address - self.blocks[k].start
        types = np.array([p.type for p in self.points])
        little = np.array([p.word_order == "little" for p in self.points], bool)

        def idx(mask: np.ndarray) -> np.ndarray:
            return np.flatnonzero(mask)

        self._bool = idx(types == "bool")
        self._u16 = idx(types == "uint16")
        self._i16 = idx(types == "int16")
        wide = (types == "uint32") | (types == "int32") | (types == "float32")
        self._wide = idx(wide)
        # High and low word positions of every 32-bit point, honouring its word order.
        self._hi = np.where(little[self._wide], pos[self._wide] + 1, pos[self._wide])
        self._lo = np.where(little[self._wide], pos[self._wide], pos[self._wide] + 1)
        wide_types = types[self._wide]
        self._wide_u32 = wide_types == "uint32"
        self._wide_i32 = wide_types == "int32"
        self._wide_f32 = wide_types == "float32"
        self._pos = pos
        self.scale = np.array([p.scale for p in self.points], np.float64)
        self.offset = np.array([p.offset for p in self.points], np.float64)

    def decode_polls(self, register_data: bytes, bit_data: bytes, polls: int) -> np.ndarray:
        """Values in engineering units, shape (polls, points), from the polls' stacked data bytes."""
        if len(register_data) != polls * self.register_bytes or len(bit_data) != polls * self.bit_bytes:
            raise ValueError(
                f"expected {polls} x ({self.register_bytes} register + {self.bit_bytes} bit) bytes, "
                f"got {len(register_data)} + {len(bit_data)}"
            )
        regs = np.frombuffer(register_data, ">u2").reshape(polls, self.register_count)
        bits = np.unpackbits(
            np.frombuffer(bit_data, np.uint8).reshape(polls, self.bit_bytes), axis=1, bitorder="little"
        )
        raw = np.empty((polls, len(self.points)), np.float64)
        if len(self._bool):
            raw[:, self._bool] = bits[:, self._pos[self._bool]]
        if len(self._u16):
            raw[:, self._u16] = regs[:, self._pos[self._u16]]
        if len(self._i16):
            raw[:, self._i16] = regs[:, self._pos[self._i16]].astype(np.uint16).view(np.int16)
        if len(self._wide):
            u32 = (regs[:, self._hi].astype(np.uint32) << 16) | regs[:, self._lo].astype(np.uint32)
            wide = np.empty(u32.shape, np.float64)
            wide[:, self._wide_u32] = u32[:, self._wide_u32]
            wide[:, self._wide_i32] = u32[:, self._wide_i32].view(np.int32)
            wide[:, self._wide_f32] = u32[:, self._wide_f32].view(np.float32)
            raw[:, self._wide] = wide
        raw *= self.scale
        raw += self.offset
        return raw

    def decode(self, responses: Sequence[Sequence[int] | Sequence[bool] | np.ndarray]) -> np.ndarray:
        """Values in engineering units, in point order, from one poll's values per block."""
        if len(responses) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} responses, got {len(responses)}")
        reg_parts: list[bytes] = []
        bit_parts: list[bytes] = []
        for b, r in zip(self.blocks, responses):
            # A short (or long) answer must never shift values onto the wrong points.
            if len(r) < b.count:
                raise ValueError(f"{b.table} block at {b.start}: expected {b.count} values, got {len(r)}")
            if b.is_bits:
                bit_parts.append(np.packbits(np.asarray(r[: b.count], bool), bitorder="little").tobytes())
            else:
                reg_parts.append(np.asarray(r[: b.count]).astype(">u2").tobytes())
        return self.decode_polls(b"".join(reg_parts), b"".join(bit_parts), 1)[0]


# The status of a float32 the device sent as NaN or +-Inf. The link worked, so it is not a
# communication error; the device says it has no usable number (an open sensor input, an
# over-range, a division by zero in its firmware), so it must not be stored Good: alarms,
# history and HMIs would compare or plot it. Bad_OutOfRange ("the value was out of range")
# fits: the value is outside the range of real measurements, and a Bad status is what every
# consumer here already skips. The value itself is kept as sent (nothing is lost).
NON_FINITE_STATUS = st.BAD_OUT_OF_RANGE


def non_finite_status(values: np.ndarray, status: np.ndarray) -> np.ndarray:
    """``status`` with NON_FINITE_STATUS where ``values`` is NaN or +-Inf and the status was Good.

    One numpy pass over a whole batch. A value already carrying a Bad or Uncertain status
    (its block failed) keeps that status: the cause is the communication, not the number.
    """
    status = np.asarray(status, np.uint32)
    bad = ~np.isfinite(values)
    if not bad.any():
        return status
    return np.where(bad & (status == st.GOOD), np.uint32(NON_FINITE_STATUS), status).astype(np.uint32)


_RAW_LIMITS = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def encode(point: ModbusPoint, value: float) -> list[int] | bool:
    """Registers (or a bit) that write ``value`` (engineering units) to ``point``.

    Raises ValueError, with the reason, when the value is not a finite number or does not fit
    the point's data type after scaling: never an OverflowError nor a numpy warning.
    """
    try:
        value = float(value)  # an int too large for a float raises OverflowError here
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number a {point.type} register can hold") from None
    if not math.isfinite(value):  # NaN or +-Inf: no device setpoint means that
        raise ValueError(f"{value} is not a finite number: refused for a {point.type} point")
    if point.type == "bool":
        if value not in (0, 1):
            raise ValueError(f"a bool point takes 0 or 1, not {value}")
        return bool(value)
    raw = (value - point.offset) / point.scale
    if point.type == "float32":
        if not math.isfinite(raw) or abs(raw) > _FLOAT32_MAX:  # would be written as +-Inf
            raise ValueError(
                f"{value} is outside what a float32 register holds after scaling (|raw| <= {_FLOAT32_MAX:.7g})"
            )
        word32 = int(np.array([raw], np.float32).view(np.uint32)[0])
    else:
        lo, hi = _RAW_LIMITS[point.type]
        if not math.isfinite(raw) or not lo - 0.5 < raw < hi + 0.5:  # checked before round(): no OverflowError
            raise ValueError(f"{value} is outside what a {point.type} register holds after scaling (raw {lo}..{hi})")
        r = round(raw)
        if not lo <= r <= hi:
            raise ValueError(f"{value} is outside what a {point.type} register holds after scaling (raw {lo}..{hi})")
        if point.type in ("int16", "uint16"):
            return [r & 0xFFFF]
        word32 = r & 0xFFFFFFFF
    words = [word32 >> 16, word32 & 0xFFFF]
    return words[::-1] if point.word_order == "little" else words
