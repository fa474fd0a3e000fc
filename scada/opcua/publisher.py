"""Change batches from the tag database -> subscriptions of the OPC UA server.

The hot path of the OPC UA side. A tag's Value attribute is a :class:`TagValue`: it holds no
DataValue but builds one, whenever asyncua reads it (a Read, a new monitored item's first
value), from the publisher's columns: each tag's value, status and timestamps as of the last
batch published, written with one numpy assignment per batch. So a changed row costs
nothing unless a client watches it: then the publisher builds one DataValue and calls the
datachange callbacks that asyncua registered for the node's monitored items. Why not store
a DataValue per change: at city scale that is two long-lived Python objects per tag,
replaced thousands of times a second, and the cyclic collector's full passes over them
stalled the event loop ~100 ms every few seconds (2,000 cabinets: polls started late).
Why the published columns and not the tag database's own: a new subscriber's first value
must not be newer than the batches still queued for it, or its values would go back in
time; and a row's SourceTimestamp is the time of its last change (Part 4), where the tag
database stamps every report. The publisher bypasses asyncua's ``write_attribute_value``
because that path nulls the value of a Bad status, and the tag database's rule is the
SCADA one: a Bad_CommunicationError keeps the last value.

The fast path: a monitored item of a tag's Value that asyncua's path would handle with one
DataValue and one awaited callback per change is instead a row of its subscription's
columnar queue (scada/opcua/fastqueue.py), fed with array operations from each batch and
encoded in one call at each publish (scada/opcua/datachange.py). Items whose parameters the
fast path does not support stay on asyncua's path, as before. An item is classified when
asyncua registers its callback (on the next batch, or at once when HmiServer's hook reports
the CreateMonitoredItems, ModifyMonitoredItems or SetMonitoringMode that touched it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import structlog
from asyncua import ua

from scada.opcua.asyncua_private.datachange import (
    datachange_item,
    datachange_subscription,
    discard_oldest,
    fast_queue,
    hook_datachange_publish,
    hook_more_notifications,
    requeue_datachanges,
    take_queued_datachanges,
)
from scada.opcua.asyncua_private.nodes import AttributeValue
from scada.opcua.asyncua_private.subscriptions import InternalSubscription, monitored_item
from scada.opcua.datachange import STRING
from scada.opcua.fastqueue import DataChangeQueue, Rows, item_params
from scada.opcua.typed_ua import StatusCode, data_value
from scada.tagdb import ChangeBatch, Consumer, TagDB

log = structlog.get_logger("scada.opcua")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
YIELD_EVERY = 2000  # rows published between two yields to the event loop (~10-20 ms of work)


def _times(ns: np.ndarray) -> list[datetime]:
    us = (np.asarray(ns, np.int64) // 1000).tolist()
    return [_EPOCH + timedelta(microseconds=u) for u in us]


def _ns(when: datetime | None) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000 if when is not None else 0


def _rows_of(queued: list[tuple[int, ua.MonitoredItemNotification]]) -> Rows:
    """What asyncua's path queued for items (their first values), as rows of a fast queue: (slot, notification)."""
    values, texts, status, src, srv = [], [], [], [], []
    for _, n in queued:
        dv = n.Value
        var = dv.Value
        v = var.Value if var is not None else None
        texts.append(v if isinstance(v, str) else None)
        values.append(float(v) if v is not None and not isinstance(v, str) else np.nan)
        status.append(dv.StatusCode.value if dv.StatusCode is not None else 0)
        src.append(_ns(dv.SourceTimestamp))
        srv.append(_ns(dv.ServerTimestamp))
    text = np.empty(len(queued), object)
    text[:] = texts
    return Rows(
        np.array([slot for slot, _ in queued], np.int64),
        np.array(values, np.float64),
        np.array(status, np.uint32),
        np.array(src, np.int64),
        np.array(srv, np.int64),
        text,
    )


