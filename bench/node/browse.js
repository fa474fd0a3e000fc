// Browse the whole tree under Objects/City with `batch` nodes per Browse request (and
// BrowseNext for continuation points), then Read the Value of every tag variable (the NodeIds of
// the `nodes` file; without it, every variable found) with `batch` nodes per Read request.
// Prints one RESULT line: nodes, requests, seconds of each phase.
//
// Argument (JSON): endpoint, nsUri, batch, nodes (optional file: one tag path a line).
"use strict";
const { AttributeIds, BrowseDirection, NodeClassMask, resolveNodeId, NodeClass } = require("node-opcua");
const { args, nowMs, result, readLines, makeClient, namespaceIndex, runMain } = require("./common");

async function main() {
    const a = args();
    const batch = a.batch || 1000;
    const client = makeClient();
    await client.connect(a.endpoint);
    const session = await client.createSession();
    const ns = await namespaceIndex(session, a.nsUri);
    let frontier = [resolveNodeId(`ns=${ns};s=City`)];
    const variables = [];
    let nodes = 0;
    let browseRequests = 0;
    const t0 = nowMs();
    while (frontier.length) {
        const next = [];
        for (let i = 0; i < frontier.length; i += batch) {
            const chunk = frontier.slice(i, i + batch).map((nodeId) => ({
                nodeId,
                browseDirection: BrowseDirection.Forward,
                referenceTypeId: "HierarchicalReferences",
                includeSubtypes: true,
                nodeClassMask: NodeClassMask.Object | NodeClassMask.Variable,
                resultMask: 63,
            }));
            let results = await session.browse(chunk);
            browseRequests += 1;
            for (;;) {
                const cps = [];
                for (const r of results) {
                    for (const ref of r.references || []) {
                        if (ref.nodeId.namespace !== ns) continue; // standard nodes: not the tree
                        nodes += 1;
                        next.push(ref.nodeId);
                        if (ref.nodeClass === NodeClass.Variable) variables.push(ref.nodeId);
                    }
                    if (r.continuationPoint && r.continuationPoint.length) cps.push(r.continuationPoint);
                }
                if (!cps.length) break;
                results = await session.browseNext(cps, false);
                browseRequests += 1;
            }
        }
        frontier = next;
    }
    const browseS = (nowMs() - t0) / 1000;
    const toRead = a.nodes ? readLines(a.nodes).map((s) => resolveNodeId(`ns=${ns};s=${s}`)) : variables;
    const t1 = nowMs();
    let readRequests = 0;
    let good = 0;
    for (let i = 0; i < toRead.length; i += batch) {
        const dvs = await session.read(toRead.slice(i, i + batch).map((nodeId) => ({ nodeId, attributeId: AttributeIds.Value })));
        readRequests += 1;
        for (const dv of dvs) if (!dv.statusCode.isBad()) good += 1;
    }
    const readS = (nowMs() - t1) / 1000;
    result({
        nodes,
        variables: variables.length,
        browse_requests: browseRequests,
        browse_s: browseS,
        browse_rate: nodes / browseS,
        read_requests: readRequests,
        read_values: toRead.length,
        read_good: good,
        read_s: readS,
        read_rate: toRead.length / readS,
    });
    await session.close();
    await client.disconnect();
}

runMain(main, "browse");
