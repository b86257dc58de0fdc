"""`gantry-proxy`: run the daemon, show status, change routes by hand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from proxy.address import parse_address
from proxy.errors import BadRequest, ProxyError
from proxy.paths import default_socket_path, default_state_path, keeper_socket_path


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _gates(route: dict[str, Any]) -> str:
    """`paused (3 held)` / `maintenance` notes of a route, for the status table."""
    notes = []
    if route.get("paused"):
        notes.append(f"paused ({route.get('held', 0)} held)")
    if route.get("maintenance"):
        notes.append("maintenance")
    return ", ".join(notes)


def format_status(routes: list[dict[str, Any]]) -> str:
    """The `status` table: one row per backend of each route."""
    from tabulate import tabulate
    rows = []
    for route in routes:
        state_note = f"error: {route['error']}" if route["state"] == "error" else None
        gates = _gates(route)
        backends = route["backends"] or [{"address": route["backend"], "state": "active",
                                         "live": 0, "opened": 0, "bytesIn": 0, "bytesOut": 0,
                                         "errors": 0}]
        for i, b in enumerate(backends):
            state = state_note if state_note and b["state"] == "active" else b["state"]
            if b["state"] == "active" and len(backends) > 1 and b.get("weight"):
                state += f" (weight {b['weight']})"
            rows.append([
                route["name"] if i == 0 else "",
                f"{route['listen']} ({', '.join(filter(None, [route['kind'], gates]))})"
                if i == 0 else "",
                b["address"],
                state,
                b["live"], b["opened"],
                f"{_human_bytes(b['bytesIn'])} / {_human_bytes(b['bytesOut'])}",
                b["errors"],
            ])
    headers = ["ROUTE", "LISTEN", "BACKEND", "STATE", "LIVE", "TOTAL", "BYTES IN/OUT", "ERRORS"]
    return tabulate(rows, headers=headers, tablefmt="plain") if rows else "no routes"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gantry-proxy",
                                description="TCP proxy with atomic switches and drains.")
    # --socket belongs to every subcommand so it goes after it: `gantry-proxy run --socket S`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=None,
                        help=f"control socket (default: {default_socket_path()})")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    _run_options(run)
    run.add_argument("--takeover", action="store_true",
                     help="first ask the daemon on the socket to hand over (see upgrade)")
    upgrade = sub.add_parser(
        "upgrade", parents=[common],
        help="replace the running daemon by a new one, refusing no connection; run options "
             "default to the running daemon's")
    _run_options(upgrade, defaults=False)
    upgrade.add_argument("--timeout", type=float, default=30.0, metavar="S",
                         help="wait this long for the new daemon to answer (default 30)")
    keeper = sub.add_parser("keeper", parents=[common],
                            help="the listener keeper of the proxy on --socket")
    keeper.add_argument("keeper_command", choices=("run", "status", "stop"),
                        help="run it in the foreground, list its listeners, or stop it "
                             "(closing every port it holds)")

    status = sub.add_parser("status", parents=[common], help="show routes and backend counters")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    route = sub.add_parser("route", help="change routes by hand")
    rsub = route.add_subparsers(dest="route_command", required=True)
    rset = rsub.add_parser("set", parents=[common], help="create or switch a route")
    rset.add_argument("name")
    rset.add_argument("--listen", required=True, metavar="HOST:PORT")
    rset.add_argument("--backend", required=True, action="append", metavar="HOST:PORT[=WEIGHT]",
                      help="the backend; repeat it with weights to split new connections "
                           "(--backend A=90 --backend B=10); the first is the primary")
    rset.add_argument("--sticky", action="store_true",
                      help="with several backends: keep each client address on one of them")
    rset.add_argument("--kind", choices=("tcp", "http"), default="tcp")
    rset.add_argument("--idle-timeout", type=float, default=None, metavar="S")
    rrm = rsub.add_parser("rm", parents=[common], help="remove a route (live connections finish)")
    rrm.add_argument("name")

    drain = sub.add_parser("drain", parents=[common],
                           help="wait until a backend of a route has drained")
    drain.add_argument("name")
    drain.add_argument("backend", metavar="HOST:PORT")
    drain.add_argument("--timeout", type=float, default=30.0)
    drain.add_argument("--close", action="store_true", help="close what is left at the timeout")

    pause = sub.add_parser("pause", parents=[common],
                           help="hold a route's new connections until resume")
    pause.add_argument("name")
    pause.add_argument("--max-pause", type=float, default=30.0, metavar="S",
                       help="close a held connection after S seconds (http: 504); default 30")
    resume = sub.add_parser("resume", parents=[common],
                            help="forward the held connections to the current backend")
    resume.add_argument("name")
    maint = sub.add_parser("maintenance", parents=[common],
                           help="answer new connections with 503 (http) or close them (tcp)")
    maint.add_argument("name")
    maint.add_argument("mode", choices=("on", "off"))
    maint.add_argument("--message", default=None, help="text of the 503 page")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `gantry-proxy` and `python -m proxy`."""
    args = _parser().parse_args(argv)
    socket_path = args.socket or default_socket_path()
    if args.command == "run":
        from proxy import daemon
        try:
            metrics = parse_address(args.metrics, what="--metrics") if args.metrics else None
        except BadRequest as e:
            print(f"gantry-proxy: {e}", file=sys.stderr)
            return 2
        return daemon.run(socket_path, args.state or default_state_path(), metrics,
                          args.log_file, args.shutdown_timeout, args.verbose, args.listeners,
                          args.takeover)
    if args.command == "keeper":
        return _keeper(args.keeper_command, keeper_socket_path(socket_path))
    if args.command == "upgrade":
        from proxy.upgrade import RUN_OPTIONS, upgrade
        given = {key: getattr(args, dest) for dest, key, _ in RUN_OPTIONS if hasattr(args, dest)}
        try:
            old, new = upgrade(socket_path, given, args.timeout)
        except ProxyError as e:
            print(f"gantry-proxy: upgrade: {e}", file=sys.stderr)
            return 1
        print(f"gantry-proxy upgraded: pid {old} -> {new}")
        return 0
    # Imported here: the daemon (`run`) has no use for http.client and its imports.
    from proxy.client import ProxyClient
    client = ProxyClient(socket_path)
    try:
        if args.command == "status":
            routes = client.routes()
            print(json.dumps(routes, indent=2) if args.json else format_status(routes))
        elif args.command == "route" and args.route_command == "set":
            backends = _weighted(args.backend)
            single = len(backends) == 1 and "=" not in args.backend[0]
            answer = client.set_route(args.name, args.listen, backends[0][0], args.kind,
                                      args.idle_timeout, None if single else backends,
                                      args.sticky)
            print(f"{args.name}: {answer['previous'] or '(new)'} -> {' '.join(args.backend)}")
        elif args.command in ("pause", "resume", "maintenance"):
            if args.command == "pause":
                client.pause(args.name, args.max_pause)
            elif args.command == "resume":
                client.resume(args.name)
            else:
                client.maintenance(args.name, args.mode == "on", args.message)
            print(format_status([client.route(args.name)]))
        elif args.command == "route":
            answer = client.remove_route(args.name)
            print(f"{args.name}: removed (was -> {answer['previous']})")
        elif args.command == "drain":
            print(json.dumps(client.drain(args.name, args.backend, args.timeout, args.close)))
    except (ProxyError, UsageError) as e:
        print(f"gantry-proxy: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 0


def _run_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The options of `run`; without `defaults` (`upgrade`), only those given are set, and
    they override the running daemon's."""
    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--state", default=d(None),
                        help=f"state file (default: {default_state_path()})")
    parser.add_argument("--metrics", default=d(None), metavar="HOST:PORT",
                        help="serve Prometheus metrics on this TCP address")
    parser.add_argument("--log-file", default=d(None), help="log here instead of stderr")
    parser.add_argument("--shutdown-timeout", type=float, default=d(10.0), metavar="S",
                        help="on SIGTERM, wait this long for connections to finish (default 10)")
    parser.add_argument("--listeners", choices=("auto", "keeper", "systemd", "direct"),
                        default=d("auto"),
                        help="where listening sockets live: the listener keeper (survives the "
                             "proxy), systemd's, or bound directly; auto (default): systemd "
                             "when it passed sockets, else keeper")
    parser.add_argument("-v", "--verbose", action="store_true", default=d(False))


def _keeper(command: str, path: str) -> int:
    from proxy.keeper import KeeperClient, KeeperNotRunning
    from proxy.keeper import main as keeper_main
    if command == "run":
        return keeper_main(["--socket", path])
    client = KeeperClient(path)
    try:
        if command == "stop":
            print(f"listener keeper on {path}: " + ("stopped" if client.stop() else "not running"))
        else:
            print(f"listener keeper {client.ping()['pid']} on {path}: "
                  f"{', '.join(client.listeners()) or 'no listeners'}")
    except KeeperNotRunning as e:
        print(f"gantry-proxy: {e}", file=sys.stderr)
        return 1
    return 0


class UsageError(Exception):
    """A bad command line that argparse cannot see (exit 2)."""


def _weighted(values: list[str]) -> list[tuple[str, int]]:
    """`HOST:PORT[=WEIGHT]` arguments as (address, weight) pairs."""
    out = []
    for value in values:
        address, _, weight = value.partition("=")
        if weight and not weight.isdigit():
            raise UsageError(f"--backend {value}: the weight must be a positive integer")
        out.append((address, int(weight or 1)))
    return out
