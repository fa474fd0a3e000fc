"""Alarm expressions over a device's points, compiled once into a vectorised evaluator.

An expression alarm in alarms.yaml is a Python-like boolean expression over the point names
of its equipment type, for example::

    contactor and power < 0.2 * nominal_power
    commanded_up and not raised

It is parsed with :mod:`ast` and only a small, safe subset is accepted: point names, numbers,
``and`` / ``or`` / ``not``, comparisons (chains allowed), ``+ - * /``, unary minus, and the
functions ``abs``, ``min``, ``max``. Anything else (attributes, calls to other functions,
subscripts, strings...) is a configuration error naming what is not allowed.

The compiled evaluator takes one numpy array per point (one row per device of the type) and
returns a boolean array: every device of the type is evaluated in a handful of numpy
operations. A device with any of the expression's points missing (NaN) is never in alarm:
no data never raises an alarm; communication loss has its own alarm.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Evaluator = Callable[[Mapping[str, np.ndarray]], np.ndarray]
# A node of the tree, compiled: a constant gives a number, the rest arrays.
_Node = Callable[[Mapping[str, np.ndarray]], np.ndarray | float]

_COMPARE = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_FUNCTIONS = {"abs": (1, 1), "min": (2, 8), "max": (2, 8)}


# An alarm's condition is a line a technician reads: a few points, a few operators. The bounds
# keep a generated or pasted monster from costing seconds at load or from recursing past
# Python's limit (the parser, ``build`` below, and the evaluator's nested closures, two
# frames per level, all recurse on the tree's depth).
MAX_CHARS = 1000
MAX_DEPTH = 40  # levels of the syntax tree: "a + b + c" is 3 (left-nested), "not (a and b)" is 3


class ExpressionError(ValueError):
    """An expression that is not allowed, or names an unknown point."""


def compile_expression(text: str, points: Sequence[str]) -> tuple[Evaluator, tuple[str, ...]]:
    """The evaluator of ``text`` and the points it reads; ExpressionError when not allowed."""
    if len(text) > MAX_CHARS:
        raise ExpressionError(
            f"expression of {len(text)} characters, more than {MAX_CHARS} (split it into several alarms)"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (RecursionError, MemoryError):  # CPython's parser gives up on deep nesting with these
        raise ExpressionError(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    except SyntaxError as exc:
        if not text.strip():
            raise ExpressionError("empty expression") from None
        if exc.offset is None or exc.offset == 0 or exc.offset > len(text.strip()):
            raise ExpressionError("incomplete expression (something is missing at the end)") from None
        raise ExpressionError(f"not a valid expression: {exc.msg} at column {exc.offset}") from None
    known = set(points)
    used: list[str] = []

    def build(node: ast.AST, depth: int = 1) -> _Node:
        if depth > MAX_DEPTH:
            raise ExpressionError(
                f"nested too deeply (more than {MAX_DEPTH} levels of operators; "
                "a long sum or chain counts one level per term)"
            )
        build = functools.partial(build_at, depth=depth + 1)  # children one level deeper
        if isinstance(node, ast.Name):
            if node.id not in known:
                raise ExpressionError(f"unknown point {node.id!r} (points: {', '.join(points)})")
            if node.id not in used:
                used.append(node.id)
            name = node.id
            return lambda env: env[name]
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda env: value
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            value = float(node.value)
            return lambda env: value
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

            def boolop(env):
                out = _truth(parts[0](env))
                for p in parts[1:]:
                    out = combine(out, _truth(p(env)))
                return out

            return boolop
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda env: np.logical_not(_truth(inner(env)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = build(node.operand)
            return lambda env: np.negative(inner(env))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)

            def binop(env):
                with np.errstate(divide="ignore", invalid="ignore"):
                    return op(left(env), right(env))

            return binop
        if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
            operands = [build(node.left)] + [build(c) for c in node.comparators]
            ops = [_COMPARE[type(o)] for o in node.ops]

            def compare(env):
                values = [f(env) for f in operands]
                out = ops[0](values[0], values[1])
                for k in range(1, len(ops)):
                    out = np.logical_and(out, ops[k](values[k], values[k + 1]))
                return out

            return compare
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            lo, hi = _FUNCTIONS[node.func.id]
            if not lo <= len(node.args) <= hi:
                raise ExpressionError(
                    f"{node.func.id}() takes {'1 argument' if hi == 1 else f'{lo} to {hi} arguments'}"
                )
            args = [build(a) for a in node.args]
            if node.func.id == "abs":
                return lambda env: np.abs(args[0](env))
            reduce = np.fmin if node.func.id == "min" else np.fmax

            def minmax(env):
                out = args[0](env)
                for a in args[1:]:
                    out = reduce(out, a(env))
                return out

            return minmax
        what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
        raise ExpressionError(
            f"{what!r} is not allowed (use point names, numbers, and, or, not, comparisons, + - * /, abs, min, max)"
        )

    build_at = build
    root = build(tree.body)
    if not used:
        raise ExpressionError("the expression reads no point")

    def evaluate(env: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(env.values())))
        out = _truth(root(env))
        out = np.broadcast_to(out, (n,)).copy() if np.ndim(out) == 0 else out
        # A device with a point read by the expression missing (NaN) is never in alarm:
        # `!=` and `not` would otherwise be true of no data.
        for name in used:
            out &= ~np.isnan(env[name])
        return out

    return evaluate, tuple(used)


def _truth(x) -> np.ndarray:
    """A value used as a condition: non-zero is true, NaN (no data) is false."""
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    return np.logical_and(a != 0, ~np.isnan(a))
