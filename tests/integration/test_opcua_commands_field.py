"""Commands refused or failed by the field, end to end through an OPC UA client (issue 15, "How
it is checked"): the tiny simulated city in its own process (Modbus cabinets, MQTT bollards on a
real Mosquitto), the real ``scada run`` over it (its front, the core's pipeline, the drivers),
asyncua clients logged in as users of the users file (tests/integration/opcua_commands_rig.py).

* ``Raise`` while a vehicle is on the bollard's loop: the call's status is the interlock's and
  its result names it, the bollard does not move (the simulator's own state, on the broker, and
  the tag), the attempt is in the audit trail the server writes with its outcome.
* A command to a cabinet that does not answer: ``BadTimeout`` (sent, never answered: whether it
  was applied is unknown), its tags as the cabinet last said; a cabinet the driver already knows
  silent is not in communication (``BadNoCommunication``) and its tags are Bad.
* The user's rate through the HMI (the device's: test_opcua_commands.py).

Each test commands its own devices of the one city (faults are per device).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from asyncua import Client, ua

from scada.opcua.address_space import NAMESPACE_URI

from .helpers import DEADLINE, Mosquitto, fault, start_tiny_city, until, until_read, wait_port
from .opcua_commands_rig import audited, inputs_for, online, scada_server, session

pytestmark = pytest.mark.integration

SC = ua.StatusCodes
BOLLARD = "Dijon/bollard/B-DIJ-001"
RAISE, LOWER = "_types/access_bollard/_commands/Raise", "_types/access_bollard/_commands/Lower"
SET_DIM = "_types/lighting_cabinet/_commands/SetDimLevel"
# A cabinet its driver waits long for (its answer timeout, tags.yaml's ``timeout``): after it falls
# silent, the driver calls it so only that long after its first unanswered request, so a command
# sent at once (well within that time) goes out while the device still counts as in communication
# and is the command to a device that does not answer; the other cabinets keep their type's.
QUIET, QUIET_TIMEOUT = "LC-DIJ-004", 10.0
SILENT = "LC-DIJ-003"  # polled as usual: the driver sees its silence


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """The tiny city (bollards on a real Mosquitto, vehicles arriving only when told), ``scada
    run`` over it; yields (city, broker, endpoint, data folder)."""
    assert shutil.which("mosquitto_sub"), "mosquitto_sub is missing: `make test` installs mosquitto-clients"
    folder = tmp_path_factory.mktemp("field")
    broker = Mosquitto(folder / "mqtt")
    city = start_tiny_city(folder, mqtt=f"127.0.0.1:{broker.port}")
    try:
        wait_port(city.control, proc=city.sim)
        patient_with(city.config / "inventory" / "lighting-cabinets.csv", QUIET)
        with scada_server(folder, city.config, port=city.opc_scada) as (endpoint, data):
            yield city, broker, endpoint, data
    finally:
        city.sim.stop()
        broker.stop()


def patient_with(inventory: Path, name: str) -> None:
    """Cabinet ``name`` of the simulator's inventory given QUIET_TIMEOUT to answer (the others as their type says)."""
    with inventory.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert name in [r["name"] for r in rows], rows
    with inventory.open("w", newline="") as f:
        w = csv.DictWriter(f, [*rows[0], "timeout"])
        w.writeheader()
        w.writerows({**r, "timeout": QUIET_TIMEOUT if r["name"] == name else ""} for r in rows)


async def call(client: Client, ns: int, device: str, method: str, *inputs: ua.Variant) -> ua.CallMethodResult:
    """One Call, its whole result (a refused call's Result output argument too)."""
    [res] = await client.uaclient.call(
        [
            ua.CallMethodRequest(
                ObjectId=ua.NodeId(device, ns), MethodId=ua.NodeId(method, ns), InputArguments=list(inputs)
            )
        ]
    )
    return res


def result_text(res: ua.CallMethodResult) -> str:
    [out] = res.OutputArguments
    return out.Value


def retained_state(broker: Mosquitto, bollard: str) -> dict:
    """The bollard's state as the simulator last published it, retained by the broker (read by
    mosquitto_sub, an independent client)."""
    got = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"city/bollards/{bollard}/state"]
        + ["-C", "1", "-W", str(int(DEADLINE))],
        capture_output=True,
        text=True,
        timeout=DEADLINE + 30,
        check=True,
    )
    return json.loads(got.stdout)


async def test_raise_with_a_vehicle_on_the_loop_is_refused_by_the_interlock_and_audited(field):
    city, broker, endpoint, data = field
    name = BOLLARD.rsplit("/", 1)[1]
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, BOLLARD)
        res = await call(otto, ns, BOLLARD, LOWER)
        assert res.StatusCode.is_good(), (res.StatusCode, res.OutputArguments)
        position = otto.get_node(ua.NodeId(f"{BOLLARD}/position", ns))
        vehicle = otto.get_node(ua.NodeId(f"{BOLLARD}/vehicle", ns))
        assert await position.read_value() == 0  # down, confirmed before the call returned
        fault(city.control, "vehicle_arrival", name, "vehicle_class=unauthorised")
        await until_read(vehicle.read_value, lambda v: v is True, DEADLINE, "the vehicle on the loop seen")
        # Raise while it is there (it stays 8 s on the loop): refused before anything is sent.
        res = await call(otto, ns, BOLLARD, RAISE)
        assert res.StatusCode.value == SC.BadInvalidState, res.StatusCode
        assert result_text(res).startswith("interlock no_vehicle: a vehicle is on the bollard's loop"), res
        # Had it been sent, the call would have returned once the bollard was up (or refused by
        # the bollard): the simulator's own state and the tag say it stayed down.
        assert retained_state(broker, name)["position"] == "down"
        dv = await position.read_data_value()
        assert dv.StatusCode.is_good() and dv.Value.Value == 0
        last = otto.get_node(ua.NodeId(f"{BOLLARD}/Control/last_result", ns))
        await until_read(
            last.read_value, lambda v: v.startswith("BadInvalidState"), DEADLINE, "the HMI sees the refusal"
        )
    await until(
        lambda: audited(data, action="command", user="otto", target=name, result="BadInvalidState"),
        what="the refused Raise audited",
    )
    [rec] = audited(data, action="command", user="otto", target=name, result="BadInvalidState")
    arguments = json.loads(rec.arguments)
    assert (arguments["command"], arguments["interlock"]) == ("Raise", "no_vehicle"), rec.arguments
    assert [r.result for r in audited(data, action="command", user="otto", target=name)] == ["Good", "BadInvalidState"]


