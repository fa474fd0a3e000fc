"""The lean tag tree (scada/opcua/virtual_nodes.py) answers every service as the stored tree did.

``EXPECTED`` was recorded from the previous builder (one asyncua NodeData per variable, commit
a72fcfa) on the alarm rig's configuration, with its alarm conditions and the history marks:
a recursive Browse (both directions, every reference type) from the Objects folder down our
namespace, and a Read of every attribute of every node reached. The lean tree must give the
same answers, in the same order. Regenerate only for an intended change of what clients see:
``python -m tests.unit.test_opcua_lean_tree`` (from the repository root) rewrites the file.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from asyncua import Server, ua

from scada.opcua.address_space import NAMESPACE_URI, AddressSpaceBuilder, TreeEditor, subtree, tag_values
from scada.opcua.alarms import AlarmConditions
from scada.opcua.asyncua_private import address_space
from scada.opcua.history import TagHistory
from scada.opcua.publisher import TagValue
from tests.alarm_rig import AlarmRig, Clock

from .test_alarm_engine import ALARMS

EXPECTED = Path(__file__).with_name("opcua_lean_tree_expected.json.gz")
A = ua.AttributeIds
SC = ua.StatusCodes


async def built(folder: Path):
    """The rig's configuration as HmiServer.start builds it, without listening on a port."""
    rig = AlarmRig(folder, ALARMS, folder / "alarms.sqlite", Clock())
    server = Server()
    await server.init()
    ns = await server.register_namespace(NAMESPACE_URI)
    values = AddressSpaceBuilder(server, ns).build(rig.config)
    conditions = AlarmConditions(server, ns, rig.engine)
    conditions.build()
    TagHistory(server, ns, rig.config, rig.tagdb, None).mark_variables()
    return rig, server, ns, values, conditions


def _text(v) -> str:
    """A value as a client sees it, stable across runs (no object ids)."""
    return repr(v)


def _ref(r: ua.ReferenceDescription) -> list:
    return [
        r.ReferenceTypeId.to_string(),
        r.IsForward,
        r.NodeId.to_string(),
        _text(r.BrowseName),
        _text(r.DisplayName),
        int(r.NodeClass),
        r.TypeDefinition.to_string(),
    ]


async def dump(server: Server, ns: int) -> dict[str, dict]:
    """NodeId -> its references (Browse, both directions) and its attributes (Read, every id)."""
    session = server.iserver.isession
    start = [ua.NodeId(ua.ObjectIds.ObjectsFolder), ua.NodeId(ua.ObjectIds.Server)]
    seen, todo, out = set(start), list(start), {}
    while todo:
        nid = todo.pop(0)
        desc = ua.BrowseDescription(
            NodeId=nid, BrowseDirection=ua.BrowseDirection.Both, ResultMask=ua.BrowseResultMask.All
        )
        [res] = await session.browse(ua.BrowseParameters(NodesToBrowse=[desc]))
        reads = [ua.ReadValueId(NodeId=nid, AttributeId=a) for a in range(1, 28)]
        dvs = await session.read(ua.ReadParameters(NodesToRead=reads))
        out[nid.to_string()] = {
            "refs": [_ref(r) for r in res.References],
            "attrs": [[dv.StatusCode.value if dv.StatusCode else 0, _text(dv.Value)] for dv in dvs],
        }
        for r in res.References:
            if r.IsForward and r.NodeId.NamespaceIndex == ns and r.NodeId not in seen:
                seen.add(r.NodeId)
                todo.append(r.NodeId)
    return out


async def test_every_node_browses_and_reads_as_the_stored_tree_did(tmp_path):
    _, server, ns, _, conditions = await built(tmp_path)
    try:
        got = await dump(server, ns)
    finally:
        conditions.close()
    expected = json.loads(gzip.decompress(EXPECTED.read_bytes()))
    assert sorted(got) == sorted(expected)
    for nid, node in expected.items():
        assert got[nid]["refs"] == node["refs"], nid
        assert got[nid]["attrs"] == node["attrs"], nid


def record() -> None:
    """Write EXPECTED from the current tree (see the module docstring)."""
    import tempfile

    async def main() -> dict:
        with tempfile.TemporaryDirectory() as d:
            _, server, ns, _, conditions = await built(Path(d))
            try:
                return await dump(server, ns)
            finally:
                conditions.close()

    data = json.dumps(asyncio.run(main()), indent=0, sort_keys=True).encode()
    EXPECTED.write_bytes(gzip.compress(data, mtime=0))
    print(f"{EXPECTED}: {len(data):,} bytes of JSON", file=sys.stderr)


if __name__ == "__main__":
    record()
