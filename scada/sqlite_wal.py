"""What the server's SQLite files (alarm journal, history store, audit trail, work-order journal)
share: WAL mode and a schema created once, their write transactions, stamped with the file's application id and schema version, the
check of that stamp when a file is opened, and the WHERE clause of their queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any


class HeaderError(Exception):
    """The file is another application's database, or ours at another schema version."""


def check_header(db: sqlite3.Connection, application_id: int, version: int, what: str, schema: str) -> bool:
    """True when the file is already ours at ``version``, False when it is empty (to create).

    Raises HeaderError("is an SQLite database of another application, not <what>") or
    HeaderError("<schema> schema version N, this server reads M"); sqlite3.DatabaseError when
    the file is not SQLite at all (reading the header fails on garbage).
    """
    found_id = db.execute("PRAGMA application_id").fetchone()[0]
    found_version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()
    if found_id != application_id and (found_id != 0 or tables):
        raise HeaderError(f"is an SQLite database of another application, not {what}")
    if found_id == application_id and found_version != version:
        raise HeaderError(f"{schema} schema version {found_version}, this server reads {version}")
    return found_id == application_id


def create_schema(db: sqlite3.Connection, schema: str, application_id: int, version: int, synchronous: str) -> bool:
    """Switch ``db`` to WAL, then create ``schema`` (``;``-separated statements) and stamp the
    file, in one transaction. False when the file cannot be put in WAL mode (nothing done)."""
    if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
        return False
    db.execute(f"PRAGMA synchronous={synchronous}")
    with Transaction(db):
        for stmt in schema.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA application_id={application_id}")
        db.execute(f"PRAGMA user_version={version}")
    return True


class Transaction:
    """One write transaction, ``with Transaction(db):``: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on
    error; all of it or none of it, also when the disk refuses the COMMIT."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")  # left open by a ROLLBACK the disk refused last time
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()  # a COMMIT refused (disk full) leaves nothing half-applied either
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # SQLite rolls back by itself on SQLITE_FULL / SQLITE_IOERR: a second ROLLBACK would
        # raise "no transaction is active" and hide the error that matters.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error propagates; the next transaction rolls this one back first


def where_clauses(
    start_ns: int | None, end_ns: int | None, filters: Mapping[str, Any], names: Sequence[str]
) -> tuple[list[str], list[int | str]]:
    """The clauses (to join with AND) and parameters of a query: ``start_ns <= time_ns < end_ns``
    (each bound when given), and for each of ``names`` given in ``filters`` the column of that
    name equal to one value or to any of several (an empty choice matches nothing)."""
    clauses: list[str] = []
    params: list[int | str] = []
    if start_ns is not None:
        clauses.append("time_ns >= ?")
        params.append(int(start_ns))
    if end_ns is not None:
        clauses.append("time_ns < ?")
        params.append(int(end_ns))
    for name in names:
        v = filters.get(name)
        if v is None:
            continue
        if isinstance(v, str):
            clauses.append(f'"{name}" = ?')
            params.append(v)
        else:
            vs = list(v)
            if not vs:
                clauses.append("0")  # an empty choice matches nothing
                continue
            clauses.append(f'"{name}" IN ({", ".join("?" * len(vs))})')
            params.extend(vs)
    return clauses, params
