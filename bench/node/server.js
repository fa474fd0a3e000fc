// The node-opcua peer server: the tag tree of our server (Objects/City/<commune>/<class>/<device>/
// <point>, string NodeIds equal to the tag path, in namespace urn:city-scada:tags), Double
// variables, `changing` of them changed `rate` times a second, spread over ticks of `tickMs`;
// each new value is CLOCK_MONOTONIC in ms at the change (the client computes the latency).
//
// Argument (JSON): port, names (file: every tag path), changing (file: the paths that change),
// rate (changes per tag per second), tickMs. Prints "LISTENING <build s>" when it serves and a
// RESULT line with its tick statistics when it gets SIGTERM.
"use strict";
const { OPCUAServer, DataType, StatusCodes, Variant, DataValue } = require("node-opcua");
const { args, nowMs, readLines } = require("./common");

const NAMESPACE_URI = "urn:city-scada:tags";

async function main() {
    const a = args();
    const t0 = nowMs();
    const big = 1000000;
    const server = new OPCUAServer({
        port: a.port,
        hostname: "127.0.0.1",
        resourcePath: "/scada/",
        allowAnonymous: true,
        maxConnectionsPerEndpoint: 2000,
        serverCapabilities: {
            maxSessions: 2000,
            maxSubscriptions: 4000,
            maxMonitoredItems: 10 * big,
            maxSubscriptionsPerSession: 10,
            maxMonitoredItemsPerSubscription: big,
            maxBrowseContinuationPoints: 100,
            operationLimits: {
                maxNodesPerRead: 100000,
                maxNodesPerBrowse: 100000,
                maxMonitoredItemsPerCall: 100000,
                maxNodesPerRegisterNodes: 100000,
            },
        },
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace(NAMESPACE_URI);
    const root = ns.addFolder(addressSpace.rootFolder.objects, { nodeId: "s=City", browseName: "City" });
    const folders = new Map();
    const folder = (path) => {
        let f = folders.get(path);
        if (f) return f;
        const cut = path.lastIndexOf("/");
        const parent = cut < 0 ? root : folder(path.slice(0, cut));
        f = ns.addObject({ organizedBy: parent, nodeId: `s=${path}/`, browseName: path.slice(cut + 1) });
        folders.set(path, f);
        return f;
    };
    const variables = new Map();
    for (const name of readLines(a.names)) {
        const cut = name.lastIndexOf("/");
        const v = ns.addVariable({
            componentOf: folder(name.slice(0, cut)),
            nodeId: `s=${name}`,
            browseName: name.slice(cut + 1),
            dataType: "Double",
            minimumSamplingInterval: 0,
            value: new Variant({ dataType: DataType.Double, value: 0 }),
        });
        variables.set(name, v);
    }
    const changing = a.changing ? readLines(a.changing).map((n) => variables.get(n)) : [];
    await server.start();
    process.stdout.write(`LISTENING ${((nowMs() - t0) / 1000).toFixed(3)}\n`);

    // Each tick changes the next slice of the changing variables: every one `rate` times a second.
    const perTick = Math.max(1, Math.round((changing.length * a.rate * a.tickMs) / 1000));
    let next = 0;
    let ticks = 0;
    let changes = 0;
    let late = 0;
    const tickMs = a.tickMs || 10;
    let due = nowMs();
    const tick = () => {
        const now = nowMs();
        if (now - due > tickMs) {
            // behind: go on from now rather than bursting to catch up (bench/front/field.py's rule)
            late += 1;
            due = now;
        }
        for (let k = 0; k < perTick && changing.length; k++) {
            const v = changing[next];
            next = (next + 1) % changing.length;
            v.setValueFromSource({ dataType: DataType.Double, value: nowMs() }, StatusCodes.Good, new Date());
            changes += 1;
        }
        ticks += 1;
        due += tickMs;
        setTimeout(tick, Math.max(0, due - nowMs()));
    };
    if (changing.length && a.rate > 0) setTimeout(tick, tickMs);
    const stop = async () => {
        process.stdout.write(`RESULT ${JSON.stringify({ ticks, changes, late_ticks: late })}\n`);
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    process.stderr.write(`server failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
