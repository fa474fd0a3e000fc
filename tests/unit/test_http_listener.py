"""scada/operations/listener.py: one HTTP listener that retries its address, real sockets on loopback.

The address is held by another socket: the listener retries (a fast backoff here), says it once in
the log and once to its report, not at every retry; freed, it binds, serves, and reports it. The
alarm it raises on the core's engine names the listener, the address and the error, and clears.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp import web
from structlog.testing import capture_logs

from scada.backoff import Backoff
from scada.operations.listener import LISTENER_ALARM, Listener, listener_alarm
from tests.ports import free_port

DEADLINE = 60.0  # s: a safety net, every wait below ends on its event


def hello() -> web.Application:
    app = web.Application()

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.add_routes([web.get("/", ok)])
    return app


async def test_a_taken_address_is_retried_said_once_and_bound_once_free():
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    reports: list[tuple[str, tuple[str, int] | None, str]] = []
    listener = Listener(hello, ("127.0.0.1", port), "listen", lambda *a: reports.append(a), Backoff(0.001, 0.005))
    try:
        with capture_logs() as logged:
            await listener.start()  # returns: the retries go on in the listener's task
            assert not listener.bound.is_set() and listener.port == 0
            async with asyncio.timeout(DEADLINE):
                while listener.failures < 5:  # several retries, each failing
                    await asyncio.sleep(0.001)
            holder.close()
            async with asyncio.timeout(DEADLINE):
                await listener.bound.wait()
        assert listener.port == port and listener.error == ""
        assert [e["event"] for e in logged if e["log_level"] == "error"] == ["http_listener_unavailable"]
        assert reports[0][:2] == ("listen", ("127.0.0.1", port)) and "Address already in use" in reports[0][2]
        assert reports[1:] == [("listen", ("127.0.0.1", port), "")]  # once while down, once bound
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200 and await r.text() == "ok"
    finally:
        holder.close()
        await listener.stop()
    assert listener.port == 0


async def test_stop_ends_the_retries():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    listener = Listener(hello, holder.getsockname(), "internal", None, Backoff(0.001, 0.005))
    try:
        await listener.start()
        assert listener.error and not listener.bound.is_set()
    finally:
        await listener.stop()
        holder.close()
    assert listener._retry is None  # no task left behind (the leak fixture checks it too)


class Engine:
    """The alarm engine's system_alarm, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def system_alarm(self, name, active, message, priority="high", service=None, source="server"):
        self.calls.append((name, active, message, priority, source))


def test_the_alarm_names_the_listener_the_address_and_the_error():
    engine = Engine()
    listener_alarm(engine, "internal", "127.0.0.1", 9464, "[Errno 98] Address already in use")
    listener_alarm(engine, "internal", "127.0.0.1", 9464, "")
    (name, active, message, priority, source), cleared = engine.calls
    assert (name, active, priority, source) == (LISTENER_ALARM, True, "high", "http.internal")
    assert "operations.http.internal" in message and "127.0.0.1:9464" in message
    assert "[Errno 98] Address already in use" in message and "--http-internal" in message
    assert cleared[:2] == (LISTENER_ALARM, False) and cleared[4] == "http.internal"


def test_an_ipv6_address_is_written_in_brackets():
    engine = Engine()
    listener_alarm(engine, "listen", "::1", 8080, "[Errno 98] Address already in use")
    assert "[::1]:8080" in engine.calls[0][2]


async def test_a_retry_that_fails_otherwise_than_by_the_os_goes_on_retrying():
    """Review: an exception other than OSError ended the (unsupervised) retry task silently:
    never bound once the address was free, and its stop re-raised it."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    address = holder.getsockname()
    builds = 0

    def flaky() -> web.Application:
        nonlocal builds
        builds += 1
        if builds == 2:  # the first retry
            raise RuntimeError("injected: a bug while building the application")
        return hello()

    listener = Listener(flaky, address, "internal", None, Backoff(0.001, 0.005))
    try:
        with capture_logs() as logged:
            await listener.start()
            async with asyncio.timeout(DEADLINE):
                while builds < 3:
                    await asyncio.sleep(0.001)
            holder.close()
            async with asyncio.timeout(DEADLINE):
                await listener.bound.wait()
        assert "http_listener_bind_failed" in [e["event"] for e in logged]
    finally:
        holder.close()
        await listener.stop()  # does not raise


async def test_stop_lets_its_caller_s_cancellation_through():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    listener = Listener(hello, holder.getsockname(), "internal", None, Backoff(0.001, 0.005))
    await listener.start()
    stopping = asyncio.Event()
    original = listener._retry
    assert original is not None

    async def stopper() -> str:
        stopping.set()
        await listener.stop()
        return "ran on"

    try:
        task = asyncio.create_task(stopper())
        await stopping.wait()
        task.cancel()  # while stop() waits for the retry task's end
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError), results
    finally:
        holder.close()
        await listener.stop()
