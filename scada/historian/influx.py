"""InfluxDB v2 sink: change batches -> line protocol -> durable spool -> influxdb-client.

Nothing is ever sent directly. :meth:`InfluxSink.submit` encodes a batch and appends it to
the :class:`~scada.historian.spool.Spool`; :meth:`InfluxSink.run` drains the spool in the
background with influxdb-client's *synchronous* write API called in a worker thread of the
loop's default executor (the synchronous API starts no threads of its own, unlike the batching
``WriteApi``, and influxdb-client's async client needs aiohttp, which the project does not
install). influxdb-client's own retries are off (its default for synchronous writes): the
spool is the retry buffer, and a batch is acknowledged only once the database answered 2xx.

Schema, one measurement per equipment class::

    lighting,commune=Dijon,device=LC-DIJ-001 power=3.25 1795862372221827413
    lighting,commune=Dijon,device=LC-DIJ-001 power_status=2156527616i 1795862372221827413

- a value is written (float field named after the point) when its status is Good or Uncertain
  and it is finite; Bad values, NaN/inf and text points are not written (a text value has NaN
  in the value column; VictoriaMetrics does not store string fields);
- ``<point>_status`` (integer field, the OPC UA StatusCode) is written whenever a tag's status
  differs from the last one this sink wrote for it (initially Good), so that quality changes,
  such as a communication loss, are in the history without doubling the rows;
- times are int64 nanoseconds (precision ``ns``); a zero time is replaced by the server time.
  VictoriaMetrics keeps milliseconds: two values of one tag within the same millisecond are
  two samples with the same timestamp there.

Draining, in two lanes, so that an outage's backlog never delays live data:

- the sink remembers ``live_from``, the first sequence number appended after the database came
  back (or after the sink started, for what a previous run left in the spool);
- each round sends first the *live* entries (``seq >= live_from``, oldest first), then one
  request of the *backlog* (the oldest unacknowledged entries below ``live_from``), so live
  data waits at most one backlog request; the backlog drains oldest first, in order, at the
  database's pace minus what live data takes; when it is empty the lanes merge.
- a request carries whole spool entries (up to ``max_request_bytes``); each is acknowledged once
  the database accepted the request.
- the database down (connection refused, timeout, 5xx, 429, 401/403/404): nothing is acked, the
  sink backs off (capped, jittered: ``backoff_min`` doubling to ``backoff_max``) and retries the
  same entries; values keep accumulating in the spool meanwhile.
- the database *rejects* a request (400, 413, 422): if it held one entry, that entry is
  quarantined (moved out of the replay path with the reason) and the drain continues; if it held
  several, they are split in halves and sent again until the culprit is alone. With a database
  that writes the lines before a bad one (VictoriaMetrics, InfluxDB's partial writes), the
  entries that preceded the culprit in the rejected request may be written twice: harmless on
  InfluxDB (same series and timestamp overwrite), duplicate samples on VictoriaMetrics. Rejections are
  exceptional: the sink escapes every name and writes only finite floats and integers, so what
  remains are database limits (VictoriaMetrics answers 400 to a line longer than
  ``-influx.maxLineSize``; it logs and skips a malformed line with 204).

A failing disk under the spool (full, read-only, I/O errors): a batch the spool cannot write is
kept in a memory backlog, bounded by ``memory_backlog_bytes`` (past it the oldest batches are
dropped, counted in ``memory_dropped_entries`` and logged), and appended again, in order, before
any newer batch, with a capped backoff (``backoff_min`` to ``backoff_max``). ``spool_failing``
in the status says so meanwhile (the historian raises ``storage_failing``). What is in the
memory backlog is lost if the process stops before the disk comes back (logged at shutdown).

Delivery is at least once (see :mod:`scada.historian.spool` for what a crash can lose).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog

from scada.backoff import Backoff
from scada.historian.spool import Spool

if TYPE_CHECKING:  # the library is imported by run() only (slow to import)
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import WriteApi
    from influxdb_client.rest import ApiException

log = structlog.get_logger(__name__)

# Escaping of the line protocol (as influxdb-client's Point does): measurement names escape
# comma and space; tag keys, tag values and field keys also escape '='. Line breaks cannot be
# escaped in a way every server accepts: they become spaces.
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": " ", "\r": " ", "\t": " "})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " ", "\r": " ", "\t": " "})

REJECTED = frozenset({400, 413, 422})  # the database refuses the content: quarantine, never retry
STATUS_GOOD = 0


def escape_measurement(name: str) -> str:
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key. A trailing backslash would escape the separator
    after it, so it is doubled."""
    out = name.translate(_ESCAPE_KEY)
    return out + "\\" if out.endswith("\\") else out


