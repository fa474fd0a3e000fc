"""Synthetic city inventories for the benchmarks: realistic tag names and configurations.

Everything is derived from the shipped demo configuration (``tags.yaml`` and its CSV
inventory): the 24 communes of Dijon Metropole and the ``lighting_cabinet`` equipment
type, whatever points it has today (12 at first, 15 since the lighting model gained mains and
earth-leakage points). A city of N tags is N/points lighting cabinets spread round-robin over
the communes, named like the real inventory (``LC-CHEV-0123``), so tag names look like
``Chevigny-Saint-Sauveur/lighting/LC-CHEV-0123/mains_voltage``.
"""

from __future__ import annotations

import csv
import tempfile
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_TAGS = ROOT / "tags.yaml"
SHIPPED_INVENTORY = ROOT / "inventory" / "lighting-cabinets.csv"
CABINET_TYPE = "lighting_cabinet"


@cache
def communes() -> tuple[str, ...]:
    """The communes of the shipped inventory, in first-seen order."""
    with SHIPPED_INVENTORY.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.DictReader(ln for ln in fh if not ln.lstrip().startswith("#"))]
    return tuple(dict.fromkeys(r["commune"] for r in rows))


def commune_code(commune: str) -> str:
    """CHEV for Chevigny-Saint-Sauveur: four ASCII capitals, as in inventory device names."""
    ascii_ = unicodedata.normalize("NFKD", commune).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_ if ch.isalpha()).upper()[:4]


@cache
def cabinet_points() -> tuple[tuple[str, int, float], ...]:
    """(name, kind, deadband) of each point of the shipped lighting_cabinet type."""
    from city_scada import REGISTRY
    from scada.config import load_tags

    cfg = load_tags(SHIPPED_TAGS, REGISTRY)
    return tuple((p.name, p.kind, p.deadband) for p in cfg.types[CABINET_TYPE].points)


def cabinet_names(n_cabinets: int) -> list[tuple[str, str]]:
    """(commune, device name) of n cabinets, round-robin over the communes."""
    cs = communes()
    codes = [commune_code(c) for c in cs]
    width = max(4, len(str(n_cabinets // len(cs) + 1)))
    return [(cs[i % len(cs)], f"LC-{codes[i % len(cs)]}-{i // len(cs) + 1:0{width}d}") for i in range(n_cabinets)]


def tag_table(n_tags: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, kinds and deadbands of n tags, as ``Config.tag_table()`` would give them.

    The names are built the same way (``prefix + point``, one new str per tag) so that their
    memory is that of the running server.
    """
    points = cabinet_points()
    per = len(points)
    n_cab = -(-n_tags // per)
    names: list[str] = []
    for commune, dev in cabinet_names(n_cab):
        prefix = f"{commune}/lighting/{dev}/"
        names.extend(prefix + p[0] for p in points)
    del names[n_tags:]
    kinds = np.resize(np.array([p[1] for p in points], np.uint8), n_tags)
    deadbands = np.resize(np.array([p[2] for p in points], np.float64), n_tags)
    return names, kinds, deadbands


def write_config(n_tags: int, directory: Path | None = None) -> Path:
    """A configuration folder for n tags: the shipped equipment types + a CSV inventory.

    ``tags.yaml`` keeps the shipped ``equipment_types`` section verbatim and imports
    ``n_tags / points`` lighting cabinets (rounded up) from ``inventory.csv``. Returns the folder.
    """
    directory = Path(directory or tempfile.mkdtemp(prefix="scada-bench-"))
    from tests.configs import shipped_types

    head = shipped_types()
    (directory / "tags.yaml").write_text(
        head + "\ninventories:\n  - file: inventory.csv\n    type: " + CABINET_TYPE + "\n", encoding="utf-8"
    )
    n_cab = -(-n_tags // len(cabinet_points()))
    with (directory / "inventory.csv").open("w", encoding="utf-8", newline="") as fh:
        fh.write("name,commune,lat,lon,endpoint,unit\n")
        for i, (commune, dev) in enumerate(cabinet_names(n_cab)):
            lat = 47.30 + (i % 997) * 1e-4
            lon = 5.00 + (i % 991) * 1e-4
            fh.write(f"{dev},{commune},{lat:.5f},{lon:.5f},127.0.0.1:{15020 + i % 1000},{1 + i % 247}\n")
    return directory


def load_config(n_tags: int):
    """Write and load a configuration of n tags (rounded up to whole cabinets)."""
    from bench.harness import load_config as _load

    with tempfile.TemporaryDirectory(prefix="scada-bench-") as tmp:
        return _load(write_config(n_tags, Path(tmp)))
