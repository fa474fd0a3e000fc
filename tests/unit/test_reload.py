"""The logic of a configuration reload (scada/reload.py) on real configuration files: what the
diff says, which tag rows and alarm states a new tag table and engine take over."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scada import status as st
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal
from scada.alarms.states import State
from city_scada import load_config
from scada.reload import _journal_removed, carry_alarms, diff
from scada.tagdb import TagDB
from tests.configs import shipped_types

from .test_alarm_engine import ALARMS, DEVICES, Clock


def config_in(folder: Path, devices: str = DEVICES, alarms: str = ALARMS, tags_edit=lambda t: t):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tags.yaml").write_text(tags_edit(shipped_types()) + devices)
    (folder / "alarms.yaml").write_text(alarms)
    return load_config(folder)


LC3 = '  - {name: LC-3, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.3:502"}\n'


def test_diff_names_added_removed_and_changed_devices_and_alarms(tmp_path):
    old = config_in(tmp_path / "a")
    # LC-1 removed, LC-3 added, TJ-1 moved to another commune (its nodes are replaced), an
    # alarm limit changed, an alarm removed, one added.
    devices = DEVICES.replace(DEVICES.splitlines()[2] + "\n", "").replace(
        "name: TJ-1, type: traffic_junction, commune: Dijon", "name: TJ-1, type: traffic_junction, commune: Talant")
    alarms = (ALARMS.replace("condition: high, limit: 60", "condition: high, limit: 65")
              .replace("  - {name: door_lc2", "  - {name: door_lc2_new"))
    new = config_in(tmp_path / "b", devices + LC3, alarms)
    d = diff(old, new)
    assert (d.devices_added, d.devices_removed, d.devices_changed) == (["LC-3"], ["LC-1"], ["TJ-1"])
    assert [x.name for x in d.nodes_removed] == ["LC-1", "TJ-1"]
    assert [x.name for x in d.nodes_added] == ["TJ-1", "LC-3"]
    assert (d.alarms_added, d.alarms_removed, d.alarms_changed) == (["door_lc2_new"], ["door_lc2"], ["hot"])
    assert not d.types_rebuilt


def test_diff_of_the_same_files_elsewhere_is_empty_and_a_scale_change_keeps_the_nodes(tmp_path):
    old = config_in(tmp_path / "a")
    assert diff(old, config_in(tmp_path / "b")).empty
    lamp_count = "      lamp_count:\n        table: input\n        address: 6\n        type: uint16\n"
    new = config_in(tmp_path / "c", tags_edit=lambda t: t.replace(lamp_count, lamp_count + "        scale: 2\n"))
    d = diff(old, new)
    assert d.devices_changed == ["LC-1", "LC-2"] and not d.nodes_added and not d.nodes_removed


def test_new_tag_table_takes_over_the_rows_it_keeps_by_name(tmp_path):
    old_cfg = config_in(tmp_path / "a")
    # LC-3 first: every other tag id moves.
    new_cfg = config_in(tmp_path / "b", DEVICES.replace("devices:\n", "devices:\n" + LC3))
    old = TagDB(*old_cfg.tag_table())
    name = "Dijon/lighting/LC-2/mains_voltage"
    old.update([old.id_of(name)], [231.5], st.GOOD, 123)
    old.update_text([old.id_of("Dijon/lighting/LC-2/Diagnostics/last_error")], ["timeout"], st.GOOD)
    new = TagDB(*new_cfg.tag_table())
    kept = new.carry_from(old)
    assert len(kept) == len(old)
    i = new.id_of(name)
    assert i != old.id_of(name)
    assert (new.value[i], new.status[i], new.source_time[i]) == (231.5, st.GOOD, 123)
    assert new.text[new.id_of("Dijon/lighting/LC-2/Diagnostics/last_error")] == "timeout"
    added = new.id_of("Dijon/lighting/LC-3/mains_voltage")
    assert np.isnan(new.value[added]) and new.status[added] == st.BAD_NO_COMMUNICATION
    assert new.changes == old.changes


def test_new_engine_takes_over_kept_instances_and_lists_the_removed_ones(tmp_path):
    old_cfg = config_in(tmp_path / "a")
    clock = Clock()
    journal = Journal(tmp_path / "alarms.sqlite")
    try:
        tagdb = TagDB(*old_cfg.tag_table())
        old = AlarmEngine(old_cfg, tagdb, journal, clock)
        dev = old_cfg.device("LC-2")
        tagdb.update(old_cfg.tag_ids(dev), np.full(len(old_cfg.tag_ids(dev)), 230.0), st.GOOD)
        volt = tagdb.id_of("Dijon/lighting/LC-2/mains_voltage")
        tagdb.update([volt], [0.0], st.GOOD)
        old.evaluate_all()
        clock.advance(3)
        old.tick()
        i = old.instance("mains_loss", "LC-2")
        assert State(int(old.state[i])) == State.UNACK_ACTIVE
        new_cfg = config_in(tmp_path / "b", DEVICES.replace(DEVICES.splitlines()[2] + "\n", LC3),
                            ALARMS.replace("  - {name: door_lc2", "  - {name: door_lc2_new"))
        new_db = TagDB(*new_cfg.tag_table())
        new_db.carry_from(tagdb)
        new = AlarmEngine(new_cfg, new_db, journal, clock)
        carried, gone = carry_alarms(old, new)
        j = new.instance("mains_loss", "LC-2")
        assert State(int(new.state[j])) == State.UNACK_ACTIVE and new.cond_since[j] == old.cond_since[i]
        assert State(int(new.state[new.instance("mains_loss", "LC-3")])) == State.NORMAL
        assert {(old._name(k), old._device(k)) for k in gone} >= {("door_lc2", "LC-2"), ("mains_loss", "LC-1")}
        assert carried == sum(1 for key in new._index if key in old._index)
        # The first evaluation with unchanged values announces nothing again.
        assert not [e for e in new.evaluate_all() if e.event == "ACTIVATE"]
        # A removed instance that was shown leaves a REMOVED row, and no saved state to restore.
        lc1 = old.instance("mains_loss", "LC-1")
        old.state[lc1] = int(State.UNACK_ACTIVE)
        journal.save_states([old._state_record(lc1)])
        _journal_removed(old, new, gone)
        removed = [(r.alarm, r.device, r.event, r.state) for r in journal.query() if r.event == "REMOVED"]
        assert removed == [("mains_loss", "LC-1", "REMOVED", "NORMAL")]
        assert ("mains_loss", "LC-1") not in journal.load_states()
        assert ("mains_loss", "LC-2") in journal.load_states()
    finally:
        journal.close()


def test_a_type_that_gains_or_loses_its_commands_changes_its_devices_tag_table_and_nodes(tmp_path):
    """Commands give a device Control tags and methods: a reload that only adds or removes a
    type's commands must not be taken for "unchanged" (the tag table would not match)."""
    import yaml

    def without_cabinet_commands(text: str) -> str:
        doc = yaml.safe_load(text)
        cabinet = doc["equipment_types"]["lighting_cabinet"]
        cabinet.pop("commands")
        cabinet.pop("interlocks", None)
        doc.pop("schedules", None)  # they run the cabinets' commands
        return yaml.safe_dump(doc, sort_keys=False)

    old = config_in(tmp_path / "a")
    new = config_in(tmp_path / "b", tags_edit=without_cabinet_commands)
    assert {d.name for d in old.controlled} >= {"LC-1", "LC-2"}
    assert not {d.name for d in new.controlled} & {"LC-1", "LC-2"}
    assert old.tag_table()[0] != new.tag_table()[0]
    d = diff(old, new)
    assert d.devices_changed == ["LC-1", "LC-2"]
    assert sorted(x.name for x in d.nodes_removed) == ["LC-1", "LC-2"] == sorted(x.name for x in d.nodes_added)
    back = diff(new, old)
    assert back.devices_changed == ["LC-1", "LC-2"] and not back.empty
    # A command's tolerance changes what the pipeline does, not the nodes.
    looser = config_in(tmp_path / "c", tags_edit=lambda t: t.replace("tolerance: 1", "tolerance: 2", 1))
    assert looser.control != old.control
    d = diff(old, looser)
    assert d.devices_changed == ["LC-1", "LC-2"] and not d.nodes_added and not d.nodes_removed


