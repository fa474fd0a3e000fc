"""Generate a simulated city: which equipment stands where, and the server's matching inventory.

``generate("dijon")`` lays out the reference metropolis from its 24 communes (centres and
populations): about 1,100 lighting cabinets feeding 34,000 light points, 113 signalised
junctions, 26 access bollards and 205 vehicles, spread by population. Smaller presets serve
tests and the default demo. :func:`write_config` writes the CSV inventories and a
``tags.yaml`` importing them, so the server supervises exactly what is simulated.
"""

from __future__ import annotations

import csv
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulators.inventory import Cabinet, communes, write_cabinets


@dataclass(frozen=True)
class Preset:
    cabinets: int
    light_points: int
    junctions: int
    bollards: int
    vehicles: int


PRESETS = {
    "tiny": Preset(cabinets=6, light_points=180, junctions=2, bollards=2, vehicles=3),
    "small": Preset(cabinets=48, light_points=1_500, junctions=6, bollards=4, vehicles=10),
    "dijon": Preset(cabinets=1_100, light_points=34_000, junctions=113, bollards=26, vehicles=205),
}


@dataclass(frozen=True)
class Site:
    name: str
    commune: str
    lat: float
    lon: float


@dataclass(frozen=True)
class City:
    preset: str
    cabinets: list[Cabinet]
    lamps: list[int]  # luminaires fed by each cabinet
    junctions: list[Site]
    bollards: list[Site]
    vehicles: list[str]
    places: list[tuple[float, float]]  # commune centres; the first is the city centre (Dijon)


def _codes(names: list[str]) -> dict[str, str]:
    out, used = {}, set()
    for name in names:
        letters = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().upper()
        letters = "".join(ch for ch in letters if ch.isalpha())
        n = 3
        while letters[:n] in used:
            n += 1
        out[name] = letters[:n]
        used.add(letters[:n])
    return out


