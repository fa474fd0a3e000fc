"""Contract of scada/opcua/asyncua_private/sessions.py (the calling session of a method, what a
closed session leaves behind, the sessions open at stop) with the installed asyncua.
"""

from __future__ import annotations

import asyncio
import inspect

from asyncua.server.internal_server import InternalServer

from scada.opcua.asyncua_private import sessions as P
from scada.opcua.asyncua_private import subscriptions as private_subscriptions
from scada.opcua.server import stop_asyncua_server
from tests import asyncua_contract
from tests.asyncua_contract import (
    on_live,
    params,
    relied_on,
    running,
    until,
)

live = asyncua_contract.live  # this file's module-scoped server (a fixture, used by name)
relies = relied_on("scada/opcua/asyncua_private/sessions.py")


def test_session_internals_have_the_signatures_relied_on():
    relies(params(P.InternalSession.call)[1:] == ["params"], "InternalSession.call(params)")
    relies(params(P.InternalSession.create_session)[1] == "params", "InternalSession.create_session(params, ...)")
    relies("delete_subs" in params(P.InternalSession.close_session), "InternalSession.close_session(delete_subs)")
    relies(params(InternalServer.create_session)[1:2] == ["name"], "InternalServer.create_session(name, ...)")


@on_live
async def test_a_method_callback_knows_its_calling_session_and_its_name(live):
    name = await live.client.nodes.objects.call_method(f"{live.ns}:Who")
    [session] = P.external_sessions(live.server)
    relies(isinstance(session, P.InternalSession), "iserver._external_sessions: auth token -> InternalSession")
    assert live.names.get(session), "the session factory hook did not record the SessionName"
    assert name == live.names[session]


async def test_stopping_closes_the_external_sessions():
    async with running() as own:
        assert len(P.external_sessions(own.server)) == 1
        await stop_asyncua_server(own.server)
        relies(P.external_sessions(own.server) == [], "InternalSession.close_session unregisters the external session")


async def test_stop_clock_ends_the_current_time_task_at_once():
    relies(
        "if self.time_task:" in inspect.getsource(InternalServer.stop)
        and "self._time_task_stop = True" in inspect.getsource(InternalServer.stop)
        and "await self.time_task" in inspect.getsource(InternalServer.stop),
        "InternalServer.stop flags then awaits time_task (skipped when None)",
    )
    async with running() as own:
        task = own.server.iserver.time_task
        relies(isinstance(task, asyncio.Task) and not task.done(), "a started server's iserver.time_task runs")
        await P.stop_clock(own.server)
        assert task.done() and own.server.iserver.time_task is None
        await P.stop_clock(own.server)  # twice (a stop after a failed stop): nothing to do
        await own.server.stop()  # asyncua's own stop then goes on without it


async def test_session_cleanup_hooks_on_a_live_server():
    """A created subscription is reported with its monitored item service's own logger, which
    can be swapped; a closed session is reported once, before its subscriptions are deleted."""
    import logging

    from asyncua.server.monitored_item_service import MonitoredItemService

    relies(
        'logging.getLogger(f"{__name__}.{isub.data.SubscriptionId}")'
        in inspect.getsource(MonitoredItemService.__init__),
        "MonitoredItemService.logger is a logger named after the subscription id",
    )
    relies(
        "self.iserver.unregister_external_session(self)" in inspect.getsource(P.InternalSession.close_session),
        "InternalSession.close_session unregisters an external session",
    )
    async with running() as own:
        created: list[private_subscriptions.InternalSubscription] = []
        closed: list[P.InternalSession] = []
        P.hook_subscription_created(own.server, created.append)
        P.hook_subscription_created(own.server, created.append)  # idempotent
        P.hook_session_closed(own.server, closed.append)
        P.hook_session_closed(own.server, closed.append)  # idempotent
        sub = await own.client.create_subscription(50, None)
        [isub] = created
        relies(isub.data.SubscriptionId == sub.subscription_id, "the created subscription is reported")
        own_logger = logging.getLogger(f"asyncua.server.monitored_item_service.{sub.subscription_id}")
        shared = logging.getLogger("contract.shared")
        relies(P.swap_item_service_logger(isub, shared) is own_logger, "MonitoredItemService.logger")
        relies(isub.monitored_item_srv.logger is shared, "MonitoredItemService.logger is replaced")
        [session] = P.external_sessions(own.server)
        await own.client.disconnect()
        await until(
            lambda: not private_subscriptions.subscriptions(own.server), what="the session's subscription deleted"
        )
        relies(closed == [session], "a closed session is reported once through unregister_external_session")
