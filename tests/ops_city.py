"""A small city for the HTTP tests (Open311, map, metrics): shipped types, two communes, one
device of each class, and the operations configuration built directly (until operations.yaml
is part of the configuration, its loader is not needed here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scada.operations.model import Delays, HttpSettings, Open311Settings, OperationsConfig, ServiceDef
from tests.configs import ROOT, write_config

DEVICES = """
devices:
  - {name: LC-A-1, type: lighting_cabinet, commune: Ahuy, lat: 47.369, lon: 5.021, endpoint: "127.0.0.1:15020", unit: 1}
  - {name: LC-D-1, type: lighting_cabinet, commune: Dijon, lat: 47.322, lon: 5.041, endpoint: "127.0.0.1:15022", unit: 1}
  - {name: B-D-1, type: access_bollard, commune: Dijon, lat: 47.324, lon: 5.030, endpoint: "127.0.0.1:1883"}
  - {name: J-D-1, type: traffic_junction, commune: Dijon, lat: 47.307, lon: 5.052,
     endpoint: "opc.tcp://127.0.0.1:4841/traffic/"}
  - {name: V-1, type: crew_vehicle, commune: Dijon, lat: 47.33, lon: 5.04, endpoint: "127.0.0.1:1883"}
"""

DELAYS = {p: Delays(3600.0, 86400.0, 600.0) for p in ("low", "medium", "high", "critical")}


def ops_config(
    listen: tuple[str, int] | None = None, *, internal: tuple[str, int] | None = None, **open311: float
) -> OperationsConfig:
    """Two services offered to citizens, one that is not."""
    return OperationsConfig(
        services={
            "lighting_maintenance": ServiceDef(
                "lighting_maintenance", ("lighting",), DELAYS, "streetlight", "Street light out", "A lamp is out"
            ),
            "traffic_control": ServiceDef("traffic_control", ("traffic",), DELAYS, "traffic_signal", "Traffic signal"),
            "security": ServiceDef("security", ("bollard",), DELAYS),
        },
        open311=Open311Settings(**open311),  # type: ignore[arg-type]
        http=HttpSettings(listen=listen, internal=internal),  # none by default: no fixed port in tests
    )


def city(folder: Path, ops: OperationsConfig | None = None, extra_devices: str = ""):
    """The configuration, with ``ops`` as its operations (set on the loaded object until
    Config has the field: the front reads ``config.operations``)."""
    config = write_config(folder, DEVICES + extra_devices, (ROOT / "alarms.yaml").read_text())
    if ops is not None:
        object.__setattr__(config, "operations", ops)
    return config


def tag_table(config):
    """A TagDB of the configuration, every value unknown (NaN)."""
    from scada.tagdb import TagDB

    names, kinds, deadbands = config.tag_table()
    db = TagDB(names, kinds, deadbands)
    db.value[:] = np.nan
    return db


def with_operations(config, ops: OperationsConfig):
    """``config`` with ``ops`` as its operations, as a real field: it survives
    ``dataclasses.replace`` and pickling to the front process (where ``city``'s attribute would
    not). Until Config has the field, a subclass of it that has (importable by the front: the
    tests package is on its path)."""
    from dataclasses import fields, replace

    from scada.config import Config

    if "operations" in Config.__dataclass_fields__:
        return replace(config, operations=ops)
    return ConfigWithOperations(**{f.name: getattr(config, f.name) for f in fields(Config)}, operations=ops)


def _subclass():
    from dataclasses import dataclass, field

    from scada.config import Config

    @dataclass(frozen=True)
    class ConfigWithOperations(Config):
        operations: OperationsConfig = field(default_factory=OperationsConfig)

    ConfigWithOperations.__qualname__ = "ConfigWithOperations"
    return ConfigWithOperations


ConfigWithOperations = _subclass()
