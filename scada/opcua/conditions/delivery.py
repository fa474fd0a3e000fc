"""Delivery of the conditions' events to asyncua's subscriptions: queue, sending task, backpressure,
where clauses, ConditionRefresh.

* **Routing.** An event goes to the event monitored items of the Server object, the City
  folder, the device's commune and class folders and the device object (the notifier tree of
  :mod:`scada.opcua.conditions.nodes`): a client watching the Server gets every alarm, one
  watching a device gets its alarms. asyncua routes an event to one notifier only and matches
  ``OfType`` by exact type, so delivery is done here (:meth:`ConditionDelivery._deliver`),
  with ``OfType`` honouring subtypes. A user who does not see a commune
  (``see_other_communes: false``) gets none of its devices' events, ConditionRefresh included.

* **Queue.** The engine calls its subscribers synchronously from its own task; sending an
  event in asyncua is a coroutine. The subscriber only appends to a bounded queue
  (:meth:`ConditionDelivery.enqueue`, fed with :func:`scada.alarms.remote.event_items`); the
  task :meth:`ConditionDelivery.run` (started by ``HmiServer.run``) sends. On overflow the queue
  is dropped and counted, the retained conditions are rebuilt from the engine's columns, and a
  RefreshRequiredEvent tells clients to call ConditionRefresh (Part 9's resynchronisation).
  Sending yields to the loop and waits while a subscription has MAX_PENDING events not yet
  published (backpressure, see MAX_PENDING), so that an alarm storm neither stalls the server
  nor makes a client drop its link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from asyncua import ua

from scada.alarms.remote import EventItem, event_items
from scada.opcua.asyncua_private.events import SubtypeWhere, pending_events
from scada.opcua.asyncua_private.events import event_items as subscription_event_items
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.asyncua_private.subscriptions import monitored_item, subscriptions
from scada.opcua.authorise import audit_value, authorisation
from scada.opcua.conditions.events import ConditionEvent
from scada.opcua.conditions.methods import _CALLER, ConditionMethods
from scada.opcua.conditions.nodes import _SERVER
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import StatusCode
from scada.opcua.visibility import Roots, hides, visible_roots
from scada.security.context import current
from scada.security.identity import Permission

if TYPE_CHECKING:
    from scada.alarms.engine import AlarmEvent

log = structlog.get_logger("scada.opcua")

OI = ua.ObjectIds
SC = ua.StatusCodes
YIELD_EVERY = 50  # events sent between two looks at the event loop and the clients' backlogs
# Backpressure: asyncua encodes all of a subscription's pending events into one Publish
# response, synchronously: 0.3 ms per event with the 85 fields an AlarmConditionType
# subscription selects, up to 1 ms on a busy machine (measured). 1,430 events at once stalled
# the server for 1.3-3 s, and asyncua's client drops a link whose 1 s watchdog read is not
# answered. So no more than MAX_PENDING events wait for a subscription's next publish (a
# stall of 0.06-0.2 s; at most MAX_PENDING events per publishing interval to that client: 500
# failed once in two runs, the client decoding them for more than its 1 s watchdog);
# sending waits for it, except for a subscription stuck longer than SLOW_AFTER_S (a client
# that stopped publishing): that one no longer holds the others, and asyncua's bounded
# per-item queue drops its oldest.
MAX_PENDING = 200
SLOW_AFTER_S = 5.0


class ConditionDelivery(ConditionMethods):
    """The engine's events, queued, sent to the subscriptions that watch them; ConditionRefresh."""

    # From the engine (synchronous, in the engine's task)

    def _on_alarm_events(self, events: Sequence[AlarmEvent]) -> None:
        """The engine's subscriber in this process (a bound method: a reload finds it by ``__self__``)."""
        self.enqueue(event_items(self.engine, events))

    def enqueue(self, items: Sequence[EventItem]) -> None:
        """Queue events for the sending task; on overflow, drop them all and resynchronise."""
        if self._resync:
            self.dropped += len(items)
            return
        if len(self._queue) + len(items) > self.queue_size:
            self.dropped += len(self._queue) + len(items)
            self._queue.clear()
            self._resync = True
            self._wake.set()
            return
        self._queue.extend(items)
        self._wake.set()

    def reattach(self) -> None:
        """Listen to the engine again after ``close`` (a supervised restart of ``run``).

        Events of the time between were not seen: resynchronise, and clients are told to
        call ConditionRefresh.
        """
        if not self._attached:
            self.engine.subscribers.append(self._on_alarm_events)
            self._attached = True
        self._resync = True
        self._wake.set()

    def close(self) -> None:
        """Stop listening to the engine (the nodes stay with the server)."""
        if self._attached:
            try:
                self.engine.subscribers.remove(self._on_alarm_events)
            except ValueError:
                pass
            self._attached = False
        for task in list(self._tasks):
            task.cancel()

    # The sending task

    async def run(self) -> None:
        """Send the queued events to the subscribed clients, until cancelled."""
        sent = 0
        try:
            while True:
                if not self._queue and not self._resync:
                    self._wake.clear()
                    await self._wake.wait()
                if self._resync:
                    await self._resynchronise()
                    continue
                sent += 1
                if sent % YIELD_EVERY == 0:
                    # A storm must not hold the loop (clients' requests, the publisher, the engine).
                    await asyncio.sleep(0)
                    await self._backpressure(list(subscriptions(self.server).values()))
                    if not self._queue:
                        continue
                e, since, quality, one_shot, _ = self._queue.popleft()
                try:
                    if e.instance < 0:
                        await self._emit_system(e)
                    else:
                        await self._emit(e, since, quality, one_shot)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad event must not stop the alarms
                    log.error(
                        "opcua_alarm_event_failed", alarm=e.alarm, device=e.device, alarm_event=e.event, error=repr(exc)
                    )
        finally:
            self.close()

    async def _resynchronise(self) -> None:
        self._resync = False
        self._queue.clear()
        self.resyncs += 1
        self._snapshot_all()
        log.warning(
            "opcua_alarm_events_dropped", dropped=self.dropped, resyncs=self.resyncs, retained=len(self._retained)
        )
        ev = self._system_event(OI.RefreshRequiredEventType, "Alarm events were lost: call ConditionRefresh")
        for sub in list(subscriptions(self.server).values()):
            await self._deliver_bracket(sub, ev, None)

    async def _emit(self, e: AlarmEvent, since_ns: int, quality: int, one_shot: bool) -> None:
        ev = self._occurrence(e, since_ns, quality, one_shot)
        self.emitted += 1
        await self._deliver(ev, self._notifiers[int(self.engine.inst_dev[e.instance])])

    async def _emit_system(self, e: AlarmEvent) -> None:
        ev = self._system_occurrence(e)
        self.emitted += 1
        await self._deliver(ev, (_SERVER,))

    # Delivery to asyncua's subscriptions

    async def _backpressure(self, subs) -> None:
        """Wait while a subscription has MAX_PENDING events waiting for its publish (see above)."""
        waited = 0.0
        while True:
            busy = [s for s in subs if pending_events(s) >= MAX_PENDING and id(s) not in self._slow]
            for s in subs:  # a slow one that caught up is waited for again
                if id(s) in self._slow and pending_events(s) < MAX_PENDING:
                    self._slow.discard(id(s))
            if not busy:
                return
            if waited >= SLOW_AFTER_S:
                for s in busy:
                    self._slow.add(id(s))
                    log.warning(
                        "opcua_alarm_subscription_slow", subscription=s.data.SubscriptionId, pending=pending_events(s)
                    )
                return
            await asyncio.sleep(0.02)
            waited += 0.02

    def _where(self, evaluator) -> SubtypeWhere | None:
        if evaluator is None:
            return None
        w = self._where_cache.get(evaluator)
        if w is None:
            w = SubtypeWhere.of(evaluator, self.aspace)
            self._where_cache[evaluator] = w
        return w

    async def _send(self, sub, mid: int, ev: ConditionEvent, filtered: bool) -> None:
        md = monitored_item(sub, mid)
        if md is None or md.filter is None:
            return
        if filtered:
            where = self._where(md.where_clause_evaluator)
            if where is not None and not where.eval(ev):
                return
        fields = ua.EventFieldList(
            ClientHandle=md.client_handle, EventFields=ev.to_event_fields(md.filter.SelectClauses)
        )
        await sub.enqueue_event(mid, fields, md.queue_size)

    def _not_shown(self, scope: ua.NodeId) -> Callable[[object], bool] | None:
        """Whether a subscription's user does not see the communes of ``scope`` (the event's
        device, scada/opcua/visibility.py); None when every subscription sees it (no security
        layer, a server event, or no session limited to other communes)."""
        if authorisation(self.server) is None or scope.NamespaceIndex == 0:
            return None
        roots: dict[ua.NodeId, Roots | None] = {}
        for session in external_sessions(self.server):
            ident = identity_of(session)
            # A session without our identity (not logged in yet) is shown nothing of a commune.
            roots[session.session_id] = visible_roots(ident) if ident is not None else frozenset()
        if all(r is None for r in roots.values()):
            return None  # nobody is limited: one pass over the sessions per event, nothing per item

        def hidden(sub) -> bool:
            r = roots.get(sub.session_id, frozenset())  # fails closed: an unknown owner sees no commune
            return r is not None and hides(scope, r)

        return hidden

    async def _deliver(
        self, ev: ConditionEvent, notifiers: tuple[ua.NodeId, ...], subs=None, only_mid: int | None = None
    ) -> None:
        """To the event monitored items on any of ``notifiers``, where clauses applied; not to the
        subscriptions of users who do not see the event's commune."""
        not_shown = self._not_shown(notifiers[-1])
        for sub in list(subscriptions(self.server).values()) if subs is None else subs:
            if not_shown is not None and not_shown(sub):
                continue
            watched = subscription_event_items(sub)
            for node in notifiers:
                for mid in list(watched.get(node, ())):
                    if only_mid is None or mid == only_mid:
                        await self._send(sub, mid, ev, True)

    async def _deliver_bracket(self, sub, ev: ConditionEvent, only_mid: int | None) -> None:
        """Refresh start/end/required: to every event item of ``sub``, bypassing filters (Part 9 4.5)."""
        for mids in list(subscription_event_items(sub).values()):
            for mid in list(mids):
                if only_mid is None or mid == only_mid:
                    await self._send(sub, mid, ev, False)

    # ConditionRefresh (a method, sent as deliveries)

    async def _m_refresh(self, parent: ua.NodeId, *args):
        try:
            return await self._refresh(args)
        except Exception as exc:  # noqa: BLE001
            log.error("opcua_condition_refresh_failed", error=repr(exc))
            return StatusCode(SC.BadInternalError)

    async def _refresh(self, args):
        """ConditionRefresh(SubscriptionId) / ConditionRefresh2(SubscriptionId, MonitoredItemId)."""
        ctx = current()
        authz = authorisation(self.server)
        if authz is not None and ctx is not None and Permission.EVENTS not in ctx.identity.permissions:
            # (the service gate checks it too: a condition method must not rely on that alone)
            authz.refuse(
                "call", "ConditionRefresh", {"arguments": [audit_value(a) for a in args]}, SC.BadUserAccessDenied
            )
            return StatusCode(SC.BadUserAccessDenied)
        if not args:
            return StatusCode(SC.BadArgumentsMissing)
        subs = subscriptions(self.server)
        try:
            sub_id = int(args[0].Value)
        except (TypeError, ValueError):
            return StatusCode(SC.BadTypeMismatch)
        sub = subs.get(sub_id)
        session = _CALLER.get()
        if sub is None or (session is not None and sub.session_id != session.session_id):
            return StatusCode(SC.BadSubscriptionIdInvalid)
        only_mid = None
        watched = subscription_event_items(sub)
        if len(args) > 1:
            only_mid = int(args[1].Value)
            if not any(only_mid in mids for mids in watched.values()):
                return StatusCode(SC.BadMonitoredItemIdInvalid)
        elif not any(watched.values()):
            return StatusCode(SC.BadNothingToDo)
        if sub_id in self._refreshing:
            return StatusCode(SC.BadRefreshInProgress)
        self._refreshing.add(sub_id)
        # The retained conditions as they are now; each bracket is one event (one EventId)
        # copied to every notifier item of the subscription (Part 9 5.5.7).
        inst_dev = self.engine.inst_dev
        items = [(ev, self._notifiers[int(inst_dev[i])]) for i, ev in self._retained.items()]
        items += [(ev, (_SERVER,)) for ev in self._system_retained.values()]
        try:
            await self._deliver_bracket(
                sub, self._system_event(OI.RefreshStartEventType, "ConditionRefresh start"), only_mid
            )
        except BaseException:
            self._refreshing.discard(sub_id)
            raise
        # The rest is sent after the call returns: the client's next Publish requests queue up
        # behind this Call on its connection, so waiting here for them to drain (backpressure)
        # would wait for nothing.
        task = asyncio.get_running_loop().create_task(
            self._refresh_rest(sub, sub_id, only_mid, items), name=f"opcua-condition-refresh-{sub_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("opcua_condition_refresh", subscription=sub_id, retained=len(items), user=self._user())
        return []

    async def _refresh_rest(self, sub, sub_id: int, only_mid: int | None, items) -> None:
        try:
            for n, (ev, notifiers) in enumerate(items, 1):
                await self._deliver(ev, notifiers, subs=(sub,), only_mid=only_mid)
                if n % YIELD_EVERY == 0:
                    await self._backpressure([sub])
            await self._deliver_bracket(
                sub, self._system_event(OI.RefreshEndEventType, "ConditionRefresh end"), only_mid
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.error("opcua_condition_refresh_failed", subscription=sub_id, error=repr(exc))
        finally:
            self._refreshing.discard(sub_id)
