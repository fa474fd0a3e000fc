"""The alarm engine's field-to-event latency on the simulated city, for the isolation section:
a fault injected through the simulator's control port (a luminaire fails on one cabinet), and
the time the server's alarm engine activated ``lamps_failed`` for it, read from the server's
alarm journal (SQLite, readable by another process). Each probe takes the next cabinet and
repairs it once measured, so that an alarm left active by a probe never hides the next one."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ALARM, FAULT, REPAIR = "lamps_failed", "lamp_failure", "lamp_repair"  # no on_delay: the engine's own latency


def control(port: int, request: dict) -> dict:
    """One JSON-line request to the simulator's control port; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((json.dumps(request) + "\n").encode())
        reply: dict = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        raise RuntimeError(f"simulator refused {request}: {reply.get('error')}")
    return reply


def activated_at(journal: Path, device: str, since_ns: int) -> int | None:
    """When the engine activated ``lamps_failed`` on ``device`` at or after ``since_ns`` (None: not yet)."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute(
            "SELECT min(time_ns) FROM journal WHERE alarm = ? AND device = ? AND event = 'ACTIVATE' AND time_ns >= ?",
            (ALARM, device, since_ns),
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


class AlarmProbe(threading.Thread):
    """Probes one cabinet after another (taken from ``devices``) until ``stop`` is set: inject,
    wait for the journal's ACTIVATE (at most ``timeout`` s), repair. ``latencies_ms`` and
    ``missed`` (no activation in time) are read after ``join``."""

    def __init__(self, port: int, journal: Path, devices: Iterator[str], timeout: float = 20.0) -> None:
        super().__init__(name="alarm-probe", daemon=True)
        self.port, self.journal, self.devices, self.timeout = port, journal, devices, timeout
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.missed = 0

    def run(self) -> None:
        try:
            self._probe()
        except OSError:  # the simulator is gone (the bench stopped on an error): nothing left to probe
            pass

    def _probe(self) -> None:
        for device in self.devices:
            if self.stop.is_set():
                return
            t0 = time.time_ns()
            control(self.port, {"fault": FAULT, "device": device, "count": 1})
            deadline = time.monotonic() + self.timeout
            at = None
            while at is None and time.monotonic() < deadline:
                time.sleep(0.05)
                at = activated_at(self.journal, device, t0)
            if at is None:
                self.missed += 1
            else:
                self.latencies_ms.append((at - t0) / 1e6)
            control(self.port, {"fault": REPAIR, "device": device})
