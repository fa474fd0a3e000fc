"""An HMI Read right after a Good command shows the confirmed value (issue 15).

bench/bench_control.py's "single" section found Reads, sent through the same connection right
after a Good SetDimLevel, that still showed the old level: the core answers a command after the
change batch that confirmed it, and sends that batch to the front before the answer, but the
front's Read serves the publisher's columns, which a batch reaches only when the publisher's
task has taken it from its queue. Here: simulated cabinets (Modbus, own process), the real
``scada run`` (its OPC UA front in its own process), one asyncua client that calls SetDimLevel
and reads ``dim_level`` at once, many times, each call changing the level.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.opcua.address_space import NAMESPACE_URI
from scada.security.users import hash_password, make_user, save_users

from .helpers import DEADLINE, Process, free_port, free_port_range, scada_run_args, until_read, wait_port, write_cabinets

pytestmark = pytest.mark.integration

OPERATOR = ("otto", "otto's password")
SET_DIM = "_types/lighting_cabinet/_commands/SetDimLevel"
NO_END = ua.Variant(datetime(1601, 1, 1, tzinfo=UTC), ua.VariantType.DateTime)  # SetDimLevel's "until": none
CALLS = 300  # Good calls, each followed by a Read (stale on main: 4 % in the bench, 0-2 % here, 1-60 % loaded)
# No rate limit stands in the way of this many commands (the limits are tested elsewhere).
CONTROL = """
control:
  user_rate: {per_minute: 1000000, burst: 100000}
  device_rate: {per_minute: 1000000, burst: 100000}
"""


@pytest.fixture
def city(tmp_path: Path):
    """Three simulated cabinets, polled every 0.1 s, and ``scada run``; yields (endpoint, cabinets)."""
    base = free_port_range(3)
    config, data = tmp_path / "config", tmp_path / "data"
    # Frequent polls: the front receives batches all along, as on a city.
    cabinets = write_cabinets(config, base, "LC-R", poll=0.1)
    with (config / "tags.yaml").open("a") as f:
        f.write(CONTROL)
    data.mkdir()
    user, password = OPERATOR
    save_users(data / "users.yaml", {user: make_user(user, hash_password(password), ["operator"], None)})
    security = tmp_path / "security.yaml"
    security.write_text("allow_none: true\nanonymous: []\n")
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/scada/"
    inventory = config / "inventory" / "lighting-cabinets.csv"
    sim = Process(["-m", "simulators", "lighting", "--inventory", str(inventory)], tmp_path / "sim.log")
    server = Process(scada_run_args(config, data, endpoint, security=security), tmp_path / "server.log")
    try:
        wait_port(base + 2, proc=sim)
        wait_port(port, proc=server)
        yield endpoint, cabinets
    finally:
        server.stop()
        sim.stop()


def operator(endpoint: str) -> Client:
    client = Client(endpoint, timeout=30)
    client.set_user(OPERATOR[0])
    client.set_password(OPERATOR[1])
    return client


async def test_a_read_right_after_a_good_command_shows_the_confirmed_value(city):
    endpoint, cabinets = city
    client = operator(endpoint)
    async with client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        devices, levels = [], []
        for cab in cabinets:
            path = f"{cab.commune}/lighting/{cab.name}"
            state = client.get_node(ua.NodeId(f"{path}/Diagnostics/state", ns))
            await until_read(
                lambda state=state: state.read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.is_good() and d.Value.Value == 1,  # online
                DEADLINE,
                f"{cab.name} online",
            )
            dim = client.get_node(ua.NodeId(f"{path}/dim_level", ns))
            devices.append((client.get_node(ua.NodeId(path, ns)), dim))
            levels.append(await dim.read_value())
        method = ua.NodeId(SET_DIM, ns)
        stale = []
        for n in range(CALLS):
            k = n % len(devices)
            dev, dim = devices[k]
            level = 10.0 + (round(levels[k]) + 7) % 80  # always another level than the one shown
            await dev.call_method(method, ua.Variant(level, ua.VariantType.Double), NO_END)  # raises unless Good
            shown = await dim.read_data_value()  # at once, on the same connection
            if abs(shown.Value.Value - level) > 1:  # the command's tolerance (tags.yaml)
                stale.append((n, level, shown.Value.Value))
            levels[k] = level
    assert not stale, f"{len(stale)} of {CALLS} Reads after a Good SetDimLevel showed another level: {stale[:10]}"
