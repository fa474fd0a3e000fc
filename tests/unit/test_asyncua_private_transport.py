"""Contract of scada/opcua/asyncua_private/transport.py (each chunk's header checked before its
body is buffered) with the installed asyncua: the names it relies on, and its behaviour on a real
server on loopback spoken to over raw TCP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import socket
import time

import pytest_asyncio
from asyncua import Client, ua
from asyncua.server import binary_server_asyncio
from asyncua.server import server as server_module
from asyncua.server.uaprocessor import UaProcessor

from scada.opcua.asyncua_private import transport as P
from scada.opcua.asyncua_private.request_decoding import hook_request_decoding
from scada.opcua.request_codec import read_parameters
from scada.opcua.server import stop_asyncua_server
from tests.asyncua_contract import on_live, params, relied_on
from tests.integration.helpers import plain_asyncua_server, until
from tests.opcua_wire import RawClient, browse_request, error_of, expanded, header, read_request

relies = relied_on("scada/opcua/asyncua_private/transport.py")
SC = ua.StatusCodes
RULES = P.TransportRules(
    connections_per_client=4,
    publish_requests_in_flight=3,
    operations_per_request=50,
    write_buffer_high=256 << 10,
    write_buffer_max=4 << 20,
    write_stall=2.0,
)


def test_the_transport_internals_have_the_shapes_relied_on():
    relies(
        params(binary_server_asyncio.OPCUAProtocol.__init__)[1:]
        == ["iserver", "policies", "clients", "closing_tasks", "limits"],
        "OPCUAProtocol(iserver, policies, clients, closing_tasks, limits)",
    )
    relies(params(binary_server_asyncio.BinaryServer._make_protocol) == ["self"], "BinaryServer._make_protocol()")
    relies(
        "self._make_protocol" in inspect.getsource(binary_server_asyncio.BinaryServer.start),
        "BinaryServer.start gives asyncio its _make_protocol",
    )
    relies("BinaryServer(" in inspect.getsource(server_module.Server.start), "Server.start builds its BinaryServer")
    data_received = inspect.getsource(binary_server_asyncio.OPCUAProtocol.data_received)
    relies("self.messages.put_nowait((header, buf))" in data_received, "OPCUAProtocol.messages of (Header, Buffer)")
    loop = inspect.getsource(binary_server_asyncio.OPCUAProtocol._process_received_message_loop)
    relies("if not await self._process_one_msg(header, buf):" in loop, "_process_one_msg: False ends the loop")
    relies(
        "self._task = asyncio.create_task(" in inspect.getsource(binary_server_asyncio.OPCUAProtocol.connection_made),
        "OPCUAProtocol._task",
    )
    relies(params(UaProcessor.publish_request_limit)[1:] == ["subscription_count"], "UaProcessor.publish_request_limit")
    relies(
        "self.publish_request_limit(" in inspect.getsource(UaProcessor._process_message),
        "UaProcessor looks publish_request_limit up per Publish request",
    )
    relies("self._limits" in inspect.getsource(UaProcessor.__init__), "UaProcessor._limits (negotiated by Hello)")
    processor = inspect.getsource(UaProcessor)
    relies(
        processor.count("self._transport.") == processor.count("self._transport.write("),
        "UaProcessor only writes to its _transport",
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live():
    server, url, ns = await plain_asyncua_server("transport", "urn:transport")
    refused: list[tuple[str, int, str, str]] = []
    P.guard_transport(server, P.TransportRules(), lambda *r: None)
    P.guard_transport(server, RULES, lambda *r: refused.append(r))  # idempotent: the last rules apply
    await server.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        yield server, url, port, refused
    finally:
        await stop_asyncua_server(server)


def raw(live, source: str | None = None) -> RawClient:
    _server, url, port, _refused = live
    return RawClient(url, "127.0.0.1", port, source)


@on_live
async def test_a_client_is_served_through_the_checked_protocol(live):
    server, url, _port, _refused = live
    relies(P.transport_rules(server) == RULES, "the rules given last")
    async with Client(url) as client:
        state = await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()
        relies(state == ua.ServerState.Running, "a Read through our protocol")
        protocols = server.bserver.clients
        relies(all(type(p).__name__ == "_CheckedProtocol" for p in protocols), "BinaryServer.clients: our protocols")


@on_live
async def test_an_oversized_chunk_header_is_refused_before_its_body_arrives(live):
    c = raw(live)
    await c.connect()
    await c.hello()
    t0 = time.monotonic()
    c.send(header(b"MSG", 128 << 20) + bytes(4096))  # the announced 128 MiB never come
    error = error_of(await c.closed())
    assert error is not None and error.Error.value == SC.BadTcpMessageTooLarge, error
    # Closed at once rather than after the session's or the activation's timeout (seconds).
    assert time.monotonic() - t0 < 5
    await c.close()
    assert live[3][-1][1] == SC.BadTcpMessageTooLarge


@on_live
async def test_anything_but_a_hello_first_and_a_second_hello_are_refused(live):
    for hello_first, data, code in (
        (False, header(b"MSG", 64) + bytes(56), SC.BadTcpMessageTypeInvalid),
        (True, header(b"HEL", 64) + bytes(56), SC.BadTcpMessageTypeInvalid),
        (False, header(b"HEL", 1 << 20), SC.BadTcpMessageTooLarge),  # a Hello is small
    ):
        c = raw(live)
        await c.connect()
        if hello_first:
            await c.hello()
        c.send(data)
        error = error_of(await c.closed())
        assert error is not None and error.Error.value == code, (data[:8], error)
        await c.close()


@on_live
async def test_a_message_asyncua_cannot_decode_ends_the_connection(live):
    """asyncua logs the traceback and reads on: garbage would cost a traceback per message."""
    c = raw(live)
    await c.connect()
    await c.hello()
    opn = bytearray(c.encode(c.open_request(), ua.MessageType.SecureOpen))
    opn[12:16] = b"\xff\xff\xff\x7f"  # the policy URI's length: far beyond the chunk
    c.send(bytes(opn))
    error = error_of(await c.closed())
    assert error is not None and error.Error.value == SC.BadDecodingError, error
    await c.close()


@on_live
async def test_before_activation_a_message_of_many_chunks_is_refused(live):
    """asyncua #1962/#1963: intermediate chunks never finished, held per unauthenticated connection."""
    _server, url, port, _refused = live
    c = RawClient(url, "127.0.0.1", port, chunk=2048)
    await c.connect()
    await c.hello()
    await c.open()
    request = c.create_session_request()
    request.Parameters.ClientNonce = bytes(40_000)  # 20 chunks of 2 KB: more than 16, less than 64 KiB
    c.send(c.encode(request))
    error = error_of(await c.closed())
    assert error is not None and error.Error.value == SC.BadRequestTooLarge, error
    await c.close()


