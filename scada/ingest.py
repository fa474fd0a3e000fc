"""A driver's values on their way into the tag database: gathered, coalesced, one update per flush.

Every driver (Modbus polls, MQTT messages, OPC UA notifications) hands its values over as
arrays ``(ids, values, status, source_time)``; :class:`Ingest` keeps them until the next
flush and then stores them with one ``TagDB.update`` (and one ``TagDB.update_text`` for text
points): a call per poll or per message costs a fixed overhead that, at city scale, is a
large share of the server's budget. A tag reported twice since the last flush is stored
once, with its last report (value, status and source time): ``TagDB.update`` wants unique
ids, and the last report is the device's current state. The stored batch keeps the order
of arrival of those last reports. Coalescing is vectorised, no work per item in Python: a
linear check for repeated ids, and a stable sort of the ids only when one repeats.

The link-loss statuses live here too (:meth:`Ingest.link_lost`): a device or a session
whose link goes down turns its tags ``Bad_CommunicationError`` with their last values kept,
or leaves them ``Bad_NoCommunication`` while they have never communicated; the values
gathered before the loss are stored first, so that none lands after its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from scada import status as st
from scada.tagdb import TagDB

__all__ = ["Ingest", "last_reports", "link_lost_status"]

# A column of a batch: one array, or one scalar for every row (kept scalar: TagDB.update is
# cheaper with a scalar status).
Column = np.ndarray | int
_Part = tuple[np.ndarray, np.ndarray, Column, Column]  # ids, values (float64 or object), status, source time


def link_lost_status(communicated: bool) -> int:
    """The status of tags whose link is down: lost after a first contact, or never made."""
    return st.BAD_COMMUNICATION_ERROR if communicated else st.BAD_NO_COMMUNICATION


def last_reports(ids: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray | None:
    """Positions of each id's last occurrence in ``ids``, in order; None when no id repeats.

    With ``scratch`` (an integer array indexable by every id, its contents irrelevant) the
    common case, no repeat, is told in linear time: every id's slot gets the position of
    one of its occurrences, and only when no id repeats does each position find its own.
    Otherwise a stable sort keeps the reports of one id in their order of arrival, so the
    last of each run of equal ids is that id's last report.
    """
    n = ids.size
    if n < 2:
        return None
    if scratch is not None:
        position = np.arange(n, dtype=scratch.dtype)
        scratch[ids] = position
        if (scratch[ids] == position).all():
            return None
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    last = np.empty(n, bool)
    np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
    last[-1] = True
    if last.all():
        return None
    return np.sort(order[last])


def _column(parts: Sequence[Column], sizes: Sequence[int], dtype: type) -> Column:
    """One column from the parts' columns: a scalar when every part has the same scalar."""
    first = parts[0]
    if isinstance(first, int) and all(isinstance(p, int) and p == first for p in parts):
        return first
    return np.concatenate([np.full(n, p, dtype) if isinstance(p, int) else p for p, n in zip(parts, sizes)])


def _checked(ids: np.ndarray, what: str, column: Column | Sequence[int], dtype: type) -> Column:
    """``column`` as a scalar or as an array of ``dtype`` with one entry per id; ValueError otherwise."""
    if isinstance(column, (int, np.integer)):
        return int(column)
    array: np.ndarray = np.asarray(column, dtype)
    if array.shape != ids.shape:
        raise ValueError(f"{what}: {array.size} entries for {ids.size} ids")
    return array


def _part(ids: np.ndarray | Sequence[int], what: str, column: np.ndarray, status: Column, source_time: Column) -> _Part:
    """One report batch, its columns checked against its ids (ValueError, naming the column)."""
    ids = np.asarray(ids, np.int64)
    if column.shape != ids.shape:
        raise ValueError(f"{what}: {column.size} entries for {ids.size} ids")
    return ids, column, _checked(ids, "status", status, np.uint32), _checked(ids, "source_time", source_time, np.int64)


