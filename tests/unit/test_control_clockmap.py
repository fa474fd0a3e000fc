"""The operations clock's record (clock.json) and its map between real time and clock time."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from scada.control import clockmap
from scada.control.clockmap import CLOCK_FILE, ClockMap, ClockRecordError, Segment, append_segment, read_segments
from scada.control.schedules import ScheduleClock

NS = 10**9
H = 3600 * NS
REAL = int(datetime(2026, 12, 5, 20, tzinfo=UTC).timestamp()) * NS  # when the server started
SIM = int(datetime(2026, 10, 1, 17, tzinfo=UTC).timestamp()) * NS  # --clock-start


class Ticks:
    """A wall clock and a monotonic clock that the test moves together."""

    def __init__(self, wall: int) -> None:
        self.wall, self.mono = wall, 5 * NS

    def advance(self, ns: int) -> None:
        self.wall += ns
        self.mono += ns


def test_production_is_the_identity_and_keeps_one_segment(tmp_path):
    ticks = Ticks(REAL)
    clock = ScheduleClock(wall_ns=lambda: ticks.wall, monotonic_ns=lambda: ticks.mono)
    seen = []
    clock.when_anchored(seen.append)  # anchored when built: called at once
    assert seen == [(REAL, REAL, 1.0)]
    assert append_segment(tmp_path, Segment(*seen[0])) is True
    # a restart in real time: the same line, nothing added
    assert append_segment(tmp_path, Segment(REAL + H, REAL + H, 1.0)) is False
    m, note = clockmap.load(tmp_path)
    assert note is None and m.identity and m.monotone
    t = np.array([REAL - 40 * 86400 * NS, REAL, REAL + 123_456_789], np.int64)
    assert m.to_clock(t) is t or np.array_equal(m.to_clock(t), t)
    assert m.clock_at(REAL + 7) == REAL + 7
    assert m.real_window(REAL, REAL + H) == (REAL, REAL + H)


def test_an_accelerated_clock_maps_the_real_stamps_as_it_reads(tmp_path):
    ticks = Ticks(REAL)
    clock = ScheduleClock(SIM, 60.0, wall_ns=lambda: ticks.wall, monotonic_ns=lambda: ticks.mono)
    seen = []
    clock.when_anchored(seen.append)
    assert seen == []  # a simulated clock anchors when first read (the schedules' start)
    ticks.advance(2 * NS)
    assert clock.now_ns() == SIM
    assert seen == [(REAL + 2 * NS, SIM, 60.0)]
    append_segment(tmp_path, Segment(*seen[0]))
    m, note = clockmap.load(tmp_path)
    assert note is None and not m.identity and m.monotone
    readings = []
    for step in (NS, 59 * NS, 3 * H):
        ticks.advance(step)
        readings.append((ticks.wall, clock.now_ns()))
    real, read = np.array(readings).T
    assert np.array_equal(m.to_clock(real), read)  # what the clock read at those real instants
    assert m.clock_at(int(real[-1])) == int(read[-1])
    # a clock hour is a real minute: the window back to real time, a ns wider at each edge
    lo, hi = m.real_window(SIM + H, SIM + 2 * H)
    assert lo == REAL + 2 * NS + 60 * NS - 1 and hi == REAL + 2 * NS + 120 * NS + 1
    # stamps written before the clock anchored (the server's first points) follow its line back
    assert m.clock_at(REAL) == SIM - 120 * NS


def test_a_restart_adds_a_segment(tmp_path):
    # first run: x60 from 17:00 simulated, stopped 30 real min later (30 clock hours)
    append_segment(tmp_path, Segment(REAL, SIM, 60.0))
    # restarted an hour later with --clock-start at where it stopped, x120
    restart_real, restart_clock = REAL + 90 * 60 * NS, SIM + 30 * H
    append_segment(tmp_path, Segment(restart_real, restart_clock, 120.0))
    assert [s.acceleration for s in read_segments(tmp_path)] == [60.0, 120.0]
    m, note = clockmap.load(tmp_path)
    assert note is None and m.monotone
    first = m.to_clock(np.array([REAL + 60 * NS, REAL + 29 * 60 * NS], np.int64))
    assert first.tolist() == [SIM + H, SIM + 29 * H]  # the first line until the restart
    assert m.clock_at(restart_real + 30 * NS) == restart_clock + H  # the second after it
    # a clock window over both runs reads both real spans (and the hour between: nothing recorded)
    lo, hi = m.real_window(SIM, SIM + 31 * H)
    assert lo == REAL - 1 and hi == restart_real + 30 * NS + 1
    # the first run's last clock hour: nothing of the second run is read
    assert m.real_window(SIM + 29 * H, SIM + 30 * H) == (REAL + 29 * 60 * NS - 1, REAL + 30 * 60 * NS + 1)


def test_a_restart_without_clock_origin_that_rewinds_is_said():
    m = ClockMap([Segment(REAL, SIM, 60.0), Segment(REAL + H, SIM, 60.0)])
    assert not m.monotone
    t = m.to_clock(np.array([REAL + 60 * NS, REAL + H + 60 * NS], np.int64))
    assert t.tolist() == [SIM + H, SIM + H]  # both runs at the same clock time


def test_a_rewound_record_is_noted(tmp_path):
    append_segment(tmp_path, Segment(REAL, SIM, 60.0))
    append_segment(tmp_path, Segment(REAL + H, SIM, 60.0))
    m, note = clockmap.load(tmp_path)
    assert not m.monotone and "went back" in note and "--clock-origin" in note


@pytest.mark.parametrize(
    "text, said",
    [
        (None, "no clock record"),
        ("{not json", "not JSON"),
        ('{"format": 2, "segments": []}', "not a clock record"),
        ('{"format": 1, "segments": []}', "no segment"),
        ('{"format": 1, "segments": [[1, 2, 3]]}', "segment 0: expected an object"),
        ('{"format": 1, "segments": [{"real_ns": "1", "clock_ns": 2, "acceleration": 1}]}', "real_ns must be"),
        ('{"format": 1, "segments": [{"real_ns": 1, "clock_ns": 2, "acceleration": 0}]}', "acceleration must be"),
        ('{"format": 1, "segments": [{"real_ns": 1, "clock_ns": 2, "acceleration": true}]}', "acceleration must be"),
        ('{"format": 1, "segments": [{"real_ns": 1, "clock_ns": 2.5, "acceleration": 1}]}', "clock_ns must be"),
    ],
)
def test_a_missing_or_garbage_record_falls_back_to_real_time(tmp_path, text, said):
    if text is not None:
        (tmp_path / CLOCK_FILE).write_text(text)
    m, note = clockmap.load(tmp_path)
    assert m.identity and said in note and "real time" in note
    if text is not None:
        with pytest.raises(ClockRecordError, match=CLOCK_FILE):
            read_segments(tmp_path)


def test_bytes_that_are_not_text_fall_back_too(tmp_path):
    (tmp_path / CLOCK_FILE).write_bytes(b"\xff\xfe\x00garbage")
    m, note = clockmap.load(tmp_path)
    assert m.identity and "cannot be read" in note


def test_the_running_clock_is_used_when_its_record_failed(tmp_path):
    running = Segment(REAL, SIM, 60.0)
    m, note = clockmap.load(tmp_path, running)
    assert not m.identity and m.clock_at(REAL + NS) == SIM + 60 * NS
    assert "no clock record" in note and "running clock" in note


def test_appending_over_garbage_keeps_it_aside(tmp_path):
    (tmp_path / CLOCK_FILE).write_text("garbage from a full disk")
    append_segment(tmp_path, Segment(REAL, SIM, 60.0))
    assert (tmp_path / (CLOCK_FILE + ".bad")).read_text() == "garbage from a full disk"
    doc = json.loads((tmp_path / CLOCK_FILE).read_text())
    assert doc == {"format": 1, "segments": [{"real_ns": REAL, "clock_ns": SIM, "acceleration": 60.0}]}
    assert not (tmp_path / (CLOCK_FILE + ".tmp")).exists()
