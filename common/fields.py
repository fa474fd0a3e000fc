"""Reading one located mapping (YAML or a CSV row) key by key, with loud, located errors.

Shared by the core configuration and by each driver's own ``config.py``: a driver reads its
point and device keys through the same :class:`Fields`, so every error message has the same
shape (file:line: key.path: what is wrong (got value)) whoever raises it.

Each section's keys are declared once, in a table of :class:`Key` (converter, default,
description) that the loader reads them with; each converter carries the JSON Schema
fragment of the values it accepts. ``scada schema`` (scada/schema.py) walks the same
tables to write the editor's JSON Schemas, so a key the loader takes is in the schema by
construction.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from common.yamlsrc import ConfigError, LocMap

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used with fullmatch: no trailing newline

Schema = dict[str, Any]  # a JSON Schema fragment (draft-07 keywords, plus the editor's hints)
T = TypeVar("T")
REQUIRED: Any = ...  # the default of a key that must be written (what Fields.take takes for "no default")
_FROM_TABLE: Any = object()  # Fields.read: use the table's default
MAX_DOUBLE = sys.float_info.max  # bounds of a finite number: .inf is refused by the schema as by to_float

# Pieces of the endpoint patterns, the JSON Schema side of parse_host_port.
_IPV4 = r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HOSTNAME = r"(?=[A-Za-z0-9.-]*[A-Za-z-])[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
_IPV6 = r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[^\]]+)?\]"  # loosely: the loader checks it fully
HOST_PATTERN = f"(?:{_IPV4}|{_HOSTNAME}|{_IPV6})"
PORT_PATTERN = r"0*(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"


class Converter(Generic[T]):
    """A converter (raw value -> typed value, ValueError with a technician's message) that also
    says, as a JSON Schema fragment, which values it accepts: the editor's schema is made of them."""

    def __init__(self, convert: Callable[[Any], T], schema: Schema) -> None:
        self.convert = convert
        self.schema = schema
        self.__doc__ = convert.__doc__

    def __call__(self, v: Any) -> T:
        return self.convert(v)


def converter(schema: Schema) -> Callable[[Callable[[Any], T]], Converter[T]]:
    """Decorator: the function becomes a :class:`Converter` with this schema fragment."""

    def wrap(convert: Callable[[Any], T]) -> Converter[T]:
        return Converter(convert, schema)

    return wrap


def schema_of(convert: Callable[[Any], Any] | None) -> Schema:
    """The schema fragment of a converter (a copy); {} (any value) for a plain function."""
    return copy.deepcopy(convert.schema) if isinstance(convert, Converter) else {}


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a section: how the loader reads it, its default, and its hover help.

    ``convert`` is None for a key the loader parses by hand (a nested mapping, a list): then
    ``schema`` says what it accepts. ``schema`` also replaces the converter's fragment where
    the loader picks the converter from the context (a Modbus unit on TCP or on a serial
    line). ``required`` overrides, for the schema only, "required when there is no default"
    where a rule of the section decides (an MQTT command point has no topic).
    """

    convert: Callable[[Any], Any] | None
    description: str
    default: Any = REQUIRED
    what: str = ""  # completes "required key is missing"
    schema: Schema | None = None
    required: bool | None = None
    examples: tuple[Any, ...] = ()  # offered by the editor's completion

    @property
    def is_required(self) -> bool:
        return self.default is REQUIRED if self.required is None else self.required

    def json_schema(self) -> Schema:
        """The key's property in a JSON Schema: description, accepted values, default."""
        fragment = copy.deepcopy(self.schema) if self.schema is not None else schema_of(self.convert)
        out: Schema = {"description": self.description}
        if "$ref" in fragment:  # draft-07 ignores keywords beside a $ref: keep the help beside it
            out["allOf"] = [fragment]
        else:
            out.update(fragment)
        if isinstance(self.default, (bool, int, float, str)) and self.default != "":
            out["default"] = self.default
        if self.examples:
            out["examples"] = list(self.examples)
        return out


KeyTable = Mapping[str, Key]


def object_schema(keys: KeyTable, rules: Sequence[Schema] = (), description: str = "") -> Schema:
    """The JSON Schema of a mapping read with ``keys``: no other key, the required ones, and the
    section's cross-key ``rules`` (if/then fragments written next to the code that checks them)."""
    out: Schema = {"description": description} if description else {}
    out["type"] = "object"
    out["additionalProperties"] = False
    required = [k for k, key in keys.items() if key.is_required]
    if required:
        out["required"] = required
    out["properties"] = {k: key.json_schema() for k, key in keys.items()}
    if rules:
        out["allOf"] = copy.deepcopy(list(rules))
    return out


def when(key: str, test: Schema, then: Schema, otherwise: Schema | None = None) -> Schema:
    """A cross-key rule: ``then`` applies where ``key`` is written and its value passes ``test``."""
    rule: Schema = {"if": {"properties": {key: test}, "required": [key]}, "then": then}
    if otherwise is not None:
        rule["else"] = otherwise
    return rule


# The core refuses a deadband on a text point (scada/config.py): a rule for the drivers whose
# point type can be text.
NO_DEADBAND: Schema = {"properties": {"deadband": {"const": 0}}}


def ref_list(definition: str) -> Schema:
    """A list (or nothing) of items of one of the document's definitions."""
    return {"type": ["array", "null"], "items": {"$ref": f"#/definitions/{definition}"}}


def ref_map(definition: str) -> Schema:
    """A mapping of names to items of one of the document's definitions."""
    return {"propertyNames": schema_of(to_name), "additionalProperties": {"$ref": f"#/definitions/{definition}"}}


def host_port_schema(prefixes: Sequence[str] = ()) -> Schema:
    """What parse_host_port accepts with these scheme prefixes, as a schema fragment."""
    prefix = f"(?:{'|'.join(re.escape(p) for p in prefixes)})?" if prefixes else ""
    return {
        "type": "string",
        "pattern": rf"^\s*{prefix}{HOST_PATTERN}(?::{PORT_PATTERN})?\s*$",
        "patternErrorMessage": "expected host:port; an IPv4 address has four numbers 0-255, the port is 1-65535",
    }


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

    def read(
        self, keys: KeyTable, key: str, default: Any = _FROM_TABLE, convert: Callable[[Any], Any] | None = None
    ) -> Any:
        """``take`` of a key declared in a table: its converter, default and help (either may be
        overridden where the context decides, e.g. a device's default is its type's)."""
        spec = keys[key]
        conv = convert or spec.convert
        if conv is None:
            raise TypeError(f"{key} is parsed by hand: read it with sub()")
        return self.take(key, conv, spec.default if default is _FROM_TABLE else default, spec.what)

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


@converter({"type": "string"})
def to_str(v: Any) -> str:
    if isinstance(v, (dict, list, bool)):
        raise ValueError("expected text")
    return str(v)


@converter(
    {
        "type": "string",
        "pattern": f"^{NAME_RE.pattern}$",
        "patternErrorMessage": "a name uses letters, digits, '_', '.' and '-' only, and starts with a letter or digit",
    }
)
def to_name(v: Any) -> str:
    s = to_str(v)
    if not NAME_RE.fullmatch(s):
        raise ValueError("a name uses letters, digits, '_', '.' and '-' only, and starts with a letter or digit")
    return s


@converter({"type": "number", "minimum": -MAX_DOUBLE, "maximum": MAX_DOUBLE})
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


@converter({"type": "integer"})  # 5.0 is an integer in JSON Schema as for to_int
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


@converter(
    {
        "anyOf": [
            {"type": "boolean"},
            {
                "type": "string",
                "pattern": "^\\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)\\s*$",
            },
        ]
    }
)
def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return v.strip().lower() in ("true", "yes", "1")
    raise ValueError("expected true or false")


def bounded(convert: Callable[[Any], Any], **bounds: float) -> Schema:
    """The converter's schema with these bounds (minimum, maximum, exclusiveMinimum) in place of its own."""
    schema = schema_of(convert)
    if "exclusiveMinimum" in bounds:
        schema.pop("minimum", None)
    return {**schema, **bounds}


def positive(convert: Callable[[Any], float], message: str = "must be greater than 0") -> Converter[float]:
    """``convert``, then refuse 0 and below (with ``message``)."""

    def check(v: Any) -> float:
        x = convert(v)
        if x <= 0:
            raise ValueError(message)
        return x

    return Converter(check, bounded(convert, exclusiveMinimum=0))


def non_negative(convert: Callable[[Any], float]) -> Converter[float]:
    """``convert``, then refuse a negative value."""

    def check(v: Any) -> float:
        x = convert(v)
        if x < 0:
            raise ValueError("must not be negative")
        return x

    return Converter(check, bounded(convert, minimum=0))


def in_range(convert: Callable[[Any], float], lo: float, hi: float) -> Converter[float]:
    """``convert``, then refuse a value outside [lo, hi]."""

    def check(v: Any) -> float:
        x = convert(v)
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return x

    return Converter(check, bounded(convert, minimum=lo, maximum=hi))


def _choice(convert: Callable[[Any], T], choices: Sequence[T], json_type: str) -> Converter[T]:
    def check(v: Any) -> T:
        x = convert(v)
        if x not in choices:
            raise ValueError(f"must be one of: {', '.join(map(str, choices))}")
        return x

    return Converter(check, {"type": json_type, "enum": list(choices)})


def one_of(*choices: str) -> Converter[str]:
    """Text that is one of ``choices``."""
    return _choice(to_str, choices, "string")


def one_of_int(*choices: int) -> Converter[int]:
    """An integer that is one of ``choices``."""
    return _choice(to_int, choices, "integer")


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


def read_file(f: Fields, key: str) -> tuple[Path, bytes]:
    """The file ``key`` names, relative to the folder of the file being read (tags.yaml), and its
    bytes; a located error when it is missing or unreadable."""
    rel = f.take(key, to_str)
    path = Path(f.file).parent / rel
    try:
        return path, path.read_bytes()
    except FileNotFoundError:
        raise f.error(key, f"file not found: {path}", rel) from None
    except OSError as exc:
        raise f.error(key, f"cannot read {path}: {exc.strerror}", rel) from None