def _spread(total: int, weights: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainders), each >= minimum."""
    base = np.full(len(weights), minimum, np.int64)
    rest = total - base.sum()
    if rest < 0:
        raise ValueError("total below the minimum per commune")
    share = weights / weights.sum() * rest
    counts = np.floor(share).astype(np.int64)
    remainder = rest - counts.sum()
    counts[np.argsort(-(share - counts))[:remainder]] += 1
    return base + counts


def _scatter(key: str, lat: float, lon: float, radius_deg: float) -> tuple[float, float]:
    h = zlib.crc32(key.encode())
    return (
        round(lat + ((h & 0xFFFF) / 0xFFFF - 0.5) * 2 * radius_deg, 5),
        round(lon + ((h >> 16) / 0xFFFF - 0.5) * 3 * radius_deg, 5),
    )


def generate(preset: str = "small", host: str = "127.0.0.1", base_port: int = 15020, units_per_port: int = 1) -> City:
    """The city of a preset; ``cabinets-N`` is a lighting-only city of N cabinets (benchmarks)."""
    if preset.startswith("cabinets-") and preset[9:].isdigit() and int(preset[9:]) > 0:
        n = int(preset[9:])
        p = Preset(cabinets=n, light_points=31 * n, junctions=0, bollards=0, vehicles=0)
    elif preset not in PRESETS:
        raise ValueError(f"unknown city preset {preset!r} (presets: {', '.join(PRESETS)}, or cabinets-N)")
    else:
        p = PRESETS[preset]
    rows = communes()
    names = [r[0] for r in rows]
    pop = np.array([_population(n) for n in names], np.float64)
    codes = _codes(names)
    order = np.argsort(-pop, kind="stable")  # Dijon (the largest) first
    # Lighting follows population with a floor per commune; junctions and bollards follow
    # population more steeply (they concentrate in the dense centre).
    per_commune = _spread(p.cabinets, pop, minimum=min(2, p.cabinets // len(rows)))
    junction_counts = _spread(p.junctions, pop**1.3)
    bollard_counts = _spread(p.bollards, pop**2.0)
    cabinets: list[Cabinet] = []
    junctions: list[Site] = []
    bollards: list[Site] = []
    i = 0
    for k in order.tolist():
        name, lat, lon = rows[k]
        radius = 0.004 + 0.00000045 * pop[k] ** 0.9
        for j in range(per_commune[k]):
            cname = f"LC-{codes[name]}-{j + 1:03d}"
            clat, clon = _scatter(cname, lat, lon, radius)
            cabinets.append(
                Cabinet(cname, name, clat, clon, host, base_port + i // units_per_port, 1 + i % units_per_port)
            )
            i += 1
        for j in range(junction_counts[k]):
            jname = f"J-{codes[name]}-{j + 1:03d}"
            junctions.append(Site(jname, name, *_scatter(jname, lat, lon, radius * 0.6)))
        for j in range(bollard_counts[k]):
            bname = f"B-{codes[name]}-{j + 1:03d}"
            bollards.append(Site(bname, name, *_scatter(bname, lat, lon, radius * 0.3)))
    lamps = _spread(
        p.light_points,
        np.ones(len(cabinets)) + np.array([zlib.crc32(c.name.encode()) % 7 / 10 for c in cabinets]),
        minimum=1,
    ).tolist()
    places = [(rows[k][1], rows[k][2]) for k in order.tolist()]
    vehicles = [f"V-{n + 1:03d}" for n in range(p.vehicles)]
    return City(preset, cabinets, lamps, junctions, bollards, vehicles, places)


_POPULATION: dict[str, float] = {}


def _population(commune: str) -> float:
    if not _POPULATION:
        from simulators.inventory import COMMUNES_CSV

        with open(COMMUNES_CSV, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                _POPULATION[r["commune"]] = float(r["approx_population"])
    return _POPULATION[commune]


def write_sites(path: Path, sites: list[Site], kind: str, endpoint: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "type", "commune", "lat", "lon", "endpoint"])
        for s in sites:
            w.writerow([s.name, kind, s.commune, s.lat, s.lon, endpoint])


INVENTORIES = {
    "lighting": "inventory/lighting-cabinets.csv",
    "traffic": "inventory/junctions.csv",
    "bollards": "inventory/bollards.csv",
    "vehicles": "inventory/vehicles.csv",
}


def write_inventories(city: City, folder: Path, opcua_endpoint: str, mqtt: str) -> list[str]:
    """The four CSV inventories of ``city`` under ``folder``; returns their paths relative to it."""
    folder = Path(folder)
    (folder / "inventory").mkdir(parents=True, exist_ok=True)
    write_cabinets(folder / INVENTORIES["lighting"], city.cabinets)
    write_sites(folder / INVENTORIES["traffic"], city.junctions, "traffic_junction", opcua_endpoint)
    write_sites(folder / INVENTORIES["bollards"], city.bollards, "access_bollard", mqtt)
    depot = city.places[0]  # vehicles are filed under the depot's commune (the city centre)
    write_sites(
        folder / INVENTORIES["vehicles"],
        [Site(v, "Dijon", depot[0], depot[1]) for v in city.vehicles],
        "crew_vehicle",
        mqtt,
    )
    return list(INVENTORIES.values())


def write_config(
    city: City,
    folder: Path,
    types_from: Path,
    opcua_endpoint: str = "opc.tcp://127.0.0.1:4841/traffic/",
    mqtt: str = "127.0.0.1:1883",
) -> Path:
    """Write ``folder/tags.yaml`` (equipment types from ``types_from``) importing the city's inventories,
    and copy the ``alarms.yaml`` and (for a city with vehicles) ``operations.yaml`` found beside ``types_from``.

    ``opcua_endpoint`` is the traffic simulator's server and ``mqtt`` the broker the bollards
    and vehicles publish to, as the server must reach them.
    """
    folder = Path(folder)
    files = write_inventories(city, folder, opcua_endpoint, mqtt)
    text = Path(types_from).read_text(encoding="utf-8")
    head, sep, _ = text.partition("\ninventories:")
    if not sep:
        raise ValueError(f"{types_from} has no inventories section to replace")
    (folder / "tags.yaml").write_text(
        head
        + f"\ninventories:\n  # Generated by `python -m simulators city --preset {city.preset}`.\n"
        + "".join(f"  - file: {f}\n" for f in files),
        encoding="utf-8",
    )
    # The alarms and the operations contract beside the types: the simulated city runs them too.
    # operations.yaml's crews are patterns over the vehicles V-001...: they fit every preset, but
    # a lighting-only bench city (cabinets-N) has no vehicle: it runs without operations.
    for name in ("alarms.yaml", "operations.yaml") if city.vehicles else ("alarms.yaml",):
        source = Path(types_from).parent / name
        if source.is_file():
            text = source.read_text(encoding="utf-8")
            if name == "operations.yaml":
                # No fixed HTTP port in a generated configuration: several servers (tests, benches)
                # run from them at once; `scada run --http HOST:PORT` serves it (the demo does).
                text = re.sub(r"(?m)^(\s+listen:).*$", r"\1 false   # generated: scada run --http HOST:PORT", text)
            (folder / name).write_text(text, encoding="utf-8")
    return folder / "tags.yaml"
