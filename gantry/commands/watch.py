"""``gantry watch [PATH...]``: keep this host equal to spec files (gantry/watch.py)."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from .traffic import seconds_arg


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("watch", "keep this host equal to spec files (one project per file)",
            "A long-running reconciler: every PATH (a spec file, or a directory of them: "
            "*.json, *.yml, *.yaml, dotfiles ignored; default: the -f config) is one project "
            "per file, named after the file. A new component is started, a changed one "
            "replaced through the update lifecycle, one gone from its file (or its file gone) "
            "is stopped. An invalid file is reported and ignored; a file is read once its "
            "writer closed it and it held still. Safe to kill: a new watcher carries on from "
            "the containers' labels. SIGHUP: build again or resolve the tags again and "
            "update. Logs one line per step on stdout.")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="serve GET /v1/state and /v1/wait_for there (e.g. 127.0.0.1:8090)")
    p.add_argument("--follow-tags", type=seconds_arg, metavar="S",
                   help="resolve every tag again each S seconds; roll out a moved digest")
    p.add_argument("--settle", type=seconds_arg, default=0.5, metavar="S",
                   help="a changed file is read once it held still this long (default 0.5)")
    p.add_argument("--retry", type=seconds_arg, default=60.0, metavar="S",
                   help="retry a failed attempt after S seconds, doubling up to 15 min "
                        "(default 60); a new spec or SIGHUP retries at once")
    p.add_argument("--resync", type=seconds_arg, default=30.0, metavar="S",
                   help="compare the host with the files at least this often (default 30)")


def cmd_watch(args: argparse.Namespace) -> int:
    # The CLI module imports this one: take its helpers at run time.
    from .. import cli
    from ..lifecycle import Host
    from ..runtime import connect
    from ..watch import Options, Watcher, say
    from ..watch_files import SpecFiles
    from ..watch_http import parse_listen, serve
    from ..watch_state import WatchState

    if args.project is not None:
        raise cli.UsageError("watch names each project after its spec file; drop -p")
    paths = args.paths or [args.config]
    for path in paths:
        if not os.path.exists(path):
            raise cli.UsageError(f"{path}: no such file or directory")
    try:
        address = parse_listen(args.listen) if args.listen else None
    except ValueError as exc:
        raise cli.UsageError(f"--listen: {exc}") from None
    machine = args.machine or socket.gethostname()
    client = connect()
    proxy = cli._proxy(args, start=True)

    def make_host(project: str, source: str, reporter: Any) -> Host:
        return Host(client, proxy, project, machine, proxy_bind=args.proxy_bind,
                    origin="watch", reporter=reporter, backend_mode=args.backend_mode,
                    lock_wait=args.wait, source=source)

    state = WatchState(machine, args.follow_tags)
    # The file events are watched before the endpoint answers (a test may write at once).
    watcher = Watcher(SpecFiles(paths, args.settle), make_host, state,
                      Options(args.follow_tags, args.retry, args.resync))
    signal.signal(signal.SIGHUP, lambda signum, frame: watcher.hangup())
    server = None
    if address is not None:
        try:
            server = serve(address, state)
        except OSError as exc:
            watcher.wakeups.close()
            print(f"gantry: error: --listen {args.listen}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        say(sys.stdout, "status endpoint on http://{}:{}/v1/state".format(
            *server.server_address[:2]))
    try:
        watcher.run()
    except KeyboardInterrupt:
        say(sys.stdout, "watch stopped")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        watcher.wakeups.close()
    return 0


# Commands that need no config file, project or lifecycle: handler(args) -> exit status.
STANDALONE = {"watch": cmd_watch}
COMMANDS: dict[str, Any] = {}