ZONES = "\nzones:\n  centre: {devices: [LC-1, LC-2]}\n"
SCHEDULES = (
    "\nschedules:\n  - name: night\n    communes: [Dijon]\n"
    "    steps:\n      - {at: \"23:00\", command: SetDimLevel, arguments: {level: 50}}\n"
)


def test_diff_names_the_control_sections_that_changed_not_those_that_moved(tmp_path):
    """tags.yaml's zones, schedules...: the reload says so, and the front follows what it shows."""
    old = config_in(tmp_path / "a", DEVICES + ZONES)
    # The same zone lower in the file (a comment above it): moved, not changed.
    assert diff(old, config_in(tmp_path / "b", DEVICES + "\n# the city centre\n" + ZONES)).empty
    d = diff(old, config_in(tmp_path / "c", DEVICES + ZONES.replace("LC-2]", "LC-2, TJ-1]")))
    assert d.control_changed == ["zones"] and d.engines_untouched and d.front_changed and not d.empty
    assert d.summary() == {"control_changed": ["zones"]}
    # A schedule is the core's alone: named, but nothing for the front to rebuild.
    d = diff(old, config_in(tmp_path / "d", DEVICES + ZONES + SCHEDULES))
    assert d.control_changed == ["schedules"] and not d.front_changed and not d.empty
