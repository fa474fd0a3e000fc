"""The registry of drivers: the name tags.yaml gives a driver -> its plugin. One row per driver.

This is the composition point's table, handed to the core (``load_config``, the server's
command line), which never imports a driver. A factory imports its driver's I/O module when
a server builds it: ``scada check`` reads a configuration without loading pymodbus, asyncua
or paho.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from drivers.modbus import config as modbus_config
from drivers.mqtt import config as mqtt_config
from drivers.opcua import config as opcua_config
from scada.driver_api import Driver, DriverPlugin

if TYPE_CHECKING:
    from scada.config import Config, Device
    from scada.tagdb import TagDB


def _create_modbus(config: Config, devices: list[Device], tagdb: TagDB) -> Driver:
    from drivers.modbus import driver

    return driver.create(config, devices, tagdb)


def _create_mqtt(config: Config, devices: list[Device], tagdb: TagDB) -> Driver:
    from drivers.mqtt import driver

    return driver.create(config, devices, tagdb)


def _create_opcua(config: Config, devices: list[Device], tagdb: TagDB) -> Driver:
    from drivers.opcua import driver

    return driver.create(config, devices, tagdb)


REGISTRY: Mapping[str, DriverPlugin] = MappingProxyType(
    {
        "modbus": DriverPlugin("modbus", modbus_config, _create_modbus),
        "mqtt": DriverPlugin("mqtt", mqtt_config, _create_mqtt),
        "opcua": DriverPlugin("opcua", opcua_config, _create_opcua),
    }
)
