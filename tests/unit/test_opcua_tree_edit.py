"""Devices added to and removed from the OPC UA tag tree of an (unstarted) asyncua server, as a
configuration reload does it (scada/opcua/address_space.py TreeEditor)."""

from __future__ import annotations

from asyncua import Server, ua

from scada.config import DIAG_POINTS
from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder, TreeEditor
from scada.opcua.asyncua_private.nodes import address_space
from scada.opcua.publisher import TagValue

from .test_alarm_engine import DEVICES
from .test_reload import LC3, config_in

A = ua.AttributeIds
VERB = ua.ModelChangeStructureVerbMask


async def tree(config):
    server = Server()
    await server.init()
    ns = await server.register_namespace(NAMESPACE_URI)
    AddressSpaceBuilder(server, ns).build(config)
    return server, ns, address_space(server)


def children(aspace, path: str, ns: int) -> set[str]:
    return {r.NodeId.Identifier for r in aspace[ua.NodeId(path, ns)].references
            if r.IsForward and r.NodeId.NamespaceIndex == ns and r.ReferenceTypeId != ua.NodeId(ua.ObjectIds.HasProperty)}


async def test_removing_the_last_device_of_a_commune_removes_its_nodes_folders_and_references(tmp_path):
    config = config_in(tmp_path / "a")
    server, ns, aspace = await tree(config)
    lc1 = config.device("LC-1")  # the only device of Talant
    power = aspace[ua.NodeId("Talant/lighting/LC-1/power", ns)]
    calls = []

    async def callback(handle, dv):
        calls.append((handle, dv.StatusCode.value))
    handle = aspace.add_datachange_callback(power.nodeid, A.Value, callback)[1]
    changes = await TreeEditor(server, ns).remove_device(config, lc1)
    assert changes == [(ua.NodeId("Talant/lighting/LC-1", ns), ua.NodeId(ua.ObjectIds.BaseObjectType), VERB.NodeDeleted),
                       (ua.NodeId("Talant/lighting", ns), ua.NodeId(ua.ObjectIds.FolderType), VERB.NodeDeleted),
                       (ua.NodeId("Talant", ns), ua.NodeId(ua.ObjectIds.FolderType), VERB.NodeDeleted)]
    gone = [n for n in aspace.keys() if isinstance(n.Identifier, str) and n.Identifier.startswith("Talant")]
    assert gone == []
    assert "Talant" not in children(aspace, "City", ns)
    # The watcher of a removed tag is told, then unregistered.
    assert calls == [(handle, ua.StatusCodes.BadNodeIdUnknown)]
    assert not power.attributes[A.Value].datachange_callbacks
    # The shared EngineeringUnits/EURange nodes of the type stay for LC-2.
    assert ua.NodeId("_types/lighting_cabinet/power/EngineeringUnits", ns) in aspace
    # Dijon keeps its other device; its class folder loses only a reference.
    lc2_tj = await TreeEditor(server, ns).remove_device(config, config.device("TJ-1"))
    assert (ua.NodeId("Dijon", ns), ua.NodeId(ua.ObjectIds.FolderType), VERB.ReferenceDeleted) in lc2_tj
    assert children(aspace, "Dijon", ns) == {"Dijon/lighting"}


async def test_an_added_device_gets_its_points_diagnostics_and_shared_properties(tmp_path):
    old = config_in(tmp_path / "a")
    server, ns, aspace = await tree(old)
    new = config_in(tmp_path / "b", DEVICES.replace("devices:\n", "devices:\n" + LC3))
    changes = TreeEditor(server, ns).add_devices(new, [new.device("LC-3")])
    assert (ua.NodeId("Dijon/lighting/LC-3", ns), ua.NodeId(ua.ObjectIds.BaseObjectType), VERB.NodeAdded) in changes
    assert "Dijon/lighting/LC-3" in children(aspace, "Dijon/lighting", ns)
    t = new.types["lighting_cabinet"]
    for p in t.points:
        nd = aspace[ua.NodeId(f"Dijon/lighting/LC-3/{p.name}", ns)]
        assert isinstance(nd.attributes[A.Value], TagValue)
    for p in DIAG_POINTS:
        assert ua.NodeId(f"Dijon/lighting/LC-3/Diagnostics/{p.name}", ns) in aspace
    power = aspace[ua.NodeId("Dijon/lighting/LC-3/power", ns)]
    props = {r.NodeId.Identifier for r in power.references if r.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty)}
    assert props == {"_types/lighting_cabinet/power/EngineeringUnits", "_types/lighting_cabinet/power/EURange"}
    # Every tag of the new table has its node: the publisher binds them by name.
    names = new.tag_table()[0]
    assert all(ua.NodeId(n, ns) in aspace for n in names)
