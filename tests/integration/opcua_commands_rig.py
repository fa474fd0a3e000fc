"""What the end-to-end tests of commands through an OPC UA client share (test_opcua_commands.py,
test_opcua_commands_field.py): the real ``scada run`` with a users file, sessions logged in as
those users, a method's typed arguments, the wait for a device in communication, an
independent Modbus master's read of a simulated cabinet, and the audit trail the server writes.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Client, ua

from scada.security.audit_log import AuditLog
from scada.security.users import hash_password, make_user, save_users

from .helpers import DEADLINE, Process, free_port, scada_run_args, until_read, wait_port

USERS = {
    "otto": ("operator", "otto's password"),
    "olga": ("observer", "olga's password"),
    "erin": ("engineer", "erin's password"),
}
MIN_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # an OPC UA DateTime's "none"
DIM_LEVEL_REGISTER = 8  # tags.yaml: lighting_cabinet dim_level, input register 8


@contextlib.contextmanager
def scada_server(folder: Path, config: Path, port: int | None = None) -> Iterator[tuple[str, Path]]:
    """``scada run`` on ``config`` with the users of USERS (no anonymous session), its data in
    ``folder/data``, its log in ``folder/server.log``; yields (endpoint, data folder) once the
    OPC UA port listens, and stops it after."""
    data = folder / "data"
    data.mkdir()
    save_users(
        data / "users.yaml",
        {name: make_user(name, hash_password(pw), [role], None) for name, (role, pw) in USERS.items()},
    )
    security = folder / "security.yaml"
    security.write_text("allow_none: true\nanonymous: []\n")
    port = port or free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/scada/"
    server = Process(scada_run_args(config, data, endpoint, security=security), folder / "server.log")
    try:
        wait_port(port, proc=server)
        yield endpoint, data
    finally:
        server.stop()


def session(endpoint: str, user: str) -> Client:
    """A client that logs in as ``user`` of USERS (``async with`` connects it)."""
    client = Client(endpoint, timeout=30)
    client.set_user(user)
    client.set_password(USERS[user][1])
    return client


def modbus_input(port: int, address: int) -> int:
    """An input register of a simulated cabinet, read by mbpoll (an independent Modbus master)."""
    out = subprocess.run(
        ["mbpoll", "-m", "tcp", "-a", "1", "-0", "-r", str(address), "-t", "3", "-1", "-p", str(port), "127.0.0.1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    line = next(li for li in out.splitlines() if li.strip().startswith(f"[{address}]"))
    return int(line.split(":", 1)[1].split()[0])


async def inputs_for(client: Client, ns: int, method: str, **values) -> list[ua.Variant]:
    """The method's input arguments, typed as its InputArguments say: ``values`` by name, a
    DateTime not given is "none" (MinDateTime)."""
    args = await client.get_node(ua.NodeId(f"{method}/InputArguments", ns)).read_value()
    out = []
    for a in args:
        if a.Name in values:
            vtype = ua.VariantType(a.DataType.Identifier)
            out.append(ua.Variant(values[a.Name], vtype))
        elif a.DataType == ua.NodeId(ua.ObjectIds.DateTime):
            out.append(ua.Variant(MIN_TIME, ua.VariantType.DateTime))
        else:
            raise AssertionError(f"{method}: argument {a.Name} not given")
    return out


async def online(client: Client, ns: int, device: str) -> None:
    """The device (its object's path, ``commune/class/name``) polled and its driver saying it is
    online (what the pipeline checks first)."""
    state = client.get_node(ua.NodeId(f"{device}/Diagnostics/state", ns))
    await until_read(
        lambda: state.read_data_value(raise_on_bad_status=False),
        lambda d: d.StatusCode.is_good() and d.Value.Value == 1,  # online
        DEADLINE,
        f"{device} online",
    )


def audited(data: Path, **filters) -> list:
    """The audit records the server wrote in ``data`` matching ``filters`` (AuditLog.query's)."""
    path = data / "audit.sqlite"
    if not path.exists():
        return []
    with AuditLog(path, read_only=True) as trail:  # read-only: the server writes it meanwhile
        return [e.record for e in trail.query(**filters)]
