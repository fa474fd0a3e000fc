"""The OPC UA publisher and the tags' Value attributes (TagValue): reads give each tag as last
published (never newer than what subscribers are still to be sent); only watched rows cost
a DataValue and a notification."""

import asyncio

import numpy as np
import pytest
from asyncua import ua

from scada import status as st
from scada.opcua.publisher import Publisher, TagValue
from scada.tagdb import ANALOG, DISCRETE, TEXT, TagDB
from tests.integration.helpers import DEADLINE, until

VTYPES = [ua.VariantType.Double, ua.VariantType.Boolean, ua.VariantType.String, ua.VariantType.Int32]


def setup():
    tagdb = TagDB(["a/power", "a/lamps_on", "a/last_error", "a/mode"], [ANALOG, DISCRETE, TEXT, ANALOG])
    attrs = [TagValue() for _ in VTYPES]
    return tagdb, attrs, Publisher(tagdb, attrs, VTYPES)


def test_unbound_value_reads_as_waiting_for_initial_data():
    dv = TagValue().value
    assert dv.StatusCode.value == ua.StatusCodes.BadWaitingForInitialData
    assert dv.Value.Value is None


def test_a_read_is_the_tag_as_last_published():
    tagdb, attrs, pub = setup()
    dv = attrs[0].value
    assert dv.StatusCode.value == ua.StatusCodes.BadWaitingForInitialData  # nothing published yet
    asyncio.run(pub.apply(tagdb.snapshot()))  # what Publisher.run does first
    dv = attrs[0].value
    assert dv.Value.VariantType == ua.VariantType.Null  # no value yet
    assert dv.StatusCode.value == st.BAD_NO_COMMUNICATION
    batches = [tagdb.update(np.array([0, 1, 3]), np.array([12.5, 1.0, 3.0]), st.GOOD, 1_700_000_000_123_456_000),
               tagdb.update_text([2], ["no answer"], st.GOOD)]
    assert attrs[0].value.StatusCode.value == st.BAD_NO_COMMUNICATION  # not published yet
    for b in batches:
        asyncio.run(pub.apply(b))
    power, lamps, error, mode = (a.value for a in attrs)
    assert (power.Value.Value, power.Value.VariantType) == (12.5, ua.VariantType.Double)
    assert (lamps.Value.Value, lamps.Value.VariantType) == (True, ua.VariantType.Boolean)
    assert (mode.Value.Value, mode.Value.VariantType) == (3, ua.VariantType.Int32)
    assert error.Value.Value == "no answer"
    assert power.StatusCode.is_good()
    assert power.SourceTimestamp.timestamp() == pytest.approx(1_700_000_000.123456)
    # Reported again unchanged: no batch, the source timestamp stays the last change's (Part 4).
    assert tagdb.update(np.array([0]), np.array([12.5]), st.GOOD, 1_700_000_100_000_000_000) is None
    assert attrs[0].value.SourceTimestamp.timestamp() == pytest.approx(1_700_000_000.123456)
    # Link loss: Bad_CommunicationError with the last value kept (the SCADA rule).
    asyncio.run(pub.apply(tagdb.set_status(np.array([0]), st.BAD_COMMUNICATION_ERROR)))
    dv = attrs[0].value
    assert dv.StatusCode.value == st.BAD_COMMUNICATION_ERROR and dv.Value.Value == 12.5


def test_the_value_cannot_be_overwritten_behind_the_tag_database():
    _, attrs, _ = setup()
    with pytest.raises(AttributeError, match="tag database"):
        attrs[0].value = ua.DataValue(ua.Variant(1.0))


def test_only_watched_rows_are_notified_with_the_batch_values():
    tagdb, attrs, pub = setup()
    seen = []

    async def callback(handle, dv):
        seen.append((handle, dv))

    attrs[3].datachange_callbacks[7] = callback
    first = tagdb.update(np.array([0, 3]), np.array([1.0, 2.0]), st.GOOD, 5_000)
    tagdb.update(np.array([3]), np.array([4.0]), st.GOOD, 6_000)  # the tag moves on before the publisher runs
    asyncio.run(pub.apply(first))
    assert pub.published == 2 and pub.notified == 1
    [(handle, dv)] = seen
    assert handle == 7
    assert dv.Value.Value == 2 and dv.StatusCode.is_good()  # the batch's value, in order, not the latest
    # A client subscribing now gets 2 as its first value (as published), then the queued 4:
    # its values never go back in time.
    assert attrs[3].value.Value.Value == 2


def test_the_watched_mask_follows_asyncua_adding_and_removing_callbacks():
    tagdb, attrs, pub = setup()
    seen = []

    async def callback(handle, dv):
        seen.append(dv.Value.Value)

    attrs[0].datachange_callbacks[1] = callback  # as AddressSpace.add_datachange_callback does
    attrs[0].datachange_callbacks[2] = callback
    assert pub.watched.tolist() == [True, False, False, False]
    asyncio.run(pub.apply(tagdb.update(np.array([0, 1]), np.array([5.0, 1.0]))))
    assert seen == [5.0, 5.0]
    attrs[0].datachange_callbacks.pop(1)  # as AddressSpace.delete_datachange_callback does
    assert pub.watched[0]
    attrs[0].datachange_callbacks.pop(2)
    assert not pub.watched.any()
    asyncio.run(pub.apply(tagdb.update(np.array([0]), np.array([6.0]))))
    assert seen == [5.0, 5.0] and pub.notified == 1 and pub.published == 3  # rows, not callbacks


async def test_a_restart_after_a_reload_primed_it_starts_from_a_snapshot():
    """A reload primes the publisher (its queue goes on); if it then fails and restarts, the
    batches queued meanwhile are dropped: the restart must send the snapshot, not trust the
    reload's priming a second time."""
    tagdb, attrs, pub = setup()
    pub.record_now()  # as HmiServer.reload does with a new tag table
    assert pub.primed
    task = asyncio.create_task(pub.run())
    tagdb.update(np.array([0]), np.array([2.0]), st.GOOD, 2_000)
    await until(lambda: pub.published == 1, DEADLINE, "the batch of 2.0, no snapshot first")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert attrs[0].value.Value.Value == 2.0 and pub.published == 1
    # While it is down a change comes; the restart drops the queue (Application._publisher_restart).
    tagdb.update(np.array([0]), np.array([3.0]), st.GOOD, 3_000)
    pub.consumer.overflowed = True
    pub.consumer.take_overflow()
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: pub.published >= 1 + len(tagdb), DEADLINE, "the snapshot (every row) after the restart")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert attrs[0].value.Value.Value == 3.0