class TagMeta:
    """Per tag id, where its values go: measurement (equipment class), tags commune and device,
    field (point name). Kept as precomputed, escaped line prefixes, one per tag id."""

    def __init__(
        self, measurement: Sequence[str], commune: Sequence[str], device: Sequence[str], field: Sequence[str]
    ) -> None:
        n = len(measurement)
        if not (len(commune) == len(device) == len(field) == n):
            raise ValueError("measurement, commune, device and field must have one entry per tag id")
        heads = []
        for m, c, d in zip(measurement, commune, device):
            if not m:
                raise ValueError("a measurement name is not empty")
            tags = "".join(f",{k}={escape_key(v)}" for k, v in (("commune", c), ("device", d)) if v)
            heads.append(escape_measurement(m) + tags + " ")
        # value line = value_prefix + value + time_suffix; status line = status_prefix + code + "i" + ...
        self.value_prefix = np.array([h + escape_key(f) + "=" for h, f in zip(heads, field)], dtype=object)
        self.status_prefix = np.array([h + escape_key(f + "_status") + "=" for h, f in zip(heads, field)], dtype=object)
        # The same strings as lists, for the scalar path of small batches (list indexing is ~10x
        # cheaper than taking one element of a numpy array).
        self.value_prefix_list = self.value_prefix.tolist()
        self.status_prefix_list = self.status_prefix.tolist()

    def __len__(self) -> int:
        return len(self.value_prefix)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> TagMeta:
        """From tag paths ``<commune>/<class>/<device>/<point>`` (as ``Config.tag_table()`` names
        them); a deeper point such as ``Diagnostics/state`` becomes the field ``Diagnostics_state``."""
        m, c, d, f = [], [], [], []
        for name in names:
            parts = name.split("/")
            if len(parts) < 4:
                raise ValueError(f"tag name {name!r} is not <commune>/<class>/<device>/<point>")
            c.append(parts[0])
            m.append(parts[1])
            d.append(parts[2])
            f.append("_".join(parts[3:]))
        return cls(m, c, d, f)


