// One HMI client: monitor a list of variables, count the notifications received in a window and
// the field-change-to-client latency of each (the value is the server's CLOCK_MONOTONIC in ms
// at the change). Prints one RESULT line.
//
// Argument (JSON): endpoint, nsUri, nodes (file: one NodeId string identifier a line), seconds,
// publishingInterval (ms), queueSize, samplingInterval (ms), perCall (items per
// CreateMonitoredItems), initialTimeout (s), latFile (optional: every latency, float64 ms, sorted),
// settleSeconds (optional: seconds between the start signal and the measured window, counted
// apart: a server still catching up after every client's setup), seriesFile (optional: every
// notification of the client's life as float64 pairs (arrival, latency) in ms, arrival from the
// start signal, negative before it: where in time a tail comes from).
"use strict";
const { AttributeIds, TimestampsToReturn } = require("node-opcua");
const { args, nowMs, result, readLines, makeClient, namespaceIndex, percentile, runMain } = require("./common");

async function main() {
    const a = args();
    const names = readLines(a.nodes);
    const client = makeClient(a);
    await client.connect(a.endpoint);
    const session = await client.createSession();
    const ns = await namespaceIndex(session, a.nsUri);
    const sub = await session.createSubscription2({
        requestedPublishingInterval: a.publishingInterval || 50,
        requestedLifetimeCount: 6000,
        requestedMaxKeepAliveCount: 20,
        maxNotificationsPerPublish: 0,
        publishingEnabled: true,
        priority: 10,
    });
    let counting = false;
    let settling = false; // between the start signal and the window
    let count = 0;
    let settled = 0;
    let initial = 0;
    let messages = 0;
    let lat = new Float64Array(1 << 20);
    let nLat = 0;
    let series = a.seriesFile ? new Float64Array(1 << 21) : null;
    let nSeries = 0;
    let go = 0; // the start signal (nowMs), 0 until it comes
    sub.on("raw_notification", (msg) => {
        const t = nowMs();
        for (const nd of msg.notificationData || []) {
            const items = nd && nd.monitoredItems;
            if (!items) continue;
            if (series) {
                for (const it of items) {
                    const v = it.value && it.value.value ? it.value.value.value : null;
                    if (typeof v !== "number") continue;
                    if (nSeries + 2 > series.length) {
                        const bigger = new Float64Array(series.length * 2);
                        bigger.set(series);
                        series = bigger;
                    }
                    series[nSeries++] = go ? t - go : t;
                    series[nSeries++] = t - v;
                }
            }
            if (settling) {
                settled += items.length;
                continue;
            }
            if (!counting) {
                initial += items.length;
                continue;
            }
            count += items.length;
            messages += 1;
            for (const it of items) {
                const v = it.value && it.value.value ? it.value.value.value : null;
                if (typeof v !== "number") continue;
                if (nLat === lat.length) {
                    const bigger = new Float64Array(lat.length * 2);
                    bigger.set(lat);
                    lat = bigger;
                }
                lat[nLat++] = t - v;
            }
        }
    });
    const perCall = a.perCall || 1000;
    const parameters = { samplingInterval: a.samplingInterval ?? 0, discardOldest: true, queueSize: a.queueSize || 1 };
    let accepted = 0;
    let revised = null;
    const t0 = nowMs();
    for (let i = 0; i < names.length; i += perCall) {
        const items = names.slice(i, i + perCall).map((s) => ({ nodeId: `ns=${ns};s=${s}`, attributeId: AttributeIds.Value }));
        const group = await sub.monitorItems(items, parameters, TimestampsToReturn.Both);
        accepted += group.monitoredItems.filter((m) => m.statusCode.isGood()).length;
        if (revised === null && group.monitoredItems.length) {
            const r = group.monitoredItems[0].result;
            revised = r ? { samplingInterval: r.revisedSamplingInterval, queueSize: r.revisedQueueSize } : {};
        }
    }
    const subscribeS = (nowMs() - t0) / 1000;
    // The initial values first (one per item), then the measured window.
    const deadline = nowMs() + 1000 * (a.initialTimeout || 60);
    while (initial < accepted && nowMs() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
    }
    const initialS = (nowMs() - t0) / 1000;
    process.stdout.write("READY\n"); // the bench may act now (stop this process, start the window)
    // With several clients, the window starts when the bench says so (goFile appears), once
    // every client has its initial values: one client's setup is not measured in another's window.
    if (a.goFile) {
        const fs = require("fs");
        const goDeadline = nowMs() + 1000 * (a.initialTimeout || 60);
        while (!fs.existsSync(a.goFile) && nowMs() < goDeadline) await new Promise((r) => setTimeout(r, 10));
    }
    go = nowMs();
    if (series) {
        for (let i = 0; i < nSeries; i += 2) series[i] -= go; // the setup's arrivals: before the signal
    }
    if (a.settleSeconds) {
        settling = true;
        await new Promise((r) => setTimeout(r, 1000 * a.settleSeconds));
        settling = false;
    }
    counting = true;
    const w0 = nowMs();
    await new Promise((r) => setTimeout(r, 1000 * a.seconds));
    counting = false;
    const window = (nowMs() - w0) / 1000;
    const sorted = lat.subarray(0, nLat).sort();
    if (series) require("fs").writeFileSync(a.seriesFile, Buffer.from(series.buffer, 0, 8 * nSeries));
    if (a.latFile) require("fs").writeFileSync(a.latFile, Buffer.from(sorted.buffer, sorted.byteOffset, 8 * nLat));
    result({
        items: names.length,
        accepted,
        revised,
        publishing_interval: sub.publishingInterval,
        initial,
        settled,
        settle_s: a.settleSeconds || 0,
        subscribe_s: subscribeS,
        initial_s: initialS,
        notifications: count,
        messages,
        seconds: window,
        rate: count / window,
        p50_ms: percentile(sorted, 50),
        p99_ms: percentile(sorted, 99),
        max_ms: nLat ? sorted[nLat - 1] : null,
        latencies: nLat,
    });
    await sub.terminate();
    await session.close();
    await client.disconnect();
}

runMain(main, "client");
