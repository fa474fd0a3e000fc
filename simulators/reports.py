"""Citizens reporting what they see in the simulated city, through Open311 GeoReport v2.

``python -m simulators city --reports-per-day N --open311 URL`` POSTs service requests to
``URL/requests.json`` (form-encoded, as GeoReport v2 says) at ``N`` a day of simulated time, at
random instants (a Poisson process). Most are about a real simulated fault (a failed lamp near
its cabinet, a junction flashing amber, a stuck bollard), placed a few metres off the
equipment, as a passer-by would; some repeat a fault already reported (another passer-by);
some are false (nothing wrong there). Each carries made-up contact details. The server's
answers are logged.

**Many citizens, many addresses.** The server limits reports per client address
(``open311.rate_per_minute``, ``rate_burst``); a city's citizens come from many addresses, so the
generator does too when the target is on loopback (an IPv4 literal in 127.0.0.0/8, or
``localhost``): each report leaves from one of ``addresses`` consecutive loopback addresses from
``first_address`` (default 32 from 127.3.11.1; Linux routes all of 127.0.0.0/8 to ``lo``, so the
client socket can be bound to any of them), drawn with the seeded RNG, through one HTTP session per
address. To any other target (a name, a LAN address, ``[::1]``, which has no neighbours) and with
``addresses=1``, the reports leave from one address, the system's choice, as one client would. A
system that refuses to bind these addresses (not Linux) gets one address and a warning. A 429
that still comes (more reports than the addresses' buckets hold) is counted (``throttled``, in
:meth:`ReportGenerator.stats`) and logged once per ``throttle_log_s`` with the count, never per
report.

:func:`choose` is the pure part (seeded, tested alone); :class:`ReportGenerator` paces it and
speaks HTTP with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import structlog

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger("simulators.reports")

FAULT, DUPLICATE, FALSE = "fault", "duplicate", "false"
# The Open311 service_code a citizen picks for each kind of equipment (simulators/faults.py's
# kinds); the server's operations.yaml must offer them (else it answers 400, logged here).
SERVICE_CODES: Mapping[str, str] = {"lighting": "streetlight", "traffic": "traffic_signal", "bollard": "bollard"}
DESCRIPTIONS: Mapping[str, tuple[str, ...]] = {
    "lighting": ("Street light out", "Several street lights are off", "The lamp post is dark at night"),
    "traffic": ("Traffic lights flashing amber", "The traffic signals are not working", "Lights stuck on amber"),
    "bollard": ("The bollard is stuck", "Access bollard does not move", "Retractable bollard broken"),
}
FIRST_NAMES = ("Camille", "Louis", "Emma", "Hugo", "Léa", "Jules", "Chloé", "Arthur", "Manon", "Paul")
LAST_NAMES = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau")
M_PER_DEG = 111_200.0
# Where the simulated citizens' reports leave from on loopback: a few dozen addresses, each its own
# rate-limit bucket on the server (its default 10 a minute each: 320 a minute, Dijon's ~630 calls
# a day up to ~700x acceleration). 127.3.11.0/24: away from 127.0.0.1 (the server's own clients,
# the single-address case) and from Debian's 127.0.1.1 (the host name).
ADDRESSES = 32
FIRST_ADDRESS = "127.3.11.1"
MAX_ADDRESSES = 1024  # each a client session: more is a mistake, not more realism
LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
THROTTLE_LOG_S = 60.0  # the server's rate is per minute: one warning a minute tells it all


@dataclass(frozen=True, slots=True)
class Spot:
    """A piece of equipment a citizen can see: its kind (faults.LIGHTING, ...), name and place."""

    kind: str
    name: str
    commune: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Mix:
    """How the reports are drawn: the shares of duplicates and false ones (the rest are about
    a fault not reported yet), and how far from the equipment a citizen stands."""

    duplicate_share: float = 0.15
    false_share: float = 0.15
    jitter_m: float = 15.0

    def __post_init__(self) -> None:
        if not (0 <= self.duplicate_share <= 1 and 0 <= self.false_share <= 1):
            raise ValueError("shares are fractions between 0 and 1")
        if self.duplicate_share + self.false_share > 1:
            raise ValueError("duplicate_share + false_share exceed 1")
        if not (self.jitter_m >= 0 and math.isfinite(self.jitter_m)):
            raise ValueError("jitter_m must be a non-negative distance in metres")


@dataclass(frozen=True, slots=True)
class Report:
    """One citizen's service request, and what it really is about (``nature``, ``spot``)."""

    nature: str  # FAULT | DUPLICATE | FALSE
    spot: Spot
    service_code: str
    lat: float
    lon: float
    description: str
    contact: Mapping[str, str] = field(default_factory=dict)

    def form(self, api_key: str = "", jurisdiction_id: str = "") -> dict[str, str]:
        """The GeoReport v2 POST Service Request arguments (sent form-encoded)."""
        out = {
            "service_code": self.service_code,
            "lat": f"{self.lat:.6f}",
            "long": f"{self.lon:.6f}",  # GeoReport's name for the longitude
            "address_string": self.spot.commune,
            "description": self.description,
            **self.contact,
        }
        if api_key:
            out["api_key"] = api_key
        if jurisdiction_id:
            out["jurisdiction_id"] = jurisdiction_id
        return out


