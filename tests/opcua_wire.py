"""OPC UA binary messages built with asyncua's own encoders, sent on raw TCP sockets: what the
transport checks and the fuzz test throw at a server (no security: policy None).

``RawClient`` speaks just enough (Hello, OpenSecureChannel, CreateSession, ActivateSession,
then any request) to reach each state; ``messages()`` gives valid messages of each kind to mutate.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.common.connection import SecureConnection, TransportLimits
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.ua.ua_binary import (
    Primitives,
    header_from_binary,
    nodeid_from_binary,
    nodeid_to_binary,
    struct_from_binary,
    struct_to_binary,
)
from asyncua.ua.ua_binary import uatcp_to_binary as uatcp_to_binary

__all__ = ["RawClient", "browse_request", "error_of", "expanded", "hello", "read_request", "uatcp_to_binary"]


def hello(url: str, buffer: int = 65535) -> bytes:
    """A Hello chunk for ``url``."""
    msg = ua.Hello(
        ProtocolVersion=0,
        ReceiveBufferSize=buffer,
        SendBufferSize=buffer,
        MaxMessageSize=0,
        MaxChunkCount=0,
        EndpointUrl=url,
    )
    return uatcp_to_binary(ua.MessageType.Hello, msg)


def header(kind: bytes, size: int, chunk: bytes = b"F") -> bytes:
    """The first 8 bytes of a chunk announcing ``size`` bytes."""
    return kind + chunk + struct.pack("<I", size)


def error_of(data: bytes) -> ua.ErrorMessage | None:
    """The ErrorMessage ``data`` starts with, else None."""
    if len(data) < 8 or data[:3] != b"ERR":
        return None
    buf = Buffer(data)
    header_from_binary(buf)
    return struct_from_binary(ua.ErrorMessage, buf)


def read_request(nodeids: list[ua.NodeId]) -> ua.ReadRequest:
    req = ua.ReadRequest()
    req.Parameters.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in nodeids]
    return req


def expanded(body: bytes, at: int, uri: str | None = None, server_index: int = 0) -> bytes:
    """``body`` with its NodeId at ``at`` sent as an ExpandedNodeId (Part 6, 5.2.2.10): the
    flags set on its encoding byte, a NamespaceUri (when ``uri``) and a ServerIndex after it.
    asyncua's decoder reads it, and takes it for the NodeId when it compares them."""
    end = at + len(nodeid_to_binary(nodeid_from_binary(Buffer(body[at:]))))
    flags = 0x40 | (0x80 if uri is not None else 0)
    extra = (Primitives.String.pack(uri) if uri is not None else b"") + struct.pack("<I", server_index)
    return body[:at] + bytes([body[at] | flags]) + body[at + 1 : end] + extra + body[end:]


def browse_request(nodeids: list[ua.NodeId]) -> ua.BrowseRequest:
    """Browse ``nodeids`` both ways, every field of every reference asked for: a large response."""
    req = ua.BrowseRequest()
    req.Parameters.NodesToBrowse = [
        ua.BrowseDescription(NodeId=n, BrowseDirection=ua.BrowseDirection.Both, IncludeSubtypes=True, ResultMask=63)
        for n in nodeids
    ]
    return req


