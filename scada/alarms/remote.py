"""The alarm engine as a process of its own sees it: the surface its readers use, and the core's side
of the OPC UA front's link for alarms.

The OPC UA conditions (:mod:`scada.opcua.conditions`) read an engine through
:class:`AlarmSource` only: in the core process that is the real
:class:`~scada.alarms.engine.AlarmEngine`; in the front process it is
:class:`scada.front.alarms.AlarmMirror`, kept current from here:

* :func:`alarm_snapshot` — the engine's columns as plain picklable data (at the front's start
  and whenever it must start over);
* :func:`event_items` — what a subscriber needs of each event beyond the event itself (read
  from the engine's columns when the engine notifies: later they may have moved on);
* :func:`serve_alarm_action` — an operator action asked by the front, run on the engine; a
  refusal travels back as :class:`RemoteAlarmError` ``(kind, payload)`` and the mirror raises
  the engine's own exception class again (:func:`rebuild_error`), so the OPC UA method maps it
  to the same status code in both processes. The engine notifies an action's events while the
  handler runs: sent on the same ordered stream, they reach the mirror before the reply, so a
  front's next method call sees the state the action left.

No asyncua here: this is the core's side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from scada.alarms.config import AlarmDef
from scada.alarms.events import ANNOUNCED, AlarmEvent
from scada.alarms.states import IllegalTransition, State
from scada.config import Config

if TYPE_CHECKING:
    from scada.alarms.engine import AlarmEngine

# The engine's operator actions a front may ask for, by their engine method names.
ACTIONS = frozenset(("ack", "note", "shelve", "unshelve", "reset", "remove_from_service", "return_to_service"))
# The columns a mirror holds, as the engine names them.
COLUMNS = ("state", "cond", "one_shot", "shelved_until", "cond_since", "last_event_ns", "event_seq")

ActionResult = list[AlarmEvent] | Awaitable[list[AlarmEvent]]


class HasStatus(Protocol):
    """The tag table as the conditions read it: each tag's OPC UA status."""

    @property
    def status(self) -> np.ndarray:
        """uint32 status per tag id."""
        ...


class AlarmSource(Protocol):
    """What the OPC UA conditions use of an alarm engine (all of it, nothing more).

    The actions return the events (the engine) or a coroutine giving them (a mirror, whose
    actions are requests to the core); refusals raise IllegalTransition, KeyError or ValueError.
    """

    # Read-only to the conditions: properties, so that the engine's own types qualify.
    @property
    def config(self) -> Config: ...
    @property
    def tagdb(self) -> HasStatus: ...
    @property
    def clock(self) -> Callable[[], int]: ...

    defs: tuple[AlarmDef, ...]
    n: int
    # The instance tables (static) and the columns (per instance) the conditions read.
    inst_def: np.ndarray
    inst_dev: np.ndarray
    inst_tag: np.ndarray
    state: np.ndarray
    cond: np.ndarray
    one_shot: np.ndarray
    shelved_until: np.ndarray
    cond_since: np.ndarray
    last_event_ns: np.ndarray
    event_seq: np.ndarray
    subscribers: list[Callable[[Sequence[AlarmEvent]], None]]

    def instance(self, alarm: str, device: str) -> int: ...
    def describe(self, i: int) -> dict[str, Any]: ...
    def active_system_events(self) -> list[AlarmEvent]: ...
    def ack(self, alarm: str, device: str, user: str, comment: str = "") -> ActionResult: ...
    def note(self, alarm: str, device: str, user: str, text: str) -> ActionResult: ...
    def shelve(
        self, alarm: str, device: str, user: str, reason: str, duration_s: float, one_shot: bool = False
    ) -> ActionResult: ...
    def unshelve(self, alarm: str, device: str, user: str, comment: str = "") -> ActionResult: ...
    def reset(self, alarm: str, device: str, user: str, comment: str = "") -> ActionResult: ...
    def remove_from_service(self, alarm: str, device: str, user: str, comment: str) -> ActionResult: ...
    def return_to_service(self, alarm: str, device: str, user: str, comment: str = "") -> ActionResult: ...


