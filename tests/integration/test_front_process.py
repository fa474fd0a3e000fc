"""The OPC UA front in its own process, seen by a real client: same values, statuses, timestamps,
alarms, methods and history as the inline front; killed, it is restarted while the core runs on.

The core (Application) runs in this test's event loop with no drivers: the test is the field
(``tagdb.update``), so every value a client sees is one the test wrote. The front is the real
``python -m scada.front.process`` the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import yaml
from asyncua import Client, ua

from scada import status as st
from scada.app import Application
from scada.front import wire
from tests.configs import ROOT
from tests.leaks import tasks_left

from .helpers import DEADLINE, Notifications, free_port, journal_until, refresh_conditions, until, until_read

pytestmark = pytest.mark.integration

OI = ua.ObjectIds
CABINETS = ("LC-1", "LC-2")


def _config(folder: Path, cabinets=CABINETS, without: tuple[str, ...] = ()):
    """The shipped types on ``cabinets`` nobody answers for, the shipped alarms but the ones named
    in ``without``."""
    from city_scada import load_config

    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder.mkdir(parents=True)
    devices = "".join(
        f'  - {{name: {n}, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "127.0.0.1:{free_port()}"}}\n'
        for n in cabinets
    )
    (folder / "tags.yaml").write_text(head + "\ndevices:\n" + devices)
    alarms = (ROOT / "alarms.yaml").read_text()
    if without:
        doc = yaml.safe_load(alarms)
        doc["alarms"] = [a for a in doc["alarms"] if a["name"] not in without]
        alarms = yaml.safe_dump(doc, sort_keys=False)
    (folder / "alarms.yaml").write_text(alarms)
    return load_config(folder)


@contextlib.asynccontextmanager
async def core(tmp_path: Path, without: tuple[str, ...] = ()):
    """The server's core in this loop (no drivers), its OPC UA front a separate process; the
    alarms named in ``without`` left out of its configuration."""
    config = _config(tmp_path / "cfg", without=without)
    app = Application(config, f"opc.tcp://127.0.0.1:{free_port()}/scada/", 0, tmp_path / "data")
    assert app.front == "process"
    app.drivers = []  # the test is the field
    task = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), DEADLINE)
        yield app
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def shared_app(tmp_path_factory):
    """One core and front for the tests of a class, none of which kills, stops or reloads them:
    each works on points (and alarms) of its own, so the order they run in does not matter."""
    async with core(tmp_path_factory.mktemp("front")) as app:
        yield app
    left = await tasks_left()
    assert not left, f"the shared core left asyncio tasks pending: {left}"


def tag(app: Application, device: str, point: str) -> tuple[int, ua.NodeId]:
    name = f"Dijon/lighting/{device}/{point}"
    return app.tagdb.id_of(name), ua.NodeId(name, 2)


def write(app: Application, tid: int, value: float, status: int = st.GOOD, source_ns: int | None = None) -> int:
    src = time.time_ns() if source_ns is None else source_ns
    app.tagdb.update([tid], [value], status, src)
    return src


def _dt_ns(dt) -> int:
    return int(dt.timestamp() * 1e6) * 1000


async def hot_cabinet(app: Application, client: Client):
    """LC-1 overheats while ``client`` watches the Server's alarms: (its handler, the alarm's event)."""
    tid, _ = tag(app, "LC-1", "temperature")
    write(app, tid, 30.0)
    handler = Notifications()
    sub = await client.create_subscription(50, handler)
    await sub.subscribe_events(client.get_node(ua.NodeId(OI.Server)), ua.NodeId(OI.AlarmConditionType))
    write(app, tid, 75.0)
    return handler, await handler.next_event(lambda e: e.ConditionName == "cabinet_hot" and e.Retain)


on_shared = pytest.mark.asyncio(loop_scope="class")


class TestOneCoreAndFront:
    """What a client sees through the front when nothing happens to the front itself: one core
    and front serve them all (starting them is most of each test's time)."""

    @on_shared
    async def test_values_statuses_and_timestamps_cross_the_process_front_unchanged(self, shared_app):
        app = shared_app
        tid, node = tag(app, "LC-1", "mains_voltage")
        src = write(app, tid, 231.5)
        async with Client(app.hmi.endpoint, timeout=10) as client:
            handler = Notifications()
            sub = await client.create_subscription(50, handler)
            await sub.subscribe_data_change([client.get_node(node)])
            first = await handler.next_data(node, lambda dv: dv.Value.Value == 231.5)
            assert first.StatusCode.is_good()
            assert _dt_ns(first.SourceTimestamp) == src // 1000 * 1000
            # A link loss keeps the last value with a Bad status (the SCADA rule, not asyncua's).
            app.tagdb.set_status([tid], st.BAD_COMMUNICATION_ERROR)
            lost = await handler.next_data(node, lambda dv: not dv.StatusCode.is_good())
            assert lost.StatusCode.value == st.BAD_COMMUNICATION_ERROR and lost.Value.Value == 231.5
            # A Read sees what was last published, by the same process.
            later = write(app, tid, 229.0, source_ns=src + 1_000_000_000)
            await handler.next_data(node, lambda dv: dv.Value.Value == 229.0)
            dv = await client.get_node(node).read_data_value()
            assert dv.Value.Value == 229.0 and _dt_ns(dv.SourceTimestamp) == later // 1000 * 1000

    @on_shared
    async def test_alarm_events_and_acknowledge_go_through_the_front_to_the_engine(self, shared_app):
        app = shared_app
        async with Client(app.hmi.endpoint, timeout=10) as client:
            handler, ev = await hot_cabinet(app, client)
            i = app.alarms.instance("cabinet_hot", "LC-1")
            assert app.alarms.describe(i)["state"] == "UNACK_ACTIVE"
            await client.get_node(ev.NodeId).call_method(
                ua.NodeId(OI.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(ev.EventId, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("seen from the wall"), ua.VariantType.LocalizedText),
            )
            acked = await handler.next_event(
                lambda e: e.ConditionName == "cabinet_hot" and e.AckedState.Text == "Acknowledged"
            )
            assert acked.Comment.Text == "seen from the wall"
            assert app.alarms.describe(i)["state"] == "ACK_ACTIVE"
            rows = [r for r in app.journal.query(alarm="cabinet_hot") if r.event == "ACK"]
            assert rows and rows[-1].user.startswith("opcua:") and rows[-1].comment == "seen from the wall"
            # A refused action comes back as the precise status, from the core's engine.
            with pytest.raises(ua.uaerrors.BadConditionBranchAlreadyAcked):
                await client.get_node(ev.NodeId).call_method(
                    ua.NodeId(OI.AcknowledgeableConditionType_Acknowledge),
                    ua.Variant(ev.EventId, ua.VariantType.ByteString),
                    ua.Variant(ua.LocalizedText("again"), ua.VariantType.LocalizedText),
                )

    @on_shared
    async def test_history_reads_through_the_front_see_values_not_stored_yet(self, shared_app):
        app = shared_app
        tid, node = tag(app, "LC-1", "power")
        t0 = (time.time_ns() - 10_000_000_000) // 1000 * 1000  # whole microseconds: a datetime's precision
        received = app.historian.compressor.received
        for k in range(5):
            write(app, tid, 100.0 + 10 * k, source_ns=t0 + k * 1_000_000_000)
        await until(lambda: app.historian.compressor.received >= received + 5, DEADLINE, "the historian took the values")
        async with Client(app.hmi.endpoint, timeout=10) as client:

            async def read():
                return await client.get_node(node).read_raw_history(
                    starttime=datetime.fromtimestamp((t0 - 1e9) / 1e9, UTC),
                    endtime=datetime.now(UTC) + timedelta(seconds=10),
                )

            # The compressor keeps a ramp's ends: the first is stored at once, the last is held
            # in the core (not in the store yet) until the next point: the front asks for it.
            values = []
            async with asyncio.timeout(DEADLINE):
                while 140.0 not in [v.Value.Value for v in values]:
                    values = await read()
            got = {v.Value.Value: _dt_ns(v.SourceTimestamp) for v in values}
            assert got[100.0] == t0 and got[140.0] == t0 + 4_000_000_000

    @on_shared
    async def test_batches_dropped_for_a_slow_front_are_made_good_even_when_the_field_goes_quiet(
        self, shared_app, monkeypatch
    ):
        from scada.front import link

        app = shared_app
        tid, node = tag(app, "LC-2", "mains_voltage")
        write(app, tid, 230.0)
        dropped, resyncs = app.hmi.batches_dropped, app.hmi.resyncs
        async with Client(app.hmi.endpoint, timeout=10) as client:
            await until_read(lambda: client.get_node(node).read_value(), lambda v: v == 230.0, DEADLINE, "first value")
            monkeypatch.setattr(link, "HIGH_WATER", -1)  # the front "cannot keep up": batches dropped
            write(app, tid, 0.0)
            await until(lambda: app.hmi.batches_dropped > dropped, DEADLINE, "the batch dropped")
            monkeypatch.setattr(link, "HIGH_WATER", 32 << 20)
            # No further change: the resync must still come, from the shared columns.
            await until_read(lambda: client.get_node(node).read_value(), lambda v: v == 0.0, DEADLINE, "the value made good")
            assert app.hmi.resyncs > resyncs


async def test_a_killed_front_is_restarted_and_clients_reconnect_while_the_core_runs_on(tmp_path):
    async with core(tmp_path) as app:
        tid, node = tag(app, "LC-2", "mains_voltage")
        write(app, tid, 230.0)
        async with Client(app.hmi.endpoint, timeout=10) as client:
            assert (await client.get_node(node).read_value()) == 230.0
        first = app.hmi.proc.pid
        os.kill(first, signal.SIGKILL)
        # The core goes on: the field writes while the front is down.
        await until(lambda: app.supervisor.status()["opcua-front"]["restarts"] >= 1, DEADLINE, "the front's failure seen")
        write(app, tid, 231.0)
        await until(lambda: app.hmi.ready_count >= 2, DEADLINE, "a new front listens")
        assert app.hmi.proc is not None and app.hmi.proc.pid != first
        # server_task_failed was raised meanwhile: the journal keeps it (the supervisor's "failed" may
        # already have cleared, its attempt having run healthy_after seconds while the front started).
        await journal_until(
            app.journal.path,
            lambda rows: any(
                (r.alarm, r.device, r.event) == ("server_task_failed", "opcua-front", "ACTIVATE") for r in rows
            ),
            "server_task_failed raised for the front",
        )
        async with asyncio.timeout(DEADLINE):
            while True:  # the new front listens once it has built its address space
                try:
                    async with Client(app.hmi.endpoint, timeout=10) as client:
                        # The value written while no front ran: from the shared tag columns.
                        assert (await client.get_node(node).read_value()) == 231.0
                        handler = Notifications()
                        sub = await client.create_subscription(50, handler)
                        await sub.subscribe_data_change([client.get_node(node)])
                        write(app, tid, 232.0)
                        await handler.next_data(node, lambda dv: dv.Value.Value == 232.0)
                        break
                except (TimeoutError, OSError, ua.UaError):
                    await asyncio.sleep(0.2)


STUCK_CLIENT = """
import asyncio, sys
from asyncua import Client, ua

async def main(url, names):
    client = Client(url, timeout=30)
    client.session_timeout = 600_000
    await client.connect()

    class Quiet:
        def datachange_notification(self, node, val, data):
            pass

    sub = await client.create_subscription(50, Quiet())
    await sub.subscribe_data_change([client.get_node(ua.NodeId(n, 2)) for n in names], queuesize=1)
    print("subscribed", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_client_that_stops_reading_is_bounded_and_slows_neither_the_core_nor_other_clients(tmp_path):
    import subprocess
    import sys

    async with core(tmp_path) as app:
        names = [n for n in app.tagdb.names if "/Diagnostics/" not in n]
        ids = app.tagdb.ids_of(names)
        stuck = subprocess.Popen(
            [sys.executable, "-c", STUCK_CLIENT, app.hmi.endpoint, *names], stdout=subprocess.PIPE, text=True
        )
        try:
            assert stuck.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(stuck.stdout.readline), 60)
            assert line.strip() == "subscribed"
            os.kill(stuck.pid, signal.SIGSTOP)  # it no longer reads its socket, nor asks to publish
            front = app.hmi.proc.pid
            _, watched = tag(app, "LC-1", "power")
            async with Client(app.hmi.endpoint, timeout=10) as client:
                handler = Notifications()
                sub = await client.create_subscription(50, handler)
                await sub.subscribe_data_change([client.get_node(watched)])
                sent_before = app.hmi.batches_sent
                rss = []
                for k in range(1, 301):  # every tag changes, 300 times: far more than the stuck client can hold
                    app.tagdb.update(ids, np.full(len(ids), float(k)), st.GOOD)
                    if k % 20 == 0:
                        rss.append(rss_kib(front))
                        # The other client gets the latest value (it is not held behind the stuck one).
                        await handler.next_data(watched, lambda dv, k=k: dv.Value.Value == float(k), timeout=DEADLINE)
                    await asyncio.sleep(0.005)
            # The front read every batch the core sent: the stuck client held nothing in the core.
            assert app.hmi.batches_dropped == 0 and app.hmi.batches_sent - sent_before >= 300
            # Its memory is bounded: the last samples grow no more than the noise of the first ones.
            first, last = max(rss[:5]), max(rss[-5:])
            assert last - first < 20_000, rss  # KiB
        finally:
            os.kill(stuck.pid, signal.SIGKILL)
            stuck.wait()


def test_scada_run_with_its_opc_ua_port_taken_says_so_and_leaves_no_front_behind(tmp_path):
    import socket
    import subprocess
    import sys

    mark = f"front-port-taken-{os.getpid()}-{time.time_ns()}"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "city_scada",
                "run",
                "--config",
                str(ROOT),
                "--data",
                str(tmp_path / "data"),
                "--opcua-endpoint",
                f"opc.tcp://127.0.0.1:{port}/scada/",
                "--status-interval",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=ROOT,
            env={**os.environ, "SCADA_TEST_MARK": mark},
        )
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"cannot start the OPC UA server on opc.tcp://127.0.0.1:{port}/scada/" in out.stderr
    assert "in use" in out.stderr
    # No front process outlives the server (it would hold the port and the shared memory).
    assert processes_marked(mark) == []


def processes_marked(mark: str) -> list[int]:
    """Processes whose environment holds ``SCADA_TEST_MARK=mark`` (a server and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"SCADA_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_an_acknowledge_while_the_front_follows_a_reload_is_kept_by_the_engine_that_runs_after(
    tmp_path, monkeypatch
):
    # Nobody answers for the cabinets: without comm_loss, whose 10 s on-delay would hide
    # cabinet_hot (suppressed_by) if the steps below took that long on a busy machine (seen).
    without = ("comm_loss",)
    async with core(tmp_path, without) as app, Client(app.hmi.endpoint, timeout=10) as client:
        handler, ev = await hot_cabinet(app, client)
        # The front gets the reload (and everything after it, in order) only once the
        # operator's Acknowledge has reached the core: the action lands while the core waits
        # for the front, whatever the machine's speed.
        held: list[bytes] = []
        send = app.hmi._send

        def hold_from_reload(data: bytes) -> None:
            if held or (data[4] == wire.MESSAGE and wire.decode_message(data[5:])[0] == "reload"):
                held.append(data)
            else:
                send(data)

        monkeypatch.setattr(app.hmi, "_send", hold_from_reload)
        reload = asyncio.create_task(app.reload(_config(tmp_path / "cfg2", ("LC-1", "LC-2", "LC-3"), without)))
        await until(lambda: held or reload.done(), DEADLINE, "the core sends the reload to the front")
        assert not reload.done()
        requests = app.hmi.requests
        ack = asyncio.create_task(
            client.get_node(ev.NodeId).call_method(
                ua.NodeId(OI.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(ev.EventId, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("ack during reload"), ua.VariantType.LocalizedText),
            )
        )
        await until(lambda: app.hmi.requests > requests, DEADLINE, "the Acknowledge reaches the core")
        monkeypatch.setattr(app.hmi, "_send", send)
        for data in held:
            send(data)
        await ack
        await reload
        i = app.alarms.instance("cabinet_hot", "LC-1")
        assert app.alarms.describe(i)["state"] == "ACK_ACTIVE"
        rows = [r for r in app.journal.query(alarm="cabinet_hot") if r.event == "ACK"]
        assert [r.comment for r in rows] == ["ack during reload"]


async def test_server_alarms_active_before_a_front_restart_are_shown_by_the_new_front(tmp_path):
    async with core(tmp_path) as app:
        app.alarms.system_alarm("storage_failing", True, "history store cannot write (test)", source="history")
        async with Client(app.hmi.endpoint, timeout=10) as client:
            _, _, before = await refresh_conditions(client)
        shown = lambda events: {(e.ConditionName, e.SourceName) for e in events}  # noqa: E731
        assert ("storage_failing", "history") in shown(before)
        first = app.hmi.proc.pid
        # The front's failure must still be active when the new front starts, however long that takes:
        # its clearing after healthy_after seconds is the supervisor's (tested in test_supervision).
        app.supervisor.healthy_after = DEADLINE
        os.kill(first, signal.SIGKILL)
        await until(lambda: app.hmi.ready_count >= 2, DEADLINE, "a new front listens")
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    async with Client(app.hmi.endpoint, timeout=10) as client:
                        _, _, after = await refresh_conditions(client)
                        break
                except (OSError, TimeoutError, ua.UaError):
                    await asyncio.sleep(0.2)
        # The new front never saw the event that raised it: it comes with the engine's state.
        assert ("storage_failing", "history") in shown(after)
        # And the front's own failure, raised while no front ran, is shown too.
        assert ("server_task_failed", "opcua-front") in shown(after)


async def test_a_reload_publishes_the_batches_the_front_had_queued_before_it(tmp_path, monkeypatch):
    async with core(tmp_path) as app, Client(app.hmi.endpoint, timeout=10) as client:
        tid, node = tag(app, "LC-1", "mains_voltage")
        write(app, tid, 200.0)
        handler = Notifications()
        sub = await client.create_subscription(50, handler)
        await sub.subscribe_data_change([client.get_node(node)])
        await handler.next_data(node, lambda dv: dv.Value.Value == 200.0)
        # The front receives a run of batches and the reload behind them in one read, so that
        # they wait in its publisher's queue when the reload starts (the publisher takes one
        # batch per turn of the loop). Its new tag table (a device added) gets a new publisher,
        # which takes the current values as published: a batch not published before is never
        # notified, unless the reload publishes the queue first (or sends a first snapshot).
        held: list[bytes] = []
        send = app.hmi._send
        monkeypatch.setattr(app.hmi, "_send", held.append)
        values = [201.0 + k for k in range(20)]
        for v in values:
            sent = len(held)
            write(app, tid, v)
            await until(lambda sent=sent: len(held) > sent, DEADLINE, f"the core forwards the batch of {v}")
        assert all(data[4] == wire.BATCH for data in held)
        reload = asyncio.create_task(app.reload(_config(tmp_path / "cfg2", ("LC-1", "LC-2", "LC-3"))))
        await until(
            lambda: (
                reload.done() or any(d[4] == wire.MESSAGE and wire.decode_message(d[5:])[0] == "reload" for d in held)
            ),
            60,
            "the core sends the reload to the front",
        )
        assert not reload.done()
        monkeypatch.setattr(app.hmi, "_send", send)
        send(b"".join(held))
        await reload
        got = await handler.next_data(node, lambda dv: dv.Value.Value == values[-1])
        assert got.StatusCode.is_good()