class Ingest:
    """Values gathered for one flush into ``tagdb``; see the module docstring.

    ``before_flush`` runs at the start of every flush: a driver that defers work to the flush
    (Modbus decodes a period's polls together) adds its values there. ``on_stored`` receives
    the numeric ids each flush stored (diagnostics count them per device). ``coalesce=False``
    is for a driver that never reports an id twice between flushes (Modbus flushes before a
    poll group is polled again): the check for repeats is skipped, a tenth of the CPU of a
    Modbus poll; a repeat would then reach ``TagDB.update``, which wants unique ids.
    """

    def __init__(
        self,
        tagdb: TagDB,
        before_flush: Callable[[], None] | None = None,
        on_stored: Callable[[np.ndarray], None] | None = None,
        coalesce: bool = True,
    ) -> None:
        self.tagdb = tagdb
        self._coalesce_ids = coalesce  # fixed: the scratch below is sized for it
        self.before_flush = before_flush
        self.on_stored = on_stored
        # Scratch for telling repeated ids apart in linear time (last_reports), one slot per tag.
        self._slots = np.empty(len(tagdb) if coalesce else 0, np.int32)
        self._numbers: list[_Part] = []
        self._texts: list[_Part] = []

    @property
    def pending(self) -> int:
        """Reports waiting for the next flush (numbers and texts, before coalescing)."""
        return sum(p[0].size for p in self._numbers) + sum(p[0].size for p in self._texts)

    def add(self, ids: np.ndarray, values: np.ndarray, status: Column, source_time: Column) -> None:
        """Keep numeric reports until the next flush.

        ``status`` and ``source_time`` are one per id or one for all. The arrays are kept as
        they are until the flush, not copied: pass arrays nothing changes meanwhile.
        """
        part = _part(ids, "values", np.asarray(values, np.float64), status, source_time)
        if part[0].size:
            self._numbers.append(part)

    def add_text(
        self, ids: np.ndarray | Sequence[int], texts: Sequence[str | None], status: Column, source_time: Column
    ) -> None:
        """Keep text reports until the next flush; as :meth:`add`, with a text per id."""
        column = np.empty(len(texts), object)  # never a 2-D array of characters
        column[:] = texts
        part = _part(ids, "texts", column, status, source_time)
        if part[0].size:
            self._texts.append(part)

    def flush(self) -> np.ndarray:
        """Store what was gathered: one update for numbers, one for texts. Returns the numeric ids stored."""
        if self.before_flush is not None:
            self.before_flush()
        stored = np.empty(0, np.int64)
        if self._numbers:
            parts, self._numbers = self._numbers, []
            stored, values, status, source_time = self._coalesce(parts, np.float64)
            self.tagdb.update(stored, values, status, source_time)
        if self._texts:
            parts, self._texts = self._texts, []
            ids, texts, status, source_time = self._coalesce(parts, object)
            self.tagdb.update_text(ids.tolist(), texts.tolist(), status, source_time)
        if stored.size and self.on_stored is not None:
            self.on_stored(stored)
        return stored

    def _coalesce(self, parts: list[_Part], dtype: type) -> _Part:
        """The parts as one batch, each id once with its last report."""
        if len(parts) == 1:
            ids, values, status, source_time = parts[0]
        else:
            sizes = [p[0].size for p in parts]
            ids = np.concatenate([p[0] for p in parts])
            values = np.concatenate([p[1] for p in parts]).astype(dtype, copy=False)
            status = _column([p[2] for p in parts], sizes, np.uint32)
            source_time = _column([p[3] for p in parts], sizes, np.int64)
        keep = last_reports(ids, self._slots) if self._coalesce_ids else None
        if keep is None:
            return ids, values, status, source_time
        if isinstance(status, np.ndarray):
            status = status[keep]
        if isinstance(source_time, np.ndarray):
            source_time = source_time[keep]
        return ids[keep], values[keep], status, source_time

    async def run(self, period: float) -> None:
        """Flush every ``period`` seconds until cancelled."""
        while True:
            await asyncio.sleep(period)
            self.flush()

    def link_lost(self, ids: np.ndarray, communicated: bool) -> None:
        """The link of ``ids`` is down: what was gathered is stored first, then their status
        turns Bad_CommunicationError (``communicated``: they had a link once) or stays
        Bad_NoCommunication; their last values are kept."""
        self.flush()
        self.tagdb.set_status(ids, link_lost_status(communicated))
