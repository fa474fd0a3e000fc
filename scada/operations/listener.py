"""One HTTP listener of the operations server that never takes anything else down.

An address that cannot be bound (taken by another program, not yet configured on the host, a
port below 1024 without the right) used to fail the whole front process, and with it the OPC UA
server, the operator's screen, for the sake of a citizens' web form. Now each listener
(``operations.http.listen``: Open311; ``operations.http.internal``: the map and /metrics) binds
on its own: one that cannot is retried with the project's backoff while the other serves and the
OPC UA front runs; meanwhile the server alarm ``http_listener_down`` (one per listener, its
source ``http.listen`` or ``http.internal``) names the address and the OS error, and it clears
once the listener is bound. Its log line is written once per outage, not at every retry.

Who raises the alarm depends on where the server runs: the front process sends its listeners'
state to the core (``("http_listener", setting, host, port, error)``, scada/front/link.py), the
inline server (``scada run --front inline``) calls the engine itself; both through
:func:`listener_alarm`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from scada.backoff import Backoff

if TYPE_CHECKING:  # imported when a listener binds: the core imports this module for its alarm only
    from aiohttp import web

log = structlog.get_logger("scada.http")

LISTENER_ALARM = "http_listener_down"
# From a quarter second up to 10 s: a port freed by an operator is taken again within seconds,
# and a port held for hours costs one bind() every 10 s.
RETRY = Backoff(base=0.25, cap=10.0)
SERVES = {"listen": "Open311", "internal": "the map feed and /metrics"}

# (setting, address, error): error "" once bound (or not configured), the OS error while it cannot be.
Report = Callable[[str, "tuple[str, int] | None", str], None]


def listener_alarm(alarms: Any, setting: str, host: str | None, port: int | None, error: str) -> None:
    """Raise (``error``) or clear the server alarm of the listener ``setting`` ("listen",
    "internal") on the core's alarm engine."""
    where = "(not configured)" if host is None else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what = SERVES.get(setting, setting)
    if error:
        message = (
            f"HTTP listener operations.http.{setting} ({what}) cannot listen on {where}: {error}; "
            f"retried until it can (free the address; or set operations.http.{setting}, or scada run "
            f"--http{'' if setting == 'listen' else '-internal'}, and reload or restart)"
        )
    else:
        message = f"HTTP listener operations.http.{setting} ({what}) listens on {where}"
    alarms.system_alarm(LISTENER_ALARM, bool(error), message, priority="high", source=f"http.{setting}")


class Listener:
    """One aiohttp application on one address, bound now or as soon as it can be.

    ``app`` makes the application: a new one at each attempt (a runner that failed to bind was
    cleaned up, and with it the application it had set up).

    ``start`` tries once and returns; a failure leaves a retry task that binds later (see the
    module's docstring). ``report`` is told every change of state.
    """

    def __init__(
        self,
        app: Callable[[], web.Application],
        address: tuple[str, int],
        setting: str,
        report: Report | None = None,
        backoff: Backoff = RETRY,
    ) -> None:
        self.app = app
        self.address = address
        self.setting = setting
        self.report = report
        self.backoff = backoff
        self.runner: web.AppRunner | None = None
        self.port = 0  # the bound port (the address's may be 0); 0 while not bound
        self.error = ""  # the last bind's OS error while not bound
        self.failures = 0  # binds failed in a row
        self.bound = asyncio.Event()
        self._retry: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind now if possible, else retry in a task of this listener (``stop`` ends it)."""
        if await self._attempt():
            return
        self._retry = asyncio.create_task(self._retry_loop(), name=f"http-{self.setting}-bind")

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            # Its end, whatever it was; a cancellation of the caller itself still propagates.
            await asyncio.gather(self._retry, return_exceptions=True)
            self._retry = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.port = 0
        self.bound.clear()

    async def _retry_loop(self) -> None:
        while True:
            try:
                if await self._attempt():
                    return
            except Exception:  # noqa: BLE001 - nothing supervises this task: it must go on retrying
                self.failures += 1
                log.exception(
                    "http_listener_bind_failed", listener=self.setting, host=self.address[0], port=self.address[1]
                )
            await asyncio.sleep(self.backoff.delay(self.failures))

    async def _attempt(self) -> bool:
        host, port = self.address
        try:
            self.runner, self.port = await _bind(self.app(), host, port)
        except OSError as exc:
            error = _os_error(exc)
            self.failures += 1
            if self.failures == 1:  # once per outage: a port held for hours must not fill the log
                log.error(
                    "http_listener_unavailable",
                    listener=self.setting,
                    host=host,
                    port=port,
                    error=error,
                    note="retried with backoff; the other listener and the OPC UA server run on",
                )
                self._tell(error)
            self.error = error
            return False
        if self.failures:
            log.info(
                "http_listener_recovered", listener=self.setting, host=host, port=self.port, attempts=self.failures + 1
            )
        self.failures, self.error = 0, ""
        log.info("http_listening", host=host, port=self.port, serves=SERVES.get(self.setting, self.setting))
        self._tell("")
        self.bound.set()
        return True

    def _tell(self, error: str) -> None:
        if self.report is None:
            return
        try:
            self.report(self.setting, self.address, error)
        except Exception as exc:  # noqa: BLE001 - a lost report must not stop the listener (the core may be gone)
            log.warning("http_listener_report_failed", listener=self.setting, error=repr(exc))


def _os_error(exc: OSError) -> str:
    """The OS's words for ``exc`` ("[Errno 98] Address already in use"): asyncio's own message
    repeats the address in lower case; a name that does not resolve keeps the resolver's."""
    if isinstance(exc.errno, int) and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    return str(exc) or repr(exc)


async def _bind(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """A runner serving ``app`` on ``host:port`` and its bound port; OSError when it cannot listen
    (nothing left behind)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # The bound port (the address's may be 0) through aiohttp's public BaseRunner.addresses
    # (getsockname() of every socket of the runner's sites: this runner has one site).
    addresses = runner.addresses
    return runner, (int(addresses[0][1]) if addresses else port)
