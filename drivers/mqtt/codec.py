"""Pure MQTT codec: one message's payload -> the values of the points that listen to its topic.

No I/O. A payload is parsed once whatever the number of points reading it. Anything that
is not what the point expects (invalid JSON, a missing field, a string where a number
belongs, an unknown enumeration label, a non-finite number, an oversized payload) is
reported as an error for that point and produces no value: garbage never changes a tag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drivers.mqtt.config import MqttPoint

MAX_PAYLOAD = 64 * 1024  # bytes: larger messages are refused unread


@dataclass(frozen=True, slots=True)
class Reader:
    """How one point reads a message: its tag id, its point, its enum labels -> values."""

    tag: int
    point: MqttPoint
    labels: dict[str, int] | None = None


class GarbageError(ValueError):
    """The payload cannot be read at all (too big, not UTF-8, not JSON)."""


def parse(payload: bytes, needs_json: bool) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise GarbageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise GarbageError("payload is not UTF-8 text") from None
    if not needs_json:
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise GarbageError("payload is not valid JSON") from None


def _field(doc: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(doc, dict) or name not in doc:
            raise KeyError(path)
        doc = doc[name]
    return doc


def to_value(raw: Any, r: Reader) -> float | str:
    """One field -> a tag value (float, or str for text points); ValueError when it does not fit."""
    t = r.point.type
    if t == "text":
        if isinstance(raw, (dict, list)):
            raise ValueError("expected text")
        return str(raw)
    if isinstance(raw, str) and r.labels is not None:
        if raw not in r.labels:
            raise ValueError(f"unknown state {raw!r}")
        return float(r.labels[raw])
    if t == "bool":
        if isinstance(raw, bool):
            return 1.0 if raw else 0.0
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return float(raw)
        if isinstance(raw, str) and raw.lower() in ("true", "false", "on", "off", "1", "0"):
            return 1.0 if raw.lower() in ("true", "on", "1") else 0.0
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"expected a number, got {raw!r}")
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise ValueError("not a finite number")
    if r.labels is not None and v not in r.labels.values():
        raise ValueError(f"unknown state {raw!r}")
    return v


def decode(payload: bytes, readers: Sequence[Reader]) -> tuple[list[int], list[float | str], list[str]]:
    """Values for the readers of one topic: (tag ids, values, errors)."""
    needs_json = any(r.point.json for r in readers)
    doc = parse(payload, needs_json)  # GarbageError: the whole message is refused
    ids: list[int] = []
    values: list[float | str] = []
    errors: list[str] = []
    for r in readers:
        try:
            raw = _field(doc, r.point.json) if r.point.json else doc
            values.append(to_value(raw, r))
            ids.append(r.tag)
        except KeyError as exc:
            errors.append(f"field {exc.args[0]!r} missing")
        except ValueError as exc:
            errors.append(str(exc))
    return ids, values, errors
