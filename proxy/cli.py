"""`gantry-proxy`: run the daemon, show status, change routes by hand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from proxy.address import parse_address
from proxy.client import ProxyClient, ProxyError
from proxy.errors import BadRequest
from proxy.paths import default_socket_path, default_state_path


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_status(routes: list[dict[str, Any]]) -> str:
    """The `status` table: one row per backend of each route."""
    from tabulate import tabulate
    rows = []
    for route in routes:
        state_note = f"error: {route['error']}" if route["state"] == "error" else None
        backends = route["backends"] or [{"address": route["backend"], "state": "active",
                                         "live": 0, "opened": 0, "bytesIn": 0, "bytesOut": 0,
                                         "errors": 0}]
        for i, b in enumerate(backends):
            rows.append([
                route["name"] if i == 0 else "",
                f"{route['listen']} ({route['kind']})" if i == 0 else "",
                b["address"],
                state_note if state_note and b["state"] == "active" else b["state"],
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
    run.add_argument("--state", default=None,
                     help=f"state file (default: {default_state_path()})")
    run.add_argument("--metrics", default=None, metavar="HOST:PORT",
                     help="serve Prometheus metrics on this TCP address")
    run.add_argument("--log-file", default=None, help="log here instead of stderr")
    run.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                     help="on SIGTERM, wait this long for connections to finish (default 10)")
    run.add_argument("-v", "--verbose", action="store_true")

    status = sub.add_parser("status", parents=[common], help="show routes and backend counters")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    route = sub.add_parser("route", help="change routes by hand")
    rsub = route.add_subparsers(dest="route_command", required=True)
    rset = rsub.add_parser("set", parents=[common], help="create or switch a route")
    rset.add_argument("name")
    rset.add_argument("--listen", required=True, metavar="HOST:PORT")
    rset.add_argument("--backend", required=True, metavar="HOST:PORT")
    rset.add_argument("--kind", choices=("tcp", "http"), default="tcp")
    rset.add_argument("--idle-timeout", type=float, default=None, metavar="S")
    rrm = rsub.add_parser("rm", parents=[common], help="remove a route (live connections finish)")
    rrm.add_argument("name")

    drain = sub.add_parser("drain", parents=[common], help="wait until a backend of a route has drained")
    drain.add_argument("name")
    drain.add_argument("backend", metavar="HOST:PORT")
    drain.add_argument("--timeout", type=float, default=30.0)
    drain.add_argument("--close", action="store_true", help="close what is left at the timeout")
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
                          args.log_file, args.shutdown_timeout, args.verbose)
    client = ProxyClient(socket_path)
    try:
        if args.command == "status":
            routes = client.routes()
            print(json.dumps(routes, indent=2) if args.json else format_status(routes))
        elif args.command == "route" and args.route_command == "set":
            answer = client.set_route(args.name, args.listen, args.backend, args.kind,
                                      args.idle_timeout)
            print(f"{args.name}: {answer['previous'] or '(new)'} -> {args.backend}")
        elif args.command == "route":
            answer = client.remove_route(args.name)
            print(f"{args.name}: removed (was -> {answer['previous']})")
        elif args.command == "drain":
            print(json.dumps(client.drain(args.name, args.backend, args.timeout, args.close)))
    except ProxyError as e:
        print(f"gantry-proxy: {e}", file=sys.stderr)
        return 1
    return 0
