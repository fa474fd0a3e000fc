"""Interlocks: the conditions under which a device may be commanded, evaluated on live values.

An interlock (tags.yaml ``interlocks:`` of an equipment type) is an expression in the alarm
engine's language (scada.alarms.expr) over the type's points and ``inputs``, aliases of other
devices' tags; it must hold (be true) for the commands that name it to go. Each is compiled
once per type (at load or reload); evaluating it for one device reads that device's rows of
the tag table. Fail safe: an input that is not Good (no communication, stale, never read)
refuses the command, naming the interlock and the input, whatever the expression would say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from scada import status as st
from scada.alarms.expr import Evaluator, ExpressionError, compile_expression
from scada.config import Config, Device
from scada.control.model import BAD_INVALID_STATE, InterlockDef
from scada.tagdb import TagDB


class InterlockConfigError(ValueError):
    """An interlock that cannot be compiled against its type (the parser should have said so)."""


@dataclass(frozen=True, slots=True)
class Compiled:
    definition: InterlockDef
    evaluate: Evaluator
    used: tuple[str, ...]  # the names it reads: the type's points and the inputs' aliases


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an interlock refuses: its name, status and a message that a person reads."""

    interlock: str
    status: int
    message: str


def compile_type(type_name: str, points: Iterable[str], interlocks: Mapping[str, InterlockDef]) -> dict[str, Compiled]:
    """Every interlock of one equipment type, compiled; InterlockConfigError names the bad one."""
    names = list(points)
    out: dict[str, Compiled] = {}
    for name, il in interlocks.items():
        clash = set(il.inputs) & set(names)
        if clash:
            raise InterlockConfigError(f"{il.source}: interlock {name!r}: input alias {sorted(clash)[0]!r} is a point")
        try:
            evaluate, used = compile_expression(il.when, [*names, *il.inputs])
        except ExpressionError as exc:
            raise InterlockConfigError(f"{il.source}: {type_name} interlock {name!r}: {exc}") from None
        out[name] = Compiled(il, evaluate, used)
    return out


class Interlocks:
    """The compiled interlocks of a configuration, evaluated against one tag table."""

    def __init__(self, config: Config, tagdb: TagDB) -> None:
        self.config, self.tagdb = config, tagdb
        self.by_type: dict[str, dict[str, Compiled]] = {}
        self._inputs: dict[str, int] = {}  # another device's tag name -> its id
        self._offset = {n: {p.name: k for k, p in enumerate(t.points)} for n, t in config.types.items()}
        for type_name, interlocks in config.control.interlocks.items():
            t = config.types.get(type_name)
            if t is None:
                raise InterlockConfigError(f"interlocks of unknown equipment type {type_name!r}")
            self.by_type[type_name] = compile_type(type_name, (p.name for p in t.points), interlocks)
            for il in interlocks.values():
                for alias, tag in il.inputs.items():
                    try:
                        self._inputs[tag] = tagdb.id_of(tag)
                    except KeyError:
                        raise InterlockConfigError(
                            f"{il.source}: interlock {il.name!r}: input {alias} names the unknown tag {tag!r}"
                        ) from None

    def check(self, device: Device, names: Iterable[str]) -> Refusal | None:
        """The first of the interlocks ``names`` that refuses a command to ``device``, or None."""
        compiled = self.by_type.get(device.type, {})
        t = self.config.types[device.type]
        index = self._offset[device.type]
        for name in names:
            c = compiled.get(name)
            if c is None:  # the parser checks the names: a missing one is never silently passed
                return Refusal(name, BAD_INVALID_STATE, f"interlock {name!r} is not defined for {device.type}")
            il = c.definition
            env: dict[str, np.ndarray] = {}
            for used in c.used:
                if used in il.inputs:
                    tag, i = il.inputs[used], self._inputs[il.inputs[used]]
                else:
                    tag, i = self.config.tag_name(device, t.points[index[used]]), device.first_tag_id + index[used]
                status = int(self.tagdb.status[i])
                if not st.is_good(status):
                    return Refusal(
                        name,
                        BAD_INVALID_STATE,
                        f"interlock {name}: its input {used} ({tag}) is {st.name(status)}: refused (fail safe)",
                    )
                env[used] = self.tagdb.value[i : i + 1]
            if not bool(c.evaluate(env)[0]):
                return Refusal(name, il.status, f"interlock {name}: {il.message}")
        return None
