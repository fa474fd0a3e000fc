"""The OPC UA codec: notifications into columns, commands into Variants. No network."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary

from drivers.opcua import codec
from scada import status as st

T = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=timezone.utc)
T_NS = 1_795_860_000_123_456_000  # T in ns since the epoch
IS_TEXT = np.array([False] * 8 + [False, True, False, False])  # tag 9 is a text point


def item(tag: int, value, vtype=None, status: int = st.GOOD, source=T, server=None) -> ua.MonitoredItemNotification:
    var = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.MonitoredItemNotification(ClientHandle=tag, Value=ua.DataValue(
        var, StatusCode=ua.StatusCode(status), SourceTimestamp=source, ServerTimestamp=server))


def test_wire_bytes_to_columns():
    """Two items as a server sends them: a Double with Uncertain_LastUsableValue, an Int32."""
    wire = bytes.fromhex(
        "02000000"  # two MonitoredItemNotifications
        "07000000" "0f" "0b" "0000000000f06c40" "00009040" "8026fb3a1f7fdd01" "8026fb3a1f7fdd01"
        "08000000" "07" "06" "03000000" "00000000" "8026fb3a1f7fdd01"
        "00000000")  # no DiagnosticInfos
    notification = struct_from_binary(ua.DataChangeNotification, Buffer(wire))
    d = codec.decode(notification.MonitoredItems, IS_TEXT)
    assert d.tags.tolist() == [7, 8]
    assert d.values.tolist() == [231.5, 3.0]
    assert d.status.tolist() == [st.UNCERTAIN_LAST_USABLE_VALUE, st.GOOD]  # the server's code, kept
    assert d.source_time.tolist() == [T_NS, T_NS]  # the source's timestamp, to the microsecond
    assert d.status.dtype == np.uint32 and d.source_time.dtype == np.int64 and d.tags.dtype == np.int64
    assert not d.keep_last.any() and d.texts == []


def test_server_timestamp_stands_in_for_a_missing_source_timestamp():
    d = codec.decode([item(1, 2.0, ua.VariantType.Double, source=None, server=T),
                      item(2, 3.0, ua.VariantType.Double, source=None)], IS_TEXT, now=1.5)
    assert d.source_time.tolist() == [T_NS, 1_500_000_000]


def test_booleans_integers_and_enumerations_become_floats():
    d = codec.decode([item(1, True, ua.VariantType.Boolean), item(2, -7, ua.VariantType.Int16),
                      item(3, 2**40, ua.VariantType.UInt64), item(4, ua.NodeClass.Variable)], IS_TEXT)
    assert d.values.tolist() == [1.0, -7.0, float(2**40), 2.0]
    assert (d.status == st.GOOD).all()


def test_bad_status_without_a_value_keeps_the_last_value():
    d = codec.decode([item(1, None, ua.VariantType.Null, status=ua.StatusCodes.BadSensorFailure),
                      item(2, None, ua.VariantType.Null)], IS_TEXT)
    assert d.keep_last.tolist() == [True, False]  # Good without a value: nothing to keep, NaN
    assert d.status.tolist() == [ua.StatusCodes.BadSensorFailure, st.GOOD]
    assert np.isnan(d.values).all()


def test_text_point_goes_to_the_text_rows():
    d = codec.decode([item(9, "plan night", ua.VariantType.String, status=st.UNCERTAIN_LAST_USABLE_VALUE),
                      item(10, 4.0, ua.VariantType.Double)], IS_TEXT)
    assert d.texts == [(9, "plan night", st.UNCERTAIN_LAST_USABLE_VALUE, T_NS)]
    assert d.tags.tolist() == [10] and d.values.tolist() == [4.0]


@pytest.mark.parametrize("value", [[1.0, 2.0], "text on a numeric point", ua.LocalizedText("x")],
                         ids=["array", "string", "structure"])
def test_not_a_scalar_number_is_a_configuration_error(value):
    d = codec.decode([item(3, value), item(4, 1.0, ua.VariantType.Double)], IS_TEXT)
    assert d.tags.tolist() == [3, 4]
    assert d.status.tolist() == [st.BAD_CONFIGURATION_ERROR, st.GOOD]
    assert np.isnan(d.values[0]) and d.values[1] == 1.0


def test_empty_notification():
    d = codec.decode([], IS_TEXT)
    assert d.tags.size == d.values.size == d.status.size == d.source_time.size == 0


@pytest.mark.parametrize(("value", "vtype", "expected"), [
    (3, ua.VariantType.Int32, 3), (3.0, ua.VariantType.UInt16, 3), (1, ua.VariantType.Boolean, True),
    (0, ua.VariantType.Boolean, False), (2.5, ua.VariantType.Double, 2.5), (2, ua.VariantType.Float, 2.0),
])
def test_command_takes_the_node_type(value, vtype, expected):
    v = codec.variant(value, vtype)
    assert v.VariantType == vtype and v.Value == expected and type(v.Value) is type(expected)


def test_fraction_on_an_integer_node_is_refused():
    with pytest.raises(ValueError, match="not an integer"):
        codec.variant(2.5, ua.VariantType.Int32)


def test_client_handles_outside_the_drivers_items_are_dropped_and_counted_never_raised():
    """A faulty server's handle (out of range, another driver's tag, not a number) touches no tag."""
    known = np.zeros(len(IS_TEXT), bool)
    known[[7, 8, 9]] = True  # this driver's items
    items = [item(7, 1.5), item(4_000_000_000, 2.0), item(3, 3.0), item(9, "open", ua.VariantType.String),
             item(8, 4.0)]
    bogus = item(8, 5.0)
    bogus.ClientHandle = "eight"  # what a broken decoder or server could hand over
    d = codec.decode([*items, bogus], IS_TEXT, known=known)
    assert d.tags.tolist() == [7, 8]
    assert d.values.tolist() == [1.5, 4.0]
    assert d.texts == [(9, "open", st.GOOD, T_NS)]
    assert d.rejected == 3
    assert d.bad_handle == 4_000_000_000
    # Without the driver's own mask, the range of the tag table still holds.
    d = codec.decode([item(len(IS_TEXT), 1.0), item(2, 2.0)], IS_TEXT)
    assert d.tags.tolist() == [2] and d.rejected == 1
    d = codec.decode([item(2, 1.0)], IS_TEXT, known=known)
    assert len(d.tags) == 0 and d.rejected == 1
