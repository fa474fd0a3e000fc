"""The pipeline inside the real server: ``app.commands`` built with the drivers, its read-back
task supervised, every attempt in the audit trail, and a reload followed (the HMI's side of it,
the "command" request over the front's channel, is tests/integration/test_opcua_commands*.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from city_scada import load_config
from scada.app import Application
from scada.control.model import BAD_NO_COMMUNICATION, BAD_NODE_ID_UNKNOWN, Caller, CommandRequest
from scada.security.audit_log import AuditLog
from tests.control_defs import with_control

from .helpers import DEADLINE, ROOT, _dead_cabinets, free_port

pytestmark = pytest.mark.integration

OPERATOR = Caller("olga", ("Operator",), None, session="s1")


@contextlib.asynccontextmanager
async def running(tmp_path):
    """The server on two cabinets nobody answers for (their commands), and the same with a third."""
    ports = [free_port() for _ in range(3)]
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    for folder, names in (("a", ["LC-1", "LC-2"]), ("b", ["LC-1", "LC-2", "LC-3"])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tags.yaml").write_text(head + _dead_cabinets(ports, names))
        (tmp_path / folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    old, new = with_control(load_config(tmp_path / "a")), with_control(load_config(tmp_path / "b"))
    app = Application(old, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data")
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        yield app, new
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def control_text(app, device: str, point: str) -> str | None:
    return app.tagdb.text.get(app.tagdb.id_of(f"Dijon/lighting/{device}/Control/{point}"))


async def test_the_server_runs_commands_audits_them_and_follows_a_reload(tmp_path):
    async with running(tmp_path) as (app, new):
        assert "control-readback" in app.task_names()
        assert set(app.commands.drivers) == {"modbus"}
        r = await app.commands.execute(CommandRequest("LC-1", "SetMode", {"mode": 1}, OPERATOR))
        assert r.status == BAD_NO_COMMUNICATION, r.message  # nothing answers on its port
        assert control_text(app, "LC-1", "last_result").startswith("BadNoCommunication: ")
        assert control_text(app, "LC-1", "last_user") == "olga"
        r = await app.commands.execute(CommandRequest("LC-3", "SetMode", {"mode": 1}, OPERATOR))
        assert r.status == BAD_NODE_ID_UNKNOWN
        await app.reload(new)
        assert app.commands.config is app.config and app.commands.tagdb is app.tagdb
        assert control_text(app, "LC-1", "last_user") == "olga"  # carried by the new tag table
        r = await app.commands.execute(CommandRequest("LC-3", "SetMode", {"mode": 1}, OPERATOR))
        assert r.status == BAD_NO_COMMUNICATION, r.message
        assert control_text(app, "LC-3", "last_user") == "olga"
        assert app.audit.flush()
        path = app.audit.path
    got = [(e.record.user, e.record.target, e.record.result) for e in AuditLog(path).query(action="command")]
    assert got == [
        ("olga", "LC-1", "BadNoCommunication"),
        ("olga", "LC-3", "BadNodeIdUnknown"),
        ("olga", "LC-3", "BadNoCommunication"),
    ]
