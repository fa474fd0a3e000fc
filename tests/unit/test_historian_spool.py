"""The historian's durable spool (and the line protocol it carries): no network, tmp_path only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from scada import status as st
from scada.historian.influx import TagMeta, encode_lines, escape_key, escape_measurement
from scada.historian.spool import HEADER_SIZE, Spool, encode_record


def payload(i: int, size: int = 40) -> bytes:
    head = f"m,d=x v={i} {i}\n".encode()
    return head + b"#" * max(0, size - len(head) - 1) + b"\n" if size > len(head) else head


def seqs(entries):
    return [s for s, _ in entries]


# ---------------------------------------------------------------- append, peek, ack, reopen

def test_append_peek_ack_and_reopen(tmp_path):
    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20)
    got = [sp.append(payload(i)) for i in range(10)]
    assert got == list(range(1, 11))
    assert sp.backlog_entries == 10 and sp.backlog_bytes == sp.size_bytes
    first = sp.peek(1 << 20)
    assert seqs(first) == got and [p for _, p in first] == [payload(i) for i in range(10)]
    # peek does not consume: the same entries again until acknowledged
    assert seqs(sp.peek(1 << 20)) == got
    sp.ack_all([1, 2, 3])
    sp.ack(5)  # out of order (the live lane acknowledges ahead of the backlog)
    assert seqs(sp.peek(1 << 20)) == [4, 6, 7, 8, 9, 10]
    assert sp.backlog_entries == 6
    sp.close()

    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20)
    assert seqs(sp.peek(1 << 20)) == [4, 6, 7, 8, 9, 10]
    assert sp.backlog_entries == 6
    assert sp.append(payload(10)) == 11  # numbering continues, never reused
    sp.close()


def test_peek_respects_max_bytes_start_and_stop(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        for i in range(10):
            sp.append(payload(i, 100))
        assert seqs(sp.peek(250)) == [1, 2]
        assert seqs(sp.peek(10)) == [1]  # always at least one entry
        assert seqs(sp.peek(1 << 20, start=7)) == [7, 8, 9, 10]
        assert seqs(sp.peek(1 << 20, stop=4)) == [1, 2, 3]
        sp.ack_all([7, 8])
        assert seqs(sp.peek(1 << 20, start=7)) == [9, 10]
        assert sp.peek(1 << 20, start=11) == []


def test_acknowledged_segments_are_deleted_and_numbering_survives_an_empty_spool(tmp_path):
    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096)
    for i in range(100):
        sp.append(payload(i, 200))
    segs = list((tmp_path / "s").glob("*.seg"))
    assert len(segs) > 3
    big = sp.size_bytes
    sp.ack_all(range(1, 101))
    assert sp.backlog_entries == 0 and sp.backlog_bytes == 0
    assert sp.size_bytes < big and len(list((tmp_path / "s").glob("*.seg"))) == 1
    assert sp.peek(1 << 20) == []
    sp.close()
    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096)
    assert sp.peek(1 << 20) == [] and sp.backlog_entries == 0
    assert sp.append(b"x\n") == 101
    sp.close()


def test_fsync_each_append_mode(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096, fsync_each_append=True) as sp:
        for i in range(50):
            sp.append(payload(i, 300))
        sp.ack_all(range(1, 20))
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        assert seqs(sp.peek(1 << 20)) == list(range(20, 51))


# ---------------------------------------------------------------- crashes

def test_torn_last_record_is_cut_off(tmp_path):
    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20)
    for i in range(5):
        sp.append(payload(i))
    sp.ack(1)
    sp.close()
    seg = max((tmp_path / "s").glob("*.seg"))
    with open(seg, "ab") as f:  # a crash in the middle of writing record 6
        f.write(encode_record(6, payload(5, 500))[:300])
    size_with_torn = seg.stat().st_size

    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20)
    assert sp.torn_bytes == 300
    assert seg.stat().st_size == size_with_torn - 300
    assert seqs(sp.peek(1 << 20)) == [2, 3, 4, 5]
    assert sp.append(payload(99)) == 6  # the torn record's number is given to the next append
    assert sp.peek(1 << 20)[-1] == (6, payload(99))
    sp.close()


def test_record_with_a_bad_crc_at_the_tail_is_cut_off(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        for i in range(3):
            sp.append(payload(i))
    seg = max((tmp_path / "s").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF  # a complete record whose bytes are not the ones written (power cut)
    seg.write_bytes(bytes(data))
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        assert seqs(sp.peek(1 << 20)) == [1, 2]
        assert sp.torn_bytes == HEADER_SIZE + len(payload(2))


def test_corrupt_record_inside_the_spool_is_quarantined_not_sent(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096) as sp:
        for i in range(60):
            sp.append(payload(i, 200))
    first_seg = min((tmp_path / "s").glob("*.seg"))
    data = bytearray(first_seg.read_bytes())
    data[HEADER_SIZE + 5] ^= 0xFF  # payload of record 1, in a segment that is not the last
    first_seg.write_bytes(bytes(data))
    with Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096) as sp:
        got = sp.peek(1 << 20)
        assert seqs(got) == list(range(2, 61))
        assert sp.quarantined_entries == 1
        assert b"seq=1 " in sp.quarantine_path.read_bytes()


WRITER = textwrap.dedent("""
    import sys, os
    from scada.historian.spool import Spool
    sp = Spool(sys.argv[1], capacity_bytes=1 << 30, segment_bytes=8 << 20)
    out = os.fdopen(1, "w", buffering=1)
    i = 0
    while True:
        size = (i * 7919) % 400_000 + 10
        body = (b"%d:" % i) + bytes([65 + i % 26]) * size + b"\\n"
        seq = sp.append(body)
        out.write(f"W {seq} {i}\\n")
        if i % 3 == 0:
            sp.ack(seq)
            out.write(f"A {seq}\\n")
        i += 1
