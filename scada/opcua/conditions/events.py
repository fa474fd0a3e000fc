"""The conditions' events: one per engine transition or operator action, with the Part 9 fields.

* **Events.** Every engine transition or operator action (AlarmEvent) becomes one event of the
  condition's type with the Part 9 fields (:meth:`ConditionEvents._event`), built once and sent
  to many (:class:`ConditionEvent`).

* **State mapping** (engine State -> OPC UA): ActiveState = the process condition;
  AckedState = no acknowledgement owed (``scada.alarms.states.is_acked``); ShelvingState =
  TimedShelved / OneShotShelved in SHELVED; SuppressedState in SUPPRESSED (suppression by
  design); OutOfServiceState in OUT_OF_SERVICE; SuppressedOrShelved in any of the three;
  LatchedState for latching alarms (LATCHED); EnabledState always true (out of service is the
  engine's way to disable). **Retain** is true while the alarm is announced (UNACK_ACTIVE,
  ACK_ACTIVE, RTN_UNACK, LATCHED), and also while an operator holds it hidden (SHELVED,
  OUT_OF_SERVICE: an HMI must be able to list and release it) or while it is suppressed by
  design with its condition active. ConfirmedState is not used (the engine has no confirm step).
  Comment / ClientUserId are the last comment an operator gave (acknowledgement, note, shelve
  reason...), reset at each new occurrence. A one-shot shelve is a 24 h shelve of the engine
  with its ``one_shot`` flag: the engine ends it when the condition clears, and persists the
  flag with the alarm's state (a restart keeps it one-shot).

* **EventIds** are derived from the engine's event (:func:`condition_event_id`: the alarm,
  the device, the event's time and its per-instance number), which the engine persists with
  the alarm's state: after a restart, even after a SIGKILL, ConditionRefresh gives each
  retained condition the EventId of its last event, the one the HMI already holds (and can
  Acknowledge with). Server alarms and RefreshStart/End events keep a random per-run prefix.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from asyncua import ua

from scada.alarms.states import ANNOUNCED, State, is_acked
from scada.opcua.conditions.nodes import _SERVER, ConditionNodes
from scada.opcua.conditions.variants import (
    _BOOL,
    _BRANCH_NULL,
    _FALSE,
    _HIDDEN_STATES,
    _NULL,
    _SHELVING,
    _SHELVING_TRANSITION,
    _TEXTS,
    _TRUE,
    VT,
    _dt,
    _text,
    _v,
)
from scada.opcua.typed_ua import NodeId, StatusCode

if TYPE_CHECKING:
    from scada.alarms.engine import AlarmEvent

OI = ua.ObjectIds
A = ua.AttributeIds
RECENT_EVENT_IDS = 8  # EventIds of a condition an Acknowledge / AddComment may name


def condition_event_id(alarm: str, device: str, time_ns: int, seq: int) -> bytes:
    """The EventId of an alarm instance's event: the same whenever computed, unique per event
    (the per-instance number never repeats; the time keeps it apart across a lost journal)."""
    key = f"{alarm}\x1f{device}\x1f{int(time_ns)}\x1f{int(seq)}".encode()
    return hashlib.blake2b(key, digest_size=16).digest()


def retained(state: State | int, active: bool) -> bool:
    """Part 9 Retain: the condition is of interest to a client (see the module docstring)."""
    return (
        bool(ANNOUNCED[state])
        or state in (State.SHELVED, State.OUT_OF_SERVICE)
        or (state == State.SUPPRESSED and active)
    )


def retained_mask(state: np.ndarray, active: np.ndarray) -> np.ndarray:
    """:func:`retained` of every instance at once (a loop over a city's instances took seconds)."""
    state = np.asarray(state)
    return (
        ANNOUNCED[state]
        | (state == State.SHELVED)
        | (state == State.OUT_OF_SERVICE)
        | ((state == State.SUPPRESSED) & np.asarray(active, bool))
    )


class ConditionEvent:
    """One event notification: the field values by browse path, built once, sent to many.

    It is what asyncua's monitored item service needs of an event: ``to_event_fields`` for
    the select clauses and attribute access for the where clause evaluator.
    """

    __slots__ = ("fields", "ancestors")

    def __init__(self, fields: dict[str, ua.Variant], ancestors: frozenset) -> None:
        self.fields = fields
        self.ancestors = ancestors  # the event type and its supertypes (OfType)

    def __getattr__(self, name: str):
        try:
            return object.__getattribute__(self, "fields")[name].Value
        except KeyError:
            raise AttributeError(name) from None

    def to_event_fields(self, select_clauses) -> list[ua.Variant]:
        fields = self.fields
        return [fields.get(n, _NULL) for n in _field_names(select_clauses)]


_NAMES: dict[int, tuple[Any, list[str]]] = {}


def _field_names(select_clauses) -> list[str]:
    """Browse paths of select clauses as asyncua names event fields ("ActiveState/Id"), cached."""
    hit = _NAMES.get(id(select_clauses))
    if hit is not None and hit[0] is select_clauses:
        return hit[1]
    names = []
    for sattr in select_clauses:
        if sattr.BrowsePath:
            names.append("/".join(q.Name for q in sattr.BrowsePath))
        else:  # ConditionId: the NodeId attribute of the ConditionType
            names.append("NodeId" if sattr.AttributeId == A.NodeId else "")
    if len(_NAMES) > 4096:
        _NAMES.clear()
    _NAMES[id(select_clauses)] = (select_clauses, names)
    return names


@dataclass(slots=True)
class _Dyn:
    """What the OPC UA side remembers of one condition beside the engine's columns."""

    event_ids: deque = field(default_factory=lambda: deque(maxlen=RECENT_EVENT_IDS))
    comment: str = ""
    comment_user: str = ""
    comment_time: datetime | None = None
    acked: bool = True
    acked_time: datetime | None = None
    shelving: str = "Unshelved"
    shelving_transition: tuple[str, int, datetime] | None = None


class ConditionEvents(ConditionNodes):
    """Builds the conditions' events and keeps the retained ones (what ConditionRefresh returns)."""

    def _dyn_of(self, i: int) -> _Dyn:
        dyn = self._dyn.get(i)
        if dyn is None:
            dyn = self._dyn[i] = _Dyn()
        return dyn

    def _occurrence(self, e: AlarmEvent, since_ns: int, quality: int, one_shot: bool) -> ConditionEvent:
        """The condition's event for engine event ``e`` (``one_shot``: the instance's flag), retained
        or released."""
        i = e.instance
        dyn = self._dyn_of(i)
        t = _dt(e.time_ns)
        state = State(e.state)
        keep = retained(state, e.active)
        if keep and i not in self._retained:  # a new occurrence: its comments start afresh
            dyn.comment, dyn.comment_user, dyn.comment_time = "", "", None
        if e.user:  # Part 9 Comment: the last comment an operator gave (not the engine's own texts)
            dyn.comment = f"assigned to {e.comment}" if e.event == "ASSIGN" else e.comment
            dyn.comment_user, dyn.comment_time = e.user, t
        shelving = dyn.shelving
        if state == State.SHELVED:
            if e.event == "SHELVE":
                shelving = "OneShotShelved" if one_shot else "TimedShelved"
            elif shelving == "Unshelved":  # its SHELVE was lost with a dropped queue
                shelving = "OneShotShelved" if self.engine.one_shot[i] else "TimedShelved"
        else:
            shelving = "Unshelved"
        if shelving != dyn.shelving:
            name, nid = _SHELVING_TRANSITION.get((dyn.shelving, shelving), (shelving, 0))
            dyn.shelving_transition = (name, nid, t)
            dyn.shelving = shelving
        ev = self._event(
            i,
            e.message,
            e.severity,
            state,
            e.active,
            t,
            since_ns,
            quality,
            dyn,
            condition_event_id(e.alarm, e.device, e.time_ns, e.seq),
        )
        if keep:
            self._retained[i] = ev
        else:
            self._retained.pop(i, None)
        return ev

    def _system_occurrence(self, e: AlarmEvent) -> ConditionEvent:
        """The event of a server alarm (the history spool filling...): its source is the Server object.

        The engine keeps no instance for these, so they cannot be acknowledged or shelved:
        they are shown acknowledged, retained while active, and their methods answer
        BadNotSupported.
        """
        # One condition per alarm and source: each server task has its own server_task_failed.
        key = e.alarm if e.device == "server" else f"{e.alarm}/{e.device}"
        cid = self._system_condition(key)
        etype = self._system_type()
        t = _dt(e.time_ns)
        f = {
            "EventId": _v(self._event_id(), VT.ByteString),
            "EventType": _v(etype, VT.NodeId),
            "NodeId": _v(cid, VT.NodeId),
            "SourceNode": _v(_SERVER, VT.NodeId),
            "SourceName": _v(e.device, VT.String),
            "ConditionName": _v(e.alarm, VT.String),
            "BranchId": _BRANCH_NULL,
            "ConditionClassId": _v(NodeId(OI.SystemConditionClassType), VT.NodeId),
            "ConditionClassName": _text("System"),
            "Time": _v(t, VT.DateTime),
            "ReceiveTime": _v(datetime.now(UTC), VT.DateTime),
            "Message": _text(e.message),
            "Severity": _v(max(1, min(1000, int(e.severity))), VT.UInt16),
            "Retain": _BOOL[e.active],
            "EnabledState": _TEXTS["Enabled"],
            "EnabledState/Id": _TRUE,
            "ActiveState": _TEXTS["Active" if e.active else "Inactive"],
            "ActiveState/Id": _BOOL[e.active],
            "ActiveState/TransitionTime": _v(t, VT.DateTime),
            "AckedState": _TEXTS["Acknowledged"],
            "AckedState/Id": _TRUE,
            "SuppressedOrShelved": _FALSE,
            "ShelvingState/CurrentState": _SHELVING["Unshelved"][0],
            "ShelvingState/CurrentState/Id": _SHELVING["Unshelved"][1],
        }
        ev = ConditionEvent(f, self._type_ancestors(etype))
        if e.active:
            self._system_retained[key] = ev
        else:
            self._system_retained.pop(key, None)
        return ev

    def _names_of(self, i: int) -> tuple[str, str]:
        eng = self.engine
        return eng.defs[int(eng.inst_def[i])].name, eng.config.devices[int(eng.inst_dev[i])].name

    def _event_id(self) -> bytes:
        return self._prefix + struct.pack(">Q", next(self._seq))

    def _event(
        self,
        i: int,
        message: str,
        severity: int,
        state: State,
        active: bool,
        t: datetime,
        since_ns: int,
        quality: int,
        dyn: _Dyn,
        eid: bytes,
    ) -> ConditionEvent:
        """The condition's event with every Part 9 field this server keeps (see the docstring)."""
        eng = self.engine
        info = self._defs[int(eng.inst_def[i])]
        di = int(eng.inst_dev[i])
        device = eng.config.devices[di]
        acked = bool(is_acked(state))
        if acked != dyn.acked or dyn.acked_time is None:
            dyn.acked, dyn.acked_time = acked, t
        dyn.event_ids.append(eid)
        f = dict(info.static)
        f["EventId"] = _v(eid, VT.ByteString)
        f["NodeId"] = _v(self._cond_ids[i], VT.NodeId)  # ConditionId
        source = self._dev_nodes[di]
        assert source is not None  # a device with an alarm instance has its node (build)
        f["SourceNode"] = _v(source, VT.NodeId)
        f["SourceName"] = _v(device.name, VT.String)
        f["Time"] = _v(t, VT.DateTime)
        f["ReceiveTime"] = _v(datetime.now(UTC), VT.DateTime)
        f["Message"] = _text(message)
        sev = _v(max(1, min(1000, int(severity))), VT.UInt16)
        f["Severity"] = f["LastSeverity"] = sev
        f["Retain"] = _BOOL[retained(state, active)]
        f["Quality"] = _v(StatusCode(quality), VT.StatusCode)
        f["ActiveState"] = _TEXTS["Active" if active else "Inactive"]
        f["ActiveState/Id"] = _BOOL[active]
        f["ActiveState/EffectiveDisplayName"] = f["ActiveState"]
        if since_ns:
            f["ActiveState/TransitionTime"] = _v(_dt(since_ns), VT.DateTime)
        f["AckedState"] = _TEXTS["Acknowledged" if acked else "Unacknowledged"]
        f["AckedState/Id"] = _BOOL[acked]
        f["AckedState/TransitionTime"] = _v(dyn.acked_time, VT.DateTime)
        f["SuppressedState"] = _TEXTS["Suppressed" if state == State.SUPPRESSED else "Unsuppressed"]
        f["SuppressedState/Id"] = _BOOL[state == State.SUPPRESSED]
        f["OutOfServiceState"] = _TEXTS["Out of service" if state == State.OUT_OF_SERVICE else "In service"]
        f["OutOfServiceState/Id"] = _BOOL[state == State.OUT_OF_SERVICE]
        f["SuppressedOrShelved"] = _BOOL[state in _HIDDEN_STATES]
        cur_text, cur_id = _SHELVING[dyn.shelving]
        f["ShelvingState/CurrentState"] = cur_text
        f["ShelvingState/CurrentState/Id"] = cur_id
        if dyn.shelving_transition:
            name, nid, when = dyn.shelving_transition
            f["ShelvingState/LastTransition"] = _text(name)
            if nid:
                f["ShelvingState/LastTransition/Id"] = _v(NodeId(nid), VT.NodeId)
            f["ShelvingState/LastTransition/TransitionTime"] = _v(when, VT.DateTime)
        if state == State.SHELVED:
            until = int(eng.shelved_until[i])
            if until:
                left = max(0.0, (until - eng.clock()) / 1e6)
                f["ShelvingState/UnshelveTime"] = _v(left, VT.Double)
        if info.latching:
            f["LatchedState"] = _TEXTS["Latched" if state == State.LATCHED else "Unlatched"]
            f["LatchedState/Id"] = _BOOL[state == State.LATCHED]
        if info.limit_field:
            f[f"{info.limit_field}State"] = _text(info.limit_field) if active else _NULL
            f[f"{info.limit_field}State/Id"] = _BOOL[active]
        if info.point:
            f["InputNode"] = _v(NodeId(f"{source.Identifier!s}/{info.point}", self.ns), VT.NodeId)
        if dyn.comment_time is not None:
            f["Comment"] = _text(dyn.comment)
            f["Comment/SourceTimestamp"] = _v(dyn.comment_time, VT.DateTime)
            f["ClientUserId"] = _v(dyn.comment_user, VT.String)
        return ConditionEvent(f, info.ancestors)

    def _snapshot_all(self) -> None:
        """Rebuild the retained conditions from the engine's columns and its active server
        alarms (start, after a loss)."""
        eng = self.engine
        self._retained.clear()
        now = eng.clock()
        status = eng.tagdb.status
        for i in np.flatnonzero(retained_mask(eng.state, eng.cond)).tolist():
            state, active = State(int(eng.state[i])), bool(eng.cond[i])
            dyn = self._dyn_of(i)
            if state != State.SHELVED:
                dyn.shelving = "Unshelved"
            else:  # the engine's flag, persisted: a one-shot shelve stays one after a restart
                dyn.shelving = "OneShotShelved" if eng.one_shot[i] else "TimedShelved"
            d = eng.describe(i)
            sev = eng.defs[int(eng.inst_def[i])].severity
            # The instance's last event, as the engine numbered it (and persisted it): its EventId
            # and Time are the ones its clients received, before a restart as well.
            last = int(eng.last_event_ns[i])
            eid = condition_event_id(d["alarm"], d["device"], last, int(eng.event_seq[i]))
            self._retained[i] = self._event(
                i,
                d["message"],
                sev,
                state,
                active,
                _dt(last or now),
                int(eng.cond_since[i]),
                int(status[eng.inst_tag[i]]),
                dyn,
                eid,
            )
        # The server alarms active now (their events may have been lost with the queue, or
        # sent before this front started).
        self._system_retained.clear()
        for e in eng.active_system_events():
            self._system_occurrence(e)

    def _system_event(self, etype: int, message: str) -> ConditionEvent:
        now = datetime.now(UTC)
        f = {
            "EventId": _v(self._event_id(), VT.ByteString),
            "EventType": _v(NodeId(etype), VT.NodeId),
            "SourceNode": _v(_SERVER, VT.NodeId),
            "SourceName": _v("Server", VT.String),
            "Time": _v(now, VT.DateTime),
            "ReceiveTime": _v(now, VT.DateTime),
            "Message": _text(message),
            "Severity": _v(1, VT.UInt16),
        }
        return ConditionEvent(f, self._type_ancestors(NodeId(etype)))
