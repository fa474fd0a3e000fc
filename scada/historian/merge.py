"""One merge of time-ordered history parts, with an explicit rule for an equal time.

A history read often combines several sources of one tag's points: the store's merged tables
and its pending rows (:mod:`scada.historian.reader`), or the store's answer and the points the
historian has not stored yet (:mod:`scada.opcua.history`). Each source is a *part*:
``(times, values, status, texts)`` with ``texts`` None when the part has no text points.

When two parts hold a point at the same time, they are two copies of one point, and which
copy is the right one depends on where the parts come from, so the caller says it:

- ``keep="last"``: a later part is a later *write* of the point, which replaces the earlier
  one (the store's pending rows over its merged tables: the merge's ``INSERT OR REPLACE``
  will do the same, so a read gives the same answer before and after the merge);
- ``keep="first"``: the earlier part is the authoritative copy (the store's point over the
  historian's not-yet-stored copy of the same point, still in its write queue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Texts = tuple[str | None, ...]
Part = tuple[np.ndarray, np.ndarray, np.ndarray, Texts | None]
Keep = Literal["first", "last"]


def empty_part() -> Part:
    """A part without points (int64 times, float64 values, uint32 status, no texts)."""
    return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint32), None


def part_from_rows(rows: Sequence[tuple], text: bool = False) -> Part:
    """SQL rows (time, value, status) as a part, NULL values as NaN; with ``text``, rows
    (time, text, status): values NaN and the texts kept."""
    if not rows:
        return empty_part()
    t, v, s = zip(*rows)
    times, status = np.array(t, np.int64), np.array(s, np.uint32)
    if text:
        return times, np.full(len(t), np.nan), status, v
    return times, np.array(v, np.float64), status, None


def concat_parts(first: Part, then: Part) -> Part:
    """``first``'s points followed by ``then``'s, unsorted (texts None for numeric points)."""
    if not len(then[0]):
        return first
    texts: Texts | None = None
    if first[3] is not None or then[3] is not None:
        texts = (first[3] or (None,) * len(first[0])) + (then[3] or (None,) * len(then[0]))
    t = np.concatenate([first[0], then[0]])
    return t, np.concatenate([first[1], then[1]]), np.concatenate([first[2], then[2]]), texts


def merge_parts(parts: Sequence[Part], *, keep: Keep) -> Part:
    """Concatenate parts in time order, one point per time; ``keep`` picks the copy kept for
    an equal time ('first' or 'last' part in ``parts``; see the module docstring).

    The sort is stable, so points of one part keep their order. Texts: the result has a
    texts tuple when any part has one (None for the numeric points). A single part without
    texts is returned as it is (no copy).
    """
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last' (got {keep!r})")
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return empty_part()
    if len(parts) == 1 and parts[0][3] is None:
        return parts[0]
    t = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    s = np.concatenate([p[2] for p in parts])
    texts: Texts | None = None
    if any(p[3] is not None for p in parts):
        texts = tuple(x for p in parts for x in (p[3] if p[3] is not None else (None,) * len(p[0])))
    order = np.argsort(t, kind="stable")
    t = t[order]
    keep_mask = np.ones(len(t), bool)
    if keep == "first":
        keep_mask[1:] = t[1:] != t[:-1]  # the first of a run of equal times
    else:
        keep_mask[:-1] = t[1:] != t[:-1]  # the last of a run of equal times
    order = order[keep_mask]
    merged_texts = None if texts is None else tuple(texts[i] for i in order.tolist())
    return t[keep_mask], v[order], s[order], merged_texts
