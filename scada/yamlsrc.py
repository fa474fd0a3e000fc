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


def _convert(node: yaml.Node, file: str, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LocMap()
        out.file, out.line, out.key_lines = file, node.start_mark.line + 1, {}
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        for key_node, value_node in node.value:
            key = _convert(key_node, file, loader)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(file, line, "", "a mapping key must be a plain scalar", key)
            if key in out:
                raise ConfigError(
                    file, line, str(key), f"duplicate key (first defined on line {out.key_lines[key]})"
                )
            out[key] = _convert(value_node, file, loader)
            out.key_lines[key] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        out = LocList(_convert(item, file, loader) for item in node.value)
        out.file, out.line = file, node.start_mark.line + 1
        out.item_lines = [item.start_mark.line + 1 for item in node.value]
        return out
    return loader.construct_object(node, deep=True)


def load(path: str | Path) -> Any:
    """Load one YAML document from ``path`` into LocMap / LocList / scalars.

    Raises ConfigError for a missing file, a YAML syntax error (with the line where the
    parser gave up and its explanation) or a duplicate key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "", "file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, "", f"not UTF-8 text: {exc}") from None
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
        raise ConfigError(path, line, "", f"YAML syntax error: {problem}{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, "", f"YAML error: {exc}") from None
    finally:
        loader.dispose()
