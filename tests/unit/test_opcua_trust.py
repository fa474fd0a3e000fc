"""The OPC UA client's trust list (drivers/opcua/trust.py): a server certificate is trusted when
it is in the list or directly signed by a CA in it, and within its dates; nothing else is."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua import trust
from tests.tls_files import issue, new_key


def cert(subject: str, key, issuer: str, issuer_key, ca: bool | None = None, start=-1, end=1) -> bytes:
    """DER; valid from ``start`` to ``end`` days from now."""
    valid = (dt.timedelta(days=start), dt.timedelta(days=end))
    return issue(subject, key, issuer, issuer_key, ca=ca, valid=valid).public_bytes(Encoding.DER)


CA_KEY, SERVER_KEY = new_key(), new_key()
CA = cert("site CA", CA_KEY, "site CA", CA_KEY, ca=True)
SERVER = cert("plant", SERVER_KEY, "site CA", CA_KEY)
SELF_SIGNED = cert("plant", SERVER_KEY, "plant", SERVER_KEY, ca=True)


def test_a_listed_certificate_or_one_a_listed_ca_signed_is_trusted():
    assert trust.refusal((SELF_SIGNED,), SELF_SIGNED) is None
    assert trust.refusal((CA,), SERVER) is None
    assert trust.refusal((SERVER,), SERVER) is None


def test_anything_else_is_refused_with_its_thumbprint():
    why = trust.refusal((SELF_SIGNED,), SERVER)
    assert why is not None and trust.thumbprint(SERVER) in why and "not in the trust list" in why
    assert trust.refusal((), SERVER) is not None  # an empty list trusts no one


def test_a_ca_of_the_same_name_with_another_key_did_not_sign_it():
    impostor_key = new_key()
    impostor = cert("site CA", impostor_key, "site CA", impostor_key, ca=True)
    assert trust.refusal((impostor,), SERVER) is not None


def test_a_listed_certificate_that_is_not_a_ca_signs_nothing():
    leaf_key = new_key()
    not_a_ca = cert("site CA", leaf_key, "site CA", leaf_key, ca=False)
    signed = cert("plant", SERVER_KEY, "site CA", leaf_key)
    assert trust.refusal((not_a_ca,), signed) is not None
    no_constraints = cert("site CA", leaf_key, "site CA", leaf_key)
    assert trust.refusal((no_constraints,), signed) is not None


def test_outside_its_dates_even_a_listed_certificate_is_refused():
    expired = cert("plant", SERVER_KEY, "site CA", CA_KEY, start=-10, end=-1)
    early = cert("plant", SERVER_KEY, "site CA", CA_KEY, start=1, end=10)
    for c in (expired, early):
        why = trust.refusal((CA, c), c)
        assert why is not None and "not now" in why


def test_garbage_is_refused():
    assert trust.refusal((CA,), b"not a certificate") == "the server shows a certificate that is not valid X.509"
