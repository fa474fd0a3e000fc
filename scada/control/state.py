"""What HMIs see of the control path, per device: the Control tags (scada.config.CONTROL_POINTS).

``state`` (idle, selected, running), ``last_command`` (the command and its arguments),
``last_user`` and ``last_result`` ("Good", or the refusal's status name and message), written
through the TagDB's batch API like any other tag: the OPC UA front, the historian and the
alarms see them change. The time of the last command is their source timestamp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np

from scada import status as st
from scada.config import CONTROL_POINTS, CONTROL_STATES, Config, Device
from scada.tagdb import TEXT, TagDB

STATE = {label: value for value, label in CONTROL_STATES}  # idle 0, selected 1, running 2
IN_PROGRESS = "in progress"  # last_result while a command runs
_INDEX = {p.name: k for k, p in enumerate(CONTROL_POINTS)}
_TEXTS = [_INDEX["last_command"], _INDEX["last_user"], _INDEX["last_result"]]


def describe(command: str, args: Mapping[str, float], point: str = "") -> str:
    """``SetDimLevel(level=50)``, ``Write(dim_setpoint=40)``: what last_command shows."""
    if point:
        return f"{command}({point}={_number(args.get('value', float('nan')))})"
    return f"{command}({', '.join(f'{k}={_number(v)}' for k, v in sorted(args.items()))})"


def _number(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:g}"


class ControlTags:
    """Writes the Control tags of the devices of one configuration into one tag table."""

    def __init__(self, config: Config, tagdb: TagDB) -> None:
        self.config, self.tagdb = config, tagdb
        self._ids: dict[str, np.ndarray] = {}
        self._numbers: dict[int, float] = {}  # written this turn of the event loop (see _write)
        self._texts: dict[int, str] = {}
        self._scheduled = False
        self._done: asyncio.Future[None] | None = None  # set by the next flush
        for d in config.controlled:
            ids = config.control_ids(d)
            assert ids is not None  # controlled: its type has commands
            self._ids[d.name] = ids

    def ids(self, device: Device) -> np.ndarray | None:
        return self._ids.get(device.name)

    def initialise(self) -> None:
        """Every control tag that never had a value: idle, empty texts, Good (a reload keeps
        the carried ones)."""
        if not self._ids:
            return
        all_ids = np.concatenate(list(self._ids.values()))
        fresh = all_ids[self.tagdb.status[all_ids] != st.GOOD]
        if fresh.size == 0:
            return
        kinds = self.tagdb.kind[fresh]
        numeric, texts = fresh[kinds != TEXT], fresh[kinds == TEXT]
        self.tagdb.update(numeric, np.zeros(numeric.size))
        self.tagdb.update_text(texts, [""] * texts.size)

    def set_state(self, device: Device, state: str) -> None:
        ids = self._ids.get(device.name)
        if ids is not None:
            self._write({int(ids[_INDEX["state"]]): float(STATE[state])}, {})

    def started(self, device: Device, command: str, user: str) -> None:
        """A command goes to the field: shown as running, with who sent what."""
        self._show(device, "running", (command, user, IN_PROGRESS))

    def finished(self, device: Device, state: str, command: str, user: str, result: str) -> None:
        """One attempt ended: the device's state, and its last command, user and result."""
        self._show(device, state, (command, user, result))

    def _show(self, device: Device, state: str, texts: tuple[str, str, str]) -> None:
        ids = self._ids.get(device.name)
        if ids is None:
            return
        numbers = {int(ids[_INDEX["state"]]): float(STATE[state])}
        self._write(numbers, dict(zip(ids[_TEXTS].tolist(), texts, strict=True)))

    # Why the writes wait for the end of the loop's turn: each TagDB update is a change batch
    # that every consumer (alarms, historian, the front's forwarder, the read-back) wakes up for;
    # a group action over 1,100 cabinets wrote 4 per device (4,400 batches in a few seconds).
    # Gathered per turn, the devices finishing together share one batch. The flush is scheduled
    # before the task that wrote them can hand its result to anyone (call_soon is FIFO), so a
    # caller awaiting a command sees its Control tags already written.

    def _write(self, numbers: dict[int, float], texts: dict[int, str]) -> None:
        self._numbers.update(numbers)
        self._texts.update(texts)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool, a test's setup): at once
            self.flush()
            return
        self._scheduled = True
        self._done = loop.create_future()
        loop.call_soon(self.flush)

    async def written(self) -> None:
        """Until what was written so far is in the tag table (at the end of this loop turn)."""
        if self._done is not None:
            await asyncio.shield(self._done)

    def flush(self) -> None:
        """Write what waits: one numeric and one text update."""
        self._scheduled = False
        done, self._done = self._done, None
        numbers, texts = self._numbers, self._texts
        self._numbers, self._texts = {}, {}
        try:
            if numbers:
                ids = np.fromiter(numbers, np.int64, len(numbers))
                self.tagdb.update(ids, np.fromiter(numbers.values(), float, len(numbers)))
            if texts:
                self.tagdb.update_text(np.fromiter(texts, np.int64, len(texts)), list(texts.values()))
        finally:
            if done is not None and not done.done():
                done.set_result(None)
