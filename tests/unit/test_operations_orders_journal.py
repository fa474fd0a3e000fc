"""The work-order journal (scada/operations/journal.py) on real files: bad files are refused with
the file named, a full disk (a real tmpfs) loses nothing and raises the storage alarm until it
writes again, the CSV export, and ``scada workorders`` reading the file of a running service."""

from __future__ import annotations

import contextlib
import csv
import io
import sys

import pytest

from scada.operations.journal import JOURNAL_FILE, OrderJournal, OrderJournalError, OrderWriter
from scada.operations.model import OpsRequest, OrderEvent, OrderState, WorkOrder
from scada.operations.orders import STORAGE_ALARM
from tests.fs_faults import fill, free_space, needs_root, small_fs
from tests.integration.helpers import DEADLINE
from tests.sqlite_files import run_sql
from tests.unit.test_operations_orders import DISPATCHER, Rig, ops_config

S = 1_000_000_000


def create(description: str) -> OpsRequest:
    return OpsRequest(
        "create", {"service": "lighting_maintenance", "device": "LC-1", "description": description}, DISPATCHER
    )


def order(n: int, state: OrderState = OrderState.NEW, **kw) -> WorkOrder:
    values = dict(
        id=f"WO-{n:06d}",
        source="alarm",
        service="lighting_maintenance",
        priority="medium",
        device=f"LC-{n}",
        commune="Dijon",
        lat=47.3,
        lon=5.0,
        cause="lamps_failed",
        description="3 failed lamps",
        state=state,
        origin_ns=1_800_000_000 * S,
        created_ns=1_800_000_000 * S + n,
        created_by="server",
    )
    values.update(kw)
    return WorkOrder(**values)  # type: ignore[arg-type]


def test_round_trip_of_orders_and_events(tmp_path):
    with OrderJournal(tmp_path / JOURNAL_FILE) as j:
        o = order(1, crew="V-1", reports=("CR-000001", "CR-000002"), warned=True)
        e = OrderEvent(5, o.id, "create", OrderState.NEW, OrderState.NEW, "server", None, "alarm lamps_failed")
        j.write([o, order(2, OrderState.CLOSED)], [e])
        assert j.orders(ids=[o.id]) == [o]
        assert [x.id for x in j.orders(open_only=True)] == [o.id]
        assert [x.id for x in j.orders(state="closed")] == ["WO-000002"]
        assert [x.id for x in j.orders(device=["LC-1", "LC-2"], commune="Dijon")] == [o.id, "WO-000002"]
        assert j.orders(start_ns=1_800_000_000 * S + 2) == [order(2, OrderState.CLOSED)]
        assert j.events(o.id) == [e]
        assert j.last_numbers() == (2, 0)
        with pytest.raises(TypeError, match="unknown order filter 'colour'"):
            j.orders(colour="red")
        out = io.StringIO()
        assert j.export_orders_csv(out, j.orders()) == 2
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert rows[0]["id"] == o.id and rows[0]["origin"] == "2027-01-15T08:00:00.000000Z"
        assert rows[0]["reports"] == "CR-000001,CR-000002" and rows[0]["state"] == "new"


def test_bad_files_are_refused_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(OrderJournalError, match=r"garbage.sqlite: cannot open: file is not a database"):
        OrderJournal(garbage)
    other = tmp_path / "other.sqlite"
    run_sql(other, "CREATE TABLE t (x)")
    with pytest.raises(OrderJournalError, match="another application, not a work-order journal"):
        OrderJournal(other)
    newer = tmp_path / "newer.sqlite"
    OrderJournal(newer).close()
    run_sql(newer, "PRAGMA user_version=9")
    with pytest.raises(OrderJournalError, match="schema version 9, this server reads 1"):
        OrderJournal(newer)
    with pytest.raises(OrderJournalError, match="no such file"):
        OrderJournal(tmp_path / "missing.sqlite", readonly=True)
    with pytest.raises(OrderJournalError, match="does not exist"):
        OrderJournal(tmp_path / "no" / "where.sqlite")
    assert other.read_bytes()[:16] == b"SQLite format 3\0"  # nothing written into another's file