@on_live
async def test_after_activation_the_session_sends_what_hello_negotiated(live):
    c = raw(live)
    await c.session()
    # 40 long NodeIds: about 120 KB, more than a pre-session message may hold
    many = [ua.NodeId("x" * 3000 + str(k), 1) for k in range(40)]
    response = await c.request(read_request(many))
    assert isinstance(response, ua.ReadResponse) and len(response.Results) == 40
    await c.close()


@on_live
async def test_connections_per_client_address_are_capped(live):
    clients = [raw(live, "127.0.0.3") for _ in range(RULES.connections_per_client)]
    for c in clients:
        await c.connect()
        await c.hello()
    extra = raw(live, "127.0.0.3")
    await extra.connect()
    error = error_of(await extra.closed())
    assert error is not None and error.Error.value == SC.BadTcpNotEnoughResources
    await extra.close()
    other = raw(live, "127.0.0.4")  # another address is not concerned
    await other.connect()
    await other.hello()
    await other.close()
    await clients[0].close()
    server = live[0]
    await until(
        lambda: sum(p.peer_name[0] == "127.0.0.3" for p in server.bserver.clients) < RULES.connections_per_client,
        what="the closed connection gone from the server",
    )
    again = raw(live, "127.0.0.3")  # its place was given back
    await again.connect()
    await again.hello()
    for c in [*clients[1:], again]:
        await c.close()


@on_live
async def test_publish_requests_in_flight_are_capped_per_connection(live):
    c = raw(live)
    await c.session()
    sub = await c.request(
        ua.CreateSubscriptionRequest(
            Parameters=ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=60000,
                RequestedLifetimeCount=30,
                RequestedMaxKeepAliveCount=10,
                PublishingEnabled=True,
            )
        )
    )
    assert isinstance(sub, ua.CreateSubscriptionResponse)
    first = await c.request(ua.PublishRequest())  # answered at once: the subscription's first message
    assert isinstance(first, ua.PublishResponse)
    # The next keep-alive is minutes away: these wait, and one more than the cap evicts the oldest.
    for _ in range(RULES.publish_requests_in_flight + 1):
        c.send(c.encode(ua.PublishRequest()))
    evicted = await c.answer()
    assert isinstance(evicted, ua.ServiceFault), evicted
    assert evicted.ResponseHeader.ServiceResult.value == SC.BadTooManyPublishRequests
    assert evicted.ResponseHeader.RequestHandle == first.ResponseHeader.RequestHandle + 1
    await c.close()


