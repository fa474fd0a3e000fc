"""MQTT broker security of tags.yaml: TLS and a user name with its password.

```yaml
access_bollard:
  driver: mqtt
  broker_security:
    ca: pki/broker-ca.pem              # CA certificate(s) the broker's certificate must chain to: TLS on
    certificate: pki/scada-mqtt.pem    # optional: our client certificate (PEM), when the broker asks for one
    private_key: pki/scada-mqtt.key    # its key (PEM, without a password), with certificate
    username: scada
    password_file: secrets/mqtt.pw     # or password_env: SCADA_MQTT_PASSWORD; never the password itself
```

A type-level key, as OPC UA's ``security``: a type is the equipment of one supervision system,
reached with one client identity; devices of types with different ``broker_security`` on one
broker get one connection each. Paths are relative to the folder of tags.yaml.

Everything is read and checked here, once (files present, the CA and the client certificate
loadable into a TLS context, the key belonging to the certificate, the password file or variable
present and not empty), so that a mistake is a located configuration error rather than a broker
link that never comes up. The password is never written in tags.yaml: a file (the
configuration folder is often in version control, the file is not) or an environment variable
(a service manager's credential). The TLS context checks the broker's certificate against ``ca``
and its name against the endpoint's host (an IP address in the certificate's subjectAltName for
an endpoint given as an address), with TLS 1.2 at least.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from common.fields import Fields, Key, KeyTable, Schema, read_file, to_str, when

_FILE = {"type": "string", "minLength": 1}
_ENV = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "patternErrorMessage": "an environment variable name"}
MAX_PASSWORD = 65535  # bytes: the most an MQTT CONNECT's password field holds


@dataclass(frozen=True, slots=True)
class MqttSecurity:
    """How the driver reaches a broker: TLS when ``ca`` is set, a login when ``username`` is.

    Paths are absolute (resolved against tags.yaml's folder); ``password`` never appears in a
    repr or a log line, ``password_source`` says where it came from.
    """

    ca: str = ""
    certificate: str = ""
    private_key: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    password_source: str = ""  # "file /etc/scada/mqtt.pw" or "environment variable X", for messages

    @property
    def tls(self) -> bool:
        return bool(self.ca)

    def describe(self) -> str:
        """A short account for log lines: TLS or not, the user (never the password)."""
        parts = ["tls" if self.tls else "plain"]
        if self.username:
            parts.append(f"user {self.username}")
        return ", ".join(parts)


NO_SECURITY = MqttSecurity()


def tls_context(sec: MqttSecurity) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate verified against ``sec.ca``, its host name
    checked, TLS 1.2 at least, our certificate presented when one is configured.

    Raises ``ssl.SSLError`` or ``OSError`` on an unreadable or mismatched file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=sec.ca)
    if sec.certificate:
        ctx.load_cert_chain(sec.certificate, sec.private_key, password=_no_password)
    return ctx


class EncryptedKey(ValueError):
    """The client key is encrypted: the server starts unattended, it has no one to ask."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise EncryptedKey("the private key is encrypted: give it without a password (and protect the file)")


SECURITY_KEYS: KeyTable = {
    "ca": Key(
        to_str,
        "CA certificate(s), PEM, that the broker's certificate must chain to (relative to the folder of tags.yaml). Given: the link uses TLS (1.2 or later) and checks the broker's name against the endpoint's host. Absent: plain MQTT.",
        None,
        schema=_FILE,
    ),
    "certificate": Key(
        to_str,
        "Optional, with ca and private_key: our client certificate (PEM, relative to the folder of tags.yaml), for a broker that asks for one (require_certificate).",
        None,
        schema=_FILE,
    ),
    "private_key": Key(
        to_str,
        "The client certificate's private key (PEM, relative to the folder of tags.yaml), without a password: the server starts unattended, so protect the file instead.",
        None,
        schema=_FILE,
    ),
    "username": Key(
        to_str,
        "User name the driver logs in to the broker with; its password comes from password_file or password_env (over TLS, or it travels in clear).",
        None,
        schema={"type": "string", "minLength": 1},
    ),
    "password_file": Key(
        to_str,
        "File holding the broker password (relative to the folder of tags.yaml; its first line, without the line end). Keep it out of version control and readable by the server's user only.",
        None,
        schema=_FILE,
    ),
    "password_env": Key(
        to_str,
        "Name of the environment variable holding the broker password (set by the service manager), instead of password_file.",
        None,
        schema=_ENV,
    ),
}
# parse_security: a certificate needs its key and TLS; a password source needs a user; one source at most;
# and never an inline password (refused with its own message by the loader).
SECURITY_RULES: tuple[Schema, ...] = (
    when("certificate", {}, {"required": ["ca", "private_key"]}),
    when("private_key", {}, {"required": ["certificate"]}),
    when("password_file", {}, {"required": ["username"], "not": {"required": ["password_env"]}}),
    when("password_env", {}, {"required": ["username"]}),
    when("username", {}, {"anyOf": [{"required": ["password_file"]}, {"required": ["password_env"]}]}),
)
INLINE_PASSWORD = (
    "the password is never written in tags.yaml: put it in a file (password_file) or an environment "
    "variable (password_env)"
)


def _path(f: Fields, key: str) -> str:
    """A file named relative to the folder of tags.yaml, which must be readable: its absolute path."""
    return str(read_file(f, key)[0].resolve())


def _password(f: Fields) -> tuple[str, str]:
    """The password and where it came from (password_file or password_env)."""
    if f.has("password_file") and f.has("password_env"):
        raise f.error("password_env", "give the password in password_file or password_env, not both")
    if f.has("password_file"):
        path = Path(_path(f, "password_file"))
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            raise f.error("password_file", f"{path} is not UTF-8 text", f.mapping["password_file"]) from None
        password, source, key = text.split("\n", 1)[0].rstrip("\r"), f"file {path}", "password_file"
    else:
        name = f.take("password_env", to_str)
        password, source, key = os.environ.get(name, ""), f"environment variable {name}", "password_env"
        if name not in os.environ:
            raise f.error(key, f"the environment variable {name} is not set", name)
    if not password:
        raise f.error(key, f"the password in the {source} is empty", f.mapping[key])
    if len(password.encode()) > MAX_PASSWORD:
        raise f.error(key, f"the password in the {source} is longer than MQTT allows ({MAX_PASSWORD} bytes)")
    return password, source


def parse_security(f: Fields) -> MqttSecurity:
    """The ``broker_security`` block: files read and checked now, located errors otherwise."""
    for inline in ("password", "passwd"):
        if inline in f.mapping:
            raise f.error(inline, INLINE_PASSWORD, "***")  # the value itself is never echoed
    ca = _path(f, "ca") if f.has("ca") else ""
    certificate = _path(f, "certificate") if f.has("certificate") else ""
    private_key = _path(f, "private_key") if f.has("private_key") else ""
    if certificate and not private_key:
        raise f.error("certificate", "a client certificate needs its private_key")
    if private_key and not certificate:
        raise f.error("private_key", "a private_key goes with its certificate")
    if certificate and not ca:
        raise f.error("certificate", "a client certificate is for TLS: give the broker's ca too")
    username = f.take("username", to_str, "")
    password, source = "", ""
    if f.has("password_file") or f.has("password_env"):
        if not username:
            key = "password_file" if f.has("password_file") else "password_env"
            raise f.error(key, "a password goes with a username")
        password, source = _password(f)
    elif username:
        raise f.error("username", "a user needs a password: give password_file or password_env")
    f.take("password_file", to_str, "")
    f.take("password_env", to_str, "")
    f.done(SECURITY_KEYS)
    sec = MqttSecurity(ca, certificate, private_key, username, password, source)
    if sec.tls:
        _check_tls(f, sec)
    return sec


def _check_tls(f: Fields, sec: MqttSecurity) -> None:
    """Load the files as the driver will (tls_context), blaming the key whose file fails."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=sec.ca)
    except ssl.SSLError as exc:
        raise f.error("ca", f"{sec.ca} holds no PEM CA certificate ({exc.reason or exc})", f.mapping["ca"]) from None
    if sec.certificate:
        try:
            ctx.load_cert_chain(sec.certificate, sec.private_key, password=_no_password)
        except EncryptedKey as exc:
            raise f.error("private_key", f"{sec.private_key}: {exc}", f.mapping["private_key"]) from None
        except ssl.SSLError as exc:
            raise f.error(
                "certificate",
                f"{sec.certificate} and {sec.private_key} are not a PEM certificate and its unencrypted key "
                f"({exc.reason or exc})",
                f.mapping["certificate"],
            ) from None
