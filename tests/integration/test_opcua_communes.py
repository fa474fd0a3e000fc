"""Communes a user does not see (issue 14, ``see_other_communes: false``): real asyncua clients
logged in through the real login, against an HmiServer with its security layer and alarms.

LC-1 is in Talant, LC-2 and TJ-1 in Dijon (tests/alarm_rig.py). dora: Dijon's observer who does
not see the other communes; olga: an observer of every commune; oscar: an operator limited to
Talant who sees the others read-only (test_opcua_authorisation.USERS).
"""

from __future__ import annotations

import contextlib

import pytest
from asyncua import Client, ua

from .helpers import DEADLINE, until
from .test_opcua_alarms import Events
from .test_opcua_authorisation import SecureCity, city, password, session

__all__ = ["city"]  # the fixture, shared with the authorisation tests

pytestmark = pytest.mark.integration

OI = ua.ObjectIds
SC = ua.StatusCodes


def tag(c: SecureCity, device: str, point: str = "temperature") -> ua.NodeId:
    return ua.NodeId(f"{c.device_node(device).Identifier}/{point}", c.ns)


async def browse(client: Client, *nodes: ua.NodeId) -> list[ua.BrowseResult]:
    """Forward hierarchical references of each node, as the client's raw BrowseResults."""
    descs = [
        ua.BrowseDescription(
            NodeId=n,
            BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=ua.NodeId(OI.HierarchicalReferences),
            IncludeSubtypes=True,
            ResultMask=ua.BrowseResultMask.All,
        )
        for n in nodes
    ]
    return await client.uaclient.browse(ua.BrowseParameters(NodesToBrowse=descs))


def organized(start: ua.NodeId, name: str, ns: int) -> ua.BrowsePath:
    """The path from ``start`` to its child ``name`` by Organizes."""
    element = ua.RelativePathElement(
        ReferenceTypeId=ua.NodeId(OI.Organizes), IsInverse=False, TargetName=ua.QualifiedName(name, ns)
    )
    return ua.BrowsePath(StartingNode=start, RelativePath=ua.RelativePath(Elements=[element]))


def names(result: ua.BrowseResult) -> set[str]:
    return {r.BrowseName.Name for r in result.References}


async def read(client: Client, *nodes: ua.NodeId, attr: int = ua.AttributeIds.Value) -> list[int]:
    params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=attr) for n in nodes])
    return [dv.StatusCode.value for dv in await client.uaclient.read(params)]


async def test_a_user_who_does_not_see_other_communes_browses_only_its_own(city: SecureCity) -> None:
    root = ua.NodeId("City", city.ns)
    talant, dijon = ua.NodeId("Talant", city.ns), ua.NodeId("Dijon", city.ns)
    async with (
        session(city.url, "dora") as dora,
        session(city.url, "olga") as olga,
        session(city.url, "oscar") as oscar,
    ):
        [seen] = await browse(dora, root)
        assert seen.StatusCode.is_good() and "Dijon" in names(seen) and "Talant" not in names(seen)
        assert "_types" in names(seen)  # the shared nodes stay
        # Every hidden node answers as a node that does not exist; the own commune's as before.
        hidden = await browse(dora, talant, city.device_node("LC-1"), tag(city, "LC-1"), city.condition("hot"))
        assert [r.StatusCode.value for r in hidden] == [SC.BadNodeIdUnknown] * 4
        [own] = await browse(dora, dijon)
        assert own.StatusCode.is_good() and names(own) == {"lighting", "traffic"}
        for client in (olga, oscar):  # everything, unchanged (oscar: limited to Talant, sees the others)
            [everything] = await browse(client, root)
            assert {"Dijon", "Talant"} <= names(everything)
            [t] = await browse(client, talant)
            assert t.StatusCode.is_good() and names(t) == {"lighting"}
        # TranslateBrowsePaths: no path into a hidden commune.
        paths = [
            organized(root, "Talant", city.ns),
            organized(root, "Dijon", city.ns),
            organized(talant, "lighting", city.ns),
        ]
        hidden_path, own_path, from_hidden = await dora.uaclient.translate_browsepaths_to_nodeids(paths)
        assert hidden_path.StatusCode.value == SC.BadNoMatch and not hidden_path.Targets
        assert own_path.StatusCode.is_good() and own_path.Targets[0].TargetId.Identifier == "Dijon"
        assert from_hidden.StatusCode.value == SC.BadNodeIdUnknown
        found = await olga.uaclient.translate_browsepaths_to_nodeids(paths)
        assert all(r.StatusCode.is_good() for r in found)


