"""``gantry``: zero-downtime updates of one host's components (see ``gantry --help``).

Exit status: 0 success, 1 operational failure (Docker, registry, checks, proxy, busy lock),
2 usage or config error (nothing was touched), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from . import hangup
from .commands import canary as canary_commands
from .commands import logs as logs_commands
from .commands import rollback as rollback_commands
from .commands import traffic as traffic_commands
from .commands import watch as watch_commands
from .config import ConfigError, load_config
from .errors import GantryError, RouteError
from .lifecycle import ContainerStatus, Host, Lifecycle
from .progress import ConsoleReporter
from .runtime import BACKEND_MODES, connect, short_ref

log = logging.getLogger("gantry")

PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
DEFAULT_CONFIG = ".gantry"

# Command groups kept in modules of their own (see gantry/commands/__init__.py).
COMMAND_GROUPS = (traffic_commands, canary_commands, rollback_commands, logs_commands,
                  watch_commands)
# Read-only commands: they neither take locks nor start the proxy.
READ_ONLY = ("list", "logs")

EPILOG = """\
The config is a JSON (or .yml/.yaml) file describing the components (default: ./.gantry).
Containers are labelled io.gantry.project/component/machine/...; gantry only ever touches
containers with its own labels for this project and machine. Traffic reaches a component
through gantry-proxy (started when its control socket does not answer), on
<proxy-bind>:<external port> for every port of the component.
"""


class UsageError(Exception):
    """Bad command-line input detected after parsing (exit 2)."""


def sanitize_project(name: str) -> str:
    """A directory name -> a project name: lowercase, [a-z0-9_-] (dots would clash with the
    ``<project>.<component>.<port>`` route names)."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return cleaned or "default"


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the command (after: defaults are suppressed so
    they do not overwrite a value given before)."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("common options")
    g.add_argument("-f", "--config", metavar="FILE", default=d(DEFAULT_CONFIG),
                   help="config file (default: ./.gantry)")
    g.add_argument("-p", "--project", default=d(None),
                   help="project name (default: the config file's directory name, sanitized)")
    g.add_argument("--machine", default=d(None),
                   help="machine name used in labels (default: this host's name)")
    g.add_argument("--proxy-socket", metavar="PATH", default=d(None),
                   help="gantry-proxy control socket (default: $GANTRY_PROXY_SOCKET, else "
                        "/run/gantry/proxy.sock as root, else $XDG_RUNTIME_DIR/gantry/proxy.sock)")
    g.add_argument("--proxy-state", metavar="PATH", default=d(None),
                   help="state file of a proxy gantry starts (default: the proxy's own)")
    g.add_argument("--proxy-bind", metavar="ADDR", default=d("0.0.0.0"),
                   help="address the proxy listens on for component ports (default: 0.0.0.0)")
    g.add_argument("--backend-mode", choices=BACKEND_MODES, default=d("loopback"),
                   help="how the proxy reaches containers: loopback (ports published on "
                        "127.0.0.1, default) or container-ip (the bridge IP)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--wait", dest="wait", action="store_true", default=d(True),
                   help="if another gantry works on the component, wait for it (default)")
    w.add_argument("--no-wait", dest="wait", action="store_false", default=d(True),
                   help="if another gantry works on the component, fail at once (exit 1)")
    g.add_argument("-v", "--verbose", action="count", default=d(0),
                   help="log more (-v info, -vv debug) to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantry", description="Zero-downtime updates of Docker containers on this host.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        _common(p, suppress=True)
        return p

    p = add("update", "roll out a new container of a component",
            "Resolve the image (repo:tag -> digest; pull if needed), start a new container "
            "beside the running one, wait for its ready checks, switch the proxy routes to "
            "it, then drain, stop and remove the old one. On failure the new container is "
            "removed and the old one keeps serving. A component with `build` is built from "
            "its context instead (tagged by content): an unchanged context builds and "
            "redeploys nothing.")
    p.add_argument("component")
    p.add_argument("-m", "--monitor", action="store_true",
                   help="after the update, keep monitoring (see `gantry monitor`)")
    canary_commands.add_canary_option(p)
    p = add("start", "start a component unless it already runs the same image and config",
            "Like update, but does nothing when the live container already runs the image "
            "repo:tag resolves to, with the same config hash.")
    p.add_argument("component")
    p = add("stop", "drain, stop and remove every container of a component",
            "Turn new connections away, wait (up to drainTimeout) for live ones to finish, "
            "stop (stopTimeout) and remove every container, then remove the routes.")
    p.add_argument("component")
    p = add("kill", "stop and remove a component at once, without draining",
            "Like stop, without waiting for live connections (they are closed).")
    p.add_argument("component")
    p = add("list", "show the containers of the project (or of one component)",
            "States: running (routed), draining (N connections), starting (ready checks), "
            "stopped. Read-only: it neither takes locks nor starts the proxy.")
    p.add_argument("component", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("monitor", "health-check a component and replace it when it fails",
            "Run the health checks (or the ready checks if none) of the live container; after "
            "healthFailures consecutive failures replace it through the update lifecycle "
            "(same image). Ctrl-C ends it. Ends by itself when the component is stopped. "
            "SIGHUP redeploys: the config is read again, the image rebuilt (`build`) or its "
            "tag resolved again, and the component updated; a SIGHUP before that update "
            "switched gives it up and starts over with the newest input.")
    p.add_argument("component")
    for group in COMMAND_GROUPS:
        group.register(add)
    return parser


def _project(args: argparse.Namespace, config_path: Path) -> str:
    if args.project is None:
        return sanitize_project(config_path.resolve().parent.name)
    if not PROJECT_RE.fullmatch(args.project):
        raise UsageError(f"bad project name {args.project!r}: use [a-z0-9][a-z0-9_-]*")
    return args.project


class _NoProxy:
    """Stand-in for a proxy that is not running (list only): no routes."""

    def routes(self) -> list[dict]:
        return []


def _proxy(args: argparse.Namespace, start: bool) -> Any:
    from proxy.client import ProxyClient, ProxyError, ProxyNotRunning, ensure_running

    try:
        if start:
            return ensure_running(args.proxy_socket, args.proxy_state)
        client = ProxyClient(args.proxy_socket)
        client.ping()
        return client
    except ProxyNotRunning as exc:
        if not start:
            return _NoProxy()
        raise RouteError(str(exc)) from exc
    except ProxyError as exc:
        raise RouteError(str(exc)) from exc


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                           ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub_unit}"
    return f"{s}s"


def print_status(groups: dict[str, list[ContainerStatus]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: [s.to_dict() for s in statuses]
                          for name, statuses in groups.items()}, indent=2))
        return
    rows = [(name, s.short_id, _uptime(s.uptime()), short_ref(s.image), s.display_state)
            for name, statuses in groups.items() for s in statuses]
    if not rows:
        print("no containers")
        return
    print(tabulate(rows, headers=("COMPONENT", "CONTAINER ID", "UPTIME", "IMAGE", "STATUS")))


