"""Sessions opened, subscribed and closed give back what they took (issue 13, "Churn").

A real HmiServer with alarm conditions on loopback, asyncua's client: sessions that monitor
tag values (the fast path) and the Server object's events (the conditions' delivery), closed
either way a client ends (DeleteSubscriptions then CloseSession, or CloseSession alone: a
session whose connection is lost while it has subscriptions is kept for the client to come
back, until its timeout, as Part 4 says). Afterwards every per-session object is back to its count before:
subscriptions, sessions, monitored items, the publisher's watchers and fast queues, and
asyncua's per-subscription loggers, which logging would otherwise keep forever.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.opcua.asyncua_private.events import event_items
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.asyncua_private.subscriptions import subscriptions
from scada.opcua.server import HmiServer
from scada.opcua.sessions import ITEM_SERVICE_LOGGER, forget_logger
from tests.integration.helpers import until
from tests.integration.test_opcua_alarms import City, healthy, running

pytestmark = pytest.mark.integration

SESSIONS = 8  # half of them delete their subscription first


class Counting:
    """A subscription handler that counts the data changes received."""

    def __init__(self) -> None:
        self.values = 0

    def datachange_notification(self, node, val, data) -> None:
        self.values += 1

    def event_notification(self, event) -> None:
        pass


def item_loggers() -> int:
    """asyncua's per-subscription loggers logging still holds."""
    return sum(1 for name in logging.Logger.manager.loggerDict if name.startswith(ITEM_SERVICE_LOGGER + "."))


def held(hmi: HmiServer) -> dict[str, int]:
    """What a session's subscriptions hold in the server, by kind."""
    p = hmi.publisher
    assert p is not None
    subs = subscriptions(hmi.server)
    return {
        "sessions": len(external_sessions(hmi.server)),
        "subscriptions": len(subs),
        "event items": sum(len(mids) for sub in subs.values() for mids in event_items(sub).values()),
        "datachange callbacks": sum(len(attr.datachange_callbacks) for attr in p.value_attrs),
        "fast items": sum(len(attr.datachange_callbacks.fast) for attr in p.value_attrs),
        "publisher handles": len(p._handle_tag) + len(p._fast_queue),
        "publisher queues": len(p._queues),
        "fast watched tags": int(p.fast_watched.sum()),
        "loggers": item_loggers(),
    }


async def one_session(c: City, names: list[str], end: int) -> None:
    client = Client(c.url, timeout=10)
    await client.connect()
    try:
        handler = Counting()
        sub = await client.create_subscription(50, handler)
        nodes = [client.get_node(ua.NodeId(n, c.ns)) for n in names]
        await sub.subscribe_data_change(nodes)
        await sub.subscribe_events(client.get_node(ua.ObjectIds.Server), ua.ObjectIds.AlarmConditionType)
        await until(lambda: handler.values >= len(nodes), what="every item's first value")
        assert held(c.hmi)["fast items"] >= len(nodes)
        if end == 0:
            await sub.delete()
    finally:
        await client.disconnect()


def forget_earlier_loggers() -> None:
    """Drop the per-subscription loggers left by earlier tests' plain asyncua servers: their
    names are subscription ids, which this server reuses and then forgets, so they would be
    counted before and not after."""
    for name in [n for n in logging.Logger.manager.loggerDict if n.startswith(ITEM_SERVICE_LOGGER + ".")]:
        forget_logger(name)


async def test_closed_sessions_leave_nothing_behind(tmp_path: Path) -> None:
    forget_earlier_loggers()
    c = City(tmp_path)
    healthy(c)
    async with running(c):
        names = [n for n in c.tagdb.names if n.startswith("Talant/lighting/LC-1/")][:8]
        await one_session(c, names, 0)  # asyncua's lazily made objects (module loggers, caches)
        await until(lambda: held(c.hmi)["subscriptions"] == 0, what="the first session's subscription gone")
        before = held(c.hmi)
        for k in range(SESSIONS):
            await one_session(c, names, k % 2)
        await until(lambda: held(c.hmi)["subscriptions"] == 0, what="every subscription deleted")
        await until(lambda: held(c.hmi)["sessions"] == 0, what="every session closed")
        assert held(c.hmi) == before
        assert c.hmi.sessions.loggers_dropped >= SESSIONS
        # The allocator is trimmed once the sessions are gone (glibc; a no-op elsewhere).
        if c.hmi.sessions._trim is not None:
            await until(lambda: c.hmi.sessions.trims >= 1, what="malloc_trim after the sessions closed")


def test_forget_logger_removes_a_logger_and_its_placeholder_entries() -> None:
    name = "scada.test_session_churn.parent.child"
    logger = logging.getLogger(name)
    holder = logging.Logger.manager.loggerDict["scada.test_session_churn.parent"]
    assert isinstance(holder, logging.PlaceHolder) and logger in holder.loggerMap
    assert forget_logger(name) is True
    assert name not in logging.Logger.manager.loggerDict
    assert logger not in holder.loggerMap
    assert forget_logger(name) is False  # already gone: nothing to do
    assert logging.getLogger(name) is not logger  # a later getLogger makes a new one, as usual
    forget_logger(name)