def choose(
    rng: np.random.Generator,
    spots: list[Spot],
    faulty: set[str],
    reported: Mapping[str, int],
    codes: Mapping[str, str] = SERVICE_CODES,
    mix: Mix = Mix(),
) -> Report | None:
    """The next report: false (a working spot), a duplicate (a fault reported already) or about
    a fault nobody reported yet; None when there is nothing to report (no fault anywhere and the
    draw was not a false one: citizens do not report working streets at the full rate).
    ``reported`` counts the reports of each faulty device; only spots of a kind in ``codes``
    are reported."""
    seen = [s for s in spots if s.kind in codes]
    u = rng.random()
    fresh = [s for s in seen if s.name in faulty and not reported.get(s.name)]
    again = [s for s in seen if s.name in faulty and reported.get(s.name)]
    if u < mix.false_share:
        nature, pool = FALSE, [s for s in seen if s.name not in faulty]
    elif u < mix.false_share + mix.duplicate_share and again:
        nature, pool = DUPLICATE, again
    elif fresh:
        nature, pool = FAULT, fresh
    else:  # every fault is reported already: one more passer-by reports one of them
        nature, pool = DUPLICATE, again
    if not pool:
        return None
    spot = pool[int(rng.integers(len(pool)))]
    # Uniform over a disc of jitter_m around the equipment (sqrt: not crowded at the centre).
    r, a = mix.jitter_m * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    lat = spot.lat + r * math.cos(a) / M_PER_DEG
    lon = spot.lon + r * math.sin(a) / (M_PER_DEG * math.cos(math.radians(spot.lat)))
    texts = DESCRIPTIONS.get(spot.kind, ("Something is wrong here",))
    return Report(nature, spot, codes[spot.kind], lat, lon, texts[int(rng.integers(len(texts)))], contact_details(rng))


def contact_details(rng: np.random.Generator) -> dict[str, str]:
    """Made-up contact details: names from a list, an example.org address (a domain reserved for
    examples), a phone number from the range ARCEP reserves for fiction (01 99 00 ..)."""
    first = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
    last = LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]
    n = int(rng.integers(100))
    ascii_first = first.replace("é", "e")
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{ascii_first.lower()}.{last.lower()}{n}@example.org",
        "phone": f"+33 1 99 00 {int(rng.integers(100)):02d} {int(rng.integers(100)):02d}",
    }