def encode_lines(
    meta: TagMeta,
    ids: np.ndarray,
    values: np.ndarray,
    status: np.ndarray,
    times: np.ndarray,
    last_status: np.ndarray | None = None,
    now_ns: int | None = None,
) -> bytes:
    """Line protocol of one change batch (see the module docstring for what is written): the value
    lines in batch order, then the status lines.

    ``last_status`` (uint32 per tag id) is the status last written per tag: rows whose status
    differs get a ``_status`` line, and it is updated in place.
    Cost (bench/bench_spool.py): 1.5-2.5 µs per row, mostly float formatting (``repr``, the
    shortest text that reads back the same double). numpy costs ~1-5 µs per operation whatever
    the size, so a batch below ``_SMALL_BATCH`` rows (a device poll is 15) is formatted by a
    plain loop (about 40 µs for 15 rows, against 116 µs with array operations), a larger one
    with array operations (integral values formatted as integers, each distinct time once).
    """
    ids = np.asarray(ids, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    status = np.asarray(status, dtype=np.uint32)
    times = np.asarray(times, dtype=np.int64)
    if len(ids) == 0:
        return b""
    now = now_ns if now_ns is not None else time.time_ns()
    if len(ids) < _SMALL_BATCH:
        return _encode_small(meta, ids, values, status, times, last_status, now)
    if (times <= 0).any():
        times = np.where(times > 0, times, now)
    changed = None
    if last_status is not None:
        # Compared with the state before the batch (as the small path does), then updated.
        changed = status != last_status[ids]
        if changed.any():
            last_status[ids[changed]] = status[changed]
        else:
            changed = None
    severity = status >> 30  # OPC UA: 0 Good, 1 Uncertain, 2 Bad
    keep = (severity <= 1) & np.isfinite(values)
    parts: list[str] = []
    if keep.any():
        v = values[keep]
        integral = (v == np.trunc(v)) & (np.abs(v) < 1e15)
        txt = np.empty(len(v), dtype=object)
        if integral.any():
            txt[integral] = list(map(str, v[integral].astype(np.int64).tolist()))
        if not integral.all():
            txt[~integral] = list(map(repr, v[~integral].tolist()))
        parts += (meta.value_prefix[ids[keep]] + txt + _time_suffixes(times[keep])).tolist()
    if changed is not None:
        codes = np.array([f"{c}i" for c in status[changed].tolist()], dtype=object)
        parts += (meta.status_prefix[ids[changed]] + codes + _time_suffixes(times[changed])).tolist()
    return "".join(parts).encode()


_SMALL_BATCH = 256  # measured crossover of the two paths: ~500 rows; below 256 the loop is clearly faster


def _encode_small(meta: TagMeta, ids, values, status, times, last_status, now: int) -> bytes:
    """The same lines as the vectorised path, by a loop over Python scalars (no numpy operation:
    each costs more than formatting a whole device poll)."""
    vp, sp = meta.value_prefix_list, meta.status_prefix_list
    lines: list[str] = []
    status_lines: list[str] = []
    updates: list[tuple[int, int]] = []
    last_t, suffix = None, ""
    for i, v, s, t in zip(ids.tolist(), values.tolist(), status.tolist(), times.tolist()):
        if t != last_t:
            last_t, suffix = t, f" {t if t > 0 else now}\n"
        if s >> 30 <= 1 and v - v == 0.0:  # Good or Uncertain, and finite (inf - inf and nan are nan)
            lines.append(vp[i] + (str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)) + suffix)
        if last_status is not None and last_status[i] != s:
            status_lines.append(f"{sp[i]}{s}i{suffix}")
            updates.append((i, s))
    for i, s in updates:  # after the loop: every row is compared with the state before the batch
        last_status[i] = s
    return "".join(lines + status_lines).encode()


def _time_suffixes(times: np.ndarray) -> np.ndarray:
    """ " <time>\\n" per row, each distinct time formatted once (a device poll shares one time)."""
    uniq, inverse = np.unique(times, return_inverse=True)
    return np.array([f" {t}\n" for t in uniq.tolist()], dtype=object)[inverse]


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """What the server shows and alarms on."""

    connected: bool  # the last request reached the database and was answered 2xx/rejection
    backlog_bytes: int  # bytes in the spool not acknowledged yet
    backlog_entries: int
    fill_ratio: float  # spool bytes on disk / capacity
    spool_high: bool  # fill_ratio >= alarm ratio (0.8): raise an alarm; clears below ratio - 0.1
    replaying: bool  # an outage's backlog is being replayed (beside live data)
    replay_rate: float  # values/s of the backlog lane over the last 10 s (0 when not replaying)
    send_rate: float  # values/s accepted by the database over the last 10 s, both lanes
    sent_values: int  # values (lines) accepted by the database since start
    quarantined: int  # entries quarantined since start
    dropped_entries: int  # entries lost to the full policy or disk errors since start
    last_error: str | None
    spool_failing: bool = False  # the spool's disk refuses writes: batches wait in memory
    spool_error: str | None = None
    memory_backlog_entries: int = 0  # batches waiting in memory for the spool's disk
    memory_backlog_bytes: int = 0
    memory_dropped_entries: int = 0  # batches dropped from the full memory backlog since start


