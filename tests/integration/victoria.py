"""A real VictoriaMetrics on a free loopback port, for the historian's tests and bench.

VictoriaMetrics (Debian package ``victoria-metrics``, ``/usr/bin/victoria-metrics``) accepts the
InfluxDB v2 write API on ``/api/v2/write`` (token, org and bucket are accepted and ignored) and
stores each field as the series ``<measurement>_<field>{tags}``, with millisecond timestamps.
``/api/v1/export`` gives back the raw samples, one JSON object per series and line.

Its own durability: it acknowledges a write before the samples are on disk (they are flushed
within seconds), so a SIGKILL of the database loses what it accepted last, which no client can
see. ``stop()`` (SIGTERM) flushes; tests that need every acknowledged value back stop it that way.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .helpers import free_port, stop_process


def victoria_exe() -> str:
    exe = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    assert Path(exe).exists(), ("victoria-metrics is missing: `make test` installs it "
                                "(apt-get install victoria-metrics)")
    return exe


class Victoria:
    """victoria-metrics with a storage folder under ``folder``; started by the constructor.

    ``extra_args`` are added to the command line (e.g. ``-influx.maxLineSize=1024``).
    """

    def __init__(self, folder: Path, extra_args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.exe = victoria_exe()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.log_path = self.folder / "victoria-metrics.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start (again, on the same port and storage) and wait until ``/health`` answers OK."""
        args = [self.exe, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.folder / 'data'}",
                "-retentionPeriod=100y",  # the tests' timestamps are "now", but never let retention drop one
                "-search.latencyOffset=0s", "-search.disableCache",  # read back what was just written
                "-loggerLevel=WARN", *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited ({self.proc.returncode}):\n{self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"victoria-metrics not ready on {self.url} after {timeout} s:\n{self.output()[-2000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM): it flushes what it accepted to disk."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: an abrupt crash (loses the samples it had not flushed yet)."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, sig: int, timeout: float) -> None:
        stop_process(self.proc, sig, timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def flush(self) -> None:
        """Make what was written searchable now (``/internal/force_flush``): a new series is
        otherwise invisible to queries for up to ~10 s."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30) as r:
            r.read()

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Raw samples of the series matching ``match``: ``[{"metric": {...}, "values": [...],
        "timestamps": [...]}]`` (values sorted by timestamp within a series). Flushes first."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def write(self, lines: bytes) -> int:
        """POST line protocol to /api/v2/write; return the HTTP status (for tests of the server itself)."""
        req = urllib.request.Request(f"{self.url}/api/v2/write?org=o&bucket=b&precision=ns", data=lines,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
