"""What the clients' sessions leave behind once closed, given back.

Measured with sessions opened, subscribed and closed in a loop (``bench_front --only churn``,
and in-process with gc and tracemalloc snapshots around node-opcua's ``churn.js``): every
object of a closed session is freed (its subscriptions, monitored items, the publisher's
watchers and fast queues, the conditions' event items), but two things stayed:

* **a logger per subscription.** asyncua's ``MonitoredItemService`` calls
  ``logging.getLogger("asyncua.server.monitored_item_service.<SubscriptionId>")``; logging's
  manager keeps every logger it ever made, and subscription ids are never reused: ~1 KB for
  every subscription the server ever had. Each new subscription's service is given the
  module's logger instead and its own is removed from logging's table (:func:`forget_logger`).
* **the allocator's high-water mark.** The freed objects' memory stays with glibc's malloc
  (RSS +7 KB per session in a 300-session run, Python objects back to their level);
  ``malloc_trim(0)`` gives it back to the system. It walks the heap (15-40 ms for 1 GB,
  measured), so it runs in a worker thread (ctypes releases the GIL), once
  ``TRIM_AFTER_S`` after a session closed and at most every ``TRIM_EVERY_S``: a burst of
  closes costs one trim.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import structlog
from asyncua import Server

from scada.opcua.asyncua_private.sessions import (
    InternalSession,
    hook_session_closed,
    hook_subscription_created,
    swap_item_service_logger,
)
from scada.opcua.asyncua_private.subscriptions import InternalSubscription

log = structlog.get_logger("scada.opcua")

# asyncua's module logger: what its per-subscription loggers inherit their level and handlers from.
ITEM_SERVICE_LOGGER = "asyncua.server.monitored_item_service"
TRIM_AFTER_S = 2.0  # after a close: the session's subscriptions are deleted just after it
TRIM_EVERY_S = 10.0  # at most one trim per this many seconds while sessions keep closing


def forget_logger(name: str) -> bool:
    """Remove logger ``name`` from logging's table (and from its placeholder parent's children).

    Logging has no public way to drop a logger; its manager's ``loggerDict`` and the
    ``PlaceHolder.loggerMap`` of a parent that is not a logger are the only references it
    keeps. True when it was there. A later ``getLogger(name)`` makes a new one, as usual.
    """
    manager = logging.Logger.manager
    with logging._lock:  # type: ignore[attr-defined]  # getLogger's own lock: a worker thread may log
        logger = manager.loggerDict.get(name)
        if not isinstance(logger, logging.Logger):
            return False  # never made, or a placeholder (its children's): nothing to forget
        del manager.loggerDict[name]
        parent = name.rpartition(".")[0]
        while parent:
            holder = manager.loggerDict.get(parent)
            if isinstance(holder, logging.PlaceHolder):
                holder.loggerMap.pop(logger, None)
            elif holder is not None:
                break  # a real logger: it keeps no list of its children
            parent = parent.rpartition(".")[0]
    return True


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library: nothing to trim with)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class SessionCleanup:
    """Installed on an asyncua server: shares one logger between subscriptions, trims the
    allocator after sessions close (see the module docstring). ``close`` stops it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.shared = logging.getLogger(ITEM_SERVICE_LOGGER)
        self.loggers_dropped = 0  # per-subscription loggers removed from logging's table
        self.trims = 0  # malloc_trim calls done
        self._trim = _malloc_trim()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_trim = float("-inf")
        self._stopped = False  # the server stops: its sessions' closes schedule nothing more

    def install(self) -> None:
        """Hook the server's CreateSubscription and session close (idempotent per server)."""
        self._stopped = False
        hook_subscription_created(self.server, self._created)
        hook_session_closed(self.server, self._closed)

    def _created(self, sub: InternalSubscription) -> None:
        own = swap_item_service_logger(sub, self.shared)
        if own is not self.shared and forget_logger(own.name):
            self.loggers_dropped += 1

    def _closed(self, session: InternalSession) -> None:
        if self._trim is None or self._timer is not None or self._stopped:
            return
        loop = asyncio.get_running_loop()
        delay = max(TRIM_AFTER_S, self._last_trim + TRIM_EVERY_S - loop.time())
        self._timer = loop.call_later(delay, self._start_trim)

    def _start_trim(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run_trim(), name="opcua-malloc-trim")

    async def _run_trim(self) -> None:
        trim = self._trim
        if trim is None:
            return
        self._last_trim = asyncio.get_running_loop().time()
        try:
            await asyncio.to_thread(trim, 0)
        except OSError as exc:  # never the end of the server: memory is only given back later
            log.warning("opcua_malloc_trim_failed", error=repr(exc))
            return
        self.trims += 1

    def close(self) -> None:
        """Cancel a pending trim and schedule no more (the server stops)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
