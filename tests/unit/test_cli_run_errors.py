"""`scada run` reports an unexpected fatal error in plain lines and a non-zero exit, never a raw ExceptionGroup."""

from __future__ import annotations

import logging

import pytest
import structlog

import city_scada
from scada import cli
from scada.app import Application
from tests.integration.helpers import ROOT  # the shipped configuration


@pytest.fixture(autouse=True)
def logging_restored():
    """`scada run` configures logging for the whole process: put the test session's back."""
    saved, handlers = structlog.get_config(), list(logging.getLogger().handlers)
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def test_an_unexpected_exception_group_is_reported_clearly(tmp_path, monkeypatch, capsys):
    async def broken_run(self):
        # What escaped before supervision: a TaskGroup's group, nested.
        raise ExceptionGroup("unhandled errors in a TaskGroup",
                             [ExceptionGroup("inner", [IndexError("index 999 is out of bounds")]),
                              KeyError("plan")])

    monkeypatch.setattr(Application, "run", broken_run)
    code = city_scada.main(["run", "--config", str(ROOT), "--data", str(tmp_path / "data"),
                     "--opcua-endpoint", "opc.tcp://127.0.0.1:0/scada/", "--status-interval", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "the server stopped on an unexpected error (2 failures)" in err
    assert "  IndexError: index 999 is out of bounds" in err
    assert "  KeyError: 'plan'" in err
    assert "Traceback" not in err.split("the server stopped")[1]  # the lines after the log are readable



def test_a_pid_file_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, monkeypatch, capsys):
    import errno

    async def quick_run(self):  # the server would supervise here; the pid file is what is tested
        return None

    def no_space(data_dir, config_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Application, "run", quick_run)
    monkeypatch.setattr(cli, "_write_pid_file", no_space)
    code = city_scada.main(["run", "--config", str(ROOT), "--data", str(tmp_path / "data"),
                     "--opcua-endpoint", "opc.tcp://127.0.0.1:0/scada/", "--status-interval", "0"])
    err = capsys.readouterr().err
    assert code == 0
    assert "cannot write the pid file" in err and "No space left on device" in err and "SIGHUP" in err
    assert "cannot start the OPC UA server" not in err
