"""The one place that touches the standard library's shared memory internals.

A process that only *reads* a block must neither own it nor be able to write it.
``multiprocessing.shared_memory.SharedMemory(name)`` fails both on Python 3.11: it maps the
block read-write, and it registers the attached block with the process's resource tracker
(bpo-39959), which unlinks the block from under its owner when the reader exits and warns of
a "leaked shared_memory object". 3.13's ``track=False`` fixes the second only. The usual
workaround, ``resource_tracker.unregister`` right after attaching, breaks whenever the reader
shares the owner's tracker (the same process, as in the tests and the in-process benches, or
a ``multiprocessing`` child): the registration it removes is the owner's, and the owner's own
unlink then makes the tracker print a KeyError traceback.

So a reader maps the block itself, read-only, and never meets the tracker: it opens the name
with ``_posixshmem.shm_open`` (the private C helper SharedMemory itself opens names with, so
the name means the same block: "/" + name, as SharedMemory's ``_prepend_leading_slash``) and
maps it with ``PROT_READ``. A write through the mapping is refused (numpy: read-only array).

What this relies on, checked by ``tests/unit/test_shm_private_contract.py`` against the
running Python, so that a release that changes it fails there, by name:

* ``_posixshmem.shm_open(path, flags, mode)`` returns a file descriptor, FileNotFoundError
  for a missing name;
* ``SharedMemory.name`` is the name without the leading slash, and ``_prepend_leading_slash``
  is True (POSIX);
* a block mapped this way sees the owner's writes, and a reader process that exits leaves
  the block in place and prints nothing.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os

__all__ = ["ReadOnlyBlock", "shm_path"]


def shm_path(name: str) -> str:
    """The path ``shm_open`` takes for a SharedMemory name ("psm_..." -> "/psm_...")."""
    return name if name.startswith("/") else "/" + name


class ReadOnlyBlock:
    """A read-only mapping of an existing shared memory block, untracked.

    Offers what SharedColumns uses of a SharedMemory: ``name``, ``size``, ``buf`` and
    ``close()`` (never ``unlink``: the block is its owner's). Raises FileNotFoundError when
    no block has that name.
    """

    def __init__(self, name: str) -> None:
        fd = _posixshmem.shm_open(shm_path(name), os.O_RDONLY, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping keeps the memory; the descriptor is not needed
        self.name = name.lstrip("/")
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap (views into ``buf`` must be gone first, or BufferError)."""
        self.buf.release()
        self._mmap.close()
