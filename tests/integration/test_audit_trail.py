"""The audit trail in the server: the front's records cross the channel to the core's trail
(bounded on the front's side, checked on the core's), reloads are audited, the inline front
writes to the trail directly."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from scada.front.link import FrontLink, FrontSettings
from scada.front.process import AUDIT_HIGH_WATER, CoreChannel, Front
from scada.reload import reload_from_files
from scada.security.audit import AuditFanout, to_wire
from scada.security.audit_log import AuditLog, AuditTrail
from tests.integration.helpers import DEADLINE, running_app, until
from tests.unit.test_audit_log import rec

pytestmark = pytest.mark.integration


async def channel_pair(core_app) -> tuple[FrontLink, CoreChannel, asyncio.StreamReader, asyncio.StreamWriter]:
    """A core's FrontLink and a front's CoreChannel on the two ends of a socketpair (what
    ``FrontLink._spawn`` gives a front process), the core not reading yet."""
    core_sock, front_sock = socket.socketpair()
    core_reader, core_writer = await asyncio.open_connection(sock=core_sock)
    front_reader, front_writer = await asyncio.open_connection(sock=front_sock)
    link = FrontLink(core_app, FrontSettings("opc.tcp://127.0.0.1:4840/scada/"))
    return link, CoreChannel(front_reader, front_writer), core_reader, core_writer


async def stop(task: asyncio.Task, *writers: asyncio.StreamWriter) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for w in writers:
        w.close()


async def test_the_fronts_records_reach_the_cores_trail_and_malformed_ones_are_refused(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.sqlite")
    link, channel, core_reader, core_writer = await channel_pair(SimpleNamespace(config=None, audit=trail))
    reading = asyncio.create_task(link._read_loop(core_reader))
    front = Front(channel, None)  # the sink the front gives its HmiServer
    try:
        front.audit.record(rec(1, result="BadUserAccessDenied"))
        channel.send("audit", (*to_wire(rec(2))[:-1], 42))  # a result that is not text
        channel.send("audit", to_wire(rec(3)), "extra")
        front.audit.record(rec(4))
        await until(lambda: link.audit_records + link.audit_refused == 4, DEADLINE, "the four messages read")
    finally:
        await stop(reading, channel.writer, core_writer)
    assert (link.audit_records, link.audit_refused) == (2, 2)
    assert link.stats()["front_audit_refused"] == 2
    assert trail.flush()
    trail.close()
    log = AuditLog(tmp_path / "audit.sqlite")
    assert [e.record for e in log.query()] == [rec(1, result="BadUserAccessDenied"), rec(4)]
    assert log.verify() == []


async def test_a_core_that_does_not_read_costs_the_front_bounded_memory_and_the_loss_is_said(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.sqlite")
    link, channel, core_reader, core_writer = await channel_pair(SimpleNamespace(config=None, audit=trail))
    front = Front(channel, None)
    sink = front.audit.sinks[0]
    sent = 0
    reading = asyncio.create_task(asyncio.sleep(0))  # replaced by the core's reader below
    try:
        while sink.dropped == 0:  # a storm of refusals while the core reads nothing
            front.audit.record(rec(sent))
            sent += 1
            assert sent < 1_000_000, "the front never stopped queueing"
        for i in range(1000):
            front.audit.record(rec(sent + i))
        assert sink.dropped == 1001
        assert channel.backlog() <= AUDIT_HIGH_WATER + 4096  # one record beyond the mark at most
        reading = asyncio.create_task(link._read_loop(core_reader))
        await until(lambda: link.audit_records == sink.sent, DEADLINE, "the backlog read by the core")
        front.audit.record(rec(10**6))  # the channel drained: the loss is said, then this one goes
        await until(lambda: link.audit_records == sink.sent + 1, DEADLINE, "the loss and the record read")
    finally:
        await stop(reading, channel.writer, core_writer)
    assert trail.flush(60)
    trail.close()
    records = [e.record for e in AuditLog(tmp_path / "audit.sqlite").query()]
    assert len(records) == sink.sent + 1
    assert records[: sent - 1] == [rec(i) for i in range(sent - 1)]  # the last one sent: rec(sent - 2)
    assert [r.action for r in records[-2:]] == ["audit_lost", "call"]
    assert records[-2].arguments == '{"dropped":1001}'
    assert records[-1] == rec(10**6)


async def test_reloads_are_audited_and_the_inline_front_writes_to_the_trail(tmp_path: Path) -> None:
    async with running_app(tmp_path, "inline") as (app, _old, _new, _):
        assert isinstance(app.hmi.audit, AuditFanout) and app.hmi.audit.sinks == [app.audit]
        assert await reload_from_files(app, tmp_path / "b") is True
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "tags.yaml").write_text("devices: [\n")
        assert await reload_from_files(app, tmp_path / "bad") is False
        app.hmi.audit.record(rec(1))  # what the inline front's security layer records
        assert app.audit.flush()
        path = app.audit.path
    log = AuditLog(path)
    reloads = log.query(action="reload")
    assert [(e.record.user, e.record.target, e.record.result) for e in reloads] == [
        ("server", str(tmp_path / "b"), "Good"),
        ("server", str(tmp_path / "bad"), "BadConfigurationError"),
    ]
    assert '"changes":{"devices_added":["LC-3"]}' in reloads[0].record.arguments
    assert '"trigger":"SIGHUP"' in reloads[0].record.arguments
    assert "configuration error" in reloads[1].record.arguments
    assert log.query(action="call")[0].record == rec(1)
    assert path == tmp_path / "data" / "audit.sqlite"
    assert log.verify() == []
