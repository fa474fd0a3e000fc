"""Pure MQTT codec: payloads -> the values of the points that listen to their topic.

No I/O. A payload is parsed once whatever the number of points reading it. Anything that
is not what the point expects (invalid JSON, a missing field, a string where a number
belongs, an unknown enumeration label, a non-finite number, an oversized payload) is
reported as an error for that point and produces no value: garbage never changes a tag.

Two entry points with the same results: :func:`decode` reads one message; :func:`decode_batch`
reads many messages of one :class:`Layout` (the points an equipment type reads from one
topic), a column of values per point, so that the cost per message is one JSON parse and a
few C-level list operations rather than a Python function call per point. A column that is
not entirely well-formed falls back, for that column of that batch, to the one-value reader
that :func:`decode` uses, so errors and values are the same either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.mqtt.config import MqttPoint

MAX_PAYLOAD = 64 * 1024  # bytes: larger messages are refused unread

# json.loads() is three Python calls and a regular expression around this C scanner; a
# payload that starts with a value and ends with it is parsed by the scanner alone, anything
# else (surrounding whitespace, errors) by json.loads(), whose verdict is the reference.
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__; typeshed omits it


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
        doc, end = _scan(text, 0)
        if end == len(text):
            return doc
    except StopIteration:  # no value at offset 0: leading whitespace, or nothing valid
        pass
    except (ValueError, RecursionError):
        raise GarbageError("payload is not valid JSON") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or an integer of > 4300 digits
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
    except OverflowError:  # an integer beyond the float range
        raise ValueError("not a finite number") from None
    if not math.isfinite(v):
        raise ValueError("not a finite number")
    if r.labels is not None and v not in r.labels.values():
        raise ValueError(f"unknown state {raw!r}")
    return v


def read_point(doc: Any, r: Reader) -> float | str:
    """One point's value from a parsed message; ValueError (with the reason) when there is none."""
    try:
        raw = _field(doc, r.point.json) if r.point.json else doc
    except KeyError as exc:
        raise ValueError(f"field {exc.args[0]!r} missing") from None
    return to_value(raw, r)


def decode(payload: bytes, readers: Sequence[Reader]) -> tuple[list[int], list[float | str], list[str]]:
    """Values for the readers of one topic: (tag ids, values, errors)."""
    needs_json = any(r.point.json for r in readers)
    doc = parse(payload, needs_json)  # GarbageError: the whole message is refused
    ids: list[int] = []
    values: list[float | str] = []
    errors: list[str] = []
    for r in readers:
        try:
            values.append(read_point(doc, r))
            ids.append(r.tag)
        except ValueError as exc:
            errors.append(str(exc))
    return ids, values, errors


# Batches


class _Missing:
    """A field absent from a document (never equal to a JSON value)."""


_MISSING = _Missing()
_NUMBER_TYPES = frozenset({int, float})


