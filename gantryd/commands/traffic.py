"""``gantryd pause|resume|maintenance PROJECT -c COMP...``: fleet-wide traffic state.

Written to etcd (gantryd.traffic); every `gantryd run` applies it to its proxy routes.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gantry.commands.traffic import seconds_arg
from gantry.traffic import DEFAULT_MAX_PAUSE

from .. import traffic
from ..store import Store
from .common import unknown_components

STATES = ("on", "off")


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[[argparse.ArgumentParser], None]) -> None:
    p = command("pause", "hold new connections of the components on every host until resume")
    components(p)
    p.add_argument("--max-pause", type=seconds_arg, default=DEFAULT_MAX_PAUSE, metavar="S",
                   help="hold each connection at most S seconds (default 30; http: then 504)")
    p = command("resume", "end the pause on every host: held connections go to the live "
                          "container")
    components(p)
    p = command("maintenance", "answer new connections with 503 (on) or not (off) on every host")
    # Optional here, so that both `PROJECT on -c COMP` and `PROJECT -c COMP... on` parse (-c
    # takes every word after it; _state takes the last one back).
    p.add_argument("state", nargs="?", choices=STATES, help="on or off")
    components(p)
    p.add_argument("--message", default=None, help="text of the maintenance page")


def _state(args: argparse.Namespace) -> str | None:
    """on/off, given before -c or as the last word after it."""
    if args.state is None and len(args.components) > 1 and args.components[-1] in STATES:
        args.state = args.components.pop()
    return args.state


def _write(store: Store, names: list[str], fn: Callable[[traffic.Traffic | None],
                                                         traffic.Traffic], what: str) -> int:
    if unknown_components(store, names):
        return 1
    for name, record in traffic.change(store, names, fn).items():
        print(f"Component {name} -> {what} (by {record.actor})")
    return 0


def cmd_pause(args: argparse.Namespace, store: Store) -> int:
    return _write(store, args.components, lambda t: traffic.paused(t, args.max_pause),
                  f"paused (at most {args.max_pause:g}s per connection)")


def cmd_resume(args: argparse.Namespace, store: Store) -> int:
    return _write(store, args.components, traffic.resumed, "resumed")


def cmd_maintenance(args: argparse.Namespace, store: Store) -> int:
    if _state(args) is None:
        print("gantryd maintenance: error: say on or off (gantryd maintenance PROJECT -c COMP... "
              "on|off)", file=sys.stderr)
        return 2
    on = args.state == "on"
    return _write(store, args.components,
                  lambda t: traffic.in_maintenance(t, on, args.message if on else None),
                  f"maintenance {args.state}")


COMMANDS = {"pause": cmd_pause, "resume": cmd_resume, "maintenance": cmd_maintenance}
