"""Journaled alarm transitions per second: Journal.record beside bare sqlite3 executemany.

    .venv/bin/python bench/bench_alarm_journal.py [--rows 50000] [--rows-single 10000] [--reps 5] [--dir DIR]

Each measurement writes a fresh SQLite file on disk (a temporary folder, or ``--dir``):

* ours: ``Journal.record(rows, states=...)`` per batch, the way the alarm engine calls it: the
  journal rows of the batch and the current state of every alarm instance they touched
  (upsert), in one transaction;
* baseline: a bare ``sqlite3`` connection with the same PRAGMAs (WAL, synchronous=NORMAL)
  and the same schema and indexes (copied from a journal file), ``executemany`` of the same
  rows and states already turned into tuples, one BEGIN IMMEDIATE ... COMMIT per batch.

Batches of 1, 100 and 1,000 rows. Ours and the baseline alternate order per repetition;
figures are medians. The ratio ours/baseline is the cost of our layer (dataclass -> tuple,
numpy-scalar conversion, the lock). Also printed: the engine-side cost of building the
JournalRow and StateRecord objects (not in the rates above), and synchronous=FULL (an
fsync per commit: what surviving a power cut, not just a crash, would cost).

Target (issue 5): at least 5,000 journaled transitions per second.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from operator import attrgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import COMMUNES, line, med  # noqa: E402
from bench.harness import fmt_rate as fmt  # noqa: E402
from scada.alarms.journal import Journal, JournalRow, StateRecord  # noqa: E402
from scada.alarms.states import State  # noqa: E402

TARGET = 5_000
T0 = 1_795_860_000_000_000_000
ALARMS = (
    ("mains_loss", "critical", 900, "lighting_maintenance"),
    ("lamps_failed", "medium", 500, "lighting_maintenance"),
    ("door_open", "high", 750, "lighting_maintenance"),
    ("comm_loss", "high", 750, "lighting_maintenance"),
    ("conflict_fault", "critical", 900, "traffic"),
)
# The life of an alarm: raised, acknowledged, cleared.
CYCLE = (
    ("ACTIVATE", State.UNACK_ACTIVE, True, False),
    ("ACK", State.ACK_ACTIVE, True, True),
    ("CLEAR", State.NORMAL, False, True),
)


def workload(n: int, instances: int):
    """n journal rows over ``instances`` alarm instances, and the state of each after its row."""
    rows, states = [], []
    for i in range(n):
        inst = i % instances
        alarm, prio, sev, service = ALARMS[inst % len(ALARMS)]
        commune = COMMUNES[inst % len(COMMUNES)]
        device = f"LC-{commune[:3].upper()}-{inst:05d}"
        event, state, active, acked = CYCLE[(i // instances) % 3]
        t = T0 + i * 1_000_000
        value = 171.5 if active else 229.0
        rows.append(
            JournalRow(
                t,
                alarm,
                device,
                commune,
                value,
                prio,
                sev,
                event,
                state.name,
                "" if event != "ACK" else "operator1",
                "",
                service,
                f"{commune} {device}: mains voltage {value:g} V",
            )
        )
        states.append(((alarm, device), StateRecord(state, active, acked, t if active else None, last_value=value)))
    return rows, states


def build_cost(rows, states) -> float:
    """Microseconds to build one JournalRow and one StateRecord from values at hand (median of 3)."""
    fields = [tuple(getattr(r, f) for f in JournalRow.__slots__) for r in rows]
    sfields = [tuple(getattr(s, f) for f in StateRecord.__slots__) for _, s in states]
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        [JournalRow(*f) for f in fields]
        [StateRecord(*f) for f in sfields]
        runs.append((time.perf_counter() - t) / len(rows) * 1e6)
    return med(runs)


def batches(rows, states, size):
    out = []
    for a in range(0, len(rows), size):
        # the engine persists each touched instance once per batch: the last state wins
        out.append((rows[a : a + size], list(dict(states[a : a + size]).items())))
    return out


def run_ours(path: Path, work, synchronous="NORMAL") -> float:
    j = Journal(path, synchronous=synchronous)
    n = sum(len(r) for r, _ in work)
    t = time.perf_counter()
    for rows, states in work:
        j.record(rows, states=states)
    dt = time.perf_counter() - t
    assert j.count() == n
    j.close()
    return n / dt


def schema_of(tmp: Path) -> list[str]:
    p = tmp / "schema.db"
    Journal(p).close()
    db = sqlite3.connect(p)
    sql = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    db.close()
    return sql


def run_baseline(path: Path, schema: list[str], work, synchronous="NORMAL") -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    for s in schema:
        db.execute(s)
    ins = (
        'INSERT INTO journal (time_ns, alarm, device, commune, value, priority, severity, event, state, "user", '
        "comment, service, message) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    ups = (
        "INSERT OR REPLACE INTO alarm_state (alarm, device, state, active, acked, since_ns, shelved_until_ns, "
        "shelve_user, shelve_reason, assigned_to, last_value) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    )
    # The journal's columns in the journal's order (built before the timed window).
    row = attrgetter(
        "time_ns", "alarm", "device", "commune", "value", "priority", "severity", "event", "state", "user", "comment",
        "service", "message",
    )  # fmt: skip
    tuples = [
        (
            [row(r) for r in rows],
            [
                (
                    k[0],
                    k[1],
                    s.state.name,
                    int(s.active),
                    int(s.acked),
                    s.since_ns,
                    s.shelved_until_ns,
                    s.shelve_user,
                    s.shelve_reason,
                    s.assigned_to,
                    s.last_value,
                )  # fmt: skip
                for k, s in states
            ],
        )
        for rows, states in work
    ]
    n = sum(len(r) for r, _ in tuples)
    t = time.perf_counter()
    for rows, states in tuples:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(ins, rows)
        db.executemany(ups, states)
        db.execute("COMMIT")
    dt = time.perf_counter() - t
    assert db.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == n
    db.close()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="rows per measurement for batches of 100 and 1,000")
    ap.add_argument("--rows-single", type=int, default=10_000, help="rows per measurement for batches of 1")
    ap.add_argument("--instances", type=int, default=5_000, help="distinct alarm instances")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="folder for the files (default: a temporary folder)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir))
    try:
        schema = schema_of(tmp)
        rows, states = workload(args.rows, args.instances)
        build_us = build_cost(rows, states)
        print(
            f"Journal.record: {args.reps} repetitions, medians; files in {tmp} "
            f"(SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]})"
        )
        line("figure", "measured", "target / baseline", "ratio", width=12)
        k = 0
        for size, n in ((1, args.rows_single), (100, args.rows), (1000, args.rows)):
            work = batches(rows[:n], states[:n], size)
            ours, base = [], []
            for rep in range(args.reps):
                order = ("ours", "base")
                for name in order if rep % 2 == 0 else order[::-1]:
                    k += 1
                    path = tmp / f"{name}-{k}.db"
                    if name == "ours":
                        ours.append(run_ours(path, work))
                    else:
                        base.append(run_baseline(path, schema, work))
                    for p in tmp.glob(f"{name}-{k}.db*"):
                        p.unlink()
            o, b = med(ours), med(base)
            verdict = "PASS" if o >= TARGET else "MISS"
            line(
                f"journaled transitions/s, batches of {size:,} rows (+ states)",
                fmt(o),
                f">= {TARGET:,}/s",
                f"{o / TARGET:6.1f}x  {verdict}",
                width=12,
            )
            line(
                "  bare sqlite3 executemany, same rows, same schema",
                fmt(b),
                "baseline",
                f"ours/bare {o / b:.2f}",
                width=12,
            )
            print(f"{'  spread ours (min-max)':58} {fmt(min(ours)) + ' - ' + fmt(max(ours)):>38}")
        for size, n in ((1, min(args.rows_single, 2_000)), (100, args.rows // 5)):
            work = batches(rows[:n], states[:n], size)
            full = []
            for _ in range(max(1, args.reps // 2)):
                k += 1
                full.append(run_ours(tmp / f"full-{k}.db", work, synchronous="FULL"))
            f = med(full)
            line(
                f"  synchronous=FULL, batches of {size:,} rows (info)",
                fmt(f),
                f">= {TARGET:,}/s",
                f"{f / TARGET:6.1f}x",
                width=12,
            )
        print(
            f"{'  engine side: building JournalRow + StateRecord per row':58} {build_us:>9.2f} us   (not in the rates above)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
