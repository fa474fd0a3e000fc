"""The cost of security (issue 14): session activations per second and notifications per second
on a SignAndEncrypt channel against a None one, from the same server in the same run.

    .venv/bin/python bench/bench_security.py                       # ~3 min
    .venv/bin/python bench/bench_security.py --repeats 1 --seconds 4 --sessions 20
    .venv/bin/python bench/bench_security.py --user operator --password-env BENCH_PASSWORD

The server is the real one (``scada.app.Application``, OPC UA front in its own process) with
bench_front's synthetic field (bench/front/field.py) changing ``--items`` analog tags ``--rate``
times a second; its security.yaml offers ``--policy`` with SignAndEncrypt and a None endpoint,
anonymous sessions as Observer, and trusts the bench client's certificate. The clients are
bench_front's node-opcua scripts (bench/node/): ``churn.js`` (connect, open and activate a
session, subscribe ``--churn-items`` items, first values, close: ``--sessions`` times,
``--parallel`` at once) and ``client.js`` (one client monitoring every changing item, counting the
notifications of a ``--seconds`` window). None and SignAndEncrypt alternate (ABBA...) so the
machine's load drifts over both alike; each figure is the median of ``--repeats`` runs.
``--user``: activate the churn sessions with a UserName token (needs the users file of the login
part: ``scada user add``), its password from the environment variable ``--password-env``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.front.field import FieldStats, serve_until_sigterm  # noqa: E402
from bench.front.ours import run_with_field  # noqa: E402
from bench.front.procs import NodeRun, Served, ensure_node  # noqa: E402
from bench.front.workload import NAMESPACE_URI, analog_names, write_city, write_names  # noqa: E402
from bench.harness import fmt_rate, log, med  # noqa: E402

CLIENT_URI = "urn:scada-bench:client"
MODES = ("None", "SignAndEncrypt")


async def serve(args: argparse.Namespace, stats: FieldStats) -> None:
    """The server under bench (``--serve``): the Application with its security settings and the
    synthetic field, until SIGTERM."""
    from city_scada import load_config
    from scada.app import Application
    from scada.front.link import FrontSettings
    from scada.security.settings import load_security

    security = load_security(Path(args.security), Path(args.data))
    config = load_config(Path(args.config))
    settings = FrontSettings(args.endpoint, event_loop=args.event_loop, security=security)
    app = Application(config, args.endpoint, 0, args.data, front=args.front, front_settings=settings)
    await run_with_field(app, args, stats)


def _client_files(work: Path, pki: Path) -> dict[str, str]:
    """The bench client's certificate and key (PEM, for node-opcua), trusted by the server."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scada.security.pki import make_certificate, thumbprint

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_certificate(key, "scada-bench", CLIENT_URI, ["localhost", "127.0.0.1"])
    cert_pem, key_pem = work / "client.pem", work / "client.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    (pki / "trusted" / "certs").mkdir(parents=True, exist_ok=True)
    (pki / "trusted" / "certs" / f"{thumbprint(der)}.der").write_bytes(der)
    return {"certificateFile": str(cert_pem), "privateKeyFile": str(key_pem), "applicationUri": CLIENT_URI}


def _security(mode: str, policy: str, files: dict[str, str]) -> dict[str, Any]:
    if mode == "None":
        return {"securityMode": "None"}
    return {"securityMode": mode, "securityPolicy": policy, **files}


def activations(args, url: str, nodes: Path, work: Path, mode: str, security: dict, k: int) -> float:
    """Sessions per second of one churn.js run (each: connect, activate, subscribe, close)."""
    arg: dict[str, Any] = {
        "endpoint": url,
        "nsUri": NAMESPACE_URI,
        "nodes": str(nodes),
        "sessions": args.sessions,
        "parallel": args.parallel,
        "items": args.churn_items,
        **security,
    }
    if args.user:
        arg |= {"userName": args.user, "password": os.environ.get(args.password_env, "")}
    res = NodeRun("churn.js", arg, work / f"churn-{mode}-{k}.log").result(600)
    if res["failed"]:
        raise RuntimeError(f"churn {mode}: {res['failed']} sessions failed: {res['errors']}")
    rate = res["sessions"] / res["seconds"]
    log(f"  activations {mode}: {rate:.1f}/s ({res['sessions']} sessions in {res['seconds']:.1f} s)")
    return rate


