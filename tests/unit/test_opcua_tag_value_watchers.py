"""A tag's Value attribute keeps its callbacks' Watchers only once a callback is added (a city's
tags are mostly unwatched: no dict and no set each), and a Watchers made late is bound to the
publisher's mask exactly as one made at the start."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from asyncua import ua

from scada import status as st
from scada.opcua.publisher import Publisher, TagValue, Watchers
from scada.tagdb import ANALOG, TagDB

VTYPES = [ua.VariantType.Double] * 3


def setup() -> tuple[TagDB, list[TagValue], Publisher]:
    tagdb = TagDB(["a/p0", "a/p1", "a/p2"], [ANALOG] * 3)
    attrs = [TagValue() for _ in VTYPES]
    return tagdb, attrs, Publisher(tagdb, attrs, VTYPES)


def test_an_unwatched_tag_keeps_no_callbacks_dict():
    tagdb, attrs, pub = setup()
    Publisher(tagdb, attrs, VTYPES)  # a reload's publisher looks at every tag's callbacks again
    for attr in attrs:
        w = attr.datachange_callbacks
        assert not w and len(w) == 0 and 1 not in w and w.get(1) is None and list(w.items()) == []
        assert w.pop(1, "none") == "none"
        with pytest.raises(KeyError):
            w.pop(1)
        assert attr._watchers is None  # reading made nothing that stays
    assert not pub.watched.any()


def test_the_first_callback_makes_watchers_bound_to_the_publisher():
    tagdb, attrs, pub = setup()
    seen = []

    async def callback(handle, dv):
        seen.append((handle, dv.Value.Value))

    attrs[1].datachange_callbacks[7] = callback  # as AddressSpace.add_datachange_callback does
    w = attrs[1].datachange_callbacks
    assert isinstance(w, Watchers) and w is attrs[1]._watchers and dict(w) == {7: callback}
    assert (w.mask is pub.watched, w.tag, w.owner) == (True, 1, pub)
    assert pub.watched.tolist() == [False, True, False]
    batch = tagdb.update(np.array([0, 1]), np.array([1.0, 2.0]), st.GOOD, 5_000)
    asyncio.run(pub.apply(batch))
    assert seen == [(7, 2.0)]
    attrs[1].datachange_callbacks.pop(7)  # as AddressSpace.delete_datachange_callback does
    assert not pub.watched.any()
    assert attrs[0]._watchers is None and attrs[2]._watchers is None


def test_a_callback_added_before_the_publisher_is_found_by_it():
    tagdb = TagDB(["a/p0", "a/p1", "a/p2"], [ANALOG] * 3)
    attrs = [TagValue() for _ in VTYPES]

    async def callback(handle, dv):
        pass

    attrs[2].datachange_callbacks.setdefault(3, callback)
    assert (attrs[2]._watchers.mask, attrs[2]._watchers.owner) == (None, None)  # nothing to bind to yet
    pub = Publisher(tagdb, attrs, VTYPES)
    assert pub.watched.tolist() == [False, False, True]
    assert attrs[2].datachange_callbacks.owner is pub


def test_only_a_watchers_replaces_the_callbacks():
    attr = TagValue()
    with pytest.raises(TypeError, match="Watchers"):
        attr.datachange_callbacks = {}
    w = Watchers()
    attr.datachange_callbacks = w
    assert attr.datachange_callbacks is w