class _Rate:
    """Values per second over a sliding window, fed from the worker thread, read from the loop."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._events: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, n: int) -> None:
        now = time.monotonic()
        self._events.append((now, n))
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        events = [e for e in list(self._events) if e[0] >= now - self.window]
        if not events:
            return 0.0
        span = max(now - events[0][0], 1.0)
        return sum(n for _, n in events) / span


class InfluxSink:
    """Historian sink to an InfluxDB v2 write API (InfluxDB, VictoriaMetrics), through a spool.

    ``submit()`` is called on the event loop and only appends to the spool; ``run()`` is the
    background task that delivers. Library exceptions never escape: they are logged, the sink
    backs off and retries (or quarantines, for a rejection).
    """

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        spool: Spool,
        tags: TagMeta,
        timeout: float = 10.0,
        max_request_bytes: int = 1 << 20,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        sync_interval: float = 0.5,
        gzip: bool = False,
        on_ack=None,
        memory_backlog_bytes: int = 32 << 20,
    ) -> None:
        self.url, self.token, self.org, self.bucket = url, token, org, bucket
        self.spool = spool
        self.tags = tags
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.sync_interval = sync_interval
        self.gzip = gzip
        self.on_ack = on_ack  # called (in the worker thread) with (lane, seqs) after each accepted request
        self._last_status = np.zeros(len(tags), dtype=np.uint32)
        self._wakeup = asyncio.Event()
        # Set by run(), which imports the client library (see there).
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None
        self._precision: str | None = None  # WritePrecision.NS: the library's constants are str
        self._api_exception: type[ApiException] | None = None
        self._connected = False
        self._down_since: float | None = None
        self._live_from: int | None = None
        self._left_by_previous_run = spool.next_seq if spool.backlog_entries else None
        self._last_error: str | None = None
        self._spool_high = False
        self._sent_values = 0
        self._replayed = 0  # values of the current backlog replayed so far
        self._replay_rate = _Rate()
        self._send_rate = _Rate()
        # Batches the spool's disk refused, oldest first (see the module docstring).
        self.memory_backlog_bytes = memory_backlog_bytes
        self._memory: collections.deque[bytes] = collections.deque()
        self._memory_bytes = 0
        self._memory_dropped = 0
        self._spool_error: str | None = None
        self._spool_retry_at = 0.0
        self._spool_failures = 0  # refused spool appends in a row

    # ---------------------------------------------------------------- producer side (event loop)

    def submit(self, ids, values, status, times) -> int | None:
        """Encode one change batch and append it to the spool; return its sequence number (None if
        nothing was written or the spool refused it). Never sends, never blocks on the network."""
        payload = encode_lines(self.tags, ids, values, status, times, self._last_status)
        return self.append_lines(payload) if payload else None

    def append_lines(self, payload: bytes) -> int | None:
        """Append ready-made line protocol (each line ending with a newline) to the spool."""
        if payload and not payload.endswith(b"\n"):
            payload += b"\n"
        seq = None
        if self._memory:
            self._keep(payload)  # behind the older batches waiting for the disk: order is kept
            self.flush_memory()
        else:
            try:
                seq = self.spool.try_append(payload)
            except OSError as e:
                self._keep(payload)
                self._spool_failed(e)
        self._check_fill()
        self._wakeup.set()
        return seq

    def flush_memory(self, force: bool = False) -> None:
        """Append the batches waiting in memory to the spool, oldest first, while the disk takes
        them; at most once per backoff period unless ``force``."""
        if not self._memory or (not force and time.monotonic() < self._spool_retry_at):
            return
        while self._memory:
            try:
                self.spool.try_append(self._memory[0])
            except OSError as e:
                self._spool_failed(e)
                return
            self._memory_bytes -= len(self._memory.popleft())
        log.info("historian_spool_writable", path=str(self.spool.path), note="batches kept in memory are spooled")
        self._spool_error = None
        self._spool_failures = 0
        self._wakeup.set()

    def _keep(self, payload: bytes) -> None:
        self._memory.append(payload)
        self._memory_bytes += len(payload)
        dropped = 0
        while self._memory_bytes > self.memory_backlog_bytes and len(self._memory) > 1:
            self._memory_bytes -= len(self._memory.popleft())
            dropped += 1
        if dropped:
            self._memory_dropped += dropped
            log.error(
                "historian_spool_memory_full",
                dropped_entries=dropped,
                dropped_entries_total=self._memory_dropped,
                limit_bytes=self.memory_backlog_bytes,
                reason="the spool's disk still refuses writes: oldest batches dropped",
            )

    def _spool_failed(self, e: OSError) -> None:
        if self._spool_error is None:
            log.error(
                "historian_spool_write_failed",
                path=str(self.spool.path),
                error=str(e),
                action="batches kept in memory and appended again when the disk takes them",
            )
        self._spool_error = f"{type(e).__name__}: {e}"
        self._spool_failures += 1
        self._spool_retry_at = time.monotonic() + self._backoff().delay(self._spool_failures)

    def _backoff(self) -> Backoff:
        """Delays between attempts, within the configured ``backoff_min`` .. ``backoff_max``."""
        return Backoff(self.backoff_min, self.backoff_max)

    @property
    def spool_failing(self) -> str | None:
        """Why the spool cannot write (its own retried writes, or batches waiting in memory), or None."""
        return self._spool_error or self.spool.write_error or self.spool.sync_error

    def close_memory(self) -> None:
        """At shutdown: a last try to spool the memory backlog; what remains is lost (logged)."""
        self.flush_memory(force=True)
        if self._memory:
            log.error(
                "historian_spool_memory_lost",
                entries=len(self._memory),
                bytes=self._memory_bytes,
                reason="the spool's disk refused them until shutdown",
            )

    def status(self) -> SinkStatus:
        self._check_fill()
        return SinkStatus(
            connected=self._connected,
            backlog_bytes=self.spool.backlog_bytes,
            backlog_entries=self.spool.backlog_entries,
            fill_ratio=self.spool.fill_ratio,
            spool_high=self._spool_high,
            replaying=self._live_from is not None,
            replay_rate=self._replay_rate.rate() if self._live_from is not None else 0.0,
            send_rate=self._send_rate.rate(),
            sent_values=self._sent_values,
            quarantined=self.spool.quarantined_entries,
            dropped_entries=self.spool.dropped_entries,
            last_error=self._last_error,
            spool_failing=self.spool_failing is not None,
            spool_error=self.spool_failing,
            memory_backlog_entries=len(self._memory),
            memory_backlog_bytes=self._memory_bytes,
            memory_dropped_entries=self._memory_dropped,
        )

    def _check_fill(self) -> None:
        fill = self.spool.fill_ratio
        ratio = self.spool.alarm_ratio
        if not self._spool_high and fill >= ratio:
            self._spool_high = True
            log.warning(
                "historian_spool_high",
                fill=round(fill, 3),
                backlog_bytes=self.spool.backlog_bytes,
                capacity_bytes=self.spool.capacity_bytes,
                policy=self.spool.full_policy,
            )
        elif self._spool_high and fill < ratio - 0.1:
            self._spool_high = False
            log.info("historian_spool_normal", fill=round(fill, 3))

    # ---------------------------------------------------------------- the drain (background task)

    async def run(self) -> None:
        """Deliver the spool until cancelled. Start it once; cancel it to stop (the request in
        flight, if any, is awaited: at most ``timeout`` seconds)."""
        # Imported here: influxdb_client takes ~0.5 s to import, which a server configured
        # without a time-series database should not pay.
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        self._precision, self._api_exception = WritePrecision.NS, ApiException
        client = self._client = InfluxDBClient(
            url=self.url, token=self.token, org=self.org, timeout=int(self.timeout * 1000), enable_gzip=self.gzip
        )
        self._write_api = client.write_api(write_options=SYNCHRONOUS)
        # What a previous run left in the spool is backlog; what arrives from now on is live.
        self._live_from = self._left_by_previous_run
        failures = 0  # failed rounds in a row
        next_sync = time.monotonic() + self.sync_interval
        try:
            while True:
                self.flush_memory()
                if time.monotonic() >= next_sync:
                    await self._in_thread(self._guarded, self.spool.sync)
                    next_sync = time.monotonic() + self.sync_interval
                self._wakeup.clear()
                outcome = await self._in_thread(self._guarded, self._round)
                self._check_fill()
                if outcome in ("down", "error"):
                    # The project's backoff (capped, jittered): never a busy loop, and many
                    # servers coming back at once do not hammer the database in step.
                    failures += 1
                    await asyncio.sleep(self._backoff().delay(failures))
                    continue
                failures = 0
                if outcome == "idle":
                    delay = max(0.0, next_sync - time.monotonic())
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
                    # that races with the event being set, and the server would not stop.
                    try:
                        async with asyncio.timeout(delay):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
        finally:
            try:
                await self._in_thread(self._guarded, self.spool.sync)
            finally:
                client.close()
                self._client = self._write_api = None

    async def _in_thread(self, fn, *args):
        """Run ``fn`` in the default executor; if cancelled, let it finish (bounded by the HTTP
        timeout) before propagating, so that the client is never closed under a request."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut], timeout=self.timeout + 5)
            raise

    def _guarded(self, fn) -> str | None:
        """Run ``fn``; an unexpected exception (a failing disk under the spool, a bug) is logged and
        answered with a backoff, never allowed to end the sink."""
        try:
            return fn()
        except Exception as e:  # the sink must outlive any one failure
            self._last_error = f"{type(e).__name__}: {e}"
            log.exception("historian_sink_error", error=self._last_error)
            return "error"

    def _round(self) -> str:
        """One round in the worker thread: live lane first, then one backlog request.
        Returns "sent", "idle" or "down"."""
        sent = False
        if self._live_from is not None:
            live = self.spool.peek(self.max_request_bytes, start=self._live_from)
            if live:
                if not self._deliver(live, "live"):
                    return "down"
                sent = True
        oldest = self.spool.peek(self.max_request_bytes, stop=self._live_from)
        if oldest:
            if not self._deliver(oldest, "replay" if self._live_from is not None else "live"):
                return "down"
            sent = True
        elif self._live_from is not None:
            if self._replayed:
                log.info("historian_backlog_replayed", values=self._replayed)
            self._live_from = None  # the backlog is empty: a single lane again
            self._replayed = 0
        return "sent" if sent else "idle"

    def _deliver(self, entries: list[tuple[int, bytes]], lane: str) -> bool:
        """Send ``entries`` as one request; ack, or quarantine, or report the database down (False)."""
        body = b"".join(p for _, p in entries)
        if self._write_api is None or self._api_exception is None or self._precision is None:
            raise RuntimeError("the InfluxDB sink is not running")  # _deliver runs inside run() only
        try:
            # The annotation asks for a WritePrecision, whose members are plain str ("ns").
            self._write_api.write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=self._precision,  # type: ignore[arg-type]
            )
        except self._api_exception as e:
            if e.status in REJECTED:
                return self._rejected(entries, lane, e)
            self._mark_down(f"HTTP {e.status} {e.reason}: {_body_text(e)}", refused=e.status in (401, 403, 404))
            return False
        except Exception as e:  # noqa: BLE001 - urllib3 connection errors, timeouts...: the database is unreachable
            self._mark_down(f"{type(e).__name__}: {e}")
            return False
        seqs = [s for s, _ in entries]
        self.spool.ack_all(seqs)
        lines = body.count(b"\n")
        self._sent_values += lines
        self._send_rate.add(lines)
        if lane == "replay":
            self._replay_rate.add(lines)
            self._replayed += lines
        self._mark_up()
        if self.on_ack is not None:
            try:
                self.on_ack(lane, seqs)
            except Exception:  # the owner's callback must not stop the drain
                log.exception("historian_on_ack_failed")
        return True

    def _rejected(self, entries, lane, e) -> bool:
        self._mark_up()  # a rejection is an answer: the database is there
        if len(entries) > 1:
            log.warning(
                "historian_request_rejected",
                entries=len(entries),
                status=e.status,
                action="sending its batches again in halves to find the one refused",
            )
            mid = len(entries) // 2
            return self._deliver(entries[:mid], lane) and self._deliver(entries[mid:], lane)
        seq, payload = entries[0]
        reason = f"HTTP {e.status} {e.reason}: {_body_text(e)}"
        self.spool.quarantine(seq, payload, reason)
        log.error(
            "historian_batch_quarantined",
            seq=seq,
            bytes=len(payload),
            reason=reason[:300],
            file=str(self.spool.quarantine_path),
        )
        return True

    def _mark_down(self, error: str, refused: bool = False) -> None:
        self._last_error = error
        if self._connected or self._down_since is None:
            self._down_since = time.monotonic()
            # Refused (401/403/404) is a configuration problem (token, org, bucket), not an outage.
            event = "historian_tsdb_refused" if refused else "historian_tsdb_down"
            log.warning(event, url=self.url, error=error[:300], backlog_bytes=self.spool.backlog_bytes)
        self._connected = False

    def _mark_up(self) -> None:
        if self._connected:
            return
        if self._down_since is not None:
            outage = time.monotonic() - self._down_since
            # Entries appended from now on are live; the outage's entries are the backlog.
            if self._live_from is None:
                self._live_from = self.spool.next_seq
            log.info(
                "historian_tsdb_up",
                url=self.url,
                outage_s=round(outage, 1),
                backlog_bytes=self.spool.backlog_bytes,
                backlog_entries=self.spool.backlog_entries,
            )
        self._connected = True
        self._down_since = None
        self._last_error = None


def _body_text(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return " ".join(str(body or "").split())[:500]
