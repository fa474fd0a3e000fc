"""The OPC UA client's trust list (drivers/opcua/trust.py): a server certificate is trusted when
it is in the list, or directly signed by a CA in it and made for the server dialled (the endpoint's
host and the server's ApplicationUri in its subjectAltName), and within its dates; nothing else is."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua import trust
from tests.tls_files import LOOPBACK, issue, new_key

URI = "urn:test:plant"
PLANT_SAN = (
    x509.UniformResourceIdentifier(URI),
    x509.DNSName("plant.site.example"),
    x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    x509.IPAddress(ipaddress.ip_address("fd00::7")),
    *LOOPBACK,
)


def cert(subject: str, key, issuer: str, issuer_key, ca: bool | None = None, start=-1, end=1, san=PLANT_SAN) -> bytes:
    """DER; valid from ``start`` to ``end`` days from now; ``san``: its subjectAltName (() none)."""
    valid = (dt.timedelta(days=start), dt.timedelta(days=end))
    return issue(subject, key, issuer, issuer_key, ca=ca, valid=valid, san=san).public_bytes(Encoding.DER)


def refusal(trusted, shown, host="127.0.0.1", application_uri=URI, **kw):
    """The refusal when dialling ``host`` of a server stating ``application_uri``."""
    return trust.refusal(trusted, shown, host=host, application_uri=application_uri, **kw)


CA_KEY, SERVER_KEY = new_key(), new_key()
CA = cert("site CA", CA_KEY, "site CA", CA_KEY, ca=True, san=())
SERVER = cert("plant", SERVER_KEY, "site CA", CA_KEY)
SELF_SIGNED = cert("plant", SERVER_KEY, "plant", SERVER_KEY, ca=True)


def test_a_listed_certificate_or_one_a_listed_ca_signed_is_trusted():
    assert refusal((SELF_SIGNED,), SELF_SIGNED) is None
    assert refusal((CA,), SERVER) is None
    assert refusal((SERVER,), SERVER) is None


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "PLANT.site.example", "plant.site.example.", "10.1.2.3", "fd00::7", "[fd00::7]"]
)
def test_a_ca_signed_certificate_must_name_the_host_dialled(host):
    assert refusal((CA,), SERVER, host=host) is None


@pytest.mark.parametrize("host", ["10.1.2.4", "other.site.example", "site.example", "fd00::8", ""])
def test_a_ca_signed_certificate_for_another_host_is_refused(host):
    why = refusal((CA,), SERVER, host=host)
    assert why is not None and f"is not made for the host {host!r} of the endpoint URL" in why
    assert "plant.site.example, localhost, 10.1.2.3, fd00::7, 127.0.0.1" in why  # what it is made for
    assert trust.thumbprint(SERVER) in why
    assert refusal((SERVER,), SERVER, host=host) is None  # the very certificate listed: trusted as such


@pytest.mark.parametrize("uri", ["urn:test:pump-7", "", "urn:test:plant "])
def test_a_ca_signed_certificate_of_another_application_is_refused(uri):
    why = refusal((CA,), SERVER, application_uri=uri)
    assert why is not None and f"its URI ({URI}) is not the server's ApplicationUri {uri!r}" in why


def test_a_ca_signed_certificate_without_subject_alt_name_is_refused():
    bare = cert("plant", SERVER_KEY, "site CA", CA_KEY, san=())
    why = refusal((CA,), bare)
    assert why is not None and "has no subjectAltName" in why


def test_a_ca_signed_certificate_names_a_host_by_exact_name_only():
    def only(*names: x509.GeneralName) -> bytes:
        return cert("plant", SERVER_KEY, "site CA", CA_KEY, san=(x509.UniformResourceIdentifier(URI), *names))

    assert refusal((CA,), only(x509.DNSName("*.site.example")), host="plant.site.example") is not None
    for host in ("127.0.0.1", "localhost"):  # a URI alone names no host
        assert refusal((CA,), only(), host=host) is not None
    # an address written as a DNS name is not that address
    assert refusal((CA,), only(x509.DNSName("10.1.2.3")), host="10.1.2.3") is not None


def test_anything_else_is_refused_with_its_thumbprint():
    why = refusal((SELF_SIGNED,), SERVER)
    assert why is not None and trust.thumbprint(SERVER) in why and "not in the trust list" in why
    assert refusal((), SERVER) is not None  # an empty list trusts no one


def test_a_ca_of_the_same_name_with_another_key_did_not_sign_it():
    impostor_key = new_key()
    impostor = cert("site CA", impostor_key, "site CA", impostor_key, ca=True)
    assert refusal((impostor,), SERVER) is not None


def test_a_listed_certificate_that_is_not_a_ca_signs_nothing():
    leaf_key = new_key()
    not_a_ca = cert("site CA", leaf_key, "site CA", leaf_key, ca=False)
    signed = cert("plant", SERVER_KEY, "site CA", leaf_key)
    assert refusal((not_a_ca,), signed) is not None
    no_constraints = cert("site CA", leaf_key, "site CA", leaf_key)
    assert refusal((no_constraints,), signed) is not None


def test_outside_its_dates_even_a_listed_certificate_is_refused():
    expired = cert("plant", SERVER_KEY, "site CA", CA_KEY, start=-10, end=-1)
    early = cert("plant", SERVER_KEY, "site CA", CA_KEY, start=1, end=10)
    for c in (expired, early):
        why = refusal((CA, c), c)
        assert why is not None and "not now" in why


def test_garbage_is_refused():
    assert refusal((CA,), b"not a certificate") == "the server shows a certificate that is not valid X.509"
