"""Device inventories shared by the simulators and the server (the CSV a city's GIS would export).

The simulator reads the same CSV that tags.yaml imports, so the server supervises exactly what
is simulated. Columns: name, type, commune, lat, lon, endpoint, unit.
"""

from __future__ import annotations

import csv
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

COMMUNES_CSV = Path(__file__).parent / "data" / "dijon-communes.csv"
COLUMNS = ("name", "type", "commune", "lat", "lon", "endpoint", "unit")


@dataclass(frozen=True)
class Cabinet:
    name: str
    commune: str
    lat: float
    lon: float
    host: str
    port: int
    unit: int

    @property
    def lamps(self) -> int:
        """Luminaires fed: 20-45, a stable function of the name (no extra column the server ignores)."""
        return 20 + zlib.crc32(self.name.encode()) % 26


def read_cabinets(path: str | Path) -> list[Cabinet]:
    out = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = csv.DictReader(line for line in fh if line.strip() and not line.lstrip().startswith("#"))
        for row in rows:
            host, _, port = row["endpoint"].removeprefix("tcp://").rpartition(":")
            out.append(
                Cabinet(
                    row["name"],
                    row["commune"],
                    float(row["lat"]),
                    float(row["lon"]),
                    host,
                    int(port),
                    int(row.get("unit") or 1),
                )
            )
    return out


def communes() -> list[tuple[str, float, float]]:
    with open(COMMUNES_CSV, newline="", encoding="utf-8") as fh:
        return [(r["commune"], float(r["lat"]), float(r["lon"])) for r in csv.DictReader(fh)]


def generate_cabinets(
    per_commune: int, host: str = "127.0.0.1", base_port: int = 15020, units_per_port: int = 1
) -> list[Cabinet]:
    """``per_commune`` cabinets in each commune, scattered within about a kilometre of its centre."""
    out = []
    i = 0
    used: set[str] = set()
    for commune, lat, lon in communes():
        letters = unicodedata.normalize("NFKD", commune).encode("ascii", "ignore").decode().upper()
        letters = "".join(ch for ch in letters if ch.isalpha())
        code = letters[:3]
        n = 3
        while code in used:  # Bressey-sur-Tille and Bretenière: BRE, then BRES...
            n += 1
            code = letters[:n]
        used.add(code)
        for k in range(per_commune):
            h = zlib.crc32(f"{commune}{k}".encode())
            out.append(
                Cabinet(
                    f"LC-{code}-{k + 1:03d}",
                    commune,
                    round(lat + ((h & 0xFFFF) / 0xFFFF - 0.5) * 0.02, 5),
                    round(lon + ((h >> 16) / 0xFFFF - 0.5) * 0.03, 5),
                    host,
                    base_port + i // units_per_port,
                    1 + i % units_per_port,
                )
            )
            i += 1
    return out


def write_cabinets(path: str | Path, cabinets: list[Cabinet], type_name: str = "lighting_cabinet") -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for c in cabinets:
            w.writerow([c.name, type_name, c.commune, c.lat, c.lon, f"{c.host}:{c.port}", c.unit])
