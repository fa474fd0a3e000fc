"""The historian's points waiting for its store, indexed by tag.

While the store cannot write (a full or failing disk), kept points wait in memory, up to
millions (``BACKLOG_MAX_VALUES``). A history read must add the asked tags' waiting points to
what the store returns, on the event loop that owns them (the core's: a front process asks
with ``history_unstored``). Scanning every waiting row for the asked ids cost the core's loop
time in proportion to the outage; here a read costs the asked tags' points.

The backlog is a few :class:`Run` s, oldest first. A run is a :class:`StoredBatch` and, once a
read asked for it, its rows sorted by tag (a stable argsort: each tag's rows keep their time
order); a read is one ``searchsorted`` per run. Appending merges the newest two runs while
the older is not larger (a binary counter): there are O(log n) runs, a point is copied
O(log n) times over its wait, and the largest copy (the whole backlog, once per doubling) is
what each write retry already does. Merging two indexed runs merges their indexes (a stable
sort of two sorted runs: linear), so an index is built once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from scada.historian.compress import StoredBatch

_NO_ROWS = np.zeros(0, np.int64)
MAX_RUNS = 24  # batches of shrinking sizes do not merge by size: past this many, the newest do


def _tail(batch: StoredBatch, start: int) -> StoredBatch:
    """``batch`` without its first ``start`` rows."""
    return StoredBatch(
        batch.ids[start:],
        batch.values[start:],
        batch.status[start:],
        batch.times[start:],
        None if batch.texts is None else batch.texts[start:],
    )


def take_rows(batch: StoredBatch, rows: np.ndarray) -> StoredBatch:
    """The rows ``rows`` of ``batch``, in that order."""
    texts = None if batch.texts is None else tuple(batch.texts[i] for i in rows.tolist())
    return StoredBatch(batch.ids[rows], batch.values[rows], batch.status[rows], batch.times[rows], texts)


class Run:
    """A batch of the backlog, and (built when first asked) its rows by tag: ``order``, the
    row positions sorted by tag (stable), and ``keys``, the tags in that order."""

    __slots__ = ("batch", "keys", "order")

    def __init__(self, batch: StoredBatch, keys: np.ndarray | None = None, order: np.ndarray | None = None) -> None:
        self.batch = batch
        self.keys = keys
        self.order = order

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def indexed(self) -> bool:
        """Whether its rows by tag are built."""
        return self.order is not None

    def index(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, order), built now if not yet (one stable argsort of the run's ids)."""
        if self.keys is None or self.order is None:
            self.order = np.argsort(self.batch.ids, kind="stable")
            self.keys = self.batch.ids[self.order]
        return self.keys, self.order

    def rows_of(self, tags: np.ndarray) -> np.ndarray:
        """Row positions of the points of ``tags`` (sorted, unique), grouped by tag in that
        order, each tag's in the run's order (its time order)."""
        keys, order = self.index()
        lo = np.searchsorted(keys, tags, "left")
        counts = np.searchsorted(keys, tags, "right") - lo
        total = int(counts.sum())
        if not total:
            return _NO_ROWS
        # The ranges lo[k]:lo[k]+counts[k], concatenated without a Python loop.
        ends = np.cumsum(counts)
        return order[np.arange(total) + np.repeat(lo - (ends - counts), counts)]

    def tail(self, start: int) -> Run:
        """The run without its first ``start`` rows (its index kept, without them)."""
        if self.keys is None or self.order is None:
            return Run(_tail(self.batch, start))
        keep = self.order >= start
        return Run(_tail(self.batch, start), self.keys[keep], self.order[keep] - start)

    @staticmethod
    def merge(older: Run, newer: Run) -> Run:
        """One run of two, ``older``'s rows first. Indexed when either was (the other's index
        is built, then the two are merged: a stable sort of two sorted runs is linear)."""
        batch = StoredBatch.concat([older.batch, newer.batch])
        if not (older.indexed or newer.indexed):
            return Run(batch)
        k1, o1 = older.index()
        k2, o2 = newer.index()
        keys = np.concatenate([k1, k2])
        by_tag = np.argsort(keys, kind="stable")  # ties: older's rows first
        return Run(batch, keys[by_tag], np.concatenate([o1, o2 + len(older)])[by_tag])


class Backlog:
    """Kept points waiting for the store, oldest first (see the module docstring)."""

    def __init__(self, batches: Iterable[StoredBatch] = ()) -> None:
        self.runs: list[Run] = []
        self.values = 0
        for b in batches:
            self.append(b)

    def __len__(self) -> int:
        return self.values

    def batches(self) -> list[StoredBatch]:
        """The waiting points as batches, oldest first."""
        return [r.batch for r in self.runs]

    def append(self, batch: StoredBatch) -> None:
        """Queue the newest points."""
        if not len(batch):
            return
        self.runs.append(Run(batch))
        self.values += len(batch)
        runs = self.runs
        while len(runs) >= 2 and (len(runs[-2]) <= len(runs[-1]) or len(runs) > MAX_RUNS):
            newer = runs.pop()
            runs[-1] = Run.merge(runs[-1], newer)

    def take(self) -> list[Run]:
        """Every run, oldest first, leaving the backlog empty (a write takes them all)."""
        runs, self.runs, self.values = self.runs, [], 0
        return runs

    def put_back(self, runs: list[Run]) -> None:
        """Runs taken by a write that failed: they go first again, before what came meanwhile."""
        self.runs = [*runs, *self.runs]
        self.values += sum(len(r) for r in runs)

    def drop_oldest(self, count: int) -> int:
        """Drop up to ``count`` of the oldest points; returns how many were dropped."""
        dropped = 0
        while dropped < count and self.runs:
            first = self.runs[0]
            cut = min(len(first), count - dropped)
            if cut == len(first):
                self.runs.pop(0)
            else:
                self.runs[0] = first.tail(cut)
            dropped += cut
        self.values -= dropped
        return dropped


def points_of(runs: Iterable[Run], tags: np.ndarray) -> list[StoredBatch]:
    """The points of ``tags`` (sorted, unique int64) in ``runs``, one batch per run that has
    some, oldest first, each grouped by tag with each tag's points in time order."""
    out = []
    for run in runs:
        rows = run.rows_of(tags)
        if len(rows):
            out.append(take_rows(run.batch, rows))
    return out
