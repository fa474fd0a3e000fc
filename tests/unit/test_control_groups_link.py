"""The core's side of the channel for group actions (scada/front/link.py): the "group_command"
request runs as its own task (the read loop goes on), its progress goes to the front as
"group_progress" messages, and its answer is the results' wire form."""

from __future__ import annotations

import asyncio
import pickle

from scada.control import groups
from scada.control.model import BAD_TOO_MANY_OPERATIONS, GOOD, Caller, CommandResult, GroupRequest
from scada.front import wire
from scada.front.link import FrontLink, FrontSettings
from scada.security.audit import MemoryAudit
from tests.unit.test_control_groups import FakeCommands, cabinets, make_config, spin_until


class Writer:
    """The socketpair's writer, as FrontLink uses it: frames are kept, nothing waits."""

    def __init__(self) -> None:
        self.data = bytearray()

        class _Transport:
            def get_write_buffer_size(self) -> int:
                return 0

        self.transport = _Transport()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def messages(self) -> list[tuple]:
        out, buf = [], bytes(self.data)
        while buf:
            size, kind = wire.HEADER.unpack(buf[: wire.HEADER.size])
            payload = buf[wire.HEADER.size : wire.HEADER.size + size]
            buf = buf[wire.HEADER.size + size :]
            assert kind == wire.MESSAGE
            out.append(pickle.loads(payload))
        return out


class App:
    def __init__(self, commands) -> None:
        self.config = commands.config
        self.commands = commands
        self.audit = MemoryAudit()


def ask(link: FrontLink, rid: int, request) -> None:
    """What the read loop does with a "group_command" request frame."""
    link._start_request(link._async_handlers()["group_command"], rid, "group_command", (request,))


class Service(FakeCommands):
    """The fake pipeline plus run_group as the app's command service has it (a thin call)."""

    async def run_group(self, request, progress=None):
        return await groups.run_group(self, request, progress)


OPERATOR = Caller("olga", ("Operator",), None, session="s1")


def test_group_command_answers_later_and_tells_its_progress() -> None:
    cfg = make_config(cabinets(6))
    service = Service(cfg)
    link = FrontLink(App(service), FrontSettings("opc.tcp://127.0.0.1:1/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]

    async def go():
        service.gate = asyncio.Event()
        ask(link, 7, GroupRequest("Dijon", "DimAll", {"level": 40}, OPERATOR).to_wire())
        # The read loop is free: the request runs on its own task, nothing answered yet.
        assert len(link._in_flight) == 1
        await spin_until(lambda: service.running["all"] >= 6)
        assert not [m for m in writer.messages() if m[0] == "reply"]
        service.gate.set()
        await asyncio.gather(*link._in_flight)

    asyncio.run(go())
    msgs = writer.messages()
    progress = [m for m in msgs if m[0] == "group_progress"]
    assert progress[0] == ("group_progress", "Dijon", "DimAll", "olga", 6, 0, 0, False)
    assert progress[-1] == ("group_progress", "Dijon", "DimAll", "olga", 6, 6, 0, True)
    (reply,) = [m for m in msgs if m[0] == "reply"]
    assert reply[:3] == ("reply", 7, True)
    results = [CommandResult.from_wire(w) for w in reply[3]]
    assert [(r.device, r.status) for r in results] == [(f"C{k:03d}", GOOD) for k in range(6)]
    assert msgs.index(reply) > msgs.index(progress[-1])  # the front has the last progress before the answer
    assert link._in_flight == set()


def test_a_malformed_group_request_is_refused_with_a_value_error() -> None:
    service = Service(make_config(cabinets(1)))
    link = FrontLink(App(service), FrontSettings("opc.tcp://127.0.0.1:1/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]

    async def go():
        ask(link, 3, ("Dijon", "DimAll"))
        await asyncio.gather(*link._in_flight)

    asyncio.run(go())
    (reply,) = writer.messages()
    assert reply[:3] == ("reply", 3, False) and reply[3][0] == "value"
    assert "malformed group request" in reply[3][1]
    assert service.requests == []


def test_requests_beyond_the_bound_are_refused_at_once() -> None:
    service = Service(make_config(cabinets(1)))
    link = FrontLink(App(service), FrontSettings("opc.tcp://127.0.0.1:1/"))
    writer = Writer()
    link._writer = writer  # type: ignore[assignment]
    request = GroupRequest("Dijon", "DimAll", {"level": 40}, OPERATOR).to_wire()

    async def go():
        service.gate = asyncio.Event()
        for rid in range(FrontLink_max() + 1):
            ask(link, rid, request)
        (refused,) = [m for m in writer.messages() if m[0] == "reply"]
        assert refused[:3] == ("reply", FrontLink_max(), True)
        (result,) = [CommandResult.from_wire(w) for w in refused[3]]
        assert (result.device, result.status) == ("Dijon", BAD_TOO_MANY_OPERATIONS)
        (rec,) = link.app.audit.records
        assert (rec.action, rec.target, rec.user, rec.result) == (
            "group_command",
            "Dijon",
            "olga",
            "BadTooManyOperations",
        )
        service.gate.set()
        await asyncio.gather(*link._in_flight)

    asyncio.run(go())
    replies = [m for m in writer.messages() if m[0] == "reply"]
    assert len(replies) == FrontLink_max() + 1
    assert all(CommandResult.from_wire(w).good for m in replies[1:] for w in m[3])


def FrontLink_max() -> int:  # noqa: N802 - reads as the constant it returns
    from scada.front import link

    return link.MAX_IN_FLIGHT


def test_stopping_the_link_cancels_the_group_commands_still_running() -> None:
    service = Service(make_config(cabinets(3)))
    link = FrontLink(App(service), FrontSettings("opc.tcp://127.0.0.1:1/"))
    link._writer = Writer()  # type: ignore[assignment]

    async def go():
        service.gate = asyncio.Event()  # the field never confirms
        ask(link, 1, GroupRequest("Dijon", "DimAll", {"level": 40}, OPERATOR).to_wire())
        await spin_until(lambda: service.running["all"] >= 3)
        await link.stop()
        assert link._in_flight == set() and service.running["all"] == 0
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    asyncio.run(go())
    assert service.cancelled == 3
