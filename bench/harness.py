"""What the benches share: loopback ports and processes, configuration folders, one way to load
a configuration and to start the server, medians and ratios, and the printed table of figures.

A bench script puts the repository root first on ``sys.path`` and imports this module as
``bench.harness``. The loopback plumbing is the integration tests' own
(``tests/integration/helpers.py``) and so are the configuration writers and loader
(``tests/configs.py``): a bench and a test start a broker, wait for a port, write a
configuration folder and load it the same way, in one place.

The child-process protocol (``run_child`` / ``emit``): a bench that measures in a fresh
interpreter runs its own script with ``--child ...``; the child prints one ``RESULT {json}``
line, which the parent parses. Anything else the child prints is kept for the error message.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.configs import load as load_config  # noqa: E402  (needs ROOT on sys.path)
from tests.configs import write_inventory  # noqa: E402
from tests.integration.helpers import (  # noqa: E402
    Mosquitto,
    Process,
    free_port,
    free_port_range,
    scada_run_args,
    stop_process,
    wait_port,
)

__all__ = [
    "COMMUNES",
    "PY",
    "RESULT",
    "ROOT",
    "Clock",
    "Mosquitto",
    "Process",
    "Report",
    "Row",
    "emit",
    "fmt_rate",
    "free_port",
    "free_port_range",
    "line",
    "load_config",
    "log",
    "med",
    "rss",
    "run_child",
    "scada_run",
    "spread",
    "stop",
    "string_node_id",
    "timed",
    "wait_port",
    "write_inventory",
]

RESULT = "RESULT "

# Communes of the synthetic rows (alarm journal, spool): eight of the metropolis, ASCII names.
COMMUNES = (
    "Dijon",
    "Chenove",
    "Quetigny",
    "Talant",
    "Fontaine-les-Dijon",
    "Longvic",
    "Saint-Apollinaire",
    "Chevigny-Saint-Sauveur",
)


# --------------------------------------------------------------------------------------------
# Configuration folders and the server


def scada_run(config: Path, data: Path, endpoint: str, *extra: str) -> list[str]:
    """Interpreter arguments that run the server on ``config`` (the integration tests' command line,
    then ``extra``: a later option overrides an earlier one)."""
    return [*scada_run_args(config, data, endpoint), *extra]


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 20.0) -> None:
    """Terminate a child process if it still runs; kill it when it does not end within ``timeout``."""
    stop_process(proc, signal.SIGTERM, timeout)


# --------------------------------------------------------------------------------------------
# Measuring


def string_node_id(name: str, ns: int) -> Any:
    """An OPC UA string NodeId (asyncua annotates its fields with NewTypes, String and Int16, that
    plain values do not match)."""
    from asyncua import ua

    return ua.NodeId(name, ns)  # type: ignore[arg-type]


class Clock:
    """A settable nanosecond clock for the alarm engine: the bench moves time, not the wall clock."""

    def __init__(self) -> None:
        self.t = time.time_ns()

    def __call__(self) -> int:
        return self.t


def timed(fn: Callable[..., object], *args: object) -> float:
    """Wall-clock seconds of one call ``fn(*args)``."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rss() -> int:
    """This process's resident set size in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def med(xs: Iterable[float]) -> float:
    """The median: every figure of the benches is one over repetitions."""
    return statistics.median(xs)


def spread(xs: Iterable[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """``median M (min a, max b, n=k)`` of ``xs`` times ``scale``."""
    ys = sorted(x * scale for x in xs)
    return f"median {fmt.format(med(ys))} (min {fmt.format(ys[0])}, max {fmt.format(ys[-1])}, n={len(ys)})"


def fmt_rate(r: float) -> str:
    """A rate per second in k/s below a million, in M/s above."""
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.1f} k/s"


# --------------------------------------------------------------------------------------------
# Fresh interpreters


def run_child(script: Path | str, args: Sequence[object], timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter (cwd: the repository); return its RESULT json."""
    cmd = [PY, str(script), "--child", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result: dict[str, Any] = json.loads(line[len(RESULT) :])
            return result
    raise RuntimeError(f"child {args} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def emit(result: dict[str, Any]) -> None:
    """The child's answer to ``run_child``."""
    print(RESULT + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Reporting


def line(figure: str, measured: str, reference: str = "", ratio: str = "", width: int = 14) -> None:
    """Print one row of a bench's running table: figure, measured (right-aligned in ``width``), target or
    baseline, ratio."""
    print(f"{figure:58} {measured:>{width}}   {reference:>22}   {ratio}")


def log(msg: str) -> None:
    """A progress line, flushed at once (a bench runs for minutes)."""
    print(msg, flush=True)


@dataclass
class Row:
    """One line of the table: a figure, what was measured, its target or baseline, the ratio, a verdict."""

    figure: str
    measured: str
    reference: str = ""
    ratio: str = ""
    verdict: str = ""


@dataclass
class Report:
    """The rows, notes and raw measurements of a run, printed as one table at the end."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: str, measured: str, reference: str = "", ratio: str = "", verdict: str = "") -> None:
        """Add a row."""
        self.rows.append(Row(figure, measured, reference, ratio, verdict))

    def section(self, title: str) -> None:
        """Start a section: a ``[title]`` line."""
        self.rows.append(Row(f"[{title}]", ""))

    def note(self, text: str) -> None:
        """A note printed now and again under the table."""
        self.notes.append(text)
        print("  note:", text, flush=True)

    def print_table(self) -> None:
        """Print the rows, columns as wide as their widest cell, then the notes."""
        head = Row("Figure", "Measured", "Target / baseline", "Ratio", "")
        rows = [head, *self.rows]
        w = [max(len(getattr(r, f)) for r in rows) for f in ("figure", "measured", "reference", "ratio")]
        line = "-" * (sum(w) + 3 * 4 + 7)
        print()
        print(line)
        for i, r in enumerate(rows):
            if r.figure.startswith("[") and not r.measured:
                print(r.figure)
                continue
            print(
                f"{r.figure:<{w[0]}}   {r.measured:>{w[1]}}   {r.reference:<{w[2]}}   {r.ratio:>{w[3]}}   {r.verdict}"
            )
            if i == 0:
                print(line)
        print(line)
        if self.notes:
            print("Notes:")
            for n in self.notes:
                print(" -", n)
