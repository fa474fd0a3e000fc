"""History reads in an OPC UA front process, without the core's Historian.

:class:`HistoryMirror` is the front's :class:`~scada.opcua.history.HistorySource`: its own
read-only :class:`~scada.historian.store.HistoryStore` on the core's SQLite file (WAL: it
reads while the core writes, sees each write once committed, rows waiting in ``staging``
included, and never takes the writer's lock), and the points the core's historian holds
but has not stored yet, asked with ``await request("history_unstored", ids)``. The core
answers that request with :func:`serve_unstored`, a plain synchronous handler on its loop.

TagHistory reads the mirror's store in a worker thread (see :mod:`scada.opcua.history`);
the core's store serialises nothing with it: SQLite does, between processes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scada.historian.store import HistoryStore
from scada.opcua.history import Unstored, UnstoredColumns, unstored_columns

Request = Callable[..., Awaitable[Any]]  # the front's FrontChannel.request(op, *args)

OP_UNSTORED = "history_unstored"

# What serve_unstored sends: UnstoredColumns' fields, in order, as a plain tuple.
UnstoredWire = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str | None, ...] | None
]


def serve_unstored(historian, ids: Sequence[int] | np.ndarray) -> UnstoredWire:
    """Core side of ``history_unstored``: the historian's points not in its store yet, for the
    TagDB ids ``ids``, as plain arrays (see :class:`~scada.opcua.history.UnstoredColumns`).

    Runs on the core's loop: batch work costing the asked tags' points, not the historian's
    backlog (read through its index by tag: scada/historian/backlog.py). Ids that are not tag
    ids of this historian raise ValueError (nothing is read).
    """
    tags = np.asarray(ids)
    if tags.ndim != 1 or (len(tags) and tags.dtype.kind not in "iu"):
        raise ValueError(f"history_unstored: ids must be a list of tag ids (got {tags.dtype} of shape {tags.shape})")
    n = len(historian.tagdb)
    if len(tags) and (int(tags.min()) < 0 or int(tags.max()) >= n):
        raise ValueError(f"history_unstored: tag ids must be within 0-{n - 1}")
    c = unstored_columns(historian, tags)
    return (c.tags, c.counts, c.times, c.values, c.status, c.has_text, c.texts)


def unpack_unstored(wire: UnstoredWire) -> dict[int, Unstored]:
    """Front side: :func:`serve_unstored`'s answer as each tag's :class:`Unstored` points.

    A reply of another shape raises ValueError (a core of another version: nothing is guessed).
    """
    if not isinstance(wire, tuple) or len(wire) != 7:
        raise ValueError("history_unstored: the reply is not the 7 columns of UnstoredColumns")
    tags, counts, times, values, status, has_text, texts = wire
    return UnstoredColumns(
        np.asarray(tags, np.int64),
        np.asarray(counts, np.int64),
        np.asarray(times, np.int64),
        np.asarray(values, np.float64),
        np.asarray(status, np.uint32),
        np.asarray(has_text, bool),
        None if texts is None else tuple(texts),
    ).split()


class HistoryMirror:
    """The history of a front process (see the module docstring).

    ``store_path``: the core historian's store file (``<data_dir>/history.sqlite``), which the
    core has opened first (it registers the tag names: a name it does not know raises
    :class:`~scada.historian.store.HistoryError` here). ``tag_names``: the TagDB's names in id
    order, so that reads are by TagDB id. ``request``: the front channel's ``request``.
    """

    def __init__(self, store_path: str | Path, tag_names: Sequence[str], request: Request) -> None:
        self.path = Path(store_path)
        self.request = request
        self._store = HistoryStore(self.path, tag_names, readonly=True)

    @property
    def store(self) -> HistoryStore:
        """The read-only store (reads by TagDB id)."""
        return self._store

    async def unstored_points(self, ids: Sequence[int]) -> dict[int, Unstored]:
        """The core historian's points not in the store yet (one request to the core)."""
        return unpack_unstored(await self.request(OP_UNSTORED, [int(i) for i in ids]))

    def rebind(self, tag_names: Sequence[str]) -> None:
        """Follow a reload's new tag table: reads by the new ids from now on.

        The store is reopened for the new names (cheap: a read-only connection and one pass
        over the names); the old one is closed, so a read still running on it answers
        ``Bad_DataUnavailable``. On an error (a name the core has not registered) the mirror
        keeps its old names.
        """
        new = HistoryStore(self.path, tag_names, readonly=True)
        old, self._store = self._store, new
        old.close()

    def close(self) -> None:
        """Close the store (front shutdown). Idempotent."""
        self._store.close()
