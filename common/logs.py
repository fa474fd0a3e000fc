"""structlog set-up: readable on a terminal, one JSON object per line with ``--log-json``.

Events are short snake_case names; the device, the tag and the figures go in keys, never in
the message text, so that a log line can be filtered by device without parsing prose.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import Processor


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test's capture, a redirection made
    after start-up), never a stream closed since ``configure``."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(json: bool = False, level: str = "INFO") -> None:
    """Set up structlog and the standard library's logging at ``level``; ``json``: one object per line."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=_Stderr(), format="%(message)s")
    # Library loggers (asyncua, pymodbus) go through the same renderer.
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # A plain traceback, not structlog's default (rich, when installed: amqtt's typer brings it),
    # which draws every frame's locals: seconds per logged exception with a tag table or an
    # Application in a frame (the event loop stalls meanwhile), and values that have no business
    # in a log (a configuration's secrets, a user's password).
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *processors,
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # _Stderr has the only methods PrintLogger calls (write, flush); it is not a full TextIO.
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its per-request errors are ours to report
    # asyncua logs each request and session at INFO/WARNING; our own events say what matters.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    # A failed start is reported by `scada run` itself, in one line; its security warnings (None
    # endpoint, passwords in clear, no certificate) are checked and logged by scada/opcua/endpoints.py.
    logging.getLogger("asyncua.server.server").setLevel(logging.CRITICAL)
    # Certificates: the server's own checked at start (no ApplicationUri or host name in it, expired),
    # the security policies' deprecation warnings: a security problem is never silent.
    logging.getLogger("asyncua.crypto").setLevel(logging.WARNING)
