"""Scenario files: a timeline of faults in YAML, checked when loaded, played against a city.

```yaml
# at: seconds of simulated time after the start
- {at: 10, fault: lamp_failure, device: LC-DIJ-001, count: 3}
- {at: 60, fault: mains_loss, device: LC-DIJ-002}
- {at: 90, fault: conflict_fault, device: J-DIJ-004}
- {at: 120, fault: broker_outage, seconds: 30}
```
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.fields import Fields, non_negative, to_float, to_str
from common.yamlsrc import ConfigError, LocList, load
from simulators.runner import CitySimulator, FaultError


@dataclass(frozen=True)
class Step:
    at: float
    fault: str
    device: str | None
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def load_scenario(path: str | Path, city: CitySimulator) -> list[Step]:
    doc = load(path)
    if not isinstance(doc, LocList):
        raise ConfigError(path, 1, "", "a scenario is a list of {at: seconds, fault: name, device: name, ...}")
    steps = []
    for k, raw in enumerate(doc):
        line = doc.line_of(k)
        f = Fields(raw, f"[{k}]", str(path), line)
        at = f.take("at", non_negative(to_float), what="seconds of simulated time after the start")
        fault = f.take("fault", to_str)
        device = f.take("device", to_str, default=None)
        params = {key: value for key, value in raw.items() if key not in ("at", "fault", "device")}
        try:
            city.check(fault, device, params)
        except FaultError as exc:
            raise ConfigError(path, line, f"[{k}]", str(exc)) from None
        steps.append(Step(at, fault, device, params, f"{path}:{line}"))
    return sorted(steps, key=lambda s: s.at)


async def play(steps: list[Step], city: CitySimulator, acceleration: float) -> None:
    """Inject each step when its simulated time comes."""
    t0 = time.monotonic()
    for s in steps:
        delay = s.at / acceleration - (time.monotonic() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        await city.inject(s.fault, s.device, **s.params)
