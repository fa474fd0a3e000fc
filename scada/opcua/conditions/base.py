"""What AlarmConditions holds: one constructor for the parts (nodes, events, methods, delivery)
that each add their behaviour on top (:class:`scada.opcua.conditions.AlarmConditions`)."""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asyncua import Server, ua

from scada.opcua.asyncua_private.nodes import address_space

if TYPE_CHECKING:
    from scada.alarms.remote import AlarmSource, EventItem
    from scada.opcua.conditions.events import ConditionEvent, _Dyn
    from scada.opcua.conditions.nodes import _DefInfo
    from scada.opcua.conditions.space import ConditionSpace

QUEUE_SIZE = 10_000


class ConditionsBase:
    """The state of the engine's conditions on one asyncua server (see AlarmConditions)."""

    def __init__(self, server: Server, ns: int, engine: AlarmSource, queue_size: int = QUEUE_SIZE) -> None:
        self.server = server
        self.aspace = address_space(server)
        self.ns = ns
        self.engine = engine  # an AlarmEngine in its process, an AlarmMirror in a front's
        self.queue_size = queue_size
        self.node_count = 0
        self.emitted = 0  # events sent (one per transition, whatever the number of clients)
        self.dropped = 0  # engine events lost to a full queue (then: resync + RefreshRequired)
        self.resyncs = 0
        self._queue: deque[EventItem] = deque()
        self._wake = asyncio.Event()
        self._resync = False
        self._attached = False
        self._prefix = os.urandom(8)  # EventIds: unique across restarts
        self._seq = itertools.count(1)
        self._cond_ids: Sequence[ua.NodeId] = ()
        self.space: ConditionSpace | None = None  # the condition nodes, made on access
        self._dev_nodes: list[ua.NodeId | None] = []
        self._notifiers: list[tuple[ua.NodeId, ...]] = []
        self._defs: list[_DefInfo] = []
        self._dyn: dict[int, _Dyn] = {}
        self._retained: dict[int, ConditionEvent] = {}
        self._system: dict[str, ua.NodeId] = {}  # the engine's server alarms: name -> condition node
        self._system_nodes: set[ua.NodeId] = set()
        self._system_retained: dict[str, ConditionEvent] = {}
        self._refreshing: set[int] = set()
        self._slow: set[int] = set()  # id() of subscriptions that stopped draining (backpressure)
        self._tasks: set[asyncio.Task] = set()  # ConditionRefresh deliveries under way
        self._where_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._session_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
