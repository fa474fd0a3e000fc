"""The alarm engine as an OPC UA front process sees it: :class:`AlarmMirror`.

The OPC UA conditions (:mod:`scada.opcua.conditions`) read an engine through
:class:`scada.alarms.remote.AlarmSource`. In a front process that is this mirror: the static
instance tables are built here from the configuration (the same
:class:`~scada.alarms.instances.AlarmInstances` the core's engine has), the columns are a copy
kept current by the core (a full :meth:`AlarmMirror.load` of
:func:`scada.alarms.remote.alarm_snapshot`, then :meth:`AlarmMirror.receive` of each engine
notification as :func:`scada.alarms.remote.event_items`), and the operator actions are
requests to the core (``request("alarm_action", name, *args)``, served there by
:func:`scada.alarms.remote.serve_alarm_action`) whose refusals are raised here again as the
engine's exception classes.

What the mirror cannot know exactly: an instance's message is the one of its last event (the
engine's is formatted with the current value), and the watched tags' statuses are the ones
the events and the snapshot carried (the conditions read them only for an event's Quality).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from scada import status as st
from scada.alarms.events import AlarmEvent
from scada.alarms.instances import AlarmInstances
from scada.alarms.remote import COLUMNS, EventItem, RemoteAlarmError, rebuild_error
from scada.alarms.states import State
from scada.config import Config

Request = Callable[..., Awaitable[Any]]

# The mirror's columns and their dtypes, as the engine has them.
_DTYPES = {
    "state": np.uint8,
    "cond": np.bool_,
    "one_shot": np.bool_,
    "shelved_until": np.int64,
    "cond_since": np.int64,
    "last_event_ns": np.int64,
    "event_seq": np.int64,
}
assert set(_DTYPES) == set(COLUMNS), "a column of the snapshot without its dtype here"


class TagStatuses:
    """The watched tags' statuses as the core last sent them (what ``engine.tagdb.status`` is to
    the conditions: the Quality of an instance's event)."""

    def __init__(self, n_tags: int) -> None:
        self.status = np.full(n_tags, st.BAD_NO_COMMUNICATION, np.uint32)


