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
    users: users.yaml
    audit: audit.sqlite
    login: {max_failures: 5, lockout_s: 300, delay_s: 0.5, max_delay_s: 8}
    limits: {sessions_per_client: 10, ...}   # see Limits

(The loader, ``load_security``, is written with the endpoints and PKI; until then only the
defaults exist.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    users: Path = Path("var/users.yaml")
    audit: Path = Path("var/audit.sqlite")
    login: LoginSettings = LoginSettings()
    limits: Limits = Limits()
    source: str = ""  # the file it was read from ("" for the defaults)

    @classmethod
    def defaults(cls, data: Path) -> SecuritySettings:
        """The defaults, with their files in the data folder ``data``."""
        return cls(pki=data / "pki", users=data / "users.yaml", audit=data / "audit.sqlite")
