"""The spool's own bounds and faults: the quarantine counts against the capacity, and a full
disk (a real small tmpfs, tests/fs_faults.py) loses nothing that was spooled."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from scada.historian.spool import Spool
from tests.fs_faults import fill, free_space, needs_root, small_fs

CAP = 256 * 1024


def payload(i: int, size: int = 1000) -> bytes:
    return (b"%d:" % i) + b"x" * size + b"\n"


def seqs(entries) -> list[int]:
    return [s for s, _ in entries]


def test_the_quarantine_counts_against_the_capacity(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=16 * 1024) as sp:
        for i in range(10):
            sp.append(payload(i))
        segments = sp.size_bytes
        sp.quarantine(1, payload(0), "HTTP 400 Bad Request")
        q = sp.quarantine_path.stat().st_size
        assert sp.size_bytes == segments + q
        assert sp.fill_ratio == pytest.approx((segments + q) / CAP)
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=16 * 1024) as sp:
        assert sp.size_bytes == segments + q  # also after a restart


def test_a_full_quarantine_drops_its_oldest_batches_and_counts_them(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=16 * 1024) as sp:
        first = sp.append(payload(0, 3000))
        for i in range(1, 40):
            seq = sp.append(payload(i, 3000))
            sp.quarantine(seq, payload(i, 3000), f"HTTP 400 number {i}")
            assert sp.quarantine_path.stat().st_size <= sp.quarantine_capacity == CAP // 4
            assert sp.size_bytes <= sp.capacity_bytes
        assert sp.quarantined_entries == 39
        text = sp.quarantine_path.read_bytes()
        kept = text.count(b"# quarantined ")
        assert 0 < kept < 39 and sp.quarantine_dropped_entries == 39 - kept
        assert b"number 39" in text and b"number 1\n" not in text  # the newest are kept, whole
        assert all(line.startswith(b"# quarantined ") or line.split(b":")[0].isdigit()
                   for line in text.splitlines())
        # What is not quarantined is untouched.
        assert seqs(sp.peek(1 << 30)) == [first]


def test_the_full_policy_makes_room_with_a_quarantine_at_its_bound(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=16 * 1024) as sp:
        for i in range(30):
            seq = sp.append(payload(i, 10_000))
            sp.quarantine(seq, payload(i, 10_000), "HTTP 400")
        assert sp.dropped_entries == 0
        last = None
        for i in range(400):  # about six times what the segments may hold
            last = sp.append(payload(i, 2000))
            assert last is not None  # drop-oldest: always room for the newest
            assert sp.size_bytes <= sp.capacity_bytes
        assert sp.dropped_entries > 0
        got = seqs(sp.peek(1 << 30))
        assert got == list(range(got[0], last + 1))  # the newest, in order, without a gap


@needs_root
def test_a_full_disk_refuses_an_append_leaves_the_spool_whole_and_appends_in_order_after(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        sp = Spool(fs / "s", capacity_bytes=4 << 20, segment_bytes=256 * 1024)
        try:
            done = [sp.append(payload(i)) for i in range(20)]
            fill(fs)
            with pytest.raises(OSError) as err:
                for i in range(20, 400):  # until the page cache of the last page is used up
                    done.append(sp.try_append(payload(i)))
            assert err.value.errno == errno.ENOSPC
            waiting = payload(len(done))
            free_space(fs)
            done.append(sp.try_append(waiting))
            done.append(sp.try_append(payload(len(done))))
            assert done == list(range(1, len(done) + 1))
        finally:
            sp.close()
        with Spool(fs / "s", capacity_bytes=4 << 20, segment_bytes=256 * 1024) as sp:
            got = sp.peek(1 << 30)  # peek checks every record's CRC
            assert sp.torn_bytes == 0 and sp.quarantined_entries == 0
            assert seqs(got) == done
            assert [p for _, p in got] == [payload(i) for i in range(len(done))]


@needs_root
def test_acknowledgements_refused_by_a_full_disk_are_written_by_the_next_sync(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        with Spool(fs / "s", capacity_bytes=4 << 20, segment_bytes=64 * 1024) as sp:
            for i in range(10):
                sp.append(payload(i))
            sp.ack_all([1, 2, 3])
            fill(fs)
            sp.ack_all([4, 5])  # the acks file cannot be written: kept in memory
            assert sp.write_error is not None and "acks" in sp.write_error
            assert seqs(sp.peek(1 << 30)) == list(range(6, 11))
            sp.sync()
            assert sp.write_error is not None  # still full: still owed
            free_space(fs)
            sp.sync()
            assert sp.write_error is None
        with Spool(fs / "s", capacity_bytes=4 << 20, segment_bytes=64 * 1024) as sp:
            assert seqs(sp.peek(1 << 30)) == list(range(6, 11))


def test_a_quarantine_the_operator_deleted_no_longer_counts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=16 * 1024) as sp:
        for i in range(3):
            sp.append(payload(i))
        segments = sp.size_bytes
        sp.quarantine(1, payload(0), "HTTP 400")
        assert sp.size_bytes > segments
        sp.quarantine_path.unlink()  # read and dealt with
        sp.sync()
        assert sp.size_bytes == segments
        sp.quarantine(2, payload(1), "HTTP 400")
        assert sp.size_bytes == segments + sp.quarantine_path.stat().st_size
        assert sp.quarantine_path.read_bytes().count(b"# quarantined ") == 1


def test_bytes_a_failed_write_left_and_could_not_cut_are_cut_before_the_next_record(tmp_path: Path, monkeypatch) -> None:
    """Logic only (an I/O error midway through a write, then a refused truncate, cannot be
    produced on demand): the next record never lands after the stray bytes."""
    import scada.historian.spool as spool_mod

    real_write, real_ftruncate = spool_mod.os.write, spool_mod.os.ftruncate
    faults = {"write": 0, "ftruncate": 0}

    def write(fd, data):
        if faults["write"]:
            faults["write"] -= 1
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.EIO, "I/O error")
        return real_write(fd, data)

    def ftruncate(fd, length):
        if faults["ftruncate"]:
            faults["ftruncate"] -= 1
            raise OSError(errno.EIO, "I/O error")
        return real_ftruncate(fd, length)

    monkeypatch.setattr(spool_mod.os, "write", write)
    monkeypatch.setattr(spool_mod.os, "ftruncate", ftruncate)
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=64 * 1024) as sp:
        assert sp.try_append(payload(0)) == 1
        faults.update(write=1, ftruncate=2)  # the write tears; the cut fails now and at the next try
        with pytest.raises(OSError):
            sp.try_append(payload(1))
        with pytest.raises(OSError):
            sp.try_append(payload(1))  # still cannot cut: the batch stays with the caller
        assert sp.try_append(payload(1)) == 2
        assert sp.try_append(payload(2)) == 3
    monkeypatch.undo()
    with Spool(tmp_path / "s", capacity_bytes=CAP, segment_bytes=64 * 1024) as sp:
        got = sp.peek(1 << 30)
        assert sp.torn_bytes == 0 and sp.quarantined_entries == 0
        assert got == [(1, payload(0)), (2, payload(1)), (3, payload(2))]