@needs_root
async def test_a_full_disk_loses_nothing_and_raises_the_storage_alarm_until_it_writes(tmp_path):
    with small_fs(tmp_path / "fs", 1024) as fs:
        rig = Rig(fs, ops_config(auto_assign=False))
        svc = rig.service
        try:
            svc.writer.retry_s = 0.05
            fill(fs)
            created = []
            for k in range(40):  # each with a long description: pages the full disk cannot give
                r = await svc.apply(create(f"pole {k} " + "x" * 4000))
                created.append(r.order)
            assert not svc.writer.flush(0.5)  # cannot be written
            assert svc.writer.failing and svc.writer.failures >= 1
            await svc.tick()
            assert rig.alarms.engine._system.get(("workorder_journal", STORAGE_ALARM))
            free_space(fs)
            assert svc.writer.flush(DEADLINE)
            await svc.tick()
            assert not rig.alarms.engine._system.get(("workorder_journal", STORAGE_ALARM))
            stored = svc.journal.orders()
            assert [o.id for o in stored] == created
            assert len(svc.journal.events()) == 40 and svc.writer.dropped_events == 0
        finally:
            rig.close()


def test_writer_keeps_the_newest_state_of_an_order_and_every_event_in_order(tmp_path):
    j = OrderJournal(tmp_path / JOURNAL_FILE)
    w = OrderWriter(j)
    try:
        o = order(1)
        events = []
        for k, state in enumerate((OrderState.ASSIGNED, OrderState.ACCEPTED, OrderState.EN_ROUTE)):
            events.append(OrderEvent(k, o.id, "x", o.state, state, "server"))
            o = order(1, state)
            w.submit([o], events[-1:])
        assert w.flush()
        assert j.orders() == [o] and j.events(o.id) == events
    finally:
        w.close()
        j.close()


def test_writer_thread_serves_a_burst_then_ends_at_close(tmp_path):
    # One thread for a burst of submits: a thread started per submit blocked the core's loop
    # (bench_operations.py: late polls under 200 Open311 POSTs/s).
    j = OrderJournal(tmp_path / JOURNAL_FILE)
    w = OrderWriter(j, linger_s=DEADLINE)
    try:
        w.submit([order(1)])
        assert w.flush()
        first = w._thread
        assert first is not None and first.is_alive()  # idle, waiting for the next submit
        w.submit([order(2)])
        assert w.flush()
        assert w._thread is first
        assert [o.id for o in j.orders()] == [order(1).id, order(2).id]
    finally:
        w.close(timeout=DEADLINE)
        j.close()
    assert not first.is_alive()  # close wakes the lingering thread at once


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def scada(*args: str) -> Ran:
    """``scada ARGS`` in this process (the command's own code, without a Python start per call)."""
    from city_scada import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    return Ran(code, out.getvalue(), err.getvalue())


async def test_scada_workorders_lists_filters_exports_and_shows_an_orders_events(tmp_path):
    rig = Rig(tmp_path, ops_config(auto_assign=False))
    try:
        rig.set("LC-1", failed_lamps=3)
        rig.set("TJ-1", conflict_fault=1)
        lamp = next(o for o in rig.service.orders.values() if o.device == "LC-1")
        await rig.service.apply(OpsRequest("cancel", {"order": lamp.id, "reason": "duplicate"}, DISPATCHER))
        assert rig.service.writer.flush()
        data = str(tmp_path)
        r = scada("workorders", "--data", data)
        assert r.returncode == 0, r.stderr
        assert "TJ-1" in r.stdout and "LC-1" not in r.stdout and "1 order(s)" in r.stderr
        r = scada("workorders", "--data", data, "--all", "--service", "lighting_maintenance", "--csv")
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert [(x["device"], x["state"]) for x in rows] == [("LC-1", "cancelled")]
        out = tmp_path / "tj.csv"
        r = scada("workorders", "--data", data, "--device", "TJ-1", "--csv", str(out))
        (row,) = list(csv.DictReader(out.open()))
        assert (row["cause"], row["priority"], row["on_site_due"][:4]) == ("conflict_fault", "critical", "2027")
        r = scada("workorders", "--data", data, "--order", lamp.id)
        assert r.returncode == 0 and "cancel" in r.stdout and "dora" in r.stdout
        # Bad input: a clear message, exit status not 0.
        for args, text in (
            (("--state", "lost"), "unknown state 'lost'"),
            (("--order", "WO-999999"), "no work order 'WO-999999'"),
            (("--from", "yesterday"), "yesterday"),
        ):
            r = scada("workorders", "--data", data, *args)
            assert r.returncode != 0 and text in r.stderr, (args, r.stderr)
        r = scada("workorders", "--data", str(tmp_path / "nothing"))
        assert r.returncode != 0 and "no such file" in r.stderr
    finally:
        rig.close()
