"""Contract of scada/shm_private.py with the running Python's shared memory internals.

That module is the only place that touches ``_posixshmem`` and SharedMemory's naming rules.
Each test checks one thing it relies on and fails saying what changed. When one fails after
a Python upgrade: adapt shm_private.py (nothing else should need it).
"""

from __future__ import annotations

import _posixshmem
import ast
import os
import subprocess
import sys
from multiprocessing import shared_memory
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from scada import shm_private as P
from tests.integration.helpers import DEADLINE, ROOT

VERSION = sys.version.split()[0]


def relies(ok: bool, what: str) -> None:
    """Fail naming the standard library internal that changed."""
    assert ok, f"Python {VERSION}: {what} -- scada/shm_private.py relies on it"


@pytest.fixture
def block():
    shm = SharedMemory(create=True, size=4096)
    yield shm
    shm.close()
    if os.path.exists(f"/dev/shm/{shm.name}"):
        shm.unlink()


def test_no_other_module_touches_the_shared_memory_internals():
    """Outside shm_private.py, nothing imports ``_posixshmem``, and a module that uses
    multiprocessing.shared_memory reaches into none of its private attributes."""
    private = {"_name", "_mmap", "_buf", "_fd", "_flags", "_prepend_leading_slash"}
    found = []
    for path in sorted((ROOT / "scada").rglob("*.py")):
        if path.name == "shm_private.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        imports = [
            name
            for node in ast.walk(tree)
            for name in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        ]
        where = path.relative_to(ROOT)
        found += [f"{where}: imports _posixshmem" for name in imports if name == "_posixshmem"]
        if any(name.startswith("multiprocessing.shared_memory") for name in imports):
            found += [
                f"{where}:{node.lineno} .{node.attr}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr in private
            ]
    assert not found, "shared memory internals used outside scada/shm_private.py: " + "; ".join(found)


def test_names_are_shm_open_paths_with_a_leading_slash(block):
    relies(shared_memory._USE_POSIX, "shared_memory._USE_POSIX (POSIX shared memory)")  # type: ignore[attr-defined]
    relies(SharedMemory._prepend_leading_slash, "SharedMemory._prepend_leading_slash is True")  # type: ignore[attr-defined]
    relies(not block.name.startswith("/"), "SharedMemory.name has no leading slash")
    relies(block._name == "/" + block.name, "SharedMemory._name is '/' + name (what shm_open took)")  # type: ignore[attr-defined]
    relies(P.shm_path(block.name) == block._name, "shm_path(name) is the path SharedMemory opened")  # type: ignore[attr-defined]


def test_shm_open_gives_a_descriptor_and_file_not_found_for_a_missing_name(block):
    fd = _posixshmem.shm_open(P.shm_path(block.name), os.O_RDONLY, mode=0o600)
    try:
        relies(isinstance(fd, int) and os.fstat(fd).st_size == block.size, "_posixshmem.shm_open returns an fd")
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        _posixshmem.shm_open("/psm_no_such_block_here", os.O_RDONLY, mode=0o600)
    with pytest.raises(FileNotFoundError):
        P.open_mapping("psm_no_such_block_here", writable=False)


def test_a_mapping_sees_the_owners_writes_and_a_read_only_one_refuses_writes(block):
    buf = block.buf
    assert buf is not None
    buf[:8] = np.arange(8, dtype=np.uint8).tobytes()
    ro = P.open_mapping(block.name, writable=False)
    rw = P.open_mapping(block.name, writable=True)
    try:
        view = np.frombuffer(ro, np.uint8, 8)
        relies(view.tolist() == list(range(8)), "a mapping opened by name shows the owner's bytes")
        relies(not view.flags.writeable, "an ACCESS_READ mmap exports a read-only buffer")
        np.frombuffer(rw, np.uint8, 8)[0] = 42
        relies(buf[0] == 42, "a writable mapping by name is the same memory as the owner's")
        del view
    finally:
        ro.close()
        rw.close()


def test_unlink_works_after_close(block):
    name = block.name
    block.close()
    block.unlink()
    relies(not os.path.exists(f"/dev/shm/{name}"), "SharedMemory.unlink() after close() removes the name")


def test_a_reader_process_exiting_leaves_the_block_and_prints_nothing(block):
    code = (
        "from scada.shm_private import open_mapping\n"
        f"m = open_mapping({block.name!r}, writable=False)\nprint(m[0])\nm.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    relies(done.stderr == "", f"a reader that maps by name registers nothing with a tracker: {done.stderr!r}")
    relies(os.path.exists(f"/dev/shm/{block.name}"), "the block outlives a reader process")
