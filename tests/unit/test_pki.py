"""The PKI folder (scada/security/pki.py) and `scada pki` (pki_cli.py): the server certificate made
once and never overwritten, the client certificate verifier's verdicts, the bounded rejected/
folder, trust / reject / renew with their audit records."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
import structlog
from asyncua import ua
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import city_scada
from scada.security import pki_cli
from scada.security.audit import MemoryAudit
from scada.security.pki import Pki, PkiError, application_uri, thumbprint
from tests import pki_certs as pc

SC = ua.StatusCodes


@pytest.fixture
def pki(tmp_path) -> Pki:
    p = Pki(tmp_path / "pki", max_rejected=3)
    p.ensure_layout()
    return p


def put(p: Pki, cert: pc.Cert, folder: str = "trusted/certs") -> None:
    (p.root / folder / f"{cert.thumbprint}.der").write_bytes(cert.der)


def put_crl(p: Pki, ca: pc.Cert, revoked=(), folder: str = "trusted/crl", **kw) -> Path:
    """The CA's CRL (listing ``revoked``) in ``folder``, named after the CA."""
    path = p.root / folder / f"{ca.cert.subject.rfc4514_string()}.crl"
    path.write_bytes(pc.crl(ca, list(revoked), **kw))
    return path


def test_the_server_certificate_is_made_once_with_names_and_a_private_key(pki):
    assert pki.ensure_server_certificate(uri="urn:test:server", hosts=["10.1.2.3", "scada.example"])
    cert = pki.server_certificate()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert application_uri(cert) == "urn:test:server"
    assert {"localhost", "scada.example"} <= set(san.get_values_for_type(x509.DNSName))
    addresses = set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")} <= addresses
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert stat.S_IMODE(pki.key_path.stat().st_mode) == 0o600
    pki.check_server_key()
    der = pki.cert_path.read_bytes()
    assert not pki.ensure_server_certificate(uri="urn:other")  # never overwritten
    assert pki.cert_path.read_bytes() == der


def test_a_certificate_without_its_key_is_an_error_not_a_new_pair(pki):
    pki.ensure_server_certificate()
    der = pki.cert_path.read_bytes()
    pki.key_path.unlink()
    with pytest.raises(PkiError, match="does not"):
        pki.ensure_server_certificate()
    assert pki.cert_path.read_bytes() == der


def test_a_key_of_another_certificate_is_refused(pki):
    pki.ensure_server_certificate()
    other = pc.make("other")
    pki.cert_path.write_bytes(other.der)
    with pytest.raises(PkiError, match="does not belong"):
        pki.check_server_key()


def test_trusted_self_signed_and_ca_signed_certificates_pass(pki):
    v = pki.verifier()
    alone = pc.make("alone")
    put(pki, alone)
    assert v.check(alone.der, alone.uri).ok
    root = pc.make("root", key_index=2, ca=True, days=3650)
    inter = pc.make("inter", key_index=3, ca=True, issuer=root, days=3650)
    leaf = pc.make("leaf", issuer=inter)
    assert v.check(leaf.der).code == SC.BadCertificateUntrusted
    put(pki, inter, "issuers/certs")  # an intermediate is not trusted by itself
    assert v.check(leaf.der).code == SC.BadCertificateUntrusted
    put(pki, root)
    put_crl(pki, root)  # every CA of the chain says, in a current CRL, that it revoked nothing
    put_crl(pki, inter, folder="issuers/crl")
    assert v.check(leaf.der, leaf.uri).ok


def test_an_unknown_certificate_is_kept_in_rejected_bounded(pki):
    v = pki.verifier()
    certs = [pc.make(f"stranger{i}") for i in range(5)]
    verdicts = [v.check(c.der) for c in certs]
    assert {x.code for x in verdicts} == {SC.BadCertificateUntrusted}
    kept = sorted(p.name for p in (pki.root / "rejected" / "certs").iterdir())
    assert kept == sorted(f"{c.thumbprint}.der" for c in certs[:3])  # max_rejected files, then no more
    assert "rejected/ full" in verdicts[4].reason


@pytest.mark.parametrize(
    ("start", "days"),
    [(dt.timedelta(days=-30), 10), (dt.timedelta(days=3), 10)],
    ids=["expired", "not_yet_valid"],
)
def test_time_invalid_certificates_are_refused_even_trusted(pki, start, days):
    cert = pc.make("late", start=start, days=days)
    put(pki, cert)
    assert pki.verifier().check(cert.der).code == SC.BadCertificateTimeInvalid


