"""Starting the three servers of the bench on a free loopback port, the same workload each: ours
(``bench.front.ours``: the real Application), the stock asyncua peer and the node-opcua peer;
and reading our server's status lines (its event loop's lag, with and without clients)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.front.procs import Served, ensure_node, node_cmd
from bench.harness import free_port

OURS, ASYNCUA, NODE = "ours", "asyncua", "node-opcua"


@dataclass
class Workload:
    """What a server serves and changes: ``config`` (our configuration folder), ``names`` (the tag
    paths a peer builds: the same tree shape), ``changing`` (the paths the field changes), ``rate``
    changes per tag per second in ticks of ``tick_ms``."""

    config: Path
    names: Path
    changing: Path | None
    rate: float
    tick_ms: float = 10.0


@dataclass
class Options:
    """How ours runs: ``front`` (Application(front=...), None: its default), the event loop."""

    front: str | None = None
    event_loop: str = "uvloop"


def start(kind: str, w: Workload, work: Path, opts: Options, timeout: float = 600.0) -> tuple[Served, str]:
    """Start server ``kind`` on ``w``; wait until it serves. Returns it and its endpoint URL."""
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/scada/"
    log = work / f"{kind}-{port}.log"
    field = ["--changing", str(w.changing)] if w.changing else []
    field += ["--rate", str(w.rate), "--tick-ms", str(w.tick_ms)]
    if kind == OURS:
        args = ["--config", str(w.config), "--data", str(work / f"data-{port}"), "--endpoint", url, *field]
        args += ["--status-interval", "1", "--log-json", "--event-loop", opts.event_loop]
        if opts.front:
            args += ["--front", opts.front]
        server = Served.python(kind, "bench.front.ours", args, log)
    elif kind == ASYNCUA:
        server = Served.python(
            kind, "bench.front.asyncua_peer", ["--port", str(port), "--names", str(w.names), *field], log
        )
    elif kind == NODE:
        ensure_node()
        arg = {"port": port, "names": str(w.names), "changing": str(w.changing or ""), "rate": w.rate}
        server = Served(kind, node_cmd("server.js", {**arg, "tickMs": w.tick_ms}), log)
    else:
        raise ValueError(f"unknown server {kind!r}: {OURS}, {ASYNCUA} or {NODE}")
    server.wait_listening(timeout)
    return server, url


def status_lines(server: Served) -> list[dict]:
    """Our server's status lines so far (``--log-json``), each with ``t``: its Unix time."""
    out = []
    for ln in server.output().splitlines():
        if '"event": "status"' not in ln:
            continue
        x = json.loads(ln)
        x["t"] = datetime.fromisoformat(x["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append(x)
    return out


def in_window(server: Served, t0: float, t1: float) -> list[dict]:
    """Our server's status lines that cover [t0, t1] (Unix times; each line covers the second
    before it, ``--status-interval 1``)."""
    return [x for x in status_lines(server) if t0 + 1.0 <= x["t"] <= t1 + 0.5]


def loop_lag(lines: list[dict]) -> float:
    """The longest late wake-up of our server's event loop (ms) in these status lines: how much
    the clients delayed the core."""
    return max((x.get("loop_lag_ms", 0.0) for x in lines), default=float("nan"))


def field_rate(lines: list[dict]) -> float:
    """The median changes/s the TagDB took in these status lines: what the field managed to make."""
    rates = sorted(x["changes_per_s"] for x in lines)
    return rates[len(rates) // 2] if rates else float("nan")