class RawClient:
    """One TCP connection to ``host:port`` speaking OPC UA binary without security."""

    def __init__(self, url: str, host: str, port: int, source: str | None = None, chunk: int = 65535) -> None:
        """``source``: the local address to connect from; ``chunk``: the size of the chunks sent."""
        self.url, self.host, self.port, self.source = url, host, port, source
        self.conn = SecureConnection(SecurityPolicyNone(), TransportLimits(max_send_buffer=chunk))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.request_id = 0
        self.auth_token = ua.NodeId()

    async def connect(self) -> None:
        local = (self.source, 0) if self.source else None
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, local_addr=local)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def chunk(self, timeout: float = 10.0) -> tuple[ua.Header, Buffer] | None:
        """The next whole chunk the server sends, None when it closed the connection."""
        assert self.reader is not None
        try:
            head = await asyncio.wait_for(self.reader.readexactly(8), timeout)
            size = struct.unpack("<I", head[4:8])[0]
            rest = await asyncio.wait_for(self.reader.readexactly(size - 8), timeout)
        except asyncio.IncompleteReadError:
            return None
        buf = Buffer(head + rest)
        return header_from_binary(buf), buf

    async def closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.read(-1), timeout)

    async def hello(self) -> ua.Acknowledge:
        self.send(hello(self.url))
        got = await self.chunk()
        assert got is not None and got[0].MessageType == ua.MessageType.Acknowledge, got
        return struct_from_binary(ua.Acknowledge, got[1])

    def encode(
        self,
        request: Any,
        kind: ua.MessageType = ua.MessageType.SecureMessage,
        edit: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """``request`` as the next message of this channel (its sequence number taken); ``edit``
        changes its encoded body first."""
        self.request_id += 1
        if kind == ua.MessageType.SecureMessage:
            request.RequestHeader.AuthenticationToken = self.auth_token
        request.RequestHeader.RequestHandle = self.request_id
        request.RequestHeader.TimeoutHint = 10000
        body = struct_to_binary(request)
        if edit is not None:
            body = edit(body)
        return self.conn.message_to_binary(body, message_type=kind, request_id=self.request_id)

    async def answer(self) -> Any:
        """The next response's object (a ServiceFault too)."""
        msg = None
        while msg is None:  # intermediate chunks: None until the final one
            got = await self.chunk()
            assert got is not None, "the server closed the connection"
            head, buf = got
            msg = self.conn.receive_from_header_and_body(head, buf)
        assert isinstance(msg, ua.Message), msg
        body = msg.body()
        pos = body.cur_pos
        typeid = nodeid_from_binary(body)
        body.rewind(cur_pos=pos)  # a response's first field is its TypeId
        return struct_from_binary(ua.extension_objects_by_typeid[typeid], body)

    async def request(self, request: Any, kind: ua.MessageType = ua.MessageType.SecureMessage) -> Any:
        self.send(self.encode(request, kind))
        return await self.answer()

    def open_request(self) -> ua.OpenSecureChannelRequest:
        req = ua.OpenSecureChannelRequest()
        req.Parameters = ua.OpenSecureChannelParameters(
            ClientProtocolVersion=0,
            RequestType=ua.SecurityTokenRequestType.Issue,
            SecurityMode=ua.MessageSecurityMode.None_,
            ClientNonce=b"",
            RequestedLifetime=600000,
        )
        return req

    async def open(self) -> None:
        req = self.open_request()
        response = await self.request(req, ua.MessageType.SecureOpen)
        assert isinstance(response, ua.OpenSecureChannelResponse), response
        self.conn.set_channel(response.Parameters, req.Parameters.RequestType, b"")

    def create_session_request(self) -> ua.CreateSessionRequest:
        req = ua.CreateSessionRequest()
        req.Parameters.ClientDescription = ua.ApplicationDescription(
            ApplicationUri="urn:raw", ApplicationName=ua.LocalizedText("raw")
        )
        req.Parameters.EndpointUrl = self.url
        req.Parameters.SessionName = "raw"
        req.Parameters.ClientNonce = b"\x00" * 32
        req.Parameters.RequestedSessionTimeout = 60000
        return req

    async def create_session(self) -> Any:
        response = await self.request(self.create_session_request())
        if isinstance(response, ua.CreateSessionResponse):
            self.auth_token = response.Parameters.AuthenticationToken
        return response

    def activate_request(self) -> ua.ActivateSessionRequest:
        req = ua.ActivateSessionRequest()
        req.Parameters.UserIdentityToken = ua.AnonymousIdentityToken(PolicyId="anonymous")
        return req

    async def activate(self) -> Any:
        return await self.request(self.activate_request())

    async def session(self) -> None:
        """Hello, OpenSecureChannel, CreateSession, ActivateSession: ready for requests."""
        await self.connect()
        await self.hello()
        await self.open()
        created = await self.create_session()
        assert isinstance(created, ua.CreateSessionResponse), created
        activated = await self.activate()
        assert isinstance(activated, ua.ActivateSessionResponse), activated
