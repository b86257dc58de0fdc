"""``gantryd update PROJECT -c COMP --canary PCT``, ``gantryd promote|abort PROJECT -c COMP``:
a weighted canary on every host (gantryd/split.py)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gantry.commands.canary import percent_arg

from .. import history, split
from ..store import Desired, Store


def add_canary_option(parser: argparse.ArgumentParser) -> None:
    """``--canary PCT`` of ``update``."""
    parser.add_argument(
        "--canary", type=percent_arg, metavar="PCT",
        help="split instead of switching: every host keeps the current version and sends "
             "PCT%% of new connections to the new one (then `promote` or `abort`)")


def register(command: Callable[[str, str], argparse.ArgumentParser],
             components: Callable[[argparse.ArgumentParser], None]) -> None:
    components(command("promote", "make the canary the only version on every host (slots)"))
    components(command("abort", "drop the canary on every host: back to the previous version"))


def shape(args: argparse.Namespace, new: Desired, current: Desired | None) -> Desired:
    """The desired state `update` writes: `new`, or with --canary, `new` as a canary."""
    canary = getattr(args, "canary", None)
    return new if canary is None else split.begin(new, current, canary)


def _change(store: Store, names: list[str], fn: Callable[[Desired | None], Desired],
            what: str) -> int:
    without = [n for n in names if getattr(store.desired(n), "canary", None) is None]
    if without:
        print(f"gantryd: no canary in place for {', '.join(without)} (start one with "
              f"`gantryd update {store.project} -c COMP --canary PCT`)", file=sys.stderr)
        return 1
    def change(_: str, current: Desired | None) -> Desired:
        return history.stamp(fn(current), fn.__name__)  # cause: promote or abort
    for name, desired in store.change_desired(names, change).items():
        print(f"Component {name} -> {what}: {desired.image} (revision {desired.revision})")
    return 0


def cmd_promote(args: argparse.Namespace, store: Store) -> int:
    return _change(store, args.components, split.promote, "canary promoted")


def cmd_abort(args: argparse.Namespace, store: Store) -> int:
    return _change(store, args.components, split.abort, "canary aborted")


COMMANDS = {"promote": cmd_promote, "abort": cmd_abort}
