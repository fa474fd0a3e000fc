"""A hostile client costs the OPC UA front bounded CPU and memory: a seeded fuzz of the binary
protocol against the real front process (``python -m scada.front.process``, started by the core).

Thousands of cases (``CASES``, seed ``SEED``): a valid Hello, OpenSecureChannel, CreateSession,
ActivateSession, Read or Publish message, built with asyncua's encoders, reached in its state
(the messages before it sent and answered) then mutated: bytes flipped, inserted, cut, the
chunk's size field or an inner length field lying, its type changed, garbage after it. Each
case is a TCP connection from 127.0.0.2; the server's answer (or its closing the connection)
is awaited a moment, then the connection is closed. One case streams 80 MiB after a header
announcing 128 MiB (the issue's 15 s of CPU and 125 MiB case).

Throughout, a well-behaved asyncua client (from 127.0.0.1) keeps reading a value: every read
must succeed, and one more is awaited after each batch of cases. The front must stay the same
process (never restarted by the core), and its resident memory must stay under its size after
start plus ``RSS_GROWTH``. The case count stops the test; ``DEADLINE`` is only a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import struct
import time
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.app import Application
from scada.front.link import FrontSettings
from scada.security.identity import Role
from scada.security.settings import SecuritySettings
from tests.configs import ROOT
from tests.integration.helpers import free_port
from tests.opcua_wire import RawClient, hello, read_request

pytestmark = pytest.mark.integration

SEED = 14
CASES = 3000
BATCH = 100  # cases between two checks of the good client and the front's memory
CONCURRENCY = 12  # fuzzing connections at once (fewer than the per-address connection cap)
CASE_WAIT = 0.25  # seconds a case waits for an answer or the end before closing
RSS_GROWTH = 96 << 20  # bytes the front may grow by over its size once started
DEADLINE = 240.0  # seconds: a safety net, never reached on a sound server
FUZZER = "127.0.0.2"  # the fuzz's source address (the good client's is 127.0.0.1)
STAGES = ("hello", "open", "create", "activate", "read", "publish")
LENGTHS = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000, 0x01000000, 0xFFFF, 0, 1, 7, 8, 9, 12, 65536)


def _config(folder: Path):
    from city_scada import load_config

    head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
    folder.mkdir(parents=True)
    device = (
        "  - {name: LC-1, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, "
        f'endpoint: "127.0.0.1:{free_port()}"}}\n'
    )
    (folder / "tags.yaml").write_text(head + "\ndevices:\n" + device)
    (folder / "alarms.yaml").write_text((ROOT / "alarms.yaml").read_text())
    return load_config(folder)


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def mutate(rng: random.Random, m: bytes) -> bytes:
    """One mutation of message ``m`` (its 8-byte chunk header first)."""
    kind = rng.randrange(9)
    b = bytearray(m)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # cut
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # insert bytes, the size field left as it was
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:  # the chunk's size field lies
        b[4:8] = struct.pack("<I", rng.choice((*LENGTHS, len(m) + rng.randint(1, 4096), rng.randrange(1 << 32))))
    elif kind == 4 and len(b) > 12:  # an inner length (a String's, an array's) lies
        at = rng.randrange(8, len(b) - 3)
        b[at : at + 4] = struct.pack("<I", rng.choice(LENGTHS))
    elif kind == 5:  # another message or chunk type
        b[0:3] = rng.choice((b"HEL", b"ACK", b"ERR", b"OPN", b"MSG", b"CLO", b"RHE", rng.randbytes(3)))
        b[3:4] = rng.choice((b"F", b"C", b"A", rng.randbytes(1)))
    elif kind == 6:  # garbage after a valid message
        b += rng.randbytes(rng.randint(1, 256))
    elif kind == 7:  # the same message many times
        b = b * rng.randint(2, 40)
    else:  # many small random edits
        for _ in range(rng.randint(1, 30)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


@dataclasses.dataclass
class Tally:
    cases: int = 0
    refused: int = 0  # cases the server ended (an ErrorMessage, a close)
    answered: int = 0  # cases the server answered and kept
    silent: int = 0  # cases with no answer within CASE_WAIT (waiting for the rest of a chunk...)


async def fuzz_case(url: str, port: int, rng: random.Random, tally: Tally) -> None:
    """Reach a stage with valid messages, send a mutated one, watch what the server does."""
    stage = rng.choice(STAGES)
    c = RawClient(url, "127.0.0.1", port, FUZZER)
    try:
        await c.connect()
        if stage == "hello":
            target = hello(url)
        else:
            await c.hello()
            if stage == "open":
                target = c.encode(c.open_request(), ua.MessageType.SecureOpen)
            else:
                await c.open()
                if stage == "create":
                    target = c.encode(c.create_session_request())
                else:
                    await c.create_session()
                    if stage == "activate":
                        target = c.encode(c.activate_request())
                    else:
                        await c.activate()
                        request = (
                            read_request([ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)] * rng.randint(1, 20))
                            if stage == "read"
                            else ua.PublishRequest()
                        )
                        target = c.encode(request)
        c.send(mutate(rng, target))
        assert c.reader is not None
        try:
            data = await asyncio.wait_for(c.reader.read(65536), CASE_WAIT)
        except TimeoutError:
            tally.silent += 1
        else:
            if not data or data[:3] == b"ERR":
                tally.refused += 1
            else:
                tally.answered += 1
    except (ConnectionError, AssertionError, asyncio.IncompleteReadError, TimeoutError):
        tally.refused += 1  # refused while reaching the stage (a cap, the server's own timing)
    finally:
        tally.cases += 1
        await c.close()


async def oversized_stream(port: int) -> None:
    """A header announcing 128 MiB, then 80 MiB sent as fast as the server takes them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FUZZER, 0))
    try:
        writer.write(hello("opc.tcp://127.0.0.1/"))
        await reader.readexactly(8)
        writer.write(b"MSGF" + struct.pack("<I", 128 << 20))
        block = bytes(1 << 20)
        for _ in range(80):
            writer.write(block)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # refused: what should happen
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_a_fuzzed_front_stays_up_answers_a_good_client_and_its_memory_stays_bounded(tmp_path):
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/scada/"
    settings = dataclasses.replace(
        SecuritySettings.defaults(tmp_path / "data"), allow_none=True, anonymous=frozenset({Role.OBSERVER})
    )
    app = Application(
        _config(tmp_path / "cfg"), url, 0, tmp_path / "data", front_settings=FrontSettings(url, security=settings)
    )
    app.drivers = []
    core = asyncio.create_task(app.run(), name="core")
    try:
        await asyncio.wait_for(app.started.wait(), 120)
        front = app.hmi.proc
        assert front is not None
        pid, starts = front.pid, app.hmi.starts
        async with Client(url, timeout=30) as good:
            clock = good.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime))
            await clock.read_value()
            base = rss(pid)
            reads: list[bool] = []
            stop = asyncio.Event()

            async def keep_reading() -> None:
                while not stop.is_set():
                    try:
                        await clock.read_value()
                        reads.append(True)
                    except Exception:  # noqa: BLE001 - counted: the assertion says how many failed
                        reads.append(False)
                    await asyncio.sleep(0.05)  # a screen's refresh, not a timing assumption

            reader = asyncio.create_task(keep_reading())
            rng = random.Random(SEED)
            tally = Tally()
            peak = base
            deadline = time.monotonic() + DEADLINE
            pending: set[asyncio.Task] = set()
            try:
                await oversized_stream(port)
                peak = max(peak, rss(pid))
                for n in range(CASES):
                    if time.monotonic() > deadline:
                        break
                    case_rng = random.Random(rng.getrandbits(64))  # each case its own stream: reproducible alone
                    pending.add(asyncio.create_task(fuzz_case(url, port, case_rng, tally)))
                    if len(pending) >= CONCURRENCY:
                        _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if (n + 1) % BATCH == 0:
                        await clock.read_value()  # answered between batches, whatever came before
                        peak = max(peak, rss(pid))
                await asyncio.gather(*pending)
            finally:
                stop.set()
                for task in (*pending, reader):
                    task.cancel()
                await asyncio.gather(*pending, reader, return_exceptions=True)
            await clock.read_value()
            peak = max(peak, rss(pid))
        print(
            f"fuzz: {tally.cases} cases ({tally.refused} refused, {tally.answered} answered, "
            f"{tally.silent} silent), {len(reads)} reads by the good client, front RSS "
            f"{base / 2**20:.0f} MiB after start, {peak / 2**20:.0f} MiB at most"
        )
        assert tally.cases >= BATCH, f"only {tally.cases} cases ran before the safety deadline"
        assert reads and all(reads), f"{reads.count(False)} of {len(reads)} reads of the good client failed"
        assert front.returncode is None and app.hmi.proc is front and app.hmi.starts == starts, "the front died"
        assert peak <= base + RSS_GROWTH, f"front RSS {peak / 2**20:.0f} MiB, {base / 2**20:.0f} MiB after start"
    finally:
        core.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await core
