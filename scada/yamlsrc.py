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
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LocList(list):
    """A YAML sequence that knows the line of itself and of each item (1-based)."""

    file: str
    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


_scalars = yaml.SafeLoader  # only its scalar resolution is used


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _convert(node: yaml.Node, file: str, loader: yaml.SafeLoader, path: str = "",
             merged: dict[int, int] | None = None) -> Any:
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
        out = LocList(_convert(item, file, loader, f"{path}[{i}]", merged) for i, item in enumerate(node.value))
        out.file, out.line = file, node.start_mark.line + 1
        out.item_lines = [item.start_mark.line + 1 for item in node.value]
        return out
    return loader.construct_object(node, deep=True)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` as text (a leading BOM dropped), or a ConfigError naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            path, line, "", "not UTF-8 text (save the file with the UTF-8 encoding)", data[exc.start : exc.end]
        ) from None


def load(path: str | Path) -> Any:
    """Load one YAML document from ``path`` into LocMap / LocList / scalars.

    Raises ConfigError for a missing file, a YAML syntax error (with the line where the
    parser gave up and its explanation) or a duplicate key.
    """
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes(), path)
    except FileNotFoundError:
        raise ConfigError(path, None, "", "file not found") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, str(path), loader)
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
    finally:
        loader.dispose()
