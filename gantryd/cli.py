"""`gantryd`: the fleet CLI and the per-host daemon (`run`).

    gantryd [--etcd HOST:PORT[,HOST:PORT...]] [--prefix /gantryd] COMMAND PROJECT ...

Exit codes: 0 ok; 1 failure (etcd, Docker, a failed rollout for `wait`); 2 usage or invalid
config; 2 also for `wait` timing out.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from typing import Sequence

from gantry.config import ConfigError, load_config

from . import etcd as E
from . import deploy, history, revisions
from .commands import canary as canary_commands
from .commands import endpoints as endpoints_commands
from .commands import events as events_commands
from .commands import follow as follow_commands
from .commands import freeze as freeze_commands
from .commands import history as history_commands
from .commands import listing as listing_commands
from .commands import serve as serve_commands
from .commands import traffic as traffic_commands
from .endpoints import advertise_address
from .keys import DEFAULT_PREFIX, check_segment, normalize_prefix
from .store import Desired, Store, StoreError, now_iso

log = logging.getLogger("gantryd")

ENV_ETCD = "GANTRYD_ETCD"
ENV_PREFIX = "GANTRYD_PREFIX"
ENV_PASSWORD = "GANTRYD_ETCD_PASSWORD"
DEFAULT_ETCD = "127.0.0.1:2379"

# Command groups kept in modules of their own (see gantryd/commands/__init__.py).
COMMAND_GROUPS = (traffic_commands, canary_commands, history_commands, freeze_commands,
                  follow_commands, listing_commands, events_commands, serve_commands,
                  endpoints_commands)


class UsageError(Exception):
    """Bad arguments that argparse cannot see (exit 2)."""


# -- argument parsing ------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Connection options, accepted before and after the command.

    On subcommands the defaults are SUPPRESSed so they do not overwrite a value given
    before the command (argparse copies subparser defaults over the namespace).
    """
    d = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    g = parser.add_argument_group("etcd")
    g.add_argument("--etcd", default=d(None), metavar="HOST:PORT[,...]",
                   help=f"etcd endpoints (env {ENV_ETCD}; default {DEFAULT_ETCD})")
    g.add_argument("--prefix", default=d(None),
                   help=f"key prefix (env {ENV_PREFIX}; default {DEFAULT_PREFIX})")
    g.add_argument("--ca-cert", default=d(None), help="CA certificate file (TLS)")
    g.add_argument("--cert", default=d(None), help="client certificate file (TLS)")
    g.add_argument("--key", default=d(None), help="client key file (TLS)")
    g.add_argument("--user", default=d(None), help="etcd user")
    g.add_argument("--password", default=d(None),
                   help="etcd password (shows in `ps`: prefer --password-file or env "
                   f"{ENV_PASSWORD})")
    g.add_argument("--password-file", default=d(None), metavar="FILE",
                   help="file holding the etcd password (its first line)")
    g.add_argument("--etcd-timeout", type=float, default=d(3.0), help="per request, seconds")
    parser.add_argument("-v", "--verbose", action="count", default=d(0))


def _components(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--components", nargs="+", required=required, metavar="COMP",
                   help="component names")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantryd", description="Progressive rollouts across hosts, coordinated by etcd.")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, project: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        if project:
            p.add_argument("project", help="project name")
        return p

    p = command("setconfig", "validate a config file and store it in etcd")
    p.add_argument("file", help="config file (.gantry JSON or YAML)")
    command("getconfig", "print the stored config (JSON)")
    p = command("update", "pin each component's image by digest and roll it out")
    _components(p)
    canary_commands.add_canary_option(p)
    p.add_argument("--docker", default=None, help="Docker engine URL (default: environment)")
    follow_commands.add_options(p, update=True)
    p = command("run", "run the per-host daemon for these components (blocks)")
    _components(p)
    p.add_argument("--machine", default=None, help="this host's name (default: hostname)")
    p.add_argument("--proxy-socket", default=None, help="gantry-proxy control socket")
    p.add_argument("--proxy-bind", default=None,
                   help="address the proxy listens on for component ports (e.g. 127.0.0.2)")
    p.add_argument("--proxy-state", default=None, help="proxy state file (started if needed)")
    p.add_argument("--advertise", default=None, metavar="ADDR",
                   help="address published with this host's endpoints, for load balancers "
                        "(default: --proxy-bind unless a wildcard, else the host's primary "
                        "address)")
    p.add_argument("--lease-ttl", type=int, default=15, help="lease TTL, seconds (default 15)")
    p.add_argument("--docker", default=None, help="Docker engine URL (default: environment)")
    p = command("stop", "drain and stop the components on every host")
    _components(p)
    p = command("kill", "kill the components on every host (no drain)")
    _components(p)
    for group in COMMAND_GROUPS:
        group.register(command, _components)
    return parser