def client_addresses(url: str, count: int = ADDRESSES, first: str = FIRST_ADDRESS) -> tuple[str | None, ...]:
    """The local addresses the reports to ``url`` leave from: ``count`` consecutive loopback
    addresses from ``first`` when ``url``'s host is on IPv4 loopback, else ``(None,)`` (one, the
    system's choice); also ``(None,)`` for ``count`` 1. ValueError naming the setting for a count
    that is not 1 to MAX_ADDRESSES or a ``first`` that is not an IPv4 loopback address with room
    for ``count`` after it, whatever the target (a bad setting is bad on every target)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_ADDRESSES:
        raise ValueError(f"client addresses: a whole number from 1 to {MAX_ADDRESSES}, not {count!r}")
    try:
        start = ipaddress.ip_address(first)
    except ValueError:
        raise ValueError(f"first client address {first!r} is not an IP address") from None
    if not isinstance(start, ipaddress.IPv4Address) or start not in LOOPBACK_V4:
        raise ValueError(
            f"first client address {first} is not in 127.0.0.0/8 (the spread binds loopback addresses only: "
            "IPv6 has a single one, ::1)"
        )
    last = int(start) + count - 1
    # The network and broadcast addresses of 127.0.0.0/8 are not hosts: a socket cannot use them.
    if int(start) == int(LOOPBACK_V4.network_address) or last >= int(LOOPBACK_V4.broadcast_address):
        raise ValueError(f"{count} client addresses from {first} leave 127.0.0.1-127.255.255.254")
    if count == 1 or not _on_loopback(url):
        return (None,)
    return tuple(str(ipaddress.IPv4Address(int(start) + i)) for i in range(count))


def _on_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's IPv4 loopback (names other than localhost are not
    resolved: a name may lead anywhere, and a report from a loopback address cannot leave it)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in LOOPBACK_V4
    except ValueError:
        return False


def _bindable(address: str) -> bool:
    """Whether this system lets a socket use ``address`` (Linux: all of 127.0.0.0/8; others often
    127.0.0.1 only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


class ThrottleLog:
    """The 429s counted, and when to say so: at the first, then at most once per ``window_s``
    (:meth:`note` gives the count to log now, 0 to keep counting), and what is left at the end
    (:meth:`flush`). A whole night's 429s are a few lines, and none goes uncounted."""

    def __init__(self, window_s: float = THROTTLE_LOG_S) -> None:
        if not (window_s >= 0 and math.isfinite(window_s)):
            raise ValueError(f"the throttle log window must be seconds, not {window_s!r}")
        self.window_s = window_s
        self.total = 0  # every 429
        self.pending = 0  # those not logged yet
        self._logged_at: float | None = None

    def note(self, now: float) -> int:
        self.total += 1
        self.pending += 1
        if self._logged_at is not None and now - self._logged_at < self.window_s:
            return 0
        self._logged_at = now
        return self.flush()

    def flush(self) -> int:
        n, self.pending = self.pending, 0
        return n


def next_wait(rng: np.random.Generator, per_day: float) -> float:
    """Simulated seconds until the next report, at ``per_day`` a day on average (Poisson)."""
    return float(rng.exponential(86_400.0 / per_day))


class Sights(Protocol):
    """What the city shows a passer-by (simulators/runner.py CitySimulator)."""

    def spots(self) -> list[Spot]: ...

    def faulty(self) -> set[str]: ...


class ReportGenerator:
    """POSTs citizen reports about ``city`` to the Open311 endpoint ``url`` (its base, e.g.
    ``http://127.0.0.1:8080/open311/v2``) at ``per_day`` reports a day of simulated time, each from
    one of ``addresses`` loopback addresses from ``first_address`` when ``url`` is on loopback
    (:func:`client_addresses`; ValueError for a bad setting). 429s are counted (``throttled``) and
    logged once per ``throttle_log_s`` of ``clock``; :meth:`stats` says what became of the reports."""

    def __init__(
        self,
        city: Sights,
        url: str,
        per_day: float,
        *,
        acceleration: float = 1.0,
        seed: int = 0,
        codes: Mapping[str, str] = SERVICE_CODES,
        mix: Mix = Mix(),
        api_key: str = "",
        jurisdiction_id: str = "",
        timeout: float = 30.0,
        addresses: int = ADDRESSES,
        first_address: str = FIRST_ADDRESS,
        throttle_log_s: float = THROTTLE_LOG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (per_day > 0 and math.isfinite(per_day)):
            raise ValueError(f"reports per day must be a positive number, not {per_day}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the Open311 endpoint must be an http:// or https:// URL, not {url!r}")
        if not (acceleration > 0):
            raise ValueError("acceleration must be positive")
        self.city, self.per_day, self.acceleration = city, per_day, acceleration
        self.requests_url = url.rstrip("/") + "/requests.json"
        self.codes, self.mix, self.api_key, self.jurisdiction_id = codes, mix, api_key, jurisdiction_id
        self.timeout = timeout
        self.addresses = client_addresses(url, addresses, first_address)  # (None,): one, the system's
        self.rng = np.random.default_rng([seed, 311])
        # The citizen's address from its own stream: the reports are the same with or without the spread.
        self.address_rng = np.random.default_rng([seed, 311, 1])
        self.reported: dict[str, int] = {}  # faulty device -> reports the server accepted
        # sent = accepted + refused (4xx/5xx but 429) + throttled (429) + failed (no answer),
        # but for a POST a stop() cut short.
        self.sent = self.accepted = self.refused = self.failed = self.skipped = 0
        self.throttles = ThrottleLog(throttle_log_s)
        self.clock = clock
        self.answers: list[tuple[Report, int, object]] = []  # the last few: (report, HTTP status, body)
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def throttled(self) -> int:
        """Reports the server refused with 429 (too many from their client address)."""
        return self.throttles.total

    def stats(self) -> dict[str, int]:
        """What became of the reports: sent = accepted + refused + throttled + failed (less a POST
        cut short by stop()); skipped: draws with nothing to report."""
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "refused": self.refused,
            "throttled": self.throttled,
            "failed": self.failed,
            "skipped": self.skipped,
            "addresses": len(self.addresses),
        }

    async def open(self) -> None:
        """Open the HTTP client: :meth:`report_once` may then be called (start() does it too)."""
        import aiohttp

        if self._sessions:
            return
        first, last = self.addresses[0], self.addresses[-1]
        if first is not None and last is not None and not (_bindable(first) and _bindable(last)):
            log.warning(
                "citizen_reports_one_address",
                reason=f"this system refuses to bind {first}-{last} (not Linux?)",
                effect="the server's per-address rate limit applies to all the citizens at once",
            )
            self.addresses = (None,)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        for address in self.addresses:
            # One session (its own connection pool) per address: a pooled connection keeps the
            # address it was opened from. AF_INET: "localhost" must not resolve to ::1, which
            # an IPv4 source address cannot reach.
            connector = (
                aiohttp.TCPConnector(local_addr=(address, 0), family=socket.AF_INET) if address is not None else None
            )
            self._sessions[address] = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def start(self) -> None:
        """Report at the daily rate until :meth:`stop`."""
        await self.open()
        self._task = asyncio.create_task(self._loop(), name="citizen-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        self._log_throttled(self.throttles.flush())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(next_wait(self.rng, self.per_day) / self.acceleration)
            await self.report_once()

    async def report_once(self) -> Report | None:
        """Draw one report and POST it; None when there was nothing to report."""
        faulty = self.city.faulty()
        # A repaired fault is forgotten: when it fails again, it is a new fault to report.
        self.reported = {k: v for k, v in self.reported.items() if k in faulty}
        report = choose(self.rng, self.city.spots(), faulty, self.reported, self.codes, self.mix)
        if report is None:
            self.skipped += 1
            return None
        await self.post(report)
        return report

    async def post(self, report: Report) -> None:
        """POST one report; the server's answer (or why there is none) is logged, never raised."""
        import aiohttp

        assert self._sessions, "open() or start() first"
        address = self.addresses[int(self.address_rng.integers(len(self.addresses)))]
        self.sent += 1
        body: object
        try:
            async with self._sessions[address].post(
                self.requests_url, data=report.form(self.api_key, self.jurisdiction_id)
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                try:
                    body = await resp.json(content_type=None)
                except ValueError:  # not JSON: keep the text to log it
                    body = (await resp.text())[:500]
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            log.warning(
                "citizen_report_not_sent",
                url=self.requests_url,
                device=report.spot.name,
                client=address,
                error=str(exc) or type(exc).__name__,
            )
            return
        self.answers = [*self.answers[-99:], (report, status, body)]
        if status == 429:
            # The server never looked at it: counted apart from the refusals, and said once a window.
            self._log_throttled(self.throttles.note(self.clock()), address, retry_after=retry_after)
        elif 200 <= status < 300:
            self.accepted += 1
            if report.nature != FALSE:
                self.reported[report.spot.name] = self.reported.get(report.spot.name, 0) + 1
            log.info("citizen_report_accepted", nature=report.nature, device=report.spot.name, answer=str(body)[:300])
        else:
            self.refused += 1
            log.warning(
                "citizen_report_refused",
                nature=report.nature,
                device=report.spot.name,
                status=status,
                answer=str(body)[:300],
            )

    def _log_throttled(self, count: int, address: str | None = None, retry_after: str = "") -> None:
        if not count:
            return
        log.warning(
            "citizen_reports_throttled",
            throttled=count,  # since the last of these lines
            total=self.throttled,
            sent=self.sent,
            addresses=len(self.addresses),
            client=address,
            retry_after=retry_after,
            hint="the server's open311.rate_per_minute and rate_burst are per client address: "
            "more addresses (on loopback), fewer reports per day or a lower acceleration",
        )
