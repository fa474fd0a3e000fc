"""Free loopback ports for the tests' servers, safe when pytest-xdist runs several workers.

Asking the kernel for port 0 and closing the socket leaves a window in which another worker
(or an outgoing connection) can take the same port before the test's server binds it. So each
test process hands out ports from its own block, below the kernel's ephemeral range (where
``bind(0)`` and outgoing connections take theirs), the blocks of the xdist workers being
disjoint; within a block a cursor moves on, so a process never hands out a port twice before
it wraps around. A port is handed out only if it can be bound now (without SO_REUSEADDR: a port
still in TIME_WAIT from an earlier run is skipped).

The blocks are the same in every checkout, so two suites running at once on one machine (two
worktrees, CI beside a developer) would hand out the same ports: each port handed out is also
locked, for the life of the process, in one lock file shared by every process of the machine
(``PORT_LOCKS``: byte ``p`` locked = port ``p`` is someone's), and a port another live process
holds is skipped. The locks are POSIX record locks: the kernel drops them when their process
ends, however it ends, so a crashed suite leaves nothing to clean; the servers a test starts do
not inherit them (they are the test process's, which outlives its servers' use of the port).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

LOWEST = 10000  # below: well-known and registered services a developer may run
HIGHEST = 65535
# Shared by every checkout's suite on the machine, whoever runs it (mode 0666).
PORT_LOCKS = Path(tempfile.gettempdir()) / "city-scada-test-ports.lock"


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux default 32768-60999)."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def worker_block(worker: str | None, count: int, ephemeral: tuple[int, int]) -> range:
    """The ports of xdist worker ``worker`` ("gw3"; None: not under xdist) out of ``count``."""
    k = int(worker[2:]) if worker and worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(1, count, k + 1)
    lo, hi = LOWEST, ephemeral[0]  # below the ephemeral range, else above it
    if hi - lo < 2000 * count:
        lo, hi = ephemeral[1] + 1, HIGHEST + 1
    size = (hi - lo) // count
    if size < 100:
        raise RuntimeError(f"no room for {count} blocks of test ports outside the ephemeral range {ephemeral}")
    return range(lo + k * size, lo + (k + 1) * size)


class PortLocks:
    """Ports claimed by the live processes of the machine: one byte-range lock per port in ``path``.

    One open file per process and never a second one on the same path: closing any descriptor of
    the file would drop every lock the process holds on it (POSIX record locks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = _open_shared(path)

    def claim(self, base: int, n: int = 1) -> bool:
        """Lock ports ``base`` to ``base + n - 1`` for this process; False if another process holds one.
        A port this process holds already is claimed again (its own lock)."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, n, base, os.SEEK_SET)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True


def _open_shared(path: Path) -> int:
    """``path`` opened for writing, created readable and writable by every user if it is missing.

    An existing file is opened without O_CREAT: in a sticky /tmp with fs.protected_regular, O_CREAT
    on another user's file is refused even when its mode allows writing."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # another process created it in between: open theirs
        os.fchmod(fd, 0o666)  # the umask took bits off: every user's suite must lock in it
        return fd


class PortBlock:
    """Hands out free ports of one block, in order from a random start, wrapping around; with
    ``locks``, only ports no other process of the machine has claimed (and claims them)."""

    def __init__(self, block: range, seed: int | None = None, locks: PortLocks | None = None) -> None:
        self.block = block
        self.locks = locks
        self._next = random.Random(seed).randrange(len(block))
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> int:
        """The first of ``n`` consecutive ports that are free now."""
        with self._lock:
            for _ in range(len(self.block)):
                if self._next + n > len(self.block):
                    self._next = 0
                base = self.block[self._next]
                self._next += n
                if self.locks is not None and not self.locks.claim(base, n):
                    continue  # another checkout's suite (or another process) gave these out
                if all(_bindable(p) for p in range(base, base + n)):
                    return base
        raise RuntimeError(f"no {n} consecutive free ports in {self.block}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_BLOCK = PortBlock(
    worker_block(
        os.environ.get("PYTEST_XDIST_WORKER"),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
        ephemeral_range(),
    ),
    locks=PortLocks(PORT_LOCKS),
)


def free_port() -> int:
    """A loopback port nobody listens on, not handed out before by this process."""
    return _BLOCK.take(1)


def free_port_range(n: int) -> int:
    """First of ``n`` consecutive free loopback ports (the simulator serves consecutive ports)."""
    return _BLOCK.take(n)
