"""Per-device communication diagnostics, kept in columns and published as diagnostic tags.

Every device has the tags of ``config.DIAG_POINTS`` under its ``Diagnostics`` object: state,
successes, failures, round-trip time, demoted, last error. A driver records what happens
with cheap scalar writes into this table (no TagDB call per poll); ``flush`` publishes the
whole table as one TagDB batch, once a second, so diagnostics cost the city one batch per
second whatever the number of devices, and only rows that changed reach the consumers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from scada import status as st
from scada.config import DIAG_POINTS, Config, Device
from scada.tagdb import TagDB, now_ns

NOT_CONNECTED, ONLINE, OFFLINE, DEMOTED = 0, 1, 2, 3
_NAMES = [p.name for p in DIAG_POINTS]
_NUMERIC = [k for k, p in enumerate(DIAG_POINTS) if p.name != "last_error"]
_TEXT = _NAMES.index("last_error")


class DeviceDiagnostics:
    """The diagnostics of a driver's devices; ``k`` below is the device's position in ``devices``."""

    def __init__(self, config: Config, devices: Sequence[Device]) -> None:
        n = len(devices)
        self.state = np.zeros(n, np.float64)
        self.successes = np.zeros(n, np.float64)
        self.failures = np.zeros(n, np.float64)
        self.rtt_ms = np.full(n, np.nan)
        self.demoted = np.zeros(n, np.float64)
        self.errors: list[str] = [""] * n
        ids = np.stack([config.diag_ids(d) for d in devices]) if n else np.zeros((0, len(DIAG_POINTS)), np.int64)
        # Numeric rows device-major, in the order flush() stacks the columns.
        self._numeric_ids = ids[:, _NUMERIC].T.ravel()
        self._text_ids = ids[:, _TEXT]
        self._published_errors: list[str | None] = [None] * n

    def __len__(self) -> int:
        return len(self.errors)

    def success(self, k: int, rtt_s: float | None = None) -> None:
        self.successes[k] += 1
        self.state[k] = ONLINE
        self.demoted[k] = 0
        if rtt_s is not None:
            self.rtt_ms[k] = rtt_s * 1000.0

    def failure(self, k: int, error: str, offline: bool = True) -> None:
        """A failed poll (or a rejected message: ``offline=False`` keeps the state)."""
        self.failures[k] += 1
        self.errors[k] = error
        if offline and self.state[k] != DEMOTED:
            self.state[k] = OFFLINE if self.successes[k] else NOT_CONNECTED

    def offline(self, k: int, error: str) -> None:
        """The device is known to be out of communication (a last will, a lost session)."""
        self.errors[k] = error
        if self.state[k] != DEMOTED:
            self.state[k] = OFFLINE

    def demote(self, k: int, error: str) -> None:
        self.state[k] = DEMOTED
        self.demoted[k] = 1
        self.errors[k] = error

    # Vectorised forms, for drivers that learn about many devices at once (a session, a broker).

    def received(self, ks: np.ndarray, counts: np.ndarray | int = 1) -> None:
        """Values received for devices ``ks`` (repeats allowed): counted as successes, online."""
        np.add.at(self.successes, ks, counts)
        self.state[ks] = ONLINE

    def link_down(self, ks: Sequence[int] | np.ndarray, error: str) -> None:
        """The link that carries devices ``ks`` failed: one failure each, offline (or not connected)."""
        ks = np.asarray(ks, np.int64)
        self.failures[ks] += 1
        self.state[ks] = np.where(self.successes[ks] > 0, OFFLINE, NOT_CONNECTED)
        for k in ks.tolist():
            self.errors[k] = error

    def link_up(self, ks: Sequence[int] | np.ndarray, rtt_s: float | None = None) -> None:
        ks = np.asarray(ks, np.int64)
        self.state[ks] = ONLINE
        if rtt_s is not None:
            self.rtt_ms[ks] = rtt_s * 1000.0

    def flush(self, tagdb: TagDB) -> None:
        """Publish the table: one numeric batch and the error texts that changed."""
        if not len(self):
            return
        t = now_ns()
        columns = {
            "state": self.state,
            "successes": self.successes,
            "failures": self.failures,
            "rtt": self.rtt_ms,
            "demoted": self.demoted,
        }
        values = np.concatenate([columns[_NAMES[k]] for k in _NUMERIC])
        tagdb.update(self._numeric_ids, values, st.GOOD, t)
        changed = [k for k, (a, b) in enumerate(zip(self.errors, self._published_errors)) if a != b]
        if changed:
            tagdb.update_text(self._text_ids[changed], [self.errors[k] for k in changed], st.GOOD, t)
            for k in changed:
                self._published_errors[k] = self.errors[k]

    async def run(self, tagdb: TagDB, period: float = 1.0) -> None:
        """Flush every ``period`` seconds until cancelled."""
        while True:
            self.flush(tagdb)
            await asyncio.sleep(period)
