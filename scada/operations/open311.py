"""Open311 GeoReport v2, without I/O: what a request means, what is refused, what is answered.

The HTTP side (:mod:`scada.operations.http`) hands this module the bytes, the query and the
client's address; it gets back a validated :class:`~scada.operations.model.CitizenReport` (to
send to the core) or an :class:`Open311Error`, whose body is Open311's error format
``[{"code": 400, "description": "..."}]``. Nothing is stored before validation passed.

Choices where the specification leaves room (README "HTTP: Open311, map, metrics"):

* **JSON only.** GeoReport v2 makes XML the required format and JSON optional; city apps and
  this server speak JSON, so ``.xml`` is answered 400 "json only" rather than half-served.
* **Bodies:** ``application/x-www-form-urlencoded`` (the specification's) and
  ``application/json`` (an object of the same fields), nothing else (400).
* **Size:** a body above ``open311.max_body_bytes`` is answered 400 in the same error format,
  as the issue asks (and GeoReport v2's statuses are 400, 403, 404, 500): its description says
  the body is too large, so a client knows to retry without its photo.
* **Area:** ``GET requests.json?bbox=min_lon,min_lat,max_lon,max_lat`` (an extension: v2 has
  no area filter), in GeoJSON's bbox order (RFC 7946 5), the same as the map feed.
* **Privacy:** the contact fields (model.CONTACT_FIELDS) are taken from a POST and never put
  in any answer: :func:`public_request` builds answers from a whitelist of fields.
* **Rate:** :class:`RateLimiter`, a token bucket per client address (429): the TCP peer, or the
  citizen behind a trusted reverse proxy (:mod:`scada.operations.proxies`).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scada.operations.model import CONTACT_FIELDS, CitizenReport, OperationsConfig

EARTH_M_PER_DEG = 111_320.0  # metres per degree of latitude (and of longitude at the equator)
DEFAULT_WINDOW_NS = 90 * 86400 * 10**9  # GeoReport v2: without dates, the last 90 days
MAX_LIMIT = 1000  # GeoReport v2: at most 1000 requests per answer
# Text limits: a report is a sentence or a paragraph; anything longer is not a citizen's report.
MAX_DESCRIPTION = 4000
MAX_FIELD = 200
MAX_URL = 2000
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Fields of a POST this server reads; others (attribute[...], device_id, account_id, api_key)
# are accepted and ignored, as the specification lets a server do.
POST_FIELDS = ("service_code", "lat", "long", "address_string", "address_id", "description", "media_url",
               "jurisdiction_id", *CONTACT_FIELDS)  # fmt: skip
STATUSES = ("open", "closed")


class Open311Error(Exception):
    """A refusal: HTTP ``code`` and Open311's error list as the body."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code, self.description = code, description

    def body(self) -> list[dict[str, Any]]:
        return errors(self.code, self.description)


def errors(code: int, description: str) -> list[dict[str, Any]]:
    """Open311's error format."""
    return [{"code": code, "description": description}]


def bad(description: str) -> Open311Error:
    return Open311Error(400, description)


