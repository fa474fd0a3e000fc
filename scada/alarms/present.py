"""How an alarm instance reads for operators: its message, from the definition's template."""

from __future__ import annotations

import math

import numpy as np

from scada.alarms.config import AlarmDef
from scada.config import Config, Device


def current_value(values: np.ndarray, tag: int) -> float | None:
    """The tag's value now; None when not known (NaN)."""
    v = float(values[tag])
    return None if math.isnan(v) else v


def message(config: Config, a: AlarmDef, d: Device, value: float | None) -> str:
    """The definition's message for device ``d``: fields filled, a state's value by its label."""
    p = config.types[a.type].point(a.point) if a.point else None
    if value is None:
        shown = "?"
    elif p is not None and p.enum:
        shown = dict(p.enum).get(int(value), f"{value:g}")
    else:
        shown = f"{value:g}"
    return a.message.format(
        device=d.name,
        commune=d.commune,
        value=shown,
        unit=p.unit if p else "",
        point=a.point or "",
        limit="" if a.limit is None else f"{a.limit:g}",
    )
