// Session churn: `sessions` times (at most `parallel` at once) connect, open a session, create a
// subscription monitoring `items` of the listed variables, wait for their first values, close
// the session and disconnect. Prints one RESULT line.
//
// Argument (JSON): endpoint, nsUri, nodes (file), sessions, parallel, items; optional: userName and
// password (a UserName token, else anonymous), the security of common.js makeClient.
"use strict";
const { AttributeIds, TimestampsToReturn, UserTokenType } = require("node-opcua");
const { args, nowMs, result, readLines, makeClient, namespaceIndex, runMain } = require("./common");

async function once(a, names, state) {
    const client = makeClient(a);
    await client.connect(a.endpoint);
    try {
        const user = a.userName ? { type: UserTokenType.UserName, userName: a.userName, password: a.password } : undefined;
        const session = await client.createSession(user);
        const ns = state.ns ?? (state.ns = await namespaceIndex(session, a.nsUri));
        const sub = await session.createSubscription2({
            requestedPublishingInterval: 100,
            requestedLifetimeCount: 600,
            requestedMaxKeepAliveCount: 10,
            maxNotificationsPerPublish: 0,
            publishingEnabled: true,
            priority: 1,
        });
        const start = (state.offset = (state.offset + a.items) % Math.max(1, names.length - a.items));
        const items = names.slice(start, start + a.items).map((s) => ({ nodeId: `ns=${ns};s=${s}`, attributeId: AttributeIds.Value }));
        let seen = 0;
        const first = new Promise((resolve) => {
            sub.on("raw_notification", (msg) => {
                for (const nd of msg.notificationData || []) seen += nd.monitoredItems ? nd.monitoredItems.length : 0;
                if (seen >= items.length) resolve();
            });
            setTimeout(resolve, 10000);
        });
        await sub.monitorItems(items, { samplingInterval: 0, discardOldest: true, queueSize: 1 }, TimestampsToReturn.Both);
        await first;
        state.values += seen;
        await sub.terminate();
        await session.close();
    } finally {
        await client.disconnect();
    }
}

async function main() {
    const a = args();
    const names = readLines(a.nodes);
    const state = { ns: null, offset: 0, values: 0, done: 0, failed: 0, errors: [] };
    const t0 = nowMs();
    let started = 0;
    const worker = async () => {
        while (started < a.sessions) {
            started += 1;
            try {
                await once(a, names, state);
                state.done += 1;
            } catch (err) {
                state.failed += 1;
                if (state.errors.length < 5) state.errors.push(String(err && err.message ? err.message : err));
            }
        }
    };
    await Promise.all(Array.from({ length: a.parallel || 1 }, worker));
    result({ sessions: state.done, failed: state.failed, values: state.values, seconds: (nowMs() - t0) / 1000, errors: state.errors });
}

runMain(main, "churn");
