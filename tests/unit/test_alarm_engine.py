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
from scada.alarms.journal import Journal
from scada.alarms.states import IllegalTransition, State
from tests.alarm_rig import DEVICES, SERVICES, AlarmRig, Clock
from tests.alarm_rig import S as S  # re-exported: other alarm tests import it from here

ALARMS = SERVICES + """alarms:
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


class Bench(AlarmRig):
    """A TagDB, a journal and an engine on the config above; values set by point name."""

    def __init__(self, folder: Path, journal_path: Path | None = None, devices: str = DEVICES) -> None:
        super().__init__(folder, ALARMS, journal_path or folder / "alarms.sqlite", Clock(), devices)
        self.events: list = []
        self.engine.subscribers.append(self.events.extend)

    def healthy(self, device: str = "LC-1") -> None:
        """Every lighting point at a normal value, Good."""
        self.set(device, mains_voltage=230, failed_lamps=0, temperature=30, lamps_on=0, power=0, lamp_count=30)


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


def test_deadband_hysteresis_on_high_and_low_limits(bench: Bench) -> None:
    def events(**values: float) -> list[tuple[str, str]]:
        ev = bench.set("LC-1", **values)
        bench.clock.advance(5)  # past every on/off delay
        return [(e.alarm, e.event) for e in ev + bench.engine.tick()]

    assert events(temperature=60) == []  # not above the limit
    assert events(temperature=62) == [("hot", "ACTIVATE")]
    assert events(temperature=55.1) == []  # above limit - deadband: still active
    assert events(temperature=60.5) == []
    assert events(temperature=55) == [("hot", "CLEAR")]  # no longer above limit - deadband
    assert events(temperature=59) == []  # below the limit: inactive stays inactive
    assert events(mains_voltage=180) == []
    assert events(mains_voltage=179) == [("mains_loss", "ACTIVATE")]
    assert events(mains_voltage=184) == []  # below limit + deadband: still active (TagDB deadband 0.5 V)
    assert events(mains_voltage=185) == [("mains_loss", "CLEAR")]


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


def test_a_removal_from_service_needs_a_reason_and_ends_at_its_expiry(bench: Bench) -> None:
    bench.set("LC-1", temperature=70)
    with pytest.raises(ValueError, match="reason"):
        bench.engine.remove_from_service("hot", "LC-1", "tech", "  ")
    with pytest.raises(ValueError, match="7 days"):
        bench.engine.remove_from_service("hot", "LC-1", "tech", "works", 8 * 86400)
    assert bench.state("hot") == State.UNACK_ACTIVE  # refused: nothing changed
    bench.engine.remove_from_service("hot", "LC-1", "tech", "thermostat replacement", 3600)
    assert bench.state("hot") == State.OUT_OF_SERVICE
    bench.clock.advance(3599)
    assert bench.engine.tick() == []
    bench.clock.advance(2)
    ev = bench.engine.tick()
    assert [(e.event, e.state, e.user) for e in ev] == [("RETURN_TO_SERVICE", State.UNACK_ACTIVE, "server")]
    assert int(bench.engine.shelved_until[bench.engine.instance("hot", "LC-1")]) == 0
    assert bench.engine.tick() == []  # once
    last = bench.journal.query(alarm="hot")[-1]
    assert (last.event, last.user, last.comment) == ("RETURN_TO_SERVICE", "server", "out of service expired")


def test_a_removal_from_service_keeps_its_expiry_across_a_restart(tmp_path: Path) -> None:
    b = Bench(tmp_path / "cfg")
    b.healthy("LC-1")
    b.set("LC-1", temperature=70)
    b.engine.remove_from_service("hot", "LC-1", "tech", "relamping")  # the default: a week
    b.journal.close()
    b2 = Bench(tmp_path / "cfg", tmp_path / "cfg" / "alarms.sqlite")
    b2.clock.t = b.clock.t  # the same instant: a restart takes no time here
    b2.engine.restore()
    assert b2.state("hot") == State.OUT_OF_SERVICE
    b2.clock.advance(7 * 86400 - 1)
    assert b2.engine.tick() == []
    b2.clock.advance(2)
    assert [e.event for e in b2.engine.tick()] == ["RETURN_TO_SERVICE"]


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
    from city_scada import main
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


# The change-batch path: which instances a batch reaches, and the same transitions as
# evaluating every instance.

def test_a_batch_reaches_each_instance_reading_its_tags(bench: Bench) -> None:
    def reached(*points: tuple[str, str]) -> list[tuple[str, str, int]]:
        ids = np.array([bench.tag(dev, p) for dev, p in points])
        inst, tags, bounds = bench.engine._affected(ids)
        assert bounds[0] == 0 and bounds[-1] == len(inst)
        for k in range(len(bench.engine.defs)):  # grouped by definition
            assert (bench.engine.inst_def[inst[bounds[k]:bounds[k + 1]]] == k).all()
        return sorted((bench.engine._name(int(i)), bench.engine._device(int(i)), int(t)) for i, t in zip(inst, tags))

    volt = bench.tag("LC-1", "mains_voltage")
    assert reached(("LC-1", "mains_voltage")) == [("mains_loss", "LC-1", volt), ("voltage_jump", "LC-1", volt)]
    assert reached(("LC-1", "energy"), ("LC-1", "door_open")) == []  # no alarm reads them (door: LC-2 only)
    assert reached(("LC-2", "door_open")) == [("door_lc2", "LC-2", bench.tag("LC-2", "door_open"))]
    assert reached(("LC-1", "mode")) == [("comm_loss", "LC-1", bench.tag("LC-1", "mode"))]  # its first tag
    # An expression is reached by each changed point it reads; several tags, unsorted, mixed.
    got = reached(("TJ-1", "conflict_fault"), ("LC-2", "power"), ("LC-1", "energy"), ("LC-2", "lamps_on"),
                  ("LC-2", "mains_voltage"), ("LC-1", "temperature"))
    assert [(a, d) for a, d, _ in got] == [("conflict", "TJ-1"), ("dark_at_night", "LC-2"), ("dark_at_night", "LC-2"),
                                           ("hot", "LC-1"), ("mains_loss", "LC-2"), ("voltage_jump", "LC-2")]


def test_an_expression_reached_by_several_points_is_evaluated_once(bench: Bench) -> None:
    ev = bench.set("LC-2", lamp_count=30, lamps_on=1, power=0.05)
    assert [(e.alarm, e.device, e.event) for e in ev] == [("dark_at_night", "LC-2", "ACTIVATE")]
    assert bench.set("LC-2", lamps_on=0, power=0.04) and bench.state("dark_at_night", "LC-2") == State.RTN_UNACK


def test_comm_loss_follows_the_status_of_the_first_tag_alone(bench: Bench) -> None:
    bench.set("LC-2", mode=0)
    batch = bench.tagdb.set_status([bench.tag("LC-2", "mode")], st.BAD_COMMUNICATION_ERROR)
    assert bench.engine.process(batch) == []
    bench.clock.advance(10)
    assert [(e.alarm, e.device, e.event) for e in bench.engine.tick()] == [("comm_loss", "LC-2", "ACTIVATE")]
    bench.set("LC-1", mode=0)
    batch = bench.tagdb.set_status([bench.tag("LC-1", "temperature")], st.BAD_COMMUNICATION_ERROR)
    assert bench.engine.process(batch) == []
    bench.clock.advance(10)
    assert bench.engine.tick() == [] and bench.state("comm_loss", "LC-1") == State.NORMAL


CITY = "devices:\n" + "".join(
    f"  - {{name: LC-{i}, type: lighting_cabinet, commune: Dijon, lat: 47.3, lon: 5.0, endpoint: \"10.0.0.{i}:502\"}}\n"
    for i in range(1, 9)) + "".join(
    f"  - {{name: TJ-{i}, type: traffic_junction, commune: Dijon, lat: 47.3, lon: 5.0, "
    f"endpoint: \"opc.tcp://10.0.1.{i}:4840/\"}}\n" for i in range(1, 3))


@pytest.mark.parametrize("seed", range(6))
def test_change_batches_give_the_transitions_of_evaluating_everything(tmp_path: Path, seed: int) -> None:
    """Random batches of changed tags (values across limits, NaN, Bad and comm-loss statuses,
    several points at once) into two engines: one evaluates the instances the batch reaches,
    the other every instance. Transitions, states and conditions must be identical."""
    rng = np.random.default_rng(seed)
    sparse = Bench(tmp_path / "a", devices=CITY)
    full = Bench(tmp_path / "b", devices=CITY)
    full.clock = sparse.clock
    full.engine.clock = sparse.clock
    assert sparse.engine.evaluate_all() == full.engine.evaluate_all() == []  # as the engine's run() starts
    values = np.array([0, 1, 3, 30, 58, 61, 64, 70, 150, 178, 182, 186, 230, 0.05, 1.2, np.nan])
    statuses = np.array([st.GOOD] * 6 + [st.BAD_COMMUNICATION_ERROR, st.BAD_NO_COMMUNICATION,
                                         st.UNCERTAIN_LAST_USABLE_VALUE], np.uint32)
    n = len(sparse.tagdb)
    lc = [d for d in sparse.config.devices if d.name.startswith("LC")]
    transitions = 0
    for step in range(150):
        if rng.random() < 0.1:  # a link loss: every tag of a cabinet at once
            ids = np.array(sparse.config.tag_ids(lc[rng.integers(len(lc))]))
            vals, status = sparse.tagdb.value[ids], np.full(len(ids), st.BAD_COMMUNICATION_ERROR, np.uint32)
        else:
            ids = rng.choice(n, rng.integers(1, n // 3), replace=False)
            vals, status = values[rng.integers(len(values), size=len(ids))], statuses[rng.integers(len(statuses), size=len(ids))]
        # Offer only rows that change: the TagDB stamps the source time of unchanged rows too,
        # which a rate-of-change alarm evaluated without a change would see as time passing.
        db = sparse.tagdb
        moved = (np.abs(vals - db.value[ids]) > db.deadband[ids]) | (np.isnan(vals) != np.isnan(db.value[ids]))
        keep = moved | (status != db.status[ids])
        ids, vals, status = ids[keep], vals[keep], status[keep]
        t = sparse.clock()
        batch = sparse.tagdb.update(ids, vals, status, t)
        full.tagdb.update(ids, vals, status, t)
        if batch is None:
            continue
        assert len(batch.ids) * 2 <= n  # the change-batch path, not a full evaluation
        a, b = sparse.engine.process(batch), full.engine.evaluate_all()
        sparse.clock.advance(float(rng.choice([0, 0.5, 1, 2.5, 4])))
        a += sparse.engine.tick()
        b += full.engine.tick()
        for e in [e for e in a if sparse.engine.state[e.instance] in (State.UNACK_ACTIVE, State.RTN_UNACK)][:1]:
            a += sparse.engine.ack(e.alarm, e.device, "op")
            b += full.engine.ack(e.alarm, e.device, "op")
        assert [(e.instance, e.event, e.state, e.active) for e in a] == \
               [(e.instance, e.event, e.state, e.active) for e in b], step
        for col in ("state", "raw", "cond", "pending", "suppressed", "raw_since", "cond_since"):
            assert (getattr(sparse.engine, col) == getattr(full.engine, col)).all(), (step, col)
        transitions += len(a)
    assert transitions > 50  # the batches did move alarms
    sparse.journal.close()
    full.journal.close()