async def test_reading_and_subscribing_a_hidden_communes_tag_is_as_if_it_did_not_exist(city: SecureCity) -> None:
    talant, dijon = tag(city, "LC-1"), tag(city, "LC-2")
    async with session(city.url, "dora") as dora, session(city.url, "oscar") as oscar:
        assert await read(dora, talant, dijon) == [SC.BadNodeIdUnknown, SC.Good]
        # Any attribute, any node of the commune (its folder, a device, a condition).
        assert (
            await read(
                dora, talant, ua.NodeId("Talant", city.ns), city.device_node("LC-1"), attr=ua.AttributeIds.DisplayName
            )
            == [SC.BadNodeIdUnknown] * 3
        )
        assert await read(dora, city.condition("hot"), attr=ua.AttributeIds.BrowseName) == [SC.BadNodeIdUnknown]
        assert await read(oscar, talant, dijon) == [SC.Good, SC.Good]
        for client, expected in ((dora, [SC.BadNodeIdUnknown, SC.Good]), (oscar, [SC.Good, SC.Good])):
            sub = await client.create_subscription(50, Events())
            items = [
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=ua.MonitoringParameters(ClientHandle=k, SamplingInterval=0, QueueSize=1),
                )
                for k, n in enumerate((talant, dijon))
            ]
            results = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=sub.subscription_id,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ItemsToCreate=items,
                )
            )
            assert [r.StatusCode.value for r in results] == expected
            assert results[1].MonitoredItemId != 0
            await sub.delete()


@contextlib.asynccontextmanager
async def user_events(url: str, user: str):
    """A client logged in as ``user`` with an alarm event subscription on the Server object."""
    client = Client(url, timeout=10)
    client.set_user(user)
    client.set_password(password(user))
    async with client:
        handler = Events()
        sub = await client.create_subscription(50, handler)
        handler.mid = await sub.subscribe_alarms_and_conditions(client.get_node(ua.NodeId(OI.Server)))
        yield client, handler, sub


async def test_a_hidden_communes_alarm_events_are_not_delivered(city: SecureCity) -> None:
    async with (
        user_events(city.url, "dora") as (dora, dora_events, dora_sub),
        user_events(city.url, "olga") as (
            _,
            olga_events,
            _,
        ),
    ):
        city.set("LC-1", temperature=70)  # Talant's
        city.set("LC-2", temperature=70)  # Dijon's: the marker after it
        before, own = await dora_events.upto(ConditionName="hot", SourceName="LC-2")
        assert [(e.ConditionName, e.SourceName) for e in before if e.SourceName == "LC-1"] == []
        assert own.SourceNode == city.device_node("LC-2")
        before, _ = await olga_events.upto(ConditionName="hot", SourceName="LC-2")
        assert ("hot", "LC-1") in [(e.ConditionName, e.SourceName) for e in before]
        # ConditionRefresh: the retained conditions of the communes dora sees only.
        conditions = city.hmi.conditions
        assert conditions is not None
        await until(lambda: len(conditions._retained) >= 2, timeout=DEADLINE, what="both conditions retained")
        await dora.get_node(ua.NodeId(OI.ConditionType)).call_method(
            ua.NodeId(OI.ConditionType_ConditionRefresh), ua.Variant(dora_sub.subscription_id, ua.VariantType.UInt32)
        )
        got = await dora_events.refresh()
        assert [(e.ConditionName, e.SourceName) for e in got[1:-1]] == [("hot", "LC-2")]
