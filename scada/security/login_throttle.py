"""Failed logins slowed and users locked (pure: the OPC UA login in scada/opcua/login.py uses it).

Each failure makes the next attempt of the same user, and of the same client address, wait
longer: ``delay_s`` after the first failure, doubled per failure up to ``max_delay_s``. After
``max_failures`` consecutive failures a user is locked for ``lockout_s``: refused even with the
right password, with the same status code as a wrong one (so the lock tells nothing), and
without the password being checked. A success clears the user's count. A client address's
count is forgotten ``lockout_s`` after its last failure (not on a success: one valid account
must not reset the slowing of a guesser on the same address).

Attempts waiting to be checked are capped: at most ``max_waiting`` per user and
``max_waiting_per_host`` per client host (:meth:`admit`, :meth:`release`), so that parallel attempts cannot queue past the lock (each is
checked against the lock again when its turn comes, and counted as soon as it failed) nor keep
the password hashing busy while other users wait behind them.

Memory is bounded: only known users get a per-user count (an unknown name counts for its
address only), and at most ``max_addresses`` addresses are remembered (the oldest go first);
the waiting counts hold only attempts in flight.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from scada.security.settings import LoginSettings


@dataclasses.dataclass
class _Count:
    failures: int = 0
    last: float = 0.0  # monotonic time of the last failure
    locked_until: float = 0.0


class LoginThrottle:
    """Failure counts per user and per client address, the delays and locks they give."""

    def __init__(
        self,
        settings: LoginSettings,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
        max_waiting: int = 2,
        max_waiting_per_host: int = 4,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.max_addresses = max_addresses
        self.max_waiting = max_waiting
        self.max_waiting_per_host = max_waiting_per_host
        self._users: dict[str, _Count] = {}
        self._addresses: dict[str, _Count] = {}
        self._waiting_users: dict[str, int] = {}
        self._waiting_hosts: dict[str, int] = {}

    def admit(self, user: str | None, address: str) -> bool:
        """Let one more attempt of ``user`` (None: unknown) from ``address`` wait for its check?
        False when ``max_waiting`` of that user, or ``max_waiting_per_host`` of that host, are
        already in flight; True counts it in, and :meth:`release` must follow once it is decided."""
        host = _host(address)
        if self._waiting_hosts.get(host, 0) >= self.max_waiting_per_host:
            return False
        if user is not None and self._waiting_users.get(user, 0) >= self.max_waiting:
            return False
        self._waiting_hosts[host] = self._waiting_hosts.get(host, 0) + 1
        if user is not None:
            self._waiting_users[user] = self._waiting_users.get(user, 0) + 1
        return True

    def release(self, user: str | None, address: str) -> None:
        """An attempt admitted by :meth:`admit` is decided."""
        _drop(self._waiting_hosts, _host(address))
        if user is not None:
            _drop(self._waiting_users, user)

    def waiting(self) -> int:
        """Attempts in flight (tests: nothing is left counted once the attempts are decided)."""
        return sum(self._waiting_hosts.values())

    def delay(self, user: str | None, address: str) -> float:
        """Seconds to wait before checking an attempt of ``user`` (None: unknown) from ``address``."""
        n = max(self._user(user).failures if user else 0, self._address(address).failures)
        if n <= 0:
            return 0.0
        s = self.settings
        return float(min(s.delay_s * 2.0 ** min(n - 1, 30), s.max_delay_s))

    def locked(self, user: str) -> bool:
        """Is ``user`` locked out now?"""
        count = self._users.get(user)
        return count is not None and self.clock() < count.locked_until

    def locked_until(self, user: str) -> float:
        """The monotonic time ``user``'s lock ends (0 when never locked)."""
        count = self._users.get(user)
        return count.locked_until if count is not None else 0.0

    def failed(self, user: str | None, address: str) -> None:
        """Count a failed attempt (``user`` None: a name that is not a user's)."""
        now = self.clock()
        addr = self._address(address)
        addr.failures, addr.last = addr.failures + 1, now
        host = _host(address)
        self._addresses.pop(host, None)  # to the end: the most recent is forgotten last
        self._addresses[host] = addr
        self._bound()
        if user is None or self.locked(user):
            return  # attempts while locked do not extend the lock
        count = self._users.setdefault(user, _Count())
        count.failures, count.last = count.failures + 1, now
        if count.failures >= self.settings.max_failures:
            count.locked_until = now + self.settings.lockout_s
            count.failures = 0  # after the lock: max_failures new attempts, each slowed again

    def succeeded(self, user: str) -> None:
        """A successful login of ``user``: its consecutive failures start again from zero."""
        count = self._users.get(user)
        if count is not None and not self.locked(user):
            del self._users[user]

    def _user(self, user: str) -> _Count:
        return self._users.get(user) or _Count()

    def _address(self, address: str) -> _Count:
        count = self._addresses.get(_host(address))
        if count is None or self.clock() - count.last > self.settings.lockout_s:
            return _Count()
        return count

    def _bound(self) -> None:
        while len(self._addresses) > self.max_addresses:
            del self._addresses[next(iter(self._addresses))]  # the oldest first (insertion order)


def _drop(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)  # only attempts in flight are kept


def _host(address: str) -> str:
    """The host of ``host:port`` (a client's every connection counts for its machine)."""
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address