def test_revocation_needs_the_issuers_signature_on_the_crl(pki):
    ca = pc.make("ca", key_index=2, ca=True, days=3650)
    put(pki, ca)
    leaf = pc.make("leaf", issuer=ca)
    v = pki.verifier()
    empty = put_crl(pki, ca)
    assert v.check(leaf.der).ok
    forged = pki.root / "trusted" / "crl" / "forged.crl"
    forged.write_bytes(pc.crl(ca, [leaf], signer=pc.key(4)))
    assert v.check(leaf.der).ok, "a CRL the CA did not sign revokes nothing"
    empty.unlink()
    assert v.check(leaf.der).code == SC.BadCertificateRevocationUnknown, "nor does it vouch for anything"
    forged.unlink()
    (pki.root / "trusted" / "crl" / "ca.crl").write_bytes(pc.crl(ca, [leaf]))
    assert v.check(leaf.der).code == SC.BadCertificateRevoked
    assert v.check(pc.make("other-leaf", issuer=ca).der).ok  # same CA, serial not listed


def test_a_ca_issued_certificate_needs_a_current_crl_of_each_issuer(pki):
    root = pc.make("root", key_index=2, ca=True, days=3650)
    inter = pc.make("inter", key_index=3, ca=True, issuer=root, days=3650)
    leaf = pc.make("leaf", issuer=inter)
    put(pki, root)
    put(pki, inter, "issuers/certs")
    v = pki.verifier()
    verdict = v.check(leaf.der)
    assert verdict.code == SC.BadCertificateRevocationUnknown and "no CRL signed by CN=inter" in verdict.reason
    put_crl(pki, inter, folder="issuers/crl")  # the leaf's issuer vouches, the intermediate's does not
    verdict = v.check(leaf.der)
    assert verdict.code == SC.BadCertificateIssuerRevocationUnknown and "CN=root" in verdict.reason
    root_crl = put_crl(pki, root)
    assert v.check(leaf.der).ok
    put_crl(pki, inter, folder="issuers/crl", next_update=-dt.timedelta(hours=1))  # past its nextUpdate
    verdict = v.check(leaf.der)
    assert verdict.code == SC.BadCertificateRevocationUnknown and "expired" in verdict.reason
    put_crl(pki, inter, folder="issuers/crl")
    assert v.check(leaf.der).ok
    # an expired CRL still revokes: a revocation is never undone by the list growing old
    put_crl(pki, root, [inter], next_update=-dt.timedelta(hours=1))
    assert v.check(leaf.der).code == SC.BadCertificateIssuerRevoked
    root_crl.unlink()
    # a self-signed certificate trusted directly has no issuer to ask: no CRL needed
    alone = pc.make("alone")
    put(pki, alone)
    assert v.check(alone.der, alone.uri).ok


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_crl_makes_the_revocation_of_ca_issued_certificates_unknown(pki, damage):
    ca = pc.make("ca", key_index=2, ca=True, days=3650)
    put(pki, ca)
    leaf, alone = pc.make("leaf", issuer=ca), pc.make("alone")
    put(pki, alone)
    older = put_crl(pki, ca)  # an older list, still current, that does not list the leaf
    older.rename(older.with_name("older.crl"))
    newest = put_crl(pki, ca, [leaf])
    v = pki.verifier()
    assert v.check(leaf.der).code == SC.BadCertificateRevoked
    data = newest.read_bytes()
    newest.write_bytes({"garbage": b"not a CRL at all", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    verdict = v.check(leaf.der)  # the garbled newest list must not un-revoke the leaf
    assert verdict.code == SC.BadCertificateRevocationUnknown
    assert str(newest) in verdict.reason and "unreadable" in verdict.reason
    assert v.check(alone.der, alone.uri).ok  # self-signed, trusted directly: no CRL involved


def test_unknown_revocation_passes_when_the_settings_accept_it(pki):
    ca = pc.make("ca", key_index=2, ca=True, days=3650)
    put(pki, ca)
    leaf = pc.make("leaf", issuer=ca)
    v = pki.verifier(accept_unknown_revocation=True)
    with structlog.testing.capture_logs() as logs:
        assert v.check(leaf.der).ok
        assert v.check(leaf.der).ok
    accepted = [e for e in logs if e["event"] == "certificate_revocation_unknown_accepted"]
    assert len(accepted) == 1 and "no CRL signed by CN=ca" in accepted[0]["reason"]  # once, not per channel
    put_crl(pki, ca, [leaf])
    assert v.check(leaf.der).code == SC.BadCertificateRevoked  # a known revocation still refuses


def test_an_unreadable_crl_is_logged_when_the_folder_is_read(pki):
    (pki.root / "issuers" / "crl" / "bad.crl").write_bytes(b"junk")
    with structlog.testing.capture_logs() as logs:
        pki.verifier().reload_if_changed()
    (event,) = [e for e in logs if e["event"] == "crl_unreadable"]
    assert event["log_level"] == "error" and event["path"].endswith("bad.crl")


def test_wrongly_signed_and_unparsable_certificates_are_invalid(pki):
    ca = pc.make("ca", key_index=2, ca=True, days=3650)
    put(pki, ca)
    v = pki.verifier()
    assert v.check(pc.make("forged", issuer=ca, signer=pc.key(3)).der).code == SC.BadCertificateInvalid
    assert v.check(b"\x30\x03junk").code == SC.BadCertificateInvalid
    assert v.check(b"").code == SC.BadCertificateInvalid
    assert not any((pki.root / "rejected" / "certs").iterdir())


def test_the_uri_must_be_the_application_uri(pki):
    cert = pc.make("hmi")
    put(pki, cert)
    assert pki.verifier().check(cert.der, "urn:another").code == SC.BadCertificateUriInvalid


def test_an_error_in_the_check_refuses(pki, monkeypatch):
    cert = pc.make("hmi")
    put(pki, cert)
    v = pki.verifier()

    def broken(*_a):
        raise RuntimeError("bug")

    monkeypatch.setattr(v, "_chain", broken)
    assert v.check(cert.der).code == SC.BadSecurityChecksFailed


def test_trust_reject_renew_move_files_and_are_audited(pki):
    audit = MemoryAudit()
    cert = pc.make("hmi")
    assert pki.verifier().check(cert.der).code == SC.BadCertificateUntrusted
    pki_cli.trust(pki, cert.thumbprint.upper(), audit)
    assert pki.verifier().check(cert.der).ok
    pki_cli.reject(pki, cert.thumbprint, audit)
    assert (pki.root / "rejected" / "certs" / f"{cert.thumbprint}.der").exists()
    with pytest.raises(KeyError):
        pki_cli.reject(pki, cert.thumbprint, audit)
    pki.ensure_server_certificate(uri="urn:test:server")
    before = pki.cert_path.read_bytes()
    old_cert, old_key = pki_cli.renew(pki, [], audit)
    assert old_cert.read_bytes() == before and old_key.exists()
    assert pki.cert_path.read_bytes() != before
    assert application_uri(pki.server_certificate()) == "urn:test:server"
    pki.check_server_key()
    assert [(r.action, r.target.split()[0]) for r in audit.records] == [
        ("pki_change", "trust"),
        ("pki_change", "reject"),
        ("pki_change", "renew"),
    ]


def test_the_command_line_lists_and_trusts(tmp_path, capsys):
    data = tmp_path / "data"
    pki = Pki(data / "pki")
    pki.ensure_server_certificate()
    cert = pc.make("hmi")
    pki.verifier().check(cert.der)  # lands in rejected/
    assert city_scada.main(["pki", "--data", str(data), "--config", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert f"rejected  {cert.thumbprint}" in out
    own = thumbprint(pki.cert_path.read_bytes())
    assert f"own       {own}" in out
    assert city_scada.main(["pki", "--data", str(data), "--config", str(tmp_path), "trust", cert.thumbprint]) == 0
    assert (data / "pki" / "trusted" / "certs" / f"{cert.thumbprint}.der").exists()
    assert city_scada.main(["pki", "--data", str(data), "--config", str(tmp_path), "trust", "00ff"]) == 1
    assert "no certificate with thumbprint 00ff in rejected/" in capsys.readouterr().err


def test_the_command_line_records_its_changes_in_the_sink_given(tmp_path, capsys):
    import argparse

    data = tmp_path / "data"
    cert = pc.make("hmi")
    Pki(data / "pki").verifier().check(cert.der)  # lands in rejected/
    audit, seen = MemoryAudit(), []

    def audit_of(settings):
        seen.append(settings.audit)
        return audit

    parser = argparse.ArgumentParser()
    pki_cli.add_parser(parser.add_subparsers(), audit_of=audit_of)
    args = parser.parse_args(["pki", "--data", str(data), "--config", str(tmp_path), "trust", cert.thumbprint])
    assert args.func(args) == 0
    assert seen == [data / "audit.sqlite"]
    assert [(r.action, r.target, r.result) for r in audit.records] == [
        ("pki_change", f"trust {cert.thumbprint}", "Good")
    ]