class Garbage:
    """A payload refused whole (the reason is ``error``): it gives no value at all."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class Layout:
    """The points that one equipment type reads from one of its topics, compiled once.

    Every device of the type shares it; a device contributes only its row of tag ids.
    ``readers`` are the points in column order (their ``tag`` is the column index).
    """

    def __init__(self, readers: Sequence[Reader]) -> None:
        self.readers = tuple(readers)
        self.needs_json = any(r.point.json for r in self.readers)
        self.text_columns = [j for j, r in enumerate(self.readers) if r.point.type == "text"]
        self.number_columns = [j for j, r in enumerate(self.readers) if r.point.type != "text"]
        self._labels = [
            None if r.labels is None else np.array(sorted(set(r.labels.values())), np.float64) for r in self.readers
        ]

    @staticmethod
    def key(readers: Sequence[Reader]) -> tuple:
        """Readers with equal keys (tag ids aside) share a layout."""
        return tuple((r.point, None if r.labels is None else tuple(sorted(r.labels.items()))) for r in readers)

    def _column_fast(self, j: int, docs: list) -> np.ndarray | list | None:
        """Column ``j`` of well-formed ``docs`` at C speed, or None when any value needs a closer look."""
        r = self.readers[j]
        path = r.point.json
        try:
            if path is None:
                col = docs
            elif "." not in path:
                col = [d.get(path, _MISSING) for d in docs]  # AttributeError: a document is not an object
            else:
                return None
        except AttributeError:
            return None
        types = set(map(type, col))
        t = r.point.type
        if t == "text":
            return col if types == {str} else None
        labels = r.labels
        if t == "bool" and types == {bool}:
            return np.array(col, np.float64)
        if t != "bool" and types <= _NUMBER_TYPES:
            try:
                arr = np.array(col, np.float64)
            except OverflowError:
                return None
            if not np.isfinite(arr).all():
                return None
            allowed = self._labels[j]  # not None exactly when the reader has labels
            if allowed is not None and not np.isin(arr, allowed).all():
                return None
            return arr
        if labels is not None and types == {str}:
            mapped = list(map(labels.get, col))
            if None in mapped:
                return None
            return np.array(mapped, np.float64)
        return None

    def _column_slow(
        self, j: int, docs: list, rows: Sequence[int], errors: list
    ) -> tuple[np.ndarray | None, np.ndarray, list | None]:
        """Column ``j`` read value by value, as :func:`decode` does: (values, ok, texts)."""
        r = self.readers[j]
        n = len(docs)
        text = r.point.type == "text"
        # A text column fills texts (values None), a number column values (texts None).
        values = np.full(n, np.nan)
        texts: list = [None] * n
        ok = np.zeros(n, bool)
        for i, doc in enumerate(docs):
            try:
                v = read_point(doc, r)
            except ValueError as exc:
                errors.append((rows[i], j, str(exc)))
                continue
            ok[i] = True
            if text:
                texts[i] = v
            else:
                values[i] = v
        return (None, ok, texts) if text else (values, ok, None)


@dataclass(slots=True)
class Decoded:
    """A batch read through one layout: row ``i`` is message ``i``, column ``j`` its point ``j``."""

    values: np.ndarray  # (messages, points) float64; meaningful where ``ok``; NaN for text columns
    ok: np.ndarray  # (messages, points) bool: the point has a value from that message
    texts: dict[int, list]  # text column -> its values per message (str, or None where not ok)
    errors: list[tuple[int, int, str]]  # (message, column or -1 for the whole message, reason), in order


def parse_many(payloads: Sequence[bytes], needs_json: bool) -> list:
    """Each payload parsed (a document, or :class:`Garbage` with the reason), as :func:`parse` would."""
    if not needs_json:
        return [_parse_or_garbage(p, False) for p in payloads]
    scan = _scan
    out: list = []
    append = out.append
    for p in payloads:
        # The common case inline: valid UTF-8 JSON with nothing around it. Anything else
        # (including every error) goes through parse(), which has the last word.
        if len(p) <= MAX_PAYLOAD:
            try:
                text = p.decode("utf-8")
                doc, end = scan(text, 0)
                if end == len(text):
                    append(doc)
                    continue
            except (ValueError, StopIteration, RecursionError):
                pass
        append(_parse_or_garbage(p, True))
    return out


def _parse_or_garbage(payload: bytes, needs_json: bool) -> Any:
    try:
        return parse(payload, needs_json)
    except GarbageError as exc:
        return Garbage(str(exc))


def decode_batch(layout: Layout, payloads: Sequence[bytes]) -> Decoded:
    """Values of ``layout``'s points from each payload (all on topics of that layout)."""
    n, width = len(payloads), len(layout.readers)
    docs = parse_many(payloads, layout.needs_json)
    errors: list[tuple[int, int, str]] = []
    rows: list[int] | None = None  # messages that parsed, when some did not
    if any(d.__class__ is Garbage for d in docs):
        rows = [i for i, d in enumerate(docs) if d.__class__ is not Garbage]
        errors = [(i, -1, d.error) for i, d in enumerate(docs) if d.__class__ is Garbage]
        docs = [docs[i] for i in rows]
    values = np.full((n, width), np.nan)
    ok = np.zeros((n, width), bool)
    texts: dict[int, list] = {}
    index = rows if rows is not None else slice(None)
    for j in range(width):
        col = layout._column_fast(j, docs)
        col_ok: np.ndarray | bool  # bool: every row of the column read
        if col is not None:
            col_ok = True
            col_texts = col if isinstance(col, list) else None
        else:
            col, col_ok, col_texts = layout._column_slow(j, docs, rows if rows is not None else range(n), errors)
        if col_texts is not None:
            if rows is None:
                texts[j] = list(col_texts)
            else:
                full = [None] * n
                for i, v in zip(rows, col_texts):
                    full[i] = v
                texts[j] = full
        else:
            values[index, j] = col
        ok[index, j] = col_ok
    if errors:
        errors.sort(key=lambda e: (e[0], e[1]))
    return Decoded(values, ok, texts, errors)
