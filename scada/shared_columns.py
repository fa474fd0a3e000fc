"""Named numpy columns in one shared memory block, written by one process, read by others.

The core's tag database keeps its row columns here so that the OPC UA front, another process,
can copy the current rows without asking the core for them. One writer, any number of
readers, no lock: a seqlock. The header holds a generation counter, odd while the writer is
changing the columns and even otherwise, and the seq of the last change batch whose rows are
in the columns. A reader notes the generation, copies, and keeps the copy only if the
generation was even and has not moved; otherwise it copies again (a bounded number of times).
The writer never waits for a reader.

Why it is correct without fences: the writer and the readers run on x86-64, where stores are
seen by other cores in program order and loads are not reordered with other loads, and each
header access is one aligned 8-byte load or store (numpy scalar indexing). A weakly ordered
CPU (ARM) would need a fence between the generation and the data; this module would then
have to provide one.

Layout: a 64-byte header of uint64 words (generation, seq, rows, layout version, layout
digest), then each column, each starting on a 64-byte boundary (a cache line: a column's
rows never share a line with the header the writer bumps twice per batch).
"""

from __future__ import annotations

import mmap
import sys
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from scada.shm_private import open_mapping

LAYOUT_VERSION = 1
ALIGN = 64
_HEADER_WORDS = 8
_GEN, _SEQ, _ROWS, _VERSION, _DIGEST = range(5)
MAX_COPIES = 200  # copies a reader attempts before giving up (each one saw the writer move)
MAX_WAIT = 1.0  # seconds a reader waits for a write in progress to end (a writer died mid-write?)

T = TypeVar("T")
Spec = Mapping[str, Any]  # column name -> numpy dtype (anything np.dtype() takes)


class TornReadError(RuntimeError):
    """No consistent copy could be taken: the writer kept changing the columns."""


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def layout(spec: Spec, n: int) -> tuple[dict[str, tuple[int, np.dtype]], int, int]:
    """Each column's (offset, dtype), the block's size in bytes, and the layout's digest."""
    offset = _aligned(_HEADER_WORDS * 8)
    columns: dict[str, tuple[int, np.dtype]] = {}
    for name, dtype in spec.items():
        dt = np.dtype(dtype)
        columns[name] = (offset, dt)
        offset = _aligned(offset + dt.itemsize * n)
    text = ";".join(f"{name}:{dt.str}" for name, (_, dt) in columns.items())
    return columns, offset, zlib.crc32(text.encode())


class SeqlockWriter:
    """``with writer:`` around a mutation of the columns: the generation is odd inside.

    On the way out it stores ``seq()`` (the seq of the last batch whose rows are now written)
    and then makes the generation even, also when the mutation raised: a reader must never
    wait for a writer that has left.
    """

    __slots__ = ("_cols", "_seq")

    def __init__(self, cols: SharedColumns, seq: Callable[[], int]) -> None:
        self._cols, self._seq = cols, seq

    def __enter__(self) -> None:
        self._cols.begin()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cols.end(self._seq())


