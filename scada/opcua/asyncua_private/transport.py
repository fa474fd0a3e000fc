"""asyncua internals: the server's TCP transport, checked chunk header by chunk header before
anything is buffered (scada/opcua/bounds.py); checked by tests/unit/test_asyncua_private_transport.py.

asyncua's ``OPCUAProtocol.data_received`` appends every read to a ``bytes`` buffer
(``self._buffer += data``: quadratic) and waits until the chunk its header announces is whole
before any size check: a header announcing 128 MiB cost seconds of CPU and the announced memory,
and the connection stayed open. Our protocol reads the 8-byte header as soon as it arrives and
refuses, with an OPC UA ErrorMessage and the connection closed, a chunk larger than the
receive buffer negotiated by Hello (before Hello: a Hello's size), a message of the wrong type
for the connection's state, and, before the session is activated, a message of more than a few
chunks or bytes (asyncua #1962/#1963: unfinished intermediate chunks of GetEndpoints held up to
100 MB per unauthenticated connection). Its buffer is a ``bytearray`` trimmed once per read.

asyncua never looks at the write side: a client that sends requests and stops reading made the
server buffer their responses without limit (hundreds of MB for one connection). Ours sets the
transport's write-buffer limits: above ``write_buffer_high`` unsent bytes it stops reading and
processing that connection's requests until the client has read them down; still paused after
``write_stall`` seconds, or holding more than ``write_buffer_max`` bytes at any time, the
connection is aborted (its unsent bytes dropped). Other connections are not affected.

Relied on: ``BinaryServer._make_protocol`` (the protocol factory ``Server.start``'s BinaryServer
gives asyncio, looked up when it starts) with ``iserver``, ``_policies``, ``clients``,
``closing_tasks``, ``limits``; ``OPCUAProtocol(iserver=, policies=, clients=, closing_tasks=,
limits=)``, its ``connection_made``/``connection_lost``, ``transport``, ``processor``,
``peer_name``, ``_task`` (its processing loop) and ``messages`` (the queue of ``(Header, Buffer
after the header)`` that loop takes and gives to ``_process_one_msg``, which returns False to end
it); ``UaProcessor.process_message(seqhdr, body)`` (a Buffer at the request's TypeId:
``_data``, ``cur_pos``), ``iserver``, ``name`` (the peer) and ``send_response(handle, seqhdr,
response)``; ``UaProcessor.session``, ``UaProcessor._limits.max_recv_buffer`` (the
receive buffer Hello negotiated), ``UaProcessor._transport`` (only ``write`` called after the
processor is made: we replace it by our bounded writer) and ``UaProcessor.publish_request_limit(count)``;
``ua_binary.header_from_binary`` and ``uatcp_to_binary``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common.utils import Buffer
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import header_from_binary, uatcp_to_binary

from scada.opcua.typed_ua import StatusCode

__all__ = ["HEADER", "Refused", "TransportRules", "guard_transport", "operations_of", "transport_rules"]

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds a refused connection stays half-closed at most (its input dropped)
HEADER = 8  # MessageType (3 bytes), ChunkType (1), MessageSize (UInt32): all a check needs
_HELLO, _OPEN, _MSG, _CLOSE = b"HEL", b"OPN", b"MSG", b"CLO"
_SECURE = (_OPEN, _MSG, _CLOSE)
_FINAL, _INTERMEDIATE, _ABORT = ord("F"), ord("C"), ord("A")
# asyncua's MessageType is a class of bytes constants, annotated as if its members were instances.
_ERROR = cast(ua.MessageType, ua.MessageType.Error)


@dataclasses.dataclass(frozen=True)
class TransportRules:
    """What one TCP connection may send before it is refused (sizes in bytes, headers included)."""

    # A Hello is 32 bytes and an EndpointUrl of at most 4096 (Part 6, 7.1.2.3).
    hello_size: int = 8192
    # Before ActivateSession: one OpenSecureChannel or CreateSession with certificates fits.
    pre_session_message: int = 64 << 10
    pre_session_chunks: int = 16
    connections_per_client: int | None = None  # per client address; None: no cap
    publish_requests_in_flight: int | None = None  # per connection; None: asyncua's (subscriptions + 10)
    # Operations of one request, counted before the request is decoded; None: not counted here.
    operations_per_request: int | None = None
    history_nodes_per_request: int | None = None  # HistoryRead's (else operations_per_request)
    # Responses not yet taken by the client: above ``write_buffer_high`` bytes its requests wait
    # (and are not read) until a quarter of that is left; paused ``write_stall`` seconds, or above
    # ``write_buffer_max`` bytes (one large response on top of the high mark), it is aborted.
    write_buffer_high: int = 1 << 20
    write_buffer_max: int = 64 << 20
    write_stall: float = 30.0


Refused = Callable[[str, int, str, str], None]
"""Told of each refusal: (client address "host:port", status code, why, what: "connection" or the
service refused). Must not raise."""

_GUARD = "_scada_transport_guard"
_FACTORY_HOOKED = "_scada_transport_hooked"


@dataclasses.dataclass
class _Guard:
    rules: TransportRules
    refused: Refused
    per_client: Counter[str] = dataclasses.field(default_factory=Counter)


def guard_transport(server: Server, rules: TransportRules, refused: Refused) -> None:
    """Give ``server``'s connections our checked protocol (call before ``server.start``).

    A later call replaces the rules. Other asyncua servers of the process keep asyncua's protocol:
    the factory is hooked once, at class level, and asks the server being served for its guard.
    """
    iserver = server.iserver
    old = getattr(iserver, _GUARD, None)
    setattr(iserver, _GUARD, _Guard(rules, refused, old.per_client if old is not None else Counter()))
    if rules.operations_per_request is not None:
        _count_before_decoding()
    factory = BinaryServer._make_protocol
    if getattr(factory, _FACTORY_HOOKED, False):
        return

    def make_protocol(self: BinaryServer) -> OPCUAProtocol:
        guard: _Guard | None = getattr(self.iserver, _GUARD, None)
        if guard is None:
            return factory(self)
        return _CheckedProtocol(
            guard,
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )

    setattr(make_protocol, _FACTORY_HOOKED, True)
    BinaryServer._make_protocol = make_protocol  # type: ignore[method-assign]


# -- operations counted before decoding ---------------------------------------------------------
#
# asyncua decodes a request's parameters whole (~30 us per item) before any service sees them:
# a 16 MiB CreateMonitoredItems of 250,000 items cost seconds of CPU and hundreds of MB before a
# per-request cap could refuse it. ``UaProcessor.process_message`` (class level, wrapping what is
# there) first skips the request's TypeId and RequestHeader with a few struct reads and reads the
# length of its operations' list, where the parameters put it at a fixed offset; beyond the cap,
# a ServiceFault Bad_TooManyOperations, the request never decoded. The skipping reads exactly
# what asyncua's decoder reads (ExpandedNodeId flags included): a request of a counted service
# that cannot be read this way (a short message, an unknown encoding, a negative length asyncua
# would read backwards), and any request whose TypeId carries ExpandedNodeId flags (asyncua
# takes it for the plain NodeId), are refused Bad_DecodingError, never left to asyncua: a
# skipping that disagreed with asyncua's decoding would let a request past uncounted.

_OI = ua.ObjectIds
# Request encoding id -> (service, offset of its operations' array length in its parameters:
# the fields before it have fixed sizes).
_FIRST_ARRAY: dict[int, tuple[str, int]] = {
    _OI.ReadRequest_Encoding_DefaultBinary: ("Read", 12),  # MaxAge (Double), TimestampsToReturn
    _OI.WriteRequest_Encoding_DefaultBinary: ("Write", 0),
    _OI.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary: ("TranslateBrowsePathsToNodeIds", 0),
    _OI.CallRequest_Encoding_DefaultBinary: ("Call", 0),
    _OI.CreateMonitoredItemsRequest_Encoding_DefaultBinary: ("CreateMonitoredItems", 8),  # SubscriptionId, Timestamps
    _OI.ModifyMonitoredItemsRequest_Encoding_DefaultBinary: ("ModifyMonitoredItems", 8),
    _OI.DeleteMonitoredItemsRequest_Encoding_DefaultBinary: ("DeleteMonitoredItems", 4),  # SubscriptionId
    _OI.SetMonitoringModeRequest_Encoding_DefaultBinary: ("SetMonitoringMode", 8),  # SubscriptionId, Mode
    _OI.RegisterNodesRequest_Encoding_DefaultBinary: ("RegisterNodes", 0),
    _OI.UnregisterNodesRequest_Encoding_DefaultBinary: ("UnregisterNodes", 0),
    _OI.PublishRequest_Encoding_DefaultBinary: ("Publish", 0),
    _OI.DeleteSubscriptionsRequest_Encoding_DefaultBinary: ("DeleteSubscriptions", 0),
    _OI.SetPublishingModeRequest_Encoding_DefaultBinary: ("SetPublishingMode", 1),  # PublishingEnabled
    _OI.TransferSubscriptionsRequest_Encoding_DefaultBinary: ("TransferSubscriptions", 0),
    # Offset -1: fields of variable size before the list, skipped one by one (see operations_of).
    _OI.BrowseRequest_Encoding_DefaultBinary: ("Browse", -1),
    _OI.HistoryReadRequest_Encoding_DefaultBinary: ("HistoryRead", -1),
}
_COUNTED = "_scada_operations_counted"


def _i32(d: bytes, p: int) -> int:
    if p + 4 > len(d):
        raise IndexError(p)
    return int.from_bytes(d[p : p + 4], "little", signed=True)


_URI_FLAG, _SERVER_FLAG = 0x80, 0x40  # ExpandedNodeId: a NamespaceUri, a ServerIndex follows
_EXPANDED = _URI_FLAG | _SERVER_FLAG


def _after_string(d: bytes, p: int) -> int:
    """The position after the String or ByteString at ``p`` (-1: null)."""
    n = _i32(d, p)
    if n < -1:  # asyncua would move its read position backwards: not read the same way
        raise ValueError(f"a length of {n}")
    return p + 4 + max(n, 0)


def _after_nodeid(d: bytes, p: int) -> int:
    """The position after the NodeId at ``p``, ExpandedNodeId flags read as asyncua's
    ``nodeid_from_binary`` reads them (Part 6, 5.2.2.9-10)."""
    flags = d[p] & _EXPANDED
    enc = d[p] & ~_EXPANDED
    if enc == 0:
        p += 2
    elif enc == 1:
        p += 4
    elif enc == 2:
        p += 7
    elif enc in (3, 5):  # String, ByteString: namespace (2), then length (4) and bytes
        p = _after_string(d, p + 3)
    elif enc == 4:
        p += 19
    else:
        raise ValueError(f"NodeId encoding {enc:#x}")
    if flags & _URI_FLAG:
        p = _after_string(d, p)
    if flags & _SERVER_FLAG:
        p += 4
    return p


def _after_extension_object(d: bytes, p: int) -> int:
    """The position after the ExtensionObject at ``p``: TypeId, encoding, and a body when it has one."""
    p = _after_nodeid(d, p)
    encoding = d[p]
    p += 1
    if encoding & 1:
        if _i32(d, p) < 0:  # asyncua reads -1 as "the rest of the message": not skipped the same way
            raise ValueError("an ExtensionObject body of unknown length")
        p = _after_string(d, p)
    return p


def _request_typeid(d: bytes, p: int) -> tuple[int, bool] | None:
    """(numeric identifier, ExpandedNodeId flags set) of a namespace-0 numeric TypeId at ``p``, else None."""
    enc = d[p] & ~_EXPANDED
    if enc == 1 and d[p + 1] == 0:  # FourByte, namespace 0: how request types are sent
        typeid = d[p + 2] | d[p + 3] << 8
    elif enc == 2 and d[p + 1] == 0 and d[p + 2] == 0:
        typeid = _i32(d, p + 3) & 0xFFFFFFFF
    else:
        return None
    return typeid, bool(d[p] & _EXPANDED)


def _service_name(typeid: int) -> str:
    return ua.ObjectIdNames.get(typeid, str(typeid)).removesuffix("Request_Encoding_DefaultBinary")


def operations_of(d: bytes, p: int) -> tuple[str, int | None, int] | None:
    """(service, its operations' count, RequestHandle) of the request message body at ``p``; the
    count None when the request must be refused undecoded (a counted service's request that cannot
    be read here, or any request whose TypeId has ExpandedNodeId flags). None for a request without
    a list of operations."""
    try:
        found = _request_typeid(d, p)
    except IndexError:
        return None  # not even a TypeId: asyncua's decoding fails before any parameter
    if found is None:
        return None  # not a namespace-0 numeric TypeId: no service asyncua knows
    typeid, expanded = found
    known = _FIRST_ARRAY.get(typeid)
    if known is None and not expanded:
        return None
    service = known[0] if known is not None else _service_name(typeid)
    handle = 0
    try:
        p = _after_nodeid(d, p)  # the TypeId, then the RequestHeader:
        p = _after_nodeid(d, p) + 8  # AuthenticationToken, Timestamp
        handle = _i32(d, p) & 0xFFFFFFFF  # RequestHandle, ReturnDiagnostics
        p += 8
        p = _after_string(d, p) + 4  # AuditEntryId, TimeoutHint
        p = _after_extension_object(d, p)  # AdditionalHeader
        if expanded or known is None:
            return service, None, handle
        offset = known[1]
        if service == "Browse":  # View: ViewId, Timestamp, ViewVersion; RequestedMaxReferencesPerNode
            offset = _after_nodeid(d, p) - p + 16
        elif service == "HistoryRead":  # HistoryReadDetails; TimestampsToReturn, ReleaseContinuationPoints
            offset = _after_extension_object(d, p) - p + 5
        return service, _i32(d, p + offset), handle
    except (IndexError, ValueError):
        return service, None, handle


def _count_before_decoding() -> None:
    """Make every UaProcessor count a request's operations before decoding it (idempotent)."""
    if getattr(UaProcessor, _COUNTED, False):
        return
    process_message = UaProcessor.process_message

    # wraps: what reads asyncua's source or signature (contract tests) still reads asyncua's.
    @functools.wraps(process_message)
    async def counted(self: UaProcessor, seqhdr: Any, body: Buffer) -> Any:
        guard: _Guard | None = getattr(self.iserver, _GUARD, None)
        cap = guard.rules.operations_per_request if guard is not None else None
        if cap is not None and guard is not None:
            found = operations_of(body._data, body.cur_pos)
            if found is not None:
                service, n, handle = found
                if service == "HistoryRead":
                    cap = guard.rules.history_nodes_per_request or cap
                if n is None or n > cap:
                    if n is None:
                        code, why = ua.StatusCodes.BadDecodingError, "a request that cannot be counted undecoded"
                    else:
                        code, why = (
                            ua.StatusCodes.BadTooManyOperations,
                            f"{n} operations in one request (at most {cap})",
                        )
                    fault = ua.ServiceFault()
                    fault.ResponseHeader.ServiceResult = StatusCode(code)
                    self.send_response(handle, seqhdr, fault)
                    guard.refused(_address(self.name)[1], code, why, service)
                    return True
        return await process_message(self, seqhdr, body)

    UaProcessor.process_message = counted  # type: ignore[method-assign]
    setattr(UaProcessor, _COUNTED, True)


def transport_rules(server: Server) -> TransportRules | None:
    """The rules ``server``'s connections are checked by (None: asyncua's protocol)."""
    guard: _Guard | None = getattr(server.iserver, _GUARD, None)
    return guard.rules if guard is not None else None


def _address(peer: Any) -> tuple[str, str]:
    """(host, "host:port") of a peer name (a tuple for IP sockets)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), f"{peer[0]}:{peer[1]}"
    return str(peer), str(peer)


class _Silenced:
    """What a refused connection's processor writes to: nothing is sent."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _BoundedWriter:
    """What a connection's processor writes to: the transport, the connection aborted as soon as
    its unsent bytes pass the guard's ``write_buffer_max`` (one O(1) size check per write)."""

    def __init__(self, protocol: _CheckedProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def write(self, data: bytes) -> None:
        transport = self._transport
        transport.write(data)
        if transport.get_write_buffer_size() > self._protocol._guard.rules.write_buffer_max:
            self._protocol._stalled("unsent responses over the limit")

    def close(self) -> None:
        self._transport.close()


class _CheckedProtocol(OPCUAProtocol):
    """asyncua's protocol, each chunk's header checked before its body is buffered."""

    def __init__(self, guard: _Guard, **kw: Any) -> None:
        super().__init__(**kw)
        self._guard = guard
        self._pending = bytearray()  # asyncua's ``_buffer`` stays unused
        self._host: str | None = None  # counted in the guard's per-client connections
        self._where = ""
        self._hello = False
        self._refused = False
        self._msg_bytes = 0  # the secure message being received: its chunks so far
        self._msg_chunks = 0
        self._writable = asyncio.Event()  # cleared while the client does not read its responses
        self._writable.set()
        self._stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host, self._where = _address(transport.get_extra_info("peername"))
        cap = self._guard.rules.connections_per_client
        if cap is not None and self._guard.per_client[host] >= cap:
            self._refuse(transport, ua.StatusCodes.BadTcpNotEnoughResources, f"more than {cap} connections from {host}")
            return
        super().connection_made(transport)
        if self.processor is None:  # refused by asyncua (its server-wide max_connections)
            self._refused = True
            return
        self._host = host
        self._guard.per_client[host] += 1
        rules = self._guard.rules
        cast(asyncio.WriteTransport, transport).set_write_buffer_limits(
            high=rules.write_buffer_high, low=rules.write_buffer_high // 4
        )
        self.processor._transport = _BoundedWriter(self, cast(asyncio.Transport, transport))
        in_flight = self._guard.rules.publish_requests_in_flight
        if in_flight is not None:
            # asyncua's limit counts the subscriptions of the whole server: one client could queue
            # a Publish request per subscription of every other client. Beyond ours, asyncua
            # answers the oldest Bad_TooManyPublishRequests (Part 4, 5.13.5).
            def publish_request_limit(subscription_count: int) -> int:
                return in_flight

            self.processor.publish_request_limit = publish_request_limit  # type: ignore[method-assign]

    def connection_lost(self, ex: BaseException | None) -> None:
        if self._host is not None:
            counts = self._guard.per_client
            counts[self._host] -= 1
            if counts[self._host] <= 0:
                del counts[self._host]
            self._host = None
        self._pending = bytearray()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        super().connection_lost(ex)

    def pause_writing(self) -> None:
        """The client has ``write_buffer_high`` bytes of responses unread: read and process none
        of its requests until it takes them, for ``write_stall`` seconds at most."""
        if self._refused or self.transport is None:
            return
        self._writable.clear()
        self.transport.pause_reading()
        delay = self._guard.rules.write_stall
        self._stall_timer = asyncio.get_running_loop().call_later(delay, self._stalled, f"no read for {delay:g} s")

    def resume_writing(self) -> None:
        """The client read its responses down to a quarter of the high mark: serve it again."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._refused or self.transport is None:
            return
        self._writable.set()
        self.transport.resume_reading()

    def _stalled(self, why: str) -> None:
        """Abort a connection whose client does not read: its unsent bytes are dropped."""
        if self._refused:
            return
        size = self.transport.get_write_buffer_size() if self.transport is not None else 0
        self._refuse(
            self.transport, ua.StatusCodes.BadTcpNotEnoughResources, f"{why} ({size} bytes unsent)", abort=True
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        buf = self._pending
        buf += data
        start = 0
        try:
            while len(buf) - start >= HEADER:
                kind = bytes(buf[start : start + 3])
                size = int.from_bytes(buf[start + 4 : start + 8], "little")
                problem = self._check(kind, buf[start + 3], size)
                if problem is not None:
                    self._refuse(self.transport, *problem)
                    return
                if len(buf) - start < size:
                    break  # at most one chunk's allowed size is held
                body = Buffer(bytes(buf[start : start + size]))
                start += size
                header = header_from_binary(body)
                try:
                    self.messages.put_nowait((header, body))
                except asyncio.QueueFull:
                    # as asyncua: the processor is that far behind, the client is not waiting for answers
                    self._refuse(self.transport, ua.StatusCodes.BadTcpNotEnoughResources, "too many messages queued")
                    return
        except Exception:  # noqa: BLE001 - fail closed: a check that breaks refuses the connection
            log.exception("transport check failed for %s; connection closed", self._where)
            self._refuse(self.transport, ua.StatusCodes.BadTcpInternalError, "transport check failed")
            return
        if start:
            del buf[:start]  # one move of the incomplete rest per read, not per message

    async def _process_one_msg(self, header: Any, buf: Buffer) -> bool:
        if not self._writable.is_set():  # the client is not reading: its requests wait
            await self._writable.wait()
            if self._refused:
                return False
        try:
            return await super()._process_one_msg(header, buf)
        except Exception as exc:  # noqa: BLE001 - a message asyncua cannot decode ends the connection
            # asyncua logs the traceback and reads on: a client sending garbage would cost a
            # formatted traceback per message, as often as it likes.
            self._refuse(self.transport, ua.StatusCodes.BadDecodingError, f"undecodable message: {exc!r:.200}")
            return False

    def _check(self, kind: bytes, chunk_type: int, size: int) -> tuple[int, str] | None:
        """(status code, why) when the chunk whose header this is must be refused, else None."""
        if not self._hello:
            if kind != _HELLO:
                return ua.StatusCodes.BadTcpMessageTypeInvalid, f"{kind.decode('latin-1')!r} before Hello"
            if not HEADER < size <= self._guard.rules.hello_size:
                return ua.StatusCodes.BadTcpMessageTooLarge, f"a Hello of {size} bytes"
            if chunk_type != _FINAL:
                return ua.StatusCodes.BadTcpMessageTypeInvalid, "a Hello in chunks"
            self._hello = True
            return None
        if kind not in _SECURE:
            return ua.StatusCodes.BadTcpMessageTypeInvalid, f"{kind.decode('latin-1')!r} after Hello"
        if chunk_type not in (_FINAL, _INTERMEDIATE, _ABORT):
            return ua.StatusCodes.BadTcpMessageTypeInvalid, f"chunk type {chunk_type!r}"
        assert self.processor is not None  # set with the connection (a refused one reads nothing)
        # Negotiated by Hello; a client announcing 0 (no limit) gets the server's own.
        negotiated, own = self.processor._limits.max_recv_buffer, self.limits.max_recv_buffer
        limit = negotiated if 0 < negotiated <= own else own
        if size <= HEADER + 4 or size > limit:
            return ua.StatusCodes.BadTcpMessageTooLarge, f"a chunk of {size} bytes (receive buffer {limit})"
        self._msg_chunks += 1
        self._msg_bytes += size
        chunks, total = self._msg_chunks, self._msg_bytes
        if chunk_type != _INTERMEDIATE:
            self._msg_chunks = self._msg_bytes = 0
        session = self.processor.session
        if session is None or not session.is_activated():
            rules = self._guard.rules
            if chunks > rules.pre_session_chunks or total > rules.pre_session_message:
                return (
                    ua.StatusCodes.BadRequestTooLarge,
                    f"a message of {chunks} chunks, {total} bytes so far before ActivateSession "
                    f"(at most {rules.pre_session_chunks}, {rules.pre_session_message})",
                )
        return None

    def _refuse(self, transport: Any, code: int, why: str, abort: bool = False) -> None:
        """Answer an ErrorMessage and end the connection: nothing more of it is read or processed.
        ``abort``: the client does not read; nothing is sent, its unsent bytes are dropped now."""
        self._refused = True
        self._pending = bytearray()
        self._writable.set()  # a processing loop waiting for the client ends (it sees _refused)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()  # messages queued before this one are not answered any more
        if self.processor is not None:
            # Its subscriptions may still publish until the session goes: nothing more is sent
            # (a write after write_eof raises).
            self.processor._transport = _Silenced()
        if transport is not None and abort:
            transport.abort()
        elif transport is not None:
            error = ua.ErrorMessage(StatusCode(code), ua.String(why))
            transport.write(uatcp_to_binary(_ERROR, error))
            if transport.can_write_eof():
                # Closing a socket with unread input resets it, and the reset can destroy the
                # ErrorMessage before the client reads it: end our side now (the client reads
                # the error, then the end), drop what still comes, close when the client does
                # or abort after LINGER seconds (a close would wait for a client that does not
                # read to take the unsent bytes, holding them).
                transport.write_eof()
                asyncio.get_running_loop().call_later(LINGER, transport.abort)
            else:
                transport.close()
        # Said by ``refused`` (bounds.py audits and logs at a bounded rate): a flood must not flood the log.
        log.debug("connection from %s refused: %s (%s)", self._where, StatusCode(code).name, why)
        self._guard.refused(self._where, code, why, "connection")
