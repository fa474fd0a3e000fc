"""The alarm engine over a real TagDB and journal, with a clock the test moves.

Limits with deadband, on/off delays, cause-based suppression (mains loss, communication
loss), latching, shelving with expiry, expressions, rate of change, per-device alarms, the
journal rows of transitions and actions, and a restart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scada import status as st
from scada.alarms.engine import AlarmEngine
from scada.alarms.journal import Journal
from scada.alarms.states import IllegalTransition, State
from scada.config import load_config
from scada.tagdb import TagDB

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000

DEVICES = """
devices:
  - {name: LC-1, type: lighting_cabinet, commune: Talant, lat: 47.3, lon: 5.0, endpoint: "10.0.0.1:502"}
  - {name: LC-2, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "10.0.0.2:502"}
  - {name: TJ-1, type: traffic_junction, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: "opc.tcp://10.0.0.9:4840/"}
"""

ALARMS = """
services:
  lighting_maintenance: {label: Lighting maintenance, ack_deadline_s: 1800}
  traffic_control: {label: Traffic control, ack_deadline_s: 300}
alarms:
  - {name: mains_loss, type: lighting_cabinet, point: mains_voltage, condition: low, limit: 180, deadband: 5,
     priority: critical, message: "{commune} {device}: mains {value} {unit}", service: lighting_maintenance,
     on_delay: 2}
  - {name: lamps_failed, type: lighting_cabinet, point: failed_lamps, condition: high, limit: 0,
     priority: medium, message: "{device}: {value} failed lamps", service: lighting_maintenance,
     suppressed_by: [mains_loss]}
  - {name: hot, type: lighting_cabinet, point: temperature, condition: high, limit: 60, deadband: 5,
     priority: high, message: "{device}: {value} {unit} above {limit}", service: lighting_maintenance,
     off_delay: 3}
  - {name: dark_at_night, type: lighting_cabinet, condition: expression,
     expression: "lamps_on and power < 0.2 * lamp_count * 0.05", priority: high,
     message: "{device}: lamps on but power low", service: lighting_maintenance}
  - {name: voltage_jump, type: lighting_cabinet, point: mains_voltage, condition: rate_of_change, limit: 20,
     priority: low, message: "{device}: mains voltage jumps", service: lighting_maintenance}
  - {name: comm_loss, type: lighting_cabinet, condition: comm_loss, priority: high,
     message: "{device}: no communication", service: lighting_maintenance, on_delay: 10}
  - {name: conflict, type: traffic_junction, point: conflict_fault, condition: state, states: [1],
     priority: critical, message: "{device}: signal conflict", service: traffic_control, latching: true}
  - {name: door_lc2, device: LC-2, point: door_open, condition: state, states: [1], priority: low,
     message: "{device}: door open", service: lighting_maintenance}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000 * S

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * S)


class Bench:
    """A TagDB, a journal and an engine on the config above; values set by point name."""

    def __init__(self, folder: Path, journal_path: Path | None = None) -> None:
        head, _, _ = (ROOT / "tags.yaml").read_text().partition("\ninventories:")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tags.yaml").write_text(head + DEVICES)
        (folder / "alarms.yaml").write_text(ALARMS)
        self.config = load_config(folder)
        self.tagdb = TagDB(*self.config.tag_table())
        self.journal = Journal(journal_path or folder / "alarms.sqlite")
        self.clock = Clock()
        self.engine = AlarmEngine(self.config, self.tagdb, self.journal, self.clock)
        self.events: list = []
        self.engine.subscribers.append(self.events.extend)

    def set(self, device: str, status: int = st.GOOD, **values: float):
        d = self.config.device(device)
        cls = self.config.types[d.type].cls
        ids = [self.tagdb.id_of(f"{d.commune}/{cls}/{device}/{p}") for p in values]
        batch = self.tagdb.update(np.array(ids), np.array(list(values.values()), float), status, self.clock())
        return self.engine.process(batch)

    def healthy(self, device: str = "LC-1") -> None:
        """Every lighting point at a normal value, Good."""
        self.set(device, mains_voltage=230, failed_lamps=0, temperature=30, lamps_on=0, power=0, lamp_count=30)

    def state(self, alarm: str, device: str = "LC-1") -> State:
        return State(int(self.engine.state[self.engine.instance(alarm, device)]))


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    b = Bench(tmp_path / "cfg")
    b.healthy("LC-1")
    b.healthy("LC-2")
    b.set("TJ-1", conflict_fault=0)
    yield b
    b.journal.close()


