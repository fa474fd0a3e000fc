"""Zones and groups resolved against hand-made geometry (scada/control/zones.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scada.alarms.config import AlarmsConfig
from scada.config import Config, Device, EquipmentType
from scada.control import zones
from scada.control.model import ControlConfig, ZoneDef

LAT0, LON0 = 47.32, 5.04
M_PER_DEG_LAT = zones.EARTH_RADIUS_M * math.pi / 180.0


def north(metres: float) -> float:
    """The latitude ``metres`` north of LAT0 along the meridian (a great circle: exact)."""
    return LAT0 + metres / M_PER_DEG_LAT


def east(metres: float, lat: float = LAT0) -> float:
    """The longitude at great-circle distance ``metres`` east of LON0 on the parallel ``lat``."""
    return LON0 + math.degrees(
        2 * math.asin(math.sin(metres / (2 * zones.EARTH_RADIUS_M)) / math.cos(math.radians(lat)))
    )


def make_config(
    devices: list[tuple[str, str, str, float, float]], zone_defs: dict[str, ZoneDef] | None = None
) -> Config:
    """A configuration of bare devices: (name, class, commune, lat, lon); one type per class."""
    classes = sorted({c for _, c, *_ in devices})
    types = {f"{c}_type": EquipmentType(f"{c}_type", c, "modbus", (), 1.0, 1.0) for c in classes}
    devs = tuple(
        Device(name, f"{cls}_type", commune, lat, lon, 1.0, 1.0, None, 0, f"test:{k}", index=k)
        for k, (name, cls, commune, lat, lon) in enumerate(devices)
    )
    return Config(
        Path("."),
        types,
        devs,
        AlarmsConfig((), {}),
        control=ControlConfig(zones=zone_defs or {}),
        _device_index={d.name: d for d in devs},
    )


def names(devs) -> list[str]:
    return [d.name for d in devs]


def test_circle_inside_outside_and_exactly_on_the_radius() -> None:
    cfg = make_config(
        [
            ("centre", "bollard", "Dijon", LAT0, LON0),
            ("in_399", "bollard", "Dijon", north(399.0), LON0),
            ("at_400_north", "bollard", "Dijon", north(400.0), LON0),
            ("at_400_east", "bollard", "Dijon", LAT0, east(400.0)),
            ("out_401", "bollard", "Dijon", north(401.0), LON0),
            ("out_east", "bollard", "Dijon", LAT0, east(400.5)),
            ("far", "bollard", "Talant", 47.34, 4.99),
        ]
    )
    d = zones.great_circle_m(np.array([north(400.0), LAT0]), np.array([LON0, east(400.0)]), LAT0, LON0)
    assert d == pytest.approx([400.0, 400.0], abs=1e-6)
    got = zones.zone_devices(ZoneDef("z", circle=(LAT0, LON0, 400.0)), cfg)
    assert names(got) == ["centre", "in_399", "at_400_north", "at_400_east"]


def test_great_circle_distance_against_a_known_one() -> None:
    # Dijon (Place de la Liberation) to Paris (Notre-Dame), about 262 km as the crow flies.
    d = zones.great_circle_m(np.array([48.8530]), np.array([2.3499]), 47.3216, 5.0415)
    assert 255_000 < d[0] < 270_000


SQUARE = [(47.30, 5.00), (47.30, 5.02), (47.32, 5.02), (47.32, 5.00)]
# A "U": the notch (lat 47.305-47.32, lon 5.007-5.013) is outside.
U_SHAPE = [
    (47.30, 5.00),
    (47.30, 5.02),
    (47.32, 5.02),
    (47.32, 5.013),
    (47.305, 5.013),
    (47.305, 5.007),
    (47.32, 5.007),
    (47.32, 5.00),
]


def test_polygon_inside_outside_edges_and_vertices() -> None:
    lat = np.array([47.31, 47.33, 47.30, 47.31, 47.32, 47.30 - 1e-5, 47.31, 47.31])
    lon = np.array([5.01, 5.01, 5.01, 5.02, 5.00, 5.01, 5.02 + 2e-5, 4.999])
    got = zones.in_polygon(lat, lon, SQUARE)
    #                   inside above  s.edge e.edge vertex 1m out  1.5m out  west
    assert got.tolist() == [True, False, True, True, True, False, False, False]


def test_concave_polygon_leaves_its_notch_out() -> None:
    lat = np.array([47.315, 47.315, 47.315, 47.302, 47.305, 47.31, 47.325])
    lon = np.array([5.003, 5.010, 5.017, 5.010, 5.010, 5.007, 5.003])
    got = zones.in_polygon(lat, lon, U_SHAPE)
    #                   left arm notch right arm base  notch floor notch wall above
    assert got.tolist() == [True, False, True, True, True, True, False]


def test_polygon_matches_a_point_by_point_winding_number() -> None:
    rng = np.random.default_rng(7)
    lat = rng.uniform(47.295, 47.325, 3000)
    lon = rng.uniform(4.995, 5.025, 3000)

    def winding(y: float, x: float) -> bool:  # sum of the angles the edges subtend (a different method)
        total = 0.0
        for (ay, ax), (by, bx) in zip(U_SHAPE, U_SHAPE[1:] + U_SHAPE[:1]):
            a1 = math.atan2(ay - y, (ax - x) * math.cos(math.radians(47.31)))
            a2 = math.atan2(by - y, (bx - x) * math.cos(math.radians(47.31)))
            total += (a2 - a1 + math.pi) % (2 * math.pi) - math.pi
        return abs(total) > math.pi

    expected = [winding(y, x) for y, x in zip(lat, lon)]
    assert zones.in_polygon(lat, lon, U_SHAPE).tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_a_polygon_needs_three_vertices() -> None:
    with pytest.raises(ValueError, match="three"):
        zones.in_polygon(np.array([47.0]), np.array([5.0]), [(47.0, 5.0), (47.1, 5.0)])


def test_zone_union_of_list_and_shape_then_classes_in_device_order() -> None:
    cfg = make_config(
        [
            ("L1", "lighting", "Dijon", 47.31, 5.01),
            ("B1", "bollard", "Dijon", 47.31, 5.011),
            ("B2", "bollard", "Dijon", 47.40, 5.20),  # far, listed
            ("T1", "traffic", "Dijon", 47.315, 5.015),
            ("B3", "bollard", "Dijon", 47.50, 5.30),  # far, not listed
        ]
    )
    both = ZoneDef("z", devices=("B2",), polygon=tuple(SQUARE))
    assert names(zones.zone_devices(both, cfg)) == ["L1", "B1", "B2", "T1"]
    only_bollards = ZoneDef("z", devices=("B2",), polygon=tuple(SQUARE), classes=("bollard",))
    assert names(zones.zone_devices(only_bollards, cfg)) == ["B1", "B2"]
    listed = ZoneDef("z", devices=("T1", "L1"))
    assert names(zones.zone_devices(listed, cfg)) == ["L1", "T1"]
    assert zones.zone_devices(ZoneDef("z", devices=("L1",), classes=("fleet",)), cfg) == ()


def test_a_listed_unknown_device_is_a_located_error() -> None:
    cfg = make_config([("L1", "lighting", "Dijon", 47.31, 5.01)])
    with pytest.raises(ValueError, match=r"zone 'z' \(tags.yaml:12\) lists unknown devices: NOPE"):
        zones.zone_devices(ZoneDef("z", devices=("L1", "NOPE"), source="tags.yaml:12"), cfg)


def test_groups_commune_class_folder_and_zone() -> None:
    cfg = make_config(
        [
            ("L1", "lighting", "Dijon", 47.31, 5.01),
            ("B1", "bollard", "Dijon", 47.31, 5.011),
            ("L2", "lighting", "Talant", 47.33, 4.99),
            ("L3", "lighting", "Dijon", 47.32, 5.03),
        ],
        {"centre": ZoneDef("centre", circle=(47.31, 5.01, 200.0))},
    )
    assert names(zones.group_devices(cfg, "Dijon")) == ["L1", "B1", "L3"]
    assert names(zones.group_devices(cfg, "Dijon/lighting")) == ["L1", "L3"]
    assert names(zones.group_devices(cfg, "Talant/lighting")) == ["L2"]
    assert names(zones.group_devices(cfg, "zone:centre")) == ["L1", "B1"]
    for unknown, what in [
        ("Paris", "no commune 'Paris'"),
        ("Dijon/fleet", "no class 'fleet'"),
        ("Talant/bollard", "commune 'Talant' has no bollard devices"),
        ("zone:nowhere", "no zone 'nowhere'"),
    ]:
        with pytest.raises(zones.UnknownGroup, match=what):
            zones.group_devices(cfg, unknown)


def test_the_index_is_built_once_per_configuration() -> None:
    a = make_config([("L1", "lighting", "Dijon", 47.31, 5.01)])
    b = make_config([("L1", "lighting", "Dijon", 47.31, 5.01)])
    assert zones.index_of(a) is zones.index_of(a)
    assert zones.index_of(b) is not zones.index_of(a)
    key = id(b)
    del b
    import gc

    gc.collect()
    assert key not in zones._indexes or zones._indexes[key][0]() is not None