def run(args: argparse.Namespace) -> int:
    for group in COMMAND_GROUPS:  # commands of their own making (no single config/project)
        if args.command in getattr(group, "STANDALONE", {}):
            return group.STANDALONE[args.command](args)
    config_path = Path(args.config)
    config = load_config(config_path)  # ConfigError: exit 2 before touching anything
    component = config.component(args.component) if args.component else None
    canary = getattr(args, "canary", None)
    if canary is not None and args.monitor:
        raise UsageError("--canary and -m do not go together (promote or abort first)")
    project = _project(args, config_path)
    machine = args.machine or socket.gethostname()
    client = connect()
    proxy = _proxy(args, start=args.command not in READ_ONLY)
    host = Host(client, proxy, project, machine, proxy_bind=args.proxy_bind, origin="gantry",
                reporter=ConsoleReporter(), backend_mode=args.backend_mode,
                lock_wait=args.wait)
    life = Lifecycle(host)
    if canary is not None:
        return canary_commands.cmd_update(args, life, component)
    for group in COMMAND_GROUPS:
        if args.command in group.COMMANDS:
            return group.COMMANDS[args.command](args, life, component)
    if args.command == "list":
        groups = ({component.name: life.status(component)} if component
                  else life.status_all())
        print_status(groups, args.json)
        return 0
    assert component is not None
    monitoring = args.command == "monitor" or getattr(args, "monitor", False)
    hangups = hangup.Hangups().install() if monitoring else None  # SIGHUP: redeploy
    if args.command in ("update", "start"):
        (life.update if args.command == "update" else life.start)(component)
        if not getattr(args, "monitor", False):
            return 0
    if args.command in ("stop", "kill"):
        life.stop(component, kill=args.command == "kill")
        return 0
    assert hangups is not None
    try:
        hangup.monitor(life, component, lambda: load_config(config_path).component(
            component.name), hangups)
    except KeyboardInterrupt:
        print("monitor stopped")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so a new container under checks is removed on the way out
    # (SIGKILL cannot be caught: the next command's recover() cleans up then).
    signal.signal(signal.SIGTERM, _interrupt)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gantry: error: {exc}", file=sys.stderr)
        return 2
    except GantryError as exc:
        print(f"gantry: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gantry: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