def test_limit_with_deadband_acknowledge_and_return_to_normal(bench: Bench) -> None:
    ev = bench.set("LC-1", temperature=61)
    assert [(e.alarm, e.event, e.state) for e in ev] == [("hot", "ACTIVATE", State.UNACK_ACTIVE)]
    assert ev[0].message == "LC-1: 61 degC above 60"
    assert ev[0].severity == 750 and ev[0].service == "lighting_maintenance"
    assert bench.set("LC-1", temperature=57) == []  # inside the deadband: still active
    bench.engine.ack("hot", "LC-1", "operator1", "crew informed")
    assert bench.state("hot") == State.ACK_ACTIVE
    with pytest.raises(IllegalTransition):  # a second acknowledgement is refused
        bench.engine.ack("hot", "LC-1", "operator2")
    assert bench.set("LC-1", temperature=54) == []  # below limit - deadband, but the off-delay runs
    bench.clock.advance(2)
    assert bench.engine.tick() == []
    bench.clock.advance(1.5)
    ev = bench.engine.tick()
    assert [(e.alarm, e.event, e.state) for e in ev] == [("hot", "CLEAR", State.NORMAL)]
    rows = bench.journal.query(alarm="hot")
    assert [(r.event, r.state, r.user, r.comment) for r in rows] == [
        ("ACTIVATE", "UNACK_ACTIVE", "", ""), ("ACK", "ACK_ACTIVE", "operator1", "crew informed"),
        ("CLEAR", "NORMAL", "", "")]
    assert rows[0].commune == "Talant" and rows[0].priority == "high" and rows[0].value == 61


def test_on_delay_filters_a_short_dip(bench: Bench) -> None:
    assert bench.set("LC-1", mains_voltage=150) == []  # mains loss has a 2 s on-delay
    bench.clock.advance(1)
    assert bench.engine.tick() == []
    assert bench.set("LC-1", mains_voltage=231) == []  # back before the delay: nothing happened
    bench.clock.advance(5)
    assert bench.engine.tick() == []
    bench.set("LC-1", mains_voltage=150)
    bench.clock.advance(2.1)
    assert [(e.alarm, e.event) for e in bench.engine.tick()] == [("mains_loss", "ACTIVATE")]


def test_mains_loss_suppresses_lamp_alarms_which_stay_queryable(bench: Bench) -> None:
    # The mains go: the lamps fail at once, the mains alarm waits for its 2 s on-delay.
    ev = bench.set("LC-1", mains_voltage=0, failed_lamps=30)
    assert [(e.alarm, e.event, e.state) for e in ev] == [("lamps_failed", "SUPPRESS", State.SUPPRESSED),
                                                          ("lamps_failed", "ACTIVATE", State.SUPPRESSED)]
    bench.clock.advance(2)
    assert [(e.alarm, e.event) for e in bench.engine.tick()] == [("mains_loss", "ACTIVATE")]
    shown = {(x["alarm"], x["device"]) for x in bench.engine.listing()}
    assert shown == {("mains_loss", "LC-1")}
    hidden = bench.engine.listing([State.SUPPRESSED])
    assert [(x["alarm"], x["active"]) for x in hidden] == [("lamps_failed", True)]
    # The mains come back but the lamps stay failed: the lamp alarm is announced now.
    ev = bench.set("LC-1", mains_voltage=230)
    assert ("lamps_failed", "UNSUPPRESS", State.UNACK_ACTIVE) in [(e.alarm, e.event, e.state) for e in ev]
    # LC-2 was never concerned.
    assert bench.state("lamps_failed", "LC-2") == State.NORMAL