class AlarmMirror:
    """The engine's surface for the OPC UA conditions, in a process without the engine.

    ``request``: the front's ``FrontChannel.request`` (``await request(op, *args)``); for the
    "alarm_action" op it must raise :class:`~scada.alarms.remote.RemoteAlarmError` with the
    reply's ``(kind, payload)`` when the core refused.
    """

    def __init__(self, config: Config, n_tags: int, request: Request, clock: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.instances = inst = AlarmInstances(config, n_tags)
        self.defs, self.n = inst.defs, inst.n
        self.inst_def, self.inst_dev, self.inst_tag = inst.inst_def, inst.inst_dev, inst.inst_tag
        self.state = np.zeros(inst.n, np.uint8)
        self.cond = np.zeros(inst.n, bool)
        self.one_shot = np.zeros(inst.n, bool)
        self.shelved_until = np.zeros(inst.n, np.int64)
        self.cond_since = np.zeros(inst.n, np.int64)
        self.last_event_ns = np.zeros(inst.n, np.int64)
        self.event_seq = np.zeros(inst.n, np.int64)
        self.tagdb = TagStatuses(n_tags)
        self.subscribers: list[Callable[[Sequence[AlarmEvent]], None]] = []
        self.clock = clock
        self._request = request
        self._messages: dict[int, str] = {}
        self._system: dict[tuple[str, str], AlarmEvent] = {}  # (source, name) -> the event raising it

    def instance(self, alarm: str, device: str) -> int:
        """The instance of ``alarm`` on ``device``; KeyError with a readable message if none."""
        return self.instances.instance(alarm, device)

    # Kept current by the core

    def load(self, snapshot: dict[str, Any]) -> None:
        """Take the engine's whole state (:func:`scada.alarms.remote.alarm_snapshot`).

        A snapshot of another configuration (another instance count) is refused with ValueError
        and changes nothing. Subscribers are not called: the conditions built on this mirror
        resynchronise when told (``AlarmConditions.reattach``).
        """
        n = int(snapshot.get("n", -1))
        if n != self.n:
            raise ValueError(f"alarm snapshot of {n} instances, this front's configuration has {self.n}")
        missing = [key for key in (*COLUMNS, "quality", "message_ids", "messages") if key not in snapshot]
        if missing:
            raise ValueError(f"alarm snapshot without {', '.join(missing)}")
        columns: dict[str, np.ndarray] = {name: np.asarray(snapshot[name], _DTYPES[name]) for name in COLUMNS}
        quality = np.asarray(snapshot["quality"], np.uint32)
        ids = np.asarray(snapshot["message_ids"], np.int64)
        messages = list(snapshot["messages"])
        bad = [name for name, col in columns.items() if col.shape != (n,)]
        if (
            bad
            or quality.shape != (n,)
            or len(ids) != len(messages)
            or (len(ids) and not 0 <= ids.min() <= ids.max() < n)
        ):
            raise ValueError(f"alarm snapshot with malformed columns {bad or ['quality/messages']}")
        for name, col in columns.items():
            getattr(self, name)[:] = col
        self.tagdb.status[self.inst_tag] = quality
        self._messages = dict(zip(ids.tolist(), messages))
        self._system = {(e.device, e.alarm): e for e in snapshot.get("system", ())}

    def receive(self, items: Sequence[EventItem]) -> None:
        """One engine notification: the columns follow its events, then the subscribers get them.

        An item of an instance this configuration does not have is refused with ValueError
        before anything changes.
        """
        wrong = [item.event.instance for item in items if item.event.instance >= self.n]
        if wrong:
            raise ValueError(f"alarm events of instances {wrong[:5]} beyond this front's {self.n}")
        for item in items:
            e = item.event
            i = e.instance
            if i < 0:  # a server alarm: no instance, no columns
                if e.active:
                    self._system[(e.device, e.alarm)] = e
                else:
                    self._system.pop((e.device, e.alarm), None)
                continue
            self.state[i] = int(e.state)
            self.cond[i] = e.active
            self.cond_since[i] = item.since_ns
            self.last_event_ns[i] = e.time_ns
            self.event_seq[i] = e.seq
            self.one_shot[i] = item.one_shot
            self.shelved_until[i] = item.shelved_until
            self.tagdb.status[self.inst_tag[i]] = item.quality
            self._messages[i] = e.message
        events = [item.event for item in items]
        for notify in list(self.subscribers):
            notify(events)

    # Queries

    def active_system_events(self) -> list[AlarmEvent]:
        """The events of the server alarms active now (from the snapshot and the events since)."""
        return list(self._system.values())

    def describe(self, i: int) -> dict[str, Any]:
        """Instance ``i`` as far as the mirror knows it: its alarm, device, commune, state, whether
        active, since when, and its message (of its last event)."""
        a, d = self.instances.definition(i), self.instances.device(i)
        out: dict[str, Any] = dict(alarm=a.name, device=d.name, commune=d.commune, message=self._messages.get(i, ""))
        out.update(state=State(int(self.state[i])).name, active=bool(self.cond[i]), since_ns=int(self.cond_since[i]))
        return out

    # Operator actions: requests to the core

    async def _act(self, name: str, *args: Any) -> list[AlarmEvent]:
        try:
            return await self._request("alarm_action", name, *args)
        except RemoteAlarmError as exc:
            raise rebuild_error(exc.kind, exc.payload) from None

    async def ack(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Acknowledge (AlarmEngine.ack, in the core)."""
        return await self._act("ack", alarm, device, user, comment)

    async def note(self, alarm: str, device: str, user: str, text: str) -> list[AlarmEvent]:
        """Add a note (AlarmEngine.note, in the core)."""
        return await self._act("note", alarm, device, user, text)

    async def shelve(
        self, alarm: str, device: str, user: str, reason: str, duration_s: float, one_shot: bool = False
    ) -> list[AlarmEvent]:
        """Shelve (AlarmEngine.shelve, in the core)."""
        return await self._act("shelve", alarm, device, user, reason, duration_s, one_shot)

    async def unshelve(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Unshelve (AlarmEngine.unshelve, in the core)."""
        return await self._act("unshelve", alarm, device, user, comment)

    async def reset(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Reset a latched alarm (AlarmEngine.reset, in the core)."""
        return await self._act("reset", alarm, device, user, comment)

    async def remove_from_service(self, alarm: str, device: str, user: str, comment: str) -> list[AlarmEvent]:
        """Remove from service (AlarmEngine.remove_from_service, in the core)."""
        return await self._act("remove_from_service", alarm, device, user, comment)

    async def return_to_service(self, alarm: str, device: str, user: str, comment: str = "") -> list[AlarmEvent]:
        """Return to service (AlarmEngine.return_to_service, in the core)."""
        return await self._act("return_to_service", alarm, device, user, comment)
