"""``scada audit``: the listing, the CSV export, and ``--verify`` on intact and tampered trails."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from city_scada import main
from scada.security.audit import AuditRecord
from scada.security.audit_log import AuditLog
from tests.integration.helpers import DEADLINE
from tests.unit.test_audit_log import rec, tamper


@pytest.fixture
def data(tmp_path: Path) -> Path:
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.append([rec(1), rec(2, user="bob", result="BadUserAccessDenied"), rec(3, action="write"), rec(4)])
        log.append([rec(5, user="bob")])
    return tmp_path


def test_an_intact_trail_verifies_with_its_count_and_last_hash(data: Path, capsys) -> None:
    assert main(["audit", "--data", str(data), "--verify"]) == 0
    out = capsys.readouterr().out
    head = AuditLog(data / "audit.sqlite", read_only=True).head()[1]
    assert out.strip() == f"audit trail {data / 'audit.sqlite'}: 5 records, chain intact; last hash {head}"


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        (
            ["UPDATE audit SET result = 'Good' WHERE seq = 2"],
            "record 2: edited: record 2 was altered (its hash does not match it)",
        ),
        (["DELETE FROM audit WHERE seq = 3"], "record 4: deleted: after record 2 comes 4: record(s) 3..3 deleted"),
        (
            [
                "UPDATE audit SET seq = 100 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = 4",
                "UPDATE audit SET seq = 4 WHERE seq = 100",
            ],
            "record 3: swapped: records 3 and 4 were swapped",
        ),
    ],
    ids=["edited", "deleted", "swapped"],
)
def test_verify_lists_each_problem_and_exits_1(data: Path, capsys, statements: list[str], expected: str) -> None:
    tamper(data / "audit.sqlite", *statements)
    assert main(["audit", "--data", str(data), "--verify"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("1 problem(s):")
    assert err[1].strip() == expected


def test_the_exit_status_of_the_command(data: Path) -> None:
    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "city_scada", "audit", "--trail", str(data / "audit.sqlite"), "--verify"],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )

    assert verify().returncode == 0
    tamper(data / "audit.sqlite", "UPDATE audit SET \"user\" = 'nobody' WHERE seq = 5")
    done = verify()
    assert done.returncode == 1
    assert "record 5: edited" in done.stderr


def test_csv_to_the_standard_output_with_filters(data: Path, capsys) -> None:
    assert main(["audit", "--data", str(data), "--csv", "--user", "bob"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:6] == ["time", "seq", "time_ns", "action", "user", "roles"]
    assert [(r[1], r[4], r[11]) for r in rows[1:]] == [("2", "bob", "BadUserAccessDenied"), ("5", "bob", "Good")]


def test_csv_to_a_file_over_a_time_range_by_action_and_result(data: Path, capsys) -> None:
    out = data / "out.csv"
    start = "2025-12-05T02:00:02Z"  # rec(2)'s time: included
    assert main(["audit", "--data", str(data), "--from", start, "--action", "call", "--csv", str(out)]) == 0
    assert capsys.readouterr().err.strip() == f"3 records written to {out}"
    rows = list(csv.reader(out.open()))
    assert [r[1] for r in rows[1:]] == ["2", "4", "5"]
    assert main(["audit", "--data", str(data), "--result", "BadUserAccessDenied", "--csv"]) == 0
    assert [r[1] for r in csv.reader(io.StringIO(capsys.readouterr().out))][1:] == ["2"]


def test_the_table(data: Path, capsys) -> None:
    assert main(["audit", "--data", str(data), "--limit", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:5] == ["seq", "time", "(UTC)", "user", "action"]
    assert lines[2].split()[:6] == [
        "2",
        "2025-12-05T02:00:02.000000Z",
        "bob",
        "call",
        "BadUserAccessDenied",
        "127.0.0.1:5000",
    ]
    assert captured.err.strip() == "2 record(s)"


def test_no_trail_or_a_bad_time_is_a_clear_error(tmp_path: Path, data: Path) -> None:
    with pytest.raises(SystemExit, match=f"audit trail {tmp_path / 'none' / 'audit.sqlite'}: no such file"):
        main(["audit", "--data", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="not an ISO 8601 time: 'yesterday'"):
        main(["audit", "--data", str(data), "--from", "yesterday"])


def test_csv_cells_starting_like_a_formula_are_text(tmp_path: Path, capsys) -> None:
    """A client chooses the claimed user name of a failed login, a method's arguments, a comment:
    none may run as a spreadsheet formula when the export is opened (review finding 10)."""
    hostile = AuditRecord(
        1_764_900_000_000_000_000,
        "activate_session",
        '=HYPERLINK("http://x","y")',
        (),
        "",
        "@127.0.0.1:5000",
        "",
        "+1",
        "-1",
        "\t=1+1",
    )
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.append([hostile, rec(2)])
    assert main(["audit", "--data", str(tmp_path), "--csv"]) == 0
    header, first, second = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    row = dict(zip(header, first))
    assert row["user"] == '\'=HYPERLINK("http://x","y")'
    assert (row["client_address"], row["target"], row["arguments"], row["result"]) == (
        "'@127.0.0.1:5000",
        "'+1",
        "'-1",
        "'\t=1+1",
    )
    assert dict(zip(header, second))["user"] == "alice"  # ordinary text untouched
    # The trail itself keeps what was recorded: only the export is made safe.
    assert AuditLog(tmp_path / "audit.sqlite", read_only=True).query()[0].record == hostile
