"""The composition point: the server (``scada``), its drivers (``drivers``) and the demo.

The core never imports a driver nor a simulator; this package is where they meet. It gives
the server's command line the registry of drivers (:data:`REGISTRY`) and the ``demo``
command, which alone starts both the server and the simulated city. ``python -m city_scada``
and the ``scada`` script run :func:`main`.
"""

from __future__ import annotations

from pathlib import Path

from city_scada.registry import REGISTRY
from scada.config import Config
from scada.config import load_config as _load_config

__all__ = ["REGISTRY", "load_config", "main"]


def load_config(directory: str | Path = ".") -> Config:
    """``scada.config.load_config`` with this project's drivers: a configuration folder as the server reads it."""
    return _load_config(directory, REGISTRY)


def main(argv: list[str] | None = None) -> int:
    """The ``scada`` command: the server's commands, with the registry of drivers and the demo."""
    from city_scada import demo
    from scada import cli

    return cli.main(argv, drivers=REGISTRY, commands=(demo.add_parser,))
