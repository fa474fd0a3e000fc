"""asyncua internals: responses whose Results we encoded, sent through asyncua's processor;
checked by tests/unit/test_asyncua_private_responses.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.server.uaprocessor import UaProcessor as _UaProcessor
from asyncua.ua.ua_binary import list_to_binary as _list_to_binary
from asyncua.ua.ua_binary import struct_to_binary

from scada.opcua.asyncua_private.binary import nodeid_binary

__all__ = ["PreEncoded", "wrap_send_response"]

_HOOKED = "_scada_hooked"


# -- Browse responses encoded by us ---------------------------------------------------------
#
# asyncua encodes every response in ``UaProcessor.send_response`` with its generic
# ``struct_to_binary``: for a Browse of many nodes, most of the service's time (one call per
# field of each ReferenceDescription). A response whose ``Results`` is a :class:`PreEncoded`
# list is written by its own encoder instead (scada/opcua/browse_codec.py, byte-equal to
# asyncua's); the rest of the response (TypeId, ResponseHeader, DiagnosticInfos) and every
# other response stay asyncua's. The processor is one per connection, made by asyncua's
# protocol, so its class's method is wrapped (once per process); a response without a
# PreEncoded list goes to asyncua's method unchanged.

# The responses whose fields are (TypeId, ResponseHeader, Results, DiagnosticInfos), in order.
_RESULTS_RESPONSES = (ua.BrowseResponse, ua.ReadResponse)


class PreEncoded(list):
    """A service's ``Results``, written to the wire by ``encode(results)`` (its list length included)."""

    __slots__ = ("encode",)

    def __init__(self, items: list[Any], encode: Callable[[list[Any]], bytes]) -> None:
        super().__init__(items)
        self.encode = encode


def _encoded_response(response: Any) -> bytes | None:
    """The response's binary body when its Results are PreEncoded, else None (asyncua encodes it)."""
    results = getattr(response, "Results", None)
    if type(results) is not PreEncoded or type(response) not in _RESULTS_RESPONSES:
        return None
    return b"".join(
        (
            nodeid_binary(response.TypeId),
            struct_to_binary(response.ResponseHeader),
            results.encode(results),
            _list_to_binary(ua.DiagnosticInfo, response.DiagnosticInfos),
        )
    )


def wrap_send_response() -> None:
    """Make ``UaProcessor.send_response`` write PreEncoded Results with their own encoder (once per process)."""
    stock = _UaProcessor.send_response
    if getattr(stock, _HOOKED, False):
        return

    def send_response(
        self: Any, requesthandle: Any, seqhdr: Any, response: Any, msgtype: Any = ua.MessageType.SecureMessage
    ) -> None:
        if type(getattr(response, "Results", None)) is not PreEncoded:
            return stock(self, requesthandle, seqhdr, response, msgtype)
        response.ResponseHeader.RequestHandle = requesthandle
        body = _encoded_response(response)
        if body is None:
            return stock(self, requesthandle, seqhdr, response, msgtype)
        self._transport.write(
            self._connection.message_to_binary(body, message_type=msgtype, request_id=seqhdr.RequestId)
        )
        return None

    setattr(send_response, _HOOKED, True)
    send_response.__wrapped__ = stock  # type: ignore[attr-defined]  # asyncua's, for the contract test
    _UaProcessor.send_response = send_response  # type: ignore[method-assign]
