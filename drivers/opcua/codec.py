"""Pure OPC UA codec: data-change notifications -> columns, and commands -> Variants.

No I/O. A DataChangeNotification's items become four parallel arrays (tag id, value, status
code, source time in ns) in one loop: the monitored item's ClientHandle *is* the tag id,
chosen so when the item was created, so nothing is looked up per value. The server's status
code and source timestamp are kept as they are (the server timestamp stands in when the
source gives none). A text point's string goes to a separate list; a value where a scalar
was configured (a structure, an array) is ``Bad_ConfigurationError``; a Bad status without a
value is flagged, so that the driver keeps the tag's last value beside the new status.

The ClientHandle comes from the field: an item whose handle is not one of the driver's own
tags (out of range, or another driver's tag) is dropped and counted in ``rejected``, never
stored and never raised, so one faulty server cannot touch another device's tags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from asyncua import ua

from scada import status as st


@dataclass(slots=True)
class Decoded:
    tags: np.ndarray  # int64 tag ids of numeric rows
    values: np.ndarray  # float64; NaN where ``keep_last`` (or no value at all)
    status: np.ndarray  # uint32 OPC UA status codes
    source_time: np.ndarray  # int64 ns since the epoch, UTC
    keep_last: np.ndarray  # bool: a Bad status without a value, keep the stored value
    texts: list[tuple[int, str, int, int]]  # text rows: (tag id, text, status, source time ns)
    rejected: int = 0  # items dropped: their ClientHandle is not one of the driver's tags
    bad_handle: object = None  # the first such handle, for the log


def decode(
    items: list[ua.MonitoredItemNotification],
    is_text: np.ndarray,
    now: float | None = None,
    known: np.ndarray | None = None,
) -> Decoded:
    """Columns of one DataChangeNotification; ``is_text[tag]`` says which tags are text points.

    ``known[tag]`` (default: every tag of ``is_text``) says which ClientHandles are the
    driver's own items; the others are dropped (see the module docstring).
    """
    n = len(items)
    tags = np.empty(n, np.int64)
    values = np.empty(n, np.float64)
    codes = np.empty(n, np.uint32)
    times = np.empty(n, np.float64)  # s since the epoch: float64 keeps the microseconds exact
    now = time.time() if now is None else now
    odd = []
    for k, item in enumerate(items):
        dv = item.Value
        try:
            tags[k] = item.ClientHandle
        except (TypeError, ValueError, OverflowError):  # not an integer at all: rejected below
            tags[k] = -1
        sc = dv.StatusCode
        codes[k] = sc.value if sc is not None else 0
        t = dv.SourceTimestamp or dv.ServerTimestamp
        times[k] = t.timestamp() if t is not None else now
        var = dv.Value
        v = var.Value if var is not None else None
        if type(v) is float or type(v) is int or type(v) is bool:
            values[k] = v
        else:  # text, no value, or not a scalar: rare, sorted out below
            values[k] = np.nan
            odd.append((k, v))
    src = np.rint(times * 1e6).astype(np.int64) * 1000  # asyncua's datetimes stop at the microsecond
    keep_last = np.zeros(n, bool)
    texts: list[tuple[int, str, int, int]] = []
    own = (tags >= 0) & (tags < len(is_text))
    if known is not None:
        own[own] = known[tags[own]]
    rejected, bad_handle = 0, None
    if not own.all():
        first = int(np.flatnonzero(~own)[0])
        rejected, bad_handle = int(n - own.sum()), items[first].ClientHandle
        odd = [(k, v) for k, v in odd if own[k]]
    if odd or rejected:
        numeric = own.copy()
        for k, v in odd:
            tag = int(tags[k])
            if isinstance(v, str) and is_text[tag]:
                texts.append((tag, v, int(codes[k]), int(src[k])))
                numeric[k] = False
            elif v is None:
                keep_last[k] = bool(codes[k] & 0x80000000)
            elif isinstance(v, (int, float)) and not isinstance(v, str):  # numeric subclasses (IntEnum...)
                values[k] = float(v)
            else:
                codes[k] = st.BAD_CONFIGURATION_ERROR
        if not numeric.all():
            tags, values, codes = tags[numeric], values[numeric], codes[numeric]
            src, keep_last = src[numeric], keep_last[numeric]
    return Decoded(tags, values, codes, src, keep_last, texts, rejected, bad_handle)


def variant(value: float, vtype: ua.VariantType) -> ua.Variant:
    """A command's value as the node's own type: an Int32 node refuses a Double."""
    if vtype == ua.VariantType.Boolean:
        return ua.Variant(bool(value), vtype)
    if vtype in (ua.VariantType.Double, ua.VariantType.Float):
        return ua.Variant(float(value), vtype)
    if float(value) != int(value):
        raise ValueError(f"{value} is not an integer, and the node holds {vtype.name}")
    return ua.Variant(int(value), vtype)
