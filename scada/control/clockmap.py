"""The operations clock's record and its map between real time and clock time.

The work orders are stamped with the operations clock (:class:`scada.control.schedules.ScheduleClock`:
real time in production, simulated time with ``scada run --clock-start/--acceleration``); the
history store and the alarm journal stamp real time. The contract is judged in the operations
clock, so the KPIs (:mod:`scada.operations.kpi_service`) map the real stamps into it when they
read them, and a clock window back to real time to know what to read.

**The record.** Each time the server's clock anchors (at start; a simulated clock when first
read) the server appends a *segment* to ``<data>/clock.json``: the real instant (ns), the clock's
reading then (ns) and its acceleration. A restart adds one. From a segment's real instant on, up
to the next one's, clock = clock_ns + (real - real_ns) x acceleration; stamps before the first
segment follow the first one's line (a server writes a few points before its clock anchors).

A small JSON file rewritten whole (temporary file, fsync, rename) rather than a table of the
work-order journal: the clock runs in every server, with or without operations.yaml, it is
written once per start, and an operator can read it. A real-time start after a real-time segment
adds nothing (the same line): a production server's file keeps one segment.

**Reading.** :func:`load` never raises: a missing or unreadable record gives the identity (real
time) and a note saying why, which ``scada report`` prints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLOCK_FILE = "clock.json"
FORMAT = 1


class ClockRecordError(ValueError):
    """The clock record cannot be read or holds something that is not a segment: says which."""


@dataclass(frozen=True, slots=True)
class Segment:
    """The clock read ``clock_ns`` at the real instant ``real_ns`` and ran ``acceleration`` times
    faster than real time from then."""

    real_ns: int
    clock_ns: int
    acceleration: float

    def __post_init__(self) -> None:
        for name in ("real_ns", "clock_ns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ClockRecordError(f"{name} must be an integer (ns), got {v!r}")
        a = self.acceleration
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and a > 0):
            raise ClockRecordError(f"acceleration must be a number above 0, got {a!r}")

    @property
    def real_time(self) -> bool:
        return self.real_ns == self.clock_ns and self.acceleration == 1.0


def read_segments(data_dir: str | Path) -> list[Segment] | None:
    """The segments of ``<data_dir>/clock.json`` in real-time order; None when there is no file;
    ClockRecordError when it is not a clock record."""
    path = Path(data_dir) / CLOCK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClockRecordError(f"{path}: cannot be read: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ClockRecordError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("segments"), list):
        raise ClockRecordError(f'{path}: not a clock record (expected {{"format": {FORMAT}, "segments": [...]}})')
    out = []
    for k, item in enumerate(doc["segments"]):
        if not isinstance(item, dict):
            raise ClockRecordError(f"{path}: segment {k}: expected an object, got {item!r}")
        try:
            out.append(Segment(item.get("real_ns"), item.get("clock_ns"), item.get("acceleration")))  # type: ignore[arg-type]
        except ClockRecordError as exc:
            raise ClockRecordError(f"{path}: segment {k}: {exc}") from None
    if not out:
        raise ClockRecordError(f"{path}: no segment")
    return sorted(out, key=lambda s: s.real_ns)


def append_segment(data_dir: str | Path, segment: Segment) -> bool:
    """Add ``segment`` to the record (rewritten whole, atomically); False when it adds nothing (a
    real-time segment after a real-time one). An unreadable record is kept aside as
    ``clock.json.bad`` (nothing lost) and a new one started; OSError when the disk refuses."""
    folder = Path(data_dir)
    path = folder / CLOCK_FILE
    try:
        segments = read_segments(folder) or []
    except ClockRecordError:
        os.replace(path, path.with_name(CLOCK_FILE + ".bad"))
        segments = []
    if segments and segments[-1].real_time and segment.real_time:
        return False
    segments.append(segment)
    doc = {"format": FORMAT, "segments": [{"real_ns": s.real_ns, "clock_ns": s.clock_ns,
                                           "acceleration": s.acceleration} for s in segments]}  # fmt: skip
    tmp = path.with_name(CLOCK_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # the rename itself survives a power cut once the folder is synced
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


class ClockMap:
    """Real time -> clock time, piecewise linear over the record's segments (the identity
    without one). ``identity``: real time throughout (production): every stamp is kept exact.
    ``monotone``: no restart set the clock back to an earlier run's start or before (a simulated run
    restarted without ``--clock-origin`` starts its clock again at ``--clock-start``: its runs
    overlap in clock time). A restart at a later clock time, even one before where the previous
    line would have got to, is not a rewind: the record does not say when a run stopped, and a
    run restarted with ``--clock-start`` where it stopped is the usual way to go on."""

    def __init__(self, segments: Sequence[Segment] = ()) -> None:
        self.segments = sorted(segments, key=lambda s: s.real_ns)
        self.identity = all(s.real_time for s in self.segments)
        self._real = np.array([s.real_ns for s in self.segments], np.int64)
        self.monotone = all(b.clock_ns > a.clock_ns for a, b in zip(self.segments, self.segments[1:]))

    @staticmethod
    def _line(s: Segment, real_ns: int) -> int:
        if s.acceleration == 1.0:
            return s.clock_ns + (real_ns - s.real_ns)  # exact in int64
        return s.clock_ns + round((real_ns - s.real_ns) * s.acceleration)

    def clock_at(self, real_ns: int) -> int:
        """The clock's reading at the real instant ``real_ns``."""
        if self.identity:
            return int(real_ns)
        k = max(0, int(np.searchsorted(self._real, real_ns, "right")) - 1)
        return self._line(self.segments[k], int(real_ns))

    def to_clock(self, real_ns: np.ndarray) -> np.ndarray:
        """Real stamps (int64 ns) as clock stamps (int64 ns), same order."""
        t = np.asarray(real_ns, np.int64)
        if self.identity:
            return t
        k = np.maximum(np.searchsorted(self._real, t, "right") - 1, 0)
        real0 = self._real[k]
        clock0 = np.array([s.clock_ns for s in self.segments], np.int64)[k]
        acc = np.array([s.acceleration for s in self.segments], np.float64)[k]
        delta = t - real0
        scaled = np.where(acc == 1.0, delta, np.round(delta * acc).astype(np.int64))
        return clock0 + scaled

    def real_window(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """The real ``[lo, hi)`` holding every real instant whose clock reading is in
        ``[start_ns, end_ns)`` (lo == hi: none); a little wider at the edges (a ns of rounding):
        the reader maps what it reads and keeps what falls in the window."""
        if self.identity:
            return int(start_ns), int(end_ns)
        lo: int | None = None
        hi: int | None = None
        segs = self.segments
        for k, s in enumerate(segs):
            # the segment's real domain: the first reaches back, the last forward, without end
            d0 = -math.inf if k == 0 else s.real_ns
            d1 = math.inf if k == len(segs) - 1 else segs[k + 1].real_ns
            r0 = max(d0, s.real_ns + (start_ns - s.clock_ns) / s.acceleration)
            r1 = min(d1, s.real_ns + (end_ns - s.clock_ns) / s.acceleration)
            if r1 <= r0:
                continue
            a, b = math.floor(r0) - 1, math.ceil(r1) + 1
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        if lo is None or hi is None:
            return int(start_ns), int(start_ns)
        return lo, hi


def load(data_dir: str | Path, current: Segment | None = None) -> tuple[ClockMap, str | None]:
    """The map of ``<data_dir>``'s clock record and a note for the reader when it falls back to
    real time (no record, an unreadable one) or the clock went back at a restart; None when all
    is well. ``current``: the running clock's segment, added when the record lacks it (its write
    failed): the live figures of a running server always follow its own clock. Never raises."""
    try:
        segments = read_segments(data_dir)
        note = (
            None if segments is not None else f"no clock record ({CLOCK_FILE}) in {data_dir}: stamps read as real time"
        )
    except ClockRecordError as exc:
        segments, note = None, f"clock record unusable ({exc}): stamps read as real time"
    segments = list(segments or [])
    same_line = bool(segments) and segments[-1].real_time and current is not None and current.real_time
    if current is not None and current not in segments and not same_line:
        segments.append(current)
        if note is not None:
            note += "; but for the running clock's own segment"
    m = ClockMap(segments)
    if not m.monotone:
        went_back = (
            "the clock went back at a restart (a simulated run restarted without --clock-origin): "
            "its runs overlap in clock time and are read together"
        )
        note = went_back if note is None else f"{note}; {went_back}"
    return m, note
