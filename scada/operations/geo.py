"""The live map feed: one GeoJSON FeatureCollection (RFC 7946) of the city as the front sees it.

Features (``properties.kind``):

* ``equipment``: every device but the fleet's, at its configured position, with its
  communication state (its ``Diagnostics/state`` tag) and its worst active alarm (highest
  severity among the instances whose condition is active) or null;
* ``crew``: each fleet vehicle at its last reported position (its ``lat``/``lon`` tags), with
  its status (the ``status`` tag's label) and the open order it holds;
* ``work_order``: each open order, at its site (``geometry: null`` for an unlocated report's);
* ``citizen_report``: the reports of the last day, public fields only (no contact: the mirror
  never holds it).

Coordinates are ``[lon, lat]`` (RFC 7946 3.1.1), rounded to 6 decimals (0.1 m). Filters
``commune`` and ``class`` (an equipment class: lighting, traffic, bollard, fleet...); an order
has its device's class (an unlocated one, its service's classes), a report its service's.

The feed is built at most once per second per filter and the same bytes are served to every
client in that second: a map polled by 50 clients costs one encoding, not 50. Building reads
the tag columns and the alarm state with array operations; only the features are Python
objects (a few thousand for Dijon).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scada.config import DIAG_STATES, Config
from scada.front.orders import OrdersMirror
from scada.operations.model import OperationsConfig, WorkOrder
from scada.operations.open311 import iso

FLEET = "fleet"
STATE_LABELS = dict(DIAG_STATES)
ONLINE = 1


class FilterError(ValueError):
    """An unknown commune or class in the query (answered 400)."""


def _point(lat: float | None, lon: float | None) -> dict[str, Any] | None:
    if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    return {"type": "Point", "coordinates": [round(float(lon), 6), round(float(lat), 6)]}


def _feature(fid: str, geometry: dict[str, Any] | None, props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


class GeoFeed:
    """Builds and caches the feed from the front's mirrors (tags, alarms, orders)."""

    def __init__(
        self,
        config: Config,
        ops: OperationsConfig,
        tags: Any,
        alarms: Any,
        orders: OrdersMirror,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.orders = orders
        self.clock = clock
        self.encoded = 0  # how many times a body was built (the cache's test)
        self._cache: dict[tuple[str | None, str | None], bytes] = {}
        self._cache_second = -1
        self.rebind(config, ops, tags, alarms)

    def rebind(self, config: Config, ops: OperationsConfig, tags: Any, alarms: Any) -> None:
        """Follow a new configuration (a reload): new tables, an empty cache."""
        self.config, self.ops, self.tags, self.alarms = config, ops, tags, alarms
        devices = config.devices
        self.device_class = {d.name: config.types[d.type].cls for d in devices}
        self.communes = frozenset(d.commune for d in devices)
        self.classes = frozenset(self.device_class.values())
        first_diag = np.array([int(config.diag_ids(d)[0]) for d in devices], np.int64)
        self._equipment = [i for i, d in enumerate(devices) if config.types[d.type].cls != FLEET]
        self._eq_state_ids = first_diag[self._equipment] if self._equipment else np.zeros(0, np.int64)
        self._crews: list[tuple[Any, int, int, int, dict[float, str]]] = []
        for d in devices:
            t = config.types[d.type]
            if t.cls != FLEET:
                continue
            prefix = f"{d.commune}/{t.cls}/{d.name}/"
            try:
                lat_id, lon_id = tags.id_of(prefix + "lat"), tags.id_of(prefix + "lon")
            except KeyError:
                continue  # a fleet device without a position is not a crew on the map
            status = t.point("status")
            status_id = tags.id_of(prefix + "status") if status is not None else -1
            labels = {float(v): str(lbl) for v, lbl in (status.enum or ())} if status is not None else {}
            self._crews.append((d, lat_id, lon_id, status_id, labels))
        self._severity = np.array([a.severity for a in config.alarms.alarms] or [0], np.int64)
        self._cache.clear()

    # -- the feed ----------------------------------------------------------------------------------

    def body(self, commune: str | None = None, cls: str | None = None) -> bytes:
        """The encoded feed for these filters, built at most once per second (FilterError)."""
        if commune is not None and commune not in self.communes:
            raise FilterError(f"unknown commune {commune!r}")
        if cls is not None and cls not in self.classes:
            raise FilterError(f"unknown class {cls!r} (one of {', '.join(sorted(self.classes))})")
        second = int(self.clock())
        if second != self._cache_second:
            self._cache.clear()
            self._cache_second = second
        key = (commune, cls)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = json.dumps(self.collection(commune, cls), separators=(",", ":")).encode()
            self.encoded += 1
        return out

    def collection(self, commune: str | None = None, cls: str | None = None) -> dict[str, Any]:
        features = [
            *self._equipment_features(commune, cls),
            *self._crew_features(commune, cls),
            *self._order_features(commune, cls),
            *self._report_features(commune, cls),
        ]
        return {"type": "FeatureCollection", "features": features}

    def _worst_alarms(self) -> dict[int, int]:
        """Device index -> the instance of its worst active alarm (highest severity)."""
        a = self.alarms
        if a is None:
            return {}
        active = np.flatnonzero(a.cond)
        if not len(active):
            return {}
        dev = a.inst_dev[active]
        sev = self._severity[a.inst_def[active]]
        order = np.lexsort((-sev, dev))  # by device, then severity descending
        dev_sorted = dev[order]
        _, first = np.unique(dev_sorted, return_index=True)
        return dict(zip(dev_sorted[first].tolist(), active[order][first].tolist()))

    def _alarm(self, i: int) -> dict[str, Any]:
        a = self.alarms
        d = a.defs[int(a.inst_def[i])]
        return {"name": d.name, "priority": d.priority, "severity": d.severity, "since": iso(int(a.cond_since[i]))}

    def _equipment_features(self, commune: str | None, cls: str | None) -> list[dict[str, Any]]:
        if cls == FLEET:
            return []
        devices = self.config.devices
        states = np.asarray(self.tags.value)[self._eq_state_ids]
        worst = self._worst_alarms()
        out = []
        for k, i in enumerate(self._equipment):
            d = devices[i]
            c = self.device_class[d.name]
            if (commune is not None and d.commune != commune) or (cls is not None and c != cls):
                continue
            s = states[k]
            state = STATE_LABELS.get(int(s), "unknown") if math.isfinite(s) else "not_connected"
            w = worst.get(i)
            props = {
                "kind": "equipment",
                "name": d.name,
                "class": c,
                "type": d.type,
                "commune": d.commune,
                "state": state,
                "online": state == "online",
                "alarm": self._alarm(w) if w is not None else None,
            }
            out.append(_feature(f"equipment/{d.name}", _point(d.lat, d.lon), props))
        return out

    def _crew_features(self, commune: str | None, cls: str | None) -> list[dict[str, Any]]:
        if cls is not None and cls != FLEET:
            return []
        value = np.asarray(self.tags.value)
        holding = {o.crew: o.id for o in self.orders.orders.values() if o.crew}
        out = []
        for d, lat_id, lon_id, status_id, labels in self._crews:
            if commune is not None and d.commune != commune:
                continue
            s = float(value[status_id]) if status_id >= 0 else math.nan
            props = {
                "kind": "crew",
                "name": d.name,
                "class": FLEET,
                "commune": d.commune,
                "status": labels.get(s, "unknown") if math.isfinite(s) else "unknown",
                "order": holding.get(d.name),
            }
            out.append(_feature(f"crew/{d.name}", _point(float(value[lat_id]), float(value[lon_id])), props))
        return out

    def _classes_of(self, service: str) -> tuple[str, ...]:
        s = self.ops.services.get(service)
        return s.classes if s is not None else ()

    def _order_class(self, o: WorkOrder) -> tuple[str, ...]:
        c = self.device_class.get(o.device) if o.device else None
        return (c,) if c else self._classes_of(o.service)

    def _order_features(self, commune: str | None, cls: str | None) -> list[dict[str, Any]]:
        out = []
        for o in self.orders.orders.values():
            classes = self._order_class(o)
            if (commune is not None and o.commune != commune) or (cls is not None and cls not in classes):
                continue
            props = {
                "kind": "work_order",
                "name": o.id,
                "state": o.state.label,
                "source": o.source,
                "service": o.service,
                "priority": o.priority,
                "device": o.device,
                "class": classes[0] if classes else None,
                "commune": o.commune,
                "cause": o.cause,
                "crew": o.crew,
                "created": iso(o.created_ns),
                "on_site_due": iso(o.on_site_due_ns),
                "repaired_due": iso(o.repaired_due_ns),
                "breached": o.breached,
                "reports": len(o.reports),
            }
            out.append(_feature(f"work_order/{o.id}", _point(o.lat, o.lon), props))
        return out

    def _report_features(self, commune: str | None, cls: str | None) -> list[dict[str, Any]]:
        out = []
        for r in self.orders.recent_reports():
            service = self.ops.service_of_code(r.service_code)
            classes = service.classes if service is not None else ()
            order = self.orders.orders.get(r.order) if r.order else None
            if commune is not None and (order is None or order.commune != commune):
                continue  # a report has no commune of its own: its order's
            if cls is not None and cls not in classes:
                continue
            # An order that left the mirror's open set is closed (or cancelled).
            status = "open" if r.order is None or order is not None else "closed"
            props = {
                "kind": "citizen_report",
                "name": r.id,
                "service_code": r.service_code,
                "description": r.description,
                "address": r.address,
                "requested": iso(r.requested_ns),
                "order": r.order,
                "status": status,
            }
            out.append(_feature(f"citizen_report/{r.id}", _point(r.lat, r.lon), props))
        return out
