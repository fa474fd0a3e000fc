"""Bad numbers at the Modbus boundary (issue 11, point 5).

A float the field sends as NaN or +-Inf is stored with a Bad status, never Good; a write of a
non-finite value or of a number its register cannot hold is refused with the reason, as a
CommandRejected, never an OverflowError or a numpy warning. Literal register bytes throughout.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from scada.driver_api import CommandRejected, WriteCommand
from drivers.modbus.codec import NON_FINITE_STATUS, ReadPlan, encode, non_finite_status
from drivers.modbus.config import ModbusPoint as P
from drivers.modbus.driver import ModbusDriver, PollGroup, _Coalescer
from scada import status as st
from city_scada import load_config
from scada.tagdb import TagDB

NAN_F32 = b"\x7f\xc0\x00\x00"
POS_INF_F32 = b"\x7f\x80\x00\x00"
NEG_INF_F32 = b"\xff\x80\x00\x00"
ONE_F32 = b"\x3f\x80\x00\x00"


def test_the_non_finite_status_is_bad_out_of_range() -> None:
    assert NON_FINITE_STATUS == st.BAD_OUT_OF_RANGE and st.is_bad(NON_FINITE_STATUS)


def test_nan_and_inf_floats_decoded_from_literal_bytes_get_the_bad_status() -> None:
    plan = ReadPlan([P("input", 2 * k, "float32") for k in range(4)] + [P("input", 8, "uint16")])
    polls = 2
    data = (NAN_F32 + POS_INF_F32 + NEG_INF_F32 + ONE_F32 + b"\x00\x07") * polls
    values = plan.decode_polls(data, b"", polls).ravel()
    status = non_finite_status(values, np.zeros(values.size, np.uint32))
    bad = np.uint32(st.BAD_OUT_OF_RANGE)
    assert status.tolist() == [bad, bad, bad, st.GOOD, st.GOOD] * polls
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf  # kept as sent
    assert status.dtype == np.uint32


def test_a_value_already_bad_keeps_its_own_status() -> None:
    values = np.array([np.nan, np.nan, 1.0])
    before = np.array([st.BAD_COMMUNICATION_ERROR, st.GOOD, st.GOOD], np.uint32)
    assert non_finite_status(values, before).tolist() == [st.BAD_COMMUNICATION_ERROR, st.BAD_OUT_OF_RANGE, st.GOOD]
    assert before.tolist()[1] == st.GOOD  # the caller's array is not modified


def test_the_coalescer_stores_a_nan_float_as_bad_not_good() -> None:
    plan = ReadPlan([P("input", 0, "float32"), P("input", 2, "float32", word_order="little")])
    db = TagDB(["power", "energy"])
    c = _Coalescer(db)
    group = PollGroup("default", 1.0, plan, np.arange(2), ())
    little_inf = POS_INF_F32[2:] + POS_INF_F32[:2]  # low word first
    c.add(group, NAN_F32 + little_inf, b"", None, 1_000)
    c.flush()
    assert db.status[:2].tolist() == [st.BAD_OUT_OF_RANGE, st.BAD_OUT_OF_RANGE]
    c.add(group, ONE_F32 + ONE_F32[2:] + ONE_F32[:2], b"", None, 2_000)
    c.flush()
    assert db.status[:2].tolist() == [st.GOOD, st.GOOD] and db.value[:2].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("point, value, reason", [
    (P("holding", 0, "float32"), float("nan"), "not a finite number"),
    (P("holding", 0, "float32"), float("inf"), "not a finite number"),
    (P("holding", 0, "float32"), float("-inf"), "not a finite number"),
    (P("holding", 0, "float32"), 1e39, "outside what a float32 register holds"),
    (P("holding", 0, "float32", scale=1e-30), 1e10, "outside what a float32 register holds"),
    (P("holding", 0, "int16"), float("inf"), "not a finite number"),
    (P("holding", 0, "uint16"), float("nan"), "not a finite number"),
    (P("holding", 0, "int16"), 32768, "outside what a int16 register holds"),
    (P("holding", 0, "int16"), -32769, "outside what a int16 register holds"),
    (P("holding", 0, "uint32"), 2 ** 32, "outside what a uint32 register holds"),
    (P("holding", 0, "int32"), 1e300, "outside what a int32 register holds"),
    (P("holding", 0, "int32", scale=1e-300), 1e10, "outside what a int32 register holds"),
    (P("holding", 0, "uint16"), 10 ** 400, "not a number a uint16 register can hold"),
    (P("coil", 0, "bool"), float("nan"), "not a finite number"),
])
def test_encode_refuses_with_the_reason_never_an_overflow(point: P, value: float, reason: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy overflow warning would be a failure
        with pytest.raises(ValueError) as info:
            encode(point, value)
    assert type(info.value) is ValueError and reason in str(info.value)


def test_encode_keeps_the_edges_of_each_type() -> None:
    assert encode(P("holding", 0, "int16"), -32768) == [0x8000]
    assert encode(P("holding", 0, "uint16"), 65535.4) == [0xFFFF]  # rounds to the top value
    assert encode(P("holding", 0, "uint32"), 2 ** 32 - 1) == [0xFFFF, 0xFFFF]
    top = float(np.finfo(np.float32).max)
    assert encode(P("holding", 0, "float32"), top) == [0x7F7F, 0xFFFF]


TAGS = """\
equipment_types:
  cabinet:
    class: lighting
    driver: modbus
    points:
      setpoint: {table: holding, address: 0, type: float32, writable: true}
      dim: {table: holding, address: 2, type: int16, scale: 0.1, writable: true}
      counter: {table: holding, address: 3, type: uint32, writable: true}
devices:
  - {name: LC-1, type: cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: 127.0.0.1:1502}
"""


@pytest.mark.parametrize("point, value, reason", [
    ("setpoint", float("nan"), "not a finite number"),
    ("setpoint", float("-inf"), "not a finite number"),
    ("setpoint", 5e38, "outside what a float32 register holds"),
    ("dim", 3276.8, "outside what a int16 register holds after scaling"),
    ("dim", float("inf"), "not a finite number"),
    ("counter", -1, "outside what a uint32 register holds"),
    ("counter", 10 ** 400, "not a number a uint32 register can hold"),
])
def test_the_driver_check_refuses_with_command_rejected(tmp_path: Path, point: str, value: float,
                                                        reason: str) -> None:
    (tmp_path / "tags.yaml").write_text(TAGS, encoding="utf-8")
    config = load_config(tmp_path)
    driver = ModbusDriver(config, list(config.devices), TagDB(config.tag_table()[0]))
    tag = config.tag_name(config.device("LC-1"), config.types["cabinet"].point(point))
    driver.check(WriteCommand(tag, 1.0))  # a sane value passes
    with pytest.raises(CommandRejected) as info:
        driver.check(WriteCommand(tag, value))
    assert reason in str(info.value)
