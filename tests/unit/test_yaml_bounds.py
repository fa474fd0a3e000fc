"""The YAML loader refuses, located, what would run without end or crash it (issue 11, point 5).

The folder cases in tests/config_cases/ check the messages on realistic files; these tests check
the bounds themselves on small documents.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import yamlsrc
from common.yamlsrc import MAX_ALIAS_VALUES, MAX_DEPTH, ConfigError, load


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "tags.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def laughs(levels: int, width: int = 10) -> str:
    lines = ["l0: &l0 lol"]
    lines += [f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * width) + "]" for k in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = write(tmp_path, laughs(9))  # 10**9 values once expanded
    start = time.process_time()
    with pytest.raises(ConfigError) as info:
        load(path)
    # CPU of this process only: a loaded machine does not stretch it. Expanding even 1% of
    # the bomb would take minutes.
    assert time.process_time() - start < 0.5
    err = info.value
    # aliases counted as used: l1..l4 bring 12 340 values, each *l4 in l5 11 111 more
    assert (err.line, err.key, err.value) == (6, "l5[7]", "*l4")
    assert "YAML aliases expand to more than" in str(err)


def test_aliases_within_the_bound_are_expanded(tmp_path: Path) -> None:
    doc = load(write(tmp_path, laughs(3)))  # 1000 values: a large but honest sharing
    assert len(doc["l3"]) == 10 and doc["l3"][9][9] == ["lol"] * 10
    assert 1000 < MAX_ALIAS_VALUES


@pytest.mark.parametrize("text, line, key", [
    ("a: &a [1, *a]\n", 1, "a[1]"),
    ("a: &a\n  b: 1\n  c: *a\n", 3, "a.c"),
    ("a: &a {k: 1, <<: *a}\n", 1, "a.<<"),
    ("a: &a [[1, [2, *a]]]\n", 1, "a[0][1][1]"),
])
def test_an_alias_inside_the_node_it_names_is_refused_at_the_alias(tmp_path: Path, text: str, line: int,
                                                                   key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert (info.value.line, info.value.key, info.value.value) == (line, key, "*a")
    assert "used inside the node it names" in str(info.value)


def test_nesting_past_the_bound_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "x:\n  y: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert info.value.line == 2 and info.value.key.startswith("x.y[0][0]")
    assert f"nested more than {MAX_DEPTH} levels deep" in str(info.value)


def test_nesting_is_counted_through_aliases(tmp_path: Path) -> None:
    deep = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)  # allowed where it is written
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"a: &a {deep}\nb: {{c: {{d: *a}}}}\n"))
    assert (info.value.line, info.value.key, info.value.value) == (2, "b.c.d", "*a")


def test_nesting_within_the_bound_loads(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + "\n"))
    depth, node = 0, doc["a"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert (depth, node) == (MAX_DEPTH - 2, 1)


@pytest.mark.parametrize("raw, line, value", [
    (b"a: 1\nb: \"x\x00y\"\n", 2, "\x00"),
    (b"a: 1\n\x07b: 2\n", 2, "\x07"),
])
def test_a_control_character_is_located(tmp_path: Path, raw: bytes, line: int, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, raw))
    assert (info.value.line, info.value.value) == (line, value)
    assert "control character" in str(info.value)


def test_utf16_text_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "a: 1\n".encode("utf-16")))
    assert (info.value.line, info.value.value) == (1, b"\xff\xfe")
    assert "UTF-16" in str(info.value)


def test_a_folder_instead_of_a_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "a folder, not a file" in str(info.value)


def test_an_undefined_alias_stays_a_located_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "a: 1\nb: *nowhere\n"))
    assert info.value.line == 2 and "undefined alias" in str(info.value)


def test_the_loader_is_the_bounded_one() -> None:
    # Every configuration file goes through load(): the bounds hold for tags, alarms, scenarios.
    assert issubclass(yamlsrc._BoundedLoader, yamlsrc.yaml.SafeLoader)
