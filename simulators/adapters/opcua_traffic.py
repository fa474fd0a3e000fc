"""Junction controllers served over OPC UA, as a city's traffic-management system exposes them.

One asyncua server hosts every junction: Objects / Junctions / <commune> / <junction> /
{Mode, Plan, EffectiveMode, CycleSecond, ConflictFault, DoorOpen, MainsOk,
 Groups/<group>/{Colour, LampOut}, Detectors/<detector>/{Count, Occupancy}}.
NodeIds are strings ``<junction>.<path>`` in namespace ``urn:city-scada:traffic-sim``.

Only ``Mode`` and ``Plan`` are writable, and a write is a *request* to the controller: the
model validates it (an unknown mode or plan is refused) and the node
goes back to the controller's value when it refuses. Colours are never writable.

With a :class:`ServerSecurity` the server is secure-only, as a traffic-management system on
a city network should be: Basic256Sha256 Sign and SignAndEncrypt endpoints with its own
certificate (generated when absent), a session over security None refused
(Bad_SecurityPolicyRejected), and, when a trust list is given, a client certificate not in
it refused (Bad_CertificateUntrusted).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from simulators.adapters.asyncua_private import ServiceError, stop_server
from simulators.clock import Paced
from simulators.models import traffic as tr
from simulators.pki import ensure_certificate

NAMESPACE_URI = "urn:city-scada:traffic-sim"
SERVER_URI = "urn:city-scada:traffic-sim:server"  # application URI of a generated certificate
log = logging.getLogger("simulators.traffic")


@dataclass(frozen=True)
class ServerSecurity:
    """Serve Basic256Sha256 (Sign, SignAndEncrypt) only.

    ``certificate`` (DER) and ``private_key`` (PEM) are made when both are absent. ``trusted``
    lists client certificates (files, or folders of .der/.pem files) the server accepts;
    empty, any client certificate is accepted (the channel is still signed or encrypted).
    """

    certificate: Path
    private_key: Path
    trusted: tuple[Path, ...] = ()


class _SecureOnly(UserManager):
    """asyncua user manager: no session over a channel without a client certificate (security None).

    asyncua lists only the secure endpoints but would still activate a session opened over
    the None channel it keeps for discovery (GetEndpoints); this refuses it.
    """

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User:
        if not certificate:
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        return User(role=UserRole.User)


def _node_id(identifier: str, ns: int) -> ua.NodeId:
    """A string NodeId (asyncua annotates NodeId's fields with its own ``str`` and ``int`` types)."""
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def _certificates(paths: tuple[Path, ...]) -> set[bytes]:
    """DER bytes of every certificate in these files and folders."""
    out: set[bytes] = set()
    for path in paths:
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".der", ".pem")) if path.is_dir() else [path]
        for f in files:
            data = f.read_bytes()
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data)
            )
            out.add(cert.public_bytes(Encoding.DER))
    return out


@dataclass(frozen=True)
class Junction:
    name: str
    commune: str
    lat: float
    lon: float


# (node path, variant type, state field, column or None)
_SCALARS = (
    ("Mode", ua.VariantType.Int32, "mode"),
    ("Plan", ua.VariantType.Int32, "plan"),
    ("EffectiveMode", ua.VariantType.Int32, "effective_mode"),
    ("CycleSecond", ua.VariantType.Double, "cycle_second"),
    ("ConflictFault", ua.VariantType.Boolean, "conflict"),
    ("DoorOpen", ua.VariantType.Boolean, "door_open"),
    ("MainsOk", ua.VariantType.Boolean, "mains_ok"),
)


def _variables() -> list[tuple[str, ua.VariantType, str, int | None]]:
    out: list[tuple[str, ua.VariantType, str, int | None]] = [(path, vt, field, None) for path, vt, field in _SCALARS]
    for g, group in enumerate(tr.GROUPS):
        out.append((f"Groups/{group}/Colour", ua.VariantType.Int32, "colour", g))
        out.append((f"Groups/{group}/LampOut", ua.VariantType.Int32, "lamp_out", g))
    for d, det in enumerate(tr.DETECTORS):
        out.append((f"Detectors/{det}/Count", ua.VariantType.Int32, "counts", d))
        out.append((f"Detectors/{det}/Occupancy", ua.VariantType.Double, "occupancy", d))
    return out


VARIABLES = _variables()
WRITABLE = ("Mode", "Plan")


def _column(state: tr.TrafficState, field: str, col: int | None) -> np.ndarray:
    arr = getattr(state, field)
    return arr if col is None else arr[:, col]


def _py(vt: ua.VariantType, v):
    return float(v) if vt == ua.VariantType.Double else bool(v) if vt == ua.VariantType.Boolean else int(v)


class _WriteHandler:
    """Receives datachange notifications of the writable nodes (our own subscription)."""

    def __init__(self, sim: TrafficOpcUaSimulator) -> None:
        self.sim = sim

    def datachange_notification(self, node, val, data) -> None:
        self.sim._requests.put_nowait((node.nodeid, val))


