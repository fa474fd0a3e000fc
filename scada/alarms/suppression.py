"""Suppression by design: which alarm instances hide which others, and whether they do now.

A consequence instance is hidden while a cause instance of the same device is active: the
causes named in its definition's ``suppressed_by``, and the device's ``comm_loss`` alarm, when
its type has one, for every other alarm of the device (with no data, its process alarms are
meaningless). A cause counts by its *raw* condition (a mains loss hides its lamp alarms from
the first second, not once announced), except ``comm_loss``, which counts once its on-delay is
over (a server start, every tag Bad until its first poll, must not suppress and unsuppress
every alarm in town).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scada.alarms.config import AlarmDef


class SuppressionGraph:
    """Pairs (consequence instance, cause instance), and who they hide for a change."""

    def __init__(self, defs: Sequence[AlarmDef], inst_def: np.ndarray, inst_dev: np.ndarray) -> None:
        n = len(inst_def)
        by_def_dev: dict[tuple[str, int], int] = {}
        for i in range(n):
            by_def_dev[(defs[int(inst_def[i])].name, int(inst_dev[i]))] = i
        dep, cause = [], []
        comm = {k for k, a in enumerate(defs) if a.condition == "comm_loss"}
        for i in range(n):
            a = defs[int(inst_def[i])]
            dev = int(inst_dev[i])
            names = set(a.suppressed_by)
            if a.condition != "comm_loss":  # comm loss hides every other alarm of the device
                names |= {defs[k].name for k in comm if defs[k].type == a.type}
            for name in names:
                c = by_def_dev.get((name, dev))
                if c is not None and c != i:
                    dep.append(i)
                    cause.append(c)
        self.n = n
        self.dep = np.array(dep, np.int64)
        self.cause = np.array(cause, np.int64)
        order = np.argsort(self.cause, kind="stable")
        self.dep_by_cause = self.dep[order]
        self.cause_sorted = self.cause[order]

    def __len__(self) -> int:
        return len(self.dep)

    def dependents(self, changed: np.ndarray) -> np.ndarray:
        """The instances some of ``changed`` (sorted) may hide, sorted, each once."""
        lo = np.searchsorted(self.cause_sorted, changed, "left")
        hi = np.searchsorted(self.cause_sorted, changed, "right")
        parts = [self.dep_by_cause[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def wanted(self, deps: np.ndarray, raw: np.ndarray, cond: np.ndarray, is_comm_loss: np.ndarray) -> np.ndarray:
        """For each of ``deps``: whether one of its causes is active now (see the module docstring)."""
        mask = np.isin(self.dep, deps)
        causes = self.cause[mask]
        signal = np.where(is_comm_loss[causes], cond[causes], raw[causes])
        want = np.zeros(self.n, bool)
        np.logical_or.at(want, self.dep[mask], signal)
        return want[deps]