# -- the territory ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Territory:
    """Where a report may be: the devices' bounding box widened by a margin (in degrees)."""

    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    @classmethod
    def around(cls, points: Iterable[tuple[float, float]], margin_m: float) -> Territory | None:
        """The box of ``points`` (lat, lon) plus ``margin_m``; None without any point."""
        pts = [(lat, lon) for lat, lon in points if math.isfinite(lat) and math.isfinite(lon)]
        if not pts:
            return None
        lats, lons = [p[0] for p in pts], [p[1] for p in pts]
        dlat = margin_m / EARTH_M_PER_DEG
        # A degree of longitude shrinks with the latitude: the widest (nearest the pole) edge rules.
        coslat = max(math.cos(math.radians(max(abs(min(lats)), abs(max(lats))))), 1e-6)
        dlon = margin_m / (EARTH_M_PER_DEG * coslat)
        return cls(min(lats) - dlat, min(lons) - dlon, max(lats) + dlat, max(lons) + dlon)

    def contains(self, lat: float, lon: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


def territory_of(config: Any, margin_m: float) -> Territory | None:
    """The territory of a server configuration (scada.config.Config: its devices' positions)."""
    return Territory.around(((d.lat, d.lon) for d in config.devices), margin_m)


# -- services.json ---------------------------------------------------------------------------------


def services(ops: OperationsConfig) -> list[dict[str, Any]]:
    """GET services.json: the services offered to citizens (those with an open311_code)."""
    return [
        {
            "service_code": s.open311_code,
            "service_name": s.open311_name or s.name,
            "description": s.open311_description,
            "metadata": False,  # no service definition (attributes) to fetch
            "type": "realtime",  # the request id is given at once, no token
            "keywords": "",
            "group": s.name,
        }
        for s in ops.services.values()
        if s.open311_code
    ]


# -- POST requests.json ----------------------------------------------------------------------------


def parse_body(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a POST body (form-encoded or a JSON object), as text; Open311Error else."""
    ctype = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the body is not UTF-8") from None
    if ctype == "application/json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise bad(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if not isinstance(raw, dict):
            raise bad("the JSON body must be an object of the request's fields")
        out: dict[str, str] = {}
        for k, v in raw.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise bad(f"field {k!r} must be a string or a number")
            out[str(k)] = str(v)
        return out
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=200)
        except ValueError as exc:
            raise bad(f"malformed form body: {exc}") from None
        fields: dict[str, str] = {}
        for k, v in pairs:
            if k in fields and k in POST_FIELDS:
                raise bad(f"field {k!r} given twice")
            fields[k] = v
        return fields
    raise bad(
        f"content type {ctype or 'none'!r} is not served: use application/x-www-form-urlencoded or application/json"
    )


def _coordinate(fields: Mapping[str, str], name: str, low: float, high: float) -> float:
    try:
        v = float(fields[name])
    except ValueError:
        raise bad(f"{name} {fields[name]!r} is not a number") from None
    if not (math.isfinite(v) and low <= v <= high):
        raise bad(f"{name} {fields[name]!r} is out of range [{low}, {high}]")
    return v


def _text(fields: Mapping[str, str], name: str, limit: int = MAX_FIELD) -> str:
    v = fields.get(name, "").strip()
    if len(v) > limit:
        raise bad(f"{name} is longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\n\r\t" for c in v):
        raise bad(f"{name} holds control characters")
    return v


def parse_request(
    fields: Mapping[str, str],
    ops: OperationsConfig,
    territory: Territory | None,
    client: str,
    now_ns: int,
) -> CitizenReport:
    """A POSTed service request, validated; Open311Error (400) naming the first fault."""
    code = _text(fields, "service_code")
    if not code:
        raise bad("service_code is required")
    if ops.service_of_code(code) is None:
        raise bad(f"unknown service_code {code!r} (GET services.json lists them)")
    jurisdiction = _text(fields, "jurisdiction_id")
    if jurisdiction and ops.open311.jurisdiction_id and jurisdiction != ops.open311.jurisdiction_id:
        raise bad(f"unknown jurisdiction_id {jurisdiction!r}")
    has_lat, has_lon = bool(fields.get("lat", "").strip()), bool(fields.get("long", "").strip())
    if has_lat != has_lon:
        raise bad("lat and long go together: give both or neither")
    lat = lon = None
    if has_lat:
        lat = _coordinate(fields, "lat", -90.0, 90.0)
        lon = _coordinate(fields, "long", -180.0, 180.0)
        if territory is not None and not territory.contains(lat, lon):
            raise bad(f"lat/long ({lat}, {lon}) is outside the territory this server covers")
    address = _text(fields, "address_string", MAX_DESCRIPTION // 4) or _text(fields, "address_id")
    if lat is None and not address:
        raise bad("a location is required: lat and long, or address_string")
    description = _text(fields, "description", MAX_DESCRIPTION)
    media = _text(fields, "media_url", MAX_URL)
    if media:
        url = urllib.parse.urlsplit(media)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise bad("media_url must be an http(s) URL")
        # The model has no media field (yet): the link to the photo travels in the description.
        description = f"{description}\n[media] {media}" if description else f"[media] {media}"
    contact = {k: v for k in CONTACT_FIELDS if (v := _text(fields, k))}
    if "email" in contact and not EMAIL.match(contact["email"]):
        raise bad("email is not an e-mail address")
    return CitizenReport(
        id="",
        service_code=code,
        description=description,
        lat=lat,
        lon=lon,
        address=address,
        requested_ns=now_ns,
        order=None,
        client=client,
        contact=contact,
    )


def report_args(report: CitizenReport) -> tuple:
    """The arguments of the core's REQUEST_CITIZEN_REPORT (model.py)."""
    return (
        report.service_code,
        report.description,
        report.lat,
        report.lon,
        report.address,
        dict(report.contact),
        report.client,
        report.requested_ns,
    )


def post_answer(report_id: str, notice: str = "") -> list[dict[str, Any]]:
    """POST requests.json's answer: the new request's id (realtime service, no token)."""
    return [{"service_request_id": report_id, "service_notice": notice, "account_id": None}]


# -- GET requests.json -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """GET requests.json's filters, as the core's REQUEST_REPORTS takes them (plus status)."""

    ids: tuple[str, ...] | None
    service_code: str | None
    start_ns: int
    end_ns: int | None  # None: no upper bound (a query by id)
    bbox: tuple[float, float, float, float] | None  # (lat0, lon0, lat1, lon1), the core's order
    statuses: tuple[str, ...]  # "open", "closed" (empty: both)
    limit: int

    def args(self) -> tuple:
        return (
            list(self.ids) if self.ids is not None else None,
            self.service_code,
            self.start_ns,
            self.end_ns,
            self.bbox,
            self.limit,
        )


MAX_TIME_NS = 2**63 - 1  # 2262-04-11T23:47:16Z


def parse_time(name: str, text: str) -> int:
    """A W3C (ISO 8601) date-time with its offset, as ns since the epoch; Open311Error else."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise bad(f"{name} {text!r} is not an ISO 8601 date-time") from None
    if t.tzinfo is None:
        raise bad(f"{name} {text!r} needs its UTC offset (Z or +HH:MM)")
    ns = int(t.timestamp() * 1e9)
    # Times are int64 ns since 1970 (the journal's SQLite INTEGER): a date outside that range is
    # the client's error, not the core's (it would overflow there).
    if not 0 <= ns <= MAX_TIME_NS:
        raise bad(f"{name} {text!r} is outside 1970-01-01 .. 2262-04-11")
    return ns


def parse_query(params: Mapping[str, str], now_ns: int) -> ReportQuery:
    """GET requests.json's query string; Open311Error (400) naming the first bad parameter."""
    ids = None
    if params.get("service_request_id", "").strip():
        ids = tuple(i.strip() for i in params["service_request_id"].split(",") if i.strip())[:MAX_LIMIT]
    code = params.get("service_code", "").strip() or None
    # ``now_ns`` is the operations clock's (the one the core stamps reports with, and the one
    # requested_datetime shows): the dates a client gives compare with the stamps as they are.
    end: int | None = parse_time("end_date", params["end_date"]) if params.get("end_date") else now_ns
    if ids is not None and not params.get("end_date"):
        end = None  # a request asked by id is found whatever its time
    if params.get("start_date"):
        start = parse_time("start_date", params["start_date"])
    elif ids is not None:
        start = 0
    else:
        start = (end if end is not None else now_ns) - DEFAULT_WINDOW_NS
    if end is not None and start > end:
        raise bad("start_date is after end_date")
    statuses: tuple[str, ...] = ()
    if params.get("status"):
        statuses = tuple(s.strip().lower() for s in params["status"].split(",") if s.strip())
        wrong = [s for s in statuses if s not in STATUSES]
        if wrong:
            raise bad(f"status {wrong[0]!r} is not one of {', '.join(STATUSES)}")
    bbox = None
    if params.get("bbox"):
        parts = params["bbox"].split(",")
        try:
            lon0, lat0, lon1, lat1 = (float(p) for p in parts)
        except ValueError:
            raise bad("bbox is min_lon,min_lat,max_lon,max_lat (four numbers)") from None
        if not all(math.isfinite(v) for v in (lon0, lat0, lon1, lat1)) or lon0 > lon1 or lat0 > lat1:
            raise bad("bbox is min_lon,min_lat,max_lon,max_lat with min <= max")
        bbox = (lat0, lon0, lat1, lon1)
    limit = MAX_LIMIT
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError:
            raise bad("limit is not an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise bad(f"limit must be between 1 and {MAX_LIMIT}")
    return ReportQuery(ids, code, start, end, bbox, statuses, limit)


def iso(ns: int | None) -> str | None:
    if not ns:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_of(order_state: str | None) -> str:
    """Open311's status of a report from its order's state label (no order: still open)."""
    return "closed" if order_state in ("closed", "cancelled") else "open"


def public_request(report: Mapping[str, Any], order_state: str | None, ops: OperationsConfig) -> dict[str, Any]:
    """One service request as anyone may read it: a whitelist of fields, never the contact."""
    code = str(report.get("service_code", ""))
    service = ops.service_of_code(code)
    status = status_of(order_state)
    notes = f"work order {report['order']}: {order_state}" if report.get("order") and order_state else ""
    return {
        "service_request_id": report.get("id"),
        "status": status,
        "status_notes": notes,
        "service_name": (service.open311_name or service.name) if service else code,
        "service_code": code,
        "description": report.get("description", ""),
        "agency_responsible": service.name if service else "",
        "service_notice": "",
        "requested_datetime": iso(report.get("requested_ns")),
        "updated_datetime": None,
        "expected_datetime": None,
        "address": report.get("address", ""),
        "address_id": "",
        "zipcode": "",
        "lat": report.get("lat"),
        "long": report.get("lon"),
        "media_url": "",
    }


def select(
    rows: Sequence[tuple[Mapping[str, Any], str | None]], query: ReportQuery, ops: OperationsConfig
) -> list[dict[str, Any]]:
    """The core's answer to REQUEST_REPORTS as Open311 requests, with the status filter applied
    (the core does not know Open311's statuses), newest first."""
    out = [public_request(r, state, ops) for r, state in rows]
    if query.statuses:
        out = [r for r in out if r["status"] in query.statuses]
    out.sort(key=lambda r: r["requested_datetime"] or "", reverse=True)
    return out[: query.limit]


# -- rate limit ------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client address: ``burst`` requests at once, then ``per_minute``.

    Bounded: at most ``max_clients`` buckets; when full, the buckets that have refilled (they
    would allow a burst again: forgetting them changes nothing) are dropped first, then the
    oldest. An attacker rotating addresses therefore costs memory up to the bound only.
    """

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self.refused = 0

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        else:
            self.refused += 1
        if len(self._buckets) >= self.max_clients:
            self._prune(now)
        self._buckets[client] = (tokens, now)  # re-inserted: the dict's order is the last use
        return ok

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` has a token again."""
        tokens, at = self._buckets.get(client, (self.burst, self.clock()))
        missing = 1.0 - min(self.burst, tokens + (self.clock() - at) * self.rate)
        return max(0.0, missing / self.rate) if self.rate > 0 else math.inf

    def _prune(self, now: float) -> None:
        full = [c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