def test_communication_loss_suppresses_the_process_alarms(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)
    assert bench.state("hot") == State.UNACK_ACTIVE
    d = bench.config.device("LC-1")
    batch = bench.tagdb.set_status(bench.config.tag_ids(d), st.BAD_COMMUNICATION_ERROR)
    assert bench.engine.process(batch) == []  # the link may come back: the 10 s on-delay runs
    bench.clock.advance(10)
    ev = bench.engine.tick()
    assert [(e.alarm, e.event, e.state) for e in ev] == [("hot", "SUPPRESS", State.SUPPRESSED),
                                                          ("comm_loss", "ACTIVATE", State.UNACK_ACTIVE)]
    assert [x["alarm"] for x in bench.engine.listing()] == ["comm_loss"]
    # The link comes back (every tag answers) with the cabinet cooled down. The hot alarm is
    # shown again, still active until its 3 s off-delay is over, then owes its acknowledgement.
    ev = bench.set("LC-1", mode=0, temperature=30, mains_voltage=230, failed_lamps=0)
    assert [(e.alarm, e.event, e.state) for e in ev] == [("hot", "UNSUPPRESS", State.UNACK_ACTIVE),
                                                          ("comm_loss", "CLEAR", State.RTN_UNACK)]
    bench.clock.advance(3)
    assert [(e.alarm, e.event, e.state) for e in bench.engine.tick()] == [("hot", "CLEAR", State.RTN_UNACK)]


def test_latching_alarm_needs_ack_and_reset(bench: Bench) -> None:
    bench.set("TJ-1", conflict_fault=1)
    assert bench.state("conflict", "TJ-1") == State.UNACK_ACTIVE
    bench.engine.ack("conflict", "TJ-1", "op")
    with pytest.raises(IllegalTransition):  # still active: no reset
        bench.engine.reset("conflict", "TJ-1", "op")
    bench.set("TJ-1", conflict_fault=0)
    assert bench.state("conflict", "TJ-1") == State.LATCHED  # stays shown after return to normal
    assert ("conflict", "TJ-1") in {(x["alarm"], x["device"]) for x in bench.engine.listing()}
    bench.engine.reset("conflict", "TJ-1", "supervisor", "conflict monitor tested")
    assert bench.state("conflict", "TJ-1") == State.NORMAL
    assert [r.event for r in bench.journal.query(alarm="conflict")] == ["ACTIVATE", "ACK", "CLEAR", "RESET"]


def test_shelving_expires_and_brings_the_alarm_back(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)
    with pytest.raises(ValueError):
        bench.engine.shelve("hot", "LC-1", "op", "", 60)  # a reason is required
    bench.engine.shelve("hot", "LC-1", "op", "sensor being replaced", 60)
    assert bench.state("hot") == State.SHELVED
    assert bench.set("LC-1", temperature=80) == []  # still tracked, not shown
    bench.clock.advance(61)
    ev = bench.engine.tick()
    assert [(e.event, e.state) for e in ev] == [("SHELVE_EXPIRED", State.UNACK_ACTIVE)]
    rows = bench.journal.query(alarm="hot")
    assert [(r.event, r.user, r.comment) for r in rows][1] == ("SHELVE", "op", "sensor being replaced")


def test_expression_and_rate_of_change_and_device_alarm(bench: Bench) -> None:
    ev = bench.set("LC-1", lamps_on=1, power=0.05)  # 30 lamps x 50 W = 1.5 kW nominal: far below 20 %
    assert [(e.alarm, e.event) for e in ev] == [("dark_at_night", "ACTIVATE")]
    assert bench.set("LC-1", power=1.2) and bench.state("dark_at_night") == State.RTN_UNACK
    bench.clock.advance(1)
    ev = bench.set("LC-1", mains_voltage=200)  # 30 V in 1 s
    assert [(e.alarm, e.event) for e in ev] == [("voltage_jump", "ACTIVATE")]
    bench.clock.advance(3)
    assert [(e.alarm, e.event) for e in bench.engine.tick()] == [("voltage_jump", "CLEAR")]
    ev = bench.set("LC-2", door_open=1)
    assert [(e.alarm, e.device) for e in ev] == [("door_lc2", "LC-2")]
    with pytest.raises(KeyError):
        bench.engine.instance("door_lc2", "LC-1")  # declared for LC-2 only


def test_notes_assignment_and_out_of_service_are_journaled(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)
    bench.engine.note("hot", "LC-1", "op", "fan noisy on site visit")
    bench.engine.assign("hot", "LC-1", "op", "crew-7")
    bench.engine.remove_from_service("hot", "LC-1", "tech", "thermostat replacement")
    assert bench.state("hot") == State.OUT_OF_SERVICE
    bench.engine.return_to_service("hot", "LC-1", "tech")
    assert bench.state("hot") == State.UNACK_ACTIVE  # still hot: announced again
    rows = bench.journal.query(alarm="hot")
    assert [(r.event, r.user) for r in rows] == [("ACTIVATE", ""), ("NOTE", "op"), ("ASSIGN", "op"),
                                                  ("REMOVE_FROM_SERVICE", "tech"), ("RETURN_TO_SERVICE", "tech")]
    assert rows[2].comment == "crew-7"


