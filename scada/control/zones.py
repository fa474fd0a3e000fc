"""Which devices a group action reaches: zones, communes and class folders (pure, numpy).

A zone (tags.yaml ``zones:``, :class:`~scada.control.model.ZoneDef`) is a list of devices, a
circle or a polygon over the devices' coordinates, or several of these (their union),
optionally kept to some equipment classes. :func:`zone_devices` resolves one against the
configuration, :func:`group_devices` resolves any group a group action names: a commune folder
("Dijon"), a class folder ("Dijon/lighting") or a zone ("zone:NAME").

Everything is vectorised over the configuration's devices (a city has a few thousand): one
array of latitudes, one of longitudes, codes for communes and classes, built once per
configuration and cached (:func:`index_of`); a resolution is a handful of array operations.

Geometry:

* **Circle**: great-circle (haversine) distance from the centre on a sphere of the mean Earth
  radius; a device exactly on the circle is inside (with 1 mm of slack for rounding).
* **Polygon**: even-odd ray casting in a local plane: x = longitude x cos(mean latitude of the
  polygon), y = latitude, in metres (an equirectangular projection around the polygon). The
  plane is an affine image of the (lat, lon) plane, so which side of an edge a device lies on is
  the same in both: the approximation is only that an edge is a straight line on the map (a
  rhumb line) rather than a great-circle arc. Why that holds at city scale: the two part by
  L^2 tan(latitude) / 8R for an east-west edge of length L (at 47 degrees N: 2 cm at 1 km,
  0.5 m at 5 km, 2 m at 10 km), under the precision of an inventory's coordinates (a few
  metres), and the technician drew the polygon on a map, where the straight line is the one
  meant; the metres of the plane only serve the slack on edges. A device on
  an edge or a vertex is inside (1 cm of slack). Concave polygons are fine; a self-crossing one
  follows the even-odd rule.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scada.control.model import ZONE_PREFIX, ZoneDef

if TYPE_CHECKING:
    from scada.config import Config, Device

EARTH_RADIUS_M = 6_371_008.8  # the mean Earth radius (IUGG)
CIRCLE_SLACK_M = 1e-3  # a device on the circle, give or take rounding, is inside
EDGE_SLACK_M = 1e-2  # a device on a polygon's edge, give or take rounding, is inside
_M_PER_DEG = EARTH_RADIUS_M * np.pi / 180.0  # metres per degree of latitude (and of longitude at the equator)


class UnknownGroup(LookupError):
    """A group action names a group that does not exist (no such commune, class folder or zone)."""


@dataclass(frozen=True, eq=False)
class DeviceIndex:
    """The configuration's devices as arrays, in device order (what every resolution works on)."""

    devices: tuple[Device, ...]
    lat: np.ndarray  # float64 degrees
    lon: np.ndarray
    commune: np.ndarray  # int32 code into ``communes``
    cls: np.ndarray  # int32 code into ``classes``
    communes: tuple[str, ...]
    classes: tuple[str, ...]
    position: dict[str, int]  # device name -> index

    @classmethod
    def build(cls_, config: Config) -> DeviceIndex:
        devices = tuple(config.devices)
        communes = tuple(dict.fromkeys(d.commune for d in devices))
        classes = tuple(dict.fromkeys(config.types[d.type].cls for d in devices))
        commune_code = {c: k for k, c in enumerate(communes)}
        class_code = {c: k for k, c in enumerate(classes)}
        return cls_(
            devices,
            np.fromiter((d.lat for d in devices), np.float64, len(devices)),
            np.fromiter((d.lon for d in devices), np.float64, len(devices)),
            np.fromiter((commune_code[d.commune] for d in devices), np.int32, len(devices)),
            np.fromiter((class_code[config.types[d.type].cls] for d in devices), np.int32, len(devices)),
            communes,
            classes,
            {d.name: k for k, d in enumerate(devices)},
        )

    def pick(self, mask: np.ndarray) -> tuple[Device, ...]:
        return tuple(self.devices[k] for k in np.flatnonzero(mask))

    def class_mask(self, classes: Sequence[str]) -> np.ndarray:
        codes = [self.classes.index(c) for c in classes if c in self.classes]
        return np.isin(self.cls, np.asarray(codes, np.int32))


# One index per configuration object (a reload builds a new Config, and its own index); the
# entry goes with its configuration.
_indexes: dict[int, tuple[weakref.ref, DeviceIndex]] = {}
_lock = threading.Lock()  # the front and the core are processes, but tests may use threads


def index_of(config: Config) -> DeviceIndex:
    key = id(config)
    with _lock:
        hit = _indexes.get(key)
        if hit is not None and hit[0]() is config:
            return hit[1]
    index = DeviceIndex.build(config)

    def forget(_ref: weakref.ref) -> None:
        _indexes.pop(key, None)

    with _lock:
        _indexes[key] = (weakref.ref(config, forget), index)
    return index


# -- geometry --------------------------------------------------------------------------------


