"""Supervision of the server's long-running tasks: one failure never stops the server.

Every long-running coroutine of the server (a driver, the alarm engine, the historian, the
OPC UA publisher, the status and staleness loops) runs under a :class:`Supervisor` by name.
When one raises, the failure is logged with the task's name and traceback, the task's
``on_failure`` hook runs (a driver's tags turn Bad: a dead driver must not leave its values
frozen Good), the ``on_alarm`` callback raises the server alarm ``server_task_failed`` for
that task, and the task is started again after a capped, jittered exponential backoff (the
Modbus transport's :class:`Backoff`, so that a task failing at once never spins). A task
that has then run for ``healthy_after`` seconds counts as recovered: its backoff starts
again from the base and its alarm clears.

Cancellation is not a failure: cancelling the supervisor cancels every task and waits for
them, so a clean stop stays clean.

Test hook: :meth:`Supervisor.inject_fault` makes the running attempt of a named task fail
with :class:`InjectedFault` (explicit, for tests and drills; nothing calls it in production).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from scada.backoff import Backoff

log = structlog.get_logger("scada.supervisor")

HEALTHY_AFTER_S = 30.0


class InjectedFault(RuntimeError):
    """The failure :meth:`Supervisor.inject_fault` puts into a running task."""


@dataclass(eq=False)
class Supervised:
    """One named task and what its supervision counted."""

    name: str
    factory: Callable[[], Coroutine[Any, Any, None]]
    on_failure: Callable[[BaseException], None] | None = None  # right after a failure (tags turn Bad...)
    on_restart: Callable[[], None] | None = None  # right before each restart (resynchronise state)
    restarts: int = 0
    failures: int = 0  # failures in a row, since the task last ran healthy
    failed: bool = False  # its server alarm is raised
    last_error: str = ""
    started_at: float = 0.0
    running: asyncio.Task[None] | None = field(default=None, repr=False)
    injected: bool = False


class Supervisor:
    """Runs named coroutines, restarting each one that fails; see the module docstring."""

    def __init__(
        self,
        on_alarm: Callable[[str, bool, str], None] | None = None,
        backoff: Backoff = Backoff(base=0.5, cap=30.0),
        healthy_after: float = HEALTHY_AFTER_S,
    ) -> None:
        self.on_alarm = on_alarm  # (task name, active, message)
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.tasks: dict[str, Supervised] = {}
        self._group: asyncio.TaskGroup | None = None  # while running: tasks added later start at once
        self._supervising: dict[str, asyncio.Task] = {}

    def add(
        self,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        on_failure: Callable[[BaseException], None] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> Supervised:
        """Register a task by name: ``factory()`` makes one attempt's coroutine.

        Added while :meth:`run` runs (a configuration reload), the task starts at once.
        """
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        s = self.tasks[name] = Supervised(name, factory, on_failure, on_restart)
        if self._group is not None:
            self._start(s)
        return s

    async def remove(self, name: str) -> None:
        """Stop a task and forget it (a device set removed by a reload); its alarm clears."""
        s = self.tasks.pop(name)
        task = self._supervising.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if s.failed:
            self._alarm(s, False, f"server task {name} removed")

    async def run(self) -> None:
        """Supervise every registered task until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._group = tg
                for s in self.tasks.values():
                    self._start(s)
        finally:
            self._group = None
            self._supervising.clear()

    def _start(self, s: Supervised) -> None:
        if self._group is None:  # add() starts a task only while run() holds the group
            raise RuntimeError(f"cannot start {s.name!r}: the supervisor is not running")
        self._supervising[s.name] = self._group.create_task(self._supervise(s), name=f"supervise:{s.name}")

    def inject_fault(self, name: str) -> None:
        """Make the running attempt of ``name`` fail as if it had raised (tests and drills only)."""
        s = self.tasks[name]
        if s.running is None or s.running.done():
            raise RuntimeError(f"task {name!r} is not running")
        s.injected = True
        s.running.cancel()

    def supervising(self, name: str) -> bool:
        """True while ``name`` is under supervision (running, or waiting to restart)."""
        task = self._supervising.get(name)
        return task is not None and not task.done()

    def status(self) -> dict[str, dict]:
        """Per task: restarts so far, whether its alarm is raised, its last error."""
        return {
            s.name: {"restarts": s.restarts, "failed": s.failed, "last_error": s.last_error}
            for s in self.tasks.values()
        }

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.tasks.values())

    async def _supervise(self, s: Supervised) -> None:
        while True:
            exc = await self._attempt(s)
            # The attempt failed (or returned, which a long-running task must not do).
            if s.failures and time.monotonic() - s.started_at >= self.healthy_after:
                s.failures = 0  # it ran well before this failure: start the backoff again
            s.failures += 1
            s.restarts += 1
            s.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.error(
                "task_failed",
                task=s.name,
                error=s.last_error,
                restarts=s.restarts,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._hook(s, "on_failure", s.on_failure, exc)
            if not s.failed:
                s.failed = True
                self._alarm(s, True, f"server task {s.name} failed ({s.last_error}); restarting")
            await asyncio.sleep(self.backoff.delay(s.failures))
            self._hook(s, "on_restart", s.on_restart)
            log.info("task_restarting", task=s.name, restarts=s.restarts)

    async def _attempt(self, s: Supervised) -> BaseException:
        """Run one attempt to its end; its failure (a return counts as one), or CancelledError upwards."""
        s.started_at = time.monotonic()
        s.injected = False
        s.running = task = asyncio.create_task(s.factory(), name=s.name)
        watch = asyncio.create_task(self._watch_health(s), name=f"health:{s.name}") if s.failed else None
        try:
            await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if s.injected and task.cancelled() and not (me is not None and me.cancelling()):
                return InjectedFault(f"fault injected into {s.name}")
            raise  # the supervisor is stopping: not a failure
        except Exception as exc:  # noqa: BLE001 - every failure of one task is contained here
            return exc
        finally:
            if watch is not None:
                watch.cancel()
            if not task.done():  # we are cancelled: stop the attempt with us, and wait for it
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            s.running = None
        return RuntimeError(f"task {s.name} returned; it should run until cancelled")

    async def _watch_health(self, s: Supervised) -> None:
        """Clear the task's alarm once this attempt has run ``healthy_after`` seconds."""
        await asyncio.sleep(self.healthy_after)
        s.failed = False
        s.failures = 0
        log.info("task_recovered", task=s.name, restarts=s.restarts)
        self._alarm(s, False, f"server task {s.name} running again")

    def _alarm(self, s: Supervised, active: bool, message: str) -> None:
        if self.on_alarm is not None:
            self._hook(s, "on_alarm", self.on_alarm, s.name, active, message)

    @staticmethod
    def _hook(s: Supervised, what: str, fn, *args) -> None:
        """Run a hook; its own failure is logged and must not stop the supervision."""
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # noqa: BLE001
            log.exception("supervisor_hook_failed", task=s.name, hook=what)
