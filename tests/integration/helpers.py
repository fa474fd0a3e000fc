"""Loopback plumbing for integration tests: free ports, child processes, a link that goes silent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Re-exported: the tests import their configuration writers from here too.
from tests.configs import ROOT as ROOT
from tests.configs import load as load
from tests.configs import write_inventory as write_inventory
from tests.configs import write_tags as write_tags
from tests.ports import free_port as free_port
from tests.ports import free_port_range as free_port_range
from tests.tls_files import TlsFiles as TlsFiles
from tests.tls_files import make_tls_files as make_tls_files

# The safety net of every wait on a real process (a server, a simulator, a broker, a peer): how
# long before a wait that should end is called a failure. Each wait ends on its event (a port
# that listens, a value, a journal row), so a passing test never waits this long; it is generous
# on purpose: on a loaded machine (load average 10+ on two cores) the server's start alone takes
# over a minute, and a slow pass must not turn into a failure.
DEADLINE = 300.0


async def plain_asyncua_server(path: str, uri: str) -> tuple[Any, str, int]:
    """A stock asyncua server, initialised but not started, on a free loopback port without
    security: (server, its endpoint URL ``opc.tcp://127.0.0.1:PORT/path/``, the index of namespace ``uri``)."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/{path}/"
    server.set_endpoint(url)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    return server, url, await server.register_namespace(uri)


def wait_port(port: int, timeout: float = DEADLINE, host: str = "127.0.0.1", proc: Process | None = None) -> None:
    """Wait until something listens on ``port``; with ``proc``, fail at once (with its log) if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(
                f"{proc.args} exited ({proc.proc.returncode}) before listening on {port}:\n{proc.output()}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def wait_port_closed(port: int, timeout: float = DEADLINE, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} still open after {timeout} s")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> None:
    """Send ``sig`` to a child that still runs and wait for it; kill it if it outlives ``timeout``
    (a safety net: a child that stops cleanly, however slowly, ends with its own exit status)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Process:
    """A child process (a simulator, the server) with its output kept for failure messages."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115  (the child writes it until stop() closes it)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        stop_process(self.proc, sig, timeout)
        self._log.close()
        return self.proc.returncode


@dataclass
class TinyCity:
    """The tiny simulated city running as a child process, and the ports it was given.

    ``opc_scada`` is a free port kept for the server under test (``endpoint``); the simulator
    writes the server's configuration into ``config`` once it serves (``control`` listens)."""

    base: int  # first of the 6 consecutive device ports
    opc_sim: int
    opc_scada: int
    control: int
    config: Path
    sim: Process

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.opc_scada}/scada/"


def start_tiny_city(
    tmp_path: Path,
    mqtt: str | None = None,
    failure_rate: str | None = "0",
    acceleration: float | None = None,
    extra: list[str] | None = None,
) -> TinyCity:
    """``python -m simulators city --preset tiny`` on free ports, its configuration written to
    ``tmp_path/config`` (types from the shipped tags.yaml), its log in ``tmp_path/sim.log``.

    ``mqtt`` (host:port) adds the MQTT devices; ``failure_rate`` None keeps the simulator's own;
    ``acceleration``: simulated seconds per real second (a bollard rises in 6 simulated s);
    ``extra``: more arguments (``--start``/``--start-origin``: the server's clock's)."""
    base = free_port_range(6)
    opc_sim, opc_scada, control = free_port(), free_port(), free_port()
    config = tmp_path / "config"
    args = ["-m", "simulators", "city", "--preset", "tiny", "--base-port", str(base), "--opcua-port", str(opc_sim)]
    if mqtt:
        args += ["--mqtt", mqtt]
    args += ["--control-port", str(control), "--config-out", str(config), "--types-from", str(ROOT / "tags.yaml")]
    if failure_rate is not None:
        args += ["--failure-rate", failure_rate]
    if acceleration is not None:
        args += ["--acceleration", str(acceleration)]
    sim = Process([*args, *(extra or []), "--log-json"], tmp_path / "sim.log")
    return TinyCity(base, opc_sim, opc_scada, control, config, sim)