def connect(args: argparse.Namespace) -> E.Etcd:
    endpoints = E.parse_endpoints(args.etcd or os.environ.get(ENV_ETCD) or DEFAULT_ETCD)
    creds = E.Credentials(ca_cert=args.ca_cert, cert_key=args.key, cert_cert=args.cert,
                          user=args.user, password=_password(args))
    if (creds.cert_key is None) != (creds.cert_cert is None):
        raise UsageError("--cert and --key go together")
    for flag, path in (("--ca-cert", creds.ca_cert), ("--cert", creds.cert_cert),
                       ("--key", creds.cert_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise UsageError(f"{flag} {path}: no such readable file")
    if creds.user and not creds.password:
        raise UsageError(f"--user needs a password (--password-file or env {ENV_PASSWORD})")
    # A key under the prefix: a user may have rights on nothing else.
    return E.Etcd(endpoints, creds, timeout=args.etcd_timeout,
                  revision_key=prefix_of(args).rstrip("/") + "/")


def _password(args: argparse.Namespace) -> str | None:
    """--password, else --password-file's first line, else the environment's (taken out of
    it, so processes we start, such as gantry-proxy, do not inherit it)."""
    from_env = os.environ.pop(ENV_PASSWORD, None)
    if args.password:
        print(f"gantryd: warning: --password shows in the process list; use --password-file "
              f"or env {ENV_PASSWORD}", file=sys.stderr)
        return args.password
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--password-file {args.password_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    return from_env


def prefix_of(args: argparse.Namespace) -> str:
    """The key prefix: --prefix, else $GANTRYD_PREFIX, else the default (normalized)."""
    try:
        return normalize_prefix(args.prefix or os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_store(args: argparse.Namespace, etcd: E.Etcd) -> Store:
    try:
        return Store(etcd, args.project, prefix_of(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- commands --------------------------------------------------------------------------------

def cmd_setconfig(args, store: Store) -> int:
    try:
        config = load_config(args.file)
        config.check_fleet()  # `build` is for the single-host gantry
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("Configuration not stored.", file=sys.stderr)
        return 2
    revisions.set_config(store, config)  # with its audit entry (who, which components)
    print("Configuration updated")
    return 0


def cmd_getconfig(args, store: Store) -> int:
    data = store.config_json()
    if data is None:
        print(f"project {store.project} has no configuration", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, sort_keys=False))
    return 0


def cmd_update(args, store: Store) -> int:
    done = deploy.update(store, args.components, docker_url=args.docker,
                         shape=lambda new, current: canary_commands.shape(args, new, current))
    written = time.monotonic()
    for note in done.warnings:
        print(f"warning: {note}", file=sys.stderr)
    for name, desired in done.desired.items():
        canary = f", canary {desired.canary}%" if desired.canary else ""
        print(f"Component {name} -> {desired.image} (revision {desired.revision}{canary})",
              file=sys.stderr if args.json else sys.stdout)  # --json: stdout holds JSON alone
    return follow_commands.follow(args, store, args.components, written) if args.wait else 0


def _set_status(store: Store, names: Sequence[str], status: str) -> int:
    missing = [n for n in names if store.desired(n) is None]
    if missing:
        print(f"no desired state for {', '.join(missing)} (never updated)", file=sys.stderr)
        return 1

    def change(name: str, current: Desired | None) -> Desired:
        assert current is not None
        return Desired(status=status, revision=current.revision + 1, image=current.image,
                       config_hash=current.config_hash, component=current.component,
                       updated_at=now_iso(), actor=history.actor(),
                       cause=history.STOP if status == "stopped" else history.KILL)
    for name, desired in store.change_desired(names, change).items():
        print(f"Component {name} -> {status} (revision {desired.revision})")
    return 0


def cmd_stop(args, store: Store) -> int:
    return _set_status(store, args.components, "stopped")


def cmd_kill(args, store: Store) -> int:
    return _set_status(store, args.components, "killed")


def cmd_run(args, store: Store) -> int:
    from . import daemon
    machine = args.machine or socket.gethostname()
    try:
        check_segment("machine", machine)
    except ValueError as exc:
        raise UsageError(f"{exc} (use --machine)") from None
    try:
        advertise = advertise_address(args.advertise, args.proxy_bind)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if store.config() is None:  # not an error: hosts may start before the first setconfig
            log.warning("project %s has no configuration yet (gantryd setconfig %s FILE); "
                        "waiting for one", store.project, store.project)
    except E.EtcdHandshakeFailed:
        raise  # certificates, not an outage: say so now
    except (E.EtcdUnavailable, StoreError):
        pass  # etcd down or the config unreadable: the daemon's loop reports it
    return daemon.run(store, args.components, machine=machine, proxy_socket=args.proxy_socket,
                      proxy_bind=args.proxy_bind, proxy_state=args.proxy_state,
                      lease_ttl=args.lease_ttl, docker_url=args.docker, advertise=advertise)


# Commands about no one project: handler(args, etcd, prefix).
PROJECTLESS: dict = {}
COMMANDS = {
    "setconfig": cmd_setconfig, "getconfig": cmd_getconfig, "update": cmd_update,
    "run": cmd_run, "stop": cmd_stop, "kill": cmd_kill,
}
for _group in COMMAND_GROUPS:
    COMMANDS.update(_group.COMMANDS)
    PROJECTLESS.update(getattr(_group, "PROJECTLESS", {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if (
        args.verbose or args.command in ("run", "serve")) else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:  # gRPC / docker chatter is noise unless debugging
        for noisy in ("urllib3", "docker"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    etcd = None
    try:
        etcd = connect(args)
        if args.command in PROJECTLESS:
            return PROJECTLESS[args.command](args, etcd, prefix_of(args))
        store = open_store(args, etcd)
        return COMMANDS[args.command](args, store)
    except UsageError as exc:
        parser.error(str(exc))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except E.PermissionDenied as exc:
        prefix = prefix_of(args).rstrip("/") + "/"
        print(f"gantryd: {exc} (its role needs readwrite on the prefix {prefix})",
              file=sys.stderr)
        return 1
    except (E.EtcdError, StoreError) as exc:
        print(f"gantryd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from gantry.errors import GantryError
        if isinstance(exc, GantryError):
            print(f"gantryd: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        if etcd is not None:
            etcd.close()
    return 1


def entry() -> None:
    """The program's entry (`gantryd`, `python -m gantryd`): main(), then exit at once.

    Everything is done and flushed when main() returns; leaving through os._exit keeps the
    gRPC threads of the etcd client (a watch's stream, the channel's pollers) from holding
    the interpreter's shutdown, which was seen to hang a finished `wait` under heavy load.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
