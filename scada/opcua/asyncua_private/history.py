"""asyncua internals: the HistoryRead entry point (scada/opcua/history.py); checked by
tests/unit/test_asyncua_private_history.py.

Relied on: ``ServiceError(code)`` raised from a service handler makes asyncua answer the request
with a ServiceFault of that code.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from asyncua import Server, ua
from asyncua.common.utils import ServiceError  # re-exported as it is

__all__ = ["HistoryRead", "ServiceError", "stock_historized", "wrap_history_read"]


class HistoryRead(Protocol):
    """asyncua's HistoryRead entry point: parameters in, one result per node to read out."""

    def __call__(self, params: ua.HistoryReadParameters) -> Awaitable[list[ua.HistoryReadResult]]: ...


def wrap_history_read(server: Server, read: HistoryRead) -> HistoryRead:
    """Make ``read`` the server's HistoryRead and return the handler it replaces.

    ``iserver.history_manager.read_history`` is the one function asyncua's HistoryRead service
    calls; asyncua's public history API only historises nodes into its own storage.
    """
    manager = server.iserver.history_manager
    previous: HistoryRead = manager.read_history
    # An instance attribute over the method: asyncua looks it up on the instance per request.
    manager.read_history = read  # type: ignore[method-assign,assignment]
    return previous


def stock_historized(server: Server) -> set[ua.NodeId]:
    """Nodes historised by asyncua's own HistoryManager (``history_manager._handlers``)."""
    return {node.nodeid for node in server.iserver.history_manager._handlers}
