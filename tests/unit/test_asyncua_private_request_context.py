"""Contract of scada/opcua/asyncua_private/request_context.py (the request being served, the gate
before each request and each method of a Call) with the installed asyncua.
"""

from __future__ import annotations

import inspect

import pytest
from asyncua import Client, Server, ua
from asyncua.server.address_space import MethodService
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.uaerrors import UaStatusCodeError

from scada.opcua.asyncua_private import request_context as P
from scada.opcua.asyncua_private.sessions import external_sessions
from scada.opcua.server import stop_asyncua_server
from scada.security.context import RequestContext, current
from scada.security.identity import Identity, Role
from tests.asyncua_contract import OI, SC, params, relied_on
from tests.integration.helpers import plain_asyncua_server

relies = relied_on("scada/opcua/asyncua_private/request_context.py")


def test_the_processor_and_method_service_have_what_is_relied_on():
    relies(
        params(UaProcessor._process_message) == ["self", "typeid", "requesthdr", "seqhdr", "body"],
        "UaProcessor._process_message(typeid, requesthdr, seqhdr, body)",
    )
    src = inspect.getsource(UaProcessor.process_message)
    relies(
        "await self._process_message(typeid, requesthdr, seqhdr, body)" in src and "except (ServiceError" in src,
        "UaProcessor.process_message answers a ServiceError of _process_message with a ServiceFault",
    )
    relies("except Exception" in src, "UaProcessor.process_message answers any other error (BadInternalError)")
    relies(params(MethodService.call)[1:] == ["methods"], "MethodService.call(methods)")
    relies(
        "typeid, requesthdr, seqhdr, body" in inspect.getsource(inspect.unwrap(UaProcessor._process_message)),
        "the wrapped UaProcessor._process_message reads as asyncua's",
    )
    relies(
        "permission_ruleset=self._permission_ruleset" in inspect.getsource(Server._setup_server_nodes),
        "Server.start gives each security policy Server._permission_ruleset",
    )
    relies(hasattr(Server(), "_permission_ruleset"), "Server._permission_ruleset")
    init = inspect.getsource(UaProcessor.__init__)
    relies('self.name = transport.get_extra_info("peername")' in init, "UaProcessor.name is the peer address")
    relies("self._connection = SecureConnection(" in init, "UaProcessor._connection")


@pytest.fixture
async def gated():
    """A stock server whose requests go through a recording gate and a method check."""
    server, url, ns = await plain_asyncua_server("gate", "urn:gate")
    seen: list[tuple[RequestContext, int]] = []
    refuse: dict[int, int] = {}
    methods: list[ua.NodeId] = []
    inside: list[tuple[RequestContext | None, object]] = []

    def identify(session) -> Identity:
        return Identity(
            "nobody" if session is None else f"user-{session.session_id.to_string()}", frozenset({Role.OBSERVER})
        )

    def gate(ctx: RequestContext, kind: int, body: P.Buffer) -> None:
        seen.append((ctx, kind))
        if kind in refuse:
            raise P.ServiceError(refuse[kind])

    def check(m: ua.CallMethodRequest) -> ua.StatusCode | None:
        methods.append(m.MethodId)
        return ua.StatusCode(SC.BadUserAccessDenied) if m.MethodId.Identifier == "no" else None

    async def who(parent):
        inside.append((current(), P.SESSION.get()))
        return [ua.Variant("done", ua.VariantType.String)]

    obj = await server.nodes.objects.add_object(ns, "Gate")
    await obj.add_method(ua.NodeId("yes", ns), "yes", who, [], [ua.VariantType.String])
    await obj.add_method(ua.NodeId("no", ns), "no", who, [], [ua.VariantType.String])
    P.hook_requests(server, identify, gate)
    P.hook_requests(server, identify, gate)  # idempotent
    P.hook_method_calls(server, check)
    P.hook_method_calls(server, check)  # idempotent
    await server.start()
    client = Client(url)
    await client.connect()
    try:
        yield server, client, ns, obj, seen, refuse, methods, inside
    finally:
        await client.disconnect()
        await stop_asyncua_server(server)


async def test_each_request_is_served_in_its_context_after_the_gate(gated):
    server, client, ns, obj, seen, refuse, methods, inside = gated
    kinds = [k for _, k in seen]
    relies(OI.CreateSessionRequest_Encoding_DefaultBinary in kinds, "the gate sees CreateSession")
    seen.clear()
    await client.nodes.server.read_browse_name()
    [(ctx, kind)] = seen
    [session] = external_sessions(server)
    relies(kind == OI.ReadRequest_Encoding_DefaultBinary, "the gate gets the request's encoding id")
    assert ctx.session_id == session.session_id.to_string() and ctx.identity.user == f"user-{ctx.session_id}"
    assert ctx.client_address.startswith("127.0.0.1:") and (ctx.security_mode, ctx.security_policy) == ("None", "None")
    assert current() is None, "the context is the request's only"

    # A method runs inside its request's context; a refused method is not run.
    results = await client.uaclient.call(
        [
            ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=ua.NodeId("no", ns)),
            ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=ua.NodeId("yes", ns)),
        ]
    )
    assert [r.StatusCode.value for r in results] == [SC.BadUserAccessDenied, SC.Good]
    assert results[1].OutputArguments[0].Value == "done"
    [(method_ctx, method_session)] = inside
    relies(method_ctx is not None and method_ctx.session_id == ctx.session_id, "method callbacks run in the request")
    relies(method_session is session, "the request's session is the processor's")
    assert methods == [ua.NodeId("no", ns), ua.NodeId("yes", ns)]

    # A refusal by the gate is the whole request's ServiceFault.
    refuse[OI.ReadRequest_Encoding_DefaultBinary] = SC.BadUserAccessDenied
    with pytest.raises(UaStatusCodeError) as err:
        await client.nodes.server.read_browse_name()
    relies(err.value.code == SC.BadUserAccessDenied, "a ServiceError of the gate is the request's ServiceFault")
