"""The processes of the bench: servers that print ``LISTENING <s>`` when they serve and
``RESULT {json}`` when SIGTERM stops them (ours, the asyncua peer, the node-opcua peer), and the
node-opcua scripts of ``bench/node/`` (installed by the bench itself on first use)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import PY, RESULT, ROOT, stop

NODE_DIR = ROOT / "bench" / "node"


def ensure_node() -> None:
    """Install bench/node's pinned node-opcua (``npm ci``) when its node_modules is missing."""
    if (NODE_DIR / "node_modules" / "node-opcua").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("bench_front needs Node.js 20 and npm (Debian: apt-get install nodejs npm)")
    print("installing node-opcua into bench/node/node_modules (npm ci)...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True)


def node_cmd(script: str, arg: dict[str, Any]) -> list[str]:
    """The command line of one of bench/node's scripts with its JSON argument."""
    return ["node", str(NODE_DIR / script), json.dumps(arg)]


def parse_result(text: str) -> dict[str, Any] | None:
    """The last ``RESULT {json}`` line of a process's output, or None."""
    found = None
    for ln in text.splitlines():
        if ln.startswith(RESULT):
            found = json.loads(ln[len(RESULT) :])
    return found


def rss_tree(pid: int) -> int:
    """Resident memory of a process and its children (a front in its own process counts)."""
    try:
        p = psutil.Process(pid)
        return int(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))
    except psutil.NoSuchProcess:
        return 0


class Served:
    """A server process under bench, its output in ``log``."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115  (the child writes it until stop())
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.start_s = float("nan")  # wall seconds from spawn to serving

    @classmethod
    def python(cls, name: str, module: str, args: list[str], log: Path) -> Served:
        """``python -m module args`` from the repository root."""
        return cls(name, [PY, "-m", module, *args], log)

    def output(self) -> str:
        """What the process printed so far."""
        self._out.flush()
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float) -> float:
        """Wait for the ``LISTENING`` line; return the wall seconds from spawn to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(ln.startswith("LISTENING") for ln in self.output().splitlines()):
                self.start_s = time.monotonic() - self.t_start
                return self.start_s
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}) before serving:\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not serving after {timeout:.0f} s:\n{self.output()[-3000:]}")

    def rss(self) -> int:
        """Resident memory of the server and its children, bytes."""
        return rss_tree(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGTERM, wait (kill after ``timeout``); the server's RESULT, or {}."""
        stop(self.proc, timeout)
        self._out.close()
        return parse_result(self.log.read_text(errors="replace")) or {}


class NodeRun:
    """One bench/node script running (a client), its stdout kept for its RESULT line; ``nice``: its
    niceness (0: the bench's own)."""

    def __init__(self, script: str, arg: dict[str, Any], log: Path, nice: int = 0) -> None:
        self.script = script
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115  (the child writes it until result())
        self.proc = subprocess.Popen(
            node_cmd(script, arg),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=NODE_DIR,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait for the client's ``READY`` line (its initial values are in)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._out.flush()
            if "READY" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.script} not ready:\n{self.log.read_text(errors='replace')[-3000:]}")

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the script to end; its RESULT (an error with its output if it has none)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop(self.proc, 5)
        self._out.close()
        text = self.log.read_text(errors="replace")
        res = parse_result(text)
        if res is None:
            raise RuntimeError(f"{self.script} failed (rc={self.proc.returncode}):\n{text[-3000:]}")
        return res


def run_node(script: str, arg: dict[str, Any], log: Path, timeout: float) -> dict[str, Any]:
    """Run one bench/node script to its end; its RESULT."""
    return NodeRun(script, arg, log).result(timeout)
