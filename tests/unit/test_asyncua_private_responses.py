"""Contract of scada/opcua/asyncua_private/responses.py (responses whose Results we encoded,
sent through asyncua's processor) with the installed asyncua.
"""

from __future__ import annotations

import dataclasses
import inspect

from asyncua import ua

from tests.asyncua_contract import params, relied_on

relies = relied_on("scada/opcua/asyncua_private/responses.py")


def test_responses_are_sent_as_relied_on_for_pre_encoded_results():
    from asyncua.server.uaprocessor import UaProcessor

    # asyncua's own, under our wrapper when a test before this one started a server
    src = inspect.getsource(inspect.unwrap(UaProcessor.send_response))
    relies(
        params(UaProcessor.send_response) == ["self", "requesthandle", "seqhdr", "response", "msgtype"],
        "UaProcessor.send_response(requesthandle, seqhdr, response, msgtype)",
    )
    for part in (
        "response.ResponseHeader.RequestHandle = requesthandle",
        "self._connection.message_to_binary(",
        "struct_to_binary(response), message_type=msgtype, request_id=seqhdr.RequestId",
        "self._transport.write(data)",
    ):
        relies(part in src, f"UaProcessor.send_response: {part}")
    relies(
        [f.name for f in dataclasses.fields(ua.BrowseResponse)]
        == ["TypeId", "ResponseHeader", "Results", "DiagnosticInfos"],
        "BrowseResponse's fields, in order",
    )
