"""The front's HTTP server (aiohttp): Open311 GeoReport v2, the GeoJSON map feed, ``/metrics``.

It runs on the front process's event loop, beside the OPC UA server: an HTTP client never
delays a poll (the field is in the core's loop), and the front is supervised and restarted by
the core. What it serves it reads from the front's mirrors (tags, alarms, orders: cheap and
local) except what only the core has: a POSTed report goes to the core
(``model.REQUEST_CITIZEN_REPORT``) once validated here, and a GET of requests asks the core's
journal (``model.REQUEST_REPORTS``). Those two cost the core something, so they are rate
limited per client address (``open311.rate_*``: 429); the services list, the map (built at
most once a second) and the metrics are served locally and are not.

The client address is the TCP peer's, or, when the peer is one of the city's reverse proxies
(``http.trusted_proxies``), the citizen its ``X-Forwarded-For`` names
(:mod:`scada.operations.proxies`): one middleware resolves it once per request, so the rate
limit, the report's recorded client and its audit see the same address. A header from any
other peer is ignored (any client can write one).

Two listeners (README "HTTP: Open311, map, metrics"). The citizens' one (``http.listen``,
``scada run --http``), the one a city exposes to the Internet behind its reverse proxy, serves
Open311 only:

    GET  /open311/v2/services.json
    POST /open311/v2/requests.json          form-encoded or JSON
    GET  /open311/v2/requests.json?service_request_id=&service_code=&start_date=&end_date=&status=&bbox=
    GET  /open311/v2/requests/{id}.json

The internal one (``http.internal``, ``scada run --http-internal``, loopback by default) serves
what only the city's own staff and tools may see: every crew's live position, every device's
state and worst alarm (which bollards are down), the open orders, the server's internals. A
second address rather than a token: what a city's IT expects of an exporter (Prometheus scrapes
a port its firewall opens to the monitoring host only), no secret to hand to Grafana, QGIS or
curl, and nothing to leak on the public side if a token were wrong or missing:

    GET  /map.geojson?commune=&class=
    GET  /metrics

Each listener binds on its own (:mod:`scada.operations.listener`): one whose address is taken is
retried with backoff, with a server alarm meanwhile, while the other and the OPC UA server serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import structlog
from aiohttp import web

from scada.alarms.remote import RemoteAlarmError
from scada.front.orders import (
    MAX_REPORTS,
    RECENT_REPORTS_S,
    OrdersMirror,
    report_from_wire,
)
from scada.operations import metrics as health
from scada.operations import open311
from scada.operations.geo import FilterError, GeoFeed
from scada.operations.listener import LISTENER_ALARM, SERVES, Listener, Report, listener_alarm
from scada.operations.model import REQUEST_CITIZEN_REPORT, REQUEST_REPORTS, OperationsConfig
from scada.operations.open311 import Open311Error, RateLimiter
from scada.operations.proxies import HEADER as FORWARDED_FOR
from scada.operations.proxies import ClientResolver

log = structlog.get_logger("scada.http")

Request = Callable[..., Awaitable[Any]]  # the front's CoreChannel.request(op, *args)
JSON = "application/json"
GEOJSON = "application/geo+json"  # RFC 7946 12
CORE_TIMEOUT_S = 30.0  # a request to the core unanswered by then is a 503 for the client


def operations_of(config: Any) -> OperationsConfig | None:
    """The configuration's operations (None before operations.yaml is part of Config)."""
    ops = getattr(config, "operations", None)
    return ops if isinstance(ops, OperationsConfig) else None


def listen_of(config: Any) -> tuple[str, int] | None:
    """Where the HTTP server listens; None: no HTTP server."""
    ops = operations_of(config)
    # No service in operations.yaml (or no operations.yaml): operations are off, no HTTP server.
    return ops.http.listen if ops is not None and ops.services else None


