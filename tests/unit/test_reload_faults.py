"""Faults on the configuration-reload path (review of the issue-11 merge): a reload never stops
the server, a failed one puts back every component and the OPC UA side, and the alarm engine
hands over its journal backlog and event identities.

Unreadable files are real: tests run as root, whom permissions do not stop, so a file that
cannot be read is a link to a write-only sysfs attribute (the kernel refuses any reader,
root included: PermissionError). A full data disk is a real small tmpfs (tests/fs_faults.py).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from scada.config import load_config
from scada.reload import RESULT_FILE, reload_from_files, write_result
from scada.yamlsrc import ConfigError
from tests.fs_faults import fill, needs_root, small_fs

from .test_config import INVENTORY_TAGS, write

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
    def broken(directory):
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
