"""Durable on-disk spool: what the historian owes the time-series database, kept across crashes.

influxdb-client drops a batch once its retries are exhausted, so durability is ours. Every
batch of line protocol is appended here *before* anything is sent; the sink reads the oldest
unacknowledged entries back (:meth:`Spool.peek`), sends them, and acknowledges each entry the
database accepted (:meth:`Spool.ack`). A batch the database rejects is moved to a quarantine
file (:meth:`Spool.quarantine`), out of the replay path.

Layout of the spool directory::

    00000000000000000001.seg   segments, named after the sequence number of their first entry
    00000000000000004711.seg
    acks                       acknowledged sequence numbers (JSON: disjoint inclusive intervals)
    quarantine.lp              rejected batches, each after a '# quarantined ...' comment line

A segment is a sequence of records: a 20-byte header (magic u16, flags u16, payload length u32,
sequence number u64, CRC-32 u32 of the first 16 header bytes and the payload), then the payload.
Sequence numbers are consecutive across segments and never reused, also after a restart.

Durability, exactly:

- ``append()`` writes the whole record with one ``os.write`` on an unbuffered descriptor before
  it returns. A **SIGKILL** of the process (or any crash of the process alone) therefore loses
  nothing that ``append()`` returned for: the data is in the kernel's page cache. A kill in the
  middle of the ``write`` can leave a torn last record; it is detected on reopen (magic, length,
  CRC) and cut off, and it is one whose ``append()`` never returned.
- A **power cut or kernel crash** loses what was not fsynced yet: with ``fsync_each_append=True``
  nothing that ``append()`` returned for; otherwise (the default) at most what was appended since
  the owner's last :meth:`sync` (the InfluxDB sink calls it every ``sync_interval``, 0.5 s by
  default, in a worker thread so that the event loop never waits for the disk).
- Acknowledgements are written to ``acks`` with write-to-temporary + ``os.replace`` (atomic for
  any crash of the process); with ``fsync_each_append=False`` a power cut can revert the file to
  an older state or corrupt it, in which case entries already delivered are delivered again:
  delivery is **at least once**, never "at most once". A process crash between the database
  accepting a request and the acknowledgement being written also delivers that request twice.
  InfluxDB overwrites a point with the same series and timestamp, so a replay is idempotent there.

When the spool is full (``size_bytes`` would exceed ``capacity_bytes``) the policy applies, and
``append()`` never blocks nor raises:

- ``"drop_oldest"`` (default): the oldest segment is deleted with whatever it still held
  (counted in ``dropped_entries`` / ``dropped_bytes``, logged as an error): the most recent
  history is kept, an outage longer than the spool's span loses its beginning.
- ``"drop_newest"``: the new batch is refused (``append()`` returns None) and counted: the
  beginning of the outage is kept, its end is lost.

**The quarantine counts against the capacity.** ``size_bytes`` is the segments plus
``quarantine.lp``, and the quarantine file is itself bounded to a quarter of the capacity: a
batch quarantined when that is reached pushes the oldest quarantined batches out of the file
(counted in ``quarantine_dropped_entries``, logged as an error). So rejected batches can never
fill the disk, and the full policy above always has whole segments to drop.

**A failing disk** (full, read-only, I/O errors): :meth:`try_append` raises the ``OSError``
after putting the segment back as it was (the next record starts on a record boundary, CRCs
and sequence numbers stay consecutive), so that its caller can keep the batch and append it
again later, in order (the InfluxDB sink does, in a bounded memory backlog); :meth:`append`
counts it as dropped instead. A failed write of ``acks`` or a failed deletion of an
acknowledged segment is kept in memory and retried by every :meth:`sync` (``write_error``
says why meanwhile): the file on disk then lags behind, which can only deliver an entry
again after a restart (at least once), never lose one. A failed fsync is in ``sync_error``
until a later :meth:`sync` succeeds; what it could not write is then as after a power cut.

Thread safety: every public method takes one lock, so the sink may append from the event loop
and peek/ack/sync from a worker thread.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import struct
import threading
import time
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import structlog

log = structlog.get_logger(__name__)

_HEADER = struct.Struct("<HHIQI")  # magic, flags, payload length, seq, crc32
HEADER_SIZE = _HEADER.size  # 20
_MAGIC = 0x5053  # "SP"
_CRC_SPAN = 16  # the CRC covers the header before it, then the payload
MAX_PAYLOAD = 256 << 20  # a sanity bound: a longer length field is corruption, not data
SEGMENT_SUFFIX = ".seg"
POLICIES = ("drop_oldest", "drop_newest")


def _crc(head16: bytes | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(head16))


def encode_record(seq: int, payload: bytes) -> bytes:
    """One record as written to a segment (exposed for tests that forge torn records)."""
    head = _HEADER.pack(_MAGIC, 0, len(payload), seq, 0)[:_CRC_SPAN]
    return head + struct.pack("<I", _crc(head, payload)) + payload


@dataclass(eq=False)
class _Segment:
    first_seq: int
    path: Path
    offsets: array = field(default_factory=lambda: array("Q"))  # record i has seq first_seq + i
    end: int = 0  # bytes of valid records
    rfd: int | None = None  # read descriptor, opened on first peek

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record (first_seq - 1 when empty)."""
        return self.first_seq + len(self.offsets) - 1

    def record_size(self, seq: int) -> int:
        return _run_bytes(self, seq, seq)


