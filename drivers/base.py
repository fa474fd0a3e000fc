"""The registry of drivers (to be replaced by a typed table at the composition point)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scada.config import Config, Device
    from scada.driver_api import Driver, DriverConfig
    from scada.tagdb import TagDB

# The registry: driver name in tags.yaml -> its package. One line per driver.
REGISTRY: dict[str, str] = {
    "modbus": "drivers.modbus",
    "mqtt": "drivers.mqtt",
    "opcua": "drivers.opcua",
}


def driver_config(name: str) -> DriverConfig:
    return importlib.import_module(f"{REGISTRY[name]}.config")  # type: ignore[return-value]


def create_driver(name: str, config: Config, devices: list[Device], tagdb: TagDB) -> Driver:
    module = importlib.import_module(f"{REGISTRY[name]}.driver")
    return module.create(config, devices, tagdb)
