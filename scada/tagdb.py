"""Columnar tag database: one row per tag, values travel as batches of numpy arrays.

Every driver reports a poll as one ``update(ids, values, status, source_time)`` call. The
database compares the batch with the stored rows in one vectorised pass (per-tag deadband on
the value, any change of status), stores the batch, and hands the changed rows to each
consumer as one :class:`ChangeBatch`. Consumers (alarm engine, historian, OPC UA publisher)
each own a bounded queue; a consumer that falls behind loses whole batches, counted, and is
flagged so that it can resynchronise from :meth:`TagDB.snapshot` rather than build a backlog.

With ``shared=True`` the row columns (value, status, source and server time) live in a
:class:`scada.shared_columns.SharedColumns` block, written under its seqlock, so that the OPC
UA front process (:class:`scada.front.tags.TagMirror`) can copy consistent rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from scada import status as st
from scada.shared_columns import SharedColumns

# Kinds of point. Analog and discrete (bool, enum) values live in the float64 column;
# text points keep their value in a parallel object column and NaN in the float column.
ANALOG, DISCRETE, TEXT = 0, 1, 2

# The columns a shared TagDB keeps in shared memory, as the front attaches them.
TAG_COLUMNS = {"value": np.float64, "status": np.uint32, "source_time": np.int64, "server_time": np.int64}


def now_ns() -> int:
    """Current UTC time as int64 nanoseconds since the Unix epoch."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Rows that changed in one update: parallel arrays, ordered as the update gave them.

    ``texts`` is None unless the batch came from :meth:`TagDB.update_text`.
    """

    seq: int
    ids: np.ndarray
    values: np.ndarray
    status: np.ndarray
    source_time: np.ndarray
    server_time: int
    texts: tuple[str | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(eq=False)
class Consumer:
    """A consumer's bounded queue of change batches, with counters of what it lost.

    When the queue is full the newest batch is dropped (never blocking the drivers) and
    ``overflowed`` is set: the consumer should then call ``TagDB.snapshot()`` to catch up.
    """

    name: str
    maxsize: int
    queue: asyncio.Queue = field(init=False)
    dropped_batches: int = 0
    dropped_rows: int = 0
    delivered_batches: int = 0
    overflowed: bool = False

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.maxsize)

    def offer(self, batch: ChangeBatch) -> None:
        try:
            self.queue.put_nowait(batch)
            self.delivered_batches += 1
        except asyncio.QueueFull:
            self.dropped_batches += 1
            self.dropped_rows += len(batch)
            self.overflowed = True

    async def get(self) -> ChangeBatch:
        return await self.queue.get()

    def get_nowait(self) -> ChangeBatch:
        return self.queue.get_nowait()

    async def get_until(self, deadline: float) -> ChangeBatch | None:
        """The next batch, or None once ``deadline`` (time.monotonic) has passed."""
        try:  # asyncio.timeout: wait_for can swallow a cancellation on Python 3.11
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await self.queue.get()
        except TimeoutError:
            return None

    def take_overflow(self) -> bool:
        """True once after batches were dropped, with the queue emptied: the batches still
        queued are older than the snapshot the consumer must now resynchronise from."""
        if not self.overflowed:
            return False
        self.overflowed = False
        while not self.queue.empty():
            self.queue.get_nowait()
        return True


class TagNames:
    """Tag names stored compactly: one UTF-8 blob with offsets, and a sorted hash index.

    A million names as Python strings in a list and a dict cost ~170 bytes per tag; here
    they cost the bytes of the name plus 20 (offset, hash, position). Lookup by name is a
    binary search on the hashes (Python's ``hash``, stable within the process) and one
    comparison of the stored name.
    """

    def __init__(self, names: Sequence[str]) -> None:
        n = len(names)
        encoded = [name.encode() for name in names]
        self._offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=self._offsets[1:])
        self._blob = b"".join(encoded)
        del encoded
        hashes = np.fromiter(map(hash, names), np.int64, n)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._order = order.astype(np.int32 if n < 2**31 else np.int64)
        for k in np.flatnonzero(self._hashes[1:] == self._hashes[:-1]).tolist():
            if self[int(self._order[k])] == self[int(self._order[k + 1])]:
                raise ValueError(f"duplicate tag name {self[int(self._order[k])]!r}")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i] : self._offsets[i + 1]].decode()

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def index(self, name: str) -> int:
        h = hash(name)
        lo = int(np.searchsorted(self._hashes, h, "left"))
        hi = int(np.searchsorted(self._hashes, h, "right"))
        for k in range(lo, hi):
            i = int(self._order[k])
            if self[i] == name:
                return i
        raise KeyError(name)

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes + self._hashes.nbytes + self._order.nbytes


class TagIndex:
    """What a table of tags offers besides its rows: names, kinds, ids, consumers.

    Shared by the tag database and the front's mirror of it (scada.front.tags.TagMirror).
    """

    def __init__(self, names: Sequence[str] | TagNames, kinds: Sequence[int] | np.ndarray | None = None) -> None:
        self.names = names if isinstance(names, TagNames) else TagNames(names)
        n = len(self.names)
        self.kind = np.zeros(n, np.uint8) if kinds is None else np.asarray(kinds, np.uint8)
        if self.kind.shape != (n,):
            raise ValueError("kinds must have one entry per tag")
        self._consumers: list[Consumer] = []

    def __len__(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except KeyError:
            raise KeyError(f"unknown tag {name!r}") from None

    def ids_of(self, names: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.id_of(n) for n in names), np.int64, len(names))

    def subscribe(self, name: str, maxsize: int = 256) -> Consumer:
        """Register a consumer; it receives every later change batch, in order."""
        consumer = Consumer(name, maxsize)
        self._consumers.append(consumer)
        return consumer

    def unsubscribe(self, consumer: Consumer) -> None:
        self._consumers.remove(consumer)

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        return tuple(self._consumers)


class TagTable(Protocol):
    """What the OPC UA code may use of its tag table: a TagDB in the core process, or the
    front's scada.front.tags.TagMirror (rows read-only there). Annotate with this, not TagDB."""

    names: TagNames
    kind: np.ndarray
    value: np.ndarray
    status: np.ndarray
    source_time: np.ndarray
    server_time: np.ndarray
    text: dict[int, str | None]

    def __len__(self) -> int: ...
    def id_of(self, name: str) -> int: ...
    def ids_of(self, names: Sequence[str]) -> np.ndarray: ...
    def subscribe(self, name: str, maxsize: int = 256) -> Consumer: ...
    def unsubscribe(self, consumer: Consumer) -> None: ...
    @property
    def consumers(self) -> tuple[Consumer, ...]: ...
    def snapshot(self, ids: np.ndarray | None = None) -> ChangeBatch: ...


class TagDB(TagIndex):
    """The tag database. Not thread-safe by design: it lives on the server's event loop.

    ``shared=True`` puts the row columns in shared memory (see the module doc): ``shared_name``
    is the block's name for the front, ``close_shared()`` releases it.
    """

    def __init__(
        self,
        names: Sequence[str],
        kinds: Sequence[int] | np.ndarray | None = None,
        deadbands: Sequence[float] | np.ndarray | None = None,
        max_ages: Sequence[float] | np.ndarray | None = None,
        *,
        shared: bool = False,
    ) -> None:
        super().__init__(names, kinds)
        n = len(self.names)
        # Staleness: only the rows that have a max age are ever checked (index + age in ns).
        ages = np.zeros(n) if max_ages is None else np.asarray(max_ages, np.float64)
        self._aged = np.flatnonzero(ages > 0)
        self._max_age_ns = (ages[self._aged] * 1e9).astype(np.int64)
        self.deadband = np.zeros(n) if deadbands is None else np.asarray(deadbands, np.float64)
        if self.deadband.shape != (n,):
            raise ValueError("deadbands must have one entry per tag")
        self._shared: SharedColumns | None = None
        # Every write of the row columns goes through ``with self._write:`` (the seqlock when shared).
        self._write: AbstractContextManager[object] = nullcontext()
        if shared:
            self._shared = SharedColumns.create(TAG_COLUMNS, n)
            self._write = self._shared.writer(lambda: self._seq)
            cols = self._shared.columns
            self.value, self.status = cols["value"], cols["status"]
            self.source_time, self.server_time = cols["source_time"], cols["server_time"]
        else:
            self.value = np.empty(n)
            self.status = np.empty(n, np.uint32)
            self.source_time = np.zeros(n, np.int64)
            self.server_time = np.zeros(n, np.int64)
        self.value[:] = np.nan
        # No value has ever arrived: OPC UA's status for "never communicated".
        self.status[:] = st.BAD_NO_COMMUNICATION
        # Sparse text column: only text points hold an entry.
        self.text: dict[int, str | None] = {}
        self._seq = 0
        self.updates = 0  # rows offered, for rates
        self.changes = 0  # rows that changed

    @property
    def seq(self) -> int:
        """The seq of the last change batch offered to the consumers (0: none yet)."""
        return self._seq

    @property
    def shared_name(self) -> str | None:
        """The shared memory block holding the row columns (None: not shared)."""
        return None if self._shared is None else self._shared.name

    def close_shared(self) -> None:
        """Release the shared block (its name is removed); the columns become private copies.

        Readers still attached keep their mapping until they close it.
        """
        shared = self._shared
        if shared is None:
            return
        self.value, self.status = self.value.copy(), self.status.copy()
        self.source_time, self.server_time = self.source_time.copy(), self.server_time.copy()
        self._shared, self._write = None, nullcontext()
        shared.unlink()
        shared.close()

    def update(
        self,
        ids: np.ndarray,
        values: np.ndarray,
        status: np.ndarray | int = st.GOOD,
        source_time: np.ndarray | int | None = None,
    ) -> ChangeBatch | None:
        """Store one batch; return (and publish) the rows that changed, or None.

        A row changes when its status changes, or when its value moves by more than its
        deadband from the stored value (any difference when the deadband is 0; NaN to a
        number and back count as changes). ``ids`` must not repeat within one batch.
        """
        ids = np.asarray(ids, np.int64)
        n = ids.size
        if n == 0:
            return None
        values = np.asarray(values, np.float64)
        server_ns = time.time_ns()
        old = self.value[ids]
        diff = np.subtract(values, old)
        np.abs(diff, out=diff)
        # diff > deadband is "any difference" when the deadband is 0; a NaN diff compares False.
        changed = diff > self.deadband[ids]
        nan = np.isnan(diff)
        if nan.any():
            changed |= nan & (np.isnan(old) != np.isnan(values))
        per_row: np.ndarray | None = None  # one status per row, or None: one for the batch
        if np.ndim(status) == 0:
            status = int(status)
            changed |= self.status[ids] != status
        else:
            per_row = np.asarray(status, np.uint32)
            changed |= self.status[ids] != per_row
        with self._write:
            # source_time: when the device last reported the row, changed or not (staleness is
            # measured from it). server_time: when the server last stored a change of the row;
            # writing it for unchanged rows too would cost a random pass over the column.
            self.source_time[ids] = server_ns if source_time is None else source_time
            self.updates += n
            if not changed.any():
                return None
            # The stored value follows the last *reported* value only when it moved beyond the
            # deadband: otherwise slow drifts below the deadband would never be reported.
            cids = ids[changed]
            cvalues = values[changed]
            cstatus = np.full(cids.size, status, np.uint32) if per_row is None else per_row[changed]
            self.value[cids] = cvalues
            self.status[cids] = cstatus
            self.server_time[cids] = server_ns
            csrc = self.source_time[cids]
            return self._publish(cids, cvalues, cstatus, csrc, server_ns)

    def update_text(
        self,
        tag_ids: Sequence[int] | np.ndarray,
        texts: Sequence[str | None],
        status: np.ndarray | int = st.GOOD,
        source_time: np.ndarray | int | None = None,
    ) -> ChangeBatch | None:
        """Store text points; a row changes when its text or its status changes."""
        ids = np.asarray(tag_ids, np.int64)
        n = len(ids)
        if n == 0:
            return None
        status_arr = np.broadcast_to(np.asarray(status, np.uint32), (n,))
        server_ns = now_ns()
        src = np.broadcast_to(np.asarray(server_ns if source_time is None else source_time, np.int64), (n,))
        text_changed = np.fromiter((self.text.get(int(i)) != t for i, t in zip(ids, texts)), bool, n)
        changed = text_changed | (status_arr != self.status[ids])
        with self._write:
            self.status[ids] = status_arr
            self.source_time[ids] = src
            self.server_time[ids[changed]] = server_ns
            self.updates += n
            for i, t, c in zip(ids.tolist(), texts, changed.tolist()):
                if c:
                    self.text[i] = t
            if not changed.any():
                return None
            cids = ids[changed]
            ctexts = tuple(t for t, c in zip(texts, changed.tolist()) if c)
            return self._publish(cids, np.full(len(cids), np.nan), status_arr[changed], src[changed], server_ns, ctexts)

    def set_status(
        self, ids: np.ndarray, status: int, source_time: int | None = None, keep_source_time: bool = False
    ) -> ChangeBatch | None:
        """Change the status of rows and keep their last values (link loss, for example).

        The source time of a changed row becomes ``source_time`` (default: now, when the loss
        was seen), or stays the last report's with ``keep_source_time``.
        """
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return None
        server_ns = now_ns()
        changed = self.status[ids] != status
        if not changed.any():
            return None
        cids = ids[changed]
        texts = None
        if self.text and (self.kind[cids] == TEXT).any():
            texts = tuple(self.text.get(i) for i in cids.tolist())
        with self._write:
            self.status[cids] = status
            self.server_time[cids] = server_ns
            if not keep_source_time:
                self.source_time[cids] = server_ns if source_time is None else source_time
            return self._publish(
                cids, self.value[cids], np.full(len(cids), status, np.uint32), self.source_time[cids], server_ns, texts
            )

    def mark_stale(self, now: int | None = None) -> ChangeBatch | None:
        """Good values older than their tag's max age turn Uncertain_LastUsableValue.

        A device that goes quiet without losing its link (an MQTT tracker that stops
        reporting) is caught here; its next report makes the rows Good again.
        """
        if self._aged.size == 0:
            return None
        now = time.time_ns() if now is None else now
        rows = self._aged
        stale = (self.status[rows] == st.GOOD) & (now - self.source_time[rows] > self._max_age_ns)
        if not stale.any():
            return None
        # The source time stays that of the last report: it says how old the value is.
        return self.set_status(rows[stale], st.UNCERTAIN_LAST_USABLE_VALUE, keep_source_time=True)

    def snapshot(self, ids: np.ndarray | None = None) -> ChangeBatch:
        """Current rows as a batch (all rows when ``ids`` is None): a consumer's resync."""
        ids = np.arange(len(self), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        texts = None
        if self.text:
            texts = tuple(self.text.get(i) for i in ids.tolist())
        return ChangeBatch(
            self._seq,
            ids,
            self.value[ids].copy(),
            self.status[ids].copy(),
            self.source_time[ids].copy(),
            now_ns(),
            texts,
        )

    def _publish(self, ids, values, status, src, server_ns, texts=None) -> ChangeBatch:
        self._seq += 1
        self.changes += len(ids)
        batch = ChangeBatch(
            self._seq, ids, values, np.ascontiguousarray(status), np.ascontiguousarray(src), server_ns, texts
        )
        for consumer in self._consumers:
            consumer.offer(batch)
        return batch

    def carry_from(self, old: TagDB) -> np.ndarray:
        """Take over the rows of ``old`` whose tag (same name, same kind) is also here.

        A configuration reload builds a new tag table; a tag it keeps keeps its last value,
        status and times, so consumers see no change for it. Returns the new ids carried.
        """
        ids, old_ids = [], []
        for i, name in enumerate(self.names):
            try:
                j = old.names.index(name)
            except KeyError:
                continue
            ids.append(i)
            old_ids.append(j)
        new = np.asarray(ids, np.int64)
        prev = np.asarray(old_ids, np.int64)
        same = self.kind[new] == old.kind[prev]
        new, prev = new[same], prev[same]
        with self._write:
            self.value[new] = old.value[prev]
            self.status[new] = old.status[prev]
            self.source_time[new] = old.source_time[prev]
            self.server_time[new] = old.server_time[prev]
            # Rates computed from these counters (the status line) must not go backwards; the
            # seq continues too, so that a reader's watermark stays comparable.
            self.updates, self.changes, self._seq = old.updates, old.changes, old._seq
        if old.text:
            for i, j in zip(new.tolist(), prev.tolist()):
                if j in old.text:
                    self.text[i] = old.text[j]
        return new

    def memory_bytes(self) -> int:
        """Bytes held by the columns and the names."""
        columns = (self.kind, self.deadband, self.value, self.status, self.source_time, self.server_time)
        return sum(a.nbytes for a in columns) + self.names.nbytes