async def test_a_command_to_a_cabinet_that_does_not_answer_ends_in_bad_timeout_its_tag_bad_as_it_says(field):
    """The cabinet stops answering and a command goes to it at once, before its driver has called
    it silent: the write goes out and gets no answer. BadTimeout, not BadNoCommunication (that is
    for a device known not to answer, refused before anything is sent): the write went out and
    the cabinet may have applied it. Its tag turns Bad, its last value kept, never the commanded
    one: the cabinet's silence is all it says (its polls go unanswered too)."""
    city, broker, endpoint, data = field
    dev = f"Dijon/lighting/{QUIET}"
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, dev)
        dim = otto.get_node(ua.NodeId(f"{dev}/dim_level", ns))
        before = (await dim.read_data_value()).Value.Value
        level = 20.0 if before != 20 else 30.0
        inputs = await inputs_for(otto, ns, SET_DIM, level=level)
        fault(city.control, "device_silent", QUIET)
        try:
            res = await call(otto, ns, dev, SET_DIM, *inputs)
            assert res.StatusCode.value == SC.BadTimeout, (res.StatusCode, res.OutputArguments)
            assert "no answer to the write" in result_text(res), res
            after = await until_read(
                lambda: dim.read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.value == SC.BadCommunicationError,
                DEADLINE,
                "dim_level turns Bad (its polls unanswered)",
            )
            assert after.Value.Value == before != level
            last = otto.get_node(ua.NodeId(f"{dev}/Control/last_result", ns))
            await until_read(last.read_value, lambda v: v.startswith("BadTimeout"), DEADLINE, "the HMI sees it")
        finally:
            fault(city.control, "device_answer", QUIET)
    await until(
        lambda: audited(data, action="command", user="otto", target=QUIET, result="BadTimeout"),
        what="the command audited with its outcome",
    )


async def test_a_cabinet_known_silent_is_not_in_communication_and_its_tag_turns_bad_with_its_last_value(field):
    city, broker, endpoint, data = field
    dev = f"Dijon/lighting/{SILENT}"
    async with session(endpoint, "otto") as otto:
        ns = await otto.get_namespace_index(NAMESPACE_URI)
        await online(otto, ns, dev)
        dim = otto.get_node(ua.NodeId(f"{dev}/dim_level", ns))
        before = (await dim.read_data_value()).Value.Value
        fault(city.control, "device_silent", SILENT)
        try:
            # Its polls go unanswered: the driver marks its tags Bad (the link it had is lost),
            # the last value kept.
            await until_read(
                lambda: dim.read_data_value(raise_on_bad_status=False),
                lambda d: d.StatusCode.value == SC.BadCommunicationError,
                DEADLINE,
                "dim_level turns Bad",
            )
            res = await call(otto, ns, dev, SET_DIM, *await inputs_for(otto, ns, SET_DIM, level=15.0))
            assert res.StatusCode.value == SC.BadNoCommunication, (res.StatusCode, res.OutputArguments)
            assert "not in communication" in result_text(res), res
            after = await dim.read_data_value(raise_on_bad_status=False)
            assert after.StatusCode.value == SC.BadCommunicationError and after.Value.Value == before
        finally:
            fault(city.control, "device_answer", SILENT)
    await until(
        lambda: audited(data, action="command", user="otto", target=SILENT, result="BadNoCommunication"),
        what="the refusal audited",
    )


async def test_a_user_s_rate_holds_even_for_calls_refused_later_in_the_pipeline(field):
    """A stuck HMI (erin: an Engineer no other test here uses) sends one Call of 20 commands at
    once, each out of range: the user's rate (10 at once, then 1 a second) counts every attempt
    from its step on, so beyond the burst they are BadTooManyOperations, not even checked; none
    reaches the field (out of range: nothing is written)."""
    city, broker, endpoint, data = field
    dev = "Dijon/lighting/LC-DIJ-001"
    async with session(endpoint, "erin") as erin:
        ns = await erin.get_namespace_index(NAMESPACE_URI)
        await online(erin, ns, dev)
        dim = erin.get_node(ua.NodeId(f"{dev}/dim_level", ns))
        before = await dim.read_value()
        request = ua.CallMethodRequest(
            ObjectId=ua.NodeId(dev, ns),
            MethodId=ua.NodeId(SET_DIM, ns),
            InputArguments=await inputs_for(erin, ns, SET_DIM, level=500.0),
        )
        codes = [r.StatusCode.value for r in await erin.uaclient.call([request] * 20)]
        assert set(codes) == {SC.BadOutOfRange, SC.BadTooManyOperations}, codes
        assert codes.count(SC.BadOutOfRange) >= 10, codes  # the burst
        assert await dim.read_value() == before
    await until(
        lambda: len(audited(data, action="command", user="erin")) == len(codes),
        what="every attempt audited",
    )
    results = [r.result for r in audited(data, action="command", user="erin")]
    assert sorted(results) == sorted(ua.StatusCode(c).name for c in codes), results
