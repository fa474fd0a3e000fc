"""Refusals audited at a bounded rate: a flood of refused requests must fill neither the trail nor the
queues in front of it (where the genuine records would then be the ones lost).

A :class:`RefusalAudit` sits in front of an :class:`~scada.security.audit.AuditSink`. Each
refusal is keyed by its client (the session, else the client's address without its port), its
action, its target (the service, the method, the subscription...) and its result (the status
code). In each window of ``window_s`` seconds of a client, the first ``per_key`` refusals of a
key are recorded as they come, and at most ``per_client`` of all its keys together; the others
are counted, and when the window ends one summary record per key says how many were not recorded
(``{"not_audited": n, "window_s": ..., "first_ns": ..., "last_ns": ...}``, with the action,
target, result and who of the last one). Nothing is lost silently: a refusal is recorded or
counted in a summary.

Allowed acts (result ``Good``) are never aggregated: they go straight to the sink. So are
logins and every action not in :data:`AGGREGATED` (their own throttles bound them).

Bounded memory: the keys a client may hold in a window are bounded (beyond, its refusals are
counted under the target ``"*"``), and so are the clients (beyond, new clients share the client
``"*"``). The summaries are written when the window ends (a timer on the running loop), or at
the next refusal after it when there is no loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Callable

import structlog

from scada.security.audit import AuditRecord, AuditSink, canonical

log = structlog.get_logger("scada.security")

# Actions whose refusals are aggregated: the service gate ("denied", "register_server"), method
# calls and alarm actions, subscription services, limits, history reads, writes.
AGGREGATED = frozenset(
    {
        "denied",
        "register_server",
        "call",
        "alarm_action",
        "subscription",
        "limit",
        "history_read",
        "write",
        "certificate",  # a client certificate refused (a client retrying in a loop)
        "secure_channel",  # a request on a channel whose policy and mode are not offered
    }
)
PER_KEY = 20  # refusals recorded per (client, action, target, result) and window
PER_CLIENT = 100  # refusals recorded per client and window, all keys together
WINDOW_S = 60.0
MAX_KEYS = 256  # keys counted per client and window; beyond, under the target "*"
MAX_CLIENTS = 4096  # clients with an open window; beyond, new ones share the client "*"
OTHERS = "*"

Key = tuple[str, str, str]  # (action, target, result)


@dataclasses.dataclass
class _Count:
    """The refusals of one key in a client's window."""

    recorded: int = 0
    not_recorded: int = 0
    first_ns: int = 0
    last: AuditRecord | None = None  # the last one not recorded (who, for the summary)


@dataclasses.dataclass
class _Window:
    start: float
    recorded: int = 0
    keys: dict[Key, _Count] = dataclasses.field(default_factory=dict)


def client_of(rec: AuditRecord) -> str:
    """Whose refusal: the session, else the client's address without its port (one client's
    connections share their budget)."""
    if rec.session:
        return rec.session
    host, sep, _port = rec.client_address.rpartition(":")
    return host if sep else rec.client_address


@dataclasses.dataclass(frozen=True)
class Budget:
    """How many refusals are recorded one by one, per window of ``window_s`` seconds, and how
    many keys and clients are counted at once (module docstring)."""

    per_key: int = PER_KEY
    per_client: int = PER_CLIENT
    window_s: float = WINDOW_S
    max_keys: int = MAX_KEYS
    max_clients: int = MAX_CLIENTS


