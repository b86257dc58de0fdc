"""``gantryd freeze|unfreeze PROJECT -c COMP... [--machine M...]``: hosts that gantryd leaves
alone (gantryd/freeze.py)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import freeze
from ..keys import check_segment
from ..store import Store
from .common import unknown_components


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[[argparse.ArgumentParser], None]) -> None:
    p = command("freeze", "stop all automation of the components on some hosts (or all): "
                          "no rollout, remediation or slot there until unfreeze")
    components(p)
    _machines(p)
    p.add_argument("--reason", default=None, help="why (shown by `list`)")
    p = command("unfreeze", "hand the hosts back to gantryd; they catch up")
    components(p)
    _machines(p)


def _machines(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", dest="machines", nargs="+", default=[], metavar="M",
                   help="host names (default: every host of the components)")


def _hosts(machines: list[str]) -> str:
    return ", ".join(machines) if machines else "every host"


def _write(args: argparse.Namespace, store: Store,
           fn: Callable[[freeze.Freeze], freeze.Freeze], what: str) -> int:
    try:
        for machine in args.machines:
            check_segment("machine", machine)
    except ValueError as exc:
        print(f"gantryd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if unknown_components(store, args.components):
        return 1
    for name, record in freeze.change(store, args.components, fn).items():
        print(f"Component {name} -> {what} on {_hosts(args.machines)}")
        still = record.hosts.get(freeze.EVERY_HOST)
        if args.command == "unfreeze" and still is not None:
            print(f"  still {still.describe()} on every host (unfreeze without --machine)")
    return 0


def cmd_freeze(args: argparse.Namespace, store: Store) -> int:
    return _write(args, store, lambda f: freeze.frozen(f, args.machines, args.reason), "frozen")


def cmd_unfreeze(args: argparse.Namespace, store: Store) -> int:
    return _write(args, store, lambda f: freeze.thawed(f, args.machines), "unfrozen")


COMMANDS = {"freeze": cmd_freeze, "unfreeze": cmd_unfreeze}
