"""OPC UA conditions over an AlarmMirror, as an OPC UA front process runs them.

The HmiServer is given the mirror instead of the engine; the mirror is fed from a real engine
and asks it for operator actions through pickle (tests/unit/test_alarm_mirror.py's Crossing,
standing for the channel). An asyncua client sees the engine's events and its Acknowledge
reaches the engine; a refusal in the engine is the same Bad status code as in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import ua
from asyncua.ua import uaerrors

from scada.alarms.states import State
from scada.front.alarms import AlarmMirror
from scada.opcua.server import HmiServer
from tests.unit.test_alarm_mirror import Crossing

from .test_opcua_alarms import City, ack_args, call, client_events, field, healthy, running

pytestmark = pytest.mark.integration

O = ua.ObjectIds  # noqa: E741 - as in test_opcua_alarms


class MirroredCity(City):
    """City whose HmiServer reads a mirror of the engine (the front process's view)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.crossing = Crossing(self.engine)
        self.hmi = HmiServer(self.config, self.tagdb, self.url, alarms=self.crossing.mirror)


async def test_events_reach_the_client_and_its_acknowledge_reaches_the_engine(tmp_path: Path) -> None:
    city = MirroredCity(tmp_path / "cfg")
    healthy(city)
    async with running(city), client_events(city.url, name="console-9") as (client, events, _):
        assert isinstance(city.hmi.conditions.engine, AlarmMirror)
        city.set("LC-1", temperature=70)
        ev = await events.next(ConditionName="hot")
        assert field(ev, "ActiveState/Id") is True and field(ev, "AckedState/Id") is False

        await call(client, city.condition("hot"), O.AcknowledgeableConditionType_Acknowledge,
                   *ack_args(ev.EventId, "crew informed"))
        assert city.state("hot") == State.ACK_ACTIVE  # in the engine, not only in the mirror
        assert city.crossing.requests[-1][0] == "ack"
        rows = [r for r in city.journal.query(alarm="hot") if r.event == "ACK"]
        assert len(rows) == 1 and rows[0].user.startswith("opcua:anonymous@127.0.0.1:")  # not its SessionName
        acked = await events.next(ConditionName="hot")
        assert field(acked, "AckedState/Id") is True and acked.ClientUserId == rows[0].user

        # Refused by the engine, in the core: the same status code as in-process.
        city.set("TJ-1", conflict_fault=1)
        await events.next(ConditionName="conflict")
        with pytest.raises(uaerrors.BadInvalidState):  # still active, not acknowledged
            await call(client, city.condition("conflict", "TJ-1"), O.AlarmConditionType_Reset)
        assert city.crossing.requests[-1][0] == "reset"
        assert city.state("conflict", "TJ-1") == State.UNACK_ACTIVE
