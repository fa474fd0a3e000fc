"""What the server's SQLite files (alarm journal, history store) share: WAL mode and a schema
created once, stamped with the file's application id and schema version."""

from __future__ import annotations

import sqlite3


def create_schema(db: sqlite3.Connection, schema: str, application_id: int, version: int,
                  synchronous: str) -> bool:
    """Switch ``db`` to WAL, then create ``schema`` (``;``-separated statements) and stamp the
    file, in one transaction. False when the file cannot be put in WAL mode (nothing done)."""
    if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
        return False
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("BEGIN IMMEDIATE")
    try:
        for stmt in schema.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA application_id={application_id}")
        db.execute(f"PRAGMA user_version={version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True
