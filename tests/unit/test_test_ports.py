"""The test port allocator (tests/ports.py): disjoint blocks per xdist worker, no port twice,
none that another process of the machine (another checkout's suite) has handed out."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ports import PORT_LOCKS, PortBlock, PortLocks, ephemeral_range, free_port, free_port_range, worker_block

ROOT = Path(__file__).resolve().parents[2]


def reserved(n: int) -> range:
    """``n`` consecutive ports for a test's own PortBlock, free now and claimed by this process
    in the machine's lock file: no other worker's (or checkout's) server takes one meanwhile. A
    slice of another worker's block was used before: its servers' ports were skipped, the block
    wrapped around and handed a port out twice (seen with 5 workers)."""
    base = free_port_range(n)
    return range(base, base + n)


def test_worker_blocks_are_disjoint_and_outside_the_ephemeral_range():
    eph = (32768, 60999)
    blocks = [worker_block(f"gw{k}", 4, eph) for k in range(4)]
    seen: set[int] = set()
    for b in blocks:
        assert len(b) >= 2000
        assert not seen & set(b)
        assert b[-1] < eph[0] or b[0] > eph[1]
        seen |= set(b)
    assert worker_block(None, 1, eph) == worker_block("gw0", 1, eph)


def test_a_small_room_below_the_ephemeral_range_moves_the_blocks_above_it():
    b = worker_block("gw1", 2, (11000, 40000))
    assert b[0] > 40000 and b[-1] <= 65535


def test_the_machine_has_room_for_eight_workers():
    worker_block("gw7", 8, ephemeral_range())


def test_a_block_hands_out_each_port_once_and_skips_a_bound_one():
    ports = reserved(50)
    held = socket.socket()
    held.bind(("127.0.0.1", ports[7]))
    try:
        block = PortBlock(ports, seed=1)
        taken = [block.take() for _ in range(len(ports) - 1)]
    finally:
        held.close()
    assert len(set(taken)) == len(taken)  # none twice before the block wraps around
    assert set(taken) == set(ports) - {ports[7]}


def test_consecutive_ports_are_free_and_skip_a_listener():
    ports = reserved(40)
    listener = socket.socket()
    listener.bind(("127.0.0.1", ports[10]))
    listener.listen()
    try:
        block = PortBlock(ports, seed=2)
        for _ in range(8):
            first = block.take(3)
            assert ports[10] not in range(first, first + 3)
    finally:
        listener.close()


def test_an_exhausted_block_says_so():
    ports = reserved(3)
    holders = []
    try:
        for p in ports:
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            holders.append(s)
        with pytest.raises(RuntimeError, match="no 1 consecutive free ports"):
            PortBlock(ports).take()
    finally:
        for s in holders:
            s.close()


# A second suite on the machine, in its own process: it takes ``n`` ports of ``block`` (the same
# block and start as the first: the two checkouts' workers of one rank) with the locks of
# ``path``, prints them, and keeps them until its stdin closes.
_OTHER_SUITE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tests.ports import PortBlock, PortLocks
    path, lo, hi, n = sys.argv[1], *map(int, sys.argv[2:])
    block = PortBlock(range(lo, hi), seed=3, locks=PortLocks(Path(path)))
    print(json.dumps([block.take() for _ in range(n)]), flush=True)
    sys.stdin.read()
    """
)


def _other_suite(path: Path, block: range, n: int) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OTHER_SUITE, str(path), str(block.start), str(block.stop), str(n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def _end(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def test_two_suites_with_the_same_block_and_start_never_hand_out_the_same_port(tmp_path):
    block = reserved(30)
    locks = tmp_path / "ports.lock"
    first, theirs = _other_suite(locks, block, 10)
    try:
        second, ours = _other_suite(locks, block, 10)
        _end(second)
    finally:
        _end(first)
    assert len(set(theirs)) == 10 and len(set(ours)) == 10
    assert not set(theirs) & set(ours)


def test_ports_of_a_suite_that_ended_are_handed_out_again(tmp_path):
    """The kernel drops a process's locks when it ends, however it ends: nothing to clean up."""
    block = reserved(10)
    locks = tmp_path / "ports.lock"
    proc, theirs = _other_suite(locks, block, 10)
    proc.kill()
    _end(proc)
    again = PortBlock(block, seed=3, locks=PortLocks(locks))
    assert sorted(again.take() for _ in range(10)) == sorted(theirs)


def test_a_block_whose_ports_another_suite_holds_says_so(tmp_path):
    block = reserved(3)
    locks = tmp_path / "ports.lock"
    proc, _ = _other_suite(locks, block, 3)
    try:
        with pytest.raises(RuntimeError, match="no 1 consecutive free ports"):
            PortBlock(block, locks=PortLocks(locks)).take()
    finally:
        _end(proc)


def test_consecutive_ports_skip_one_another_suite_holds(tmp_path):
    block = reserved(20)
    locks = tmp_path / "ports.lock"
    proc, theirs = _other_suite(locks, block, 1)
    try:
        ours = PortBlock(block, seed=4, locks=PortLocks(locks))
        for _ in range(4):
            first = ours.take(3)
            assert theirs[0] not in range(first, first + 3)
    finally:
        _end(proc)


def test_the_ports_this_suite_hands_out_are_locked_for_every_other_process():
    """What makes two checkouts' suites safe side by side: free_port() claims the port in the
    machine's shared lock file, and another process cannot claim it while this one lives."""
    port = free_port()
    probe = (
        "import sys; from pathlib import Path; from tests.ports import PortLocks; "
        "print(PortLocks(Path(sys.argv[1])).claim(int(sys.argv[2])))"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(PORT_LOCKS), str(port)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == "False"


def test_the_lock_file_is_created_for_every_user(tmp_path):
    PortLocks(tmp_path / "ports.lock")
    assert (tmp_path / "ports.lock").stat().st_mode & 0o777 == 0o666
