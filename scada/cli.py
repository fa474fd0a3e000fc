"""``scada run | check | reload | journal | workorders | ...``: the command line of the server.

The server's own commands only: the composition point (``city_scada``) calls :func:`main`
with the registry of drivers and adds its commands (the demo, which runs the simulators).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import eventloop, logs
from common.fields import parse_host_port
from common.yamlsrc import ConfigError

if TYPE_CHECKING:
    from scada.config import Config
    from scada.driver_api import Drivers

# Adds one command to the ``scada`` parser's subcommands (argparse's _SubParsersAction).
AddCommand = Callable[[Any], object]


def _load(directory: str, drivers: Drivers) -> Config:
    from scada.config import load_config

    return load_config(directory, drivers)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config, args.drivers)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.directory.resolve()}: configuration OK")
    print(config.summary())
    return 0


async def _serve(config, args: argparse.Namespace, influx=None) -> None:
    from scada.app import KPI_INTERVAL, Application
    from scada.front.link import FrontSettings

    endpoint = args.opcua_endpoint
    http = getattr(args, "http", None)
    internal = getattr(args, "http_internal", None)
    settings = FrontSettings(
        endpoint,
        log_json=args.log_json,
        log_level=args.log_level,
        event_loop=args.event_loop,
        security=getattr(args, "security_settings", None),
        http=http_address(http) if http else None,
        http_set=bool(http),
        http_internal=http_address(internal, "--http-internal") if internal else None,
        http_internal_set=bool(internal),
    )
    app = Application(
        config,
        endpoint,
        args.status_interval,
        args.data,
        influx,
        front=args.front,
        front_settings=settings,
        schedule_clock=schedule_clock(args),
        kpi_interval=getattr(args, "kpi_interval", KPI_INTERVAL),
    )
    data_dir = args.data
    task = asyncio.current_task()
    if task is None:  # eventloop.run runs this coroutine as its main task
        raise RuntimeError("the server runs inside an asyncio task")
    loop = asyncio.get_running_loop()
    signals = 0

    def stop() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("stopping (press Ctrl-C again to force)", file=sys.stderr, flush=True)
            task.cancel()
        else:
            os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    # SIGHUP (sent by `scada reload`): read the configuration files again, apply them if valid.
    config_dir = config.directory.resolve()
    loop.add_signal_handler(signal.SIGHUP, lambda: app.request_reload(config_dir))
    try:
        pid_file = _write_pid_file(Path(data_dir), config_dir)
    except OSError as exc:  # a full or read-only data disk: supervise all the same, say what is lost
        pid_file = None
        print(
            f"warning: cannot write the pid file in {data_dir} ({exc.strerror or exc}): `scada reload` "
            f"will not find this server; send it SIGHUP (pid {os.getpid()}) instead",
            file=sys.stderr,
        )
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await app.run()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if pid_file is not None:
            _remove_pid_file(pid_file)


def _write_pid_file(data_dir: Path, config_dir: Path) -> Path:
    """Where `scada reload` finds this server: its pid and the folder its configuration is read from."""
    import json

    from scada.reload import PID_FILE

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / PID_FILE
    path.write_text(json.dumps({"pid": os.getpid(), "config": str(config_dir)}))
    return path


def _remove_pid_file(path: Path) -> None:
    import json

    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():  # not another server's, started since
            path.unlink()


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the configuration files, then have the running server apply them (SIGHUP)."""
    import json
    import time

    from scada.reload import PID_FILE, RESULT_FILE

    pid_path = Path(args.data) / PID_FILE
    try:
        running = json.loads(pid_path.read_text())
        pid = int(running["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"no running server found: no valid {pid_path} (give the server's --data folder)", file=sys.stderr)
        return 1
    config_dir = args.config or running.get("config") or "."
    if args.config and running.get("config") and Path(args.config).resolve() != Path(running["config"]):
        print(
            f"the server reads its configuration from {running['config']}, not {Path(args.config).resolve()}",
            file=sys.stderr,
        )
        return 2
    try:
        _load(config_dir, args.drivers)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        print("the running configuration is unchanged", file=sys.stderr)
        return 2
    result_path = Path(args.data) / RESULT_FILE
    asked_ns = time.time_ns()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no server with pid {pid} (a stale {pid_path}?)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(result_path.read_text())
            if result.get("time_ns", 0) >= asked_ns:
                print(result["message"], file=sys.stdout if result["ok"] else sys.stderr)
                for key, names in result.get("changes", {}).items():
                    print(f"  {key.replace('_', ' ')}: {', '.join(names)}")
                return 0 if result["ok"] else 2 if result["message"].startswith("configuration error") else 1
        time.sleep(0.1)
    print(f"the server (pid {pid}) did not report within {args.timeout:.0f} s; see its log", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    logs.configure(json=args.log_json, level=args.log_level)
    try:
        schedule_clock(args)  # checked before anything starts; built again when the server starts
    except ValueError as exc:
        print(f"--clock-start/--acceleration: {exc}", file=sys.stderr)
        return 2
    for option in ("http", "http_internal"):
        if getattr(args, option, None):
            try:
                http_address(getattr(args, option), "--" + option.replace("_", "-"))  # checked before anything starts
            except SystemExit as exc:
                print(exc, file=sys.stderr)
                return 2
    try:
        config = _load(args.config, args.drivers)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    security = _security(args)
    if security is None:
        return 2
    print(f"OPC UA endpoint: {_connectable(args.opcua_endpoint)}", flush=True)
    from scada.alarms.journal import JournalError
    from scada.historian.service import InfluxSettings
    from scada.historian.store import HistoryError
    from scada.operations.journal import OrderJournalError

    influx = None
    if args.influx_url:
        influx = InfluxSettings(args.influx_url, args.influx_org, args.influx_bucket)
        if not influx.token:
            print(f"note: {influx.token_env} is not set: writing to {args.influx_url} without a token", file=sys.stderr)
    try:
        eventloop.run(_serve(config, args, influx), args.event_loop)
    except JournalError as exc:
        print(f"cannot open the alarm journal: {exc}", file=sys.stderr)
        return 1
    except HistoryError as exc:
        print(f"cannot open the history store: {exc}", file=sys.stderr)
        return 1
    except OrderJournalError as exc:
        print(f"cannot open the work-order journal: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the OPC UA port is taken, the address does not exist...
        print(f"cannot start the OPC UA server on {args.opcua_endpoint}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except eventloop.EventLoopError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug the supervisor could not contain: say it, exit non-zero
        _fatal(exc)
        return 1
    return 0


def _security(args: argparse.Namespace):
    """Read the security settings (``--security``, else the configuration folder's security.yaml,
    else the secure defaults), resolve the endpoint, and make or check the server's certificate
    when a secure policy is offered. None after printing the error (exit 2)."""
    from scada.opcua import DEFAULT_ENDPOINT
    from scada.security.pki import Pki, PkiError
    from scada.security.settings import load_security, security_file

    try:
        path = security_file(Path(args.config), getattr(args, "security", None))
        settings = load_security(path, Path(args.data))
    except ConfigError as exc:
        print(f"security configuration error: {exc}", file=sys.stderr)
        return None
    args.opcua_endpoint = args.opcua_endpoint or settings.endpoint or DEFAULT_ENDPOINT
    if settings.policies:
        from urllib.parse import urlparse

        pki = Pki(settings.pki)
        host = urlparse(args.opcua_endpoint).hostname or ""
        try:
            if pki.ensure_server_certificate(hosts=[host] if host else []):
                print(f"server certificate created: {pki.cert_path} (clients must trust it)", flush=True)
            pki.check_server_key()
        except (PkiError, OSError) as exc:
            print(f"cannot offer secure endpoints: {exc}", file=sys.stderr)
            return None
    args.security_settings = settings
    return settings


def _fatal(exc: BaseException) -> None:
    """An unexpected fatal error in a few readable lines (the traceback goes to the log)."""
    import structlog

    structlog.get_logger("scada").critical(
        "server_failed", error=repr(exc), exc_info=(type(exc), exc, exc.__traceback__)
    )
    leaves = list(_leaves(exc))
    print(
        f"the server stopped on an unexpected error ({len(leaves)} failure{'s' if len(leaves) > 1 else ''}):",
        file=sys.stderr,
    )
    for leaf in leaves[:10]:
        print(f"  {type(leaf).__name__}: {leaf}", file=sys.stderr)
    print("this is a bug: please report it with the log above", file=sys.stderr)


def _leaves(exc: BaseException):
    """The real failures inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


def _connectable(endpoint: str) -> str:
    """The endpoint as a client on this machine would type it (0.0.0.0 is not an address to dial)."""
    return endpoint.replace("//0.0.0.0:", "//localhost:").replace("//[::]:", "//localhost:")


def _time_ns(text: str | None) -> int | None:
    """ISO 8601 (a date, or a date and time; UTC unless it gives an offset) -> ns since the epoch."""
    if not text:
        return None
    from datetime import datetime

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-28 or 2026-11-28T06:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1e9)


def _open_journal(data: str):
    from scada.alarms.journal import Journal, JournalError

    path = Path(data) / "alarms.sqlite"
    if not path.is_file():
        raise SystemExit(f"no alarm journal at {path} (the server writes it in its --data folder)")
    try:
        return Journal(path)
    except JournalError as exc:
        raise SystemExit(str(exc)) from None


def cmd_journal(args: argparse.Namespace) -> int:
    """The alarm journal over a time range and filters, as CSV (stdout or --csv FILE)."""
    filters = {
        k: getattr(args, k) for k in ("commune", "device", "priority", "state", "service", "alarm") if getattr(args, k)
    }
    journal = _open_journal(args.data)
    try:
        if args.csv:
            with open(args.csv, "w", newline="", encoding="utf-8") as fh:
                n = journal.export_csv(fh, _time_ns(args.start), _time_ns(args.end), **filters)
            print(f"{n} rows written to {args.csv}", file=sys.stderr)
        else:
            journal.export_csv(sys.stdout, _time_ns(args.start), _time_ns(args.end), **filters)
    finally:
        journal.close()
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    """The alarms as the server last saved them: announced ones (or every state with --all)."""
    from scada.alarms.journal import iso_utc
    from scada.alarms.states import State

    journal = _open_journal(args.data)
    try:
        states = journal.load_states()
    finally:
        journal.close()
    shown = (State.UNACK_ACTIVE, State.ACK_ACTIVE, State.RTN_UNACK, State.LATCHED)
    rows = sorted((k, r) for k, r in states.items() if args.all or r.state in shown)
    print(f"{'device':<16} {'alarm':<22} {'state':<15} {'active':<6} {'since (UTC)':<27} assigned")
    for (alarm, device), r in rows:
        since = iso_utc(r.since_ns) if r.since_ns else ""
        print(
            f"{device:<16} {alarm:<22} {r.state.name:<15} {'yes' if r.active else 'no':<6} {since:<27} {r.assigned_to}"
        )
    print(f"{len(rows)} alarm(s)", file=sys.stderr)
    return 0


def cmd_alarm_metrics(args: argparse.Namespace) -> int:
    """ISA-18.2 metrics over a time range of the journal (default: the last 24 hours)."""
    import json
    import time

    from scada.alarms.metrics import metrics_report

    end = _time_ns(args.end) or time.time_ns()
    start = _time_ns(args.start) or end - 24 * 3600 * 10**9
    deadlines = None
    if args.config:
        try:
            deadlines = {n: s.ack_deadline_s for n, s in _load(args.config, args.drivers).alarms.services.items()}
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    journal = _open_journal(args.data)
    try:
        report = metrics_report(journal, start, end, deadlines)
    finally:
        journal.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    rate, flood = report["alarm_rate"], report["flood"]
    print(
        f"announced alarms: {report['announcements']} ({rate['mean_per_window']:.1f} per 10 min on average, "
        f"at most {rate['max_per_window']})"
    )
    print(
        f"flood (> {flood['threshold']} in 10 min): {len(flood['periods'])} period(s), "
        f"{100 * flood['share_of_time']:.1f} % of the time"
    )
    print(
        "most frequent: "
        + (", ".join(f"{x['alarm']}@{x['device']} x{x['count']}" for x in report["top_alarms"]) or "none")
    )
    print(
        "chattering (>= 3 in 60 s): "
        + (", ".join(f"{x['alarm']}@{x['device']}" for x in report["chattering"]) or "none")
    )
    print("stale (active > 24 h): " + (", ".join(f"{x['alarm']}@{x['device']}" for x in report["stale"]) or "none"))
    for service, st_ in report["ack_by_service"].items():
        late = "" if st_.get("over_deadline") is None else f", {st_['over_deadline']} over the deadline"
        median = "-" if st_["median_s"] is None else f"{st_['median_s']:.0f} s"
        print(f"time to acknowledge, {service}: {st_['count']} acknowledged, median {median}{late}")
    return 0


def cmd_opendata(args: argparse.Namespace) -> int:
    """Open data from the history store, as CSV and GeoJSON (see scada/opendata.py)."""
    from datetime import datetime, timedelta

    from scada import opendata
    from scada.historian.store import HistoryError

    try:
        tz = opendata.timezone_of(args.tz)
        if args.end:
            end = opendata.parse_time(args.end, tz)
        elif args.start:
            end = datetime.now(tz)  # from --from to now (today included)
        else:
            end = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)  # yesterday
        start = opendata.parse_time(args.start, tz) if args.start else end - timedelta(days=1)
        period = opendata.make_period(start, end, tz)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    try:
        config = _load(args.config, args.drivers)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    path = Path(args.data) / "history.sqlite"
    if not path.is_file():
        raise SystemExit(f"no history store at {path} (the server writes it in its --data folder)")
    try:
        written = opendata.export(args.data, config, period, args.out)
    except HistoryError as exc:
        raise SystemExit(str(exc)) from None
    print(f"open data {period.days[0]} to {period.days[-1]} ({args.tz} days):", file=sys.stderr)
    for name, n in written.items():
        print(f"  {Path(args.out) / name}: {n} rows", file=sys.stderr)
    return 0


def _config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=".", help="folder holding tags.yaml and alarms.yaml (default: .)")


def http_address(text: str, option: str = "--http") -> tuple[str, int] | None:
    """``--http``, ``--http-internal``: host:port, or none (no such listener); argparse's error for
    anything else."""
    if text.strip().lower() == "none":
        return None
    try:
        return parse_host_port(text, 8080 if option == "--http" else 9464)
    except ValueError as exc:
        raise SystemExit(f"scada: {option} {text!r}: {exc}") from None


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a command that runs the server (``run``, and the demo's)."""
    from scada.opcua import DEFAULT_ENDPOINT

    _config_argument(p)
    p.add_argument(
        "--opcua-endpoint",
        default=None,
        help=f"the OPC UA endpoint to listen on (default: security.yaml's endpoint, else {DEFAULT_ENDPOINT})",
    )
    p.add_argument(
        "--security",
        help="the security settings (default: security.yaml of the configuration folder if present, else the "
        "secure defaults: signed and encrypted endpoints only, no anonymous login)",
    )
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines; 0: none")
    p.add_argument(
        "--kpi-interval",
        type=float,
        default=60.0,
        help="seconds between two live computations of the contract KPIs (OPC UA Operations/Contract; "
        "default 60); 0: none",
    )
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--data",
        default="var",
        help="folder of the server's files: the alarm journal, the history store, the InfluxDB spool (default: var)",
    )
    p.add_argument(
        "--front",
        choices=("process", "inline"),
        default="process",
        help="where the OPC UA server runs: its own process, so that no client can slow the field "
        "(default), or inline in the server's event loop (one process: tests, small benches)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="the citizens' HTTP server's address (Open311), or 'none' (no HTTP server at all): instead of "
        "operations.yaml's http.listen",
    )
    p.add_argument(
        "--http-internal",
        metavar="HOST:PORT",
        help="the internal HTTP listener's address (the map feed, /metrics: the city's network only), or "
        "'none': instead of operations.yaml's http.internal",
    )
    p.add_argument("--influx-url", help="also write history to this InfluxDB v2 API (token: $INFLUX_TOKEN)")
    p.add_argument("--influx-org", default="city")
    p.add_argument("--influx-bucket", default="scada")
    # Simulated time, as the simulators' --start and --acceleration: only the lighting schedules
    # follow it (timestamps, read-back timeouts and rate limits stay real).
    p.add_argument(
        "--clock-start",
        help="the lighting schedules' clock reads this instant, ISO 8601, UTC unless an offset is given, when "
        "the schedules start (or at --clock-origin); default: now, real time; give the simulators the same --start",
    )
    p.add_argument(
        "--acceleration",
        type=float,
        default=1.0,
        help="simulated seconds per real second of the lighting schedules' clock (default 1: real time); "
        "the simulators' --acceleration",
    )
    p.add_argument(
        "--clock-origin",
        type=float,
        help="Unix time (s) of the real instant at which the schedules' clock reads --clock-start (default: "
        "when the server starts): the simulators' --start-origin, so that both clocks read alike",
    )
    eventloop.add_argument(p)


def schedule_clock(args: argparse.Namespace):
    """The lighting schedules' clock of ``--clock-start``, ``--acceleration``, ``--clock-origin``;
    ValueError says what is wrong."""
    from scada.control.schedules import ScheduleClock, parse_clock_start

    start = getattr(args, "clock_start", None)
    origin = getattr(args, "clock_origin", None)
    return ScheduleClock(
        parse_clock_start(start) if start else None,
        getattr(args, "acceleration", 1.0),
        origin_ns=None if origin is None else int(origin * 1e9),
    )


def main(argv: list[str] | None = None, *, drivers: Drivers, commands: Sequence[AddCommand] = ()) -> int:
    """Run one command of the server; ``drivers`` is the registry of drivers (name -> plugin),
    ``commands`` add the composition point's own commands to the parser."""
    parser = argparse.ArgumentParser(prog="scada", description="City supervision server")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate the configuration and print a summary")
    _config_argument(p)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("run", help="run the server")
    add_serving_arguments(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("reload", help="validate the configuration files and apply them to the running server")
    p.add_argument("--config", help="configuration folder (default: the one the server was started with)")
    p.add_argument("--data", default="var", help="the server's --data folder, where it wrote scada.pid (default: var)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server's answer")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("journal", help="the alarm journal as CSV: a time range and filters")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--from", dest="start", help="ISO 8601 start (UTC unless an offset is given)")
    p.add_argument("--to", dest="end", help="ISO 8601 end, excluded")
    for key in ("commune", "device", "priority", "state", "service", "alarm"):
        p.add_argument(f"--{key}", action="append", help=f"only this {key} (repeat for several)")
    p.add_argument("--csv", help="write to this file instead of the standard output")
    p.set_defaults(func=cmd_journal)
    p = sub.add_parser("alarm-metrics", help="ISA-18.2 alarm metrics over the journal (default: last 24 h)")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--from", dest="start", help="ISO 8601 start (default: 24 h before --to)")
    p.add_argument("--to", dest="end", help="ISO 8601 end (default: now)")
    p.add_argument("--config", help="configuration folder, for the services' acknowledgement deadlines")
    p.add_argument("--json", action="store_true", help="the whole report as JSON")
    p.set_defaults(func=cmd_alarm_metrics)
    p = sub.add_parser("alarms", help="the alarms as the server last saved them")
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument(
        "--all", action="store_true", help="every alarm instance with a saved state, not only announced ones"
    )
    p.set_defaults(func=cmd_alarms)
    p = sub.add_parser(
        "opendata",
        help="open data (CSV, GeoJSON) from the history: energy, lighting hours, bollard passages, junction counts",
    )
    p.add_argument("--data", default="var", help="the server's --data folder (default: var)")
    p.add_argument("--config", default=".", help="configuration folder: the devices, their communes and coordinates")
    p.add_argument("--from", dest="start", help="ISO 8601 first day (default: yesterday)")
    p.add_argument(
        "--to",
        dest="end",
        help="ISO 8601 end, excluded; widened to whole days (default: now with --from, else today's midnight)",
    )
    p.add_argument("--tz", default="UTC", help="time zone of the days and hours (default UTC; e.g. Europe/Paris)")
    p.add_argument("--out", default="opendata", help="folder to write the files into (default: opendata)")
    p.set_defaults(func=cmd_opendata)
    from scada import history_cli

    history_cli.add_parser(sub)
    from scada.operations import report as report_cli

    report_cli.add_parser(sub)
    from scada.security import audit_cli

    audit_cli.add_parser(sub)
    from scada.operations import cli as workorders_cli

    workorders_cli.add_parser(sub)
    from scada.security import pki_cli
    from scada.security.audit_log import CommandAudit

    pki_cli.add_parser(sub, audit_of=lambda s: CommandAudit(s.audit))
    from scada import schema as schema_cli

    schema_cli.add_parser(sub)
    from scada.security import user_cli

    user_cli.add_parser(sub)
    for add in commands:
        add(sub)
    args = parser.parse_args(argv)
    args.drivers = drivers  # what the commands that read a configuration read it with
    return args.func(args)
