"""Change batches from the tag database -> Value attributes and subscriptions of the OPC UA server.

The hot path of the OPC UA side. For each changed row it builds one DataValue, stores it in
the node's Value attribute, and calls the datachange callbacks that asyncua registered for
monitored items on that node (nodes nobody watches cost only the store). It bypasses
asyncua's ``write_attribute_value`` because that path nulls the value of a Bad status,
and the tag database's rule is the SCADA one: a Bad_CommunicationError keeps the last value.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import numpy as np
import structlog
from asyncua import ua
from asyncua.server.address_space import AttributeValue

from scada.tagdb import ChangeBatch, Consumer, TagDB

log = structlog.get_logger("scada.opcua")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
YIELD_EVERY = 2000  # rows published between two yields to the event loop (~10-20 ms of work)


def _times(ns: np.ndarray) -> list[datetime]:
    us = (np.asarray(ns, np.int64) // 1000).tolist()
    return [_EPOCH + timedelta(microseconds=u) for u in us]


class PublishedValue(ua.DataValue):
    """A DataValue the publisher never mutates after publishing it.

    asyncua deep-copies every value it hands to a monitored item (``copy.deepcopy`` in
    ``MonitoredItemValues.set_current_datavalue``), "to prevent referencing the inner
    value": most of the cost of a notification, measured. Ours is built fresh for each
    change and never touched again, so sharing it is safe and the copy can be skipped.
    """

    def __deepcopy__(self, memo):
        return self


class Publisher:
    """Feeds the OPC UA address space from a TagDB consumer queue."""

    def __init__(self, tagdb: TagDB, value_attrs: list[AttributeValue], vtypes: list[ua.VariantType]) -> None:
        self.tagdb = tagdb
        self.value_attrs = value_attrs
        self.vtypes = vtypes
        self.consumer: Consumer = tagdb.subscribe("opcua", maxsize=1024)
        self.published = 0
        self.resyncs = 0
        # StatusCode objects are immutable; a city uses a handful of distinct codes.
        self._status_cache: dict[int, ua.StatusCode] = {}

    def _status(self, code: int) -> ua.StatusCode:
        sc = self._status_cache.get(code)
        if sc is None:
            sc = self._status_cache[code] = ua.StatusCode(code)
        return sc

    async def apply(self, batch: ChangeBatch) -> None:
        """Publish one batch: update each changed node and notify its monitored items."""
        ids = batch.ids.tolist()
        values = batch.values.tolist()
        statuses = batch.status.tolist()
        sources = _times(batch.source_time)
        server = _EPOCH + timedelta(microseconds=batch.server_time // 1000)
        texts = batch.texts
        attrs, vtypes, Double, Int32, Boolean = self.value_attrs, self.vtypes, ua.VariantType.Double, ua.VariantType.Int32, ua.VariantType.Boolean
        for k, tag in enumerate(ids):
            if k and k % YIELD_EVERY == 0:
                # A city-wide batch (a snapshot of 400k tags) must not freeze the event loop:
                # drivers' timeouts and OPC UA sessions' keep-alives run on the same loop.
                await asyncio.sleep(0)
            vt = vtypes[tag]
            v = values[k]
            if texts is not None and vt == ua.VariantType.String:
                variant = ua.Variant(texts[k], vt)
            elif v != v:  # NaN: no value yet
                variant = ua.Variant(None, ua.VariantType.Null)
            elif vt is Double:
                variant = ua.Variant(v, Double)
            elif vt is Int32:
                variant = ua.Variant(int(v), Int32)
            elif vt is Boolean:
                variant = ua.Variant(bool(v), Boolean)
            else:
                variant = ua.Variant(None, ua.VariantType.Null)
            dv = PublishedValue(variant, StatusCode=self._status(statuses[k]),
                              SourceTimestamp=sources[k], ServerTimestamp=server)
            attr = attrs[tag]
            attr.value = dv
            if attr.datachange_callbacks:
                for handle, callback in list(attr.datachange_callbacks.items()):
                    try:
                        await callback(handle, dv)
                    except Exception:  # one client's failure must not stop the publisher
                        log.exception("datachange_callback_failed", tag=self.tagdb.names[tag])
        self.published += len(ids)

    async def run(self) -> None:
        """Publish batches until cancelled; resynchronise from a snapshot after an overflow."""
        await self.apply(self.tagdb.snapshot())
        while True:
            batch = await self.consumer.get()
            if self.consumer.overflowed:
                # Batches were lost: the current state of every tag supersedes them.
                self.consumer.overflowed = False
                while not self.consumer.queue.empty():
                    self.consumer.get_nowait()
                self.resyncs += 1
                log.warning("opcua_publisher_resync", dropped_batches=self.consumer.dropped_batches)
                await self.apply(self.tagdb.snapshot())
                continue
            await self.apply(batch)
            await asyncio.sleep(0)  # queue.get() does not yield while batches are waiting
