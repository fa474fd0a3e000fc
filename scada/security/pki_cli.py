"""``scada pki list|trust|reject|renew``: the PKI folder of a server (scada.security.pki).

Each change is one audit record ("pki_change") given to an AuditSink: the command line gives
the data folder's audit trail once it exists (see :func:`add_parser`), tests a MemoryAudit.
A running server sees trusted and rejected certificates at the next secure channel; a renewed
server certificate is used from the next start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scada.security.audit import AuditSink, record_of
from scada.security.pki import REJECTED, Pki, host_names
from scada.security.settings import SecuritySettings, load_security, security_file


class NoAudit:
    """An AuditSink that keeps nothing (until the audit trail is plugged in)."""

    def record(self, rec: Any) -> None:
        pass


def _audit(sink: AuditSink, target: str, arguments: dict[str, str]) -> None:
    sink.record(record_of("pki_change", target, arguments, "Good"))


def trust(pki: Pki, thumb: str, audit: AuditSink) -> Path:
    """Move a rejected certificate to trusted/certs; its new path (KeyError: not in rejected/)."""
    path = pki.move(thumb, REJECTED, "trusted/certs")
    _audit(audit, f"trust {thumb.lower()}", {"path": str(path)})
    return path


def reject(pki: Pki, thumb: str, audit: AuditSink) -> Path:
    """Move a trusted certificate to rejected/certs; its new path (KeyError: not trusted)."""
    path = pki.move(thumb, "trusted/certs", REJECTED)
    _audit(audit, f"reject {thumb.lower()}", {"path": str(path)})
    return path


def renew(pki: Pki, hosts: list[str], audit: AuditSink) -> tuple[Path, Path]:
    """A new server certificate and key; the old ones kept in own/old/ (returned)."""
    old_cert, old_key = pki.renew(hosts)
    _audit(audit, "renew server certificate", {"old": str(old_cert), "hosts": ",".join(host_names(hosts))})
    return old_cert, old_key


AuditOf = Callable[[SecuritySettings], AuditSink]  # the settings' audit trail (settings.audit)


def cmd_pki(args: argparse.Namespace, audit_of: AuditOf | None = None) -> int:
    """Run one ``scada pki`` command; ``audit_of(settings)`` gives the sink of its changes."""
    from common.yamlsrc import ConfigError

    try:
        settings = load_security(security_file(Path(args.config), args.security), Path(args.data))
    except ConfigError as exc:
        print(f"security configuration error: {exc}", file=sys.stderr)
        return 2
    pki = Pki(settings.pki)
    sink: AuditSink = audit_of(settings) if audit_of is not None else NoAudit()
    try:
        if args.pki_command == "list":
            for e in pki.entries():
                print(
                    f"{e.folder:9} {e.thumbprint}  {e.not_before:%Y-%m-%d} .. {e.not_after:%Y-%m-%d}  "
                    f"{e.subject}  {e.uri or ''}"
                )
            return 0
        if args.pki_command == "trust":
            print(f"trusted: {trust(pki, args.thumbprint, sink)}")
        elif args.pki_command == "reject":
            print(f"rejected: {reject(pki, args.thumbprint, sink)}")
        else:
            if not pki.cert_path.exists():
                print(f"no server certificate in {pki.root}: `scada run` makes one at its first start", file=sys.stderr)
                return 1
            old, _ = renew(pki, args.host or [], sink)
            print(f"new server certificate {pki.cert_path}; the old one kept as {old} (clients must trust the new one)")
    except KeyError:
        where = "rejected" if args.pki_command == "trust" else "trusted"
        print(f"no certificate with thumbprint {args.thumbprint} in {where}/ (see `scada pki list`)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot change the PKI folder {pki.root}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any, audit_of: AuditOf | None = None) -> None:
    """``scada pki ...``; ``audit_of(settings)`` gives the sink of the PKI changes (default: none
    kept; the data folder's audit trail plugs in here: ``lambda s: CommandAudit(s.audit)``)."""
    p = sub.add_parser("pki", help="the server's certificates: list, trust or reject client certificates, renew")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--config", default=".", help="configuration folder, for its security.yaml (default: .)")
    p.add_argument("--security", help="the security settings file (default: the configuration folder's)")
    cmds = p.add_subparsers(dest="pki_command", required=True)
    cmds.add_parser("list", help="own, trusted, issuers and rejected certificates: subject, thumbprint, validity")
    for name, what in (
        ("trust", "move a rejected certificate to trusted"),
        ("reject", "move a trusted one to rejected"),
    ):
        c = cmds.add_parser(name, help=what)
        c.add_argument("thumbprint", help="its SHA-1 thumbprint, as `scada pki list` shows it")
    c = cmds.add_parser("renew", help="a new server certificate (the old one kept in own/old/)")
    c.add_argument("--host", action="append", help="another host name or address for it (repeat for several)")
    p.set_defaults(func=lambda args: cmd_pki(args, audit_of))