class Spool:
    """Append-only, segmented, crash-safe log of line-protocol batches (see the module docstring).

    ``capacity_bytes`` bounds the bytes on disk (segments); ``segment_bytes`` is the size at which
    a segment is closed and a new one started (at most a quarter of the capacity, so that the
    full policy always has a whole segment to drop; fully acknowledged segments are deleted, so an
    idle spool holds at most one segment).
    """

    def __init__(
        self,
        path: str | Path,
        capacity_bytes: int = 1 << 30,
        segment_bytes: int | None = None,
        fsync_each_append: bool = False,
        full_policy: str = "drop_oldest",
        alarm_ratio: float = 0.8,
    ) -> None:
        if full_policy not in POLICIES:
            raise ValueError(f"full_policy must be one of {', '.join(POLICIES)} (got {full_policy!r})")
        if capacity_bytes < 64 * 1024:
            raise ValueError(f"capacity_bytes must be at least 64 KiB (got {capacity_bytes})")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.capacity_bytes = int(capacity_bytes)
        default_seg = min(64 << 20, self.capacity_bytes // 16)
        self.segment_bytes = max(4096, min(segment_bytes or default_seg, self.capacity_bytes // 4))
        self.fsync_each_append = fsync_each_append
        self.full_policy = full_policy
        self.alarm_ratio = alarm_ratio
        self.dropped_entries = 0
        self.dropped_bytes = 0
        self.quarantined_entries = 0
        self.quarantine_dropped_entries = 0
        self.quarantine_capacity = self.capacity_bytes // 4
        self.write_error: str | None = None  # acks or a deletion failed, to retry by sync()
        self.sync_error: str | None = None  # the last sync's fsync failed
        self._acks_dirty = False
        self._torn_tail = False  # the last segment may hold bytes past its last record (a failed write)
        self._to_unlink: list[Path] = []
        self._quarantine_size = 0
        self.torn_bytes = 0  # cut off at open: torn or corrupt tails
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []  # first_seq of each segment, for bisect
        self._acked: list[list[int]] = []  # sorted disjoint inclusive [first, last] intervals
        self._wfd: int | None = None  # append descriptor of the last segment
        self._to_sync: list[int] = []  # write descriptors of rotated segments, fsynced and closed by sync()
        self._dirty = False
        self._dir_dirty = False
        self._size = 0  # bytes of records in all segments
        self._unacked_bytes = 0
        self._unacked_entries = 0
        self._closed = False
        self._open()

    # ---------------------------------------------------------------- opening and recovery

    def _open(self) -> None:
        acked, acks_ok = self._read_acks()
        for p in sorted(self.path.glob("*" + SEGMENT_SUFFIX)):
            try:
                first = int(p.stem)
            except ValueError:
                log.warning("spool_stray_file", path=str(p))
                continue
            self._segments.append(_Segment(first, p))
        last_index = len(self._segments) - 1
        for i, seg in enumerate(self._segments):
            self._scan(seg, verify=(i == last_index))
        # A gap or overlap between segments means a segment was lost or mangled: trust the file
        # names for the order and drop records that would go backwards.
        kept: list[_Segment] = []
        for seg in self._segments:
            if kept and seg.first_seq <= kept[-1].last_seq:
                log.error("spool_overlapping_segment", path=str(seg.path), first_seq=seg.first_seq)
                self._unlink(seg)
                continue
            if not seg.offsets and seg is not self._segments[-1]:
                self._unlink(seg)  # an empty segment left by a crash right after a rotation
                continue
            kept.append(seg)
        self._segments = kept
        self._firsts = [s.first_seq for s in kept]
        self._quarantine_size = self.quarantine_path.stat().st_size if self.quarantine_path.exists() else 0
        self._size = sum(s.end for s in kept) + self._quarantine_size
        self._acked = acked
        if kept and not acks_ok:
            log.warning(
                "spool_acks_unreadable",
                path=str(self.path / "acks"),
                consequence="everything still in the spool is delivered again",
            )
        nxt = self._next_seq_from_disk()
        self._normalise_acks(nxt)
        self._unacked_entries, self._unacked_bytes = self._count_unacked()
        self._delete_acked_segments()
        if self._segments:
            self._wfd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        if self.torn_bytes:
            log.warning("spool_torn_tail_dropped", path=str(self.path), bytes=self.torn_bytes)

    def _read_acks(self) -> tuple[list[list[int]], bool]:
        p = self.path / "acks"
        if not p.exists():
            return [], True
        try:
            data = json.loads(p.read_text())
            intervals = sorted([int(a), int(b)] for a, b in data["acked"])
            if any(a > b for a, b in intervals):
                raise ValueError("reversed interval")
            return _merge(intervals), True
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("spool_acks_corrupt", path=str(p), error=str(e))
            return [], False

    def _scan(self, seg: _Segment, verify: bool) -> None:
        """Index ``seg``'s records; cut the file at the first record that is torn or corrupt.

        Only the last segment (where a crash can tear a record) has its CRCs checked here;
        ``peek`` checks every record it returns.
        """
        size = seg.path.stat().st_size
        with open(seg.path, "rb") as f:
            data = f.read() if verify else None
            pos = 0
            expect = seg.first_seq
            while pos + HEADER_SIZE <= size:
                if data is not None:
                    head = data[pos : pos + HEADER_SIZE]
                else:
                    f.seek(pos)
                    head = f.read(HEADER_SIZE)
                magic, _flags, length, seq, crc = _HEADER.unpack(head)
                if magic != _MAGIC or seq != expect or length > MAX_PAYLOAD or pos + HEADER_SIZE + length > size:
                    break
                if data is not None:
                    payload = memoryview(data)[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
                    if _crc(head[:_CRC_SPAN], payload) != crc:
                        break
                seg.offsets.append(pos)
                pos += HEADER_SIZE + length
                expect += 1
        seg.end = pos
        if pos < size:
            self.torn_bytes += size - pos
            log.warning("spool_record_cut", path=str(seg.path), offset=pos, bytes=size - pos, last_good_seq=expect - 1)
            with open(seg.path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())

    def _next_seq_from_disk(self) -> int:
        if self._segments:
            return self._segments[-1].last_seq + 1
        return (self._acked[-1][1] + 1) if self._acked else 1

    def _normalise_acks(self, next_seq: int) -> None:
        """Forget acknowledgements of sequence numbers no longer on disk (keep the highest, so that
        numbering continues after a restart with an empty spool)."""
        floor = self._segments[0].first_seq if self._segments else next_seq
        keep = [[max(a, floor), b] for a, b in self._acked if b >= floor]
        self._acked = _merge(([[floor - 1, floor - 1]] if floor > 1 else []) + keep)
        self._acked = [[a, min(b, next_seq - 1)] for a, b in self._acked if a <= next_seq - 1]

    def _count_unacked(self) -> tuple[int, int]:
        entries = sum(len(seg.offsets) for seg in self._segments)
        nbytes = sum(seg.end for seg in self._segments)
        for a, b in self._acked:
            e, n = self._range_size(a, b)
            entries -= e
            nbytes -= n
        return entries, nbytes

    # ---------------------------------------------------------------- properties

    @property
    def size_bytes(self) -> int:
        """Bytes of the segments and the quarantine file on disk: what ``capacity_bytes`` bounds."""
        return self._size

    @property
    def backlog_bytes(self) -> int:
        """Bytes (records with their headers) not acknowledged yet."""
        return self._unacked_bytes

    @property
    def backlog_entries(self) -> int:
        """Entries (batches) not acknowledged yet."""
        return self._unacked_entries

    @property
    def fill_ratio(self) -> float:
        """``size_bytes / capacity_bytes``: at ``alarm_ratio`` (0.8) the owner raises an alarm."""
        return self._size / self.capacity_bytes

    @property
    def next_seq(self) -> int:
        """Sequence number the next ``append`` will get."""
        with self._lock:
            return self._next_seq_from_disk()

    @property
    def quarantine_path(self) -> Path:
        return self.path / "quarantine.lp"

    # ---------------------------------------------------------------- append

    def append(self, payload: bytes) -> int | None:
        """Append one batch; return its sequence number, or None if it was not stored (spool full
        under ``drop_newest``, or a disk error: both logged and counted in ``dropped_*``).

        Never blocks on the database and never raises for a full spool or a failing disk.
        """
        try:
            return self.try_append(payload)
        except OSError as e:
            self._count_drop(1, HEADER_SIZE + len(payload), f"disk error: {e}")
            return None

    def try_append(self, payload: bytes) -> int | None:
        """As :meth:`append`, but a disk error raises ``OSError`` with the spool unchanged (the
        batch is not in it; append it again once the disk is back)."""
        rec_size = HEADER_SIZE + len(payload)
        with self._lock:
            if self._closed:
                raise RuntimeError("spool is closed")
            if rec_size > self.segment_bytes or len(payload) > MAX_PAYLOAD:
                self._count_drop(1, rec_size, "batch larger than a segment")
                return None
            if self._size + rec_size > self.capacity_bytes and not self._make_room(rec_size):
                return None
            if self._wfd is None or self._segments[-1].end + rec_size > self.segment_bytes:
                self._rotate()
            fd = self._wfd
            assert fd is not None  # _rotate leaves the last segment open for appending
            seg = self._segments[-1]
            if self._torn_tail and os.fstat(fd).st_size != seg.end:
                # A failed write left bytes the disk would not let us cut: never append after
                # them (the record would not be at its offset). Raises while the disk refuses.
                os.ftruncate(fd, seg.end)
            self._torn_tail = False
            seq = seg.last_seq + 1
            rec = encode_record(seq, payload)
            try:
                n = os.write(fd, rec)
                if n != len(rec):
                    # A regular file takes less than asked only when the disk is full.
                    raise OSError(errno.ENOSPC, f"short write: {n} of {len(rec)} bytes")
                if self.fsync_each_append:
                    os.fsync(fd)
            except OSError:
                # Put the segment back as it was so that the next record starts on a boundary.
                try:
                    os.ftruncate(fd, seg.end)
                except OSError:
                    self._torn_tail = True
                raise
            seg.offsets.append(seg.end)
            seg.end += rec_size
            self._size += rec_size
            self._unacked_bytes += rec_size
            self._unacked_entries += 1
            self._dirty = not self.fsync_each_append
            return seq

    def _rotate(self) -> None:
        """Start a new segment (the previous one is fsynced by the next ``sync``)."""
        first = self._next_seq_from_disk()
        if self._segments and not self._segments[-1].offsets:
            return  # the last segment is still empty: keep appending to it
        if self._wfd is not None:
            if self.fsync_each_append:
                os.close(self._wfd)
            else:
                self._to_sync.append(self._wfd)
            self._wfd = None
        p = self.path / f"{first:020d}{SEGMENT_SUFFIX}"
        self._wfd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._torn_tail = False  # a new file: whatever the last one's tail holds is never appended to
        self._segments.append(_Segment(first, p))
        self._firsts.append(first)
        if self.fsync_each_append:
            self._fsync_dir()
        else:
            self._dir_dirty = True

    def _make_room(self, rec_size: int) -> bool:
        if self.full_policy == "drop_newest":
            self._count_drop(1, rec_size, "spool full, newest batch refused")
            return False
        while self._size + rec_size > self.capacity_bytes:
            if len(self._segments) == 1:
                self._rotate()  # the full policy drops whole segments: close the only one first
            oldest = self._segments[0]
            if oldest is self._segments[-1]:
                # Only possible with the quarantine near its own bound and a record near a
                # segment's size: refuse this batch rather than the quarantine's evidence.
                self._count_drop(1, rec_size, "spool full")
                return False
            before_entries, before_bytes = self._unacked_entries, self._unacked_bytes
            if oldest.offsets:
                self._ack_range(oldest.first_seq, oldest.last_seq)
            lost_entries = before_entries - self._unacked_entries
            lost_bytes = before_bytes - self._unacked_bytes
            self._drop_segment(oldest)
            self._count_drop(lost_entries, lost_bytes, "spool full, oldest segment dropped")
            self._write_acks()
        return True

    def _count_drop(self, entries: int, nbytes: int, reason: str) -> None:
        self.dropped_entries += entries
        self.dropped_bytes += nbytes
        log.error(
            "spool_data_dropped",
            path=str(self.path),
            reason=reason,
            entries=entries,
            bytes=nbytes,
            dropped_entries_total=self.dropped_entries,
            policy=self.full_policy,
        )

    # ---------------------------------------------------------------- reading and acknowledging

    def peek(self, max_bytes: int, start: int | None = None, stop: int | None = None) -> list[tuple[int, bytes]]:
        """The oldest unacknowledged entries, in sequence order, as ``(seq, payload)``.

        Their payloads add up to at most ``max_bytes`` (but at least one entry is returned when
        there is one). ``start`` / ``stop`` restrict to ``start <= seq < stop``. Acknowledged
        entries are skipped. A record whose CRC fails (disk corruption) is quarantined and skipped.
        """
        with self._lock:
            end = self._next_seq_from_disk() if stop is None else min(stop, self._next_seq_from_disk())
            out: list[tuple[int, bytes]] = []
            total = 0
            seq = self._next_unacked(start if start is not None else 0)
            while seq is not None and seq < end:
                # A run of unacknowledged records of one segment, sized from the offsets alone,
                # then read with one pread.
                seg = self._segment_of(seq)
                run_last = min(seg.last_seq, end - 1, self._next_acked_after(seq) - 1)
                offsets, base, n = seg.offsets, seg.first_seq, len(seg.offsets)
                i, stop_i = seq - base, run_last - base
                full = False
                while i <= stop_i:
                    size = (offsets[i + 1] if i + 1 < n else seg.end) - offsets[i] - HEADER_SIZE
                    if (out or i > seq - base) and total + size > max_bytes:
                        full = True
                        break
                    total += size
                    i += 1
                    if total >= max_bytes:
                        full = True
                        break
                if i > seq - base:
                    self._read_run(seg, seq, base + i - 1, out)
                if full:
                    break
                seq = self._next_unacked(base + i)
            return out

    def _segment_of(self, seq: int) -> _Segment:
        return self._segments[bisect.bisect_right(self._firsts, seq) - 1]

    def _read_run(self, seg: _Segment, first: int, last: int, out: list[tuple[int, bytes]]) -> None:
        if seg.rfd is None:
            seg.rfd = os.open(seg.path, os.O_RDONLY)
        offsets, base, n = seg.offsets, seg.first_seq, len(seg.offsets)
        start = offsets[first - base]
        data = os.pread(seg.rfd, _run_bytes(seg, first, last), start)
        view = memoryview(data)
        pos = 0
        for seq in range(first, last + 1):
            i = seq - base
            size = (offsets[i + 1] if i + 1 < n else seg.end) - offsets[i]
            head = view[pos : pos + HEADER_SIZE]
            magic, _flags, length, rseq, crc = _HEADER.unpack(head)
            payload = view[pos + HEADER_SIZE : pos + size]
            if magic != _MAGIC or rseq != seq or length != size - HEADER_SIZE or _crc(head[:_CRC_SPAN], payload) != crc:
                log.error("spool_record_corrupt", path=str(seg.path), seq=seq)
                self._quarantine_locked(seq, bytes(payload), "corrupt record in the spool (CRC mismatch)")
            else:
                out.append((seq, bytes(payload)))
            pos += size

    def ack(self, seq: int) -> None:
        """Acknowledge entry ``seq`` (the database accepted it). Persisted before returning."""
        self.ack_all((seq,))

    def ack_all(self, seqs) -> None:
        """Acknowledge several entries with one write of the ``acks`` file."""
        with self._lock:
            changed = False
            for a, b in _runs(sorted(seqs)):
                changed |= self._ack_range(a, b)
            if changed:
                self._delete_acked_segments()
                self._write_acks()

    def _ack_range(self, a: int, b: int) -> bool:
        b = min(b, self._next_seq_from_disk() - 1)
        changed = False
        seq = self._next_unacked(a)
        while seq is not None and seq <= b:
            stop = min(b, self._next_acked_after(seq) - 1)
            entries, nbytes = self._range_size(seq, stop)
            self._unacked_entries -= entries
            self._unacked_bytes -= nbytes
            self._add_acked(seq, stop)
            changed = True
            seq = self._next_unacked(stop + 1)
        return changed

    def _range_size(self, a: int, b: int) -> tuple[int, int]:
        """Entries and record bytes of seqs a..b that are on disk (acknowledged or not)."""
        entries = nbytes = 0
        for seg in self._segments:
            lo, hi = max(a, seg.first_seq), min(b, seg.last_seq)
            if lo <= hi:
                entries += hi - lo + 1
                nbytes += _run_bytes(seg, lo, hi)
        return entries, nbytes

    def _record_size(self, seq: int) -> int | None:
        si = bisect.bisect_right(self._firsts, seq) - 1
        if si < 0:
            return None
        seg = self._segments[si]
        return seg.record_size(seq) if seq <= seg.last_seq else None

    def quarantine(self, seq: int, payload: bytes, reason: str) -> None:
        """Move entry ``seq`` out of the replay path: append it to ``quarantine.lp`` with the reason
        (as a line-protocol comment, so that the file can be corrected and written by hand), fsync,
        then acknowledge it."""
        with self._lock:
            self._quarantine_locked(seq, payload, reason)
            self._delete_acked_segments()
            self._write_acks()

    def _quarantine_locked(self, seq: int, payload: bytes, reason: str) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        one_line = " ".join(reason.split())
        head = f"# quarantined seq={seq} at={when} bytes={len(payload)} reason={one_line}\n".encode()
        body = payload if payload.endswith(b"\n") else payload + b"\n"
        entry = head + body
        self._refresh_quarantine_size()
        if self._quarantine_size + len(entry) > self.quarantine_capacity:
            self._trim_quarantine(len(entry))
        with open(self.quarantine_path, "ab") as f:
            try:
                f.write(entry)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                # No half entry left behind: the caller retries the whole entry later.
                with contextlib.suppress(OSError):
                    f.truncate(self._quarantine_size)
                raise
        self._quarantine_size += len(entry)
        self._size += len(entry)
        self.quarantined_entries += 1
        self._ack_range(seq, seq)

    def _refresh_quarantine_size(self) -> None:
        """The operator may empty or delete quarantine.lp once read: count what is there."""
        try:
            actual = self.quarantine_path.stat().st_size
        except FileNotFoundError:
            actual = 0
        self._size += actual - self._quarantine_size
        self._quarantine_size = actual

    def _trim_quarantine(self, room: int) -> None:
        """Drop the oldest quarantined entries so that ``room`` more bytes fit with a quarter of
        the bound to spare (trims stay rare). Streamed in chunks (the file may be hundreds of MB);
        write-to-temporary + rename: a crash leaves the old file or the new one."""
        size = self._quarantine_size
        need = size + room - self.quarantine_capacity * 3 // 4  # bytes to cut, at least
        keep_from, dropped = size, 0
        with open(self.quarantine_path, "rb") as src:
            for start in _entry_starts(src):
                if start >= need:
                    keep_from = start
                    break
                dropped += 1
            tmp = self.path / "quarantine.tmp"
            with open(tmp, "wb") as f:
                src.seek(keep_from)
                while chunk := src.read(1 << 20):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.quarantine_path)
        self._size -= keep_from
        self._quarantine_size = size - keep_from
        self.quarantine_dropped_entries += dropped
        log.error(
            "spool_quarantine_trimmed",
            path=str(self.quarantine_path),
            dropped_entries=dropped,
            dropped_entries_total=self.quarantine_dropped_entries,
            capacity_bytes=self.quarantine_capacity,
            reason="the quarantine counts against the spool's capacity: oldest rejected batches dropped",
        )

    # ---------------------------------------------------------------- the ack state

    def _next_unacked(self, seq: int) -> int | None:
        """Smallest unacknowledged seq >= ``seq`` that exists on disk, or None."""
        if not self._segments:
            return None
        end = self._next_seq_from_disk()
        seq = max(seq, self._segments[0].first_seq)
        while seq < end:
            i = bisect.bisect_right(self._acked, [seq, float("inf")]) - 1
            if i >= 0 and self._acked[i][0] <= seq <= self._acked[i][1]:
                seq = self._acked[i][1] + 1
                continue
            si = bisect.bisect_right(self._firsts, seq) - 1
            if seq > self._segments[si].last_seq:
                # A gap: records cut off a segment that is not the last (corruption found at open).
                if si + 1 >= len(self._segments):
                    return None
                seq = self._segments[si + 1].first_seq
                continue
            return seq
        return None

    def _next_acked_after(self, seq: int) -> int:
        """First acknowledged seq > ``seq`` (or infinity as a large int)."""
        i = bisect.bisect_right(self._acked, [seq, float("inf")])
        return self._acked[i][0] if i < len(self._acked) else 1 << 62

    def _add_acked(self, a: int, b: int) -> None:
        i = bisect.bisect_left(self._acked, [a, a])
        self._acked.insert(i, [a, b])
        self._acked = _merge(self._acked)

    def _write_acks(self) -> None:
        """Persist the acknowledgements; on a disk error keep them in memory for :meth:`sync` to
        write again (the file lags: entries may be delivered again after a restart, none lost)."""
        try:
            self._write_acks_file()
        except OSError as e:
            if not self._acks_dirty:
                log.error(
                    "spool_acks_write_failed",
                    path=str(self.path / "acks"),
                    error=str(e),
                    consequence="retried at each sync; a restart meanwhile delivers some entries again",
                )
            self._acks_dirty = True
            self.write_error = f"acks: {e}"
            return
        self._acks_dirty = False
        if not self._to_unlink:
            self.write_error = None

    def _write_acks_file(self) -> None:
        tmp = self.path / "acks.tmp"
        data = json.dumps({"acked": self._acked}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if self.fsync_each_append:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / "acks")
        if self.fsync_each_append:
            self._fsync_dir()
        else:
            self._dir_dirty = True

    def _delete_acked_segments(self) -> None:
        """Delete segments whose every entry is acknowledged (never the one being appended to)."""
        while len(self._segments) > 1:
            seg = self._segments[0]
            first_unacked = self._next_unacked(seg.first_seq)
            if first_unacked is not None and first_unacked <= seg.last_seq:
                break
            self._drop_segment(seg)

    def _drop_segment(self, seg: _Segment) -> None:
        self._segments.remove(seg)
        self._firsts = [s.first_seq for s in self._segments]
        self._size -= seg.end
        self._unlink(seg)
        self._dir_dirty = True

    def _unlink(self, seg: _Segment) -> None:
        if seg.rfd is not None:
            os.close(seg.rfd)
            seg.rfd = None
        self._unlink_path(seg.path)

    def _unlink_path(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            # A read-only disk: the file stays (a restart finds it acknowledged, or re-delivers
            # it); sync() tries again.
            log.error("spool_segment_delete_failed", path=str(path), error=str(e))
            if path not in self._to_unlink:
                self._to_unlink.append(path)
            self.write_error = f"delete {path.name}: {e}"

    # ---------------------------------------------------------------- durability and closing

    def sync(self) -> None:
        """fsync what was appended since the last call (and closed segments, and the directory).

        The fsyncs run outside the lock on duplicated descriptors, so a concurrent ``append`` does
        not wait for the disk.
        """
        with self._lock:
            if self._closed:
                return
            self._retry_writes()
            with contextlib.suppress(OSError):
                self._refresh_quarantine_size()
            fds = [os.dup(self._wfd)] if self._dirty and self._wfd is not None else []
            fds += self._to_sync
            self._to_sync = []
            sync_dir = self._dir_dirty
            self._dirty = self._dir_dirty = False
        try:
            for fd in fds:
                os.fsync(fd)
            if sync_dir:
                self._fsync_dir()
        except OSError as e:
            # A disk gone read-only or failing: said in sync_error (the owner alarms), tried again
            # by the next sync. Linux may have dropped the pages it could not write: what was not
            # synced is then as after a power cut (see the module docstring), the CRCs tell.
            with self._lock:
                self._dirty = self._wfd is not None
                self._dir_dirty = self._dir_dirty or sync_dir
                if self.sync_error is None:
                    log.error("spool_sync_failed", path=str(self.path), error=str(e))
                self.sync_error = f"fsync: {e}"
            return
        finally:
            for fd in fds:
                os.close(fd)
        if self.sync_error is not None:
            self.sync_error = None
            log.info("spool_sync_recovered", path=str(self.path))

    def _retry_writes(self) -> None:
        """Writes that failed on a faulty disk (see the module docstring), in their order."""
        if not (self._acks_dirty or self._to_unlink):
            return
        pending, self._to_unlink = self._to_unlink, []
        for path in pending:
            self._unlink_path(path)
        if self._acks_dirty:
            self._write_acks()
        if not self._acks_dirty and not self._to_unlink:
            self.write_error = None
            log.info("spool_writes_recovered", path=str(self.path))

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """fsync and close. Idempotent."""
        if self._closed:
            return
        self.sync()
        with self._lock:
            self._closed = True
            for fd in self._to_sync:
                os.close(fd)
            self._to_sync = []
            if self._wfd is not None:
                os.close(self._wfd)
                self._wfd = None
            for seg in self._segments:
                if seg.rfd is not None:
                    os.close(seg.rfd)
                    seg.rfd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _entry_starts(f, chunk_size: int = 1 << 20):
    """Offsets of the quarantine file's entries, in order, read in chunks: each entry starts
    with a '# quarantined ' line."""
    marker = b"# quarantined "
    f.seek(0)
    if f.read(len(marker)) == marker:
        yield 0
    sep = b"\n" + marker
    base, carry = 0, b""
    f.seek(0)
    while chunk := f.read(chunk_size):
        data = carry + chunk
        pos = data.find(sep)
        while pos >= 0:
            yield base + pos + 1
            pos = data.find(sep, pos + 1)
        keep = len(sep) - 1  # a separator split across two chunks is found in the next one
        carry = data[-keep:]
        base += len(data) - len(carry)


def _run_bytes(seg: _Segment, first: int, last: int) -> int:
    """Bytes of the records first..last of ``seg`` (consecutive, all in the segment)."""
    end = seg.offsets[last + 1 - seg.first_seq] if last < seg.last_seq else seg.end
    return end - seg.offsets[first - seg.first_seq]


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _runs(seqs: list[int]):
    """Consecutive runs of sorted integers, as (first, last)."""
    it = iter(seqs)
    try:
        a = b = next(it)
    except StopIteration:
        return
    for s in it:
        if s == b + 1 or s == b:
            b = s
        else:
            yield a, b
            a = b = s
    yield a, b
