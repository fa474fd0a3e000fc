"""One subscription's data changes as columns: its monitored items and their pending notifications.

asyncua queues one MonitoredItemNotification object per value and per item and encodes them
one by one at each publish. Here a subscription's monitored items of tag values are rows of
a small table (client handle, mode, queue size, filter, last value reported) looked up from a
change batch with one searchsorted, filtered with array comparisons, and appended as one
chunk of pending rows; a publish trims the queues (QueueSize, DiscardOldest), keeps what is
not to be reported yet (Sampling items, MaxNotificationsPerPublish) and encodes the rest in
one call of :func:`scada.opcua.datachange.encode_items`.

Supported here (anything else stays on asyncua's path, unchanged): Value attribute of a tag,
no IndexRange, no filter or a DataChangeFilter with trigger Status / StatusValue /
StatusValueTimestamp and deadband None or Absolute, on a client subscription with a
publishing interval above 0. Differences from asyncua's own path, as Part 4 asks: Sampling
items queue values without reporting them (asyncua reports them); the absolute deadband is
measured from the last value queued (asyncua: from the last value seen).

A change batch holds each tag at most once (a TagDB update or snapshot), so a batch's rows
are compared with the item's last value and not with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from asyncua import ua

from scada.opcua.datachange import STRING, encode_items

DISABLED, SAMPLING, REPORTING = (int(m) for m in ua.MonitoringMode)
STATUS, STATUS_VALUE, STATUS_VALUE_TIMESTAMP = (int(t) for t in ua.DataChangeTrigger)
COMPACT_MIN = 1024  # pending rows below which a queue is left to the next publish to trim
# A DataValue StatusCode's InfoType "DataValue" (bit 10) with its Overflow bit (bit 7): Part 4 7.39.1.
OVERFLOW = 0x0480


@dataclass(frozen=True, slots=True)
class ItemParams:
    """What a client asked of one monitored item, as the fast path honours it."""

    client_handle: int
    mode: int
    queue_size: int
    discard_oldest: bool
    trigger: int = STATUS_VALUE
    deadband: float = 0.0  # absolute; 0: any change


def item_params(
    mode: Any, filt: Any, index_range: str | None, client_handle: int, queue_size: int, discard_oldest: bool
) -> ItemParams | None:
    """The fast path's parameters of a monitored item, or None if it must stay on asyncua's path."""
    if index_range:
        return None
    trigger, deadband = STATUS_VALUE, 0.0
    # By shape, not isinstance: asyncua may hold two DataChangeFilter classes (its generated one,
    # used by the decoder, and one rebuilt from the server's type definitions in ``ua``).
    if hasattr(filt, "Trigger") and hasattr(filt, "DeadbandType"):
        if filt.DeadbandType not in (ua.DeadbandType.None_, ua.DeadbandType.Absolute):
            return None
        trigger = int(filt.Trigger)
        if filt.DeadbandType == ua.DeadbandType.Absolute:
            deadband = float(filt.DeadbandValue)
    elif filt:  # an AggregateFilter, or anything asyncua decoded that is not ours to interpret
        return None
    return ItemParams(int(client_handle), int(mode), max(int(queue_size), 1), bool(discard_oldest), trigger, deadband)


class _Items:
    """The item table: one row (slot) per monitored item, columns grown by doubling."""

    _FIELDS: tuple[tuple[str, Any, Any], ...] = (
        ("tag", np.int64, -1),
        ("client", np.uint32, 0),
        ("vtype", np.uint8, 0),
        ("mode", np.int8, DISABLED),
        ("qsize", np.int64, 1),
        ("discard", bool, True),
        ("trigger", np.int8, STATUS_VALUE),
        ("deadband", np.float64, 0.0),
        ("last_value", np.float64, np.nan),
        ("last_status", np.uint32, 0),
        ("last_src", np.int64, 0),
        ("has_last", bool, False),
        ("last_text", object, None),
        ("alive", bool, False),
    )

    def __init__(self) -> None:
        self.size = 0
        for name, dtype, fill in self._FIELDS:
            setattr(self, name, np.full(0, fill, dtype))

    def grow(self) -> None:
        new = max(16, 2 * self.size)
        for name, dtype, fill in self._FIELDS:
            col = np.full(new, fill, dtype)
            col[: self.size] = getattr(self, name)
            setattr(self, name, col)
        self.size = new

    # Typed views of the columns (set by grow through setattr).
    tag: np.ndarray
    client: np.ndarray
    vtype: np.ndarray
    mode: np.ndarray
    qsize: np.ndarray
    discard: np.ndarray
    trigger: np.ndarray
    deadband: np.ndarray
    last_value: np.ndarray
    last_status: np.ndarray
    last_src: np.ndarray
    has_last: np.ndarray
    last_text: np.ndarray
    alive: np.ndarray


@dataclass(slots=True)
class Rows:
    """Pending notifications, in the order they were queued: slot (item) and DataValue columns."""

    slot: np.ndarray
    value: np.ndarray
    status: np.ndarray
    src: np.ndarray
    srv: np.ndarray
    text: np.ndarray | None

    def __len__(self) -> int:
        return len(self.slot)

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(
            self.slot[idx],
            self.value[idx],
            self.status[idx],
            self.src[idx],
            self.srv[idx],
            self.text[idx] if self.text is not None else None,
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        text = None
        if any(p.text is not None for p in parts):
            text = np.concatenate([p.text if p.text is not None else np.full(len(p), None, object) for p in parts])
        return Rows(
            np.concatenate([p.slot for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.status for p in parts]),
            np.concatenate([p.src for p in parts]),
            np.concatenate([p.srv for p in parts]),
            text,
        )


def trim(slot: np.ndarray, qsize: np.ndarray, discard: np.ndarray) -> np.ndarray:
    """Indexes of the rows each item's queue keeps, in queue order (Part 4 5.12.1.5).

    ``qsize``/``discard``: per row, its item's. An item keeps its newest ``qsize`` rows
    (DiscardOldest) or its first ``qsize - 1`` and its newest (the newest replaces the last).
    """
    return trim_overflow(slot, qsize, discard)[0]


def trim_overflow(slot: np.ndarray, qsize: np.ndarray, discard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trim`'s indexes, and which of the kept rows carry the Overflow bit (a bool per kept row).

    Part 4 5.13.1.5: when a queue larger than one discards, DiscardOldest flags the oldest value
    kept (the next after the discarded ones), otherwise the newest (which replaced the last).
    A queue of one never flags (it is a buffer of the newest value).
    """
    n = len(slot)
    order = np.argsort(slot, kind="stable")
    s = slot[order]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if len(first) == n:  # one row per item: every queue holds at least one
        return np.arange(n), np.zeros(n, bool)
    lengths = np.diff(np.r_[first, n])
    pos = np.arange(n) - np.repeat(first, lengths)
    length = np.repeat(lengths, lengths)
    from_end = length - 1 - pos
    q, d = qsize[order], discard[order]
    keep = np.where(d, from_end < q, (pos < q - 1) | (from_end == 0))
    flag = (length > q) & (q > 1) & np.where(d, from_end == q - 1, from_end == 0)
    kept = order[keep]
    by_queue = np.argsort(kept)
    return kept[by_queue], flag[keep][by_queue]


