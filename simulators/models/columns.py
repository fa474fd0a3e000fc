"""What the models' states have in common: frozen dataclasses of numpy columns, one row a device."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


def with_element(s: S, field: str, i: Any, value: Any) -> S:
    """``s`` with ``s.<field>[i] = value``: the column is copied, so ``s`` itself is unchanged."""
    column = getattr(s, field).copy()
    column[i] = value
    return replace(s, **{field: column})
