"""The simulated cabinet's register map: encoded as a real cabinet would, and described by tags.yaml."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from drivers.modbus.codec import ReadPlan
from city_scada import load_config
from simulators.adapters.modbus_lighting import REGISTER_MAP, SIZES, encode_images
from simulators.models import lighting

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_tags_yaml_describes_the_simulated_register_map():
    cfg = load_config(ROOT)
    points = {p.name: p for p in cfg.types["lighting_cabinet"].points}
    for name, table, address, dtype, order, scale in REGISTER_MAP:
        assert name in points, f"tags.yaml lighting_cabinet lacks {name}"
        io = points[name].io
        assert (io.table, io.address, io.type) == (table, address, dtype), name
        if dtype in ("uint32", "int32", "float32"):
            assert io.word_order == order, name
        assert io.scale == pytest.approx(scale), name


def test_images_hold_the_literal_words_a_cabinet_sends():
    s = lighting.create([47.32], [5.04], [30], t=0.0)
    s = lighting.set_mode(s, 0, lighting.MANUAL_DIM)
    s = lighting.set_dim(s, 0, 50)
    s = lighting.set_door(s, 0, True)
    images = encode_images(s)
    hr, ir = images["holding"][0].tolist(), images["input"][0].tolist()
    assert hr == [3, 50]
    power = struct.unpack(">f", struct.pack(">HH", ir[0], ir[1]))[0]
    assert power == pytest.approx(30 * 60 * 0.5 / 1000, rel=1e-6)
    assert ir[5] == 0 and ir[6] == 30 and ir[8] == 50
    assert ir[4] == round(s.voltage[0] * 10)
    assert images["discrete"][0, 0] and images["discrete"][0, 1]  # door open, lamps on


def test_images_decode_through_the_driver_codec_to_the_model_values():
    """What the simulator encodes, the server's codec (configured by tags.yaml) decodes back."""
    s = lighting.create([47.32, 47.3], [5.04, 5.0], [30, 40], t=1_764_000_000.0)
    s = lighting.set_mode(s, 1, lighting.FORCED_ON)
    s = lighting.fail_lamps(s, 1, 3)
    s = replace_energy(s, [12345.6, 0.3])
    s = replace_temperature(s, [-7.3, 21.4])
    images = encode_images(s)
    cfg = load_config(ROOT)
    t = cfg.types["lighting_cabinet"]
    plan = ReadPlan([p.io for p in t.points])
    for i in range(2):
        responses = [images[b.table][i, b.start:b.start + b.count].tolist() for b in plan.blocks]
        values = dict(zip([p.name for p in t.points], plan.decode(responses)))
        assert values["energy"] == pytest.approx(s.energy_kwh[i], abs=0.05)
        assert values["temperature"] == pytest.approx(s.temperature[i], abs=0.05)
        assert values["power"] == pytest.approx(s.power_kw[i], rel=1e-6)
        assert values["failed_lamps"] == s.failed[i]
        assert values["lamp_count"] == s.lamps[i]
        assert values["mode"] == s.mode[i]
        assert values["lamps_on"] == s.on[i]
        assert values["mains_fault"] == 0


def replace_energy(s, values):
    from dataclasses import replace
    return replace(s, energy_kwh=np.asarray(values, float))


def replace_temperature(s, values):
    from dataclasses import replace
    return replace(s, temperature=np.asarray(values, float))


def test_sizes_cover_the_map():
    for name, table, address, dtype, *_ in REGISTER_MAP:
        width = 2 if dtype in ("uint32", "int32", "float32") else 1
        assert address + width <= SIZES[table], name


def test_a_write_re_encodes_its_cabinet_and_requests_see_the_current_state():
    """A write changes one cabinet's row; the images are then those of a whole re-encoding."""
    from simulators.adapters.modbus_lighting import LightingModbusSimulator, bits_to_registers

    s = lighting.create([47.32, 47.3, 47.31], [5.04, 5.0, 5.02], [30, 40, 12], t=1_764_000_000.0)
    sim = LightingModbusSimulator(s)  # no server: the writes go through the request path's own method
    before = {t: image.copy() for t, image in sim._images.items()}
    assert sim._apply_write(1, 6, 0, [lighting.MANUAL_DIM]) is None
    assert sim._apply_write(1, 16, 1, [40]) is None
    assert sim._apply_write(2, 5, 0, [True]) is None  # lamp test coil
    full = encode_images(sim.state)
    for table, image in full.items():
        np.testing.assert_array_equal(sim._images[table], image, err_msg=table)
        np.testing.assert_array_equal(sim._images[table][0], before[table][0], err_msg=table)  # untouched
    for table in ("discrete", "coil"):
        np.testing.assert_array_equal(sim._bit_registers[table], bits_to_registers(full[table]))
    assert sim._images["holding"][1].tolist() == [3, 40] and sim._images["input"][1][8] == 40
    assert sim._images["coil"][2][0] and sim._images["input"][2][8] == 100  # lamp test: every lamp at 100 %
