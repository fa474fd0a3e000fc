"""Real storage faults for tests: a small tmpfs that fills up, and a read-only remount.

Storage-fault tests use a real file system, never a mock of ``open``/``sqlite3``: mounting needs
root, which CI and `make test` have (they run as root to install Debian packages).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI and `make test` run as root)")


def _run(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")


@contextlib.contextmanager
def small_fs(path: Path, size_kb: int = 2048) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kb`` KiB on ``path`` (created if needed) for the block; unmount after."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        # Lazy unmount: a server process killed by the test may still hold a file open.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, name: str = "ballast") -> Path:
    """Fill the file system holding ``path`` until it has no byte left; return the ballast file.

    Deleting the ballast frees the space again (the test's "operator cleans the disk").
    """
    ballast = path / name
    chunk = b"\0" * 65536
    with open(ballast, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return ballast


def free_space(path: Path) -> None:
    """Delete the ballast written by :func:`fill`."""
    (path / "ballast").unlink(missing_ok=True)


def remount(path: Path, read_only: bool) -> None:
    """Turn the tmpfs on ``path`` read-only (or back to read-write), files kept."""
    _run("mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path))
