"""The sections of ``bench/bench_skeleton.py``, one module each: ``ingest`` (1 and 1b), ``memory``
(2), ``build`` (3), ``smoke`` (3b), ``publish`` (4). Each has ``bench_*(args, report)``, run by
the script, and ``child_*`` functions that the script runs in fresh interpreters (``--child``)."""

from __future__ import annotations

from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench_skeleton.py"
"""The script the sections' fresh interpreters run (``bench_skeleton.py --child ...``)."""
