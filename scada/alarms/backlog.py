"""The alarm engine's journal writes, and the backlog that carries them over a journal outage.

Journal faults (disk full, read-only file system, I/O error): the rows the journal refused
wait in a bounded in-memory backlog, in order, with the instances whose saved state is behind
memory. The backlog is retried with backoff and written first, with the current state of every
instance it touched, in one transaction, before anything newer: once the disk is back the
journal holds every row in order and the saved states equal memory. Beyond ``BACKLOG_ROWS``
the oldest rows are dropped and counted (the states are never dropped: one per instance at
most). The owner is told when writes fail and when they recover (the engine raises and clears
its ``storage_failing`` server alarm).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from scada.alarms.journal import Journal, JournalError, JournalRow, Key, StateRecord
from scada.backoff import Backoff

log = structlog.get_logger("scada.alarms")

# Rows kept in memory at most (~300 B each), and the retry backoff (s): the project's one
# capped, jittered backoff, so that a failing disk is neither hammered nor retried in step.
BACKLOG_ROWS = 100_000
RETRY = Backoff(0.5, 30.0)

StateRecords = Callable[[Sequence[int]], list[tuple[Key, StateRecord]]]


class JournalWriter:
    """Writes journal rows with the states of the instances they touched; keeps them on a fault.

    ``states(instances)`` gives the current saved form of instances' states (read when
    written, so a backlog writes the latest); ``failed(exc)`` and ``recovered(rows, dropped)``
    are called when writes fail and when the backlog has been written.
    """

    def __init__(
        self,
        journal: Journal,
        states: StateRecords,
        failed: Callable[[JournalError], None],
        recovered: Callable[[int, int], None],
    ) -> None:
        self.journal = journal
        self._states = states
        self._failed = failed
        self._recovered = recovered
        self.backlog: collections.deque[JournalRow] = collections.deque()
        self.backlog_states: set[int] = set()  # instances whose saved state is behind memory
        self.dropped = 0  # rows lost to a full backlog since the start (counter)
        self._dropped_before = 0  # the counter when the current outage began
        self.retry_at = 0.0  # time.monotonic() of the next write attempt
        self.failures = 0  # failed write attempts in a row

    @property
    def waiting(self) -> bool:
        """Rows or states wait for the journal to write again."""
        return bool(self.backlog or self.backlog_states)

    def write(self, rows: Sequence[JournalRow], touched: Sequence[int]) -> None:
        """Journal ``rows`` with the states of ``touched``; on a storage error keep them for later."""
        if self.waiting:  # behind what waits: the journal keeps the order
            self._keep(rows, touched)
            return
        try:
            self.journal.record(rows, states=self._states(touched))
        except JournalError as exc:
            self._keep(rows, touched)
            self._fail(exc)

    def _keep(self, rows: Sequence[JournalRow], touched: Sequence[int]) -> None:
        self.backlog.extend(rows)
        self.backlog_states.update(touched)
        over = len(self.backlog) - BACKLOG_ROWS
        if over > 0:
            for _ in range(over):
                self.backlog.popleft()
            self.dropped += over
            log.error(
                "alarm_journal_backlog_full",
                journal=str(self.journal.path),
                dropped=self.dropped,
                kept=len(self.backlog),
            )

    def _fail(self, exc: JournalError) -> None:
        self.failures += 1
        delay = RETRY.delay(self.failures)
        self.retry_at = time.monotonic() + delay
        log.error(
            "alarm_journal_write_failed",
            journal=exc.path,
            error=exc.reason,
            backlog=len(self.backlog),
            retry_in_s=round(delay, 3),
        )
        self._failed(exc)

    def retry_due(self) -> None:
        """Write the backlog if some waits and its retry time has come."""
        if self.waiting and time.monotonic() >= self.retry_at:
            self.flush()

    def flush(self) -> bool:
        """Write the backlog, oldest first, with the current states of the instances it touched,
        in one transaction; True once nothing waits."""
        if not self.waiting:
            return True
        rows = list(self.backlog)
        try:
            # A new file descriptor: a file system that went read-only on an error is only
            # writable again once repaired and mounted again, which the old one never sees.
            self.journal.reopen()
            self.journal.record(rows, states=self._states(sorted(self.backlog_states)))
        except JournalError as exc:
            self._fail(exc)
            return False
        self.backlog.clear()
        self.backlog_states.clear()
        self.failures = 0
        dropped, self._dropped_before = self.dropped - self._dropped_before, self.dropped
        log.info("alarm_journal_recovered", journal=str(self.journal.path), rows=len(rows), dropped=dropped)
        self._recovered(len(rows), dropped)
        return True

    def take_over(self, old: JournalWriter, renumber: Mapping[int, int]) -> None:
        """Carry ``old``'s backlog (a reload during an outage): its rows wait here, first, and are
        retried at the next write; ``renumber`` maps old instances to new ones (an instance
        not in it left the configuration: its state is not rewritten)."""
        self.backlog = collections.deque(old.backlog)
        self.backlog_states = {renumber[j] for j in old.backlog_states if j in renumber}
        self.dropped, self._dropped_before = old.dropped, old._dropped_before
        self.failures, self.retry_at = old.failures, 0.0
