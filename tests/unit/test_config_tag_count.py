"""The tag count of a configuration is computed once: the diagnostics of every device ask for it
(``Config.diag_ids``), and a sum over the devices each time made a city's start quadratic in its
device count (26 s of a 280,000-tag start)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

from city_scada import load_config
from scada.diagnostics import DeviceDiagnostics

ROOT = Path(__file__).resolve().parents[2]


class CountingTypes(Mapping):
    """The configuration's types, counting the lookups."""

    def __init__(self, types: Mapping) -> None:
        self.types = types
        self.lookups = 0

    def __getitem__(self, name: str):
        self.lookups += 1
        return self.types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)


def test_the_diagnostics_of_every_device_count_the_tags_once() -> None:
    shipped = load_config(ROOT)
    types = CountingTypes(shipped.types)
    config = dataclasses.replace(shipped, types=types)
    devices = list(config.devices)
    expected = [int(config.diag_ids(d)[0]) for d in devices]
    types.lookups = 0
    diag = DeviceDiagnostics(config, devices)
    assert len(diag) == len(devices) > 2
    assert types.lookups == 0  # the count is kept: no sum over the devices' types per device
    assert [int(config.diag_ids(d)[0]) for d in devices] == expected
    assert config.total_tag_count == len(config.tag_table()[0])
