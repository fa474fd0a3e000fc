"""The historian as the server runs it: TagDB changes in, compressed history in the store, across a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from city_scada import load_config
from scada import status as st
from scada.historian.service import Historian
from scada.historian.store import HistoryStore
from scada.tagdb import TagDB
from tests.integration.helpers import DEADLINE, until

ROOT = Path(__file__).resolve().parents[2]
S = 10**9


async def run_for(historian: Historian, feed, received: int) -> None:
    """Run the historian, ``feed()`` the TagDB once it listens, and stop it once it has been
    offered ``received`` rows and has written to the store by itself (its periodic write, not
    only the flush on the way out): counters, not a guess at how long that takes."""
    task = asyncio.create_task(historian.run())
    await until(lambda: any(c.name == "historian" for c in historian.tagdb.consumers),
                timeout=DEADLINE, what="historian subscribed")
    feed()
    await until(lambda: historian.compressor.received >= received and historian.stored > 0,
                timeout=DEADLINE, what=f"{received} rows received and a periodic store write")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_changes_are_compressed_stored_and_resumed_after_a_restart(tmp_path: Path) -> None:
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    dev = config.devices[0]
    name = f"{dev.commune}/lighting/{dev.name}"
    volts, power, door = (tagdb.id_of(f"{name}/{p}") for p in ("mains_voltage", "power", "door_open"))
    t0 = time.time_ns() - 3600 * S

    def ramp() -> None:
        # A ramp of power (stores its ends), a flat voltage within the deadband (stores the first),
        # and a door that opens and closes (a discrete point: every change).
        for k in range(60):
            t = t0 + k * 10 * S
            tagdb.update(np.array([power, volts, door]), np.array([0.1 * k, 230 + 0.1 * (k % 2), k == 30]),
                         st.GOOD, t)

    h = Historian(config, tagdb, tmp_path)
    await run_for(h, ramp, received=60)  # the TagDB passes on changes only: at least the power ramp
    store = HistoryStore(tmp_path / "history.sqlite", readonly=True)
    try:
        end = time.time_ns()
        p = store.read_raw(f"{name}/power", t0, end)
        assert p.values[0] == 0 and p.values[-1] == 5.9 and len(p.values) <= 3  # a ramp: its ends
        v = store.read_raw(f"{name}/mains_voltage", t0, end)
        assert len(v.values) <= 2 and v.values[0] == 230  # jitter inside the deadband: nothing new
        d = store.read_raw(f"{name}/door_open", t0, end)
        assert list(d.values) == [0, 1, 0]
    finally:
        store.close()

    # A new server process: the compressor continues from the store's last points.
    tagdb2 = TagDB(*config.tag_table())
    h2 = Historian(config, tagdb2, tmp_path)
    assert h2.compressor.received == 0

    def more() -> None:
        tagdb2.update(np.array([door]), np.array([0.0]), st.GOOD, t0 + 700 * S)  # unchanged: nothing new
        tagdb2.update(np.array([door]), np.array([1.0]), st.GOOD, t0 + 710 * S)

    await run_for(h2, more, received=2)
    store = HistoryStore(tmp_path / "history.sqlite", readonly=True)
    try:
        d = store.read_raw(f"{name}/door_open", t0, time.time_ns())
        assert list(d.values) == [0, 1, 0, 1]
    finally:
        store.close()


async def test_points_not_historised_are_not_stored(tmp_path: Path) -> None:
    config = load_config(ROOT)
    tagdb = TagDB(*config.tag_table())
    dev = config.devices[0]
    successes = config.diag_ids(dev)[1]  # Diagnostics/successes changes every second: not recorded
    state = config.diag_ids(dev)[0]
    h = Historian(config, tagdb, tmp_path)
    await run_for(h, lambda: tagdb.update(np.array([successes, state]), np.array([5.0, 1.0]), st.GOOD),
                  received=1)  # the state only: successes is not offered to the compressor
    store = HistoryStore(tmp_path / "history.sqlite", readonly=True)
    try:
        names = store.names(f"*/{dev.name}/Diagnostics/*")
        assert len(store.read_raw(tagdb.names[int(state)], 0, time.time_ns() + S).values) == 1
        assert len(store.read_raw(tagdb.names[int(successes)], 0, time.time_ns() + S).values) == 0
        assert names  # diagnostic tags are known to the store
    finally:
        store.close()


def test_a_new_tag_table_takes_over_the_waiting_points_by_tag_name(tmp_path: Path) -> None:
    """A reload renumbers the tags: the points a failing store left waiting follow their tag by
    name; those of a removed tag are dropped and counted."""
    from scada.historian.backlog import Backlog
    from scada.historian.compress import StoredBatch

    config = load_config(ROOT)
    names, kinds, deadbands = config.tag_table()
    old = Historian(config, TagDB(names, kinds, deadbands), tmp_path)
    old.store.close()
    # What a full disk leaves in memory (Historian._write): points of tags 0, 1 and 2, in order.
    old._backlog = Backlog(
        [
            StoredBatch(np.array([0, 1]), np.array([1.0, 2.0]), np.zeros(2, np.uint32), np.array([10, 10])),
            StoredBatch(np.array([2, 0]), np.array([3.0, 4.0]), np.zeros(2, np.uint32), np.array([20, 20])),
        ]
    )
    old.store_error, old._failing["history_store"] = "disk full", True
    # The new table: the same tags in the reverse order, but tag 1 removed (renamed).
    new_names = [n if i != 1 else "gone/elsewhere" for i, n in enumerate(names)][::-1]
    new = Historian(config, TagDB(new_names, kinds[::-1], deadbands[::-1]), tmp_path)
    try:
        new.take_over(old)
        [batch] = new.unstored()
        assert [new_names[i] for i in batch.ids.tolist()] == [names[0], names[2], names[0]]
        assert batch.values.tolist() == [1.0, 3.0, 4.0] and batch.times.tolist() == [10, 20, 20]
        assert new.status()["history_backlog"] == 3 and new.backlog_dropped == 1
        assert new.status()["history_store_failing"]  # until it writes: then the alarm clears
    finally:
        new.store.close()
