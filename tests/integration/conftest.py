"""Fixtures of the integration tests: real servers on loopback."""

import pytest

from .helpers import Mosquitto


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free loopback port, stopped after the test."""
    b = Mosquitto(tmp_path / "mosquitto")
    yield b
    b.stop()
