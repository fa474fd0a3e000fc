"""The front process's view of the core's tag database: shared columns plus forwarded batches.

:class:`TagMirror` offers the surface of :class:`scada.tagdb.TagDB` that the OPC UA code
uses (names, kinds, ids, read-only row columns, texts, ``snapshot``, consumers), so the
publisher and the address space run on it unchanged. Rows come from the core's
:class:`scada.shared_columns.SharedColumns` block, copied under its seqlock; change batches
come over the channel from the core (the lead's reader calls :meth:`TagMirror.receive`).

Values never go back in time. A full snapshot holds every batch up to its seq S (the seqlock
gives the seq of the last batch whose rows are in the copy), and the channel may still be
carrying batches <= S: those are not offered to the consumers any more, and the ones already
queued are taken out of the queues. This watermark is the mirror's, not each consumer's:
one front has one publisher, the only consumer that snapshots. A batch carries only the
rows that changed, so a partial snapshot (``ids`` given) moves no watermark.

Texts are not in shared memory. The mirror keeps them from the batches and from the text
table the core sends with each resync, so a snapshot's texts may be older than its rows:
a text batch <= S still in flight. When such a batch arrives the mirror offers its text rows
again, each with the status and times the snapshot gave it (nothing newer was offered for
those rows since: batches arrive in order), so the text catches up and nothing goes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np

from scada.shared_columns import SharedColumns
from scada.tagdb import TAG_COLUMNS, TEXT, ChangeBatch, TagIndex, TagNames, now_ns


class TagMirror(TagIndex):
    """Read side of a shared TagDB in another process (see the module doc)."""

    def __init__(self, names: Sequence[str] | TagNames, kinds: Sequence[int] | np.ndarray, shm_name: str) -> None:
        super().__init__(names, kinds)
        self._cols = SharedColumns.attach(shm_name, TAG_COLUMNS, len(self.names))
        cols = self._cols.columns  # read-only views (the core writes them)
        self.value, self.status = cols["value"], cols["status"]
        self.source_time, self.server_time = cols["source_time"], cols["server_time"]
        self.text: dict[int, str | None] = {}
        self._is_text = self.kind == TEXT
        self.watermark = -1  # seq of the last full snapshot: batches up to it are not offered
        # The text rows as the last full snapshot gave them, to re-offer a late text batch's rows.
        self._snap_ids = np.zeros(0, np.int64)
        self._snap_status = np.zeros(0, np.uint32)
        self._snap_source = np.zeros(0, np.int64)
        self._snap_server = 0
        self.received = 0  # batches received from the core
        self.skipped = 0  # of which older than the watermark
        self.resyncs = 0

    @property
    def shm_name(self) -> str:
        return self._cols.name

    def close(self) -> None:
        """Detach from the core's block (the block itself stays: the core owns it)."""
        del self.value, self.status, self.source_time, self.server_time
        self._cols.close()

    def snapshot(self, ids: np.ndarray | None = None) -> ChangeBatch:
        """Current rows as a batch (all rows when ``ids`` is None), copied consistently.

        A full snapshot (``ids`` None) becomes the watermark: no batch it already contains is
        offered to a consumer after it.
        """
        v, s, t = self.value, self.status, self.source_time
        full = ids is None
        if ids is None:
            ids = np.arange(len(self), dtype=np.int64)
            (values, status, source), seq = self._cols.read_consistent(lambda: (v.copy(), s.copy(), t.copy()))
        else:
            rows = ids = np.asarray(ids, np.int64)
            (values, status, source), seq = self._cols.read_consistent(lambda: (v[rows], s[rows], t[rows]))
        server_ns = now_ns()
        texts = tuple(self.text.get(i) for i in ids.tolist()) if self.text else None
        batch = ChangeBatch(seq, ids, values, status, source, server_ns, texts)
        if full:
            self._advance(batch)
        return batch

    def _advance(self, snap: ChangeBatch) -> None:
        self.watermark = snap.seq
        text_rows = np.flatnonzero(self._is_text[snap.ids])
        self._snap_ids = snap.ids[text_rows]
        order = np.argsort(self._snap_ids)
        self._snap_ids = self._snap_ids[order]
        self._snap_status = snap.status[text_rows][order]
        self._snap_source = snap.source_time[text_rows][order]
        self._snap_server = snap.server_time
        # Batches queued before the snapshot and contained in it would take rows back in time.
        for consumer in self._consumers:
            queue = consumer.queue
            kept = [b for b in (queue.get_nowait() for _ in range(queue.qsize())) if b.seq > snap.seq]
            for b in kept:
                queue.put_nowait(b)

    def receive(self, batch: ChangeBatch) -> None:
        """A change batch from the core: keep the texts, offer it to the consumers unless the
        last full snapshot already contains it (then only its text rows are re-offered)."""
        self.received += 1
        text_rows: np.ndarray | None = None
        if batch.texts is not None:
            text_rows = np.flatnonzero(self._is_text[batch.ids])
            for k in text_rows.tolist():
                self.text[int(batch.ids[k])] = batch.texts[k]
        if batch.seq > self.watermark:
            for consumer in self._consumers:
                consumer.offer(batch)
            return
        self.skipped += 1
        if text_rows is not None and len(text_rows):
            late = self._late_texts(batch.ids[text_rows])
            if late is not None:
                for consumer in self._consumers:
                    consumer.offer(late)

    def _late_texts(self, ids: np.ndarray) -> ChangeBatch | None:
        """The text rows ``ids`` as the last full snapshot gave them, with their current text."""
        pos = np.searchsorted(self._snap_ids, ids)
        found = pos < len(self._snap_ids)
        found[found] = self._snap_ids[pos[found]] == ids[found]
        pos = pos[found]
        if not len(pos):
            return None
        rows = self._snap_ids[pos]
        texts = tuple(self.text.get(i) for i in rows.tolist())
        return ChangeBatch(
            self.watermark,
            rows,
            np.full(len(rows), np.nan),
            self._snap_status[pos],
            self._snap_source[pos],
            self._snap_server,
            texts,
        )

    def resync(self, texts: Mapping[int, str | None]) -> None:
        """The core dropped batches for this front: take its text table, and make every
        consumer resynchronise from a snapshot (``overflowed``, then woken by an empty batch
        if its queue is empty, so that it does not wait for the next change)."""
        self.resyncs += 1
        self.text = {int(i): t for i, t in texts.items()}
        wake = ChangeBatch(
            self.watermark, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint32), np.zeros(0, np.int64), now_ns()
        )
        for consumer in self._consumers:
            consumer.overflowed = True
            try:
                consumer.queue.put_nowait(wake)
            except asyncio.QueueFull:
                pass  # a full queue wakes its reader anyway
