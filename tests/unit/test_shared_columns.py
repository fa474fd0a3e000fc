"""Shared columns: one writer, readers in other processes, consistent copies under the seqlock.

The readers here are real processes (``python -c`` with the worktree as cwd, as the front
is started), attaching by name while this process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from scada.shared_columns import ALIGN, SharedColumns, TornReadError, layout
from tests.integration.helpers import DEADLINE, ROOT

SPEC = {"value": np.float64, "status": np.uint32, "source_time": np.int64}


def in_dev_shm(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


@pytest.fixture
def blocks():
    """The blocks a test creates; each must be gone from /dev/shm when it ends (no leak)."""
    made: list[SharedColumns] = []
    yield made
    leaked = [c.name for c in made if in_dev_shm(c.name)]
    for c in made:
        if in_dev_shm(c.name):
            c.unlink()
    assert not leaked, f"shared memory blocks left in /dev/shm: {leaked}"


def owned(blocks: list[SharedColumns], n: int, spec=SPEC) -> SharedColumns:
    cols = SharedColumns.create(spec, n)
    blocks.append(cols)
    return cols


def reader(code: str, name: str, n: int, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python process with ``cols`` attached to block ``name``."""
    prelude = (
        "import json, sys\nimport numpy as np\nfrom scada.shared_columns import SharedColumns\n"
        f"SPEC = {{'value': np.float64, 'status': np.uint32, 'source_time': np.int64}}\n"
        f"cols = SharedColumns.attach({name!r}, SPEC, {n})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_columns_are_64_byte_aligned_after_the_header():
    columns, size, _ = layout(SPEC, 1001)
    offsets = [offset for offset, _ in columns.values()]
    assert all(o % ALIGN == 0 for o in offsets) and offsets[0] >= 64
    # Each column fits before the next one: 1001 float64 rows, then uint32, then int64.
    assert offsets[1] - offsets[0] >= 1001 * 8 and offsets[2] - offsets[1] >= 1001 * 4
    assert size >= offsets[2] + 1001 * 8 and size % ALIGN == 0


def test_a_reader_sees_the_writes_read_only_and_with_the_seq(blocks):
    cols = owned(blocks, 5)
    with cols.writer(lambda: 7):
        cols["value"][:] = [1.0, 2.0, 3.0, 4.0, 5.0]
        cols["source_time"][2] = 99
    other = SharedColumns.attach(cols.name, SPEC, 5)
    try:
        (values, src), seq = other.read_consistent(lambda: (other["value"].copy(), other["source_time"].copy()))
        assert values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and src[2] == 99 and seq == 7
        with pytest.raises(ValueError, match="read-only"):
            other["value"][0] = 0.0
        with pytest.raises(PermissionError, match="only the owner"):
            other.unlink()
    finally:
        other.close()
    cols.close()
    cols.unlink()
    assert not in_dev_shm(cols.name)


def test_attach_of_a_missing_block_or_another_layout_is_a_clear_error(blocks):
    with pytest.raises(FileNotFoundError, match="no shared columns named 'psm_no_such_block'"):
        SharedColumns.attach("psm_no_such_block", SPEC, 3)
    cols = owned(blocks, 3)
    with pytest.raises(ValueError, match="disagree on the columns"):
        SharedColumns.attach(cols.name, SPEC, 4)
    with pytest.raises(ValueError, match="disagree on the columns"):
        SharedColumns.attach(cols.name, {**SPEC, "value": np.float32}, 3)
    cols.close()
    cols.unlink()


def test_the_generation_goes_even_when_a_write_raises(blocks):
    cols = owned(blocks, 3)
    seq = 0
    with pytest.raises(IndexError), cols.writer(lambda: seq):
        seq = 4
        cols["value"][[0, 7]] = 1.0  # a bad row id in the middle of a write
    assert cols.generation % 2 == 0 and cols.seq == 4
    (values,), _ = cols.read_consistent(lambda: (cols["value"].copy(),))
    assert values[0] == 0.0  # numpy checked the ids before writing
    cols.close()
    cols.unlink()


def test_a_writer_that_dies_mid_write_is_a_clear_error_not_a_hang(blocks):
    cols = owned(blocks, 3)
    cols.begin()  # and never end()
    with pytest.raises(TornReadError, match="in progress"):
        cols.read_consistent(lambda: cols["value"].copy(), max_wait=0.05)
    cols.end(1)
    cols.close()
    cols.unlink()


def test_a_writer_that_never_pauses_is_a_clear_error_after_bounded_copies(blocks):
    cols = owned(blocks, 3)
    n = 0

    def copy_while_the_writer_moves():
        nonlocal n
        n += 1
        cols.begin()
        cols.end(n)
        return cols["value"].copy()

    with pytest.raises(TornReadError, match="during each of 5 copies"):
        cols.read_consistent(copy_while_the_writer_moves, max_copies=5)
    assert n == 5
    cols.close()
    cols.unlink()


# The reader process: consistent copies must never be torn, raw copies (no seqlock) of the same
# columns must be, at least once: that is what shows the check can fail.
READ_LOOP = """
v, s, t = cols["value"], cols["status"], cols["source_time"]
copy = lambda: (v.copy(), s.copy(), t.copy())
def torn(values, status, src):
    # Every write sets a chunk's value, status and source time to the write's number x.
    return not ((values == src).all() and (status == (src & 0xFFFFFFFF)).all())
good = bad = 0
while good < 300:
    (values, status, src), seq = cols.read_consistent(copy)
    if torn(values, status, src) or src.max() != seq:
        bad += 1
    good += 1
raw_tears = raw = 0
while raw < 20000 and not raw_tears:
    raw += 1
    raw_tears += torn(*copy())
del v, s, t, copy  # views of the block: close() refuses to unmap under them
cols.close()
print(json.dumps({"good": good, "bad": bad, "raw": raw, "raw_tears": raw_tears}))
"""


def test_a_reader_process_never_sees_a_torn_copy_while_this_process_writes(blocks):
    # Small enough that a whole copy (the TagMirror copies in chunks of this order) fits
    # between two writes most of the time; big enough that raw copies do get torn.
    n, chunk = 20_000, 2_000
    cols = owned(blocks, n)
    v, s, t = cols["value"], cols["status"], cols["source_time"]
    x = 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, numpy as np\nfrom scada.shared_columns import SharedColumns\n"
            f"cols = SharedColumns.attach({cols.name!r}, "
            "{'value': np.float64, 'status': np.uint32, 'source_time': np.int64}, " + f"{n})\n" + READ_LOOP,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = cols.writer(lambda: x)
        while proc.poll() is None:
            x += 1
            rows = slice((x * chunk) % n, (x * chunk) % n + chunk)
            with writer:
                v[rows] = x
                s[rows] = x
                t[rows] = x
            # The core writes in bursts (a poll's batch), not back to back: the pause is the
            # readers' window. Without it every copy would overlap a write (bounded retries).
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["good"] == 300 and result["bad"] == 0, result
    assert result["raw_tears"] == 1, f"raw copies were never torn: the check could not have failed ({result})"
    assert err == ""
    del v, s, t, writer
    cols.close()
    cols.unlink()


def test_a_reader_process_exiting_leaves_the_block_and_the_owner_unlink_removes_it(blocks):
    cols = owned(blocks, 4)
    with cols.writer(lambda: 3):
        cols["value"][:] = 2.5
    done = reader(
        "(v,), seq = cols.read_consistent(lambda: (cols['value'].copy(),))\nprint(v.sum(), seq)", cols.name, 4
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10.0", "3"]
    # No resource tracker in the reader unlinked it or warned of a "leaked" block.
    assert done.stderr == ""
    assert in_dev_shm(cols.name)
    again = reader("print(cols['value'][0])", cols.name, 4)
    assert again.stdout.strip() == "2.5"
    cols.close()
    cols.unlink()
    assert not in_dev_shm(cols.name)


def test_close_with_views_still_held_says_so(blocks):
    cols = owned(blocks, 2)
    held = cols["value"]
    with pytest.raises(BufferError, match="still referenced"):
        cols.close()
    del held
    cols.close()
    assert cols.closed
    cols.unlink()
