"""Faults on the configuration-reload path (review of the issue-11 merge): a reload never stops
the server, a failed one puts back every component and the OPC UA side, and the alarm engine
hands over its journal backlog and event identities.

Unreadable files are real: tests run as root, whom permissions do not stop, so a file that
cannot be read is a link to a write-only sysfs attribute (the kernel refuses any reader,
root included: PermissionError). A full data disk is a real small tmpfs (tests/fs_faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from asyncua import ua

from city_scada import REGISTRY, load_config
from common.yamlsrc import ConfigError
from scada import status as st
from scada.alarms.engine import STORAGE_FAILING, AlarmEngine
from scada.alarms.states import State
from scada.reload import (
    RESULT_FILE,
    _journal_removed,
    carry_alarms,
    carry_server_state,
    reload_from_files,
    write_result,
)
from scada.tagdb import TagDB
from tests.fs_faults import fill, free_space, needs_root, small_fs
from tests.integration.helpers import running_app

from .test_alarm_engine import ALARMS, Bench, bench  # noqa: F401 - bench: a fixture
from .test_alarm_journal_faults import break_journal, key, row_key, storage_alarms, toggle_door
from .test_config import INVENTORY_TAGS, write
from .test_reload import config_in

WRITE_ONLY = ("/sys/bus/pci/rescan", "/sys/class/zram-control/hot_remove", "/sys/kernel/mm/ksm/run")


def unreadable(path: Path) -> Path:
    """Make ``path`` a file no process can read (a write-only sysfs attribute behind a link)."""
    for target in map(Path, WRITE_ONLY):
        try:
            mode = target.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and not mode & 0o444:
            try:
                target.read_bytes()
            except PermissionError:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
                path.symlink_to(target)
                return path
    pytest.skip("no write-only sysfs attribute to make an unreadable file with")


def test_an_unreadable_tags_file_is_a_located_configuration_error(tmp_path: Path) -> None:
    tags = unreadable(tmp_path / "tags.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert err.value.file == str(tags) and "cannot be read" in str(err.value)
    assert "Permission denied" in str(err.value)


def test_an_unreadable_inventory_is_a_located_configuration_error(tmp_path: Path) -> None:
    write(tmp_path, {"tags.yaml": INVENTORY_TAGS, "bollards.csv": "name,type,lat,lon,endpoint,unit\n"})
    csv = unreadable(tmp_path / "inventory" / "lighting.csv")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert err.value.file == str(csv) and "inventory cannot be read" in str(err.value)


class NoReload:
    """An application whose configuration must stay untouched: reload() is a test failure."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # reload_from_files reads the files with the drivers of the running configuration
        self.config = SimpleNamespace(drivers=REGISTRY)

    async def reload(self, config):
        raise AssertionError("a configuration that cannot be loaded was applied")


async def test_a_reload_of_an_unreadable_file_is_refused_and_reported(tmp_path: Path) -> None:
    unreadable(tmp_path / "cfg" / "tags.yaml")
    app = NoReload(tmp_path)
    assert await reload_from_files(app, tmp_path / "cfg") is False
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert result["ok"] is False and result["message"].startswith("configuration error:")
    assert "tags.yaml: cannot be read" in result["message"]


async def test_a_loader_failure_that_is_no_configuration_error_is_reported_not_raised(tmp_path, monkeypatch):
    def broken(directory, drivers):
        raise RuntimeError("injected: a loader bug")

    monkeypatch.setattr("scada.reload.load_config", broken)
    assert await reload_from_files(NoReload(tmp_path), tmp_path) is False
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert result["ok"] is False and "injected: a loader bug" in result["message"]


