"""The MQTT broker of ``scada demo``: which one, and the embedded one itself.

The bollards and vehicles of the simulated city publish to a broker, and the server
subscribes to it. In tests and production that broker is Mosquitto (DESIGN.md); the demo
must also bring them online on a machine that has only Python, so, in order:

1. something already listens on the demo's broker port: use it (a system Mosquitto, say);
2. a ``mosquitto`` executable is on the search path: start it on that port;
3. the ``amqtt`` package is installed (the ``demo`` extra that ``make demo`` installs):
   start the embedded pure-Python broker, ``python -m scada.demo_broker``;
4. none of these: no broker, and the server shows bollards and vehicles ``Bad_NoCommunication``.

The embedded broker runs in its own process: the simulators and the server reach it over
the network exactly as they reach Mosquitto, so the demo tests the same code paths, and a
broker that fails cannot take the server down with it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUNNING, MOSQUITTO, EMBEDDED, NONE = "running", "mosquitto", "embedded", "none"
CHOICES = ("auto", MOSQUITTO, EMBEDDED, NONE)  # what ``scada demo --broker`` accepts
# Debian installs Mosquitto in /usr/sbin, which an ordinary user's PATH often lacks.
SBIN = ("/usr/local/sbin", "/usr/sbin")
START_TIMEOUT = 30.0  # seconds for a broker to accept connections (generous: a loaded machine)


class BrokerError(Exception):
    """The chosen broker could not be started (the message says why)."""


@dataclass(frozen=True)
class Choice:
    kind: str  # RUNNING, MOSQUITTO, EMBEDDED or NONE
    host: str
    port: int
    exe: str | None = None  # the mosquitto executable
    reason: str = ""  # for NONE: why there is no broker

    @property
    def endpoint(self) -> str | None:
        return None if self.kind == NONE else f"{self.host}:{self.port}"

    def describe(self) -> str:
        """One line for the person who started the demo."""
        if self.kind == RUNNING:
            return f"MQTT broker: the one already listening on {self.endpoint}"
        if self.kind == MOSQUITTO:
            return f"MQTT broker: Mosquitto ({self.exe}) on {self.endpoint}"
        if self.kind == EMBEDDED:
            return f"MQTT broker: embedded amqtt {_amqtt_version()} (pure Python) on {self.endpoint}"
        return f"MQTT broker: none ({self.reason}): bollards and vehicles stay Bad_NoCommunication"


def search_path() -> str:
    """The process's PATH, then the sbin folders Debian puts Mosquitto in."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])


def find_mosquitto(path: str | None = None) -> str | None:
    return shutil.which("mosquitto", path=search_path() if path is None else path)


def embedded_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


def _amqtt_version() -> str:
    try:
        return importlib.metadata.version("amqtt")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def choose(host: str, port: int, want: str = "auto", path: str | None = None) -> Choice:
    """The broker the demo should use on ``host:port`` (``path``: where to look for mosquitto).

    ``want`` is ``auto`` (the order of the module's docstring) or forces one kind; a forced
    kind that is not available gives NONE with the reason, never another broker.
    """
    from scada.cli import _accepts  # the demo's own "does this port answer" check

    if want not in CHOICES:
        raise ValueError(f"unknown broker {want!r}: one of {', '.join(CHOICES)}")
    if want == NONE:
        return Choice(NONE, host, port, reason="--broker none")
    if _accepts(host, port):
        if want == "auto":
            return Choice(RUNNING, host, port)
        return Choice(NONE, host, port, reason=f"port {port} is already taken, cannot start {want} there")
    if want in ("auto", MOSQUITTO):
        exe = find_mosquitto(path)
        if exe:
            return Choice(MOSQUITTO, host, port, exe=exe)
        if want == MOSQUITTO:
            return Choice(NONE, host, port, reason="no mosquitto executable found")
    if embedded_available():
        return Choice(EMBEDDED, host, port)
    return Choice(
        NONE,
        host,
        port,
        reason="Mosquitto is not installed and neither is amqtt (apt-get install mosquitto, or pip install '.[demo]')",
    )


def command(choice: Choice, folder: Path) -> list[str] | None:
    """The command line that starts ``choice`` (None: nothing to start); Mosquitto's config goes in ``folder``."""
    if choice.kind == MOSQUITTO and choice.exe is not None:  # choose() always names the executable
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {choice.port} {choice.host}\nallow_anonymous true\npersistence false\n")
        return [choice.exe, "-c", str(conf)]
    if choice.kind == EMBEDDED:
        return [sys.executable, "-m", "scada.demo_broker", "--host", choice.host, "--port", str(choice.port)]
    return None


def start(choice: Choice, folder: Path, timeout: float = START_TIMEOUT) -> subprocess.Popen | None:
    """Start the chosen broker in its own process group (its output in ``folder/mqtt-broker.log``)
    and return once it accepts connections; None when there is nothing to start.

    Raises BrokerError (with the end of its log) if it exits or does not listen in time.
    """
    from scada.cli import _accepts, _stop, _wait_simulator

    argv = command(choice, folder)
    if argv is None:
        return None
    if _accepts(choice.host, choice.port):  # else the wait below would take another's answer for this one's
        raise BrokerError(f"cannot start the {choice.kind} MQTT broker: {choice.endpoint} is already in use")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "mqtt-broker.log"
    with open(log, "ab") as out:
        # Its own session: the demo's Ctrl-C handling stops it after the simulators, in order.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    if _wait_simulator(proc, [(choice.host, choice.port)], timeout=timeout):
        return proc
    _stop(proc)
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    raise BrokerError(
        f"the {choice.kind} MQTT broker did not start on {choice.endpoint} "
        f"(exit code {proc.returncode}); {log}: " + (" | ".join(tail) or "empty")
    )


# The embedded broker process: python -m scada.demo_broker --host H --port P


def broker_config(host: str, port: int) -> dict:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS topics, no packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _broker_class():
    from amqtt.broker import Broker

    class DemoBroker(Broker):
        """amqtt's broker, retained messages sent to the clients that subscribed to them only.

        amqtt 0.12.1 calls this on every CONNECT for every topic filter in the broker, any
        client's: a bollard connecting would get the other bollards' retained states (which
        the server subscribes to) on its command topic's link. A filter the session has not
        subscribed to is skipped; on SUBSCRIBE the session's own filter is in the table already.
        """

        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return DemoBroker


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    """Run an amqtt broker on ``host:port`` until ``stop`` is set."""
    broker = _broker_class()(broker_config(host, port))
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scada.demo_broker",
        description="the demo's embedded MQTT broker (amqtt), until SIGTERM or Ctrl-C",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    import logging

    # amqtt logs every connection at INFO: keep warnings and errors only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The demo's "does it listen yet" probe connects and closes without a byte, which amqtt
    # logs as an ERROR and a WARNING: not a fault, so not in the log a person reads.
    logging.getLogger("amqtt.broker").addFilter(
        lambda record: "No data to decode MQTT packet fixed header" not in record.getMessage()
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    try:
        asyncio.run(run())
    except Exception as exc:  # a taken port, a broken install: say it, the demo shows the log's end
        print(f"embedded MQTT broker on {args.host}:{args.port} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
