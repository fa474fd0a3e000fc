"""The OPC UA server HMI clients connect to: asyncua Server + tag tree + publisher."""

from __future__ import annotations

import asyncio

import structlog
from asyncua import Server, ua

from scada.config import Config
from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder, variant_type
from scada.opcua.alarms import AlarmConditions
from scada.opcua.history import TagHistory
from scada.opcua.publisher import Publisher
from scada.tagdb import TagDB

log = structlog.get_logger("scada.opcua")
DEFAULT_ENDPOINT = "opc.tcp://0.0.0.0:4840/scada/"


class HmiServer:
    """Owns the asyncua server; ``start`` builds the tree, ``run`` publishes until cancelled."""

    def __init__(self, config: Config, tagdb: TagDB, endpoint: str = DEFAULT_ENDPOINT,
                 name: str = "City supervision server", alarms=None, history=None) -> None:
        self.config = config
        self.tagdb = tagdb
        self.alarms = alarms  # scada.alarms.engine.AlarmEngine, shown as OPC UA conditions
        self.history = history  # scada.historian.service.Historian, served as OPC UA HistoryRead
        self.tag_history: TagHistory | None = None
        self.endpoint = endpoint
        self.name = name
        self.server = Server()
        self.publisher: Publisher | None = None
        self.conditions: AlarmConditions | None = None  # OPC UA Alarms & Conditions of the engine
        self.ns = 0
        self.node_count = 0

    async def start(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name(self.name)
        # Security policies and user roles are the security issue's; until then, no security.
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        # asyncua makes any session logging in as "admin" (any password) an administrator, whose
        # Writes skip the AccessLevel check: no remote administrator until roles exist.
        self.server.allow_remote_admin(False)
        self.ns = await self.server.register_namespace(NAMESPACE_URI)
        builder = AddressSpaceBuilder(self.server, self.ns)
        values = builder.build(self.config)
        self.node_count = builder.node_count
        if self.alarms is not None:
            self.conditions = AlarmConditions(self.server, self.ns, self.alarms)
            self.conditions.build()
            self.node_count += self.conditions.node_count
        if self.history is not None:
            self.tag_history = TagHistory(self.server, self.ns, self.config, self.tagdb, self.history)
            await self.tag_history.install()
        vtypes = [variant_type(p) for p in self.config.point_defs()]
        self.publisher = Publisher(self.tagdb, values, vtypes)
        await self.server.start()
        log.info("opcua_server_started", endpoint=self.endpoint, namespace=NAMESPACE_URI, ns=self.ns,
                 nodes=self.node_count, tags=len(values))

    async def run(self) -> None:
        assert self.publisher is not None, "start() first"
        if self.conditions is None:
            await self.publisher.run()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.publisher.run(), name="opcua-publisher")
            tg.create_task(self.conditions.run(), name="opcua-alarm-events")

    async def stop(self) -> None:
        if self.conditions is not None:
            self.conditions.close()
        await stop_asyncua_server(self.server)


async def stop_asyncua_server(server: Server, timeout: float = 10.0) -> None:
    """Stop an asyncua server, and the sessions of clients still connected to it.

    asyncua 2.1's ``Server.stop`` closes the sockets but leaves connected clients' sessions
    (their timeout watchdog and subscription tasks) running until the session timeout:
    close them first. A stuck session must not block shutdown either.
    """
    try:
        async with asyncio.timeout(timeout):
            for session in list(server.iserver._external_sessions.values()):
                await session.close_session(delete_subs=True)
            await server.stop()
    except Exception as exc:  # noqa: BLE001
        log.warning("opcua_server_stop_failed", error=repr(exc))
