"""asyncua internals: the Read service, answered in a batch for the values we hold
(scada/opcua/tag_read.py); checked by tests/unit/test_asyncua_private_read.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from asyncua import Server, ua

from scada.opcua.asyncua_private.responses import PreEncoded, wrap_send_response

__all__ = ["ReadAnswers", "hook_read"]


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
