"""Citizens reporting what they see in the simulated city, through Open311 GeoReport v2.

``python -m simulators city --reports-per-day N --open311 URL`` POSTs service requests to
``URL/requests.json`` (form-encoded, as GeoReport v2 says) at ``N`` a day of simulated time, at
random instants (a Poisson process). Most are about a real simulated fault (a failed lamp near
its cabinet, a junction flashing amber, a stuck bollard), placed a few metres off the
equipment, as a passer-by would; some repeat a fault already reported (another passer-by);
some are false (nothing wrong there). Each carries made-up contact details. The server's
answers are logged.

:func:`choose` is the pure part (seeded, tested alone); :class:`ReportGenerator` paces it and
speaks HTTP with aiohttp's client.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
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


def next_wait(rng: np.random.Generator, per_day: float) -> float:
    """Simulated seconds until the next report, at ``per_day`` a day on average (Poisson)."""
    return float(rng.exponential(86_400.0 / per_day))


class Sights(Protocol):
    """What the city shows a passer-by (simulators/runner.py CitySimulator)."""

    def spots(self) -> list[Spot]: ...

    def faulty(self) -> set[str]: ...


class ReportGenerator:
    """POSTs citizen reports about ``city`` to the Open311 endpoint ``url`` (its base, e.g.
    ``http://127.0.0.1:8080/open311/v2``) at ``per_day`` reports a day of simulated time."""

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
        self.rng = np.random.default_rng([seed, 311])
        self.reported: dict[str, int] = {}  # faulty device -> reports the server accepted
        self.sent = self.accepted = self.refused = self.failed = self.skipped = 0
        self.answers: list[tuple[Report, int, object]] = []  # the last few: (report, HTTP status, body)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open the HTTP client: :meth:`report_once` may then be called (start() does it too)."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def start(self) -> None:
        """Report at the daily rate until :meth:`stop`."""
        await self.open()
        self._task = asyncio.create_task(self._loop(), name="citizen-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

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

        assert self._session is not None, "open() or start() first"
        self.sent += 1
        body: object
        try:
            async with self._session.post(
                self.requests_url, data=report.form(self.api_key, self.jurisdiction_id)
            ) as resp:
                status = resp.status
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
                error=str(exc) or type(exc).__name__,
            )
            return
        self.answers = [*self.answers[-99:], (report, status, body)]
        if 200 <= status < 300:
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
