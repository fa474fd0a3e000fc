"""The HMI side's security settings: the optional ``security.yaml`` of the configuration folder.

Absent, the defaults are those of a production server: signed and encrypted endpoints only, no
anonymous login, the PKI, users file and audit trail in the data folder. The file's shape
(validated with file:line errors like tags.yaml and alarms.yaml, JSON Schema in scada/schemas)::

    endpoint: opc.tcp://10.1.2.3:4840/scada/   # optional; else --opcua-endpoint (default loopback)
    policies: [Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss]
    modes: [Sign, SignAndEncrypt]
    allow_none: false            # also offer a None endpoint (the demo, tests)
    anonymous: []                # roles of an anonymous session; [] = anonymous refused
    see_other_communes: true     # default for users limited to some communes
    pki: pki                     # folders, relative to the data folder
    accept_unknown_revocation: false   # true: a CA-issued certificate without a current CRL passes (logged)
    users: users.yaml
    audit: audit.sqlite
    login: {max_failures: 5, lockout_s: 300, delay_s: 0.5, max_delay_s: 8}
    limits: {sessions_per_client: 10, ...}   # see Limits

:func:`load_security` reads it; each section's keys are declared once in a table of
``common.fields.Key`` (``SECURITY_KEYS``, ``LOGIN_KEYS``, ``LIMIT_KEYS``) that ``scada schema``
also writes scada/schemas/security.schema.json from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from common import yamlsrc
from common.fields import Converter, Fields, Key, KeyTable, non_negative, positive, to_bool, to_float, to_int, to_str
from common.yamlsrc import ConfigError
from scada.security.identity import Role

POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
MODES = ("Sign", "SignAndEncrypt")


@dataclasses.dataclass(frozen=True)
class LoginSettings:
    """Failed logins: slowed per user and per client address, then the user locked a while."""

    max_failures: int = 5  # consecutive failures that lock a user
    lockout_s: float = 300.0
    delay_s: float = 0.5  # first failure's delay, doubled per failure up to max_delay_s
    max_delay_s: float = 8.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may take (refused beyond, with the precise status code)."""

    sessions_per_client: int = 10  # per client address
    connections_per_client: int = 20
    subscriptions_per_session: int = 50
    monitored_items_per_session: int = 100_000
    nodes_per_request: int = 10_000  # MaxNodesPerRead/Browse/Write/MethodCall/TranslateBrowsePaths...
    history_nodes_per_request: int = 100  # MaxNodesPerHistoryReadData/Events
    history_values_per_request: int = 10_000
    publish_requests_in_flight: int = 10  # per session
    max_message_size: int = 16 << 20  # bytes, after activation
    max_chunk_count: int = 256
    max_pre_session_message: int = 64 << 10  # bytes, before ActivateSession
    max_pre_session_chunks: int = 16  # chunks of one message, before ActivateSession
    monitored_item_queue_size: int = 1_000  # a monitored item's QueueSize, at most
    pending_messages_per_connection: int = 100  # received, not yet processed: beyond, the connection closes


@dataclasses.dataclass(frozen=True)
class SecuritySettings:
    """Everything security.yaml says, paths made absolute (see the module docstring)."""

    endpoint: str | None = None
    policies: tuple[str, ...] = POLICIES
    modes: tuple[str, ...] = MODES
    allow_none: bool = False
    anonymous: frozenset[Role] = frozenset()
    see_other_communes: bool = True
    pki: Path = Path("var/pki")
    accept_unknown_revocation: bool = False  # False: no current CRL of a CA refuses the certificates it issued
    users: Path = Path("var/users.yaml")
    audit: Path = Path("var/audit.sqlite")
    login: LoginSettings = LoginSettings()
    limits: Limits = Limits()
    source: str = ""  # the file it was read from ("" for the defaults)

    @classmethod
    def defaults(cls, data: Path) -> SecuritySettings:
        """The defaults, with their files in the data folder ``data``."""
        return cls(pki=data / "pki", users=data / "users.yaml", audit=data / "audit.sqlite")


ENDPOINT_PREFIX = "opc.tcp://"


