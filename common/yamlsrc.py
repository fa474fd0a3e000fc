"""YAML with line numbers: the loader behind every configuration error message.

PyYAML's ordinary loaders forget where a value came from and silently keep the last of two
duplicate keys. This loader composes the node tree itself, so that every mapping and list
remembers the line of each key and item, and a duplicate key is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A configuration mistake, located: file, line, key path and offending value."""

    def __init__(self, file: str | Path, line: int | None, key: str, message: str, value: Any = ...) -> None:
        self.file = str(file)
        self.line = line
        self.key = key
        self.value = value
        self.message = message
        where = f"{self.file}:{line}" if line else self.file
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        if value is not ...:
            text += f" (got {value!r})"
        super().__init__(text)


class LocMap(dict):
    """A YAML mapping that knows the line of itself and of each of its keys (1-based)."""

    file: str
    line: int
    key_lines: dict[Any, int]  # keys are scalars: text, and numbers (enum values)

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LocList(list):
    """A YAML sequence that knows the line of itself and of each item (1-based)."""

    file: str
    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


# Bounds on what one YAML document may build. A technician's tags.yaml nests about six levels
# (equipment_types.<type>.points.<point>.enum.<value>) and its anchors share a few keys between
# points or devices; the bounds are far above that, and far below what costs time or memory.
MAX_DEPTH = 64  # nesting levels, aliases included: also keeps every recursion far from Python's limit
MAX_ALIAS_VALUES = 100_000  # values brought in by aliases (*name), counted once per use


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses, at the place written in the file, what would not end:

    * an alias used inside the node it names (``a: &a [*a]``): a cycle, endless to convert;
    * aliases that expand past MAX_ALIAS_VALUES values: a "billion laughs" (nine nested lists of
      ten aliases each: 400 bytes that would take hours and gigabytes);
    * nesting deeper than MAX_DEPTH, aliases included (the composer and the conversion recurse).

    Each node's expanded size and height are known once it is composed, so an alias is checked
    in constant time: the refusal comes before any expansion, whatever the file's size.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self._path: list[str] = []  # key path of the node being composed, for messages
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._size: dict[int, int] = {}  # id(node) -> values it holds once aliases are expanded
        self._height: dict[int, int] = {}  # id(node) -> nesting levels it holds, aliases expanded
        self._alias_values = 0

    def _refuse(self, mark: object, message: str, value: Any = ...) -> ConfigError:
        # Past a few levels the key path only repeats itself ([0][0][0]...): the first ones locate.
        key = "".join(self._path[:12]) + ("..." if len(self._path) > 12 else "")
        line = mark.line + 1 if isinstance(mark, yaml.error.Mark) else None  # the pure-Python loader's marks
        return ConfigError(self.file, line, key.removeprefix("."), message, value)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # PyYAML passes the key node when composing a mapping's value, the position in a list.
        if isinstance(index, yaml.ScalarNode):
            self._path.append(f".{index.value}")
        elif isinstance(index, int) and not isinstance(index, bool):
            self._path.append(f"[{index}]")
        else:  # a mapping key, or the document: named by its parent's path
            self._path.append("")
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                node = super().compose_node(parent, index)
                return node if node is None else self._alias(event, node)
            if len(self._path) > MAX_DEPTH:
                raise self._refuse(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def _alias(self, event: yaml.AliasEvent, node: yaml.Node) -> yaml.Node:
        name = f"*{event.anchor}"
        if event.anchor in self._open:
            raise self._refuse(
                event.start_mark,
                f"the alias {name} is used inside the node it names: a loop without end (write the values out)",
                name,
            )
        self._alias_values += self._size[id(node)]
        if self._alias_values > MAX_ALIAS_VALUES:
            raise self._refuse(
                event.start_mark,
                f"YAML aliases expand to more than {MAX_ALIAS_VALUES} values "
                '(aliases of aliases, a "billion laughs"?): write the values out',
                name,
            )
        if len(self._path) - 1 + self._height[id(node)] > MAX_DEPTH:
            raise self._refuse(
                event.start_mark, f"nested more than {MAX_DEPTH} levels deep once {name} is expanded", name
            )
        return node

    # types-PyYAML declares these three as taking a dict of anchors: PyYAML passes the anchor.
    def compose_scalar_node(self, anchor: str | None) -> yaml.ScalarNode:  # type: ignore[override]
        node = super().compose_scalar_node(anchor)  # type: ignore[arg-type]
        self._size[id(node)] = self._height[id(node)] = 1
        return node

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:  # type: ignore[override]
        self._opening(anchor)
        node = super().compose_sequence_node(anchor)  # type: ignore[arg-type]
        self._measure(node, anchor)
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # type: ignore[override]
        self._opening(anchor)
        node = super().compose_mapping_node(anchor)  # type: ignore[arg-type]
        self._measure(node, anchor)
        return node

    def _opening(self, anchor: str | None) -> None:
        if anchor is not None:
            self._open.add(anchor)  # an alias to it among its own children would be a cycle

    def _measure(self, node: yaml.SequenceNode | yaml.MappingNode, anchor: str | None) -> None:
        self._open.discard(anchor)
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        self._size[id(node)] = 1 + sum(self._size[id(c)] for c in children)
        self._height[id(node)] = 1 + max((self._height[id(c)] for c in children), default=0)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _convert(
    node: yaml.Node, file: str, loader: _BoundedLoader, path: str = "", merged: dict[int, int] | None = None
) -> Any:
    """Node tree -> LocMap / LocList / scalars. ``path`` names the node in error messages;
    ``merged`` remembers, per mapping node, how many of its pairs came from merge keys (<<)."""
    merged = {} if merged is None else merged
    if isinstance(node, yaml.MappingNode):
        out = LocMap()
        out.file, out.line, out.key_lines = file, node.start_mark.line + 1, {}
        if id(node) not in merged:  # an aliased node is converted again, already flattened
            own = sum(1 for k, _ in node.value if k.tag != _MERGE_TAG)
            loader.flatten_mapping(node)  # resolves YAML merge keys (<<): merged pairs first
            merged[id(node)] = len(node.value) - own
        n_merged = merged[id(node)]
        own_keys: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = _convert(key_node, file, loader, path, merged)
            line = key_node.start_mark.line + 1
            key_path = f"{path}.{key}" if path else str(key)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(file, line, path, "a mapping key must be a plain scalar", key)
            if index >= n_merged:
                # A key written here may override one brought by <<, but not repeat itself.
                if key in own_keys:
                    raise ConfigError(
                        file, line, key_path, f"duplicate key (first defined on line {out.key_lines[key]})", key
                    )
                own_keys.add(key)
            out[key] = _convert(value_node, file, loader, key_path, merged)
            out.key_lines[key] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LocList(_convert(item, file, loader, f"{path}[{i}]", merged) for i, item in enumerate(node.value))
        seq.file, seq.line = file, node.start_mark.line + 1
        seq.item_lines = [item.start_mark.line + 1 for item in node.value]
        return seq
    return loader.construct_object(node, deep=True)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` as text (a leading BOM dropped), or a ConfigError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # the BOM of a spreadsheet's "Unicode text"
            raise ConfigError(path, 1, "", "UTF-16 text (save the file with the UTF-8 encoding)", data[:2]) from None
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            path, line, "", "not UTF-8 text (save the file with the UTF-8 encoding)", data[exc.start : exc.end]
        ) from None


def load(path: str | Path) -> Any:
    """Load one YAML document from ``path`` into LocMap / LocList / scalars.

    Raises ConfigError, located, for a missing or unreadable file, bytes that are not UTF-8
    text, a character YAML refuses, a YAML syntax error (with the line where the parser gave up
    and its explanation), a duplicate key, and the bounds of _BoundedLoader (alias loops, alias
    expansion, nesting depth): never a Python traceback nor a load without end.
    """
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes(), path)
    except FileNotFoundError:
        raise ConfigError(path, None, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "", "a folder, not a file") from None
    except OSError as exc:  # unreadable (permissions, I/O error...): a located error, not a traceback
        raise ConfigError(path, None, "", f"cannot be read: {exc.strerror or exc}") from None
    try:
        loader = _BoundedLoader(text, str(path))
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, path) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, str(path), loader)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = ""
        if "mapping values are not allowed" in problem or "expected <block end>" in problem:
            hint = " (check the indentation of this line and the one above)"
        elif "'\\t'" in problem:
            hint = " (a tab: indent with spaces only)"
        raise ConfigError(path, line, "", f"YAML syntax error: {problem}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, "", f"YAML error: {exc}") from None
    except RecursionError:  # the bounds above should make this unreachable: still no traceback
        raise ConfigError(path, None, "", f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _reader_error(exc: yaml.reader.ReaderError, text: str, path: Path) -> ConfigError:
    """A character YAML does not accept (a NUL, a control character), at its line."""
    line = text[: exc.position].count("\n") + 1
    return ConfigError(
        path,
        line,
        "",
        f"a control character YAML does not accept (U+{exc.character:04X}): is this a text file?",
        chr(exc.character),
    )
