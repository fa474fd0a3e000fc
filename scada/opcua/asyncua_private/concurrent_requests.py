"""asyncua internals: some requests of a connection served beside the next ones (a command's Call
or Write waits seconds for the field's read-back); checked by
tests/unit/test_asyncua_private_concurrent_requests.py.

asyncua serves a connection's requests one after the other: a Call that waits for a read-back
holds that client's Publish, Read and keep-alive requests behind it, and a client whose
keep-alive times out drops its own session (measured: asyncua's client, one SetDimLevel on a
loaded machine). OPC UA matches responses to requests by their request id, in any order.

Relied on:

* ``UaProcessor.process_message(self, seqhdr, body)``: one decoded secure message of the
  connection (``body`` a ``Buffer`` at the request's type NodeId); it serves it, answers a
  ServiceError or any failure with a ServiceFault (so it never raises for a request), and
  sends the response itself (``send_response``, by the request's id).
* ``nodeid_from_binary(Buffer.copy())``: the request's type, read without consuming ``body``.
* ``UaProcessor.iserver``: the InternalServer, where the chosen kinds are marked.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from asyncua import Server
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary

__all__ = ["cancel_in_flight", "serve_concurrently"]

log = structlog.get_logger("scada.opcua")

_KINDS = "_scada_concurrent_kinds"  # on the InternalServer: (request kinds, limit per connection)
_TASKS = "_scada_concurrent_tasks"  # on the InternalServer: the requests served in a task now
_PER_CONNECTION = "_scada_concurrent_count"  # on a UaProcessor: how many of its requests run so
_WRAPPED = "_scada_concurrent_hooked"  # on UaProcessor, once process_message is wrapped


def serve_concurrently(server: Server, kinds: frozenset[int], limit: int) -> None:
    """Serve the requests of ``kinds`` (Identifiers of their ns=0 encoding NodeIds) in a task of
    their own, the connection's next requests served meanwhile; at most ``limit`` at once per
    connection (beyond, the next one is served in line: the client waits, nothing queues).
    Idempotent (replaces kinds and limit). Install before the server starts."""
    iserver = server.iserver
    setattr(iserver, _KINDS, (frozenset(kinds), int(limit)))
    if not hasattr(iserver, _TASKS):
        setattr(iserver, _TASKS, set())
    if getattr(UaProcessor, _WRAPPED, False):
        return
    original = UaProcessor.process_message

    @functools.wraps(original)
    async def process_message(self: UaProcessor, seqhdr: Any, body: Any) -> Any:
        chosen = getattr(self.iserver, _KINDS, None)
        if chosen is None:
            return await original(self, seqhdr, body)
        kinds, limit = chosen
        try:
            typeid = nodeid_from_binary(body.copy())
        except Exception:  # noqa: BLE001 - asyncua's own path answers a malformed request
            return await original(self, seqhdr, body)
        running = getattr(self, _PER_CONNECTION, 0)
        if typeid.NamespaceIndex != 0 or typeid.Identifier not in kinds or running >= limit:
            return await original(self, seqhdr, body)
        setattr(self, _PER_CONNECTION, running + 1)
        tasks: set[asyncio.Task] = getattr(self.iserver, _TASKS)

        async def serve() -> None:
            try:
                await original(self, seqhdr, body)
            except Exception as exc:  # noqa: BLE001 - a closed connection: nobody left to answer
                log.warning("opcua_concurrent_request_failed", error=repr(exc))
            finally:
                setattr(self, _PER_CONNECTION, getattr(self, _PER_CONNECTION, 1) - 1)

        # The task runs in a copy of this context: the request's identity and session (set by
        # the request gate around _process_message, inside) are its own.
        task = asyncio.get_running_loop().create_task(serve(), name="opcua-concurrent-request")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    setattr(UaProcessor, _WRAPPED, True)
    UaProcessor.process_message = process_message  # type: ignore[method-assign]


async def cancel_in_flight(server: Server) -> None:
    """Cancel the requests still served in a task (the server stops: their clients are going)."""
    tasks: set[asyncio.Task] = getattr(server.iserver, _TASKS, set())
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