# The tests' security profile: a None endpoint and anonymous sessions (tests/data/security-open.yaml).
OPEN_SECURITY = ROOT / "tests" / "data" / "security-open.yaml"


def scada_run_args(config: Path, data: Path, endpoint: str, security: Path = OPEN_SECURITY) -> list[str]:
    """Arguments of ``Process`` for the server: ``scada run`` on ``config``, serving ``endpoint``,
    its state in ``data``, no periodic status line, the ``security`` settings (default: the open
    test profile, as before the security issue)."""
    return [
        "-m",
        "city_scada",
        "run",
        "--config",
        str(config),
        "--security",
        str(security),
        "--opcua-endpoint",
        endpoint,
        "--status-interval",
        "0",
        "--data",
        str(data),
        # No HTTP server unless a test asks for one: operations.yaml's fixed port would be shared
        # by every server the tests run at once.
        "--http",
        "none",
    ]


class Notifications:
    """An asyncua subscription handler: event notifications and data changes, queued to wait on."""

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.data: asyncio.Queue = asyncio.Queue()  # (NodeId, DataValue)

    def event_notification(self, event) -> None:
        self.events.put_nowait(event)

    def datachange_notification(self, node, val, data) -> None:
        self.data.put_nowait((node.nodeid, data.monitored_item.Value))

    async def next_event(self, predicate, timeout: float = DEADLINE):
        """The next event for which ``predicate`` holds (the ones before it are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                e = await self.events.get()
                if predicate(e):
                    return e

    async def next_data(self, nodeid, predicate, timeout: float = DEADLINE):
        """The next DataValue of ``nodeid`` for which ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                nid, dv = await self.data.get()
                if nid == nodeid and predicate(dv):
                    return dv

    async def until_refresh_end(self, timeout: float = DEADLINE) -> list:
        """Every event up to and including the next RefreshEndEvent (of a ConditionRefresh)."""
        from asyncua import ua

        out = []
        async with asyncio.timeout(timeout):
            while True:
                e = await self.events.get()
                out.append(e)
                # asyncua annotates NodeId's identifier with NewTypes; a plain int is what it takes.
                if e.EventType == ua.NodeId(ua.ObjectIds.RefreshEndEventType):  # type: ignore[arg-type]
                    return out


async def refresh_conditions(client) -> tuple[Notifications, Any, list]:
    """What an HMI does when it connects: subscribe to the server's alarms and conditions, then call
    ConditionRefresh. Returns the handler (later events arrive there too), the subscription, and
    the events up to RefreshEndEvent."""
    from asyncua import ua

    events = Notifications()
    sub = await client.create_subscription(50, events)
    await sub.subscribe_alarms_and_conditions(client.nodes.server, ua.ObjectIds.AlarmConditionType)
    await client.get_node(ua.NodeId(ua.ObjectIds.ConditionType)).call_method(  # type: ignore[arg-type]
        ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),  # type: ignore[arg-type]
        ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
    )
    return events, sub, await events.until_refresh_end()


class SilentLink:
    """A TCP proxy in front of a device that can stop forwarding: the device "stops answering"
    while its connection stays open, the case a timeout must catch (not a refused connection)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(4096):
                if not self.silent:
                    writer.write(data)
                    await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        tasks = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            w.close()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for w in self._writers:
            w.close()
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, for the test that needs it."""

    def __init__(self, folder: Path, extra_conf: str = "") -> None:
        """Start it; ``extra_conf``: more lines of mosquitto.conf (a bench raises its queue limits)."""
        import shutil

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(exe).exists(), "mosquitto is missing: `make test` installs it (apt-get install mosquitto)"
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}")
        self.exe, self.conf, self.log = exe, conf, folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        # The parent's handle closes at once: the broker keeps its own copy of the descriptor.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)


