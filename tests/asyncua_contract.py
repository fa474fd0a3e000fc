"""What the contract tests of scada/opcua/asyncua_private/ share (tests/unit/test_asyncua_private_*.py,
one per module): the failure message that names the internal and the module relying on it, and a
real asyncua server on loopback with a node inserted and the hooks installed as scada.opcua
installs them, and a connected client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.metadata
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import pytest_asyncio
from asyncua import Client, ua

from scada.opcua.asyncua_private import history, nodes, sessions
from scada.opcua.server import stop_asyncua_server
from tests.integration.helpers import plain_asyncua_server, until

__all__ = [
    "VERSION",
    "A",
    "OI",
    "SC",
    "Handler",
    "dv",
    "insert_variable",
    "live",
    "on_live",
    "params",
    "relied_on",
    "running",
    "until",
]

VERSION = importlib.metadata.version("asyncua")
A = ua.AttributeIds
OI = ua.ObjectIds
SC = ua.StatusCodes


def relied_on(module: str) -> Callable[[bool, str], None]:
    """The ``relies(ok, what)`` of one module's contract test: it fails naming the asyncua internal
    that changed and the module of scada/opcua/asyncua_private/ that relies on it."""

    def relies(ok: bool, what: str) -> None:
        # After an asyncua upgrade: adapt that module (nothing else should need it), then widen the
        # asyncua pin in pyproject.toml to the versions the contract tests pass on.
        assert ok, f"asyncua {VERSION}: {what} -- {module} relies on it"

    return relies


def params(fn) -> list[str]:
    """The parameter names of ``fn``, in order."""
    return list(inspect.signature(fn).parameters)


class Handler:
    """A client subscription handler that queues what arrives."""

    def __init__(self) -> None:
        self.values: asyncio.Queue = asyncio.Queue()
        self.events: asyncio.Queue = asyncio.Queue()

    def datachange_notification(self, node, val, data) -> None:
        self.values.put_nowait(val)

    def event_notification(self, event) -> None:
        self.events.put_nowait(event)


def dv(value, vtype: ua.VariantType) -> ua.DataValue:
    """A DataValue of ``value`` as the Variant type given."""
    return ua.DataValue(ua.Variant(value, vtype))


def insert_variable(aspace, nodeid: ua.NodeId, value: float) -> nodes.AttributeValue:
    """A Double variable under Objects, written into the node table as scada.opcua's builders do."""
    objects = aspace[ua.NodeId(OI.ObjectsFolder)]
    value_attr = nodes.AttributeValue(dv(value, ua.VariantType.Double))
    read = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask
    nd = nodes.NodeData(nodeid)
    nd.attributes = {
        A.NodeId: nodes.AttributeValue(dv(nodeid, ua.VariantType.NodeId)),
        A.NodeClass: nodes.AttributeValue(dv(ua.NodeClass.Variable, ua.VariantType.Int32)),
        A.BrowseName: nodes.AttributeValue(
            dv(ua.QualifiedName("contract", nodeid.NamespaceIndex), ua.VariantType.QualifiedName)
        ),
        A.DisplayName: nodes.AttributeValue(dv(ua.LocalizedText("contract"), ua.VariantType.LocalizedText)),
        A.DataType: nodes.AttributeValue(dv(ua.NodeId(OI.Double), ua.VariantType.NodeId)),
        A.ValueRank: nodes.AttributeValue(dv(ua.ValueRank.Scalar, ua.VariantType.Int32)),
        A.AccessLevel: nodes.AttributeValue(dv(read, ua.VariantType.Byte)),
        A.UserAccessLevel: nodes.AttributeValue(dv(read, ua.VariantType.Byte)),
        A.WriteMask: nodes.AttributeValue(dv(0, ua.VariantType.UInt32)),
        A.UserWriteMask: nodes.AttributeValue(dv(0, ua.VariantType.UInt32)),
        A.MinimumSamplingInterval: nodes.AttributeValue(dv(0.0, ua.VariantType.Double)),
        A.Historizing: nodes.AttributeValue(dv(True, ua.VariantType.Boolean)),
        A.Value: value_attr,
    }
    nd.references = [
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.HasTypeDefinition),
            IsForward=True,
            NodeId=ua.NodeId(OI.BaseDataVariableType),
            NodeClass=ua.NodeClass.VariableType,
        ),
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.Organizes),
            IsForward=False,
            NodeId=objects.nodeid,
            NodeClass=ua.NodeClass.Object,
        ),
    ]
    aspace[nodeid] = nd
    objects.references.append(
        ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(OI.Organizes),
            IsForward=True,
            NodeId=nodeid,
            BrowseName=ua.QualifiedName("contract", nodeid.NamespaceIndex),
            DisplayName=ua.LocalizedText("contract"),
            NodeClass=ua.NodeClass.Variable,
            TypeDefinition=ua.NodeId(OI.BaseDataVariableType),
        )
    )
    return value_attr


@contextlib.asynccontextmanager
async def running():
    """A started asyncua server with a node inserted through the module, hooks installed
    before start as scada.opcua installs them, and a connected client."""
    server, url, ns = await plain_asyncua_server("contract", "urn:contract")
    aspace = nodes.address_space(server)
    nodeid = ua.NodeId("contract/value", ns)
    value_attr = insert_variable(aspace, nodeid, 42.0)
    caller: contextvars.ContextVar = contextvars.ContextVar("caller", default=None)
    names: dict = {}
    sessions.hook_sessions(server, caller, names)
    sessions.hook_sessions(server, caller, names)  # idempotent: a reload builds the conditions again

    async def who(parent):
        session = caller.get()
        return [ua.Variant(names.get(session, "") if session is not None else "", ua.VariantType.String)]

    await server.nodes.objects.add_method(ns, "Who", who, [], [ua.VariantType.String])
    history_calls: list[ua.HistoryReadParameters] = []
    refuse = []

    async def read_history(p: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        history_calls.append(p)
        if refuse:
            raise history.ServiceError(refuse[0])
        if p.NodesToRead[0].NodeId != nodeid:
            return await previous(p)
        data = ua.HistoryData(
            DataValues=[ua.DataValue(ua.Variant(7.0), SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC))]
        )
        return [ua.HistoryReadResult(StatusCode=ua.StatusCode(SC.Good), HistoryData=data)]

    previous = history.wrap_history_read(server, read_history)
    await server.start()
    client = Client(url)
    await client.connect()
    try:
        yield SimpleNamespace(
            server=server,
            client=client,
            ns=ns,
            aspace=aspace,
            nodeid=nodeid,
            value_attr=value_attr,
            caller=caller,
            names=names,
            history_calls=history_calls,
            refuse=refuse,
            previous=previous,
        )
    finally:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - the server may have closed the session first
            pass
        await stop_asyncua_server(server)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live():
    """One server per test file for its behaviour tests (an asyncua server takes seconds to load
    its nodeset): import it with ``on_live`` into the test file and mark the tests ``@on_live``."""
    async with running() as ctx:
        yield ctx


on_live = pytest.mark.asyncio(loop_scope="module")
