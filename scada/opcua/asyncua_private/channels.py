"""Secure channels: the client application's certificate checked when the channel opens.

asyncua validates a client's certificate only at CreateSession, through
``Server.set_certificate_validator``, and only when CreateSession carries one: a client opening a
Sign or SignAndEncrypt channel with any certificate, then sending an empty ClientCertificate, is
never checked. Here the channel's certificate is checked at OpenSecureChannel (after asyncua
verified the message's signature with it: the client holds its key), and CreateSession must carry
that same certificate (Part 4 5.6.2), or none at all on a None channel (where it is ignored).

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
from asyncua.common.utils import ServiceError  # re-exported as it is (endpoints.py raises it)
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import uatcp_to_binary

log = logging.getLogger("scada.opcua.channels")

# A check: (certificate DER, peer address) -> 0 (Good) or the refusal's status code.
ChannelCheck = Callable[[bytes, str], int]
NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"
_CHECK = "_scada_channel_check"  # on the InternalServer: this server's check
_CHANNELS = "_scada_channels"  # on the InternalServer: peer address -> its SecureConnection
_OPN_HOOKED = "_scada_channels_opn_hooked"  # on UaProcessor: the class wrapper is installed
_CS_HOOKED = "_scada_channels_create_session_hooked"  # on InternalSession


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


__all__ = ["NONE_URI", "ChannelCheck", "ServiceError", "channel_count", "hook_channel_certificates"]


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
            if policy.Mode == ua.MessageSecurityMode.None_:
                params.ClientCertificate = None  # ignored on a None channel (Part 4 5.6.2)
            elif (params.ClientCertificate or b"") != (policy.peer_certificate or b""):
                raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        return await original(self, params, sockname)

    InternalSession.create_session = create_session  # type: ignore[method-assign]
    setattr(InternalSession, _CS_HOOKED, True)


def hook_channel_certificates(server: Server, check: ChannelCheck) -> None:
    """Check each secure channel's client certificate with ``check`` when it opens (a refusal:
    ErrorMessage with its code, connection closed), and require CreateSession's certificate to
    be the channel's. Idempotent per server: a second call replaces the check."""
    iserver = server.iserver
    setattr(iserver, _CHECK, check)
    if getattr(iserver, _CHANNELS, None) is None:
        # Peer address -> its SecureConnection, while the connection lives.
        setattr(iserver, _CHANNELS, weakref.WeakValueDictionary())
    _install_open_hook()
    _install_create_session_hook()


def channel_count(server: Server) -> int:
    """How many open channels the hook knows (tests: the map does not keep closed ones)."""
    return len(getattr(server.iserver, _CHANNELS, {}))
