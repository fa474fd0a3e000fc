import asyncio

import pytest

from common import eventloop


async def loop_class() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_runs_on_uvloop_by_default_and_on_asyncio_on_request():
    assert eventloop.run(loop_class()).startswith("uvloop")
    assert eventloop.run(loop_class(), "asyncio").startswith("asyncio")


def test_an_unknown_loop_is_a_clear_error_and_the_coroutine_is_not_leaked():
    coro = loop_class()
    with pytest.raises(ValueError, match="unknown event loop 'tokio'"):
        eventloop.run(coro, "tokio")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


@pytest.mark.parametrize("command", [["scada", "run"], ["scada", "demo"], ["sim", "lighting"], ["sim", "city"]])
def test_server_and_simulator_offer_the_event_loop_option(command, capsys):
    from city_scada import main as scada_main
    from simulators.cli import main as sim_main
    main = scada_main if command[0] == "scada" else sim_main
    with pytest.raises(SystemExit):
        main([command[1], "--help"])
    assert "--event-loop {uvloop,asyncio}" in capsys.readouterr().out