@on_live
async def test_operations_are_counted_before_the_request_is_decoded(live):
    relies(params(UaProcessor.process_message)[1:] == ["seqhdr", "body"], "UaProcessor.process_message(seqhdr, body)")
    from asyncua.server import uaprocessor

    relies(
        "typeid = nodeid_from_binary(body)\n        requesthdr = struct_from_binary(ua.RequestHeader, body)"
        in inspect.getsource(uaprocessor),  # the module: the class's method may be our wrapper by now
        "process_message's body starts with the TypeId, then the RequestHeader",
    )
    relies(params(UaProcessor.send_response)[1:4] == ["requesthandle", "seqhdr", "response"], "send_response")
    hook_request_decoding({ua.ReadParameters: read_parameters})  # our decoder of Reads: counted all the same
    c = raw(live)
    await c.session()
    state = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)
    too_many = await c.request(read_request([state] * 51))
    assert isinstance(too_many, ua.ServiceFault)
    assert too_many.ResponseHeader.ServiceResult.value == SC.BadTooManyOperations
    assert live[3][-1][1] == SC.BadTooManyOperations and live[3][-1][3] == "Read"
    # A length that lies (2**31 - 1 items in a few bytes): refused by its count, never decoded.
    lying = bytearray(c.encode(read_request([state])))
    at = len(lying) - 18 - 4  # NodesToRead's length: before the one ReadValueId (18 bytes), at the end
    assert lying[at : at + 4] == b"\x01\x00\x00\x00"
    lying[at : at + 4] = b"\xff\xff\xff\x7f"
    c.send(bytes(lying))
    refused = await c.answer()
    assert isinstance(refused, ua.ServiceFault)
    assert refused.ResponseHeader.ServiceResult.value == SC.BadTooManyOperations
    fine = await c.request(read_request([state] * 50))  # the connection serves on
    assert isinstance(fine, ua.ReadResponse) and len(fine.Results) == 50
    await c.close()


@on_live
async def test_unsent_responses_over_the_cap_abort_the_connection_at_once(live):
    server, _url, _port, refused = live
    # Requests never made to wait (the high mark above the cap) and a stall no test waits for:
    # only the cap can close it.
    capped = dataclasses.replace(RULES, write_buffer_high=64 << 20, write_buffer_max=1 << 20, write_stall=3600.0)
    P.guard_transport(server, capped, lambda *r: refused.append(r))
    try:
        slow = raw(live)
        await slow.session()
    finally:
        P.guard_transport(server, RULES, lambda *r: refused.append(r))  # later connections: the module's rules
    sock = slow.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel takes little of it
    where = "{}:{}".format(*sock.getsockname())
    request = browse_request([ua.NodeId(ua.ObjectIds.Server)] * RULES.operations_per_request)
    for _ in range(300):  # never read: ~45 MB of responses, far more than the socket buffers take
        slow.send(slow.encode(request))
    await until(lambda: any(r[0] == where for r in refused), what="the connection over the cap aborted")
    [over] = [r for r in refused if r[0] == where]
    assert over[1] == SC.BadTcpNotEnoughResources and "unsent responses over the limit" in over[2], over
    await until(lambda: all("{}:{}".format(*p.peer_name) != where for p in server.bserver.clients), what="closed")
    await slow.close()


@on_live
async def test_expanded_nodeid_flags_do_not_get_a_request_past_the_count(live):
    c = raw(live)
    await c.session()
    state = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)
    for uri in (None, "urn:elsewhere"):
        # The AuthenticationToken (after the 4-byte TypeId) with flags: asyncua reads it and never
        # compares it; the operations are counted all the same.
        c.send(c.encode(read_request([state] * 51), edit=functools.partial(expanded, at=4, uri=uri)))
        too_many = await c.answer()
        assert isinstance(too_many, ua.ServiceFault), (uri, too_many)
        assert too_many.ResponseHeader.ServiceResult.value == SC.BadTooManyOperations
        c.send(c.encode(read_request([state] * 2), edit=functools.partial(expanded, at=4, uri=uri)))
        fine = await c.answer()
        assert isinstance(fine, ua.ReadResponse) and len(fine.Results) == 2
    # The TypeId with flags: asyncua would take it for the Read's; refused undecoded, any size.
    for n in (1, 51):
        c.send(c.encode(read_request([state] * n), edit=functools.partial(expanded, at=0)))
        refused = await c.answer()
        assert isinstance(refused, ua.ServiceFault), (n, refused)
        assert refused.ResponseHeader.ServiceResult.value == SC.BadDecodingError
        assert refused.ResponseHeader.RequestHandle == c.request_id
        assert live[3][-1][1:] == (SC.BadDecodingError, "a request that cannot be counted undecoded", "Read")
    fine = await c.request(read_request([state]))  # the connection serves on
    assert isinstance(fine, ua.ReadResponse)
    await c.close()