class TrafficOpcUaSimulator(Paced):
    def __init__(
        self,
        state: tr.TrafficState,
        junctions: list[Junction],
        endpoint: str,
        acceleration: float = 1.0,
        step_interval: float = 0.5,
        start_time: float | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        if len(junctions) != state.count:
            raise ValueError("one Junction description per junction of the state")
        self.state = state
        self.junctions = junctions
        self.endpoint = endpoint
        super().__init__(acceleration, step_interval, start_time)
        self.security = security
        self.server = Server(user_manager=_SecureOnly() if security else None)
        self._trusted: set[bytes] = set()
        self.untrusted = 0  # sessions refused for an untrusted client certificate
        self.ns = 0
        self._nodes: dict[str, list[ua.NodeId]] = {}
        self._by_nodeid: dict[ua.NodeId, tuple[int, str]] = {}
        self._last: dict[str, np.ndarray] = {}
        self._requests: asyncio.Queue = asyncio.Queue()
        # Our own publications of writable nodes come back as notifications: not requests.
        self._echoes: dict[ua.NodeId, list[int]] = {}
        self.refused = 0

    async def start(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name("Simulated traffic-management system")
        if self.security is None:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await self._secure(self.security)
        self.ns = await self.server.register_namespace(NAMESPACE_URI)
        root = await self.server.nodes.objects.add_folder(_node_id("Junctions", self.ns), "Junctions")
        communes: dict[str, Node] = {}
        self._nodes = {path: [] for path, *_ in VARIABLES}
        writable = []
        for i, j in enumerate(self.junctions):
            if j.commune not in communes:
                communes[j.commune] = await root.add_folder(_node_id(f"Junctions/{j.commune}", self.ns), j.commune)
            obj = await communes[j.commune].add_object(_node_id(j.name, self.ns), j.name)
            folders = {}
            for path, vt, field, col in VARIABLES:
                parent = obj
                *dirs, leaf = path.split("/")
                for depth in range(len(dirs)):
                    key = "/".join(dirs[: depth + 1])
                    if key not in folders:
                        folders[key] = await parent.add_folder(_node_id(f"{j.name}.{key}", self.ns), dirs[depth])
                    parent = folders[key]
                value = _py(vt, _column(self.state, field, col)[i])
                node = await parent.add_variable(_node_id(f"{j.name}.{path}", self.ns), leaf, ua.Variant(value, vt))
                if path in WRITABLE:
                    await node.set_writable()
                    writable.append(node)
                self._nodes[path].append(node.nodeid)
                self._by_nodeid[node.nodeid] = (i, path)
        await self.server.start()
        self._last = {path: _column(self.state, field, col).copy() for path, vt, field, col in VARIABLES}
        sub = await self.server.create_subscription(50, _WriteHandler(self))
        await sub.subscribe_data_change(writable)
        self.spawn(self._step_loop(), "traffic-step")
        self.spawn(self._command_loop(), "traffic-commands")

    async def _secure(self, sec: ServerSecurity) -> None:
        cert_path, key_path = ensure_certificate(sec.certificate, sec.private_key, SERVER_URI, server=True)
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        try:  # the server's application URI is its certificate's (Part 6, 6.2.2)
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
        except x509.ExtensionNotFound:
            uris = []
        await self.server.set_application_uri(uris[0] if uris else SERVER_URI)
        await self.server.load_certificate(str(cert_path))
        await self.server.load_private_key(str(key_path))
        self.server.set_security_policy(
            [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        )
        self._trusted = _certificates(sec.trusted)
        self.server.set_certificate_validator(self._validate_client)

    async def _validate_client(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """CreateSession: the client's certificate must carry its application URI, and be trusted."""
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
        except x509.ExtensionNotFound:
            uris = []
        if app.ApplicationUri not in uris:
            raise ServiceError(ua.StatusCodes.BadCertificateUriInvalid)
        if self._trusted and cert.public_bytes(Encoding.DER) not in self._trusted:
            self.untrusted += 1
            log.warning("client certificate not trusted: %s", cert.subject.rfc4514_string())
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def publish(self) -> None:
        """Write every changed value of every junction into the address space."""
        for path, vt, field, col in VARIABLES:
            now = _column(self.state, field, col)
            changed = np.flatnonzero(now != self._last[path])
            nodes = self._nodes[path]
            for i in changed.tolist():
                value = _py(vt, now[i])
                # Our subscription sees our own write as a request unless it is remembered as an
                # echo; a write of the value the node already holds notifies nothing, and its echo
                # would then swallow a later real request of that value.
                if path in WRITABLE:
                    held = self.server.read_attribute_value(nodes[i]).Value
                    if held is None or held.Value != value:
                        self._echoes.setdefault(nodes[i], []).append(value)
                await self.server.write_attribute_value(nodes[i], ua.DataValue(ua.Variant(value, vt)))
            self._last[path] = now.copy()

    async def _step_loop(self) -> None:
        while True:
            self.state = tr.step(self.state, self.sim_time())
            await self.publish()
            await asyncio.sleep(self.step_interval)

    async def _command_loop(self) -> None:
        while True:
            nodeid, value = await self._requests.get()
            echoes = self._echoes.get(nodeid)
            if echoes and value in echoes:
                echoes.remove(value)
                continue
            i, path = self._by_nodeid[nodeid]
            current = int(self.state.mode[i] if path == "Mode" else self.state.central_plan[i])
            if value == current:
                self._last[path][i] = -1  # re-publish what is in force (the plan may differ in actuated mode)
                await self.publish()
                continue
            try:
                if path == "Mode":
                    self.state = tr.set_mode(self.state, i, int(value))
                else:
                    self.state = tr.set_plan(self.state, i, int(value))
            except (ValueError, TypeError):
                self.refused += 1
                # Put the controller's value back: the request was refused.
                self._last[path][i] = -1
            await self.publish()

    def apply(self, fn, *args) -> None:
        """Apply a model function (fault injection): ``sim.apply(tr.conflict_fault, i, True)``."""
        self.state = fn(self.state, *args)

    async def stop(self) -> None:
        await self.stop_tasks()
        await stop_server(self.server)