class DataChangeQueue:
    """A subscription's fast monitored items and their pending notifications (see module doc)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.items = _Items()
        self.slot_of: dict[int, int] = {}  # asyncua's datachange callback handle -> slot
        self._free: list[int] = []
        self._dead: list[int] = []  # deleted items whose pending rows are still to be purged
        self._pending: list[Rows] = []
        self.n_pending = 0
        self._compact_at = COMPACT_MIN
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # (tags sorted, their slots)
        self.stale: set[int] = set()  # handles to confirm after a publisher rebuild (reload)
        self.held_back = False  # the last pop left rows to report (the budget): MoreNotifications

    def __len__(self) -> int:
        return len(self.slot_of)

    # -- items ---------------------------------------------------------------------------

    def add(
        self, handle: int, tag: int, vtype: int, params: ItemParams, last: tuple[float, int, int, str | None] | None
    ) -> None:
        """Put an item on the fast path (or update it); ``last``: its value as its client has it."""
        it = self.items
        slot = self.slot_of.get(handle)
        if slot is None:
            if not self._free:
                old = it.size
                it.grow()
                self._free = list(range(it.size - 1, old - 1, -1))
            slot = self.slot_of[handle] = self._free.pop()
            it.alive[slot], it.has_last[slot] = True, False  # a freed slot may be reused
        self.stale.discard(handle)
        it.tag[slot], it.vtype[slot] = tag, vtype
        self._index = None
        self.update(handle, params)
        if last is not None and params.mode != DISABLED and not it.has_last[slot]:
            # A new or re-enabled item: its client has this value (asyncua sent it); a modified
            # one keeps the last value it queued, the reference of its deadband.
            it.last_value[slot], it.last_status[slot], it.last_src[slot], it.last_text[slot] = last
            it.has_last[slot] = True

    def update(self, handle: int, params: ItemParams) -> None:
        """New parameters (ModifyMonitoredItems, SetMonitoringMode). Disabled empties the queue."""
        it, slot = self.items, self.slot_of[handle]
        it.client[slot], it.mode[slot], it.qsize[slot] = params.client_handle, params.mode, params.queue_size
        it.discard[slot], it.trigger[slot], it.deadband[slot] = params.discard_oldest, params.trigger, params.deadband
        if params.mode == DISABLED:
            it.has_last[slot] = False  # re-enabled, it starts again from the current value
            self._compact()

    def remove(self, handle: int) -> None:
        """The item is deleted: it is never reported again; its rows go at the next publish."""
        slot = self.slot_of.pop(handle, None)
        if slot is None:
            return
        self.items.alive[slot] = False
        self.items.last_text[slot] = None
        self._index = None
        self._dead.append(slot)
        if not self.slot_of:  # the last one (a subscription deleted, a session closed): free it all now
            self._reset()

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            slots = np.flatnonzero(self.items.alive)
            order = np.argsort(self.items.tag[slots], kind="stable")
            self._index = (self.items.tag[slots][order], slots[order])
        return self._index

    # -- rows ----------------------------------------------------------------------------

    def offer(
        self,
        ids: np.ndarray,
        values: np.ndarray,
        status: np.ndarray,
        src: np.ndarray,
        srv: int,
        texts: np.ndarray | None,
    ) -> int:
        """Queue the changes of ``ids`` (a batch's rows) for the items watching them; returns rows queued."""
        tags, slots_sorted = self._lookup()
        lo = np.searchsorted(tags, ids, "left")
        count = np.searchsorted(tags, ids, "right") - lo
        total = int(count.sum())
        if not total:
            return 0
        rows = np.repeat(np.arange(len(ids)), count)
        slots = slots_sorted[np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(total)]
        it = self.items
        on = it.mode[slots] != DISABLED
        rows, slots = rows[on], slots[on]
        v, lv = values[rows], it.last_value[slots]
        st, s_src = status[rows], src[rows]
        nan_v, nan_lv = np.isnan(v), np.isnan(lv)
        with np.errstate(invalid="ignore"):
            moved = np.where(nan_v | nan_lv, nan_v != nan_lv, np.abs(v - lv) > it.deadband[slots])
        t = texts[rows] if texts is not None else None
        is_text = it.vtype[slots] == STRING
        if t is not None and is_text.any():
            k = np.flatnonzero(is_text)
            moved[k] = [a != b for a, b in zip(t[k].tolist(), it.last_text[slots[k]].tolist(), strict=True)]
        trig = it.trigger[slots]
        keep = (
            ~it.has_last[slots]
            | (st != it.last_status[slots])
            | ((trig >= STATUS_VALUE) & moved)
            | ((trig == STATUS_VALUE_TIMESTAMP) & (s_src != it.last_src[slots]))
        )
        if not keep.all():
            rows, slots, v, st, s_src = rows[keep], slots[keep], v[keep], st[keep], s_src[keep]
            t = t[keep] if t is not None else None
        if not len(slots):
            return 0
        it.last_value[slots], it.last_status[slots], it.last_src[slots], it.has_last[slots] = v, st, s_src, True
        if t is not None:
            it.last_text[slots] = t
        self.push(Rows(slots, v, st, s_src, np.full(len(slots), srv, np.int64), t))
        return len(slots)

    def push(self, rows: Rows) -> None:
        """Queue rows as they are (already filtered); bounded by the items' queue sizes."""
        self._pending.append(rows)
        self.n_pending += len(rows)
        if self.n_pending > self._compact_at:
            # A client that stops publishing: its queues stay bounded by their sizes.
            self._compact()
            self._compact_at = max(COMPACT_MIN, 2 * self.n_pending)

    def _gathered(self) -> Rows | None:
        """The pending rows of live, enabled items, trimmed to their queue sizes; dead slots freed."""
        if not self._pending:
            self._release_dead()
            return None
        rows = Rows.concat(self._pending)
        it = self.items
        live = it.alive[rows.slot] & (it.mode[rows.slot] != DISABLED)
        if not live.all():
            rows = rows.take(np.flatnonzero(live))
        self._release_dead()
        if len(rows):
            keep, overflow = trim_overflow(rows.slot, it.qsize[rows.slot], it.discard[rows.slot])
            rows = rows.take(keep)  # copies: the flags below change only these rows
            rows.status[overflow] |= OVERFLOW
        return rows if len(rows) else None

    def _release_dead(self) -> None:
        self._free += self._dead
        self._dead = []

    def _set(self, rows: Rows | None) -> None:
        self._pending = [rows] if rows is not None else []
        self.n_pending = len(rows) if rows is not None else 0

    def _compact(self) -> None:
        self._set(self._gathered())

    def more(self) -> bool:
        """The last publish left rows to report (MaxNotificationsPerPublish): MoreNotifications."""
        return self.held_back

    def ready(self) -> bool:
        """Some row may be reported at the next publish (asyncua then sends a NotificationMessage)."""
        return self.n_pending > 0 and bool((self.items.mode == REPORTING).any())

    def pop(self, budget: int | None = None) -> tuple[int, bytes]:
        """Take the rows to report now: (how many, their MonitoredItemNotifications encoded).

        ``budget``: at most that many (what MaxNotificationsPerPublish leaves); the rest wait
        for the next publish. Rows of Sampling items stay queued.
        """
        rows = self._gathered()
        self.held_back = False
        if rows is None:
            self._set(None)
            return 0, b""
        it = self.items
        report = np.flatnonzero(it.mode[rows.slot] == REPORTING)
        if budget is not None and len(report) > budget:
            report = report[:budget]
            self.held_back = True
        rest = np.ones(len(rows), bool)
        rest[report] = False
        self._set(rows.take(np.flatnonzero(rest)) if rest.any() else None)
        out = rows.take(report)
        if not len(out):
            return 0, b""
        items = encode_items(it.client[out.slot], it.vtype[out.slot], out.value, out.status, out.src, out.srv, out.text)
        return len(out), items

    def take(self, handle: int) -> Rows | None:
        """Remove and return an item's pending rows, in order, trimmed to its queue size (None:
        none). For an item leaving the fast path (modified to parameters only asyncua's path
        supports): its rows go on with it, not lost."""
        slot = self.slot_of.get(handle)
        rows = self._gathered()
        if slot is None or rows is None:
            self._set(rows)
            return None
        mine = rows.slot == slot
        self._set(rows.take(np.flatnonzero(~mine)) if not mine.all() else None)
        return rows.take(np.flatnonzero(mine)) if mine.any() else None
