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
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from scada.config import Config
from scada.historian.compress import Compressor, StoredBatch
from scada.historian.influx import InfluxSink, SinkStatus, TagMeta
from scada.historian.spool import Spool
from scada.historian.store import HistoryStore, Retention
from scada.tagdb import TagDB

log = structlog.get_logger("scada.historian")

WRITE_PERIOD = 0.5  # s between store writes (one transaction each)
PRUNE_PERIOD = 6 * 3600.0  # s between retention passes


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

    def __init__(self, config: Config, tagdb: TagDB, data_dir: str | Path, influx: InfluxSettings | None = None,
                 on_spool_alarm=None) -> None:
        self.config = config
        self.tagdb = tagdb
        h = config.history_table()
        # A negative deviation: not historised.
        deviation = np.where(h["enabled"], h["deviation"], -1.0)
        self.compressor = Compressor(len(tagdb), deviation, h["deadband"], h["kind"], h["max_interval_ns"])
        names = list(tagdb.names)
        type_names = list(config.types)
        tag_class = [type_names[i] for i in h["type_index"].tolist()]
        retention = {name: Retention(t.history.retention_days, t.history.rollup_retention_days,
                                     t.history.rollup_retention_days) for name, t in config.types.items()}
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
            self.sink = InfluxSink(influx.url, influx.token, influx.org, influx.bucket, self.spool,
                                   TagMeta.from_names(names))
        self.on_spool_alarm = on_spool_alarm  # called with (active: bool, status) when the spool crosses 80 %
        self._spool_alarm = False
        self._pending: list[StoredBatch] = []
        self._writing: StoredBatch | None = None  # in the worker thread: not in the store yet, maybe
        self.stored = 0
        self.resyncs = 0

    def _take(self, batch) -> None:
        kept = self.compressor.compress(batch)
        if len(kept):
            self._pending.append(kept)

    async def _write(self) -> None:
        if not self._pending:
            return
        batch = StoredBatch.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        # The spool first: a value in the store is then always in the spool too, whatever
        # stops the server (a SIGKILL between the two, a cancellation during the store write).
        if self.sink is not None:
            self.sink.submit(batch.ids, batch.values, batch.status, batch.times)
        self._writing = batch  # readers still see it until the store has it
        try:
            await asyncio.to_thread(self.store.write, batch)
        finally:
            self._writing = None
        self.stored += len(batch)

    def _check_spool(self) -> None:
        if self.sink is None:
            return
        status: SinkStatus = self.sink.status()
        if status.spool_high != self._spool_alarm:
            self._spool_alarm = status.spool_high
            if self.on_spool_alarm is not None:
                self.on_spool_alarm(status.spool_high, status)

    async def run(self) -> None:
        """Consume change batches until cancelled; flush and close on the way out."""
        consumer = self.tagdb.subscribe("historian", maxsize=4096)
        sink_task = asyncio.create_task(self.sink.run(), name="influx-sink") if self.sink else None
        next_write = time.monotonic() + WRITE_PERIOD
        next_prune = time.monotonic() + 60.0
        try:
            while True:
                batch = await consumer.get_until(next_write)
                if consumer.take_overflow():
                    self.resyncs += 1
                    log.warning("history_resync", dropped_batches=consumer.dropped_batches,
                                note="changes between the dropped batches are not recorded")
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
                    deleted = await asyncio.to_thread(self.store.prune, time.time_ns())
                    if any(deleted.values()):
                        log.info("history_pruned", **deleted)
                    next_prune = time.monotonic() + PRUNE_PERIOD
        finally:
            self.tagdb.unsubscribe(consumer)
            try:
                held = self.compressor.flush()
                if len(held):
                    self._pending.append(held)
                await asyncio.shield(self._write())
            finally:
                if sink_task is not None:
                    sink_task.cancel()
                    await asyncio.gather(sink_task, return_exceptions=True)
                if self.spool is not None:
                    self.spool.close()
                self.store.close()

    def unstored(self) -> list[StoredBatch]:
        """Kept points not (surely) in the store yet: the batch being written and those waiting.

        A history read adds them (and the compressor's held points) to what the store returns;
        a point both here and in the store has the same time, and the store's copy wins.
        """
        return ([self._writing] if self._writing is not None else []) + list(self._pending)

    def status(self) -> dict:
        out = {"history_received": self.compressor.received, "history_stored": self.compressor.stored}
        if self.sink is not None:
            s = self.sink.status()
            out.update(influx_connected=s.connected, influx_backlog=s.backlog_entries,
                       influx_spool_fill=round(s.fill_ratio, 3))
        return out
