"""The audit trail: the hash chain, what verify() finds in a tampered file, concurrent appenders,
queries and the CSV export, and the server's non-blocking, bounded writer."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scada.security.audit import FIELDS, AuditRecord, canonical_record
from scada.security.audit_log import GENESIS, AuditError, AuditLog, AuditTrail, chain_hash
from tests.fs_faults import fill, free_space, needs_root, small_fs
from tests.integration.helpers import DEADLINE


def rec(i: int, action: str = "call", user: str = "alice", result: str = "Good") -> AuditRecord:
    return AuditRecord(
        1_764_900_000_000_000_000 + i * 1_000_000_000,
        action,
        user,
        ("Operator",),
        f"ns=1;g={i:08x}",
        "127.0.0.1:5000",
        "ab" * 20,
        "ns=2;s=LC-1/Acknowledge",
        f'{{"comment":"n{i}"}}',
        result,
    )


def filled(path: Path, n: int = 6) -> AuditLog:
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.append([rec(i)])
    return log


def tamper(path: Path, *statements: str) -> None:
    """What someone with the file and a SQL shell does: drop the guards, then edit."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for s in statements:
        db.execute(s)
    db.close()


def kinds(problems) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in problems]


def test_each_record_is_chained_to_the_previous_one(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.sqlite", 3)
    entries = log.query()
    prev = GENESIS
    for e in entries:
        assert e.prev_hash == prev.hex()
        assert e.hash == chain_hash(prev, e.record).hex()
        prev = bytes.fromhex(e.hash)
    assert [e.record for e in entries] == [rec(1), rec(2), rec(3)]
    assert canonical_record(rec(1)).startswith("[1764900001000000000,")  # fixed field order, no keys
    assert log.verify() == []
    assert log.head() == (3, entries[-1].hash)


def test_a_batch_is_appended_whole_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite")
    assert log.append([rec(1), rec(2)]) == 2
    assert log.append([rec(3)]) == 3
    assert [e.seq for e in log.query()] == [1, 2, 3]
    assert log.verify() == []


def test_the_trail_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    filled(path, 2).close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET result = 'Good' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 1")
    db.close()


@pytest.mark.parametrize(
    ("statements", "found", "message"),
    [
        (
            ["UPDATE audit SET result = 'Good', \"user\" = 'mallory' WHERE seq = 3"],
            [(3, "edited")],
            "record 3 was altered",
        ),
        (["DELETE FROM audit WHERE seq = 4"], [(5, "deleted")], "record(s) 4..4 deleted"),
        (["DELETE FROM audit WHERE seq <= 2"], [(3, "deleted")], "the trail starts at record 3"),
        # The first record replaced by one chained to something else (a trail spliced in)
        (
            [f"UPDATE audit SET prev_hash = '{'11' * 32}' WHERE seq = 1"],
            [(1, "start"), (1, "edited")],
            "record 1 does not start the chain",
        ),
    ],
    ids=["edited", "deleted", "first-deleted", "not-from-genesis"],
)
def test_a_tampered_record_is_found_and_located(
    tmp_path: Path, statements: list[str], found: list[tuple[int, str]], message: str
) -> None:
    path = tmp_path / "audit.sqlite"
    filled(path).close()
    tamper(path, *statements)
    problems = AuditLog(path).verify()
    assert kinds(problems) == found
    assert message in problems[0].message


def test_an_edited_record_with_its_hash_recomputed_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = filled(path)
    e = log.query()[2]
    forged = AuditRecord(*(getattr(e.record, f) if f != "user" else "mallory" for f in e.record.__dataclass_fields__))
    new_hash = chain_hash(bytes.fromhex(e.prev_hash), forged).hex()
    log.close()
    tamper(path, f"UPDATE audit SET \"user\" = 'mallory', hash = '{new_hash}' WHERE seq = 3")
    assert kinds(AuditLog(path).verify()) == [(4, "chain")]


def test_two_swapped_records_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    filled(path).close()
    cols = 'time_ns, action, "user", roles, session, client_address, cert_thumbprint, target, arguments, result'
    # The contents of records 2 and 3 exchanged, their hashes left where they were
    tamper(
        path,
        f"CREATE TABLE t AS SELECT seq, {cols} FROM audit WHERE seq IN (2, 3)",
        *(
            f"UPDATE audit SET ({cols}) = (SELECT {cols} FROM t WHERE seq = {other}) WHERE seq = {me}"
            for me, other in ((2, 3), (3, 2))
        ),
        "DROP TABLE t",
    )
    problems = AuditLog(path).verify()
    assert kinds(problems) == [(2, "swapped")]
    assert problems[0].message == "records 2 and 3 were swapped"


def test_two_swapped_whole_rows_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    filled(path).close()
    # Rows 4 and 5 moved whole (hashes included): each row is intact, in the wrong place
    tamper(
        path,
        "UPDATE audit SET seq = 100 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = 5",
        "UPDATE audit SET seq = 5 WHERE seq = 100",
    )
    assert kinds(AuditLog(path).verify()) == [(4, "swapped")]


def test_a_swap_does_not_hide_an_edit_of_the_record_after_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    filled(path).close()
    tamper(
        path,
        "UPDATE audit SET seq = 100 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = 100",
        "UPDATE audit SET result = 'Good', target = 'elsewhere' WHERE seq = 5",
    )
    assert kinds(AuditLog(path).verify()) == [(3, "swapped"), (5, "edited")]


def test_two_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    AuditLog(path).close()
    code = (
        "import sys; from scada.security.audit_log import AuditLog; from tests.unit.test_audit_log import rec\n"
        "log = AuditLog(sys.argv[1])\n"
        "for i in range(150): log.append([rec(i, user=sys.argv[2])])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), who]) for who in ("proc-a", "proc-b")]
    log = AuditLog(path)
    for i in range(150):  # and this process too
        log.append([rec(i, user="proc-c")])
    assert [p.wait(timeout=DEADLINE) for p in procs] == [0, 0]
    entries = log.query()
    assert len(entries) == 450
    assert [e.seq for e in entries] == list(range(1, 451))
    assert {e.record.user for e in entries} == {"proc-a", "proc-b", "proc-c"}
    assert log.verify() == []


def test_queries_filter_by_time_user_action_and_result(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite")
    log.append([rec(1), rec(2, user="bob", result="BadUserAccessDenied"), rec(3, action="write"), rec(4, user="bob")])
    assert [e.seq for e in log.query(user="bob")] == [2, 4]
    assert [e.seq for e in log.query(result="BadUserAccessDenied")] == [2]
    assert [e.seq for e in log.query(action=["write", "call"], user="alice")] == [1, 3]
    assert [e.seq for e in log.query(rec(2).time_ns, rec(4).time_ns)] == [2, 3]
    assert log.query(user=[]) == []
    with pytest.raises(TypeError, match="unknown audit filter 'alarm'"):
        log.query(alarm="x")


def test_the_csv_export_has_a_header_iso_times_and_the_hashes(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.sqlite", 2)
    out = io.StringIO()
    assert log.export_csv(out, user="alice") == 2
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == [
        "time",
        "seq",
        "time_ns",
        "action",
        "user",
        "roles",
        "session",
        "client_address",
        "cert_thumbprint",
        "target",
        "arguments",
        "result",
        "hash",
    ]
    assert rows[1][:5] == ["2025-12-05T02:00:01.000000Z", "1", str(rec(1).time_ns), "call", "alice"]
    assert rows[1][9:12] == ["ns=2;s=LC-1/Acknowledge", '{"comment":"n1"}', "Good"]
    assert rows[2][-1] == log.query()[1].hash


def test_another_file_is_refused_with_its_name(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE x (a)")
    db.close()
    with pytest.raises(AuditError, match="other.sqlite: is an SQLite database of another application"):
        AuditLog(other)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AuditError, match="garbage.sqlite: not a usable audit trail"):
        AuditLog(garbage)
    with pytest.raises(AuditError, match="no such file"):
        AuditLog(tmp_path / "absent.sqlite", read_only=True)


def test_the_writer_appends_from_its_thread_and_stops_when_idle(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.sqlite")
    for i in range(1, 1001):
        trail.record(rec(i))
    assert trail.flush()
    trail.close()
    log = AuditLog(tmp_path / "audit.sqlite")
    assert [e.record for e in log.query()] == [rec(i) for i in range(1, 1001)]
    assert log.verify() == []
    assert trail.stats() == {"audit_written": 1000, "audit_dropped": 0, "audit_write_failures": 0, "audit_backlog": 0}
    trail.record(rec(1001))  # after close: dropped, counted
    assert trail.dropped == 1


def test_an_unwritable_trail_costs_a_bounded_backlog_counted_then_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "gone"  # the trail's folder does not exist (yet): every write fails
    trail = AuditTrail(folder / "audit.sqlite", max_backlog=5, retry_s=0.05)
    failed = threading.Event()
    try:
        for i in range(1, 9):
            trail.record(rec(i))  # never raises, never blocks
        assert trail.dropped == 3  # beyond the backlog: dropped and counted
        assert trail.stats()["audit_backlog"] == 5
        while trail.failures == 0:  # the worker tried, failed, keeps the records
            failed.wait(0.01)
        assert "does not exist" in trail.last_error
        folder.mkdir()  # the disk is back
        assert trail.flush(30)
    finally:
        trail.close()  # also when the test fails: no thread left behind
    log = AuditLog(folder / "audit.sqlite")
    records = [e.record for e in log.query()]
    assert records[:5] == [rec(i) for i in range(1, 6)]
    lost = records[5]
    assert (lost.action, lost.arguments, lost.result) == ("audit_lost", '{"dropped":3}', "BadResourceUnavailable")
    assert log.verify() == []
    assert trail.last_error == ""


@needs_root
def test_a_full_disk_keeps_the_records_waiting_and_the_server_running_until_space_returns(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", 1024) as fs:
        trail = AuditTrail(fs / "audit.sqlite", retry_s=0.05)
        try:
            trail.record(rec(1))
            assert trail.flush()  # the file exists, a record in it
            fill(fs)
            waited = threading.Event()
            for i in range(2, 302):  # 300 KB: more than the pages SQLite may still find free, less than the disk
                trail.record(AuditRecord(*(getattr(rec(i), f) for f in FIELDS[:-2]), "x" * 1000, "Good"))
            while trail.failures == 0:
                waited.wait(0.01)
            assert "full" in trail.last_error  # sqlite3: "database or disk is full"
            assert trail.stats()["audit_backlog"] > 0 and trail.dropped == 0
            free_space(fs)
            assert trail.flush(60)
        finally:
            trail.close()  # also when the test fails: no thread left behind

        log = AuditLog(fs / "audit.sqlite")
        assert [e.seq for e in log.query()] == list(range(1, 302))
        assert log.verify() == []
        log.close()


def test_a_nan_or_infinite_argument_is_kept_as_text_in_strict_json():
    """A client may send NaN or an infinity as a command's value: the trail keeps it, as text,
    and its records stay strict JSON (json.loads with no NaN extension)."""
    import json as _json

    from scada.security.audit import canonical, record_of

    rec = record_of(
        "command", "LC-1", {"value": float("nan"), "args": [float("inf"), -float("inf"), 1.5]}, "BadTypeMismatch"
    )

    def strict(text: str):
        return _json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    assert strict(rec.arguments) == {"args": ["inf", "-inf", 1.5], "value": "nan"}
    assert strict(canonical((1, float("nan")))) == [1, "nan"]


def test_one_writer_thread_serves_a_burst_of_records_then_ends_when_idle(tmp_path: Path) -> None:
    # A thread per record would block the event loop in Thread.start for each (a group action
    # audits one record per device as each finishes).
    trail = AuditTrail(tmp_path / "audit.sqlite")
    trail.LINGER_S = 60.0
    trail.record(rec(1))
    assert trail.flush()
    writer = trail._thread
    assert writer is not None and writer.is_alive()  # lingering after its write
    trail.record(rec(2))
    assert trail.flush()
    assert trail._thread is writer  # the same thread wrote the second record
    trail.close()
    assert not writer.is_alive()

    idle = AuditTrail(tmp_path / "idle.sqlite")
    idle.LINGER_S = 0.05
    idle.record(rec(1))
    assert idle.flush()
    ended = idle._thread
    if ended is not None:
        ended.join(DEADLINE)
        assert not ended.is_alive()
    assert idle._thread is None  # ended by itself, without close()
    idle.close()
