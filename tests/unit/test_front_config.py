"""What the front process is given of the configuration: everything it shows, nothing of the
field's secrets (scada.front.link.front_config)."""

from __future__ import annotations

import dataclasses
import numpy as np

from city_scada.registry import REGISTRY
from scada.config import load_config
from scada.front import wire
from scada.front.link import front_config
from tests.integration.helpers import ROOT


def test_the_front_gets_the_tag_table_without_the_drivers_options():
    config = load_config(ROOT, REGISTRY)
    secret = b"broker-password-and-private-key"
    name, first = next(iter(config.types.items()))
    # A type whose driver options hold a secret, as an MQTT broker login or an OPC UA client key do.
    config = dataclasses.replace(config, types={**config.types, name: dataclasses.replace(first, io=(secret,))})
    front = front_config(config)
    assert secret in wire.dumps(dataclasses.replace(config, drivers={}))  # what the front was sent before
    assert secret not in wire.dumps(front)
    assert all(t.io is None and all(p.io is None for p in t.points) for t in front.types.values())
    assert front.drivers == {}
    names, kinds, deadbands = config.tag_table()
    f_names, f_kinds, f_deadbands = front.tag_table()
    assert names == f_names and np.array_equal(kinds, f_kinds) and np.array_equal(deadbands, f_deadbands)
    assert [p.name for p in front.point_defs()] == [p.name for p in config.point_defs()]
    assert front.devices == config.devices and front.alarms == config.alarms
