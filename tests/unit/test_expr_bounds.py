"""Alarm expressions are bounded: a huge or deeply nested one is an ExpressionError (which the
alarm loader locates in alarms.yaml), never a RecursionError, a MemoryError or seconds of CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scada.alarms.expr import MAX_CHARS, MAX_DEPTH, ExpressionError, compile_expression

POINTS = ["power", "mode"]


@pytest.mark.parametrize("text, reason", [
    ("not " * 5000 + "power", f"more than {MAX_CHARS}"),
    (" + ".join(["power"] * 20000) + " > 1", f"more than {MAX_CHARS}"),
    (" or ".join(["power > 1"] * 50000), f"more than {MAX_CHARS}"),
    ("-" * (MAX_CHARS - 5) + "power", "nested too deeply"),
    ("not " * (MAX_CHARS // 4 - 2) + "power", "nested too deeply"),
    (" + ".join(["power"] * (MAX_DEPTH + 1)) + " > 1", "nested too deeply"),
    ("(" * 300 + "power" + ")" * 300, "too many nested parentheses"),
    ("abs(" * 60 + "power" + ")" * 60 + " > 1", "nested too deeply"),
])
def test_a_monster_expression_is_refused_with_the_reason(text: str, reason: str) -> None:
    start = time.process_time()
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, POINTS)
    assert reason in str(info.value)
    assert time.process_time() - start < 0.5  # CPU of this process: a loaded machine does not stretch it


def test_an_expression_at_the_bounds_compiles_and_evaluates() -> None:
    # MAX_DEPTH - 1 terms: the comparison on top makes MAX_DEPTH levels.
    text = " + ".join(["power"] * (MAX_DEPTH - 1)) + f" > {MAX_DEPTH}"
    evaluate, used = compile_expression(text, POINTS)
    out = evaluate({"power": np.array([1.0, 2.0, np.nan]), "mode": np.zeros(3)})
    assert used == ("power",) and out.tolist() == [False, True, False]


def test_an_ordinary_expression_is_far_inside_the_bounds() -> None:
    evaluate, used = compile_expression("mode == 1 and not (power > 0.5 or abs(power) < min(power, 2))", POINTS)
    assert used == ("mode", "power")
    assert evaluate({"power": np.array([0.1]), "mode": np.array([1.0])}).tolist() == [True]
