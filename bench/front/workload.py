"""The workload every server of the bench serves: a synthetic city (bench/citygen.py) with the
shipped alarms, the analog tags that change, and the files of names handed to the peers and
clients."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bench import citygen
from bench.harness import ROOT, load_config

NAMESPACE_URI = "urn:city-scada:tags"  # scada.opcua.address_space.NAMESPACE_URI; the peers serve the same


def write_city(n_tags: int, folder: Path, alarms: bool = True) -> Path:
    """A configuration folder of ``n_tags`` tags (rounded up to whole cabinets), with the shipped
    ``alarms.yaml`` when ``alarms`` (its lighting alarms apply to every cabinet: conditions
    included). Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    citygen.write_config(n_tags, folder)
    if alarms:
        shutil.copy(ROOT / "alarms.yaml", folder / "alarms.yaml")
    return folder


def analog_names(config_dir: Path) -> list[str]:
    """The analog tags of a configuration, in tag id order: the ones that change (values are
    Doubles everywhere, so a client reads the emission time from any of them)."""
    from scada.tagdb import ANALOG

    names, kinds, _ = load_config(config_dir).tag_table()
    return [names[i] for i in np.flatnonzero(np.asarray(kinds) == ANALOG)]


def all_names(config_dir: Path) -> list[str]:
    """Every tag of a configuration, in tag id order."""
    names, _, _ = load_config(config_dir).tag_table()
    return list(names)


def write_names(path: Path, names: list[str]) -> Path:
    """One name a line (the format of bench/node's ``nodes``/``names`` files). Returns ``path``."""
    path.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return path


def read_names(path: Path) -> list[str]:
    """The names written by ``write_names``."""
    return [s for s in path.read_text(encoding="utf-8").splitlines() if s]
