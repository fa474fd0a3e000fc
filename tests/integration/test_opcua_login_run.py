"""Logins through ``scada run`` (the OPC UA front in its own process): a users file written by
``scada user add --password-stdin``, a security.yaml with a None endpoint and no anonymous login.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from asyncua import Client, ua

from .helpers import DEADLINE, ROOT, Process, _dead_cabinets, free_port, scada_run_args, wait_port

pytestmark = pytest.mark.integration
SC = ua.StatusCodes


async def login(url: str, user: str | None = None, password: str | None = None) -> int:
    """The status code of a login (Good: 0); when Good, the server's state is read first."""
    client = Client(url, timeout=30)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        return exc.code
    try:
        state = await client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value()
        assert state == ua.ServerState.Running
    finally:
        await client.disconnect()
    return SC.Good


def add_user(data, name: str, role: str, password: str) -> None:
    """``scada user add`` as a script runs it: the password on the standard input."""
    cmd = [sys.executable, "-m", "city_scada", "user", "--data", str(data), "add", name, "--role", role]
    done = subprocess.run(
        [*cmd, "--password-stdin"], input=password + "\n", text=True, capture_output=True, cwd=ROOT, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr


async def test_scada_run_logs_in_the_users_of_scada_user_add(tmp_path):
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    (config / "tags.yaml").write_text(head + _dead_cabinets([free_port()], ["LC-1"]))
    security = tmp_path / "security.yaml"
    # Secure endpoints (a server certificate is made: the password travels encrypted) and a
    # None one; no anonymous login; three failures lock a user.
    security.write_text(
        "allow_none: true\nanonymous: []\nlogin: {max_failures: 3, lockout_s: 600, delay_s: 0.01, max_delay_s: 0.05}\n"
    )
    add_user(data, "alice", "operator", "alice's password")
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/scada/"
    server = Process(scada_run_args(config, data, url, security=security), tmp_path / "server.log")
    try:
        wait_port(port, proc=server)
        assert await login(url, "alice", "alice's password") == SC.Good, server.output()
        assert await login(url, "alice", "wrong") == SC.BadUserAccessDenied
        assert await login(url) == SC.BadIdentityTokenRejected  # anonymous: not in this profile
        for _ in range(2):
            assert await login(url, "alice", "wrong") == SC.BadUserAccessDenied
        # Three failures: alice is locked, her right password refused alike.
        assert await login(url, "alice", "alice's password") == SC.BadUserAccessDenied
        # A user added while the server runs logs in without a restart.
        add_user(data, "bob", "observer", "bob's password")
        assert await login(url, "bob", "bob's password") == SC.Good
        log = server.output()
        assert "opcua_activate_session" in log and "locked out after failed logins" in log
    finally:
        server.stop()
