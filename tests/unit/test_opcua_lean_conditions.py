"""The condition nodes are made on access (scada/opcua/conditions/space.py): nothing stored per
condition, the same answers as the stored nodes (the golden tree, test_opcua_lean_tree.py), and
state put on them server-side kept."""

from __future__ import annotations

import numpy as np
from asyncua import ua

from scada.alarms.states import State
from scada.opcua.asyncua_private.nodes import AttributeValue
from scada.opcua.conditions.events import retained, retained_mask

from .test_opcua_lean_tree import DEVICE, closed

A = ua.AttributeIds
COND = f"{DEVICE}/Alarms/lamps_failed"


async def test_condition_nodes_are_not_stored_and_are_found_by_every_lookup(tmp_path):
    rig, server, ns, _, conditions, aspace = await closed(tmp_path)
    table = aspace._nodes
    folder, cond, shelving = (ua.NodeId(x, ns) for x in (f"{DEVICE}/Alarms", COND, f"{COND}/ShelvingState"))
    for nid in (folder, cond, shelving):
        assert nid not in table.stored and nid in aspace and aspace.get(nid) is not None, nid
    i = rig.engine.instance("lamps_failed", "LC-1")
    assert conditions.condition_id("lamps_failed", "LC-1") == cond == conditions._cond_ids[i]
    assert list(conditions._cond_ids)[i] == cond and len(conditions._cond_ids) == rig.engine.n
    # Method calls name the condition or its ShelvingState as ObjectId.
    assert conditions._instance(cond) == i and conditions._instance(shelving) == i
    unknown = [
        ua.NodeId(f"{DEVICE}/Alarms/no_such_alarm", ns),
        ua.NodeId(f"{DEVICE}/Alarms/lamps_failed/ShelvingState/x", ns),
        ua.NodeId("Nowhere/lighting/LC-1/Alarms/lamps_failed", ns),
        ua.NodeId(COND, ns + 1),
        ua.NodeId(f"{DEVICE}/Alarms/ShelvingState", ns),
    ]
    for nid in unknown:
        assert nid not in aspace and aspace.get(nid) is None and conditions._instance(nid) is None, nid
    # Every node of the table is listed by iteration, the conditions' too.
    listed = set(iter(table))
    assert {folder, cond, shelving} <= listed and len(listed) == len(table)


async def test_a_condition_node_edited_on_the_server_keeps_the_edit(tmp_path):
    _, server, ns, _, conditions, aspace = await closed(tmp_path)
    table = aspace._nodes
    nid = ua.NodeId(COND, ns)
    nd = aspace[nid]
    table.cache.clear()
    assert aspace[nid] is not nd  # made again: nothing kept
    nd = aspace[nid]
    comment = AttributeValue(ua.DataValue(ua.Variant(ua.LocalizedText("kept"), ua.VariantType.LocalizedText)))
    nd.attributes[A.Description] = comment
    extra = ua.ReferenceDescription(ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasComponent), NodeId=ua.NodeId("x", ns))
    table.cache.clear()
    again = aspace[nid]
    assert again is nd and again.attributes[A.Description] is comment
    again.references.append(extra)
    table.cache.clear()
    assert aspace[nid].references[-1] is extra


async def test_dropping_the_conditions_removes_their_nodes_and_the_devices_references(tmp_path):
    _, server, ns, _, conditions, aspace = await closed(tmp_path)
    dev = aspace[ua.NodeId(DEVICE, ns)]
    alarm_refs = [r for r in dev.references if "/Alarms" in str(r.NodeId.Identifier)]
    assert len(alarm_refs) > 1  # the folder, and each condition of the device as event source
    kept = [r for r in dev.references if r not in alarm_refs]
    conditions.space.detach()
    assert list(dev.references) == kept
    for r in alarm_refs:
        assert r.NodeId not in aspace and aspace.get(r.NodeId) is None


async def test_a_device_reference_list_edited_keeps_its_condition_references(tmp_path):
    _, server, ns, _, conditions, aspace = await closed(tmp_path)
    dev = aspace[ua.NodeId(DEVICE, ns)]
    before = list(dev.references)
    extra = ua.ReferenceDescription(ReferenceTypeId=ua.NodeId(ua.ObjectIds.Organizes), NodeId=ua.NodeId("x", ns))
    dev.references.append(extra)
    assert list(dev.references) == [*before, extra]
    # Once stored by an edit, the condition references still go when the conditions are dropped.
    conditions.space.detach()
    assert list(dev.references) == [r for r in [*before, extra] if "/Alarms" not in str(r.NodeId.Identifier)]


def test_the_retained_mask_is_retained_for_every_state():
    states = np.array([s for s in State for _ in (0, 1)], np.int8)
    active = np.array([a for _ in State for a in (False, True)])
    expected = [retained(State(int(s)), bool(a)) for s, a in zip(states, active, strict=True)]
    assert retained_mask(states, active).tolist() == expected
    assert any(expected) and not all(expected)
