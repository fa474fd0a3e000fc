"""The historian as the server runs it: TagDB changes -> compressor -> embedded store (+ InfluxDB).

One consumer of the TagDB's change batches. Each batch goes through the swinging-door
compressor (``compress.py``); what it keeps is written to the embedded SQLite store
(``store.py``) in a worker thread, so a merge (seconds, every million rows) never stalls the
event loop, and, when an InfluxDB URL is configured, appended to the durable spool that
``influx.py`` drains to the database. Writes are coalesced: every ``WRITE_PERIOD`` the kept
points of all batches since the last write go in one transaction.

At start the compressor is primed from the store's last points, so history continues across
a restart. At shutdown the compressor's held points are flushed and written. A consumer
that overflowed (batches dropped) resynchronises from a TagDB snapshot: the current values are
recorded, nothing in between, and that gap is logged.

Storage faults (a full or read-only disk, I/O errors) never stop the historian. Kept points the
store could not write stay in a memory backlog, bounded by ``backlog_max_values`` (past it the
oldest are dropped, counted in ``history_backlog_dropped`` and logged), and are written again,
in order, in one transaction (all or nothing: never twice, never half), with a capped backoff.
The spool has its own memory backlog (``influx.py``). While either cannot write,
``on_storage_alarm(source, active, message)`` is called with source "history_store" or
"history_spool" (the server raises ``storage_failing``), and again when it recovers. What is in
a memory backlog is lost if the server stops before the disk comes back (logged).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from scada.backoff import Backoff
from scada.config import Config
from scada.historian.backlog import Backlog, Run, points_of, take_rows
from scada.historian.compress import Compressor, StoredBatch
from scada.historian.influx import InfluxSink, SinkStatus, TagMeta
from scada.historian.spool import Spool
from scada.historian.store import HistoryError, HistoryStore, Retention
from scada.tagdb import TagDB

log = structlog.get_logger("scada.historian")

WRITE_PERIOD = 0.5  # s between store writes (one transaction each)
PRUNE_PERIOD = 6 * 3600.0  # s between retention passes
# Kept points waiting in memory while the store cannot write: 28 bytes each (id, value, status,
# time), plus up to 16 for the per-tag index a front's history read builds (backlog.py), so
# 56 to 88 MB; at a few thousand stored points/s, minutes to an hour of history.
BACKLOG_MAX_VALUES = 2_000_000
RETRY_MIN, RETRY_MAX = 0.5, 30.0  # s: backoff between write attempts on a failing store
_STORAGE_ERRORS = (HistoryError, sqlite3.Error, OSError)


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """Where the InfluxDB sink writes; the token comes from the environment, never a file."""

    url: str
    org: str = "city"
    bucket: str = "scada"
    token_env: str = "INFLUX_TOKEN"
    spool_capacity_mb: int = 1024

    @property
    def token(self) -> str:
        return os.environ.get(self.token_env, "")


class Historian:
    """Records every change of the configured tags; see the module docstring."""

    def __init__(
        self,
        config: Config,
        tagdb: TagDB,
        data_dir: str | Path,
        influx: InfluxSettings | None = None,
        on_spool_alarm=None,
        on_storage_alarm=None,
    ) -> None:
        self.config = config
        self.tagdb = tagdb
        h = config.history_table()
        # A negative deviation: not historised.
        deviation = np.where(h["enabled"], h["deviation"], -1.0)
        self.compressor = Compressor(len(tagdb), deviation, h["deadband"], h["kind"], h["max_interval_ns"])
        names = list(tagdb.names)
        type_names = list(config.types)
        tag_class = [type_names[i] for i in h["type_index"].tolist()]
        retention = {
            name: Retention(t.history.retention_days, t.history.rollup_retention_days, t.history.rollup_retention_days)
            for name, t in config.types.items()
        }
        self.store = HistoryStore(Path(data_dir) / "history.sqlite", names, tag_class, retention)
        self._heartbeat = bool((h["max_interval_ns"] > 0).any())
        last = self.store.last_points()
        if len(last[0]):
            self.compressor.prime(*last)
            log.info("history_resumed", tags=len(last[0]), store=str(self.store.path))
        self.sink: InfluxSink | None = None
        self.spool: Spool | None = None
        if influx is not None:
            self.spool = Spool(Path(data_dir) / "influx-spool", capacity_bytes=influx.spool_capacity_mb << 20)
            self.sink = InfluxSink(
                influx.url, influx.token, influx.org, influx.bucket, self.spool, TagMeta.from_names(names)
            )
        self.on_spool_alarm = on_spool_alarm  # called with (active: bool, status) when the spool crosses 80 %
        self._spool_alarm = False
        self._pending: list[StoredBatch] = []  # kept since the last write, not yet spooled nor stored
        self._backlog = Backlog()  # spooled, not yet stored (the store failed), oldest first, indexed by tag
        self._writing: list[Run] = []  # in the worker thread: not in the store yet, maybe
        self.stored = 0
        self.resyncs = 0
        self.backlog_max_values = BACKLOG_MAX_VALUES
        self.backlog_dropped = 0  # kept points lost to the full backlog since start
        self.retry_min, self.retry_max = RETRY_MIN, RETRY_MAX  # the backoff's bounds (tests shorten them)
        self._failures = 0  # failed write attempts in a row
        self._retry_at = 0.0
        self.store_error: str | None = None  # why the store cannot write, None when it can
        self.on_storage_alarm = on_storage_alarm  # called with (source, active: bool, message)
        self._failing: dict[str, bool] = {"history_store": False, "history_spool": False}

    def take_over(self, old: Historian) -> None:
        """Go on from ``old``, stopped (its store closed): a supervised restart or a reload.

        Its points waiting for the store (a full disk) are written by this one, in order, at its
        first write; its storage alarms stay raised here until this one writes, then clear (a new
        historian would never clear what it does not know was raised). The counters go on. On a
        reload the tag ids change: the waiting points follow their tag by name; those of removed
        tags are dropped, counted in ``backlog_dropped``.
        """
        self.stored, self.resyncs, self.backlog_dropped = old.stored, old.resyncs, old.backlog_dropped
        self.store_error, self._failing, self._spool_alarm = old.store_error, dict(old._failing), old._spool_alarm
        waiting = old._backlog.batches() + old._pending  # spooled or not: the store has neither
        if waiting and old.tagdb.names is not self.tagdb.names:
            waiting = self._renumber(StoredBatch.concat(waiting), old.tagdb.names)
        self._backlog = Backlog([*waiting, *self._backlog.batches()])
        self._prime_from(waiting)
        self._retry_at = 0.0  # the disk may be back: try at the first write
        if len(self._backlog):
            log.info("history_backlog_taken_over", values=len(self._backlog), store=str(self.store.path))
            self._bound_backlog()

    def _prime_from(self, waiting: list[StoredBatch]) -> None:
        """The compressor goes on from each tag's newest waiting point, not from the store's
        older last point: otherwise a change back to the stored value would look unchanged and
        be left out of the history."""
        if not waiting:
            return
        batch = StoredBatch.concat(waiting) if len(waiting) > 1 else waiting[0]
        # Batches are in time order: each tag's last row is its newest point.
        ids, from_end = np.unique(batch.ids[::-1], return_index=True)
        pos = len(batch) - 1 - from_end
        texts = None if batch.texts is None else [batch.texts[p] for p in pos.tolist()]
        self.compressor.prime(ids, batch.values[pos], batch.status[pos], batch.times[pos], texts)

    def _renumber(self, batch: StoredBatch, names) -> list[StoredBatch]:
        """``batch`` with the ids of this tag table (``names``: the old one's); removed tags dropped."""
        old_ids, inverse = np.unique(batch.ids, return_inverse=True)
        new_ids = np.full(len(old_ids), -1, np.int64)
        for k, i in enumerate(old_ids.tolist()):
            try:
                new_ids[k] = self.tagdb.id_of(names[i])
            except KeyError:
                pass
        ids = new_ids[inverse]
        keep = ids >= 0
        dropped = len(batch) - int(keep.sum())
        if dropped:
            self.backlog_dropped += dropped
            log.warning(
                "history_backlog_dropped_on_reload", values=dropped, reason="their tags are no longer configured"
            )
        texts = None if batch.texts is None else tuple(t for t, k in zip(batch.texts, keep.tolist()) if k)
        out = StoredBatch(ids[keep], batch.values[keep], batch.status[keep], batch.times[keep], texts)
        return [out] if len(out) else []

    def _take(self, batch) -> None:
        kept = self.compressor.compress(batch)
        if len(kept):
            self._pending.append(kept)

    async def _write(self, force: bool = False) -> None:
        if self._pending:
            batch = StoredBatch.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
            # The spool first: a value in the store is then always in the spool too, whatever
            # stops the server (a SIGKILL between the two, a cancellation during the store write).
            if self.sink is not None:
                self.sink.submit(batch.ids, batch.values, batch.status, batch.times)
            self._backlog.append(batch)
            self._bound_backlog()
        if not len(self._backlog) or (not force and time.monotonic() < self._retry_at):
            return
        # The whole backlog in one transaction: in the store entirely, in order, or not at all.
        runs = self._backlog.take()
        batch = StoredBatch.concat([r.batch for r in runs])
        self._writing = runs  # readers still see them until the store has them
        try:
            await asyncio.to_thread(self.store.write, batch)
        except _STORAGE_ERRORS as exc:
            # Nothing of it is in the store: it goes first next time (its runs as they were,
            # their index by tag kept for the reads meanwhile).
            self._backlog.put_back(runs)
            self._store_failed(exc)
            return
        finally:
            self._writing = []
        self.stored += len(batch)
        if self.store.merge_error is not None:
            # Stored (in staging); the merge into the tables is what fails: retried by the store.
            self._set_store_error(f"merge: {self.store.merge_error}")
        elif self.store_error is not None:
            log.info("history_store_recovered", store=str(self.store.path), written=len(batch))
            self._set_store_error(None)
        self._failures = 0

    def _store_failed(self, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        if self.store_error is None:
            log.error(
                "history_store_write_failed",
                store=str(self.store.path),
                error=reason,
                backlog_values=len(self._backlog),
                action="values kept in memory and written again when the store takes them",
            )
        self._set_store_error(reason)
        # The project's backoff (capped, jittered): a failing disk is not hammered.
        self._failures += 1
        self._retry_at = time.monotonic() + Backoff(self.retry_min, self.retry_max).delay(self._failures)

    def _set_store_error(self, reason: str | None) -> None:
        self.store_error = reason
        self._alarm("history_store", reason)

    def _alarm(self, source: str, reason: str | None) -> None:
        active = reason is not None
        if self._failing[source] == active:
            return
        self._failing[source] = active
        if source == "history_store":
            what, waiting = "history store", f"{len(self._backlog)} values waiting"
        else:
            backlog = self.sink.status().memory_backlog_entries if self.sink is not None else 0
            what, waiting = "InfluxDB spool", f"{backlog} batches waiting"
        message = (
            f"{what} cannot write ({reason}): kept in memory, {waiting}; free space on the data disk"
            if active
            else f"{what} writes again"
        )
        (log.error if active else log.info)("history_storage_failing", source=source, active=active, message=message)
        if self.on_storage_alarm is not None:
            try:
                self.on_storage_alarm(source, active, message)
            except Exception:  # the alarm's own journal may sit on the same failing disk
                log.exception("history_storage_alarm_failed", source=source, active=active)

    def _bound_backlog(self) -> None:
        """Drop the oldest kept points past ``backlog_max_values`` (counted and logged)."""
        excess = len(self._backlog) - self.backlog_max_values
        if excess <= 0:
            return
        dropped = self._backlog.drop_oldest(excess)
        self.backlog_dropped += dropped
        log.error(
            "history_backlog_overflow",
            dropped_values=dropped,
            dropped_total=self.backlog_dropped,
            limit_values=self.backlog_max_values,
            store=str(self.store.path),
            reason="the store still cannot write: the oldest values waiting are lost",
        )

    def _check_spool(self) -> None:
        if self.sink is None:
            return
        self._alarm("history_spool", self.sink.spool_failing)
        status: SinkStatus = self.sink.status()
        if status.spool_high != self._spool_alarm:
            self._spool_alarm = status.spool_high
            if self.on_spool_alarm is not None:
                try:
                    self.on_spool_alarm(status.spool_high, status)
                except Exception:  # as for storage_failing: never the end of the historian
                    log.exception("history_spool_alarm_failed", active=status.spool_high)

    async def run(self) -> None:
        """Consume change batches until cancelled; flush and close on the way out."""
        consumer = self.tagdb.subscribe("historian", maxsize=4096)
        sink_task = asyncio.create_task(self.sink.run(), name="influx-sink") if self.sink else None
        next_write = time.monotonic() + WRITE_PERIOD
        next_prune = time.monotonic() + 60.0
        if self.store.merge_error is not None:  # opened on a full disk: rows wait in staging
            self._set_store_error(f"merge: {self.store.merge_error}")
        try:
            while True:
                batch = await consumer.get_until(next_write)
                if consumer.take_overflow():
                    self.resyncs += 1
                    log.warning(
                        "history_resync",
                        dropped_batches=consumer.dropped_batches,
                        note="changes between the dropped batches are not recorded",
                    )
                    self._take(self.tagdb.snapshot())
                elif batch is not None:
                    self._take(batch)
                now = time.monotonic()
                if now >= next_write:
                    if self._heartbeat:
                        beat = self.compressor.heartbeat(time.time_ns())
                        if len(beat):
                            self._pending.append(beat)
                    await self._write()
                    self._check_spool()
                    next_write = time.monotonic() + WRITE_PERIOD
                if now >= next_prune:
                    next_prune = time.monotonic() + PRUNE_PERIOD
                    try:
                        deleted = await asyncio.to_thread(self.store.prune, time.time_ns())
                    except _STORAGE_ERRORS as exc:
                        # Nothing pruned (one transaction); retried at the next retry of the writes.
                        log.error("history_prune_failed", store=str(self.store.path), error=str(exc))
                        next_prune = time.monotonic() + self.retry_max
                    else:
                        if any(deleted.values()):
                            log.info("history_pruned", **deleted)
        finally:
            self.tagdb.unsubscribe(consumer)
            try:
                held = self.compressor.flush()
                if len(held):
                    self._pending.append(held)
                await asyncio.shield(self._write(force=True))
                if len(self._backlog):
                    log.error(
                        "history_backlog_lost",
                        values=len(self._backlog),
                        store=str(self.store.path),
                        reason="the store refused them until shutdown",
                    )
            finally:
                if sink_task is not None:
                    sink_task.cancel()
                    await asyncio.gather(sink_task, return_exceptions=True)
                if self.sink is not None:
                    self.sink.close_memory()
                if self.spool is not None:
                    self.spool.close()
                try:
                    self.store.close()
                except HistoryError as exc:
                    # Rows not merged stay in staging: the next start merges them.
                    log.error("history_store_close_failed", store=str(self.store.path), error=exc.reason)

    def unstored(self) -> list[StoredBatch]:
        """Kept points not (surely) in the store yet: the batch being written and those waiting.

        A history read adds them (and the compressor's held points) to what the store returns;
        a point both here and in the store has the same time, and the store's copy wins.
        """
        return [r.batch for r in self._writing] + self._backlog.batches() + list(self._pending)

    def unstored_of(self, tags: np.ndarray) -> list[StoredBatch]:
        """The points of ``tags`` (sorted, unique int64) in :meth:`unstored`, oldest first.

        Costs the asked tags' points, not the backlog's size (a failing disk's backlog holds
        up to millions: see scada/historian/backlog.py): the batch being written and the
        backlog are read through their index by tag; the points kept since the last write
        (at most ``WRITE_PERIOD``'s worth, or one write's duration) are scanned.
        """
        out = points_of([*self._writing, *self._backlog.runs], tags)
        for b in self._pending:
            rows = np.flatnonzero(np.isin(b.ids, tags))
            if len(rows):
                out.append(take_rows(b, rows))
        return out

    def status(self) -> dict[str, bool | int | float]:
        """Counters and health for the diagnostics (names as shown there)."""
        out: dict[str, bool | int | float] = {
            "history_received": self.compressor.received,
            "history_stored": self.compressor.stored,
            "history_backlog": len(self._backlog),
            "history_backlog_dropped": self.backlog_dropped,
            "history_store_failing": self.store_error is not None,
        }
        failing = self.store_error is not None
        if self.sink is not None:
            s = self.sink.status()
            out.update(
                influx_connected=s.connected,
                influx_backlog=s.backlog_entries,
                influx_spool_fill=round(s.fill_ratio, 3),
                influx_spool_failing=s.spool_failing,
                influx_memory_backlog=s.memory_backlog_entries,
                influx_memory_dropped=s.memory_dropped_entries,
            )
            failing = failing or s.spool_failing
        out["history_storage_failing"] = failing
        return out