""")


def check_body(seq_to_i, seq, body):
    i = int(body.split(b":", 1)[0])
    size = (i * 7919) % 400_000 + 10
    assert body == (b"%d:" % i) + bytes([65 + i % 26]) * size + b"\n", f"entry {seq} is corrupt"
    return i


def test_sigkill_of_a_writer_mid_append_loses_nothing_acknowledged_and_leaves_no_corrupt_entry(tmp_path):
    """Kill, reopen and check, three times over the same folder, while records up to 400 kB are
    being written. (Linux finishes a write(2) to a regular file before a SIGKILL takes effect in
    practice, so torn records come from power cuts and full disks: forged in the tests above.)"""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    log = tmp_path / "writer.log"
    folder = tmp_path / "s"
    written: dict[int, int] = {}
    acked: set[int] = set()
    for attempt in range(3):  # kill, reopen and write again, kill again
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=out)
            # Killed in the middle of writing: once it has written some dozens of records (a
            # count, since how long the interpreter takes to start depends on the machine).
            deadline = time.monotonic() + 60
            while log.read_text().count("\nW ") < 50 + 25 * attempt:
                assert proc.poll() is None and time.monotonic() < deadline, "the writer did not write"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "W":
                written[int(parts[1])] = int(parts[2])
            elif len(parts) == 2 and parts[0] == "A":
                acked.add(int(parts[1]))
        assert written, "the writer wrote nothing"
        with Spool(folder, capacity_bytes=1 << 30, segment_bytes=8 << 20) as sp:
            got = sp.peek(1 << 40)
            got_seqs = seqs(got)
            assert got_seqs == sorted(got_seqs)
            for seq, body in got:
                i = check_body(written, seq, body)
                if seq in written:
                    assert written[seq] == i
            # everything acknowledged stays acknowledged
            assert not acked & set(got_seqs)
            # everything append() returned for and not acknowledged is there; the exceptions are
            # the record being written at the kill (there or cut off) and the last one written if
            # its ack() was in progress (acknowledged or not)
            in_flight_ack = {max(written)} if written[max(written)] % 3 == 0 else set()
            assert set(written) - acked - set(got_seqs) <= in_flight_ack
            acked |= in_flight_ack - set(got_seqs)
            assert len(set(got_seqs) - set(written)) <= 1


# ---------------------------------------------------------------- full policies

def test_full_spool_drops_the_oldest_segment_and_counts_it(tmp_path):
    sp = Spool(tmp_path / "s", capacity_bytes=64 * 1024, segment_bytes=8 * 1024)
    for i in range(300):
        assert sp.append(payload(i, 1000)) == i + 1  # never refused, never blocks
        assert sp.size_bytes <= sp.capacity_bytes
    assert sp.dropped_entries > 0
    left = seqs(sp.peek(1 << 20))
    assert left == list(range(left[0], 301))  # the newest are kept, in order, contiguous
    assert sp.dropped_entries == left[0] - 1
    assert sp.fill_ratio <= 1.0
    assert sp.backlog_entries == len(left)
    sp.close()
    with Spool(tmp_path / "s", capacity_bytes=64 * 1024, segment_bytes=8 * 1024) as sp:
        assert seqs(sp.peek(1 << 20)) == left


def test_full_spool_can_refuse_the_newest_instead(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=64 * 1024, segment_bytes=8 * 1024,
               full_policy="drop_newest") as sp:
        results = [sp.append(payload(i, 1000)) for i in range(300)]
        stored = [r for r in results if r is not None]
        assert results.count(None) == sp.dropped_entries > 0
        assert seqs(sp.peek(1 << 20)) == stored == list(range(1, len(stored) + 1))
        assert sp.fill_ratio > 0.8
        sp.ack_all(stored[:20])  # the sink catches up a little: room again
        assert sp.append(payload(1, 1000)) is not None


def test_bad_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="full_policy"):
        Spool(tmp_path / "s", full_policy="block")


# ---------------------------------------------------------------- quarantine

def test_quarantine_moves_a_batch_out_of_the_replay_path(tmp_path):
    sp = Spool(tmp_path / "s", capacity_bytes=1 << 20)
    for i in range(4):
        sp.append(payload(i))
    sp.quarantine(2, payload(1), "HTTP 400 Bad Request: too long line\nsecond line")
    assert seqs(sp.peek(1 << 20)) == [1, 3, 4]
    assert sp.quarantined_entries == 1
    text = sp.quarantine_path.read_text()
    assert text.startswith("# quarantined seq=2 ")
    assert "reason=HTTP 400 Bad Request: too long line second line\n" in text
    assert payload(1).decode() in text
    sp.close()
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        assert seqs(sp.peek(1 << 20)) == [1, 3, 4]


def test_unreadable_acks_file_means_delivering_again_not_losing(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        for i in range(5):
            sp.append(payload(i))
        sp.ack_all([1, 2])
    (tmp_path / "s" / "acks").write_text("{not json")
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        assert seqs(sp.peek(1 << 20)) == [1, 2, 3, 4, 5]


def test_acks_file_is_small_json(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        for i in range(6):
            sp.append(payload(i))
        sp.ack_all([1, 2, 3, 5])
    assert json.loads((tmp_path / "s" / "acks").read_text()) == {"acked": [[1, 3], [5, 5]]}


# ---------------------------------------------------------------- line protocol of the spool's payloads

def meta():
    return TagMeta.from_names(["Dijon/lighting/LC 1/power", "Saint-Apollinaire/traffic/J,2/mode",
                               "Dijon/lighting/LC 1/Diagnostics/state"])


def test_escaping_follows_the_line_protocol():
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_key("x\ny") == "x y"
    assert escape_key("ends\\") == "ends\\\\"


def test_encode_writes_good_and_uncertain_finite_values_only():
    m = meta()
    out = encode_lines(m, np.array([0, 1, 2, 0]), np.array([1.5, 3.0, np.nan, 2.0]),
                       np.array([st.GOOD, st.UNCERTAIN_LAST_USABLE_VALUE, st.GOOD, st.BAD_COMMUNICATION_ERROR]),
                       np.array([10, 20, 30, 40]))
    assert out.decode().splitlines() == [
        r"lighting,commune=Dijon,device=LC\ 1 power=1.5 10",
        r"traffic,commune=Saint-Apollinaire,device=J\,2 mode=3 20",
    ]


def test_encode_writes_a_status_line_when_the_status_changes():
    m = meta()
    last = np.zeros(len(m), dtype=np.uint32)
    bad = st.BAD_COMMUNICATION_ERROR
    out = encode_lines(m, np.array([0, 1]), np.array([1.0, 2.0]), np.array([st.GOOD, bad]),
                       np.array([5, 5]), last)
    assert out.decode().splitlines() == [
        "lighting,commune=Dijon,device=LC\\ 1 power=1 5",
        f"traffic,commune=Saint-Apollinaire,device=J\\,2 mode_status={bad}i 5",
    ]
    out = encode_lines(m, np.array([1]), np.array([2.0]), np.array([bad]), np.array([6]), last)
    assert out == b""  # still bad: nothing new to say
    out = encode_lines(m, np.array([1, 2]), np.array([4.0, 7.25]), np.array([st.GOOD, st.GOOD]),
                       np.array([7, 0]), last, now_ns=99)
    assert out.decode().splitlines() == [
        "traffic,commune=Saint-Apollinaire,device=J\\,2 mode=4 7",
        "lighting,commune=Dijon,device=LC\\ 1 Diagnostics_state=7.25 99",  # time 0: the server's
        "traffic,commune=Saint-Apollinaire,device=J\\,2 mode_status=0i 7",
    ]


def test_encode_keeps_every_double_exactly():
    m = TagMeta(["m"], [""], [""], ["v"])
    vals = np.array([0.1, 1 / 3, 1e20, -2.5e-300, 123456789.0, float(np.float32(0.1))])
    out = encode_lines(m, np.zeros(len(vals), dtype=int), vals, np.zeros(len(vals), dtype=np.uint32),
                       np.arange(1, len(vals) + 1))
    back = [float(line.split(b"=")[1].split(b" ")[0]) for line in out.splitlines()]
    assert back == vals.tolist()


def test_tag_names_must_be_paths():
    with pytest.raises(ValueError, match="commune"):
        TagMeta.from_names(["just-a-name"])


def test_spool_files_are_private_to_the_spool_folder(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20) as sp:
        sp.append(b"x\n")
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_corrupt_header_inside_a_closed_segment_loses_only_the_rest_of_that_segment(tmp_path):
    with Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096) as sp:
        for i in range(60):
            sp.append(payload(i, 200))
    segs = sorted((tmp_path / "s").glob("*.seg"))
    first_of_second = int(segs[1].stem)
    data = bytearray(segs[0].read_bytes())
    third = 2 * (HEADER_SIZE + 200)
    data[third] ^= 0xFF  # the magic of record 3: the scan cannot go past it
    segs[0].write_bytes(bytes(data))
    with Spool(tmp_path / "s", capacity_bytes=1 << 20, segment_bytes=4096) as sp:
        assert sp.torn_bytes > 0
        got = seqs(sp.peek(1 << 20))
        assert got == [1, 2] + list(range(first_of_second, 61))
        sp.ack_all(got)
        assert sp.backlog_entries == 0 and sp.peek(1 << 20) == []
        assert sp.append(b"x\n") == 61


def test_the_loop_and_the_array_paths_of_the_encoder_write_the_same_bytes(monkeypatch):
    from scada.historian import influx

    m = TagMeta.from_names([f"Dijon/lighting/LC-{i}/p" for i in range(50)])
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        ids = rng.choice(50, n, replace=False)
        vals = rng.choice([0.0, 1.0, -3.0, 2.5, 1e20, 1e15, np.nan, np.inf, 0.1, 1 / 3, -0.0], n)
        stat = rng.choice(np.array([st.GOOD, st.UNCERTAIN_LAST_USABLE_VALUE, st.BAD_COMMUNICATION_ERROR],
                                   dtype=np.uint32), n)
        times = rng.choice([0, 5, 7, 10**18], n).astype(np.int64)
        last_loop = rng.choice(np.array([st.GOOD, st.BAD_COMMUNICATION_ERROR], dtype=np.uint32), 50)
        last_arrays = last_loop.copy()
        loop = encode_lines(m, ids, vals, stat, times, last_loop, now_ns=42)
        monkeypatch.setattr(influx, "_SMALL_BATCH", 0)
        arrays = encode_lines(m, ids, vals, stat, times, last_arrays, now_ns=42)
        monkeypatch.undo()
        assert loop == arrays
        assert (last_loop == last_arrays).all()