def _notifications(rows: Rows, client_handle: int, vt: ua.VariantType) -> list[ua.MonitoredItemNotification]:
    """One item's rows of a fast queue as asyncua's path queues them (the reverse of ``_rows_of``)."""
    out = []
    texts = rows.text.tolist() if rows.text is not None else [None] * len(rows)
    for v, t, status, src, srv in zip(
        rows.value.tolist(), texts, rows.status.tolist(), rows.src.tolist(), rows.srv.tolist(), strict=True
    ):
        dv = _published(
            variant(vt, v, t),
            StatusCode=StatusCode(status),
            SourceTimestamp=_EPOCH + timedelta(microseconds=src // 1000) if src else None,
            ServerTimestamp=_EPOCH + timedelta(microseconds=srv // 1000) if srv else None,
        )
        out.append(ua.MonitoredItemNotification(ClientHandle=client_handle, Value=dv))
    return out


class PublishedValue(ua.DataValue):
    """A DataValue the publisher never mutates after publishing it.

    asyncua deep-copies every value it hands to a monitored item (``copy.deepcopy`` in
    ``MonitoredItemValues.set_current_datavalue``), "to prevent referencing the inner
    value": most of the cost of a notification, measured. Ours is built fresh for each
    change and never touched again, so sharing it is safe and the copy can be skipped.
    """

    def __deepcopy__(self, memo):
        return self


_published = data_value(PublishedValue)  # the class, typed with plain datetime timestamps


_Double, _Int32, _Boolean, _String = (
    ua.VariantType.Double,
    ua.VariantType.Int32,
    ua.VariantType.Boolean,
    ua.VariantType.String,
)


def variant(vt: ua.VariantType, v: float, text: str | None) -> ua.Variant:
    """A tag's value as the Variant of its type (NaN: no value yet, a Null variant)."""
    if vt is _String:
        return ua.Variant(text, vt) if text is not None else ua.Variant(None, ua.VariantType.Null)
    if v != v:
        return ua.Variant(None, ua.VariantType.Null)
    if vt is _Double:
        return ua.Variant(v, _Double)
    if vt is _Int32:
        return ua.Variant(int(v), _Int32)
    if vt is _Boolean:
        return ua.Variant(bool(v), _Boolean)
    return ua.Variant(None, ua.VariantType.Null)


class Watchers(dict):
    """A tag's monitored-item callbacks (asyncua's ``datachange_callbacks``), kept in step with
    the publisher's ``watched`` mask so that a batch finds its watched rows with one numpy
    gather, not a Python test per row. asyncua adds with ``[handle] = cb`` and removes with
    ``pop(handle)`` (AddressSpace.add/delete_datachange_callback).

    ``fast``: the handles whose items are on the publisher's fast path; ``watched`` marks the
    tags with some other callback (asyncua's path). ``owner``: the publisher told of each
    callback added (to classify it) and of each fast one removed (to drop its rows at once).
    """

    __slots__ = ("fast", "mask", "owner", "tag")

    def __init__(self) -> None:
        super().__init__()
        self.mask: np.ndarray | None = None
        self.tag = -1
        self.fast: set[int] = set()
        self.owner: Publisher | None = None

    def _mark(self) -> None:
        if self.mask is not None:
            self.mask[self.tag] = len(self) > len(self.fast)

    def _added(self, handle) -> None:
        self._mark()
        if self.owner is not None:
            self.owner.found(self.tag, handle)

    def _removed(self, handles) -> None:
        for handle in handles:
            fast = handle in self.fast
            self.fast.discard(handle)
            if self.owner is not None:
                self.owner.lost(self.tag, handle, fast)
        self._mark()

    def __setitem__(self, handle, callback) -> None:
        super().__setitem__(handle, callback)
        self._added(handle)

    def __delitem__(self, handle) -> None:
        super().__delitem__(handle)
        self._removed([handle])

    def pop(self, handle, *default):
        out = super().pop(handle, *default)
        self._removed([handle])
        return out

    def clear(self) -> None:
        handles = list(self)
        super().clear()
        self._removed(handles)

    def update(self, *args, **kwargs) -> None:
        before = set(self)
        super().update(*args, **kwargs)
        for handle in set(self) - before:
            self._added(handle)

    def setdefault(self, handle, default=None):
        new = handle not in self
        out = super().setdefault(handle, default)
        if new:
            self._added(handle)
        return out

    def popitem(self):
        out = super().popitem()
        self._removed([out[0]])
        return out


class _NoFast(set):
    """The fast handles of a tag without callbacks: always empty (shared, see :class:`_Unwatched`)."""

    __slots__ = ()

    def add(self, handle) -> None:
        raise RuntimeError("a tag without callbacks has no fast item")


_NO_FAST = _NoFast()


class _Unwatched(Watchers):
    """What a :class:`TagValue` without callbacks answers for ``datachange_callbacks``: made per
    access and dropped after it, so that a tag nobody watches keeps no dict and no set (~330 B
    per tag with its TagValue's attributes, at city scale). Empty to read; what the publisher
    records on it (mask, tag, owner) the TagValue already has (``source``, ``tag``); a callback
    added (asyncua's ``[handle] = callback``) makes the TagValue's own :class:`Watchers`.
    """

    __slots__ = ("value",)

    def __init__(self, value: TagValue) -> None:  # not Watchers': no set of its own
        self.value = value
        self.mask = None
        self.tag = -1
        self.owner = None
        self.fast = _NO_FAST

    def __setitem__(self, handle, callback) -> None:
        self.value.watchers()[handle] = callback

    def setdefault(self, handle, default=None):
        return self.value.watchers().setdefault(handle, default)

    def update(self, *args, **kwargs) -> None:
        self.value.watchers().update(*args, **kwargs)


class TagValue(AttributeValue):
    """The Value attribute of a tag's node: built from the publisher's columns when read.

    asyncua reads ``attr.value`` (AddressSpace.read_attribute_value) for a Read and for a
    new monitored item's first value; this property answers with the tag as last published.
    Unbound (before the publisher exists) it reads as BadWaitingForInitialData.

    One per tag, so it is small: slots only (asyncua's ``value_callback`` and ``value_setter``
    are None for the class), and its callbacks' :class:`Watchers` made with the first callback.
    """

    __slots__ = ("source", "tag", "_watchers")
    value_callback = None
    value_setter = None

    def __init__(self) -> None:  # not AttributeValue's: there is no value to hold
        self.source: Publisher | None = None
        self.tag = -1
        self._watchers: Watchers | None = None

    def watchers(self) -> Watchers:
        """The tag's callbacks (made now if it had none), bound as the publisher binds them."""
        w = self._watchers
        if w is None:
            w = self._watchers = Watchers()
            if self.source is not None:
                w.mask, w.tag, w.owner = self.source.watched, self.tag, self.source
        return w

    @property
    def datachange_callbacks(self) -> Watchers:
        """asyncua's dict of callbacks, kept in step with the publisher's watched mask."""
        w = self._watchers
        return w if w is not None else _Unwatched(self)

    @datachange_callbacks.setter
    def datachange_callbacks(self, w: dict[int, Callable[..., Any]]) -> None:
        if not isinstance(w, Watchers):  # a plain dict would leave the publisher's mask behind
            raise TypeError("a tag's datachange callbacks are a Watchers")
        self._watchers = w

    @property
    def value(self) -> ua.DataValue:
        if self.source is None:
            return ua.DataValue(
                ua.Variant(None, ua.VariantType.Null), StatusCode=StatusCode(ua.StatusCodes.BadWaitingForInitialData)
            )
        return self.source.current(self.tag)

    @value.setter
    def value(self, dv: ua.DataValue) -> None:
        # Tag variables are CurrentRead only, and HmiServer turns asyncua's remote admin off
        # (an admin's Write skips the AccessLevel check): no client write reaches this. A
        # write here would be a bug (it would vanish at the next read), so say so.
        raise AttributeError("a tag's Value attribute is the tag database's: write through a driver")


class Publisher:
    """Notifies the OPC UA subscriptions of changed tags from a TagDB consumer queue."""

    def __init__(self, tagdb: TagDB, value_attrs: list[TagValue], vtypes: list[ua.VariantType]) -> None:
        self.tagdb = tagdb
        self.value_attrs = value_attrs
        self.vtypes = vtypes
        n = len(value_attrs)
        self.watched = np.zeros(n, bool)  # tags with a monitored item on asyncua's path
        self.n_fast = np.zeros(n, np.int32)  # monitored items on the fast path, per tag
        self.fast_watched = np.zeros(n, bool)  # n_fast > 0: a bool gather per batch, the cheapest
        self._vtype_code = np.array([int(vt) for vt in vtypes], np.uint8)
        self._queues: dict[int, DataChangeQueue] = {}  # id -> queue with fast items of ours
        self._fast_queue: dict[int, DataChangeQueue] = {}  # callback handle -> its queue
        self._handle_tag: dict[int, int] = {}
        self._unclassified: list[tuple[int, int]] = []  # (tag, handle) registered, not yet looked at
        # Each tag as of the last batch published (what TagValue reads).
        self._value = np.full(n, np.nan)
        self._status_col = np.full(n, ua.StatusCodes.BadWaitingForInitialData, np.uint32)
        self._source_ns = np.zeros(n, np.int64)
        self._server_ns = np.zeros(n, np.int64)
        self._text: dict[int, str | None] = {}
        self._is_text = np.array([vt == ua.VariantType.String for vt in vtypes], bool)
        self.consumer: Consumer = tagdb.subscribe("opcua", maxsize=1024)
        self.published = 0  # rows taken from the queue
        self.notified = 0  # rows some client watched: a DataValue built and sent
        self.resyncs = 0
        # False: run() starts by sending a snapshot. True: record_now() took the current rows, or
        # the publisher resumes a queue it was consuming (a reload that kept the tag table).
        self.primed = False
        # How far the publishing has gone, for caught_up(): the seq of the newest batch (or
        # snapshot) fully published, and whether run() waits on an empty queue.
        self.published_seq = -1
        self._running = False
        self._idle = False
        self._seq_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.late_catch_ups = 0  # caught_up() calls that gave up after their timeout
        # StatusCode objects are immutable; a city uses a handful of distinct codes.
        self._status_cache: dict[int, ua.StatusCode] = {}
        stale: dict[int, DataChangeQueue] = {}
        for tag, attr in enumerate(value_attrs):
            attr.source, attr.tag = self, tag
            w = attr.datachange_callbacks
            w.mask, w.tag, w.owner = self.watched, tag, self
            # A publisher rebuilt by a reload: the items already there are classified again
            # (their tag ids may have changed); a queue's items not found again are gone.
            w.fast.clear()
            for handle, callback in w.items():
                sub = datachange_subscription(callback)
                queue = fast_queue(sub) if sub is not None else None
                if queue is not None and id(queue) not in stale:
                    stale[id(queue)] = queue
                    queue.stale = set(queue.slot_of)
                self.found(tag, handle)
            w._mark()
        self._classify()
        for queue in stale.values():
            for handle in list(queue.stale):
                queue.remove(handle)

    # -- the fast path's items: kept in step with asyncua's monitored items -------------------

    def found(self, tag: int, handle: int) -> None:
        """asyncua registered a datachange callback on a tag (Watchers): classify it soon."""
        self._handle_tag[handle] = tag
        self._unclassified.append((tag, handle))

    def lost(self, tag: int, handle: int, fast: bool) -> None:
        """An item is deleted (its own delete, its subscription's, its session's); a fast one's rows go now."""
        self._handle_tag.pop(handle, None)
        queue = self._fast_queue.pop(handle, None)
        if queue is None or not fast:
            return
        self.n_fast[tag] -= 1
        self.fast_watched[tag] = self.n_fast[tag] > 0
        queue.remove(handle)
        if not len(queue):
            self._queues.pop(id(queue), None)

    def items_changed(self, sub: InternalSubscription, mids: list[int]) -> None:
        """CreateMonitoredItems / ModifyMonitoredItems / SetMonitoringMode touched these items
        (scada.opcua.asyncua_private.datachange.hook_monitored_items): classify them again now."""
        for mid in mids:
            item = monitored_item(sub, mid)
            handle = item.callback_handle if item is not None else None
            tag = self._handle_tag.get(handle) if handle is not None else None
            if handle is not None and tag is not None:
                self._unclassified.append((tag, handle))
        self._classify()

    def _classify(self) -> None:
        todo, self._unclassified = self._unclassified, []
        moved: dict[int, tuple[DataChangeQueue, list[tuple[int, ua.MonitoredItemNotification]]]] = {}
        for tag, handle in todo:
            self._classify_one(tag, handle, moved)
        for queue, queued in moved.values():  # one chunk per queue: a CreateMonitoredItems of thousands
            queue.push(_rows_of(queued))

    def _classify_one(
        self,
        tag: int,
        handle: int,
        moved: dict[int, tuple[DataChangeQueue, list[tuple[int, ua.MonitoredItemNotification]]]],
    ) -> None:
        w = self.value_attrs[tag].datachange_callbacks
        callback = w.get(handle)
        sub = datachange_subscription(callback) if callback is not None else None
        item = datachange_item(sub, handle) if sub is not None else None
        if sub is None or item is None:
            return  # not a client subscription's item: asyncua's path
        rvid = item.read_value_id
        params = item_params(
            item.mode,
            item.filter,
            rvid.IndexRange if rvid is not None else None,
            item.client_handle or 0,
            item.queue_size or sub.max_queue_size,
            discard_oldest(item),
        )
        queue = self._fast_queue.get(handle)
        queue = queue if queue is not None else fast_queue(sub)
        if params is None:
            if handle in w.fast:  # modified to parameters of asyncua's path only: hand it back
                rows = queue.take(handle) if queue is not None else None
                w.pop(handle)
                w[handle] = callback
                if rows is not None and item.monitored_item_id is not None:
                    # Its pending rows go with it, the newest its new queue size holds (asyncua's rule).
                    size = item.queue_size or sub.max_queue_size
                    notes = _notifications(rows, item.client_handle or 0, self.vtypes[tag])
                    requeue_datachanges(sub, item.monitored_item_id, notes[-size:])
            return
        if queue is None:
            queue = DataChangeQueue()
            hook_datachange_publish(sub, queue)
            hook_more_notifications(sub, queue.more)
        text = self._text.get(tag)
        last = (float(self._value[tag]), int(self._status_col[tag]), int(self._source_ns[tag]), text)
        queue.add(handle, tag, int(self._vtype_code[tag]), params, last)
        if handle not in w.fast:
            w.fast.add(handle)
            w._mark()
            self.n_fast[tag] += 1
            self.fast_watched[tag] = True
            self._fast_queue[handle] = queue
            self._queues[id(queue)] = queue
        # The first value asyncua sent on creating or enabling the item, in order before ours.
        queued = take_queued_datachanges(sub, item.monitored_item_id) if item.monitored_item_id is not None else []
        if queued and params.mode != 0:
            slot = queue.slot_of[handle]
            moved.setdefault(id(queue), (queue, []))[1].extend((slot, n) for n in queued)

    def _status(self, code: int) -> ua.StatusCode:
        sc = self._status_cache.get(code)
        if sc is None:
            sc = self._status_cache[code] = StatusCode(code)
        return sc

    def current(self, tag: int) -> PublishedValue:
        """The tag as last published, as a DataValue (no timestamps before its first batch)."""
        src, srv = int(self._source_ns[tag]), int(self._server_ns[tag])
        return _published(
            variant(self.vtypes[tag], float(self._value[tag]), self._text.get(tag)),
            StatusCode=self._status(int(self._status_col[tag])),
            SourceTimestamp=_EPOCH + timedelta(microseconds=src // 1000) if src else None,
            ServerTimestamp=_EPOCH + timedelta(microseconds=srv // 1000) if srv else None,
        )

    def _record(self, batch: ChangeBatch) -> None:
        """The batch becomes what a Read or a new monitored item sees."""
        ids = batch.ids
        self._value[ids] = batch.values
        self._status_col[ids] = batch.status
        self._source_ns[ids] = batch.source_time
        self._server_ns[ids] = batch.server_time
        if batch.texts is not None:
            for k in np.flatnonzero(self._is_text[ids]).tolist():
                self._text[int(ids[k])] = batch.texts[k]

    def record_now(self) -> None:
        """Take the tag database's current rows as published, without notifying anyone.

        After a configuration reload: the clients' monitored items already have these values
        (the rows were carried over), so ``run`` does not send them a second time.
        """
        snap = self.tagdb.snapshot()
        self._record(snap)
        self.published_seq = max(self.published_seq, snap.seq)
        self.primed = True

    # -- caught_up: "the batches received so far are what a Read and a notification show" ------

    def _caught_up(self, seq: int) -> bool:
        return self.published_seq >= seq or (self._idle and self.consumer.queue.empty())

    async def caught_up(self, seq: int, timeout: float) -> bool:
        """Until every change batch up to ``seq`` is published: recorded in the columns a Read
        serves (scada/opcua/tag_read.py) and queued for the monitored items that watch it. True
        at once when the publisher does not run (nothing would ever catch up); False, counted,
        after ``timeout`` seconds (a publisher that far behind: the caller goes on regardless).

        Published means: a batch of seq >= ``seq`` published (batches are taken in seq order,
        and a snapshot holds every batch received before it was taken), or run() waiting on an
        empty queue (a batch the front's mirror did not offer, scada/front/tags.py, is already
        in the full snapshot published before it).
        """
        if not self._running or self._caught_up(seq):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, fut)
        self._seq_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            self.late_catch_ups += 1
            log.warning("opcua_publisher_behind", seq=seq, published_seq=self.published_seq, timeout=timeout)
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._seq_waiters.remove(entry)

    def _release(self, everyone: bool = False) -> None:
        """Wake the caught_up() waiters that are (or, ``everyone``: the publisher stops)."""
        if not self._seq_waiters:
            return
        keep = []
        for seq, fut in self._seq_waiters:
            if everyone or self._caught_up(seq):
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._seq_waiters = keep

    async def _publish(self, batch: ChangeBatch) -> None:
        """``apply``, then the batch counts as published (caught_up)."""
        await self.apply(batch)
        self.published_seq = max(self.published_seq, batch.seq)
        self._release()

    async def apply(self, batch: ChangeBatch) -> None:
        """Publish one batch: queue it for the fast items, notify the others through asyncua."""
        self._classify()
        attrs = self.value_attrs
        self._record(batch)
        self.published += len(batch.ids)
        # Most rows have no watcher: the watched ones, by the masks the Watchers keep.
        on_slow = self.watched[batch.ids]
        on_fast = self.fast_watched[batch.ids]
        watched = np.flatnonzero(on_slow)
        if on_fast.any():
            self.notified += int(np.count_nonzero(on_slow | on_fast))
            self._offer(batch, np.flatnonzero(on_fast))
        else:
            self.notified += len(watched)
        if not len(watched):
            return
        tags = batch.ids[watched].tolist()
        values = batch.values[watched].tolist()
        statuses = batch.status[watched].tolist()
        texts = [batch.texts[k] for k in watched.tolist()] if batch.texts is not None else None
        sources = _times(batch.source_time[watched])
        server = _EPOCH + timedelta(microseconds=batch.server_time // 1000)
        vtypes = self.vtypes
        for n, tag in enumerate(tags):
            if n and n % YIELD_EVERY == 0:
                # A city-wide batch watched by an HMI must not freeze the event loop:
                # drivers' timeouts and OPC UA sessions' keep-alives run on the same loop.
                await asyncio.sleep(0)
            dv = _published(
                variant(vtypes[tag], values[n], texts[n] if texts is not None else None),
                StatusCode=self._status(statuses[n]),
                SourceTimestamp=sources[n],
                ServerTimestamp=server,
            )
            w = attrs[tag].datachange_callbacks
            for handle, callback in list(w.items()):
                if handle in w.fast:
                    continue
                try:
                    await callback(handle, dv)
                except Exception:  # one client's failure must not stop the publisher
                    log.exception("datachange_callback_failed", tag=self.tagdb.names[tag])

    def _offer(self, batch: ChangeBatch, rows: np.ndarray) -> None:
        """The fast items' share of a batch, to each subscription's queue (array operations)."""
        ids = batch.ids[rows]
        texts = None
        text_rows = np.flatnonzero(self._vtype_code[ids] == STRING)
        if len(text_rows):
            # A text row carries its text; a status-only change carries the last text (kept).
            texts = np.full(len(ids), None, object)
            texts[text_rows] = [self._text.get(t) for t in ids[text_rows].tolist()]
        values, status, src = batch.values[rows], batch.status[rows], batch.source_time[rows]
        for queue in list(self._queues.values()):
            queue.offer(ids, values, status, src, int(batch.server_time), texts)

    async def run(self) -> None:
        """Publish batches until cancelled; resynchronise from a snapshot after an overflow."""
        # Primed once only: a later start (a supervised restart after batches were dropped)
        # must send the snapshot again.
        primed, self.primed = self.primed, False
        self._running = True
        try:
            if not primed:
                await self._publish(self.tagdb.snapshot())
            while True:
                self._idle = True  # caught up with everything received, if the queue is empty
                self._release()
                batch = await self.consumer.get()
                self._idle = False
                if self.consumer.take_overflow():
                    # Batches were lost: the current state of every tag supersedes them.
                    self.resyncs += 1
                    log.warning("opcua_publisher_resync", dropped_batches=self.consumer.dropped_batches)
                    await self._publish(self.tagdb.snapshot())
                    continue
                await self._publish(batch)
                await asyncio.sleep(0)  # queue.get() does not yield while batches are waiting
        finally:
            self._running = self._idle = False
            self._release(everyone=True)
