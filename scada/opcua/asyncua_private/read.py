"""asyncua internals: the Read service, answered in a batch for the values we hold
(scada/opcua/tag_read.py), and the nodes a user does not see refused to CreateMonitoredItems
(scada/opcua/visibility.py); checked by tests/unit/test_asyncua_private_read.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from asyncua import Server, ua

from scada.opcua.asyncua_private.responses import PreEncoded, wrap_send_response

__all__ = ["ReadAnswers", "hook_monitored_item_visibility", "hook_read"]


class ReadAnswers(Protocol):
    """Answers for a Read's ReadValueIds, in order; ``None`` where asyncua's path answers."""

    def __call__(self, nodes: list[ua.ReadValueId]) -> list[ua.DataValue | None]: ...


_READ_HOOKED = "_scada_read_answers"


def hook_read(
    server: Server, answers: ReadAnswers, encode: Callable[[list[ua.DataValue]], bytes] | None = None
) -> None:
    """Let ``answers`` answer a Read's items first, the rest by asyncua (``read_attribute_value``);
    with ``encode``, the results are sent encoded by it (a :class:`PreEncoded` list, see
    :func:`hook_browse_encoding`).

    Replaces the server's ``attribute_service.read`` (the session calls it per Read request,
    between its PreRead and PostRead callbacks, which stay). A later call replaces the
    answers and the encoder (a server has one tag table at a time).
    """
    service = server.iserver.attribute_service
    setattr(service, _READ_HOOKED, (answers, encode))
    if encode is not None:
        wrap_send_response()
    if getattr(service.read, _READ_HOOKED, False):
        return
    read_one = service._aspace.read_attribute_value

    def read(params: ua.ReadParameters) -> list[ua.DataValue]:
        nodes = params.NodesToRead
        answer, encoder = getattr(service, _READ_HOOKED)
        found = answer(nodes)
        out = [dv if dv is not None else read_one(rv.NodeId, rv.AttributeId) for rv, dv in zip(nodes, found)]
        return PreEncoded(out, encoder) if encoder is not None else out

    setattr(read, _READ_HOOKED, True)
    service.read = read  # type: ignore[method-assign]  # an instance attribute over the method


# -- CreateMonitoredItems: the nodes a user does not see --------------------------------------

_ITEMS_HIDDEN = "_scada_items_hidden"  # on the subscription service: (hidden, status)

# Per item of a CreateMonitoredItems, whether its node is hidden from the requester; None: none is.
ItemsHidden = Callable[[Sequence[ua.MonitoredItemCreateRequest]], list[bool] | None]


def hook_monitored_item_visibility(server: Server, hidden: ItemsHidden, status: ua.StatusCode) -> None:
    """Answer ``status`` for the items ``hidden`` names, create the others as asyncua does.

    Wraps ``subscription_service.create_monitored_items(params)`` (an instance attribute over
    the method: the sessions look it up per request; other hooks may wrap over ours, as
    asyncua_private/datachange.py does). Idempotent per server (a later call replaces ``hidden``).
    """
    service = server.iserver.subscription_service
    first = getattr(service, _ITEMS_HIDDEN, None) is None
    setattr(service, _ITEMS_HIDDEN, (hidden, status))
    if not first:
        return
    create: Callable[[ua.CreateMonitoredItemsParameters], Awaitable[list[ua.MonitoredItemCreateResult]]]
    create = service.create_monitored_items

    async def create_visible(params: ua.CreateMonitoredItemsParameters) -> list[ua.MonitoredItemCreateResult]:
        judge, refused = getattr(service, _ITEMS_HIDDEN)
        items = params.ItemsToCreate
        verdicts = judge(items)
        if verdicts is None or not any(verdicts):
            return await create(params)
        allowed = [i for i, h in zip(items, verdicts, strict=True) if not h]
        part = ua.CreateMonitoredItemsParameters(
            SubscriptionId=params.SubscriptionId, TimestampsToReturn=params.TimestampsToReturn, ItemsToCreate=allowed
        )
        done = iter(await create(part) if allowed else [])
        return [ua.MonitoredItemCreateResult(StatusCode=refused) if h else next(done) for h in verdicts]

    service.create_monitored_items = create_visible  # type: ignore[method-assign]
