"""OPC UA Alarms & Conditions (Part 9) over the alarm engine: conditions, events, methods, refresh.

Every alarm instance of the engine (an alarm definition on one device) is one condition. The
parts, each a layer of :class:`AlarmConditions`:

* :mod:`~scada.opcua.conditions.nodes`: the condition nodes under the devices, the notifier
  tree, the event types;
* :mod:`~scada.opcua.conditions.events`: one event per engine transition or operator action,
  the Part 9 fields and state mapping, EventIds, the retained conditions;
* :mod:`~scada.opcua.conditions.methods`: Acknowledge, AddComment, shelving, Reset,
  RemoveFromService / PlaceInService as engine actions, refusals as Bad status codes;
* :mod:`~scada.opcua.conditions.delivery`: the bounded queue and its sending task, routing to
  the subscriptions, backpressure, ConditionRefresh and the resynchronisation after a loss.

The engine is read through :class:`scada.alarms.remote.AlarmSource` only: the real
AlarmEngine in its own process, or :class:`scada.front.alarms.AlarmMirror` in an OPC UA front
process (whose actions are coroutines, requests to the core).

It relies on asyncua internals (NodeData, the monitored item service's tables, the session
object), all through :mod:`scada.opcua.asyncua_private` and its contract tests.
"""

from __future__ import annotations

import gc

from asyncua import ua

from scada.opcua.conditions.delivery import ConditionDelivery
from scada.opcua.conditions.events import ConditionEvent, condition_event_id, retained
from scada.opcua.conditions.nodes import _HAS_NOTIFIER, _SERVER, ALARMS_FOLDER, EVENT_TYPES, MAX_SHELVE_MS

__all__ = [
    "_HAS_NOTIFIER",
    "_SERVER",
    "ALARMS_FOLDER",
    "EVENT_TYPES",
    "MAX_SHELVE_MS",
    "AlarmConditions",
    "ConditionEvent",
    "condition_event_id",
    "retained",
]


class AlarmConditions(ConditionDelivery):
    """The engine's alarm instances as OPC UA conditions of an asyncua server.

    ``build()`` before the server starts (nodes, notifiers, method callbacks, engine
    subscription); ``run()`` sends the events until cancelled; ``close()`` detaches.
    """

    def build(self) -> None:
        """Condition nodes, notifier tree, method callbacks, session hook; subscribe to the engine.

        Like the tag tree, the nodes live as long as the server: built without the cyclic
        collector and frozen out of its sight afterwards.
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._build_nodes()
        finally:
            gc.freeze()
            if enabled:
                gc.enable()
        self._bind_methods()
        self._hook_sessions()
        self.engine.subscribers.append(self._on_alarm_events)
        self._attached = True
        self._snapshot_all()  # states restored from the journal are retained from the start

    # Diagnostics

    def stats(self) -> dict:
        """Counters for the diagnostics: conditions, retained, events sent, queued, dropped, resyncs."""
        return {
            "conditions": self.engine.n,
            "retained": len(self._retained) + len(self._system_retained),
            "emitted": self.emitted,
            "queued": len(self._queue),
            "dropped": self.dropped,
            "resyncs": self.resyncs,
        }

    def condition_id(self, alarm: str, device: str) -> ua.NodeId:
        """The ConditionId (condition node) of an alarm instance."""
        return self._cond_ids[self.engine.instance(alarm, device)]