class SharedColumns:
    """One shared memory block: a seqlock header and named columns of ``n`` rows.

    Build with :meth:`create` (the owner: writes, then ``close()`` and ``unlink()``) or
    :meth:`attach` (a reader: a read-only mapping, untracked (scada.shm_private), ``close()``
    only; it never removes the block).
    """

    def __init__(self, name: str, mapping: mmap.mmap, spec: Spec, n: int, owner: SharedMemory | None) -> None:
        columns, size, digest = layout(spec, n)
        self.name = name  # the block's name, for attach() in another process
        if len(mapping) < size:
            mapping.close()
            raise ValueError(f"shared columns {name}: block is {len(mapping)} bytes, the layout needs {size}")
        self._mapping = mapping
        # The owner unlinks the name once: on unlink(), or when this object is collected or
        # the interpreter exits (a dropped table must not leave its block in /dev/shm).
        self._unlink = None if owner is None else weakref.finalize(self, _unlink_quietly, owner)
        buf = mapping
        self.rows = n
        self.closed = False
        self._gen = 0  # the writer's generation, mirrored in the header (one process writes)
        self._header = np.ndarray((_HEADER_WORDS,), np.uint64, buf, 0)
        if owner is not None:
            self._header[:] = 0
            self._header[_ROWS], self._header[_VERSION], self._header[_DIGEST] = n, LAYOUT_VERSION, digest
        else:
            found = (int(self._header[_VERSION]), int(self._header[_ROWS]), int(self._header[_DIGEST]))
            if found != (LAYOUT_VERSION, n, digest):
                del self._header
                mapping.close()
                raise ValueError(
                    f"shared columns {name}: layout (version, rows, digest) is {found}, "
                    f"expected {(LAYOUT_VERSION, n, digest)}: the writer and this reader disagree on the columns"
                )
        self.columns: dict[str, np.ndarray] = {}
        for column, (offset, dt) in columns.items():
            col = np.ndarray((n,), dt, buf, offset)
            self.columns[column] = col

    @classmethod
    def create(cls, spec: Spec, n: int) -> SharedColumns:
        """A new block for ``spec`` columns of ``n`` rows (zeroed), owned by this process."""
        _, size, _ = layout(spec, n)
        # SharedMemory creates the name and registers it with this process's resource
        # tracker (removed if this process dies without unlink); the columns use a mapping of
        # our own (see scada/shm_private.py for why).
        shm = SharedMemory(create=True, size=size)
        try:
            mapping = open_mapping(shm.name, writable=True)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        shm.close()
        return cls(shm.name, mapping, spec, n, owner=shm)

    @classmethod
    def attach(cls, name: str, spec: Spec, n: int) -> SharedColumns:
        """Read-only views of the existing block ``name``; its layout must be ``spec`` x ``n``."""
        try:
            mapping = open_mapping(name, writable=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no shared columns named {name!r} (the writer has not created it, or has removed it)"
            ) from None
        return cls(name.lstrip("/"), mapping, spec, n, owner=None)

    @property
    def owner(self) -> bool:
        """True in the process that created the block (the writer)."""
        return self._unlink is not None

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns[column]

    @property
    def seq(self) -> int:
        """The seq of the last batch whose rows are in the columns (racy: see read_consistent)."""
        return int(self._header[_SEQ])

    @property
    def generation(self) -> int:
        return int(self._header[_GEN])

    def begin(self) -> None:
        """The writer starts changing the columns (the generation turns odd)."""
        self._gen += 1
        self._header[_GEN] = self._gen

    def end(self, seq: int) -> None:
        """The writer is done; ``seq`` is stored before the generation turns even."""
        h = self._header
        h[_SEQ] = seq
        self._gen += 1
        h[_GEN] = self._gen

    def writer(self, seq: Callable[[], int]) -> SeqlockWriter:
        """A reusable context manager around mutations (see SeqlockWriter)."""
        return SeqlockWriter(self, seq)

    def read_consistent(
        self, fn: Callable[[], T], max_copies: int = MAX_COPIES, max_wait: float = MAX_WAIT
    ) -> tuple[T, int]:
        """``fn()`` (which copies from the columns) run until no write overlapped it, and the
        seq of the batches its copy contains. Raises TornReadError after ``max_copies``
        overlapped copies, or when a write stays in progress for ``max_wait`` seconds."""
        h = self._header
        copies = 0
        deadline = 0.0
        while True:
            gen = int(h[_GEN])
            if gen & 1:
                # A write is in progress (microseconds): spin, but not on a writer that died.
                now = time.monotonic()
                if not deadline:
                    deadline = now + max_wait
                elif now > deadline:
                    raise TornReadError(
                        f"shared columns {self.name}: a write has been in progress for over {max_wait} s "
                        "(did the writer die mid-write?)"
                    )
                continue
            seq = int(h[_SEQ])
            out = fn()
            if int(h[_GEN]) == gen:
                return out, seq
            copies += 1
            if copies >= max_copies:
                raise TornReadError(
                    f"shared columns {self.name}: the writer changed the columns during each of {copies} copies"
                )

    def close(self) -> None:
        """Unmap the block from this process. Views taken from ``columns`` must be gone
        (BufferError otherwise; close again once they are)."""
        if self.closed:
            return
        # Our own views go first. An array viewing the mapping holds a reference to the mmap
        # (and no buffer export: mmap.close() would not refuse), so any reference beyond our
        # attribute and getrefcount's argument is a view that would segfault once unmapped.
        self.columns = {}
        self._header = np.zeros(_HEADER_WORDS, np.uint64)
        if sys.getrefcount(self._mapping) > 2:
            raise BufferError(
                f"shared columns {self.name}: views of its columns are still referenced; drop them before close()"
            )
        self._mapping.close()
        self.closed = True

    def unlink(self) -> None:
        """Remove the block's name (owner only); the memory goes once every process closed it."""
        if self._unlink is None:
            raise PermissionError(f"shared columns {self.name}: only the owner may unlink the block")
        self._unlink()


def _unlink_quietly(shm: SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:
        pass  # removed already (by hand, or a test); the goal is met
