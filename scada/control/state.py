"""What HMIs see of the control path, per device: the Control tags (scada.config.CONTROL_POINTS).

``state`` (idle, selected, running), ``last_command`` (the command and its arguments),
``last_user`` and ``last_result`` ("Good", or the refusal's status name and message), written
through the TagDB's batch API like any other tag: the OPC UA front, the historian and the
alarms see them change. The time of the last command is their source timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from scada import status as st
from scada.config import CONTROL_POINTS, CONTROL_STATES, Config, Device
from scada.tagdb import TEXT, TagDB

STATE = {label: value for value, label in CONTROL_STATES}  # idle 0, selected 1, running 2
IN_PROGRESS = "in progress"  # last_result while a command runs
_INDEX = {p.name: k for k, p in enumerate(CONTROL_POINTS)}


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
            self.tagdb.update(ids[_INDEX["state"] : _INDEX["state"] + 1], np.array([float(STATE[state])]))

    def started(self, device: Device, command: str, user: str) -> None:
        """A command goes to the field: shown as running, with who sent what."""
        ids = self._ids.get(device.name)
        if ids is None:
            return
        self.set_state(device, "running")
        texts = ids[[_INDEX["last_command"], _INDEX["last_user"], _INDEX["last_result"]]]
        self.tagdb.update_text(texts, [command, user, IN_PROGRESS])

    def finished(self, device: Device, state: str, command: str, user: str, result: str) -> None:
        """One attempt ended: the device's state, and its last command, user and result."""
        ids = self._ids.get(device.name)
        if ids is None:
            return
        self.set_state(device, state)
        texts = ids[[_INDEX["last_command"], _INDEX["last_user"], _INDEX["last_result"]]]
        self.tagdb.update_text(texts, [command, user, result])
