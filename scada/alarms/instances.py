"""The alarm instances of a configuration: every definition once per device it applies to.

An instance is one row of the engine's columns; instances are numbered definition by
definition (definition k's are rows ``starts[k]:starts[k + 1]``). Built once from the
configuration, read-only afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from scada.alarms.config import AlarmDef
from scada.alarms.expr import compile_expression
from scada.alarms.lookup import TagLookup
from scada.alarms.suppression import SuppressionGraph
from scada.config import Config, Device


@dataclass(frozen=True, slots=True)
class Expression:
    """An expression definition compiled: the points it reads and, per point, each instance's tag."""

    evaluate: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    tags: list[np.ndarray]  # per point read, the tag of each of the definition's instances
    points: tuple[str, ...]


def _per_definition(inst_def: np.ndarray, values: list, dtype: type) -> np.ndarray:
    """Each definition's figure (``values``, in definition order), repeated for each of its instances."""
    return np.array(values, dtype)[inst_def] if len(inst_def) else np.zeros(0, dtype)


class AlarmInstances:
    """Instance tables from a configuration: definitions, devices, watched tags, delays, deadlines,
    the tag lookup of the change batches, the suppression pairs and the (alarm, device) index."""

    def __init__(self, config: Config, n_tags: int) -> None:
        self.config = config
        self.defs: tuple[AlarmDef, ...] = config.alarms.alarms
        devices = config.devices
        dev_index = {d.name: i for i, d in enumerate(devices)}
        starts: list[int] = []
        inst_def, inst_dev, inst_tag = [], [], []
        self.expressions: dict[int, Expression] = {}
        pairs_tag: list[np.ndarray] = []
        pairs_inst: list[np.ndarray] = []
        n = 0
        for k, a in enumerate(self.defs):
            t = config.types[a.type]
            devs = np.array(
                [dev_index[a.device]] if a.device else [i for i, d in enumerate(devices) if d.type == a.type], np.int64
            )
            first = np.array([devices[i].first_tag_id for i in devs], np.int64)
            starts.append(n)
            inst = np.arange(n, n + len(devs), dtype=np.int64)
            inst_def.append(np.full(len(devs), k, np.int32))
            inst_dev.append(devs)
            names = [p.name for p in t.points]
            if a.condition == "expression":
                evaluate, used = compile_expression(a.expression, names)
                tags = [first + names.index(p) for p in used]
                self.expressions[k] = Expression(evaluate, tags, tuple(used))
                watched = tags[0]
                for tg in tags:
                    pairs_tag.append(tg)
                    pairs_inst.append(inst)
            else:
                # comm_loss watches the device's first tag: a link loss turns all its tags bad at once.
                if a.condition == "comm_loss":
                    offset = 0
                else:
                    assert a.point is not None, "the loader requires a point for a process condition"
                    offset = names.index(a.point)
                watched = first + offset
                pairs_tag.append(watched)
                pairs_inst.append(inst)
            inst_tag.append(watched)
            n += len(devs)
        starts.append(n)
        self.n = n
        self.starts = np.array(starts, np.int64)
        self.all = np.arange(n)  # every instance, in order: a full evaluation
        self.inst_def = np.concatenate(inst_def) if inst_def else np.zeros(0, np.int32)
        self.inst_dev = np.concatenate(inst_dev) if inst_dev else np.zeros(0, np.int64)
        self.inst_tag = np.concatenate(inst_tag) if inst_tag else np.zeros(0, np.int64)
        self.latching = np.array([self.defs[k].latching for k in self.inst_def], bool)
        self.is_comm_loss = np.array([self.defs[k].condition == "comm_loss" for k in self.inst_def], bool)
        self.is_rate = np.array([self.defs[k].condition == "rate_of_change" for k in self.inst_def], bool)
        defs = self.defs
        self.on_delay_ns = _per_definition(self.inst_def, [a.on_delay * 1e9 for a in defs], np.int64)
        self.off_delay_ns = _per_definition(self.inst_def, [a.off_delay * 1e9 for a in defs], np.int64)
        # Routing: each instance's service must acknowledge within its deadline, or it is escalated.
        services = config.alarms.services
        self.ack_deadline_ns = _per_definition(
            self.inst_def, [int(services[a.service].ack_deadline_s * 1e9) for a in defs], np.int64
        )
        self.lookup = TagLookup(
            np.concatenate(pairs_tag) if pairs_tag else np.zeros(0, np.int64),
            np.concatenate(pairs_inst) if pairs_inst else np.zeros(0, np.int64),
            n_tags,
        )
        self.suppression = SuppressionGraph(self.defs, self.inst_def, self.inst_dev)
        self.index = {(self.defs[int(self.inst_def[i])].name, devices[int(self.inst_dev[i])].name): i for i in range(n)}

    def instance(self, alarm: str, device: str) -> int:
        """The instance of ``alarm`` on ``device``; KeyError with a readable message if none."""
        try:
            return self.index[(alarm, device)]
        except KeyError:
            raise KeyError(f"no alarm {alarm!r} on device {device!r}") from None

    def definition(self, i: int) -> AlarmDef:
        """Instance ``i``'s alarm definition."""
        return self.defs[int(self.inst_def[i])]

    def device(self, i: int) -> Device:
        """Instance ``i``'s device."""
        return self.config.devices[int(self.inst_dev[i])]

    def affected(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :meth:`TagLookup.affected`."""
        return self.lookup.affected(ids, self.starts)
