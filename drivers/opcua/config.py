"""OPC UA client keys of tags.yaml: which node each point reads, in which server namespace.

```yaml
traffic_junction:
  class: traffic
  driver: opcua
  namespace: urn:city-scada:traffic-sim   # resolved to its index when the session opens
  publishing_interval: 500                # ms, one subscription per server
  security:                               # optional; without it: security None
    policy: Basic256Sha256                # None | Basic256Sha256 | Aes128_Sha256_RsaOaep | Aes256_Sha256_RsaPss
    mode: SignAndEncrypt                  # Sign | SignAndEncrypt
    certificate: pki/scada-client.der     # our application instance certificate (DER or PEM),
    private_key: pki/scada-client.pem     # and its unencrypted RSA key; paths relative to tags.yaml
    trusted: pki/trusted                  # the servers' certificates (or their CAs) we trust: a folder or files
    server_certificate: pki/traffic.der   # or: trust only this server certificate (pinning)
  points:
    mode: {node: "{device}.Mode", writable: true, enum: {1: flashing_amber, 2: fixed_time, 3: actuated, 4: central}}
    conflict_fault: {node: "{device}.ConflictFault", type: bool}
```
Devices: ``endpoint: opc.tcp://host:port/path``; devices on one endpoint share a session
(two types on one endpoint with different ``security`` open one session each).

Security is a type-level key: a type is the equipment of one supervision system, reached with
one client identity. A secure session opens only with a server whose certificate is trusted:
in ``trusted`` (or signed by a CA there, drivers/opcua/trust.py) or the pinned
``server_certificate``; one of them is required. The certificate, key and trust list are read and checked here,
once (file present, a certificate, an RSA key that belongs to it, an application URI, not
expired), so that a mistake is a located configuration error rather than a session that
never opens; the driver uses the bytes kept here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common.fields import (
    HOST_PATTERN,
    NO_DEADBAND,
    PORT_PATTERN,
    Fields,
    Key,
    KeyTable,
    Schema,
    converter,
    device_template_ok,
    in_range,
    object_schema,
    one_of,
    parse_host_port,
    positive,
    read_file,
    to_float,
    to_str,
    when,
)
from drivers.opcua import trust
from scada.driver_api import DeviceSite
from scada.tagdb import ANALOG, DISCRETE, TEXT

POINT_TYPES = ("number", "bool", "text")
# What `driver: opcua` means, for the editor's list of drivers.
SCHEMA_DESCRIPTION = (
    "OPC UA client: points are nodes of a server, in the type's namespace; devices have an endpoint "
    "(opc.tcp://host:port/path)"
)
SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
# Policies a technician may copy from a server's endpoint list that we do not speak: why not.
_POLICY_HINTS = {
    "Basic128Rsa15": "deprecated by the OPC Foundation (SHA-1): use Basic256Sha256",
    "Basic256": "deprecated by the OPC Foundation (SHA-1): use Basic256Sha256",
}


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    """How the client secures its sessions; the default is security None.

    The key and certificates are kept as DER bytes, read and checked once at load time;
    ``private_key`` never appears in a repr or a log line.
    """

    policy: str = "None"
    mode: str = "None"  # Sign | SignAndEncrypt; "None" with policy None
    certificate: bytes = field(default=b"", repr=False)  # DER
    private_key: bytes = field(default=b"", repr=False)  # DER, PKCS#8, unencrypted
    server_certificate: bytes | None = field(default=None, repr=False)  # DER; None: one the trust list accepts
    certificate_path: str = ""
    application_uri: str = ""  # from the certificate: the client must present the same URI
    trusted: tuple[bytes, ...] = field(default=(), repr=False)  # DER: the trust list (drivers/opcua/trust.py)

    @property
    def secure(self) -> bool:
        return self.policy != "None"


NO_SECURITY = OpcUaSecurity()


@dataclass(frozen=True, slots=True)
class OpcUaType:
    namespace: str
    publishing_interval: float = 500.0  # ms
    security: OpcUaSecurity = NO_SECURITY


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    node: str  # string identifier template; {device} is the device's name
    type: str = "number"
    sampling_interval: float = 0.0  # ms; 0: as fast as the server samples

    @property
    def kind(self) -> int:
        return {"bool": DISCRETE, "text": TEXT}.get(self.type, ANALOG)

    # Any node may be declared writable: the server's access level has the last word (a
    # refused write comes back as DeviceRejected).
    writable_ok = True
    not_writable_reason = ""
    needs_command_enum = False
    reports_back = True  # a written node reads back what it holds


@dataclass(frozen=True, slots=True)
class OpcUaEndpoint:
    url: str

    @property
    def connection(self) -> str:
        return self.url


@converter(
    {
        "type": "string",
        "pattern": "^(?:[^{}]|\\{device\\}|\\{\\{|\\}\\})+$",
        "patternErrorMessage": "a node's string identifier; the only placeholder is {device}",
    }
)
def _node(v: object) -> str:
    s = to_str(v)
    if not device_template_ok(s):
        raise ValueError("the only placeholder a node id may use is {device}")
    if not s:
        raise ValueError("empty node id")
    return s


@converter(
    {
        "type": "string",
        "pattern": ":",
        "patternErrorMessage": "the namespace URI, for example urn:city-scada:traffic-sim, not the namespace index",
    }
)
def _namespace(v: object) -> str:
    if not isinstance(v, str) or ":" not in v:
        raise ValueError(
            "expected the namespace URI, e.g. urn:city-scada:traffic-sim (not its index, which the server may change)"
        )
    return v


@converter({"type": "string", "enum": list(SECURITY_POLICIES)})
def _policy(v: Any) -> str:
    s = to_str(v)
    if s in _POLICY_HINTS:
        raise ValueError(f"security policy {s} is {_POLICY_HINTS[s]}")
    for policy in SECURITY_POLICIES[1:]:  # asyncua's SecurityPolicyType names glue the mode on
        for mode in SECURITY_MODES:
            if s.replace(" ", "").lower() in (f"{policy}_{mode}".lower(), f"{policy}-{mode}".lower()):
                raise ValueError(f"the policy and the mode are two keys: policy: {policy} and mode: {mode}")
    if s not in SECURITY_POLICIES:
        close = [p for p in SECURITY_POLICIES if p.lower() == s.strip().lower()]
        close = close or difflib.get_close_matches(s, SECURITY_POLICIES, n=1, cutoff=0.8)
        hint = f", did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown security policy{hint} (known policies: {', '.join(SECURITY_POLICIES)}; "
            "the name is case-sensitive)"
        )
    return s


_FILE = {"type": "string", "minLength": 1}
SECURITY_KEYS: KeyTable = {
    "policy": Key(
        _policy,
        "OPC UA security policy of the session. Case-sensitive, as in the URI http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256.",
        what=f"one of {', '.join(SECURITY_POLICIES)}",
    ),
    "mode": Key(
        one_of(*SECURITY_MODES),
        "Message security mode with a secure policy (required there; not allowed with None).",
        what=f"{' or '.join(SECURITY_MODES)}",
        required=False,  # SECURITY_RULES
    ),
    "certificate": Key(
        to_str,
        "Our application instance certificate (DER or PEM file, relative to the folder of tags.yaml). Its subjectAltName carries the application URI the client presents; the server must trust it.",
        what="our application instance certificate (DER or PEM file, relative to tags.yaml) that the server must trust",
        schema=_FILE,
        required=False,
    ),
    "private_key": Key(
        to_str,
        "The certificate's RSA private key (PEM or DER file, relative to the folder of tags.yaml), without a password: the server starts unattended, so protect the file instead.",
        what="the certificate's private key (PEM or DER file, relative to tags.yaml)",
        schema=_FILE,
        required=False,
    ),
    "trusted": Key(
        None,
        "The trust list: server certificates, or the CAs that sign them (DER or PEM), as a folder (its .der, .pem, .crt and .cer files), a file, or a list of files, relative to the folder of tags.yaml. A session opens only with a server whose certificate is in it or signed by a CA in it, and within its dates; any other is refused before the secure channel, its thumbprint logged. Read at load time: a new certificate takes effect at the next reload. A secure policy needs trusted or server_certificate.",
        None,
        schema={"anyOf": [_FILE, {"type": "array", "items": _FILE, "minItems": 1}]},
    ),
    "server_certificate": Key(
        to_str,
        "The server's certificate (DER or PEM file, relative to the folder of tags.yaml): the session opens only with a server showing exactly this one (pinning). A secure policy needs trusted or server_certificate.",
        None,
        schema=_FILE,
    ),
}
# parse_security: policy None takes nothing else; a secure policy takes a mode, a certificate and its key,
# and a trust list or a pinned server certificate.
SECURITY_RULES: tuple[Schema, ...] = (
    when(
        "policy",
        {"const": "None"},
        {"properties": {k: False for k in SECURITY_KEYS if k != "policy"}},
        {
            "required": ["mode", "certificate", "private_key"],
            "anyOf": [{"required": ["trusted"]}, {"required": ["server_certificate"]}],
        },
    ),
)
TYPE_KEYS: KeyTable = {
    "namespace": Key(
        _namespace,
        "OPC UA only, and required there. Namespace URI of the points' nodes on the server (its index is looked up when the session opens: write the URI, not ns=2).",
        what="the server namespace URI of the nodes",
        examples=("urn:city-scada:traffic-sim",),
    ),
    "publishing_interval": Key(
        positive(to_float),
        "OPC UA only. Milliseconds between two publications of the server's subscription (> 0); devices sharing an endpoint share a subscription, at the shortest interval of their types.",
        500.0,
    ),
    "security": Key(
        None,
        "OPC UA only. How the client secures its sessions with the server (absent: security None). With a secure policy (Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss) give the mode, our application instance certificate and its private key (the server must trust the certificate), and the servers we trust: trusted (a folder or files of server certificates or CAs) or server_certificate; paths are relative to the folder of tags.yaml. Two types on one endpoint with different security open one session each.",
        None,
        schema=object_schema(SECURITY_KEYS, SECURITY_RULES),
    ),
}
POINT_KEYS: KeyTable = {
    "node": Key(
        _node,
        "String identifier of the node, in the type's namespace; {device} stands for the device's name. Only the identifier: no ns=...;s= prefix.",
        what="the node's string identifier, e.g. {device}.Mode",
        examples=("{device}.Mode",),
    ),
    "type": Key(one_of(*POINT_TYPES), "What the node's value is.", "number"),
    "sampling_interval": Key(
        in_range(to_float, 0, 3_600_000),
        "Milliseconds between two samples of the node by the server, 0 to 3600000 (0, the default: as fast as the server samples).",
        0.0,
    ),
}
# The core's check: a text point has no deadband.
POINT_RULES: tuple[Schema, ...] = (when("type", {"const": "text"}, NO_DEADBAND),)
DEVICE_KEYS: KeyTable = {
    "endpoint": Key(
        to_str,
        "OPC UA: the server's URL, opc.tcp://host:port/path.",
        what="opc.tcp://host:port/path",
        examples=("opc.tcp://traffic-srv.lan:4840/traffic/",),
        schema={
            "type": "string",
            "pattern": rf"^\s*[Oo][Pp][Cc]\.[Tt][Cc][Pp]://{HOST_PATTERN}:{PORT_PATTERN}(?:[/?#]\S*)?\s*$",
            "patternErrorMessage": "expected opc.tcp://host:port/path",
        },
    ),
}


def _certificate(f: Fields, key: str):
    from cryptography import x509

    path, data = read_file(f, key)
    for load in (x509.load_der_x509_certificate, x509.load_pem_x509_certificate):
        try:
            cert = load(data)
            break
        except ValueError:
            continue
    else:
        raise f.error(key, f"{path} is not an X.509 certificate (DER or PEM)", f.mapping[key])
    if cert.not_valid_after_utc < datetime.now(UTC):
        raise f.error(
            key, f"the certificate in {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: renew it", f.mapping[key]
        )
    return cert


def _application_uri(cert) -> str:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


def _der(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _private_key(f: Fields, cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path, data = read_file(f, "private_key")
    key = None
    for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            key = load(data, password=None)
            break
        except TypeError:  # "Password was not given but private key is encrypted"
            raise f.error(
                "private_key",
                f"the private key in {path} is encrypted: the server starts unattended, "
                "give it the key without a password (and protect the file)",
                f.mapping["private_key"],
            ) from None
        except Exception:  # noqa: BLE001 - cryptography raises ValueError or UnsupportedAlgorithm on garbage
            continue
    if key is None:
        raise f.error("private_key", f"{path} is not a private key (PEM or DER)", f.mapping["private_key"])
    if not isinstance(key, rsa.RSAPrivateKey) or not 2048 <= key.key_size <= 4096:
        raise f.error(
            "private_key", "OPC UA's security policies need an RSA key of 2048 to 4096 bits", f.mapping["private_key"]
        )
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise f.error(
            "private_key",
            f"this key does not belong to the certificate {f.mapping['certificate']}",
            f.mapping["private_key"],
        )
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def parse_security(f: Fields) -> OpcUaSecurity:
    policy = f.read(SECURITY_KEYS, "policy")
    if policy == "None":
        extra = [k for k in SECURITY_KEYS if k != "policy" and k in f.mapping]
        if extra:
            raise f.error(
                extra[0],
                "security policy None takes no mode nor certificate (set policy: Basic256Sha256 or another to use them)",
                f.mapping[extra[0]],
            )
        f.done(SECURITY_KEYS)
        return NO_SECURITY
    mode = f.read(SECURITY_KEYS, "mode")
    f.read(SECURITY_KEYS, "certificate")
    f.read(SECURITY_KEYS, "private_key")
    cert = _certificate(f, "certificate")
    uri = _application_uri(cert)
    if not uri:
        raise f.error(
            "certificate",
            "an OPC UA application certificate names the application URI in its "
            "subjectAltName (URI:urn:...): this one has none",
            f.mapping["certificate"],
        )
    key = _private_key(f, cert)
    server = _der(_certificate(f, "server_certificate")) if f.has("server_certificate") else None
    trusted = _trust_list(f) if f.has("trusted") else ()
    if server is None and not trusted:
        raise f.error(
            "policy",
            "a secure session needs to know which server to trust: give trusted (a folder or files holding the "
            "server's certificate or its CA) or server_certificate",
            policy,
        )
    f.done(SECURITY_KEYS)
    return OpcUaSecurity(policy, mode, _der(cert), key, server, str(f.mapping["certificate"]), uri, trusted)


def _trust_list(f: Fields) -> tuple[bytes, ...]:
    """The certificates ``trusted`` names (a folder, a file or a list of them), read and checked now."""
    raw = f.sub("trusted")
    names = raw if isinstance(raw, list) else [raw]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise f.error("trusted", "expected a folder, a file, or a list of files (paths relative to tags.yaml)", raw)
    paths = [Path(f.file).parent / n for n in names]
    try:
        return trust.load(paths)
    except trust.TrustListError as exc:
        raise f.error("trusted", str(exc), raw) from None
    except FileNotFoundError as exc:
        raise f.error("trusted", f"not found: {exc.filename}", raw) from None
    except OSError as exc:
        raise f.error("trusted", f"cannot read {exc.filename}: {exc.strerror}", raw) from None


def parse_type(f: Fields) -> OpcUaType:
    security = NO_SECURITY
    if "security" in f.mapping:
        security = parse_security(Fields(f.sub("security"), f.key("security"), f.file, f.line_of("security")))
    return OpcUaType(
        namespace=f.read(TYPE_KEYS, "namespace"),
        publishing_interval=f.read(TYPE_KEYS, "publishing_interval"),
        security=security,
    )


def parse_point(f: Fields) -> OpcUaPoint:
    return OpcUaPoint(
        node=f.read(POINT_KEYS, "node"),
        type=f.read(POINT_KEYS, "type"),
        sampling_interval=f.read(POINT_KEYS, "sampling_interval"),
    )


def parse_endpoint(text: str) -> str:
    """opc.tcp://host:port/path: the port is required, the host checked as for Modbus."""
    s = text.strip()
    if not s.lower().startswith("opc.tcp://"):
        raise ValueError("expected opc.tcp://host:port/path")
    u = urlparse(s)
    try:
        port = u.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError("expected opc.tcp://host:port/path, with the port (OPC UA: 4840)")
    parse_host_port(u.netloc.rsplit("@", 1)[-1], 4840, (), "OPC UA: 4840")
    return s


def parse_device(f: Fields) -> OpcUaEndpoint:
    return OpcUaEndpoint(f.read(DEVICE_KEYS, "endpoint", convert=lambda v: parse_endpoint(to_str(v))))


def check_type(type_name: str, points: dict[str, OpcUaPoint], where: Fields, type_io: OpcUaType | None = None) -> None:
    """Nothing to cross-check: node ids are the server's business, checked when subscribing."""


def check_devices(devices: Sequence[DeviceSite]) -> None:
    """Nothing to check across devices: many devices share one OPC UA server, and a device's
    nodes come from its name, which the core already keeps unique."""


# No cross-key rules of these sections for the schema (scada.driver_api.DriverConfig).
TYPE_RULES: tuple[Schema, ...] = ()
DEVICE_RULES: tuple[Schema, ...] = ()
