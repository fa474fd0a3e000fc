"""The supervisor of long-running tasks: restart with backoff, server alarm raised and cleared, clean stop."""

from __future__ import annotations

import asyncio

import pytest

from scada.backoff import Backoff
from scada.supervisor import InjectedFault, Supervisor


class RecordingBackoff:
    """The real Backoff's delays, shortened, with the failure counts the supervisor asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.real = Backoff(base=0.001, cap=0.01)

    def delay(self, failures: int) -> float:
        self.asked.append(failures)
        return self.real.delay(failures)


async def until(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)


class Alarms:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    def __call__(self, task: str, active: bool, message: str) -> None:
        assert task in message
        self.events.append((task, active))


def closing_worker(closed: list[str]):
    """Workers that wait until cancelled and then record their name in ``closed``."""

    async def worker(name):
        try:
            await asyncio.Event().wait()
        finally:
            closed.append(name)

    return worker


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_task_restarts_raises_its_alarm_then_clears_it_and_the_others_keep_running():
    alarms, backoff = Alarms(), RecordingBackoff()
    sup = Supervisor(alarms, backoff=backoff, healthy_after=0.2)
    attempts, ticks = [], [0]

    async def flaky():
        attempts.append(len(attempts))
        if len(attempts) <= 3:
            raise ValueError(f"bad value #{len(attempts)}")
        await asyncio.Event().wait()

    async def steady():
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.001)

    sup.add("flaky", flaky)
    sup.add("steady", steady)
    runner = asyncio.create_task(sup.run())
    await until(lambda: ("flaky", False) in alarms.events, what="alarm cleared")
    ticks_then = ticks[0]
    await until(lambda: ticks[0] > ticks_then, what="steady keeps running")
    await stop(runner)
    assert alarms.events == [("flaky", True), ("flaky", False)]  # once per outage, not once per failure
    assert len(attempts) == 4
    assert backoff.asked == [1, 2, 3]  # exponential: one more failure in a row each time
    status = sup.status()
    assert status["flaky"] == {"restarts": 3, "failed": False, "last_error": "ValueError: bad value #3"}
    assert status["steady"]["restarts"] == 0
    assert sup.restarts == 3


async def test_backoff_starts_again_from_the_base_after_a_healthy_run():
    alarms, backoff = Alarms(), RecordingBackoff()
    sup = Supervisor(alarms, backoff=backoff, healthy_after=0.2)
    sup.add("worker", lambda: asyncio.Event().wait())
    runner = asyncio.create_task(sup.run())
    await until(lambda: sup.tasks["worker"].running is not None)
    for n in (1, 2):  # two failures in a row
        sup.inject_fault("worker")
        await until(lambda: sup.tasks["worker"].restarts == n and sup.tasks["worker"].running is not None)
    await until(lambda: not sup.tasks["worker"].failed, what="healthy again")
    sup.inject_fault("worker")
    await until(lambda: sup.tasks["worker"].restarts == 3 and sup.tasks["worker"].running is not None)
    await stop(runner)
    assert backoff.asked == [1, 2, 1]
    assert alarms.events == [("worker", True), ("worker", False), ("worker", True)]
    assert sup.status()["worker"]["last_error"] == "InjectedFault: fault injected into worker"


def test_backoff_delays_are_capped_and_jittered():
    b = Backoff(base=0.5, cap=30.0)
    for failures in range(1, 40):
        d = min(30.0, 0.5 * 2 ** (failures - 1))
        delays = [b.delay(failures) for _ in range(50)]
        assert all(d / 2 <= x <= d for x in delays)
    assert len({b.delay(3) for _ in range(20)}) > 1  # jittered: a city of tasks does not restart in lock-step


async def test_cancelling_the_supervisor_is_a_clean_stop_not_a_failure():
    alarms = Alarms()
    sup = Supervisor(alarms, backoff=RecordingBackoff(), healthy_after=0.2)
    closed: list[str] = []
    worker = closing_worker(closed)

    sup.add("a", lambda: worker("a"))
    sup.add("b", lambda: worker("b"))
    runner = asyncio.create_task(sup.run())
    await until(lambda: all(t.running is not None for t in sup.tasks.values()))
    await stop(runner)
    assert sorted(closed) == ["a", "b"]
    assert alarms.events == []
    assert sup.restarts == 0


async def test_a_task_that_returns_is_restarted_and_hooks_run_even_when_one_fails():
    alarms = Alarms()
    sup = Supervisor(alarms, backoff=RecordingBackoff(), healthy_after=60.0)
    seen = []

    def on_failure(exc):
        seen.append(type(exc).__name__)
        raise OSError("the hook itself fails")

    sup.add("short", lambda: asyncio.sleep(0), on_failure=on_failure, on_restart=lambda: seen.append("restart"))
    runner = asyncio.create_task(sup.run())
    await until(lambda: sup.restarts >= 3)
    await stop(runner)
    assert seen[:4] == ["RuntimeError", "restart", "RuntimeError", "restart"]
    assert alarms.events == [("short", True)]  # still failing: raised once, not cleared
    assert "returned" in sup.status()["short"]["last_error"]


async def test_inject_fault_names_a_running_task():
    sup = Supervisor(None)
    sup.add("x", lambda: asyncio.Event().wait())
    with pytest.raises(RuntimeError, match="not running"):
        sup.inject_fault("x")
    with pytest.raises(KeyError):
        sup.inject_fault("unknown")
    with pytest.raises(ValueError, match="already supervised"):
        sup.add("x", lambda: asyncio.Event().wait())
    assert issubclass(InjectedFault, RuntimeError)


async def test_tasks_added_while_running_start_at_once_and_removed_ones_stop():
    """What a configuration reload needs: a new device set's driver starts, a removed one stops."""
    alarms = Alarms()
    sup = Supervisor(alarms, backoff=RecordingBackoff(), healthy_after=60.0)
    closed: list[str] = []
    worker = closing_worker(closed)

    sup.add("first", lambda: worker("first"))
    runner = asyncio.create_task(sup.run())
    await until(lambda: sup.tasks["first"].running is not None)
    sup.add("late", lambda: worker("late"))
    await until(lambda: sup.tasks["late"].running is not None, what="a task added while running starts")
    sup.inject_fault("late")
    await until(lambda: ("late", True) in alarms.events)
    await sup.remove("late")
    assert "late" not in sup.tasks and closed.count("late") >= 1
    assert alarms.events == [("late", True), ("late", False)]  # a removed task leaves no alarm behind
    await stop(runner)
    assert "first" in closed
