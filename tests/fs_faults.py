"""Real storage faults for tests: a small tmpfs that fills up, and an ext4 image that goes read-only.

Storage-fault tests use a real file system, never a mock of ``open``/``sqlite3``: mounting needs
root, which CI and `make test` have (they run as root to install Debian packages).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI and `make test` run as root)")

needs_ext4 = pytest.mark.skipif(
    not Path("/dev/loop-control").exists() or shutil.which("mkfs.ext4") is None,
    reason="a read-only fault needs a loop device and mkfs.ext4")


def _run(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode not in ok:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


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


# A read-only fault is an ext4 error on a loop image, not a tmpfs remounted read-only: Linux
# refuses to remount a file system read-only while a file on it is open for writing (EBUSY), and
# a server under test always has its files open. An ext4 error turns it read-only under them.


def _mount_image(image: Path, mnt: Path) -> None:
    # errors=remount-ro: an error turns the file system read-only at once, as a failing disk does.
    _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))


@contextlib.contextmanager
def ext4_image(folder: Path, size_mb: int = 8) -> Iterator[tuple[Path, Path]]:
    """An ext4 file system in an image file, loop-mounted on ``folder/mnt``: (image, mount point).

    Use with :func:`fs_error` and :func:`repair` (and ``needs_ext4``); a tmpfs cannot be made
    read-only under open files (see above).
    """
    image, mnt = folder / "disk.img", folder / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    _mount_image(image, mnt)
    try:
        yield image, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fs_error(mnt: Path) -> None:
    """Make ext4 detect an error (its own sysfs trigger): with errors=remount-ro it turns read-only
    at once (EROFS), open files included."""
    dev = _run("findmnt", "-n", "-o", "SOURCE", str(mnt)).strip()
    Path(f"/sys/fs/ext4/{os.path.basename(dev)}/trigger_fs_error").write_text("test\n")


def repair(image: Path, mnt: Path, timeout: float = 30.0) -> None:
    """What an operator does: unmount (if the test has not detached it already), check the file
    system and mount it again (ext4 stays read-only until then)."""
    if os.path.ismount(mnt):
        _run("umount", str(mnt))
    deadline = time.monotonic() + timeout
    while _run("losetup", "-j", str(image)).strip():  # the old mount lets go once its files are closed
        if time.monotonic() > deadline:
            raise AssertionError(f"the image is still attached: {_run('losetup', '-j', str(image))}")
        time.sleep(0.1)
    _run("e2fsck", "-f", "-y", str(image), ok=(0, 1))  # 1: errors corrected
    _mount_image(image, mnt)
