"""``gantry logs COMPONENT [-f] [--since T] [--tail N]``: the output of the component's live
container, followed across replacements (:mod:`gantry.logs`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..logs import LogFollower, parse_since
from ..runtime import docker_errors


def since_arg(text: str) -> float:
    """argparse type: ``--since`` -> a Unix timestamp."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tail_arg(text: str) -> int:
    """argparse type: a number of lines, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a number of lines, not {text!r}")
    return int(text)


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("logs", "show the output of a component's live container",
            "The output (stdout and stderr) of the component's live container, found by "
            "gantry's labels (else its newest running one). With -f it keeps following: when "
            "an update switches to a new container, a line '--- COMPONENT: now ID (IMAGE) ---' "
            "and the new container's output follow. Ctrl-C ends it. Exit 1 when the component "
            "has no container on this host.")
    p.add_argument("component")
    # -f is follow here, as in `docker logs -f`; the config file stays --config after the
    # command, and -f before it (`gantry -f CONFIG logs -f web`).
    p.conflict_handler = "resolve"  # inherited by the groups added from now on
    g = p.add_argument_group("logs options")
    g.add_argument("-f", "--follow", action="store_true",
                   help="keep following, across replacements")
    g.add_argument("--since", type=since_arg, metavar="T",
                   help="only output since T: a duration back (10m, 1h30m), a Unix timestamp "
                        "or an ISO 8601 time")
    g.add_argument("--tail", type=tail_arg, metavar="N",
                   help="only the last N lines (of the first container followed)")


def cmd_logs(args: argparse.Namespace, life: Any, component: Any) -> int:
    follower = LogFollower(life, life.runtime.client, component.name, sys.stdout.buffer)
    with docker_errors(f"reading the logs of {component.name}"):
        if not args.follow:
            follower.show(args.tail, args.since)
            return 0
        try:
            follower.follow(args.tail, args.since)
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a follow ends
            pass
    return 0


COMMANDS = {"logs": cmd_logs}
