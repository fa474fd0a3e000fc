"""Where the HTTP server listens: operations.yaml's http.listen, `scada run --http`, generated
configurations (none: several servers run from them at once)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from city_scada import load_config
from scada.cli import http_address
from scada.front.link import FrontSettings, front_config
from scada.operations.http import listen_of
from scada.operations.model import OperationsConfig
from simulators.city import generate, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_http_option_parses_an_address_or_none_and_refuses_garbage() -> None:
    assert http_address("none") is None and http_address("NONE") is None
    assert http_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert http_address("localhost") == ("localhost", 8080)
    with pytest.raises(SystemExit, match="--http 'not a host:x'"):
        http_address("not a host:x")


def test_the_option_overrides_operations_yaml_in_what_the_front_gets() -> None:
    config = load_config(ROOT)
    assert listen_of(front_config(config)) == ("127.0.0.1", 8080)  # the shipped file's
    moved = FrontSettings("opc.tcp://127.0.0.1:4840/", http=("127.0.0.1", 9191), http_set=True)
    assert listen_of(front_config(config, moved)) == ("127.0.0.1", 9191)
    off = FrontSettings("opc.tcp://127.0.0.1:4840/", http=None, http_set=True)
    assert listen_of(front_config(config, off)) is None
    assert listen_of(front_config(config, FrontSettings("opc.tcp://127.0.0.1:4840/"))) == ("127.0.0.1", 8080)


def test_no_service_no_http_server() -> None:
    config = load_config(ROOT)
    assert listen_of(dataclasses.replace(config, operations=OperationsConfig())) is None


def test_a_generated_city_configuration_has_no_fixed_http_address(tmp_path: Path) -> None:
    city = generate("tiny")
    write_config(city, tmp_path, types_from=ROOT / "tags.yaml")
    config = load_config(tmp_path)
    assert config.operations.services  # operations run
    assert config.operations.http.listen is None  # but no HTTP server unless `--http` says where
