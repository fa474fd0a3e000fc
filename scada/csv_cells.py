"""CSV cells a spreadsheet shows as text: a cell that starts like a formula is prefixed with ``'``.

An exported file (the audit trail's) holds text a client chose: a user name typed at a failed
login, a method's arguments, a comment. A cell starting with ``=``, ``+``, ``-`` or ``@`` (or a
tab or carriage return before one) is run as a formula when the file is opened in a
spreadsheet (CSV injection, OWASP): the leading ``'`` makes it plain text there, as
spreadsheet programs themselves do for text typed so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value``, with a ``'`` before it when it is text starting like a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    """Each cell of a row through :func:`safe_cell`."""
    return [safe_cell(v) for v in values]