def notifications(args, url: str, nodes: Path, work: Path, mode: str, security: dict, k: int) -> float:
    """Notifications per second one client.js receives in its window."""
    go = work / f"go-{mode}-{k}"
    arg: dict[str, Any] = {
        "endpoint": url,
        "nsUri": NAMESPACE_URI,
        "nodes": str(nodes),
        "seconds": args.seconds,
        "publishingInterval": args.publishing_ms,
        "queueSize": 1,
        "samplingInterval": 0,
        "initialTimeout": 120,
        "goFile": str(go),
        "settleSeconds": args.settle,
        **security,
    }
    run = NodeRun("client.js", arg, work / f"client-{mode}-{k}.log")
    run.wait_ready(150)
    go.touch()
    res = run.result(args.settle + args.seconds + 300)
    log(f"  notifications {mode}: {fmt_rate(res['rate'])}")
    return float(res["rate"])


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=5000, help="changing tags, all monitored by the client")
    ap.add_argument("--rate", type=float, default=2.0, help="changes per item per second")
    ap.add_argument("--tick-ms", type=float, default=10.0, help="the field's period")
    ap.add_argument("--seconds", type=float, default=8.0, help="notifications: the measured window")
    ap.add_argument("--settle", type=float, default=2.0, help="notifications: seconds before the window")
    ap.add_argument("--publishing-ms", type=float, default=50.0)
    ap.add_argument("--sessions", type=int, default=40, help="activations: sessions per run")
    ap.add_argument("--parallel", type=int, default=4, help="activations: sessions at once")
    ap.add_argument("--churn-items", type=int, default=10, help="activations: items each session subscribes")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (medians)")
    ap.add_argument("--policy", default="Basic256Sha256", help="the secure policy (node-opcua's name)")
    ap.add_argument("--user", help="activate with this user's UserName token (default: anonymous)")
    ap.add_argument("--password-env", default="BENCH_PASSWORD", help="the variable holding --user's password")
    ap.add_argument("--front", default="process", help="Application(front=...)")
    ap.add_argument("--event-loop", default="uvloop")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    # --serve: the server process itself (started by the bench).
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for name in ("--config", "--data", "--endpoint", "--changing", "--security"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.serve:
        from common import eventloop, logs

        logs.configure(level="WARNING")
        return serve_until_sigterm(lambda stats: serve(args, stats), lambda m: eventloop.run(m, args.event_loop))
    from bench.harness import free_port

    ensure_node()
    work = Path(tempfile.mkdtemp(prefix="bench-security-"))
    config = write_city(args.items * 2, work / "config", alarms=False)
    names = analog_names(config)[: args.items]
    nodes = write_names(work / "changing.txt", names)
    data = work / "data"
    sec = work / "security.yaml"
    sec.write_text(
        f"policies: [{args.policy}]\nmodes: [SignAndEncrypt]\nallow_none: true\nanonymous: [Observer]\n", "utf-8"
    )
    files = _client_files(work, data / "pki")
    url = f"opc.tcp://127.0.0.1:{free_port()}/scada/"
    serve_args = ["--serve", "--config", str(config), "--data", str(data), "--endpoint", url]
    serve_args += ["--changing", str(nodes), "--security", str(sec), "--front", args.front, "--event-loop"]
    serve_args += [args.event_loop, "--rate", str(args.rate), "--tick-ms", str(args.tick_ms)]
    server = Served.python("ours", "bench.bench_security", serve_args, work / "server.log")
    acts: dict[str, list[float]] = {m: [] for m in MODES}
    notes: dict[str, list[float]] = {m: [] for m in MODES}
    load = []
    try:
        server.wait_listening(600)
        log(f"bench_security: {len(names)} items at {args.rate}/s, policy {args.policy}, work folder {work}")
        for k in range(args.repeats):
            order = MODES if k % 2 == 0 else MODES[::-1]  # ABBA: a drifting load weighs on both alike
            for mode in order:
                load.append(os.getloadavg()[0])
                security = _security(mode, args.policy, files)
                acts[mode].append(activations(args, url, nodes, work, mode, security, k))
                notes[mode].append(notifications(args, url, nodes, work, mode, security, k))
    finally:
        field = server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    a0, a1 = med(acts["None"]), med(acts["SignAndEncrypt"])
    n0, n1 = med(notes["None"]), med(notes["SignAndEncrypt"])
    who = f"UserName {args.user}" if args.user else "anonymous"
    print(f"\nsecurity cost, {args.repeats} runs each (medians), load average {min(load):.1f}-{max(load):.1f}:")
    print(f"  session activations/s ({who}):  None {a0:8.1f}   SignAndEncrypt {a1:8.1f}   ratio {a1 / a0:.2f}")
    print(
        f"  notifications/s (1 client):     None {fmt_rate(n0):>8}   SignAndEncrypt {fmt_rate(n1):>8}   ratio {n1 / n0:.2f}"
    )
    print(f"  field: {field}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
