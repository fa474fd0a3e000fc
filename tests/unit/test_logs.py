"""The server's log set-up (common/logs.py)."""

from __future__ import annotations

import structlog

from common import logs


def test_a_logged_exception_is_a_plain_traceback_without_the_frames_locals(capsys) -> None:
    before = structlog.get_config()  # the suite's own set-up (tests/conftest.py), put back after
    try:
        logs.configure()
        secret = "hunter2-in-a-local"  # a local of the failing frame: rich's traceback would print it
        try:
            raise RuntimeError(f"failed with {len(secret)} characters")
        except RuntimeError:
            structlog.get_logger("test").exception("task_failed")
        err = capsys.readouterr().err
        assert "task_failed" in err and "Traceback (most recent call last)" in err
        assert "RuntimeError: failed with 18 characters" in err
        assert "hunter2-in-a-local" not in err
    finally:
        structlog.configure(**before)
