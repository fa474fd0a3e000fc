"""Configuration folders for tests and benches: the shipped equipment types, with the devices,
inventories and alarms a test needs.

The shipped ``tags.yaml`` is the one source of the equipment types: a test takes its part
before ``inventories:`` and adds its own devices, so that a change of a shipped type reaches
every test. ``load`` is the one place these helpers load a configuration folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scada.config import Config

ROOT = Path(__file__).resolve().parents[1]


def shipped_types() -> str:
    """The shipped ``tags.yaml`` up to its ``inventories:`` section (its equipment types)."""
    head, sep, _ = (ROOT / "tags.yaml").read_text(encoding="utf-8").partition("\ninventories:")
    if not sep:
        raise RuntimeError(f"{ROOT / 'tags.yaml'} has no inventories section to replace")
    return head


def write_tags(folder: Path, inventories: Sequence[str] = (), extra_types: str = "", devices: str = "") -> None:
    """``folder/tags.yaml``: the shipped equipment types (plus ``extra_types``), an ``inventories``
    section importing ``inventories`` when there are any, then ``devices`` (YAML text, from a new line)."""
    folder.mkdir(parents=True, exist_ok=True)
    imports = "\ninventories:\n" + "".join(f"  - file: {f}\n" for f in inventories) if inventories else ""
    (folder / "tags.yaml").write_text(shipped_types() + extra_types + imports + devices)


def write_inventory(folder: Path, csv_name: str, header: str, rows: Iterable[str], extra_types: str = "") -> Path:
    """``folder/tags.yaml`` importing ``csv_name`` under the shipped types (plus ``extra_types``), and
    that CSV: ``header`` then one line per row. Returns ``folder``."""
    write_tags(folder, [csv_name], extra_types)
    (folder / csv_name).write_text("\n".join([header, *rows]) + "\n")
    return folder


def load(folder: Path) -> Config:
    """The configuration in ``folder``, through the server's loader."""
    from city_scada import load_config

    return load_config(folder)


def write_config(folder: Path, devices: str, alarms: str | None = None) -> Config:
    """``devices`` (YAML text) under the shipped types and, when given, ``alarms`` as alarms.yaml; loaded."""
    write_tags(folder, devices=devices)
    if alarms is not None:
        (folder / "alarms.yaml").write_text(alarms)
    return load(folder)
