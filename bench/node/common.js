// What the bench's node-opcua scripts share: their one JSON argument, the clock, connecting,
// finding our namespace index, the one JSON line of results.
"use strict";
const fs = require("fs");
const {
    OPCUAClient,
    MessageSecurityMode,
    SecurityPolicy,
    AttributeIds,
} = require("node-opcua");

// Every script takes one JSON object as its only argument (written by bench/front/node.py).
function args() {
    return JSON.parse(process.argv[2] || "{}");
}

// Milliseconds of CLOCK_MONOTONIC: libuv's hrtime is the clock Python's time.monotonic() reads,
// so a value stamped by a server process on this machine can be compared here.
function nowMs() {
    return Number(process.hrtime.bigint()) / 1e6;
}

// One line of results, the only thing the bench reads on stdout.
function result(obj) {
    process.stdout.write("RESULT " + JSON.stringify(obj) + "\n");
}

function readLines(path) {
    return fs.readFileSync(path, "utf8").split("\n").filter((s) => s.length > 0);
}

// A client sized for tens of thousands of items per request: unsecured, unless the script's
// argument `a` names a securityMode and securityPolicy (with the client's certificateFile,
// privateKeyFile and the applicationUri of its certificate: bench/bench_security.py).
function makeClient(a = {}) {
    const secure = a.securityMode && a.securityMode !== "None";
    return OPCUAClient.create({
        applicationName: "scada-bench",
        endpointMustExist: false,
        securityMode: secure ? MessageSecurityMode[a.securityMode] : MessageSecurityMode.None,
        securityPolicy: secure ? SecurityPolicy[a.securityPolicy] : SecurityPolicy.None,
        ...(secure
            ? { certificateFile: a.certificateFile, privateKeyFile: a.privateKeyFile, applicationUri: a.applicationUri }
            : {}),
        requestedSessionTimeout: 600000,
        keepSessionAlive: true,
        connectionStrategy: { maxRetry: 5, initialDelay: 200, maxDelay: 2000 },
        defaultSecureTokenLifetime: 3600000,
        transportSettings: { maxMessageSize: 256 * 1024 * 1024, maxChunkCount: 20000 },
    });
}

// The index of namespace `uri` in the server's NamespaceArray (ns=2 on asyncua, ns=1 on node-opcua).
async function namespaceIndex(session, uri) {
    const dv = await session.read({ nodeId: "ns=0;i=2255", attributeId: AttributeIds.Value });
    const index = dv.value.value.indexOf(uri);
    if (index < 0) {
        throw new Error(`namespace ${uri} is not served (${dv.value.value.join(", ")})`);
    }
    return index;
}

// The p-th percentile (0..100) of a sorted Float64Array.
function percentile(sorted, p) {
    if (sorted.length === 0) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// Run a script's async main: exit 0 when it is done, 1 with the error on stderr when it fails.
function runMain(main, what) {
    main().then(
        () => process.exit(0),
        (err) => {
            process.stderr.write(`${what} failed: ${err && err.stack ? err.stack : err}\n`);
            process.exit(1);
        },
    );
}

module.exports = { args, nowMs, result, readLines, makeClient, namespaceIndex, percentile, runMain };
