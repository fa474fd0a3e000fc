"""What another program does to a SQLite file the server owns, for the tests of the files' checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def run_sql(path: Path, *statements: str) -> None:
    """Open ``path`` (created if missing) with plain sqlite3, run ``statements``, commit and close."""
    db = sqlite3.connect(path)
    try:
        for sql in statements:
            db.execute(sql)
        db.commit()
    finally:
        db.close()