def test_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    b = Bench(tmp_path / "cfg")
    b.healthy("LC-1")
    b.healthy("LC-2")
    b.set("LC-1", temperature=70)
    b.set("LC-2", temperature=75)
    b.engine.ack("hot", "LC-2", "op")
    b.engine.shelve("lamps_failed", "LC-1", "op", "lamp survey", 3600)
    b.journal.close()
    # A new server process: a fresh TagDB (nothing known yet) and the same journal.
    b2 = Bench(tmp_path / "cfg", tmp_path / "cfg" / "alarms.sqlite")
    assert b2.engine.restore() >= 3
    assert b2.engine.evaluate_all() == []  # nothing known yet: nothing announced, nothing cleared
    assert b2.state("hot") == State.UNACK_ACTIVE and b2.state("hot", "LC-2") == State.ACK_ACTIVE
    assert b2.state("lamps_failed") == State.SHELVED
    b2.healthy("LC-1")  # LC-1 cooled down while the server was off: the clear is journaled
    b2.set("LC-2", mains_voltage=230, failed_lamps=0, temperature=75)  # LC-2 still hot: not announced again
    b2.clock.advance(4)
    b2.engine.tick()
    rows = b2.journal.query(alarm="hot")
    assert [(r.device, r.event) for r in rows] == [("LC-1", "ACTIVATE"), ("LC-2", "ACTIVATE"), ("LC-2", "ACK"),
                                                    ("LC-1", "CLEAR")]
    assert b2.state("hot") == State.RTN_UNACK
    b2.journal.close()


def test_command_line_metrics_journal_and_listing(bench: Bench, tmp_path: Path, capsys) -> None:
    from scada.cli import main
    bench.set("LC-1", temperature=70)
    bench.set("LC-2", temperature=71)
    bench.clock.advance(30)
    bench.engine.ack("hot", "LC-1", "op")
    data = bench.journal.path.parent
    bench.journal.close()
    end = (bench.clock.t + 10**9) // 10**9
    from datetime import datetime, timezone
    iso = datetime.fromtimestamp(end, timezone.utc).isoformat()
    assert main(["alarm-metrics", "--data", str(data), "--to", iso, "--config", str(data)]) == 0
    out = capsys.readouterr().out
    assert "announced alarms: 2" in out
    assert "time to acknowledge, lighting_maintenance: 1 acknowledged, median 30 s, 0 over the deadline" in out
    assert main(["journal", "--data", str(data), "--device", "LC-2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("time,") and "LC-2" in out.splitlines()[1]
    assert main(["alarms", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "LC-1" in out and "ACK_ACTIVE" in out and "UNACK_ACTIVE" in out
    bench.journal = Journal(data / "alarms.sqlite")  # the fixture closes it


def test_announcement_rate_over_ten_minutes(bench: Bench) -> None:
    for k in range(12):
        bench.set("LC-1", temperature=70 if k % 2 == 0 else 50)
        bench.clock.advance(4)
        bench.engine.tick()
    assert bench.engine.rate() == 6  # six announcements (the clears are not alarms)
    bench.clock.advance(600)
    assert bench.engine.rate() == 0


def test_an_alarm_its_service_does_not_acknowledge_in_time_is_escalated_once(bench: Bench) -> None:
    bench.set("TJ-1", conflict_fault=1)  # traffic control: 300 s to acknowledge
    bench.clock.advance(299)
    assert bench.engine.tick() == []
    bench.clock.advance(2)
    ev = bench.engine.tick()
    assert [(e.alarm, e.event, e.service) for e in ev] == [("conflict", "ESCALATE", "traffic_control")]
    assert "not acknowledged within 300 s" in ev[0].comment
    bench.clock.advance(100)
    assert bench.engine.tick() == []  # once per occurrence
    bench.engine.ack("conflict", "TJ-1", "op")
    assert [r.event for r in bench.journal.query(alarm="conflict")] == ["ACTIVATE", "ESCALATE", "ACK"]
