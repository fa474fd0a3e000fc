"""asyncua internals: the Write service, routed per node (scada/opcua/writes.py); checked by
tests/unit/test_asyncua_private_writes.py.

Relied on:

* ``iserver.attribute_service.write(params, user)``: every Write of a client (the session's
  ``write`` calls it with its user after the PreWrite callbacks), one ``WriteParameters`` in, one
  ``StatusCode`` per ``WriteValue`` out, in order. asyncua checks AccessLevel there and stores
  the value in the node; a routed Write does neither: its route decides and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import Server, ua

__all__ = ["Route", "hook_writes"]

# One WriteValue: None leaves it to asyncua; an awaitable is its status (asyncua does not see it).
Route = Callable[[ua.WriteValue], Awaitable[ua.StatusCode] | None]

_ROUTE = "_scada_write_route"  # on the attribute service: its route


def hook_writes(server: Server, route: Route) -> None:
    """Give each WriteValue of every Write to ``route`` first (see :data:`Route`).

    The routed ones run concurrently (a command's read-back must not wait for another's); the
    others go to asyncua's own write in one call, and the results come back in request order.
    Idempotent per server (replaces the route).
    """
    service = server.iserver.attribute_service
    first = getattr(service, _ROUTE, None) is None
    setattr(service, _ROUTE, route)
    if not first:
        return
    write = service.write

    async def routed_write(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> list[ua.StatusCode]:
        decide = getattr(service, _ROUTE)
        routed = [decide(wv) for wv in params.NodesToWrite]
        rest = [wv for wv, r in zip(params.NodesToWrite, routed) if r is None]
        theirs: list[ua.StatusCode] = []
        if rest:
            theirs = await write(ua.WriteParameters(NodesToWrite=rest), *args, **kwargs)
        ours = await asyncio.gather(*(r for r in routed if r is not None))
        it_theirs, it_ours = iter(theirs), iter(ours)
        return [next(it_theirs) if r is None else next(it_ours) for r in routed]

    service.write = routed_write  # type: ignore[method-assign]
