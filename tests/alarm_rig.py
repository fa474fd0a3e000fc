"""The alarm tests' rig: a small configuration (two lighting cabinets, one junction, under the
shipped types), a clock the test moves, and an alarm engine over a real TagDB and journal,
with values set by device and point name. The engine's unit tests and the OPC UA
Alarms & Conditions tests build on it, each with its own alarm definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scada import status as st
from scada.alarms.engine import AlarmEngine, AlarmEvent
from scada.alarms.journal import Journal
from scada.alarms.states import State
from scada.tagdb import TagDB
from tests.configs import write_config

S = 1_000_000_000

DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}
  - {name: LC-2, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.2:502"}
  - {name: TJ-1, type: traffic_junction, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "opc.tcp://10.0.0.9:4840/"}
"""

SERVICES = """
services:
  lighting_maintenance: {label: Lighting maintenance, ack_deadline_s: 1800}
  traffic_control: {label: Traffic control, ack_deadline_s: 300}
"""


class Clock:
    """Nanoseconds since the epoch that move only when the test says so; from ``start`` (a fixed
    instant by default, so that a unit test's timestamps repeat; ``time.time_ns()`` for a test
    whose client compares them with its own clock)."""

    def __init__(self, start: int = 1_800_000_000 * S) -> None:
        self.t = start

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * S)


class AlarmRig:
    """Configuration in ``folder`` (``devices`` under the shipped types, ``alarms`` as alarms.yaml), a
    TagDB, a journal at ``journal_path`` and an engine on ``clock``."""

    def __init__(self, folder: Path, alarms: str, journal_path: Path, clock: Clock, devices: str = DEVICES) -> None:
        self.config = write_config(folder, devices, alarms)
        self.tagdb = TagDB(*self.config.tag_table())
        self.journal = Journal(journal_path)
        self.clock = clock
        self.engine = AlarmEngine(self.config, self.tagdb, self.journal, self.clock)

    def tag(self, device: str, point: str) -> int:
        d = self.config.device(device)
        return self.tagdb.id_of(f"{d.commune}/{self.config.types[d.type].cls}/{device}/{point}")

    def set(self, device: str, status: int = st.GOOD, **values: float) -> list[AlarmEvent]:
        """Values of the device's points (by name) into the TagDB, the batch through the engine."""
        ids = [self.tag(device, p) for p in values]
        batch = self.tagdb.update(np.array(ids), np.array(list(values.values()), float), status, self.clock())
        return self.engine.process(batch)

    def state(self, alarm: str, device: str = "LC-1") -> State:
        return State(int(self.engine.state[self.engine.instance(alarm, device)]))
