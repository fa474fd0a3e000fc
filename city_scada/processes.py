"""Child processes of the demo (the city simulator, the MQTT broker): start checks and stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time


def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(proc: subprocess.Popen, ports: list[tuple[str, int]], timeout: float = 30.0) -> bool:
    """True once every one of ``ports`` accepts connections; False if ``proc`` exited first."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(pending[-1], timeout=0.5):
                pending.pop()
        except OSError:
            time.sleep(0.1)
    return not pending


def stop(proc: subprocess.Popen | None) -> None:
    """Stop a child started in its own session (its whole process group): SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
