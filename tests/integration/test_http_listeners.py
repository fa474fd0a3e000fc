"""An HTTP address that cannot be bound never takes the control room's HMI down.

A real core (Application, no drivers) with its OPC UA front in its own process or inline, the
real aiohttp listeners, real sockets on loopback: one of the two HTTP addresses is held by another
socket when the server starts. The OPC UA server serves anyway (an asyncua client browses it),
the other listener serves, and the server alarm ``http_listener_down`` names the listener, the
address and the OS error; once the address is freed the listener binds by itself, answers, and
the alarm clears. Then ``scada run --front inline`` as a real process: ``--http`` and
``--http-internal`` are the addresses it serves, not operations.yaml's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from asyncua import Client

from scada.app import Application
from scada.operations.listener import LISTENER_ALARM
from tests.configs import ROOT, write_config
from tests.ops_city import DEVICES, city, ops_config, with_operations

from .helpers import DEADLINE, Process, free_port, scada_run_args, wait_port, wait_port_closed

pytestmark = pytest.mark.integration

PATHS = {"listen": "/open311/v2/services.json", "internal": "/metrics"}  # what each listener serves


def held(port: int) -> socket.socket:
    """A socket listening on ``port``: the address is taken (as by another program)."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def listener_alarms(app: Application) -> dict[str, str]:
    """The active ``http_listener_down`` alarms: source -> message."""
    return {e.device: e.message for e in app.alarms.active_system_events() if e.alarm == LISTENER_ALARM}


async def until(predicate, what: str) -> None:
    """Wait for ``predicate`` (a coroutine function) to hold; DEADLINE is the safety net."""
    deadline = time.monotonic() + DEADLINE
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    """``url`` answers 200 (False while nothing listens there)."""
    try:
        async with http.get(url) as r:
            return r.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def browse(endpoint: str) -> list[str]:
    """The OPC UA server's Objects folder, as an HMI opens it."""
    client = Client(endpoint, timeout=30)
    async with client:
        return [(await n.read_browse_name()).Name for n in await client.nodes.objects.get_children()]