class RefusalAudit:
    """An AuditSink recording refusals at a bounded rate (module docstring); everything else
    passes through. Never raises: an error of its own gives the record to the sink as is."""

    def __init__(self, sink: AuditSink, budget: Budget = Budget(), clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.budget = budget
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.not_recorded = 0  # refusals counted in summaries rather than recorded one by one
        self.summaries = 0

    def record(self, rec: AuditRecord) -> None:
        """The AuditSink entry: a refusal of an aggregated action is rate-limited, the rest passes."""
        if rec.result == "Good" or rec.action not in AGGREGATED:
            self.sink.record(rec)
            return
        self.refused(rec)

    def refused(self, rec: AuditRecord) -> bool:
        """Record the refusal ``rec`` now (True) or count it for its window's summary (False)."""
        try:
            return self._refused(rec)
        except Exception as exc:  # noqa: BLE001 - fail towards recording: never lose a refusal to a bug here
            log.error("refusal_audit_failed", action=rec.action, error=repr(exc))
            self.sink.record(rec)
            return True

    def _refused(self, rec: AuditRecord) -> bool:
        now = self.clock()
        client = client_of(rec)
        window = self._windows.get(client)
        if window is not None and now - window.start >= self.budget.window_s:
            self._close(client, window)
            window = None
        if window is None:
            if len(self._windows) >= self.budget.max_clients:
                self.flush(now)
            if len(self._windows) >= self.budget.max_clients:
                client = OTHERS  # many clients at once: the newcomers share one budget
                window = self._windows.get(client)
            if window is None:
                window = self._windows[client] = _Window(now)
        key = (rec.action, rec.target, rec.result)
        count = window.keys.get(key)
        if count is None:
            if len(window.keys) >= self.budget.max_keys:
                key = (rec.action, OTHERS, rec.result)  # the targets are the client's choice: bounded
                count = window.keys.get(key)
            if count is None:
                count = window.keys[key] = _Count()
        if count.recorded < self.budget.per_key and window.recorded < self.budget.per_client and key[1] != OTHERS:
            count.recorded += 1
            window.recorded += 1
            self.sink.record(rec)
            return True
        if not count.not_recorded:
            count.first_ns = rec.time_ns
        count.not_recorded += 1
        count.last = rec
        self.not_recorded += 1
        self._schedule(window.start + self.budget.window_s - now)
        return False

    def flush(self, now: float | None = None) -> int:
        """Close every window that has ended: write its summaries (the count written).

        The windows are kept in the order they opened (a dict's insertion order; a closed one
        opens again at the end), so the ended ones are at the front: amortised O(1) per refusal.
        """
        now = self.clock() if now is None else now
        before = self.summaries
        while self._windows:
            client, window = next(iter(self._windows.items()))
            if now - window.start < self.budget.window_s:
                break
            self._close(client, window)
        return self.summaries - before

    def _close(self, client: str, window: _Window) -> None:
        del self._windows[client]
        for (action, target, result), count in window.keys.items():
            if count.not_recorded and count.last is not None:
                last = count.last
                args = {
                    "not_audited": count.not_recorded,
                    "window_s": self.budget.window_s,
                    "first_ns": count.first_ns,
                    "last_ns": last.time_ns,
                }
                summary = dataclasses.replace(
                    last, time_ns=time.time_ns(), action=action, target=target, result=result, arguments=canonical(args)
                )
                self.sink.record(summary)
                self.summaries += 1
                log.warning(
                    "audit_refusals_aggregated",
                    client=last.client_address,
                    action=action,
                    target=target,
                    result=result,
                    count=count.not_recorded,
                )

    def _schedule(self, delay: float) -> None:
        """Summaries at the end of the window: one timer at a time, on the running loop if any."""
        if self._timer is not None and not self._timer.cancelled():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a thread, a CLI): the next refusal after the window writes them
            return
        self._timer = loop.call_later(max(delay, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - a timer callback: logged, the next refusal retries
            log.error("refusal_audit_flush_failed", error=repr(exc))
        pending = [w.start for w in self._windows.values() if any(c.not_recorded for c in w.keys.values())]
        if pending:
            self._schedule(min(pending) + self.budget.window_s - self.clock())


_SHARED: weakref.WeakKeyDictionary[AuditSink, RefusalAudit] = weakref.WeakKeyDictionary()


def refusal_audit_for(sink: AuditSink) -> RefusalAudit:
    """The RefusalAudit in front of ``sink``: ``sink`` itself when it is one, else the same one
    for every caller given this sink (the service gate, the methods, the limits and the transport
    of a server share each client's budget)."""
    if isinstance(sink, RefusalAudit):
        return sink
    try:
        shared = _SHARED.get(sink)
        if shared is None:
            shared = _SHARED[sink] = RefusalAudit(sink)
        return shared
    except TypeError:  # a sink that cannot be weakly referenced or hashed: a budget of its own
        return RefusalAudit(sink)
