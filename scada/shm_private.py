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

So every process maps a block itself, and a reader maps it read-only: ``open_mapping``
opens the name with ``_posixshmem.shm_open`` (the private C helper SharedMemory itself opens
names with, so a name means the same block: "/" + name, as SharedMemory's
``_prepend_leading_slash``) and maps it with ``mmap``. A reader never meets the tracker, and
a write through its mapping is refused (numpy: read-only array). The owner still creates the
block with ``SharedMemory(create=True)``, so that its tracker removes the block if the owner
dies without unlinking it.

Owning the ``mmap`` object matters for a second reason: ``SharedMemory.close()`` unmaps even
while numpy arrays still view the block (numpy keeps a reference to the mmap, not a buffer
export), and a later access through such an array is a segfault. SharedColumns checks the
mmap's references before unmapping instead (see SharedColumns.close).

What this relies on, checked by ``tests/unit/test_shm_private_contract.py`` against the
running Python, so that a release that changes it fails there, by name:

* ``_posixshmem.shm_open(path, flags, mode)`` returns a file descriptor, FileNotFoundError
  for a missing name;
* ``SharedMemory.name`` is the name without the leading slash, and ``_prepend_leading_slash``
  is True (POSIX); ``unlink()`` still works after ``close()``;
* a block mapped this way sees the owner's writes, and a reader process that exits leaves
  the block in place and prints nothing.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os

__all__ = ["open_mapping", "shm_path"]


def shm_path(name: str) -> str:
    """The path ``shm_open`` takes for a SharedMemory name ("psm_..." -> "/psm_...")."""
    return name if name.startswith("/") else "/" + name


def open_mapping(name: str, writable: bool) -> mmap.mmap:
    """A mapping of the whole existing block ``name`` (read-only unless ``writable``),
    registered with no resource tracker. FileNotFoundError when no block has that name."""
    fd = _posixshmem.shm_open(shm_path(name), os.O_RDWR if writable else os.O_RDONLY, mode=0o600)
    try:
        # ACCESS_READ maps PROT_READ *and* exports a read-only buffer: numpy then refuses a
        # write (a writable buffer over a PROT_READ page would be a segfault instead).
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, os.fstat(fd).st_size, access=access)
    finally:
        os.close(fd)  # the mapping keeps the memory; the descriptor is not needed