def test_operations_of_reads_the_count_of_each_request_kind():
    from asyncua.ua.ua_binary import struct_to_binary

    header = ua.RequestHeader(
        AuthenticationToken=ua.NodeId(b"\x07" * 32, 1), AuditEntryId="audit", RequestHandle=77, TimeoutHint=5
    )
    ids = [ua.NodeId(k, 2) for k in range(7)]
    for request, service in (
        (read_request(ids), "Read"),
        (ua.RegisterNodesRequest(Parameters=ua.RegisterNodesParameters(NodesToRegister=ids)), "RegisterNodes"),
        (ua.CallRequest(Parameters=ua.CallParameters(MethodsToCall=[ua.CallMethodRequest()] * 7)), "Call"),
        (
            ua.CreateMonitoredItemsRequest(
                Parameters=ua.CreateMonitoredItemsParameters(ItemsToCreate=[ua.MonitoredItemCreateRequest()] * 7)
            ),
            "CreateMonitoredItems",
        ),
        (
            ua.SetPublishingModeRequest(Parameters=ua.SetPublishingModeParameters(SubscriptionIds=list(range(7)))),
            "SetPublishingMode",
        ),
        (
            ua.PublishRequest(
                Parameters=ua.PublishParameters(SubscriptionAcknowledgements=[ua.SubscriptionAcknowledgement()] * 7)
            ),
            "Publish",
        ),
    ):
        request.RequestHeader = header
        body = b"pad" + struct_to_binary(request)
        assert P.operations_of(body, 3) == (service, 7, 77), service
        # Short: counted when the count is there, else refused undecoded (None), never an error.
        assert P.operations_of(body[:-30], 3) in ((service, None, 77), (service, 7, 77))
        # ExpandedNodeId flags on the AuthenticationToken (after the 4-byte TypeId): skipped as
        # asyncua reads them, the operations counted all the same.
        for uri in (None, "urn:elsewhere"):
            assert P.operations_of(b"pad" + expanded(body[3:], 4, uri), 3) == (service, 7, 77), (service, uri)
        # Flags on the TypeId (asyncua takes it for the request's): refused undecoded.
        assert P.operations_of(b"pad" + expanded(body[3:], 0), 3) == (service, None, 77), service
    endpoints = ua.GetEndpointsRequest(RequestHeader=header)
    assert P.operations_of(b"pad" + struct_to_binary(endpoints), 3) is None
    assert P.operations_of(b"pad" + expanded(struct_to_binary(endpoints), 0), 3) == ("GetEndpoints", None, 77)
    # A length asyncua would read backwards (the AuditEntryId's, -5): not counted, refused.
    request = read_request(ids[:1])
    request.RequestHeader = header
    body = bytearray(struct_to_binary(request))
    at = body.index(b"\x05\x00\x00\x00audit")
    body[at : at + 4] = (-5).to_bytes(4, "little", signed=True)
    assert P.operations_of(bytes(body), 0) == ("Read", None, 77)


@on_live
async def test_a_client_that_stops_reading_is_held_in_bounded_memory_then_disconnected(live):
    relies(hasattr(asyncio.WriteTransport, "set_write_buffer_limits"), "asyncio's write-buffer limits")
    server, _url, _port, refused = live
    slow = raw(live)
    await slow.session()
    sock = slow.writer.get_extra_info("socket")
    where = "{}:{}".format(*sock.getsockname())
    [protocol] = [p for p in server.bserver.clients if "{}:{}".format(*p.peer_name) == where]
    peak = 0

    async def sample() -> None:  # the bytes the server holds for the connection, while it is open
        nonlocal peak
        while protocol.transport is not None and not protocol.transport.is_closing():
            peak = max(peak, protocol.transport.get_write_buffer_size())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    # The client never reads again: ~150 KB of references per response, 300 requests (~45 MB
    # of responses, several times the cap) sent at once.
    request = browse_request([ua.NodeId(ua.ObjectIds.Server)] * RULES.operations_per_request)
    for _ in range(300):
        slow.send(slow.encode(request))
    other = raw(live)  # another client is served all along
    await other.session()
    state = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)
    for _ in range(3):
        answer = await other.request(read_request([state]))
        assert isinstance(answer, ua.ReadResponse) and answer.Results[0].StatusCode.is_good()
    await until(lambda: protocol not in server.bserver.clients, what="the connection that does not read closed")
    await sampler
    assert 0 < peak <= RULES.write_buffer_max, peak
    [stalled] = [r for r in refused if r[0] == where]
    assert stalled[1] == SC.BadTcpNotEnoughResources and stalled[3] == "connection", stalled
    answer = await other.request(read_request([state]))  # and after
    assert isinstance(answer, ua.ReadResponse)
    await other.close()
    await slow.close()
