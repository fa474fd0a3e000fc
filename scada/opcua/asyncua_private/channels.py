"""Secure channels: the client application's certificate checked when the channel opens.

asyncua validates a client's certificate only at CreateSession, through
``Server.set_certificate_validator``, and only when CreateSession carries one: a client opening a
Sign or SignAndEncrypt channel with any certificate, then sending an empty ClientCertificate, is
never checked. Here the channel's certificate is checked at OpenSecureChannel (after asyncua
verified the message's signature with it: the client holds its key), and CreateSession must carry
that same certificate (Part 4 5.6.2), or none at all on a None channel (where it is ignored).

A channel whose policy and mode are not offered is for discovery only. asyncua's
``SecureConnection.select_policy`` keeps the connection's first policy, None, when nothing
offered matches: an OpenSecureChannel for None is accepted even when no None endpoint is offered
(clients need it for GetEndpoints). On such a channel every request but GetEndpoints and
FindServers gets a ServiceFault BadSecurityPolicyRejected, is reported to the server's
``refused`` callback and closes the connection (so a flood costs a new Hello and OPN each time);
CreateSession refuses it too, as a second line.

Relied on (contract: tests/unit/test_asyncua_private_channels.py):

* ``UaProcessor.open_secure_channel(self, algohdr, seqhdr, body)``, sync, called for every
  OpenSecureChannel (first open and renewals) once the asymmetric chunk is decoded and its
  signature verified; ``algohdr.SecurityPolicyURI``, ``algohdr.SenderCertificate``;
  ``self._connection.is_open()``, ``self._transport``, ``self.iserver``, ``self.name`` (the
  peer address, also the ``name`` of the sessions it creates);
* ``self._connection.security_policy.Mode`` / ``.peer_certificate`` (DER) once the channel is open;
* ``InternalSession.create_session(self, params, sockname=None)``, async, with ``self.iserver``
  and ``self.name``; ``params.ClientCertificate``;
* ``asyncua.ua.ua_binary.uatcp_to_binary(ua.MessageType.Error, ua.ErrorMessage(...))`` to refuse.
* ``self._connection._policies``: the offered policy factories, each with ``matches(uri, mode)``;
  ``security_policy.URI``;
* ``UaProcessor.process_message(self, seqhdr, body)``, async, ``body`` a Buffer at the request's
  TypeId (``nodeid_from_binary``, then a ``RequestHeader``); ``send_response(handle, seqhdr,
  response)``; False returned closes the connection; ``SecureConnection`` instances take an
  attribute of ours (a class default set here).

Both wrappers are installed once per process on asyncua's classes (marker attributes), and act
only for servers given a check with :func:`hook_channel_certificates` (other servers of the
process are untouched). A check that raises refuses (fails closed).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any

from asyncua import Server, ua
from asyncua.common.connection import SecureConnection
from asyncua.common.utils import ServiceError  # re-exported as it is (endpoints.py raises it)
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, uatcp_to_binary

log = logging.getLogger("scada.opcua.channels")

# A check: (certificate DER, peer address) -> 0 (Good) or the refusal's status code.
ChannelCheck = Callable[[bytes, str], int]
# Told of each request refused on a channel not offered: (peer address, policy URI, mode name,
# request type Identifier or -1). Must not raise (it is called inside a guard anyway).
PolicyRefused = Callable[[str, str, str, int], None]
NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"
_CHECK = "_scada_channel_check"  # on the InternalServer: this server's check
_CHANNELS = "_scada_channels"  # on the InternalServer: peer address -> its SecureConnection
_OPN_HOOKED = "_scada_channels_opn_hooked"  # on UaProcessor: the class wrapper is installed
_CS_HOOKED = "_scada_channels_create_session_hooked"  # on InternalSession
_PM_HOOKED = "_scada_channels_process_message_hooked"  # on UaProcessor
_REFUSED = "_scada_channel_policy_refused"  # on the InternalServer: its PolicyRefused callback
_DISCOVERY = "_scada_discovery_only"  # on a SecureConnection whose policy and mode are not offered
# What a discovery-only channel may ask (Part 4 5.4: the discovery services need no session).
_DISCOVERY_SERVICES = frozenset(
    {
        ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersOnNetworkRequest_Encoding_DefaultBinary,
    }
)


def _peer(name: object) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _refuse(processor: UaProcessor, code: int, reason: str) -> None:
    """Answer with an ErrorMessage (Part 6 7.1.5) and close the connection."""
    err = ua.ErrorMessage(ua.StatusCode(ua.UInt32(code)), ua.String(reason))
    transport = processor._transport
    try:
        # asyncua annotates MessageType but its members are plain bytes constants.
        transport.write(uatcp_to_binary(ua.MessageType.Error, err))  # type: ignore[arg-type]
    finally:
        transport.close()


__all__ = [
    "NONE_URI",
    "ChannelCheck",
    "PolicyRefused",
    "ServiceError",
    "channel_count",
    "hook_channel_certificates",
]


def _offered(connection: Any) -> bool:
    """Is the connection's selected policy and mode among the server's offered ones?"""
    policy = connection.security_policy
    return any(f.matches(policy.URI, policy.Mode) for f in connection._policies)


def _install_open_hook() -> None:
    if getattr(UaProcessor, _OPN_HOOKED, False):
        return
    original = UaProcessor.open_secure_channel

    @functools.wraps(original)
    def open_secure_channel(self: UaProcessor, algohdr: Any, seqhdr: Any, body: Any) -> None:
        check: ChannelCheck | None = getattr(self.iserver, _CHECK, None)
        if check is None or self._connection.is_open():  # not ours, or a renewal (same certificate)
            original(self, algohdr, seqhdr, body)
            return
        if algohdr.SecurityPolicyURI != NONE_URI:
            try:
                code = check(algohdr.SenderCertificate or b"", _peer(self.name))
            except Exception:  # fail closed
                log.exception("channel certificate check failed")
                code = ua.StatusCodes.BadSecurityChecksFailed
            if code != ua.StatusCodes.Good:
                _refuse(self, code, "client certificate refused")
                return
        original(self, algohdr, seqhdr, body)
        try:
            offered = _offered(self._connection)
        except Exception:  # fail closed: a channel we cannot place is for discovery only
            log.exception("offered policy check failed")
            offered = False
        if not offered:
            setattr(self._connection, _DISCOVERY, True)
        getattr(self.iserver, _CHANNELS)[self.name] = self._connection

    UaProcessor.open_secure_channel = open_secure_channel  # type: ignore[method-assign]
    setattr(UaProcessor, _OPN_HOOKED, True)


def _install_create_session_hook() -> None:
    if getattr(InternalSession, _CS_HOOKED, False):
        return
    original = InternalSession.create_session

    @functools.wraps(original)
    async def create_session(self, params, sockname=None):
        channels = getattr(self.iserver, _CHANNELS, None)
        if channels is not None and getattr(self.iserver, _CHECK, None) is not None:
            conn = channels.get(self.name)
            policy = getattr(conn, "security_policy", None)
            if policy is None:  # no channel seen for this peer: refuse rather than guess
                raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
            if getattr(conn, _DISCOVERY, False):  # process_message refuses it first; a second line
                raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
            if policy.Mode == ua.MessageSecurityMode.None_:
                params.ClientCertificate = None  # ignored on a None channel (Part 4 5.6.2)
            elif (params.ClientCertificate or b"") != (policy.peer_certificate or b""):
                raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        return await original(self, params, sockname)

    InternalSession.create_session = create_session  # type: ignore[method-assign]
    setattr(InternalSession, _CS_HOOKED, True)


def _install_discovery_only_hook() -> None:
    if getattr(UaProcessor, _PM_HOOKED, False):
        return
    original = UaProcessor.process_message
    # A class default: the look-up on every request finds it at once (a missing one costs more).
    setattr(SecureConnection, _DISCOVERY, False)

    @functools.wraps(original)
    async def process_message(self: UaProcessor, seqhdr: Any, body: Any) -> Any:
        # Every request passes here: one attribute look-up, set only on discovery-only channels.
        if not getattr(self._connection, _DISCOVERY, False):
            return await original(self, seqhdr, body)
        return await _discovery_only(self, original, seqhdr, body)

    UaProcessor.process_message = process_message  # type: ignore[method-assign]
    setattr(UaProcessor, _PM_HOOKED, True)


async def _discovery_only(proc: UaProcessor, original: Any, seqhdr: Any, body: Any) -> Any:
    """A request on a channel not offered: discovery passes, anything else is refused
    (BadSecurityPolicyRejected, reported) and the connection closed."""
    pos = body.cur_pos
    kind = -1
    try:
        typeid = nodeid_from_binary(body)
        if typeid.NamespaceIndex == 0 and isinstance(typeid.Identifier, int):
            kind = typeid.Identifier
        if kind in _DISCOVERY_SERVICES:
            body.rewind(pos)
            return await original(proc, seqhdr, body)
        handle = struct_from_binary(ua.RequestHeader, body).RequestHandle
    except Exception:  # undecodable: nothing to answer, the connection ends (fails closed)
        return False
    policy = proc._connection.security_policy
    mode = ua.MessageSecurityMode(policy.Mode).name.rstrip("_")
    report: PolicyRefused | None = getattr(proc.iserver, _REFUSED, None)
    if report is not None:
        try:
            report(_peer(proc.name), str(policy.URI), mode, kind)
        except Exception:  # the refusal stands whatever the report does
            log.exception("policy refusal report failed")
    fault = ua.ServiceFault()
    fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSecurityPolicyRejected))
    proc.send_response(handle, seqhdr, fault)
    return False  # asyncua closes the connection (after the fault is written)


def hook_channel_certificates(server: Server, check: ChannelCheck, refused: PolicyRefused | None = None) -> None:
    """Check each secure channel's client certificate with ``check`` when it opens (a refusal:
    ErrorMessage with its code, connection closed), and require CreateSession's certificate to
    be the channel's. A channel whose policy and mode are not offered serves discovery only (any
    other request: BadSecurityPolicyRejected, told to ``refused``, connection closed).
    Idempotent per server: a second call replaces the check and ``refused``."""
    iserver = server.iserver
    setattr(iserver, _CHECK, check)
    setattr(iserver, _REFUSED, refused)
    if getattr(iserver, _CHANNELS, None) is None:
        # Peer address -> its SecureConnection, while the connection lives.
        setattr(iserver, _CHANNELS, weakref.WeakValueDictionary())
    _install_open_hook()
    _install_create_session_hook()
    _install_discovery_only_hook()


def channel_count(server: Server) -> int:
    """How many open channels the hook knows (tests: the map does not keep closed ones)."""
    return len(getattr(server.iserver, _CHANNELS, {}))
