"""The channel's coroutine requests (a command): served in a task each, answered when done,
never holding up the read loop; bounded per front, beyond which the answer is "busy" at once."""

from __future__ import annotations

import asyncio
import contextlib

from scada.control.model import BAD_TOO_MANY_OPERATIONS, GOOD, Caller, CommandRequest, CommandResult
from scada.front import link as link_module
from scada.front import wire
from scada.front.link import FrontLink, FrontSettings
from scada.security.audit import MemoryAudit


class Commands:
    """The app's pipeline as the link sees it: each command waits until the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[CommandRequest] = []

    async def execute(self, request: CommandRequest) -> CommandResult:
        self.seen.append(request)
        await self.release.wait()
        return CommandResult(request.device, GOOD, "confirmed by the read-back")


class App:
    def __init__(self) -> None:
        self.config = None
        self.commands = Commands()
        self.audit = MemoryAudit()


class Writer:
    def __init__(self) -> None:
        self.replies: asyncio.Queue = asyncio.Queue()

    def write(self, data: bytes) -> None:
        size, kind = wire.HEADER.unpack_from(data)
        assert kind == wire.MESSAGE
        payload = data[wire.HEADER.size : wire.HEADER.size + size]
        self.replies.put_nowait(wire.decode_message(payload))

    def close(self) -> None:
        pass


def request(rid: int, op: str, *args) -> bytes:
    return wire.encode_message("request", rid, op, args)


def command(device: str) -> tuple:
    return CommandRequest(device, "SetMode", {"mode": 1}, Caller("olga", ("Operator",), None, "s1")).to_wire()


async def serve(link: FrontLink, frames: list[bytes]):
    reader = asyncio.StreamReader()
    reader.feed_data(b"".join(frames))
    reader.feed_eof()
    with contextlib.suppress(asyncio.IncompleteReadError):
        await link._read_loop(reader)


async def test_a_command_is_answered_when_done_and_the_read_loop_goes_on_meanwhile():
    app = App()
    link = FrontLink(app, FrontSettings("opc.tcp://127.0.0.1:1/x/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]
    await serve(link, [request(1, "command", command("LC-1")), request(2, "no_such_request")])
    # The read loop answered the second request while the command still waits on the field.
    rid, ok = (await writer.replies.get())[1:3]
    assert (rid, ok) == (2, False)
    async with asyncio.timeout(5):
        while not app.commands.seen:  # the command's task starts on the next turn of the loop
            await asyncio.sleep(0)
    assert [r.device for r in app.commands.seen] == ["LC-1"] and writer.replies.empty()
    app.commands.release.set()
    tag, rid, ok, result = await asyncio.wait_for(writer.replies.get(), 5)
    assert (tag, rid, ok) == ("reply", 1, True)
    assert CommandResult.from_wire(result).status == GOOD
    assert not link._in_flight


async def test_beyond_the_bound_a_command_is_answered_busy_at_once_and_audited(monkeypatch):
    monkeypatch.setattr(link_module, "MAX_IN_FLIGHT", 1)
    app = App()
    link = FrontLink(app, FrontSettings("opc.tcp://127.0.0.1:1/x/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]
    await serve(link, [request(1, "command", command("LC-1")), request(2, "command", command("LC-2"))])
    tag, rid, ok, result = await writer.replies.get()
    busy = CommandResult.from_wire(result)
    assert (rid, ok, busy.device, busy.status) == (2, True, "LC-2", BAD_TOO_MANY_OPERATIONS)
    (rec,) = app.audit.records
    assert (rec.action, rec.target, rec.result, rec.user) == ("command", "LC-2", "BadTooManyOperations", "olga")
    assert link.requests_busy == 1
    # The front goes away: the command still in flight is cancelled, nothing is left running.
    await link._stop_process()
    assert not link._in_flight


async def test_a_command_s_answer_follows_the_change_that_confirmed_it():
    """The confirming change is queued for the front by the same TagDB update the pipeline
    waited on: it must reach the front before the command's answer (a client reading right
    after a Good call sees the new value), even when the forwarder has not run yet."""
    import numpy as np

    from scada import status as st
    from scada.tagdb import TagDB

    tagdb = TagDB(["Dijon/lighting/LC-1/dim_level"], [0], [0.0])

    class Confirming(Commands):
        async def execute(self, request: CommandRequest) -> CommandResult:
            tagdb.update(np.array([0]), np.array([40.0]), st.GOOD, 1)  # the read-back's change
            return CommandResult(request.device, GOOD, "confirmed by the read-back")

    app = App()
    app.commands = Confirming()
    link = FrontLink(app, FrontSettings("opc.tcp://127.0.0.1:1/x/"))
    frames: list[int] = []

    class Frames:
        def write(self, data: bytes) -> None:
            frames.append(wire.HEADER.unpack_from(data)[1])

        def close(self) -> None:
            pass

        class transport:  # noqa: N801 - what _backlog reads of a StreamWriter
            @staticmethod
            def get_write_buffer_size() -> int:
                return 0

    link._writer = Frames()  # type: ignore[assignment]
    link._subscribe(tagdb)
    await serve(link, [request(1, "command", command("LC-1"))])
    async with asyncio.timeout(5):
        while wire.MESSAGE not in frames:
            await asyncio.sleep(0)
    assert frames == [wire.BATCH, wire.MESSAGE]