def internal_of(config: Any) -> tuple[str, int] | None:
    """Where the map feed and /metrics are served; None: not served (nor without an HTTP server)."""
    ops = operations_of(config)
    return ops.http.internal if ops is not None and listen_of(config) is not None else None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _error(code: int, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(open311.errors(code, description), status=code, headers=headers)


@web.middleware
async def _open311_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Open311's paths answer every refusal in its error format, aiohttp's own ones (404, 405,
    the body above client_max_size) included."""
    try:
        return await handler(request)
    except Open311Error as exc:
        return _error(exc.code, exc.description)
    except web.HTTPException as exc:
        if not request.path.startswith("/open311/") or exc.status < 400:
            raise
        status, description = exc.status, exc.reason
        if status == 413:
            # The issue asks a 400 for an oversized body, in Open311's error format, as for every
            # other bad input (GeoReport v2 knows 400, 403, 404 and 500 only): aiohttp's 413 is
            # answered 400, the description saying what is wrong.
            status = 400
            description = f"the body is larger than {request.app[OPS_HTTP].ops.open311.max_body_bytes} bytes"
        return _error(status, description, headers={k: v for k, v in exc.headers.items() if k == "Allow"})


def _client_address() -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that puts the client's address in ``request.remote`` for everything after
    it (the limiter, the report): the TCP peer, or the citizen behind a trusted proxy."""
    resolver = ClientResolver()

    @web.middleware
    async def client_address(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        trusted = request.app[OPS_HTTP].ops.http.trusted_proxies  # the current one: a reload changes it
        client = resolver.client(request.remote, request.headers.getall(FORWARDED_FOR, ()), trusted)
        if client is not None and client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return client_address


class OpsHttp:
    """The aiohttp applications and their lifecycle (``start`` binds or starts retrying, ``stop``
    closes)."""

    def __init__(
        self,
        config: Any,
        ops: OperationsConfig,
        listen: tuple[str, int],
        tags: Any,
        alarms: Any,
        orders: OrdersMirror,
        request: Request,
        opcua_counts: Callable[[], tuple[int, int]] | None = None,
        clock: Callable[[], int] = time.time_ns,  # the operations clock (scada/front/orders.py clock_of)
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], int] | None = None,  # real time (the core's figures' age); default clock
        report: Report | None = None,
    ) -> None:
        self.listen = listen
        self.wall = wall or clock
        self.internal = internal_of(config)  # the map's and metrics' listener (None: not served)
        self.orders = orders
        self.request = request
        self.opcua_counts = opcua_counts
        self.clock = clock
        self.monotonic = monotonic
        self.limiter = RateLimiter(ops.open311.rate_per_minute, ops.open311.rate_burst, monotonic)
        self.geo = GeoFeed(config, ops, tags, alarms, orders, monotonic)
        self.registry = health.registry_of(self.snapshot)
        # Where a listener's state goes (bound: "", else its OS error): the core's server alarm
        # (listener.listener_alarm, through the channel from a front process).
        self.report = report
        self.listeners: list[Listener] = []  # the citizens' one, then the internal one if served
        self.posted = 0  # reports the core took
        self.refused = 0  # Open311 refusals (4xx)
        self._loaded = False
        self.rebind(config, ops, tags, alarms)

    def rebind(self, config: Any, ops: OperationsConfig, tags: Any, alarms: Any) -> None:
        """Follow a new configuration (the front's reload). The listen address and the body limit
        are the start's: changing them takes a front restart."""
        self.config, self.ops, self.tags = config, ops, tags
        self.territory = open311.territory_of(config, ops.open311.territory_margin_m)
        self.limiter.rate = ops.open311.rate_per_minute / 60.0
        self.limiter.burst = float(max(1, ops.open311.rate_burst))
        self.geo.rebind(config, ops, tags, alarms)
        # Devices per (driver, class), and where their Diagnostics/state is: /metrics counts them.
        groups: dict[tuple[str, str], list[int]] = {}
        for d in config.devices:
            t = config.types[d.type]
            groups.setdefault((t.driver, t.cls), []).append(int(config.diag_ids(d)[0]))
        self._device_groups = {k: np.array(v, np.int64) for k, v in groups.items()}

    # -- the application -------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The citizens' application: Open311 only."""
        app = web.Application(
            middlewares=[_client_address(), _open311_errors], client_max_size=self.ops.open311.max_body_bytes
        )
        app[OPS_HTTP] = self
        app.add_routes(
            [
                web.get("/open311/v2/services.{fmt}", self.services),
                web.post("/open311/v2/requests.{fmt}", self.post_request),
                web.get("/open311/v2/requests.{fmt}", self.get_requests),
                web.get("/open311/v2/requests/{id}.{fmt}", self.get_request),
            ]
        )
        return app

    def internal_app(self) -> web.Application:
        """The internal application: the map feed and /metrics (GETs only, no body)."""
        app = web.Application(client_max_size=1024)
        app[OPS_HTTP] = self
        app.add_routes([web.get("/map.geojson", self.map), web.get("/metrics", self.metrics)])
        return app

    async def start(self) -> None:
        """Listen: each listener binds now, or keeps trying in its own task while the other serves
        (scada/operations/listener.py: never an error here, a server alarm while it cannot bind)."""
        self.listeners = [Listener(self.app, self.listen, "listen", self.report)]
        if self.internal is not None:
            self.listeners.append(Listener(self.internal_app, self.internal, "internal", self.report))
        elif self.report is not None:
            self.report("internal", None, "")  # not served: no alarm left from an earlier start
        for listener in self.listeners:
            await listener.start()

    @property
    def port(self) -> int:
        """The citizens' listener's bound port (0 while it is not bound)."""
        return self.listeners[0].port if self.listeners else 0

    @property
    def internal_port(self) -> int:
        """The internal listener's bound port (0 while it is not bound, or not served)."""
        return self.listeners[1].port if len(self.listeners) > 1 else 0

    async def run(self) -> None:
        """The front's watched task: the map's recent reports from the core, then nothing (aiohttp
        serves from its own tasks); cancelled when the front stops."""
        if not self._loaded:  # once: a reload restarts this task, the mirror keeps what it has
            self._loaded = True
            await self._load_reports()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        # Every listener, even when one fails to stop (its socket must not stay open).
        results = await asyncio.gather(*(listener.stop() for listener in self.listeners), return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.error("http_listener_stop_failed", error=repr(r))

    async def _load_reports(self) -> None:
        end = self.clock()
        start = end - int(RECENT_REPORTS_S * 1e9)
        try:
            rows = await self.request(REQUEST_REPORTS, None, None, start, end, None, MAX_REPORTS)
        except (RemoteAlarmError, ConnectionError) as exc:
            log.warning("http_recent_reports_unavailable", error=str(exc))
            return
        for d, _state in sorted(rows, key=lambda r: r[0].get("requested_ns", 0)):
            with contextlib.suppress(TypeError, ValueError):
                self.orders.add_report(report_from_wire(d))

    # -- Open311 ---------------------------------------------------------------------------------

    @staticmethod
    def _format(request: web.Request) -> None:
        fmt = request.match_info["fmt"]
        if fmt != "json":
            raise open311.bad(f"format {fmt!r} is not served: json only (use .json)")

    def _limit(self, request: web.Request) -> web.Response | None:
        client = request.remote or "?"
        if self.limiter.allow(client):
            return None
        wait = max(1, round(self.limiter.retry_after(client) + 0.5))
        return _error(429, f"too many requests from {client}: retry in {wait} s", {"Retry-After": str(wait)})

    async def _ask(self, op: str, *args: Any) -> Any:
        try:
            # A core that does not answer (stopping, a long reload) must not hold the client and
            # its connection forever.
            async with asyncio.timeout(CORE_TIMEOUT_S):
                return await self.request(op, *args)
        except (RemoteAlarmError, ConnectionError, TimeoutError) as exc:
            log.warning("http_core_unavailable", op=op, error=str(exc))
            raise Open311Error(503, "the service is unavailable now, try again later") from None

    async def services(self, request: web.Request) -> web.Response:
        self._format(request)
        return _json(open311.services(self.ops))

    async def post_request(self, request: web.Request) -> web.Response:
        self._format(request)
        refused = self._limit(request)
        if refused is not None:
            return refused
        try:
            body = await request.read()  # HTTPRequestEntityTooLarge above client_max_size
            fields = open311.parse_body(request.content_type, body)
            report = open311.parse_request(fields, self.ops, self.territory, request.remote or "?", self.clock())
        except Open311Error:
            self.refused += 1
            raise
        # Sent without its time (0): the core stamps it with its operations clock itself (exact);
        # the mirror's copy has this front's reading of that same clock.
        args = open311.report_args(dataclasses.replace(report, requested_ns=0))
        status, message, report_id, order = await self._ask(REQUEST_CITIZEN_REPORT, *args)
        if int(status) & 0xC0000000:
            self.refused += 1
            raise open311.bad(str(message) or "the report was refused")
        self.posted += 1
        self.orders.add_report(dataclasses.replace(report, id=str(report_id), order=str(order) or None))
        notice = f"attached to work order {order}" if order else ""
        return _json(open311.post_answer(str(report_id), notice), status=201)

    async def get_requests(self, request: web.Request) -> web.Response:
        self._format(request)
        query = open311.parse_query(request.query, self.clock())
        refused = self._limit(request)
        if refused is not None:
            return refused
        rows = await self._ask(REQUEST_REPORTS, *query.args())
        return _json(open311.select(rows, query, self.ops))

    async def get_request(self, request: web.Request) -> web.Response:
        self._format(request)
        rid = request.match_info["id"]
        refused = self._limit(request)
        if refused is not None:
            return refused
        query = open311.ReportQuery((rid,), None, 0, None, None, (), 1)  # by id: whatever its time
        rows = await self._ask(REQUEST_REPORTS, *query.args())
        found = open311.select(rows, query, self.ops)
        if not found:
            raise Open311Error(404, f"no service request {rid!r}")
        return _json(found)

    # -- map and metrics -------------------------------------------------------------------------

    async def map(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            body = self.geo.body(q.get("commune") or None, q.get("class") or None)
        except FilterError as exc:
            return _json({"error": str(exc)}, status=400)
        return web.Response(body=body, content_type=GEOJSON, headers={"Cache-Control": "max-age=1"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = health.render(self.registry)
        return web.Response(body=body, headers={"Content-Type": health.CONTENT_TYPE})

    def snapshot(self) -> health.Snapshot:
        """What /metrics shows now (scada/operations/metrics.py)."""
        value = np.asarray(self.tags.value)
        devices = [
            (driver, cls, len(ids), int(np.count_nonzero(value[ids] == 1.0)))
            for (driver, cls), ids in sorted(self._device_groups.items())
        ]
        sessions = subscriptions = None
        if self.opcua_counts is not None:
            with contextlib.suppress(Exception):  # a server stopping: no figure rather than no scrape
                sessions, subscriptions = self.opcua_counts()
        o = self.orders
        age = (self.wall() - o.stats_ns) / 1e9 if o.stats_ns else None  # real seconds
        return health.Snapshot(
            core=o.stats,
            core_age_s=age,
            devices=devices,
            opcua_sessions=sessions,
            opcua_subscriptions=subscriptions,
            orders=list(o.orders.values()),
            order_events=dict(o.events),
            kpis=dict(o.kpis),
        )


OPS_HTTP = web.AppKey("ops_http", OpsHttp)  # the application's server object (its middleware reads it)


# -- `scada run --front inline`: the same server on the core's loop -----------------------------------

INLINE_REFRESH_S = 1.0  # how often the inline mirror takes the core's orders and figures


def in_process(app: Any) -> Request:
    """The front's requests served by the core's objects directly (no channel): what
    scada/front/link.py's handlers do for a front process. ``app.operations`` is the core's
    WorkOrders service; its report query (``reports``, REQUEST_REPORTS's arguments) is optional:
    without it a GET of requests is a 503."""
    from scada.operations.model import CitizenReport

    async def request(op: str, *args: Any) -> Any:
        ops = getattr(app, "operations", None)
        if op == REQUEST_CITIZEN_REPORT and ops is not None:
            code, description, lat, lon, address, contact, client, requested_ns = args
            report = CitizenReport("", code, description, lat, lon, address, requested_ns, None, client, contact)
            return await ops.citizen_report(report)
        reports = getattr(ops, "reports", None)
        if op == REQUEST_REPORTS and callable(reports):
            rows = reports(*args)
            return await rows if inspect.isawaitable(rows) else rows  # the service reads in a thread
        raise RemoteAlarmError("value", f"unknown request {op!r}")

    return request


def refresh_inline(app: Any, mirror: OrdersMirror) -> None:
    """The mirror as the core's pushes would make it: open orders and the core's figures."""
    from scada.front.link import core_stats

    ops = getattr(app, "operations", None)
    if ops is not None:
        mirror.load([o.to_wire() for o in ops.open_orders()])
    mirror.receive_stats(core_stats(app))


def inline_config(app: Any) -> Any:
    """The configuration the inline server serves: the app's, with the addresses ``scada run
    --http``/``--http-internal`` gave (``app.front_settings``), as a front process gets them."""
    from scada.front.link import with_http_settings

    return with_http_settings(app.config, getattr(app, "front_settings", None))


async def serve_inline(app: Any) -> None:
    """The HTTP server on the core's loop (``--front inline``), a supervised task of the app:
    ``out["http"] = {"factory": lambda: serve_inline(self)}`` in Application._components when
    ``listen_of(inline_config(app))`` is set. As in a front process, a listener that cannot bind
    is retried and raises the server alarm meanwhile (scada/operations/listener.py): this task
    does not fail for it. Stops (closing the sockets) when cancelled."""
    config = inline_config(app)
    listen, ops = listen_of(config), operations_of(config)
    if listen is None or ops is None:
        return
    hmi = app.hmi

    def opcua_counts() -> tuple[int, int]:
        from scada.opcua.asyncua_private.sessions import external_sessions
        from scada.opcua.asyncua_private.subscriptions import subscriptions

        return len(external_sessions(hmi.server)), len(subscriptions(hmi.server))

    def report(setting: str, address: tuple[str, int] | None, error: str) -> None:
        host, port = address if address is not None else (None, None)
        listener_alarm(app.alarms, setting, host, port, error)  # the running engine (a reload replaces it)

    schedule_clock = getattr(app, "schedule_clock", None)  # the operations clock: the core's own
    clock = schedule_clock.now_ns if schedule_clock is not None else time.time_ns
    mirror = OrdersMirror(clock, wall=time.time_ns)
    http = OpsHttp(
        config,
        ops,
        listen,
        app.tagdb,
        app.alarms,
        mirror,
        in_process(app),
        opcua_counts,
        clock,
        wall=time.time_ns,
        report=report,
    )
    seen = app.config
    try:
        await http.start()
        loaded = asyncio.create_task(http.run(), name="http-inline")
        try:
            while True:
                if app.config is not seen or app.tagdb is not http.tags:  # a reload
                    seen = app.config
                    config = inline_config(app)
                    http.rebind(config, operations_of(config) or ops, app.tagdb, app.alarms)
                refresh_inline(app, mirror)
                await asyncio.sleep(INLINE_REFRESH_S)
        finally:
            loaded.cancel()
            await asyncio.gather(loaded, return_exceptions=True)
    finally:
        await http.stop()
        # No listener left to retry (operations turned off by a reload, or the server stops):
        # an alarm raised for one would never clear (a restart of this task raises it again).
        for setting in SERVES:
            app.alarms.system_alarm(
                LISTENER_ALARM, False, f"HTTP listener operations.http.{setting} stopped", source=f"http.{setting}"
            )
