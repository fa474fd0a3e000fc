"""common/gcfreeze.py: what is garbage when a process is built is collected, the rest frozen."""

from __future__ import annotations

import gc
import weakref

from common.gcfreeze import freeze_built, refreeze


class _Node:
    pass


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # only the cyclic collector frees these
    return weakref.ref(a)


def test_freeze_built_collects_the_garbage_then_freezes_the_rest() -> None:
    dead = _cycle()
    before = gc.get_freeze_count()
    freeze_built()
    assert dead() is None  # collected before the freeze: not kept for ever
    assert gc.get_freeze_count() > before


def test_refreeze_collects_a_frozen_cycle_that_became_garbage() -> None:
    gc.collect()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    gc.freeze()  # built before a reload: frozen
    del a, b
    gc.collect()
    assert ref() is not None  # frozen: the collector does not see the cycle
    refreeze()
    assert ref() is None