class EventItem(NamedTuple):
    """One engine event with what its subscriber reads of the engine's columns when notified."""

    event: AlarmEvent
    since_ns: int  # cond_since: when the condition last changed (ActiveState's transition time)
    quality: int  # the watched tag's status (Part 9 Quality)
    one_shot: bool  # the instance's one-shot shelve flag
    shelved_until: int  # the instance's shelve expiry (0: none)


def event_items(engine: AlarmSource, events: Sequence[AlarmEvent]) -> list[EventItem]:
    """``events`` (one notification of ``engine``) as items; a server alarm (no instance) has zeros."""
    status = engine.tagdb.status
    out = []
    for e in events:
        i = e.instance
        if i < 0:  # a server alarm (AlarmEngine.system_alarm): no instance, no columns
            out.append(EventItem(e, 0, 0, False, 0))
            continue
        out.append(
            EventItem(
                e,
                int(engine.cond_since[i]),
                int(status[engine.inst_tag[i]]),
                bool(engine.one_shot[i]),
                int(engine.shelved_until[i]),
            )
        )
    return out


def alarm_snapshot(engine: AlarmSource) -> dict[str, Any]:
    """The engine's state as a mirror needs it: copies of its columns (numpy arrays), the watched
    tags' statuses, and the messages of the instances a client may be shown (the retained ones:
    announced or held hidden; the others get theirs with their next event)."""
    snap: dict[str, Any] = {name: np.array(getattr(engine, name), copy=True) for name in COLUMNS}
    snap["n"] = int(engine.n)
    snap["quality"] = np.asarray(engine.tagdb.status[engine.inst_tag], np.uint32).copy()
    state = snap["state"]
    shown = ANNOUNCED[state] | np.isin(state, (State.SHELVED, State.OUT_OF_SERVICE, State.SUPPRESSED))
    idx = np.flatnonzero(shown)
    snap["message_ids"] = idx.astype(np.int64)
    snap["messages"] = [str(engine.describe(int(i))["message"]) for i in idx.tolist()]
    snap["system"] = list(engine.active_system_events())  # server alarms: no instance, no column
    return snap


class RemoteAlarmError(Exception):
    """An operator action refused in the core, as it crosses the channel: ``kind`` is "illegal"
    (payload: state, event, active, latching), "key" or "value" (payload: the message), or
    "error" (payload: the repr of anything else)."""

    def __init__(self, kind: str, payload: Any) -> None:
        super().__init__(kind, payload)
        self.kind = kind
        self.payload = payload


def _as_remote(exc: Exception) -> RemoteAlarmError:
    # IllegalTransition first: it is a ValueError.
    if isinstance(exc, IllegalTransition):
        return RemoteAlarmError("illegal", (int(exc.state), int(exc.event), exc.active, exc.latching))
    if isinstance(exc, KeyError):
        return RemoteAlarmError("key", exc.args[0] if exc.args else "")
    if isinstance(exc, ValueError):
        return RemoteAlarmError("value", str(exc))
    return RemoteAlarmError("error", repr(exc))


def rebuild_error(kind: str, payload: Any) -> Exception:
    """The exception a refusal of kind ``kind`` was in the core (an unknown kind: RemoteAlarmError)."""
    if kind == "illegal":
        return IllegalTransition(*payload)
    if kind == "key":
        return KeyError(payload)
    if kind == "value":
        return ValueError(payload)
    return RemoteAlarmError(kind, payload)


def serve_alarm_action(engine: AlarmEngine, name: str, *args: Any) -> list[AlarmEvent]:
    """Run the engine's operator action ``name`` (one of :data:`ACTIONS`) with ``args``; its events.

    The channel's synchronous handler of the "alarm_action" request: a refusal is raised as
    :class:`RemoteAlarmError`; an unknown action is a "value" refusal and nothing is called.
    """
    if name not in ACTIONS:
        raise RemoteAlarmError("value", f"unknown alarm action {name!r}; allowed: {', '.join(sorted(ACTIONS))}")
    try:
        return list(getattr(engine, name)(*args))
    except Exception as exc:  # noqa: BLE001 - every refusal crosses the channel in one form
        raise _as_remote(exc) from None