@pytest.mark.parametrize("front", ["process", "inline"])
@pytest.mark.parametrize("taken", ["listen", "internal"])
async def test_a_taken_http_address_leaves_the_hmi_and_the_other_listener_serving(tmp_path, front, taken):
    ports = {"listen": free_port(), "internal": free_port()}
    other = "internal" if taken == "listen" else "listen"
    url = {k: f"http://127.0.0.1:{p}{PATHS[k]}" for k, p in ports.items()}
    blocker = held(ports[taken])
    ops = ops_config(("127.0.0.1", ports["listen"]), internal=("127.0.0.1", ports["internal"]))
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    app = Application(with_operations(city(tmp_path / "cfg"), ops), endpoint, 0, tmp_path / "data", front=front)
    app.drivers = []  # no field: the listeners are what is tested
    app.audit.LINGER_S = 0.05  # the trail's writer thread ends at once (the leak check)
    core = asyncio.create_task(app.run(), name="core")
    try:
        started = asyncio.create_task(app.started.wait())
        await asyncio.wait([started, core], timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        assert not core.done(), f"the server did not start: {core.exception()!r}"
        async with aiohttp.ClientSession() as http:
            await until(lambda: answers(http, url[other]), f"the {other} listener serving")

            async def alarmed() -> bool:
                return f"http.{taken}" in listener_alarms(app)

            await until(alarmed, f"the {taken} listener's alarm")
            message = listener_alarms(app)[f"http.{taken}"]
            assert f"operations.http.{taken}" in message and f"127.0.0.1:{ports[taken]}" in message
            assert f"[Errno {errno.EADDRINUSE}]" in message, message
            assert f"http.{other}" not in listener_alarms(app)
            assert "Server" in await browse(endpoint)  # the operator's screen is up
            if front == "process":
                assert app.hmi.proc is not None and app.hmi.proc.returncode is None  # never restarted
                assert app.hmi.starts == 1

            blocker.close()  # the address is freed: the listener binds by itself

            await until(lambda: answers(http, url[taken]), f"the {taken} listener serving once freed")

            async def cleared() -> bool:
                return not listener_alarms(app)

            await until(cleared, "the alarm cleared")
            assert await answers(http, url[other])
        assert "server_task_failed" not in {e.alarm for e in app.alarms.active_system_events()}
    finally:
        blocker.close()
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
    for port in ports.values():
        await asyncio.to_thread(wait_port_closed, port, DEADLINE)


def listening_app(tmp_path, config, front: str) -> Application:
    """An Application without a field (the listeners are what is tested)."""
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data", front=front)
    app.drivers = []
    app.audit.LINGER_S = 0.05  # the trail's writer thread ends at once (the leak check)
    return app


async def internal_alarmed(app: Application) -> bool:
    return "http.internal" in listener_alarms(app)


async def test_the_inline_http_task_stopped_clears_its_listener_alarm(tmp_path):
    """A reload that turns operations off stops the inline HTTP task: an alarm raised for a
    listener still retrying would otherwise stay active for good (nothing left to clear it)."""
    ports = {"listen": free_port(), "internal": free_port()}
    blocker = held(ports["internal"])
    ops = ops_config(("127.0.0.1", ports["listen"]), internal=("127.0.0.1", ports["internal"]))
    app = listening_app(tmp_path, with_operations(city(tmp_path / "cfg"), ops), "inline")
    core = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        await until(lambda: internal_alarmed(app), "the internal listener's alarm")
        await app.stop_tasks(["http"])  # as a reload removing it does
        assert listener_alarms(app) == {}
    finally:
        blocker.close()
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core


@pytest.mark.parametrize("front", ["process", "inline"])
async def test_a_reload_moves_or_removes_a_listener(tmp_path, front):
    """Review: a reload that changed http.internal (as the alarm tells the operator to) kept the
    listener retrying the old address and its alarm active; one that removed it, the same."""
    listen, old, new = free_port(), free_port(), free_port()
    blocker = held(old)  # the old address is taken: its alarm is active
    base = city(tmp_path / "cfg")
    app = listening_app(
        tmp_path, with_operations(base, ops_config(("127.0.0.1", listen), internal=("127.0.0.1", old))), front
    )
    core = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        await until(lambda: internal_alarmed(app), "the old internal address's alarm")
        async with aiohttp.ClientSession() as http:
            moved = with_operations(base, ops_config(("127.0.0.1", listen), internal=("127.0.0.1", new)))
            await app.reload(moved)
            await until(lambda: answers(http, f"http://127.0.0.1:{new}/metrics"), "/metrics on the new address")

            async def cleared() -> bool:
                return not listener_alarms(app)

            await until(cleared, "the old address's alarm cleared")
            blocker.close()  # the old address freed: nobody takes it any more
            await app.reload(with_operations(base, ops_config(("127.0.0.1", listen), internal=None)))
            await asyncio.to_thread(wait_port_closed, new, DEADLINE)  # removed: not served
            # The citizens' listener serves on (inline: its task started again on the new addresses).
            await until(lambda: answers(http, f"http://127.0.0.1:{listen}/open311/v2/services.json"), "Open311")
            assert not await answers(http, f"http://127.0.0.1:{old}/metrics")
            assert listener_alarms(app) == {}
    finally:
        blocker.close()
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core


OPERATIONS_YAML = """\
services:
  lighting_maintenance:
    delays:
      default: {{on_site: 48h, repaired: 5d}}
    open311: {{code: streetlight, name: Street light out}}
http:
  listen: 127.0.0.1:{listen}
  internal: 127.0.0.1:{internal}
"""


async def test_scada_run_inline_serves_the_command_line_addresses(tmp_path: Path):
    """``--http``/``--http-internal`` apply with ``--front inline`` as with a front process: the
    server listens there, and not on operations.yaml's addresses."""
    folder = tmp_path / "cfg"
    write_config(folder, DEVICES, (ROOT / "alarms.yaml").read_text())
    yaml_ports = {"listen": free_port(), "internal": free_port()}
    (folder / "operations.yaml").write_text(OPERATIONS_YAML.format(**yaml_ports))
    cli_ports = {"listen": free_port(), "internal": free_port()}
    opc = free_port()
    args = scada_run_args(folder, tmp_path / "data", f"opc.tcp://127.0.0.1:{opc}/scada/")
    args[args.index("--http") + 1] = f"127.0.0.1:{cli_ports['listen']}"
    args += ["--http-internal", f"127.0.0.1:{cli_ports['internal']}", "--front", "inline", "--kpi-interval", "0"]
    server = Process(args, tmp_path / "server.log")
    try:
        for port in (opc, *cli_ports.values()):
            await asyncio.to_thread(wait_port, port, DEADLINE, proc=server)
        async with aiohttp.ClientSession() as http:
            for setting, port in cli_ports.items():
                assert await answers(http, f"http://127.0.0.1:{port}{PATHS[setting]}"), setting
            # Both listeners bind before the first answers: operations.yaml's would listen by now.
            for setting, port in yaml_ports.items():
                assert not await answers(http, f"http://127.0.0.1:{port}{PATHS[setting]}"), setting
    finally:
        assert server.stop() == 0, server.output()
