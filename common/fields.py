"""Reading one located mapping (YAML or a CSV row) key by key, with loud, located errors.

Shared by the core configuration and by each driver's own ``config.py``: a driver reads its
point and device keys through the same :class:`Fields`, so every error message has the same
shape (file:line: key.path: what is wrong (got value)) whoever raises it.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from common.yamlsrc import ConfigError, LocMap

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used with fullmatch: no trailing newline


class Fields:
    """Take keys out of a mapping; ``done()`` turns any key left over into an error."""

    def __init__(self, mapping: Any, path: str, file: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.file = getattr(mapping, "file", file) or file or "?"
        self.line = getattr(mapping, "line", line) or line
        if mapping is None:  # `key:` with nothing indented under it
            raise ConfigError(
                self.file, self.line, path, "empty: expected keys indented under it (check the indentation)"
            )
        if not isinstance(mapping, dict):
            raise ConfigError(self.file, self.line, path, "expected a mapping of keys to values", mapping)
        self.mapping = mapping
        self._taken: set[str] = set()

    def line_of(self, key: str) -> int | None:
        if isinstance(self.mapping, LocMap):
            return self.mapping.line_of(key)
        return self.line

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str, value: Any = ...) -> ConfigError:
        return ConfigError(self.file, self.line_of(key), self.key(key), message, value)

    def unknown_key(self, key: Any, known: Iterable[str]) -> ConfigError:
        """The error for a key nobody reads, with the nearest known key when it looks like a typo."""
        known = sorted(known)
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
        hint = f", did you mean {close[0]!r}?" if close else ""
        return self.error(str(key), f"unknown key{hint} (known keys: {', '.join(known)})", key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is written (an empty YAML value counts: ``take`` reports it)."""
        return key in self.mapping and self.mapping[key] != ""

    def take(self, key: str, convert: Callable[[Any], Any], default: Any = ..., what: str = "") -> Any:
        """The converted value of ``key``; ``default`` when absent (required when no default)."""
        self._taken.add(key)
        if not self.has(key):
            if default is ...:
                raise self.error(key, f"required key is missing{': ' + what if what else ''}")
            return default
        raw = self.mapping[key]
        if raw is None:  # `key:` with no value, or a value indented on the wrong line
            raise self.error(key, f"no value given{': ' + what if what else ''}")
        try:
            return convert(raw)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc), raw) from None

    def sub(self, key: str) -> Any:
        """The raw value of ``key`` (a nested mapping or list), marked as taken."""
        self._taken.add(key)
        return self.mapping.get(key)

    def done(self, allowed_hint: Iterable[str] | None = None) -> None:
        unknown = [k for k in self.mapping if k not in self._taken]
        if unknown:
            raise self.unknown_key(unknown[0], allowed_hint or self._taken)


# Converters: each raises ValueError with a message a technician understands.


def to_str(v: Any) -> str:
    if isinstance(v, (dict, list)) or isinstance(v, bool):
        raise ValueError("expected text")
    return str(v)


def to_name(v: Any) -> str:
    s = to_str(v)
    if not NAME_RE.fullmatch(s):
        raise ValueError("a name uses letters, digits, '_', '.' and '-' only, and starts with a letter or digit")
    return s


def to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(f):
        raise ValueError("expected a finite number")
    return f


def to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, float):
        if not v.is_integer():  # never truncate: address 5.5 is a typo, not register 5
            raise ValueError("expected an integer")
        return int(v)
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError("expected an integer") from None


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return v.strip().lower() in ("true", "yes", "1")
    raise ValueError("expected true or false")


def positive(convert: Callable[[Any], float]) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        x = convert(v)
        if x <= 0:
            raise ValueError("must be greater than 0")
        return x

    return check


def non_negative(convert: Callable[[Any], float]) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        x = convert(v)
        if x < 0:
            raise ValueError("must not be negative")
        return x

    return check


def in_range(convert: Callable[[Any], float], lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        x = convert(v)
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return x

    return check


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        s = to_str(v)
        if s not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return s

    return check


def parse_host_port(text: str, default_port: int, prefixes: tuple[str, ...] = (), service: str = "") -> tuple[str, int]:
    """'host:port' with an optional scheme prefix, the default port when omitted, IPv6 in brackets.

    The host is a valid IPv4 address, a host name, or an IPv6 address in brackets.
    """
    s = text.strip()
    for prefix in prefixes:
        if s.startswith(prefix):
            s = s[len(prefix) :]
            break
    host, sep, port = s.rpartition(":")
    if not sep or "]" in port:
        host, port = s, str(default_port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
    elif not HOST_RE.match(host):
        raise ValueError(f"expected host:port, for example 10.1.2.3:{default_port}")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("not a valid IPv4 address (four numbers 0-255, e.g. 10.1.2.3)") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port is a number from 1 to 65535{' (' + service + ')' if service else ''}")
    return host, int(port)


def device_template_ok(text: str) -> bool:
    """True when ``text``'s only placeholder is a bare ``{device}`` (no conversion, format, index)."""
    import string

    try:
        parts = list(string.Formatter().parse(text))
    except ValueError:
        return False
    return all(field is None or (field == "device" and not spec and conv is None) for _, field, spec, conv in parts)