def write_cabinets(folder: Path, base_port: int, prefix: str, poll: float = 0.3, timeout: float = 0.5) -> list:
    """Three simulated lighting cabinets (``{prefix}-000`` to ``-002``: two in Dijon, one in Talant) on
    consecutive loopback ports from ``base_port``, for a real server process: their inventory under
    the shipped types, the shipped alarms, polled every ``poll`` s. Returns them."""
    import shutil

    from simulators.inventory import Cabinet

    cabinets = [
        Cabinet(f"{prefix}-{i:03d}", commune, 47.32, 5.04, "127.0.0.1", base_port + i, 1)
        for i, commune in enumerate(["Dijon", "Dijon", "Talant"])
    ]
    (folder / "inventory").mkdir(parents=True)
    write_inventory(
        folder,
        "inventory/lighting-cabinets.csv",
        "name,type,commune,lat,lon,endpoint,unit,poll_interval,timeout",
        [
            f"{c.name},lighting_cabinet,{c.commune},{c.lat},{c.lon},127.0.0.1:{c.port},1,{poll},{timeout}"
            for c in cabinets
        ],
    )
    shutil.copy(ROOT / "alarms.yaml", folder / "alarms.yaml")
    return cabinets


class DriverHarness:
    """A driver polling or subscribing in this event loop into its own TagDB, over ``config``'s devices.

    ``make(config, devices, tagdb)`` builds the driver; ``max_ages`` gives the TagDB the
    configuration's staleness limits. ``async with`` runs ``driver.run()`` and cancels it after.
    Values and statuses are read by device and point name."""

    def __init__(self, config, make, max_ages: bool = False) -> None:
        from scada.tagdb import TagDB

        self.config = config
        self.tagdb = TagDB(*config.tag_table(), *((config.max_ages(),) if max_ages else ()))
        self.driver = make(config, list(config.devices), self.tagdb)
        self.task: asyncio.Task | None = None

    def tag(self, device: str, point: str) -> int:
        d = self.config.device(device)
        return self.tagdb.id_of(f"{d.commune}/{self.config.types[d.type].cls}/{device}/{point}")

    def ids(self, device: str):
        return self.config.tag_ids(self.config.device(device))

    def status(self, device: str, point: str) -> int:
        return int(self.tagdb.status[self.tag(device, point)])

    def value(self, device: str, point: str) -> float:
        return float(self.tagdb.value[self.tag(device, point)])

    def diag(self, device: str, point: str) -> float | str | None:
        """A diagnostic tag of the device: ``last_error`` as text, the others as numbers."""
        i = self.tag(device, f"Diagnostics/{point}")
        return self.tagdb.text.get(i, "") if point == "last_error" else float(self.tagdb.value[i])

    def state(self, device: str):
        """The driver's per-device state (drivers that keep one in ``driver.devices``)."""
        return next(ds for ds in self.driver.devices if ds.device.name == device)

    def successes(self, device: str) -> int:
        """Successful polls of the device so far (the driver's diagnostics counters)."""
        return int(self.driver.diag.successes[self.state(device).k])

    async def __aenter__(self):
        self.task = asyncio.create_task(self.driver.run())
        return self

    async def __aexit__(self, *exc):
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(predicate, timeout: float = DEADLINE, what: str = "") -> float:
    """Wait for ``predicate()`` to hold; return the seconds it took, or fail saying ``what``.

    The deadline (``DEADLINE``) only matters when a test fails: a loaded machine must not turn
    a slow pass into a failure."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


async def until_read(read, predicate, timeout: float = DEADLINE, what: str = ""):
    """Await ``read()`` until ``predicate`` holds for its result; return that result, or fail with the last."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await read()
        if predicate(last):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout} s; last: {last!r}")


