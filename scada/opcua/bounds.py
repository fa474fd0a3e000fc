"""Bounded: what a hostile client costs in CPU and memory has a ceiling.

Transport (every HmiServer, with the default :class:`Limits` when there are no security settings):
a chunk's 8-byte header is checked as soon as it arrives, before its body is buffered (a chunk
larger than the receive buffer Hello negotiated, a message of the wrong type, a message of more
than a few chunks before ActivateSession: an ErrorMessage and the connection closed). With
security settings, also: connections and sessions per client address, subscriptions and
monitored items per session, operations per request (MaxNodesPer*, enforced with
Bad_TooManyOperations for the whole request, and advertised in ServerCapabilities), history
values per response, Publish requests in flight and messages waiting per connection, monitored
item queues; operations are counted before a request is decoded (a request that cannot be
counted undecoded is refused Bad_DecodingError). On every server, a client that leaves its
responses unread has its requests wait, and is disconnected after :data:`WRITE_STALL_S` or when
its unsent responses pass twice the message size. Each
refusal is one audit record with its status code, at a bounded rate per client, target and code
(scada/security/refusal_audit.py: a flood must fill neither the trail nor the log).
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from asyncua import Server, ua

from scada.opcua.asyncua_private.limits import (
    Refusal,
    SessionCaps,
    hook_session_caps,
    set_pending_messages_cap,
    set_queue_size_cap,
)
from scada.opcua.asyncua_private.transport import TransportRules, guard_transport
from scada.opcua.session_identity import identity_of
from scada.opcua.typed_ua import DataValue, NodeId, StatusCode
from scada.security.audit import AuditSink, record_of
from scada.security.context import RequestContext, current
from scada.security.identity import NOBODY
from scada.security.refusal_audit import refusal_audit_for
from scada.security.settings import Limits, SecuritySettings

log = structlog.get_logger("scada.opcua.bounds")

_RECV_BUFFER = 65535  # bytes per chunk, each way (asyncua's, and most stacks')
WRITE_STALL_S = 30.0  # seconds a client may leave its responses unread before it is disconnected
# Unsent bytes per connection above which its requests wait: a large Browse or Read answer goes
# out without a pause; the cap (this + 2 x max_message_size) is what bounds memory.
_WRITE_BUFFER_HIGH = 4 << 20

_OL = ua.ObjectIds
_NODES_PER_REQUEST = (
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerMethodCall,
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    _OL.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
)
_HISTORY_NODES = (
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
    _OL.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadEvents,
)


def transport_rules(limits: Limits, settings: SecuritySettings | None) -> TransportRules:
    """The transport checks of ``limits``; the per-client ones only with security settings (tests
    and benches without them connect many clients from one address)."""
    secured = settings is not None
    return TransportRules(
        pre_session_message=limits.max_pre_session_message,
        pre_session_chunks=limits.max_pre_session_chunks,
        connections_per_client=limits.connections_per_client if secured else None,
        publish_requests_in_flight=limits.publish_requests_in_flight if secured else None,
        operations_per_request=limits.nodes_per_request if secured else None,
        history_nodes_per_request=limits.history_nodes_per_request if secured else None,
        # A client that stops reading: its requests wait above the high mark; what one response
        # (at most a message) adds on top of it is allowed twice, beyond that it is aborted.
        write_buffer_high=_WRITE_BUFFER_HIGH,
        write_buffer_max=_WRITE_BUFFER_HIGH + 2 * limits.max_message_size,
        write_stall=WRITE_STALL_S,
    )


def session_caps(limits: Limits) -> SessionCaps:
    """The per-session caps of ``limits``."""
    return SessionCaps(
        sessions_per_client=limits.sessions_per_client,
        subscriptions_per_session=limits.subscriptions_per_session,
        monitored_items_per_session=limits.monitored_items_per_session,
        nodes_per_request=limits.nodes_per_request,
        history_nodes_per_request=limits.history_nodes_per_request,
        history_values_per_request=limits.history_values_per_request,
        queue_size=limits.monitored_item_queue_size,
    )


def advertised(limits: Limits) -> dict[int, int]:
    """ServerCapabilities node -> the UInt32 value we enforce (asyncua writes 10000 everywhere)."""
    out = dict.fromkeys(_NODES_PER_REQUEST, limits.nodes_per_request)
    out |= dict.fromkeys(_HISTORY_NODES, limits.history_nodes_per_request)
    out[_OL.Server_ServerCapabilities_MaxSubscriptionsPerSession] = limits.subscriptions_per_session
    out[_OL.Server_ServerCapabilities_MaxMonitoredItemsPerSubscription] = limits.monitored_items_per_session
    out[_OL.Server_ServerCapabilities_MaxMonitoredItemsQueueSize] = limits.monitored_item_queue_size
    return out


class TransportAudit:
    """Audits transport refusals through the server's :class:`RefusalAudit` (shared with the
    service gate: at most so many per client address, target and code a minute, the others
    counted in one summary record per window, scada/security/refusal_audit.py); logs the ones
    recorded (a flood must fill neither the trail nor the log)."""

    def __init__(self, audit: AuditSink) -> None:
        self.refusals = refusal_audit_for(audit)
        self.dropped = 0  # refusals counted in a summary rather than recorded and logged

    def __call__(self, where: str, code: int, why: str, target: str = "connection") -> None:
        ctx = RequestContext(NOBODY, client_address=where)
        if not self.refusals.refused(record_of("limit", target, {"reason": why}, StatusCode(code).name, ctx)):
            self.dropped += 1
            return
        log.warning(
            "opcua_request_refused" if target != "connection" else "opcua_connection_refused",
            client=where,
            target=target,
            status=StatusCode(code).name,
            reason=why,
        )


def _audit_refusal(audit: AuditSink):
    refusals = refusal_audit_for(audit)

    def refused(r: Refusal) -> None:
        ctx = current()
        if ctx is None:  # no request context set (no login layer): what the session says
            client = f"{r.client[0]}:{r.client[1]}" if isinstance(r.client, tuple) else str(r.client)
            session = str(r.session.session_id) if r.session is not None else ""
            identity = identity_of(r.session) if r.session is not None else None
            ctx = RequestContext(identity or NOBODY, session_id=session, client_address=client)
        action = "subscription" if "Subscription" in r.service or "MonitoredItems" in r.service else "limit"
        if r.service == "HistoryRead":
            action = "history_read"
        name = StatusCode(r.code).name
        if refusals.refused(record_of(action, r.service, {"reason": r.why}, name, ctx)):  # else in a summary
            log.warning(
                "opcua_request_refused", service=r.service, status=name, reason=r.why, client=ctx.client_address
            )

    return refused


async def install_bounds(server: Server, settings: SecuritySettings | None, audit: AuditSink) -> None:
    """Install on ``server`` before it starts. None settings (no security layer): the transport
    checks only, with the default Limits."""
    limits = settings.limits if settings is not None else Limits()
    guard_transport(server, transport_rules(limits, settings), TransportAudit(audit))
    if settings is None:
        return
    # What Hello negotiates (server.limits is copied per connection when the server starts).
    server.limits.max_recv_buffer = server.limits.max_send_buffer = _RECV_BUFFER
    server.limits.max_message_size = limits.max_message_size
    server.limits.max_chunk_count = limits.max_chunk_count
    set_queue_size_cap(server, limits.monitored_item_queue_size)
    set_pending_messages_cap(server, limits.pending_messages_per_connection)
    hook_session_caps(server, session_caps(limits), _audit_refusal(audit))
    now = datetime.now(UTC)
    for nodeid, value in advertised(limits).items():
        dv = DataValue(ua.Variant(value, ua.VariantType.UInt32), SourceTimestamp=now, ServerTimestamp=now)
        await server.write_attribute_value(NodeId(nodeid), dv)