def _list_of(choices: tuple[str, ...], what: str) -> Converter[tuple[str, ...]]:
    """A list of distinct names among ``choices`` (in the order written)."""

    def convert(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise ValueError(f"expected a list of {what}: {', '.join(choices)}")
        out: list[str] = []
        for item in v:
            if not isinstance(item, str) or item not in choices:
                raise ValueError(f"unknown {what} {item!r}: choose among {', '.join(choices)}")
            if item in out:
                raise ValueError(f"{item} is listed twice")
            out.append(item)
        return tuple(out)

    return Converter(
        convert, {"type": "array", "uniqueItems": True, "items": {"type": "string", "enum": list(choices)}}
    )


ROLES = tuple(r.value for r in Role)
_policies = _list_of(POLICIES, "security policy")
_modes = _list_of(MODES, "message security mode")
_roles = _list_of(ROLES, "role")


def _endpoint(v: Any) -> str:
    text = to_str(v).strip()
    if not text.startswith(ENDPOINT_PREFIX) or len(text) == len(ENDPOINT_PREFIX):
        raise ValueError("expected an OPC UA endpoint URL, for example opc.tcp://10.1.2.3:4840/scada/")
    return text


_endpoint_conv = Converter(
    _endpoint,
    {
        "type": "string",
        "pattern": "^\\s*opc\\.tcp://[^\\s/]+.*$",
        "patternErrorMessage": "an OPC UA endpoint URL: opc.tcp://host:port/path",
    },
)


def _path(v: Any) -> str:
    text = to_str(v).strip()
    if not text:
        raise ValueError("expected a path")
    return text


_path_conv = Converter(_path, {"type": "string", "minLength": 1})
_count = positive(to_int)
_seconds = non_negative(to_float)

_D = SecuritySettings()
SECURITY_KEYS: KeyTable = {
    "endpoint": Key(
        _endpoint_conv,
        "The endpoint URL the server listens on (host and port), unless --opcua-endpoint is given. "
        "Default: loopback only (opc.tcp://127.0.0.1:4840/scada/).",
        None,
        examples=("opc.tcp://10.1.2.3:4840/scada/",),
    ),
    "policies": Key(
        _policies,
        "The security policies offered, each with the modes below. [] with allow_none: a None endpoint only.",
        list(POLICIES),
    ),
    "modes": Key(_modes, "The message security modes offered with each policy.", list(MODES)),
    "allow_none": Key(
        to_bool, "Also offer a None endpoint (no signature, no encryption): the demo and tests only.", False
    ),
    "anonymous": Key(_roles, "The roles of an anonymous session; [] (the default): anonymous login refused.", []),
    "see_other_communes": Key(
        to_bool, "Whether a user limited to some communes sees the other communes' nodes (by default).", True
    ),
    "pki": Key(_path_conv, "The PKI folder (own, trusted, issuers, rejected), relative to the data folder.", "pki"),
    "accept_unknown_revocation": Key(
        to_bool,
        "Let a client certificate signed by a CA pass when that CA's revocation status is unknown "
        "(no CRL of the CA in trusted/crl or issuers/crl, its CRL past nextUpdate, or an unreadable "
        "CRL file), with a warning in the log. Default false: refused with "
        "Bad_CertificateRevocationUnknown (Bad_CertificateIssuerRevocationUnknown for an intermediate CA). "
        "Self-signed certificates trusted directly need no CRL.",
        False,
    ),
    "users": Key(_path_conv, "The users file, relative to the data folder.", "users.yaml"),
    "audit": Key(_path_conv, "The audit trail (SQLite), relative to the data folder.", "audit.sqlite"),
    "login": Key(None, "Failed logins: delays and lockout.", None, schema={"$ref": "#/definitions/login"}),
    "limits": Key(None, "What one client may take.", None, schema={"$ref": "#/definitions/limits"}),
}
_L = LoginSettings()
LOGIN_KEYS: KeyTable = {
    "max_failures": Key(_count, "Consecutive failed logins that lock a user.", _L.max_failures),
    "lockout_s": Key(_seconds, "Seconds a locked user stays locked.", _L.lockout_s),
    "delay_s": Key(_seconds, "Delay after a first failure, doubled per failure.", _L.delay_s),
    "max_delay_s": Key(_seconds, "The longest delay after failures.", _L.max_delay_s),
}
_LIMITS = Limits()
LIMIT_KEYS: KeyTable = {
    f.name: Key(_count, f"Limits.{f.name} (see scada/security/settings.py).", getattr(_LIMITS, f.name))
    for f in dataclasses.fields(Limits)
}


def _section(raw: Any, path: str, keys: KeyTable, file: str, line: int | None) -> dict[str, Any]:
    f = Fields(raw, path, file, line)
    out = {k: f.read(keys, k) for k in keys}
    f.done(keys)
    return out


def load_security(path: Path | None, data: Path) -> SecuritySettings:
    """The settings of the security.yaml at ``path`` (None: the defaults), its paths relative to
    the data folder ``data``. ConfigError (file:line: key: message) for anything wrong in it,
    an unknown key included."""
    data = Path(data)
    defaults = SecuritySettings.defaults(data)
    if path is None:
        return defaults
    doc = yamlsrc.load(path)
    file = str(path)
    if doc is None:  # an empty file (or only comments): the defaults
        return dataclasses.replace(defaults, source=file)
    top = Fields(doc, "", file, 1)
    values = {k: top.read(SECURITY_KEYS, k) for k in SECURITY_KEYS if SECURITY_KEYS[k].convert is not None}
    raw_login, raw_limits = top.sub("login"), top.sub("limits")
    top.done(SECURITY_KEYS)
    line_of = doc.line_of if hasattr(doc, "line_of") else (lambda _k: 1)
    login = LoginSettings(**_section(raw_login, "login", LOGIN_KEYS, file, line_of("login"))) if raw_login else _L
    limits = Limits(**_section(raw_limits, "limits", LIMIT_KEYS, file, line_of("limits"))) if raw_limits else _LIMITS
    if login.max_delay_s < login.delay_s:
        raise ConfigError(file, line_of("login"), "login.max_delay_s", "must not be less than login.delay_s")
    policies, modes, allow_none = tuple(values["policies"]), tuple(values["modes"]), values["allow_none"]
    if not allow_none and not (policies and modes):
        key = "policies" if not policies else "modes"
        raise ConfigError(
            file, line_of(key), key, "no endpoint left: list a policy and a mode, or set allow_none: true"
        )
    anonymous = values["anonymous"]
    return SecuritySettings(
        endpoint=values["endpoint"],
        policies=policies,
        modes=modes,
        allow_none=allow_none,
        anonymous=frozenset(Role(r) for r in anonymous),
        see_other_communes=values["see_other_communes"],
        pki=data / values["pki"],
        accept_unknown_revocation=values["accept_unknown_revocation"],
        users=data / values["users"],
        audit=data / values["audit"],
        login=login,
        limits=limits,
        source=file,
    )


def security_file(config_dir: Path, given: str | Path | None) -> Path | None:
    """The security.yaml to read: the one given (``--security``), else the configuration
    folder's when present, else None (the defaults)."""
    if given is not None:
        return Path(given)
    default = Path(config_dir) / "security.yaml"
    return default if default.is_file() else None
