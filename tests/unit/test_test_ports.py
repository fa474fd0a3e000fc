"""The test port allocator (tests/ports.py): disjoint blocks per xdist worker, no port twice."""

import socket

import pytest

from tests.ports import PortBlock, ephemeral_range, worker_block


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
    ports = worker_block("gw5", 8, ephemeral_range())[:50]
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
    ports = worker_block("gw6", 8, ephemeral_range())[:40]
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
    ports = worker_block("gw7", 8, ephemeral_range())[:3]
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