def great_circle_m(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Haversine distance in metres from (lat0, lon0) to every (lat, lon), in degrees."""
    phi, phi0 = np.radians(lat), np.radians(lat0)
    dphi = phi - phi0
    dlam = np.radians(lon - lon0)
    h = np.sin(dphi / 2.0) ** 2 + np.cos(phi) * np.cos(phi0) * np.sin(dlam / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def in_circle(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float, radius_m: float) -> np.ndarray:
    """Which points lie inside the circle or on it."""
    return great_circle_m(lat, lon, lat0, lon0) <= radius_m + CIRCLE_SLACK_M


def in_polygon(lat: np.ndarray, lon: np.ndarray, polygon: Sequence[tuple[float, float]]) -> np.ndarray:
    """Which points lie inside the polygon ((lat, lon) vertices, closed implicitly) or on its edge.

    Even-odd ray casting, vectorised over points x edges, in the local plane of the module's
    docstring (metres: x east, y north, around the polygon's mean latitude).
    """
    verts = np.asarray(polygon, np.float64)
    if verts.ndim != 2 or verts.shape[0] < 3 or verts.shape[1] != 2:
        raise ValueError("a polygon needs at least three (lat, lon) vertices")
    k = np.cos(np.radians(verts[:, 0].mean()))
    # Points as columns, edges as rows: (edges, points) arrays; a city's devices x a zone's
    # vertices is a few hundred thousand cells.
    px = (np.asarray(lon, np.float64) * k * _M_PER_DEG)[None, :]
    py = (np.asarray(lat, np.float64) * _M_PER_DEG)[None, :]
    ax, ay = (verts[:, 1] * k * _M_PER_DEG)[:, None], (verts[:, 0] * _M_PER_DEG)[:, None]
    bx, by = np.roll(ax, -1, axis=0), np.roll(ay, -1, axis=0)
    # Relative coordinates: metres around the polygon, so that nothing cancels catastrophically.
    ox, oy = ax.mean(), ay.mean()
    px, py, ax, ay, bx, by = px - ox, py - oy, ax - ox, ay - oy, bx - ox, by - oy
    # Crossing test: the edge straddles the point's horizontal (half-open, so a vertex counts once)
    # and the crossing lies to the right of the point.
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax + (py - ay) * (bx - ax) / (by - ay)
    crossings = np.count_nonzero(straddles & (px < x_cross), axis=0)
    inside = (crossings % 2) == 1
    # On an edge: distance from the point to the segment under the slack.
    ex, ey = bx - ax, by - ay
    length2 = ex * ex + ey * ey
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(length2 > 0, ((px - ax) * ex + (py - ay) * ey) / length2, 0.0)
    t = np.clip(t, 0.0, 1.0)
    dx, dy = px - (ax + t * ex), py - (ay + t * ey)
    on_edge = np.any(dx * dx + dy * dy <= EDGE_SLACK_M * EDGE_SLACK_M, axis=0)
    return inside | on_edge


# -- resolution ------------------------------------------------------------------------------


def zone_mask(zone: ZoneDef, index: DeviceIndex) -> np.ndarray:
    """The devices of ``zone`` as a boolean mask over ``index.devices``.

    A listed device that the configuration does not have is an error (ValueError naming the
    zone and where it is declared): the configuration's parser checks zones with this.
    """
    mask = np.zeros(len(index.devices), bool)
    if zone.devices:
        missing = [n for n in zone.devices if n not in index.position]
        if missing:
            where = f" ({zone.source})" if zone.source else ""
            raise ValueError(f"zone {zone.name!r}{where} lists unknown devices: {', '.join(missing)}")
        mask[[index.position[n] for n in zone.devices]] = True
    if zone.circle is not None:
        lat0, lon0, radius = zone.circle
        mask |= in_circle(index.lat, index.lon, lat0, lon0, radius)
    if zone.polygon:
        mask |= in_polygon(index.lat, index.lon, zone.polygon)
    if zone.classes:
        mask &= index.class_mask(zone.classes)
    return mask


def zone_devices(zone: ZoneDef, config: Config) -> tuple[Device, ...]:
    """The devices of ``zone``, in configuration order."""
    index = index_of(config)
    return index.pick(zone_mask(zone, index))


def group_devices(config: Config, group: str) -> tuple[Device, ...]:
    """The devices of a group, in configuration order: a commune ("Dijon"), a commune's class
    folder ("Dijon/lighting") or a zone ("zone:NAME"). UnknownGroup when there is no such group."""
    index = index_of(config)
    if group.startswith(ZONE_PREFIX):
        zone = config.control.zones.get(group[len(ZONE_PREFIX) :])
        if zone is None:
            raise UnknownGroup(f"no zone {group[len(ZONE_PREFIX) :]!r} in the configuration")
        return index.pick(zone_mask(zone, index))
    commune, _, cls = group.partition("/")
    if commune not in index.communes:
        raise UnknownGroup(f"no commune {commune!r} in the configuration")
    mask = index.commune == index.communes.index(commune)
    if cls:
        if cls not in index.classes:
            raise UnknownGroup(f"no class {cls!r} in the configuration")
        mask &= index.cls == index.classes.index(cls)
        if not mask.any():
            raise UnknownGroup(f"commune {commune!r} has no {cls} devices")
    return index.pick(mask)