def fault(control_port: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m simulators fault ARGS`` on a simulator's control port; with ``check``, it must succeed."""
    r = subprocess.run(
        [sys.executable, "-m", "simulators", "fault", "--control-port", str(control_port), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def read_journal(path: Path) -> list:
    """Every row of the alarm journal at ``path`` (read beside the running server: SQLite WAL)."""
    from scada.alarms.journal import Journal

    j = Journal(path)
    try:
        return j.query()
    finally:
        j.close()


async def journal_until(path: Path, predicate, what: str = "", timeout: float = DEADLINE) -> list:
    """The rows of the server's alarm journal once ``predicate(rows)`` holds, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    rows: list = []
    while time.monotonic() < deadline:
        if path.exists():
            rows = read_journal(path)
            if predicate(rows):
                return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s; journal: {[(r.alarm, r.device, r.event) for r in rows]}")


def _dead_cabinets(ports: list[int], names: list[str]) -> str:
    """Cabinets on loopback ports nothing listens on: polled, failing, their tags Bad."""
    return "\ndevices:\n" + "".join(
        f'  - {{name: {n}, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "127.0.0.1:{p}"}}\n'
        for n, p in zip(names, ports)
    )


@contextlib.asynccontextmanager
async def serving(hmi):
    """An HmiServer started and running in this loop (its publisher and event tasks), stopped after."""
    await hmi.start()
    task = asyncio.create_task(hmi.run(), name="hmi")
    try:
        yield hmi
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hmi.stop()


@contextlib.asynccontextmanager
async def running_app(tmp_path: Path, front: str = "process"):
    """A real Application (OPC UA on loopback) on two cabinets, running in this loop; yields
    (app, the configuration, the same one with a third cabinet LC-3, the app's task).

    ``front``: "process" (the server's default: the OPC UA front in its own process), or
    "inline" for tests that look inside the OPC UA objects."""
    from city_scada import load_config
    from scada.app import Application

    ports = [free_port() for _ in range(3)]
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    for folder, names in (("a", ["LC-1", "LC-2"]), ("b", ["LC-1", "LC-2", "LC-3"])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tags.yaml").write_text(head + _dead_cabinets(ports, names))
        (tmp_path / folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    old, new = load_config(tmp_path / "a"), load_config(tmp_path / "b")
    app = Application(old, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data", front=front)
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        yield app, old, new, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class MosquittoTLS(Mosquitto):
    """A real Mosquitto on a free loopback port that speaks only TLS (1.2 or later) with the
    certificate of ``tls``, and lets in only the ``users`` of its password file (made with
    ``mosquitto_passwd -b``); ``require_certificate``: clients must show one the CA signed."""

    def __init__(self, folder: Path, tls: TlsFiles, users: dict[str, str], require_certificate: bool = False) -> None:
        import pwd
        import shutil

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(exe).exists(), "mosquitto is missing: `make test` installs it (apt-get install mosquitto)"
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        folder.mkdir(parents=True, exist_ok=True)
        self.tls, self.users = tls, users
        self.password_file = folder / "passwords"
        for k, (user, password) in enumerate(users.items()):
            flags = ["-c"] if k == 0 else []
            subprocess.run([passwd, *flags, "-b", str(self.password_file), user, password], check=True)
        self.password_file.chmod(0o600)
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        # Run as root, Mosquitto would become the user "mosquitto", who cannot read the test's
        # 0600 files: it stays the user who runs the test (the option is ignored for anyone else).
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"cafile {tls.ca}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
            "tls_version tlsv1.2\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n"
            "persistence false\n"
        )
        self.exe, self.conf, self.log = exe, conf, folder / "mosquitto.log"
        self.proc = None
        self.start()

    def client_args(self, user: str, password: str | None = None) -> list[str]:
        """Arguments of mosquitto_pub/sub to reach this broker as ``user`` over TLS."""
        pw = self.users[user] if password is None else password
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", str(self.tls.ca), "-u", user, "-P", pw]
