"""The front process's view of the core's tag database: shared columns plus forwarded batches.

:class:`TagMirror` offers the surface of :class:`scada.tagdb.TagDB` that the OPC UA code
uses (names, kinds, ids, read-only row columns, texts, ``snapshot``, consumers), so the
publisher and the address space run on it unchanged. Rows come from the core's
:class:`scada.shared_columns.SharedColumns` block, copied under its seqlock; change batches
come over the channel from the core (the lead's reader calls :meth:`TagMirror.receive`).

Values never go back in time. A full snapshot is copied in chunks of rows, each under the
seqlock (one copy of a million rows would overlap a write of the core nearly every time);
each chunk holds every batch up to its own seq, and that seq becomes the watermark of its
rows. A batch that arrives later is offered only for the rows whose watermark it passes (the
whole batch, in the usual case), and the batches already queued are filtered the same way.
The watermark is the mirror's, not each consumer's: one front has one publisher, the only
consumer that takes full snapshots (``snapshot(ids)``, a partial read, moves no watermark).
A snapshot is never older than a batch already received: the core writes the columns
before it sends the batch.

Texts are not in shared memory. The mirror keeps them from the batches and from the text
table the core sends with each resync, so a snapshot's texts may be older than its rows (a
text batch under the watermark still in flight). When such a batch arrives, its text rows
are offered again with the status and times the snapshot gave them (nothing newer was
offered for those rows since: batches arrive in order), so the text catches up and nothing
goes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from scada.shared_columns import SharedColumns
from scada.tagdb import TAG_COLUMNS, TEXT, ChangeBatch, TagDB, TagIndex, TagNames, TagTable, now_ns

CHUNK_ROWS = 16_384  # rows copied under one seqlock read: ~300 KB, tens of microseconds


def subset(batch: ChangeBatch, keep: np.ndarray) -> ChangeBatch:
    """The rows of ``batch`` where ``keep`` (a bool mask) is true, same seq and server time."""
    texts = None if batch.texts is None else tuple(t for t, k in zip(batch.texts, keep.tolist()) if k)
    return ChangeBatch(
        batch.seq,
        batch.ids[keep],
        batch.values[keep],
        batch.status[keep],
        batch.source_time[keep],
        batch.server_time,
        texts,
    )


class TagMirror(TagIndex):
    """Read side of a shared TagDB in another process (see the module doc)."""

    def __init__(self, names: Sequence[str] | TagNames, kinds: Sequence[int] | np.ndarray, shm_name: str) -> None:
        super().__init__(names, kinds)
        n = len(self.names)
        self._cols = SharedColumns.attach(shm_name, TAG_COLUMNS, n)
        cols = self._cols.columns  # read-only views (the core writes them)
        self.value, self.status = cols["value"], cols["status"]
        self.source_time, self.server_time = cols["source_time"], cols["server_time"]
        self.text: dict[int, str | None] = {}
        self._is_text = self.kind == TEXT
        # Per row: the seq of the chunk copy the last full snapshot took it from.
        self._watermark = np.full(n, -1, np.int64)
        self._watermark_max = -1  # a batch above it passes every row's watermark
        # The text rows as the last full snapshot gave them, to re-offer a late text batch's rows.
        self._text_ids = np.flatnonzero(self._is_text)
        self._snap_status = np.zeros(len(self._text_ids), np.uint32)
        self._snap_source = np.zeros(len(self._text_ids), np.int64)
        self._snap_server = 0
        self._seq = 0  # the seq of the newest batch received from the core
        self.received = 0  # batches received from the core
        self.skipped = 0  # of which every row was already in the last snapshot
        self.resyncs = 0

    @property
    def seq(self) -> int:
        """The seq of the newest change batch received from the core (TagDB.seq's counterpart:
        an answer from the core that follows a batch on the channel finds it here)."""
        return self._seq

    @property
    def shm_name(self) -> str:
        return self._cols.name

    def close(self) -> None:
        """Detach from the core's block (the block itself stays: the core owns it)."""
        del self.value, self.status, self.source_time, self.server_time
        self._cols.close()

    def _copy(self, rows: slice | np.ndarray, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
        """Copy ``rows`` of value, status, source time into ``out`` consistently; their seq."""
        columns = (self.value, self.status, self.source_time)
        if isinstance(rows, slice):

            def copy() -> None:
                for col, dst in zip(columns, out):
                    np.copyto(dst, col[rows])
        else:

            def copy() -> None:
                for col, dst in zip(columns, out):
                    np.take(col, rows, out=dst)

        _, seq = self._cols.read_consistent(copy)
        return seq

    def snapshot(self, ids: np.ndarray | None = None) -> ChangeBatch:
        """Current rows as a batch (all rows when ``ids`` is None), each chunk copied consistently.

        A full snapshot (``ids`` None) becomes the rows' watermark: no batch it already
        contains is offered to a consumer after it. Its seq is the oldest chunk's.
        """
        full = ids is None
        rows = np.arange(len(self), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        k = len(rows)
        values, status, source = np.empty(k), np.empty(k, np.uint32), np.empty(k, np.int64)
        seqs = np.empty(-(-k // CHUNK_ROWS), np.int64)
        for c, start in enumerate(range(0, k, CHUNK_ROWS)):
            part = slice(start, start + CHUNK_ROWS)
            which: slice | np.ndarray = part if full else rows[part]
            seqs[c] = self._copy(which, (values[part], status[part], source[part]))
        server_ns = now_ns()
        texts = tuple(self.text.get(i) for i in rows.tolist()) if self.text else None
        batch = ChangeBatch(
            int(seqs.min()) if k else self._watermark_max, rows, values, status, source, server_ns, texts
        )
        if full and k:
            self._advance(batch, np.repeat(seqs, CHUNK_ROWS)[:k])
        return batch

    def _advance(self, snap: ChangeBatch, row_seq: np.ndarray) -> None:
        self._watermark = row_seq
        self._watermark_max = int(row_seq.max())
        self._snap_status = snap.status[self._text_ids]
        self._snap_source = snap.source_time[self._text_ids]
        self._snap_server = snap.server_time
        # Batches queued before the snapshot, for rows it holds newer, would take them back in time.
        for consumer in self._consumers:
            queue = consumer.queue
            queued = [queue.get_nowait() for _ in range(queue.qsize())]
            for b in queued:
                newer = self._newer(b)
                if newer is not None:
                    queue.put_nowait(newer)

    def _newer(self, batch: ChangeBatch) -> ChangeBatch | None:
        """``batch`` without the rows the last full snapshot already holds (None: no row left)."""
        if batch.seq > self._watermark_max or not len(batch.ids):
            return batch
        keep = batch.seq > self._watermark[batch.ids]
        if keep.all():
            return batch
        return subset(batch, keep) if keep.any() else None

    def receive(self, batch: ChangeBatch) -> None:
        """A change batch from the core: keep its texts, offer its rows that the last full
        snapshot does not already hold (and re-offer its late text rows, see the module doc)."""
        self.received += 1
        self._seq = max(self._seq, batch.seq)
        if batch.texts is not None:
            for k in np.flatnonzero(self._is_text[batch.ids]).tolist():
                self.text[int(batch.ids[k])] = batch.texts[k]
        newer = self._newer(batch)
        if newer is not batch:
            if newer is None:
                self.skipped += 1
            if batch.texts is not None:
                late = self._late_texts(batch, newer)
                if late is not None:
                    for consumer in self._consumers:
                        consumer.offer(late)
        if newer is not None:
            for consumer in self._consumers:
                consumer.offer(newer)

    def _late_texts(self, batch: ChangeBatch, newer: ChangeBatch | None) -> ChangeBatch | None:
        """The text rows dropped from ``batch``, as the last full snapshot gave them, with
        their current text."""
        ids = batch.ids[self._is_text[batch.ids]]
        if newer is not None:
            ids = np.setdiff1d(ids, newer.ids)
        if not len(ids):
            return None
        pos = np.searchsorted(self._text_ids, ids)
        return ChangeBatch(
            batch.seq,
            ids,
            np.full(len(ids), np.nan),
            self._snap_status[pos],
            self._snap_source[pos],
            self._snap_server,
            tuple(self.text.get(i) for i in ids.tolist()),
        )

    def resync(self, texts: Mapping[int, str | None]) -> None:
        """The core dropped batches for this front: take its text table, and make every
        consumer resynchronise from a snapshot (``overflowed``, then woken by an empty batch
        if its queue is empty, so that it does not wait for the next change)."""
        self.resyncs += 1
        self.text = {int(i): t for i, t in texts.items()}
        empty = np.zeros(0, np.int64)
        wake = ChangeBatch(self._watermark_max, empty, np.zeros(0), np.zeros(0, np.uint32), empty, now_ns())
        for consumer in self._consumers:
            consumer.overflowed = True
            try:
                consumer.queue.put_nowait(wake)
            except asyncio.QueueFull:
                pass  # a full queue wakes its reader anyway


if TYPE_CHECKING:  # mypy checks that both tables offer the surface the OPC UA code uses

    def _tables(mirror: TagMirror, db: TagDB) -> tuple[TagTable, TagTable]:
        return mirror, db