@needs_root
async def test_a_full_data_disk_costs_the_result_file_not_the_server(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    with small_fs(tmp_path / "data", 256) as data:
        fill(data)
        write_result(data, True, "configuration reloaded")  # no exception: logged
        assert not (data / RESULT_FILE).exists()
        # A whole request: the file is refused, the result cannot be written, nothing raises.
        assert await reload_from_files(NoReload(data), tmp_path / "cfg") is False
        assert not (data / RESULT_FILE).exists()


# The alarm engine's hand-over (scada/reload.py carry_alarms)


def new_engine(bench: Bench, folder: Path, alarms: str = ALARMS) -> AlarmEngine:
    """The engine a reload builds on the bench's journal, on a configuration from ``folder``."""
    config = config_in(folder, alarms=alarms)
    tagdb = TagDB(*config.tag_table())
    tagdb.carry_from(bench.tagdb)
    engine = AlarmEngine(config, tagdb, bench.journal, bench.clock)
    engine.subscribers.append(bench.events.extend)
    return engine


def test_a_kept_instance_keeps_its_event_ids_and_its_one_shot_shelve(bench: Bench, tmp_path: Path) -> None:
    bench.clock.advance(1)
    bench.set("LC-1", temperature=61)
    old = bench.engine
    old.shelve("hot", "LC-1", "operator1", "crew on site", 3600, one_shot=True)
    i = old.instance("hot", "LC-1")
    new = new_engine(bench, tmp_path / "new")
    carry_alarms(old, new)
    j = new.instance("hot", "LC-1")
    assert State(int(new.state[j])) == State.SHELVED and new.one_shot[j]
    # The EventId an HMI was shown is made of these: an acknowledgement with it still matches.
    assert (new.event_seq[j], new.last_event_ns[j]) == (old.event_seq[i], old.last_event_ns[i]) != (0, 0)
    # One-shot: the shelve ends when the condition returns to normal (after its 3 s off-delay),
    # not at its hour.
    bench.clock.advance(1)
    temperature = bench.tag("LC-1", "temperature")  # the same id: the same devices
    new.process(new.tagdb.update([temperature], [30.0], st.GOOD, bench.clock()))
    bench.clock.advance(4)
    events = new.tick()
    assert [(e.alarm, e.event) for e in events if e.alarm == "hot"][-1] == ("hot", "UNSHELVE")


def test_server_alarms_changed_between_the_two_carries_reach_the_new_engine_s_subscribers(
    bench: Bench, tmp_path: Path
) -> None:
    """Review: a server alarm raised or cleared on the old engine while the OPC UA side was
    rebuilt (a front's HTTP listener bound meanwhile) was carried silently: the front, snapshot
    taken before, showed it active for good."""
    old = bench.engine
    old.system_alarm("http_listener_down", True, "internal: taken", source="http.internal")
    new = new_engine(bench, tmp_path / "new")
    told: list = []
    new.subscribers[:] = []
    carry_alarms(old, new)  # the first carry: the reload's new engine, before the OPC UA side
    new.subscribers.append(told.extend)  # the new conditions' / the front's subscription
    old.system_alarm("http_listener_down", False, "internal: bound", source="http.internal")
    old.system_alarm("server_task_failed", True, "historian: crashed", source="historian")
    carry_server_state(old, new)  # again, just before the swap
    assert sorted((e.alarm, e.event, e.active) for e in told) == [
        ("http_listener_down", "CLEAR", False),
        ("server_task_failed", "ACTIVATE", True),
    ]
    assert {e.alarm for e in new.active_system_events()} == {"server_task_failed"}
    told.clear()
    carry_server_state(old, new)  # nothing changed since: nothing told twice
    assert told == []


@needs_root
def test_a_reload_during_a_journal_outage_hands_the_backlog_over_in_order(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        bench = Bench(tmp_path / "cfg", journal_path=fs / "alarms.sqlite")
        try:
            bench.healthy("LC-1")
            bench.healthy("LC-2")
            fill(fs)
            n = break_journal(bench)
            toggle_door(bench, n + 1)
            old = bench.engine
            assert storage_alarms(bench) == ["ACTIVATE"]
            assert not old.flush_journal()  # the old engine's last chance, as its task stops: refused too
            waiting = old.journal_backlog
            # door_lc2 (in the backlog, shown) is renamed: removed; every other instance is kept.
            new = new_engine(bench, tmp_path / "new", ALARMS.replace("  - {name: door_lc2", "  - {name: door_lc2b"))
            _, gone = carry_alarms(old, new)
            _journal_removed(old, new, gone)
            assert new.journal_backlog == waiting + 1  # the REMOVED row waits behind the outage's rows
            free_space(fs)
            new.tick()  # retried at once, not after the old engine's backoff
            assert new.journal_backlog == 0
            assert storage_alarms(bench) == ["ACTIVATE", "CLEAR"]
            rows = [r for r in bench.journal.query() if r.alarm != STORAGE_FAILING]
            assert [row_key(r) for r in rows[:-1]] == [key(e) for e in bench.events if e.instance >= 0]
            assert (rows[-1].alarm, rows[-1].event) == ("door_lc2", "REMOVED")
            saved = bench.journal.load_states()
            for k, j in new._index.items():
                if k in saved:
                    assert saved[k] == new._state_record(j)[1], k
        finally:
            bench.journal.close()


# A failed switch on a running Application (in-process, OPC UA server on a loopback port)


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def assert_running_as(app, config) -> None:
    """Every component of ``config`` supervised, and the OPC UA side bound to the running ones."""
    hmi = app.hmi
    assert app.config is config and hmi.config is config and len(app.tagdb) == config.total_tag_count
    assert hmi.tagdb is app.tagdb and hmi.publisher.tagdb is app.tagdb
    assert hmi.conditions.engine is app.alarms and hmi.conditions._on_alarm_events in app.alarms.subscribers
    assert hmi.history is app.historian and hmi.tag_history.source.historian is app.historian
    assert all(app.supervisor.supervising(n) for n in app.task_names())
    assert {n for n in app.task_names() if n.startswith("driver:")} == {"driver:modbus"}
    assert {"alarms", "historian", "opcua-publisher", "opcua-alarm-events"} <= set(app.task_names())


def lc3_node(app):
    return app.hmi.server.iserver.aspace.get(ua.NodeId("Dijon/lighting/LC-3", app.hmi.ns))


async def test_a_rollback_points_the_history_reads_at_the_reopened_historian(tmp_path, monkeypatch):
    from scada import app as app_module

    async with running_app(tmp_path, "inline") as (app, old, new, _):
        real = app_module.build_drivers
        monkeypatch.setattr(
            app_module,
            "build_drivers",
            lambda config, tagdb: (_ for _ in ()).throw(OSError("injected")) if config is new else real(config, tagdb),
        )
        with pytest.raises(OSError, match="injected"):
            await app.reload(new)
        assert_running_as(app, old)


async def test_a_failure_inside_the_opcua_switch_is_undone(tmp_path, monkeypatch):
    """After the OPC UA side took the new objects: it goes back to the running ones, the added
    device's nodes go, and the next reload applies."""
    from scada.opcua import server as server_module

    async with running_app(tmp_path, "inline") as (app, old, new, _):
        real = server_module._rebind_history

        def broken(th, config, tagdb, historian):
            if config is new:
                raise RuntimeError("injected: history not rebound")
            real(th, config, tagdb, historian)

        monkeypatch.setattr(server_module, "_rebind_history", broken)
        with pytest.raises(RuntimeError, match="injected"):
            await app.reload(new)
        assert_running_as(app, old)
        assert lc3_node(app) is None
        monkeypatch.setattr(server_module, "_rebind_history", real)
        await app.reload(new)
        assert_running_as(app, new)
        assert lc3_node(app) is not None


async def test_a_model_change_event_that_fails_does_not_undo_the_reload(tmp_path, monkeypatch):
    async with running_app(tmp_path, "inline") as (app, old, new, _):

        async def broken(*args):
            raise RuntimeError("injected: no event")

        monkeypatch.setattr(app.hmi.server, "get_event_generator", broken)
        await app.reload(new)
        assert_running_as(app, new)


async def test_a_rollback_restarts_every_task_though_the_stores_fail(tmp_path, monkeypatch):
    """The new store cannot close (its merge fails) and the old one cannot reopen (a read-only
    disk): every task still restarts; the historian's fails and is restarted by the supervisor."""
    from scada import app as app_module
    from scada.historian.store import HistoryError

    async with running_app(tmp_path, "inline") as (app, old, new, _):
        real_drivers, real_historian = app_module.build_drivers, app._make_historian
        monkeypatch.setattr(
            app_module,
            "build_drivers",
            lambda config, tagdb: (
                (_ for _ in ()).throw(OSError("injected")) if config is new else real_drivers(config, tagdb)
            ),
        )
        reopened = []

        def make_historian(config=None, tagdb=None):
            if config is old and not reopened:
                reopened.append(False)
                raise HistoryError(tmp_path / "data" / "history.sqlite", "injected: read-only file system")
            h = real_historian(config, tagdb)
            if config is new:
                close = h.store.close

                def close_fails():
                    close()
                    raise HistoryError(h.store.path, "injected: merge failed, disk full")

                h.store.close = close_fails
            return h

        monkeypatch.setattr(app, "_make_historian", make_historian)
        stopped = app.historian
        with pytest.raises(OSError, match="injected"):
            await app.reload(new)
        assert app.historian is stopped
        assert_running_as(app, old)
        # Its store was closed as it stopped: the task fails, and its restart opens a new one.
        await until(lambda: app.historian is not stopped, "the historian restarted on a new store")
        assert app.supervisor.supervising("historian")


async def test_a_server_alarm_raised_during_the_switch_is_not_lost(tmp_path, monkeypatch):
    async with running_app(tmp_path, "inline") as (app, old, new, _):
        real = app.hmi.reload

        async def reload(*args, **kwargs):
            app.alarms.system_alarm("reload_test", True, "raised while the OPC UA side is rebuilt")
            return await real(*args, **kwargs)

        monkeypatch.setattr(app.hmi, "reload", reload)
        await app.reload(new)
        assert app.alarms._system[("server", "reload_test")] is True


async def test_a_reload_cancelled_by_the_shutdown_stays_cancelled(tmp_path, monkeypatch):
    async with running_app(tmp_path, "inline") as (app, old, new, task):
        entered = asyncio.Event()

        async def reload(*args, **kwargs):
            entered.set()
            await asyncio.Future()  # the OPC UA switch takes long: the server is stopped meanwhile

        monkeypatch.setattr(app.hmi, "reload", reload)
        monkeypatch.setattr("scada.reload.load_config", lambda directory, drivers: new)
        assert app.request_reload(tmp_path / "b")
        await asyncio.wait_for(entered.wait(), 30)
        (reloading,) = [t for t in asyncio.all_tasks() if t.get_name() == "reload"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert reloading.cancelled()
        assert not (tmp_path / "data" / RESULT_FILE).exists()  # no "reload failed" for a shutdown


async def test_a_rollback_cancelled_by_the_shutdown_stays_cancelled(tmp_path, monkeypatch):
    async with running_app(tmp_path, "inline") as (app, old, new, task):
        undoing = asyncio.Event()

        async def reload(config, *args, **kwargs):
            if config is new:
                raise RuntimeError("injected: the switch fails")
            undoing.set()
            await asyncio.Future()  # the rollback takes long: the server is stopped meanwhile

        monkeypatch.setattr(app.hmi, "reload", reload)
        monkeypatch.setattr("scada.reload.load_config", lambda directory, drivers: new)
        assert app.request_reload(tmp_path / "b")
        await asyncio.wait_for(undoing.wait(), 30)
        (reloading,) = [t for t in asyncio.all_tasks() if t.get_name() == "reload"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert reloading.cancelled()
        assert not (tmp_path / "data" / RESULT_FILE).exists()


async def test_the_new_historian_goes_on_from_the_old_one(tmp_path):
    """A reload's historian takes over the stopped one (Historian.take_over): its counters go on
    (the status line's history_stored never falls back to 0) and so would a full disk's backlog
    and storage alarms (their carrying is tested in test_historian_storage_faults.py)."""
    async with running_app(tmp_path, "inline") as (app, old, new, _):
        await until(lambda: app.historian.stored > 0, "the first values stored")
        before, stored = app.historian, app.historian.stored
        await app.reload(new)
        assert app.historian is not before
        assert app.historian.stored >= stored
        assert_running_as(app, new)
