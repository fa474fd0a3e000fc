"""Operators' overrides of the lighting schedules: until when a schedule leaves a device alone.

An operator's successful command to a device (any caller but the Scheduler) sets its override:
until the time the command's ``until`` argument gave (a datetime argument, ns since the epoch),
or, when it gave none (0), until the schedule's next step for that device, which the scheduler
then skips once and clears. The pipeline (scada/control/pipeline.py) writes this table; the
scheduler (scada/control/schedules.py) reads and clears it.
"""

from __future__ import annotations

NEXT_STEP = -1  # until the schedule's next step


class Overrides:
    """Per device name: the override's end (ns since the epoch), or NEXT_STEP."""

    def __init__(self) -> None:
        self._until: dict[str, int] = {}

    def set(self, device: str, until_ns: int) -> None:
        """An operator's command: ``until_ns`` 0 (none given) is NEXT_STEP."""
        self._until[device] = int(until_ns) if until_ns > 0 else NEXT_STEP

    def active(self, device: str, now_ns: int) -> bool:
        """Whether a schedule must leave ``device`` alone at ``now_ns`` (an expired override is dropped)."""
        until = self._until.get(device)
        if until is None:
            return False
        if until == NEXT_STEP or until > now_ns:
            return True
        del self._until[device]
        return False

    def step_skipped(self, device: str) -> None:
        """A schedule step left ``device`` alone: a NEXT_STEP override ends here."""
        if self._until.get(device) == NEXT_STEP:
            del self._until[device]

    def clear(self, device: str) -> None:
        self._until.pop(device, None)

    def until(self, device: str) -> int | None:
        return self._until.get(device)
