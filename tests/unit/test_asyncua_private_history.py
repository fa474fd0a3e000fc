"""Contract of scada/opcua/asyncua_private/history.py (the HistoryRead entry point) with the
installed asyncua.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.server.history import HistoryManager

from scada.opcua.asyncua_private import history as P
from tests import asyncua_contract
from tests.asyncua_contract import (
    SC,
    on_live,
    params,
    relied_on,
)

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/history.py")


def test_history_internals_have_the_signatures_relied_on():
    relies(params(HistoryManager.read_history)[1:] == ["params"], "HistoryManager.read_history(params)")
    relies(
        issubclass(P.ServiceError, Exception) and P.ServiceError(SC.BadInternalError).code == SC.BadInternalError,
        "asyncua.common.utils.ServiceError(code).code",
    )


@on_live
async def test_history_read_goes_through_the_wrapped_entry_point(live):
    node = live.client.get_node(live.nodeid)
    calls = len(live.history_calls)
    [dv] = await node.read_raw_history(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert dv.Value.Value == 7.0
    assert len(live.history_calls) == calls + 1
    # What is not ours goes on to asyncua's own handler, which knows its historised nodes.
    stock = await live.server.nodes.objects.add_variable(live.ns, "stock", 1.0)
    await live.server.historize_node_data_change(stock, count=10)
    relies(stock.nodeid in P.stock_historized(live.server), "history_manager._handlers: Node -> handler")
    await live.client.get_node(stock.nodeid).read_raw_history(
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert len(live.history_calls) == calls + 2
    live.refuse.append(SC.BadTimestampsToReturnInvalid)
    try:
        with pytest.raises(ua.UaStatusCodeError) as err:
            await node.read_raw_history(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    finally:
        live.refuse.clear()
    relies(
        err.value.code == SC.BadTimestampsToReturnInvalid,
        "a ServiceError raised by the HistoryRead handler is the request's fault",
    )
